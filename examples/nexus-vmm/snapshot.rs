//! `nexus-vmm snapshot` and `nexus-vmm invoke`: a function VM snapshotted while parked in
//! `NEXT`, and cold starts from that snapshot with the input prefetched during the restore.
//!
//! `snapshot` boots a function in its runtime loop with a nexus-io device, waits until its
//! `NEXT` is parked in the backend (control `parked`), stops the vCPU and writes the state
//! file (vCPU, VM, the `serial` and `nexus-io` device sections) and the memory file.
//!
//! `invoke` attaches on the backend's control socket and sends the prefetch `hint` first,
//! then restores the VM, resumes the nexus-io device on that same attachment (the backend
//! re-pops the parked `NEXT`: the guest notices nothing), runs the vCPU on its thread, sends
//! `invoke` on a second control connection and prints the result and where the time went.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use nexus::guests;
use nexus_io::{ControlClient, InvokeInput};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::serial::Console;
use nexus_snapshot::{Snapshot, SnapshotFiles};

use crate::node::vm::{self, FunctionVmConfig};

/// How long `snapshot` waits for the function to park in `NEXT`.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `invoke` waits for the function to complete.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Args)]
pub struct SnapshotArgs {
    /// The function: a bundled micro-guest (wordcount, compress, aes) or an ELF path. It runs
    /// with no arguments, i.e. its runtime loop.
    #[arg(long)]
    guest: String,
    /// The shared backend's control socket.
    #[arg(long, value_name = "SOCKET")]
    backend: PathBuf,
    /// Directory to write the snapshot to (`vm.state`, `vm.mem`).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64)]
    mem: u64,
    /// I/O window in MiB.
    #[arg(long, default_value_t = 96)]
    window: u64,
    /// The tenant the VM belongs to on the backend.
    #[arg(long, default_value = "default")]
    tenant: String,
}

/// How `invoke` brings guest RAM back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestoreArg {
    /// Read every stored page before the VM runs.
    Eager,
    /// Map the memory file copy-on-write.
    Lazy,
    /// Serve pages on first touch through userfaultfd.
    Uffd,
    /// Install the recorded working set first (recorded by this restore if there is none).
    Prefetch,
}

#[derive(Args)]
pub struct InvokeArgs {
    /// The snapshot directory written by `nexus-vmm snapshot`.
    #[arg(long, value_name = "DIR")]
    snapshot: PathBuf,
    /// The shared backend's control socket.
    #[arg(long, value_name = "SOCKET")]
    backend: PathBuf,
    /// How guest RAM is restored.
    #[arg(long, value_enum, default_value_t = RestoreArg::Lazy)]
    restore: RestoreArg,
    /// The input object (prefetched while the VM is restored).
    #[arg(long, value_name = "KEY", conflicts_with = "inline")]
    input: Option<String>,
    /// Inline input text instead of an object.
    #[arg(long, value_name = "TEXT")]
    inline: Option<String>,
    /// Store the function's result at this key (durably, before `invoke` answers). The key
    /// travels in the invocation context: a function built on the nexus-guest runtime stores
    /// the result there itself, write-behind; for other guests the backend stores it.
    #[arg(long, value_name = "KEY")]
    output: Option<String>,
    /// Prefetch this object instead of `--input` (a wrong hint costs only the fetch).
    #[arg(long, value_name = "KEY", conflicts_with = "no_hint")]
    hint: Option<String>,
    /// Send no prefetch hint: the input is fetched once the invocation is queued.
    #[arg(long)]
    no_hint: bool,
    /// The request id in the invocation context (for logs).
    #[arg(long)]
    request_id: Option<String>,
    /// The tenant the VM belongs to on the backend.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// This VM's name on the backend (default: `invoke-<pid>`).
    #[arg(long)]
    vm_id: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `nexus-vmm snapshot`.
pub fn snapshot(args: SnapshotArgs) -> Result<()> {
    let path = guests::resolve(&args.guest)?;
    let elf = std::fs::read(&path).with_context(|| format!("Cannot read {}", path.display()))?;
    let config = FunctionVmConfig {
        backend: args.backend.clone(),
        tenant: args.tenant.clone(),
        memory: MemoryConfig {
            ram_size: args.mem << 20,
            window_size: args.window << 20,
        },
    };
    let vm_id = format!("snapshot-{}", std::process::id());
    let taken = vm::take_snapshot(
        &elf,
        &config,
        &vm_id,
        &args.out,
        Console::new(std::io::stderr()),
        PARK_TIMEOUT,
    )?;
    let report = taken.report;
    println!(
        "snapshot {:#018x} of {} written to {}: parked in NEXT after {:.3} ms; {} pages stored \
         ({} bytes on disk), saved in {:.3} ms",
        report.id,
        args.guest,
        args.out.display(),
        ms(taken.parked_after),
        report.nonzero_pages,
        report.memory_file_size,
        ms(report.total)
    );
    Ok(())
}

/// `nexus-vmm invoke`: returns 0 when the function succeeded, 1 when it reported an error.
pub fn invoke(args: InvokeArgs) -> Result<u32> {
    let t0 = Instant::now();
    let vm_id = args
        .vm_id
        .clone()
        .unwrap_or_else(|| format!("invoke-{}", std::process::id()));
    let input = match (&args.input, &args.inline) {
        (Some(key), _) => InvokeInput::Key(key),
        (None, Some(text)) => InvokeInput::Inline(text),
        (None, None) => bail!("Give --input KEY or --inline TEXT"),
    };
    let hint = if args.no_hint {
        None
    } else {
        args.hint.as_deref().or(args.input.as_deref())
    };
    let files = SnapshotFiles::in_dir(&args.snapshot);
    let snapshot = Snapshot::open(&files)?;
    if args.restore == RestoreArg::Prefetch && !snapshot.has_working_set() {
        println!(
            "no working set yet: recording one during this restore (uffd + record) for the \
             next prefetch restore"
        );
    }
    // Attach and hint first: the backend fetches the input while we restore.
    let restored = vm::restore(
        &snapshot,
        args.restore,
        &vm::RestoreTarget {
            backend: &args.backend,
            tenant: &args.tenant,
            vm_id: &vm_id,
            hint,
        },
        Console::new(std::io::stderr()),
        None,
    )?;
    let vm::Restored {
        vm: _vm,
        vcpu,
        faults,
        recording: record,
        stats,
        hinted,
        total: restored_at,
    } = restored;

    let mut client = ControlClient::connect(&args.backend, INVOKE_TIMEOUT)?;
    let run_start = Instant::now();
    let handle = vcpu.spawn("vcpu0".into())?;
    let (tx, rx) = mpsc::channel();
    {
        let (vm_id, output, request_id) =
            (vm_id.clone(), args.output.clone(), args.request_id.clone());
        let input = match input {
            InvokeInput::Key(k) => (true, k.to_owned()),
            InvokeInput::Inline(t) => (false, t.to_owned()),
        };
        std::thread::spawn(move || {
            let input = if input.0 {
                InvokeInput::Key(&input.1)
            } else {
                InvokeInput::Inline(&input.1)
            };
            let sent = Instant::now();
            let reply = client.invoke(&vm_id, input, output.as_deref(), request_id.as_deref());
            let _ = tx.send((sent, reply));
        });
    }
    let (sent, reply) = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Timeout) if handle.is_finished() => {
                let (_, result) = handle.join()?;
                bail!("The function stopped before it completed: {result:?}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("The invoke thread died"),
        }
    };
    let done = t0.elapsed();
    let (_vcpu, _) = handle.stop()?;
    let reply = reply.context("The invocation failed")?;
    let faults_seen = faults.as_ref().map(|f| f.stats());
    if let (true, Some(faults)) = (record, &faults) {
        let ws = faults.write_working_set()?;
        println!(
            "working set recorded: {} pages ({} zero) in {}",
            ws.data_pages,
            ws.zero_pages,
            ws.path.display()
        );
    }

    let t = |name: &str| reply.timings.get(name).copied().unwrap_or(0) as f64 / 1e3;
    let to_next = ms(sent.saturating_duration_since(run_start)) + t("next_served_us");
    println!("outcome: {}", reply.outcome);
    println!("output_len: {}", reply.output_len);
    println!(
        "output ({}): {}",
        reply.output_encoding,
        reply.output.trim_end_matches('\n')
    );
    println!(
        "timings (ms): hint={:.3} restore={:.3} restore_memory={:.3} resume={:.3} \
         next_served={:.3} function={:.3} durable={:.3} output_store={:.3} total={:.3}",
        ms(hinted),
        ms(stats.total),
        ms(stats.memory),
        ms(restored_at) - ms(hinted) - ms(stats.total),
        to_next,
        t("function_us"),
        t("durable_us"),
        t("output_store_us"),
        ms(done),
    );
    println!(
        "restore mode {:?}: {} bytes read before the VM ran, {} pages prefetched, {} pages \
         faulted in",
        stats.mode,
        stats.bytes_read,
        stats.prefetched_pages,
        faults_seen.map_or(0, |f| f.pages_faulted)
    );
    Ok(if reply.outcome == "success" { 0 } else { 1 })
}
