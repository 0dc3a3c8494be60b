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
//! `invoke` with the node's client ([`BackendClient`]) and prints the result and where the
//! time went.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use nexus::guests;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::serial::Console;
use nexus_snapshot::{RestoreMode, Snapshot, SnapshotFiles};

use crate::node::backend::BackendClient;
use crate::node::vm::{self, Call, CallFailure, FunctionVm, FunctionVmConfig, Input};

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

#[derive(Args)]
pub struct InvokeArgs {
    /// The snapshot directory written by `nexus-vmm snapshot`.
    #[arg(long, value_name = "DIR")]
    snapshot: PathBuf,
    /// The shared backend's control socket.
    #[arg(long, value_name = "SOCKET")]
    backend: PathBuf,
    /// How guest RAM is restored (`prefetch` without a recorded working set records one:
    /// userfaultfd, recording, for the next prefetch restore).
    #[arg(long, value_enum, default_value_t = RestoreMode::Lazy)]
    restore: RestoreMode,
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
    let runtime = control_runtime()?;
    let client = BackendClient::new(args.backend.clone());
    let parked = |vm: &str, timeout: Duration| -> Result<()> {
        Ok(runtime.block_on(client.parked(vm, timeout))?)
    };
    let taken = vm::take_snapshot(
        &elf,
        &config,
        &vm_id,
        &args.out,
        Console::new(std::io::stderr()),
        PARK_TIMEOUT,
        &parked,
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
        (Some(key), _) => Input::Key(key.clone()),
        (None, Some(text)) => Input::Inline(text.clone().into()),
        (None, None) => bail!("Give --input KEY or --inline TEXT"),
    };
    let hint = if args.no_hint {
        None
    } else {
        args.hint.as_deref().or(args.input.as_deref())
    };
    let files = SnapshotFiles::in_dir(&args.snapshot);
    let snapshot = Snapshot::open(&files)?;
    if args.restore == RestoreMode::Prefetch && !snapshot.has_working_set() {
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
            shared: None,
        },
        Console::new(std::io::stderr()),
        None,
    )?;
    let stats = restored.stats;
    let (hinted, restored_at) = (restored.hinted, restored.total);
    let runtime = control_runtime()?;
    let client = BackendClient::new(args.backend.clone());
    let mut vm = FunctionVm::start(&vm_id, restored)?;
    let call = Call {
        input,
        output_key: args.output.clone(),
        request_id: args.request_id.clone().unwrap_or_default(),
        timeout: INVOKE_TIMEOUT,
        return_output: true,
    };
    let done = match runtime.block_on(vm.call(&client, &call)) {
        Ok(done) => done,
        Err(CallFailure::Crashed(why)) => bail!("The function stopped before it completed: {why}"),
        Err(CallFailure::Timeout(limit)) => {
            bail!("The function did not complete within {} s", limit.as_secs())
        }
        Err(CallFailure::Backend(e)) => return Err(e).context("The invocation failed"),
        Err(CallFailure::Net(e)) => bail!("The invocation failed: {e}"),
    };
    let elapsed = t0.elapsed();
    let faults_seen = vm.faults().map(|f| f.stats());
    if let (true, Some(faults)) = (vm.recording, vm.faults()) {
        let ws = faults.write_working_set()?;
        println!(
            "working set recorded: {} pages ({} zero) in {}",
            ws.data_pages,
            ws.zero_pages,
            ws.path.display()
        );
    }
    vm.stop();

    let timings = &done.timings;
    let t = |us: u64| us as f64 / 1e3;
    let output = &done.output;
    let (encoding, text) = match std::str::from_utf8(output) {
        Ok(text) => ("utf8", text.to_owned()),
        Err(_) => ("base64", nexus_ring::control::base64(output)),
    };
    println!("outcome: {}", done.outcome);
    println!("output_len: {}", done.output_len);
    println!("output ({encoding}): {}", text.trim_end_matches('\n'));
    println!(
        "timings (ms): hint={:.3} restore={:.3} restore_memory={:.3} resume={:.3} \
         next_served={:.3} function={:.3} durable={:.3} output_store={:.3} total={:.3}",
        ms(hinted),
        ms(stats.total),
        ms(stats.memory),
        ms(restored_at) - ms(hinted) - ms(stats.total),
        t(timings.next_served_us),
        t(timings.function_us),
        t(timings.durable_us),
        t(timings.output_store_us),
        ms(elapsed),
    );
    println!(
        "restore mode {:?}: {} bytes read before the VM ran, {} pages installed before it ran, \
         {} working-set pages prefetched in the background, {} pages faulted in; {} KVM exits \
         during the invocation",
        stats.mode,
        stats.bytes_read,
        stats.first_pages,
        stats.prefetched_pages,
        faults_seen.map_or(0, |f| f.pages_faulted),
        done.exits
    );
    Ok(if done.is_success() { 0 } else { 1 })
}

/// A single-threaded runtime for the control requests of one command.
fn control_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
