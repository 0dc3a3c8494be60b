//! `nexus-vmm`: the Nexus demo VMM.
//!
//! A thin binary: it parses arguments and calls the crates. See `nexus-vmm --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use nexus::guests;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::{Console, ConsoleBuffer};

use embedded::EmbeddedBackend;

mod embedded;
mod node;
mod seccomp;
mod serve;
mod snapshot;

/// Exit status of `nexus-vmm` when the VMM fails or the guest crashes (a guest's own exit
/// code passes through unchanged).
const VMM_FAILURE: u8 = 125;

#[derive(Parser)]
#[command(
    name = "nexus-vmm",
    version,
    about = "The Nexus demo VMM: run micro-guests and Linux on KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Run without the seccomp filters each kind of thread gets (docs/security.md).
    #[arg(long, global = true)]
    no_seccomp: bool,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one guest: a micro-guest (bundled name or ELF path) or a Linux kernel.
    ///
    /// The guest's console goes to stdout; nexus-vmm exits with the guest's exit code, or
    /// with 125 (and the cause and RIP on stderr) when the guest crashes.
    Run(RunArgs),
    /// Run the bundled example guests and show what each did.
    Demo,
    /// Boot a function in its runtime loop, wait until it parks in NEXT, and snapshot it.
    Snapshot(snapshot::SnapshotArgs),
    /// Restore a function from its snapshot (prefetching the input meanwhile) and run one
    /// invocation.
    Invoke(snapshot::InvokeArgs),
    /// The node daemon: function invocations over HTTP, a warm pool of parked VMs per
    /// function, cold starts from snapshots, Prometheus metrics.
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Micro-guest to run: a bundled example (hello, fib, crash, wordcount, compress, aes, hostile) or a path to an ELF.
    #[arg(long, conflicts_with = "kernel", required_unless_present = "kernel")]
    guest: Option<String>,
    /// Linux kernel to boot (ELF vmlinux with a PVH note, or bzImage).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs for the Linux kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1"
    )]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64)]
    mem: u64,
    /// I/O window in MiB (0 for none). Untouched window pages cost nothing.
    #[arg(long, default_value_t = 96)]
    window: u64,
    /// The shared backend's control socket: attaches a nexus-io device connected to it. With
    /// `--kernel`, the kernel command line gets `nexus.io=ADDR,SIZE nexus.window=ADDR,SIZE`
    /// for the guest's user-space driver (docs/linux-guests.md).
    #[arg(long, value_name = "SOCKET")]
    backend: Option<PathBuf>,
    /// The tenant this VM belongs to on the backend.
    #[arg(long, requires = "backend", default_value = "default")]
    tenant: String,
    /// This VM's name on the backend (default: `vmm-<pid>`).
    #[arg(long, requires = "backend")]
    vm_id: Option<String>,
    /// Print timing and VM-exit counts to stderr when the guest ends.
    #[arg(long)]
    stats: bool,
    /// Arguments passed to the micro-guest.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if !cli.no_seccomp {
        seccomp::enable();
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo => demo().map(|()| 0),
        Command::Snapshot(args) => snapshot::snapshot(args).map(|()| 0),
        Command::Invoke(args) => snapshot::invoke(args),
        Command::Serve(args) => serve::serve(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(VMM_FAILURE)),
        Err(e) => {
            eprintln!("nexus-vmm: {e:#}");
            ExitCode::from(VMM_FAILURE)
        }
    }
}

fn memory(args: &RunArgs) -> MemoryConfig {
    MemoryConfig {
        ram_size: args.mem << 20,
        window_size: args.window << 20,
    }
}

fn run(args: RunArgs) -> Result<u32> {
    if let Some(kernel) = &args.kernel {
        return run_linux(&args, kernel.clone());
    }
    let name = args.guest.as_deref().unwrap_or_default();
    let path = guests::resolve(name)?;
    let elf = std::fs::read(&path).with_context(|| format!("Cannot read {}", path.display()))?;
    let config = MicroVmConfig {
        memory: memory(&args),
        args: args.args.clone(),
        device: args.backend.as_ref().map(|_| nexus_io::device_info()),
        net_device: None,
        console: Console::new(std::io::stdout()),
    };
    let start = Instant::now();
    let mut vm = MicroVm::new(&elf, config)?;
    if let Some(socket) = &args.backend {
        let window = vm
            .vm()
            .memory()
            .window()
            .cloned()
            .context("--backend needs an I/O window (--window > 0)")?;
        nexus_io::attach(vm.vm(), nexus_io_device(&args, socket, window)?)?;
    }
    let stats = vm.vcpu().stats().ok();
    let counters_before = stats.as_ref().and_then(|s| s.read_all().ok());
    let setup = start.elapsed();
    let result = vm.run();
    let total = start.elapsed();
    if args.stats {
        let user = vm.exit_counters();
        let moved = match (&stats, counters_before) {
            (Some(s), Some(before)) => s
                .read_all()
                .ok()
                .map(|after| counter_deltas(&before, &after)),
            _ => None,
        };
        let kvm_exits = moved
            .as_ref()
            .and_then(|m| m.iter().find(|(name, _)| name == "exits").map(|(_, n)| *n));
        eprintln!(
            "nexus-vmm: setup {:.3} ms, total {:.3} ms; user-space exits {} (port out {}, port in {}, mmio {}); KVM exits {}",
            ms(setup),
            ms(total),
            user.total(),
            user.port_write,
            user.port_read,
            user.mmio_read + user.mmio_write,
            kvm_exits.map_or("n/a".to_string(), |n| n.to_string()),
        );
        if let Some(moved) = moved {
            let list: Vec<String> = moved
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            eprintln!(
                "nexus-vmm: KVM vCPU counters that moved: {}",
                list.join(", ")
            );
        }
    }
    match result {
        Ok(code) => Ok(code),
        Err(e) => bail!("{e}"),
    }
}

/// The counters that moved between two readings of a vCPU's KVM statistics, by name.
fn counter_deltas(
    before: &nexus_kvm::stats::Counters,
    after: &nexus_kvm::stats::Counters,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(name, &value)| {
            let delta = value.wrapping_sub(before.get(name).copied().unwrap_or(0));
            (delta != 0).then(|| (name.clone(), delta))
        })
        .collect()
}

/// The nexus-io device of `run`'s VM, on the backend at `socket`, over `window`.
fn nexus_io_device(
    args: &RunArgs,
    socket: &std::path::Path,
    window: nexus_kvm::WindowRegion,
) -> Result<nexus_io::NexusIo> {
    Ok(nexus_io::NexusIo::new(nexus_io::NexusIoConfig {
        control_socket: socket.to_path_buf(),
        vm_id: args
            .vm_id
            .clone()
            .unwrap_or_else(|| format!("vmm-{}", std::process::id())),
        tenant: args.tenant.clone(),
        window,
        irq: None,
    })?)
}

/// `cmdline` with the nexus-io device's and the window's physical ranges appended, as the
/// Linux guest's user-space driver reads them (`nexus_guest::linux::cmdline`):
/// `nexus.io=ADDR,SIZE nexus.window=ADDR,SIZE`, in hexadecimal. Refused if `cmdline` already
/// names either (the driver would refuse the duplicate).
fn linux_cmdline(
    cmdline: &str,
    device: nexus_kvm::micro::DeviceInfo,
    window: (u64, u64),
) -> Result<String> {
    for param in ["nexus.io", "nexus.window"] {
        if cmdline
            .split_ascii_whitespace()
            .any(|word| word.split_once('=').is_some_and(|(name, _)| name == param))
        {
            bail!("--cmdline already has {param}=: --backend sets it");
        }
    }
    let (window_base, window_size) = window;
    let params = format!(
        "nexus.io={:#x},{:#x} nexus.window={window_base:#x},{window_size:#x}",
        device.base, device.size
    );
    Ok(match cmdline.trim() {
        "" => params,
        base => format!("{base} {params}"),
    })
}

fn run_linux(args: &RunArgs, kernel: PathBuf) -> Result<u32> {
    use nexus_kvm::linux::{self, LinuxConfig};
    let mut vm = nexus_kvm::Vm::new(nexus_kvm::VmConfig {
        memory: memory(args),
        irqchip: true,
    })?;
    let mut cmdline = args.cmdline.clone();
    // Held while the VM runs (the bus holds the device too).
    let _device = match &args.backend {
        Some(socket) => {
            let window = vm
                .memory()
                .window()
                .cloned()
                .context("--backend needs an I/O window (--window > 0)")?;
            let range = (window.base().0, window.size());
            // The guest's driver runs in user space, with no interrupt handler: WAIT.
            let attached = nexus_io::attach_polled(&vm, nexus_io_device(args, socket, window)?)?;
            cmdline = linux_cmdline(&cmdline, attached.info, range)?;
            Some(attached)
        }
        None => None,
    };
    let config = LinuxConfig {
        kernel,
        initrd: args.initrd.clone(),
        cmdline,
    };
    let entry = linux::load(vm.memory(), &config)?;
    linux::add_serial(&vm, Console::new(std::io::stdout()))?;
    let mut vcpu = vm.create_vcpu(nexus_kvm::VcpuConfig { strict_io: false })?;
    linux::setup_vcpu(vcpu.fd(), &entry)?;
    match vcpu.run()? {
        nexus_kvm::VcpuStop::Exit(code) => Ok(code),
        other => bail!("The kernel stopped: {other:?}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one demo run did.
struct DemoRun {
    outcome: String,
    elapsed: Duration,
    user_exits: u64,
    kvm_exits: Option<u64>,
    console: String,
}

/// Runs bundled guest `name` in a fresh VM, with a nexus-io device on `backend` if given.
fn demo_run(name: &str, args: &[&str], backend: Option<&std::path::Path>) -> Result<DemoRun> {
    let elf = std::fs::read(guests::resolve(name)?)?;
    let out = ConsoleBuffer::default();
    let memory = MemoryConfig {
        ram_size: 64 << 20,
        window_size: 32 << 20,
    };
    let config = MicroVmConfig {
        memory,
        args: args.iter().map(|s| s.to_string()).collect(),
        device: backend.map(|_| nexus_io::device_info()),
        net_device: None,
        console: Console::new(out.clone()),
    };
    let start = Instant::now();
    let mut vm = MicroVm::new(&elf, config)?;
    if let Some(socket) = backend {
        let window = vm
            .vm()
            .memory()
            .window()
            .cloned()
            .context("the demo VM has a window")?;
        let device = nexus_io::NexusIo::new(nexus_io::NexusIoConfig {
            control_socket: socket.to_path_buf(),
            vm_id: format!("demo-{name}-{}", std::process::id()),
            tenant: "default".into(),
            window,
            irq: None,
        })?;
        nexus_io::attach(vm.vm(), device)?;
    }
    let stats = vm.vcpu().stats().ok();
    let before = stats.as_ref().and_then(|s| s.read("exits").ok().flatten());
    let result = vm.run();
    let elapsed = start.elapsed();
    let kvm_exits = match (&stats, before) {
        (Some(s), Some(b)) => s.read("exits").ok().flatten().map(|a| a - b),
        _ => None,
    };
    let outcome = match &result {
        Ok(code) => format!("exit {code}"),
        Err(nexus_kvm::Error::GuestCrash(r)) => {
            format!("crash: {} at RIP {:#x}", r.cause, r.regs.rip)
        }
        Err(e) => format!("error: {e}"),
    };
    let console = out.text();
    Ok(DemoRun {
        outcome,
        elapsed,
        user_exits: vm.exit_counters().total(),
        kvm_exits,
        console,
    })
}

fn print_run(name: &str, args: &[&str], run: &DemoRun) {
    println!(
        "{:<9} {:<40} {:<32} {:>8.2} {:>6} {:>6}",
        name,
        args.join(" "),
        run.outcome,
        ms(run.elapsed),
        run.user_exits,
        run.kvm_exits
            .map_or_else(|| "n/a".to_string(), |n| n.to_string())
    );
    for line in run.console.lines() {
        println!("          │ {line}");
    }
}

fn table_header() {
    println!(
        "{:<9} {:<40} {:<32} {:>8} {:>6} {:>6}",
        "guest", "args", "outcome", "ms", "exits", "KVM"
    );
}

fn sample_text(bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "serverless",
        "functions",
        "run",
        "in",
        "micro",
        "VMs",
        "while",
        "one",
        "shared",
        "backend",
        "does",
        "their",
        "I/O",
        "through",
        "a",
        "zero-copy",
        "window.\n",
    ];
    let mut text = String::with_capacity(bytes + 16);
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(WORDS[i % WORDS.len()]);
        text.push(' ');
        i += 7;
    }
    text
}

/// One function of the demo's node.
struct DemoFunction {
    name: &'static str,
    input: node::vm::Input,
    what: &'static str,
}

fn demo() -> Result<()> {
    let started = Instant::now();
    eprintln!("nexus: [1/4] building the bundled micro-guests (the first time takes a minute)…");
    guests::build_bundled(false)?;

    let dir = std::env::temp_dir().join(format!("nexus-demo-{}", std::process::id()));
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("inputs"))?;
    std::fs::create_dir_all(store.join("outputs"))?;
    let text = sample_text(4 << 20);
    std::fs::write(store.join("inputs/words.txt"), &text)?;
    eprintln!(
        "nexus: [2/4] starting a shared backend in this process over the local store {}…",
        store.display()
    );
    let backend = EmbeddedBackend::start(&store, &dir)?;

    println!("Part 1 — micro-guests, each in a fresh 64 MiB VM started at CPL 3:\n");
    table_header();
    let runs: [(&str, &[&str], bool); 4] = [
        ("hello", &["Nexus", "demo"], false),
        ("fib", &["20"], false),
        ("crash", &[], false),
        ("hostile", &["outputs/hostile-probe"], true),
    ];
    for (name, args, io) in runs {
        let run = demo_run(name, args, io.then(|| backend.socket()))?;
        // The hostile guest prints a line per attack: show the verdict only.
        let keep = if name == "hostile" { 2 } else { usize::MAX };
        let lines: Vec<&str> = run.console.lines().collect();
        let console = lines[lines.len().saturating_sub(keep)..].join("\n");
        print_run(name, args, &DemoRun { console, ..run });
    }

    // Part 2: the node, as `nexus-vmm serve` runs it, minus the HTTP front.
    let functions_dir = dir.join("functions");
    std::fs::create_dir_all(&functions_dir)?;
    let demo_functions = [
        DemoFunction {
            name: "wordcount",
            input: node::vm::Input::Key("inputs/words.txt".into()),
            what: "counts words",
        },
        DemoFunction {
            name: "compress",
            input: node::vm::Input::Key("inputs/words.txt".into()),
            what: "deflates",
        },
        DemoFunction {
            name: "aes",
            input: node::vm::Input::Key("inputs/words.txt".into()),
            what: "encrypts (AES-128-CTR)",
        },
        DemoFunction {
            name: "fibonacci",
            input: node::vm::Input::Inline("27".into()),
            what: "fib(n), naively",
        },
    ];
    for f in &demo_functions {
        std::fs::write(
            functions_dir.join(format!("{}.toml", f.name)),
            format!(
                "guest = \"{}\"\nmemory_mib = 64\nwindow_mib = 32\n\n[limits]\ntimeout_ms = 10000\n",
                f.name
            ),
        )?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nexus-node")
        .on_thread_start(seccomp::node_thread)
        .enable_all()
        .build()?;
    let node = node::Node::new(
        node::NodeConfig {
            backend: backend.socket().to_path_buf(),
            snapshot_dir: dir.join("snapshots"),
            max_vms: 16,
            max_queue: 16,
            queue_timeout: Duration::from_secs(30),
            pick: node::Pick::Mru,
            wait_timeout: Duration::from_secs(1),
            vcpu_threads: node::VcpuThreads::Pool,
            vcpu_idle_retire: nexus_kvm::pool::PoolConfig::default().idle_retire,
            net: node::NetSettings::default(),
            publish: None,
        },
        node::registry::load_dir(&functions_dir)?,
        None, // the demo's functions all use nexus-io: no network of net functions
        runtime.handle().clone(),
    )?;
    eprintln!("nexus: [3/4] snapshotting each function parked in NEXT…");
    for f in &demo_functions {
        let t = Instant::now();
        node.prepare(f.name)?;
        eprintln!(
            "nexus:       {:<10} snapshot ready in {:.0} ms",
            f.name,
            ms(t.elapsed())
        );
    }
    eprintln!("nexus: [4/4] invoking each function cold (restore from its snapshot), then warm…");
    println!(
        "\nPart 2 — the node: functions restored from their snapshots (cold: the input is\n\
         prefetched by the backend while the VM is restored), then served again by the parked\n\
         VM (warm). Input of the first three: inputs/words.txt ({} bytes).\n",
        text.len()
    );
    println!(
        "{:<10} {:<24} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10}",
        "function",
        "does",
        "cold ms",
        "warm ms",
        "exits cold",
        "exits warm",
        "bytes in",
        "bytes out"
    );
    let mut outputs = Vec::new();
    for f in &demo_functions {
        let mut runs = Vec::new();
        for start in ["cold", "warm"] {
            let output_key = format!("outputs/{}.{start}", f.name);
            let result = runtime
                .block_on(node.invoke(
                    f.name,
                    node::Invocation {
                        input: f.input.clone(),
                        output_key: Some(output_key.clone()),
                        request_id: String::new(),
                    },
                ))
                .with_context(|| format!("The {start} invocation of {} failed", f.name))?;
            if result.start != start || result.outcome != "success" {
                bail!(
                    "The {start} invocation of {} was served {} with outcome {}",
                    f.name,
                    result.start,
                    result.outcome
                );
            }
            outputs.push(store.join(&output_key));
            runs.push(result);
        }
        let (cold, warm) = (&runs[0], &runs[1]);
        println!(
            "{:<10} {:<24} {:>9.2} {:>9.2} {:>11} {:>11} {:>10} {:>10}",
            f.name,
            f.what,
            cold.timings_ms.total,
            warm.timings_ms.total,
            cold.vm_exits,
            warm.vm_exits,
            warm.bytes_in,
            warm.bytes_out
        );
        println!(
            "{:<10} └ cold: restore {:.2} ms, function {:.2} ms; warm: function {:.2} ms; \
             result {} bytes",
            "",
            cold.timings_ms.restore,
            cold.timings_ms.function,
            warm.timings_ms.function,
            warm.output_len
        );
    }
    runtime.block_on(node.shutdown());
    drop(runtime);
    drop(backend);
    println!("\nOutputs (kept for you to inspect):");
    for path in outputs {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("  {len:>9} bytes  {}", path.display());
    }
    println!(
        "\n\"exits\" in part 1 counts the VM exits the VMM handled in user space and \"KVM\" all\n\
         exits KVM counted; in part 2, exits are KVM's, per invocation (doorbells included).\n\
         Serve the same functions over HTTP:\n\
         \x20 cargo run --release --example nexus-vmm -- serve --store {} --functions {}\n\
         \x20 curl -s -X POST localhost:8080/v1/functions/wordcount/invocations -d '{{\"input_key\":\"inputs/words.txt\"}}'\n\
         Demo finished in {:.1} s.",
        store.display(),
        functions_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use nexus_kvm::micro::DeviceInfo;

    #[test]
    fn the_linux_command_line_names_the_device_and_the_window() {
        let device = nexus_io::device_info();
        let window = (nexus_kvm::layout::WINDOW_START, 96 << 20);
        let cmdline = linux_cmdline("console=ttyS0 reboot=k  ", device, window).unwrap();
        assert_eq!(
            cmdline,
            "console=ttyS0 reboot=k nexus.io=0xe0000000,0x1000 \
             nexus.window=0xc0000000,0x6000000"
        );
        // What the guest's driver reads back is what the VMM placed.
        let words: Vec<&str> = cmdline.split_ascii_whitespace().collect();
        assert!(
            words.contains(&format!("nexus.io={:#x},{:#x}", device.base, device.size).as_str())
        );
        assert_eq!(
            linux_cmdline(
                "",
                DeviceInfo {
                    base: 0xE000_1000,
                    size: 0x1000
                },
                (0x1_0000_0000, 0x20_0000)
            )
            .unwrap(),
            "nexus.io=0xe0001000,0x1000 nexus.window=0x100000000,0x200000"
        );
    }

    #[test]
    fn a_command_line_that_names_the_device_already_is_refused() {
        let device = nexus_io::device_info();
        for cmdline in ["console=ttyS0 nexus.io=0x1,0x1", "nexus.window=1,1 quiet"] {
            let error = linux_cmdline(cmdline, device, (0xC000_0000, 0x10_0000)).unwrap_err();
            assert!(error.to_string().contains("already has"), "{error}");
        }
        // Other parameters that merely start alike are not it.
        assert!(
            linux_cmdline("nexus.iox=1 nexus.io.x=2", device, (0xC000_0000, 0x10_0000)).is_ok()
        );
    }

    #[test]
    fn run_accepts_a_backend_with_a_kernel() {
        let cli = Cli::try_parse_from([
            "nexus-vmm",
            "run",
            "--kernel",
            "vmlinux",
            "--backend",
            "/run/nexus-backend.sock",
            "--tenant",
            "acme",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            args.kernel.as_deref(),
            Some(std::path::Path::new("vmlinux"))
        );
        assert_eq!(
            args.backend.as_deref(),
            Some(std::path::Path::new("/run/nexus-backend.sock"))
        );
    }
}
