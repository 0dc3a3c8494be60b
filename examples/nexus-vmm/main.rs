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
    /// The shared backend's control socket: attaches a nexus-io device connected to it.
    #[arg(long, value_name = "SOCKET", conflicts_with = "kernel")]
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
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo => demo().map(|()| 0),
        Command::Snapshot(args) => snapshot::snapshot(args).map(|()| 0),
        Command::Invoke(args) => snapshot::invoke(args),
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
        let device = nexus_io::NexusIo::new(nexus_io::NexusIoConfig {
            control_socket: socket.clone(),
            vm_id: args
                .vm_id
                .clone()
                .unwrap_or_else(|| format!("vmm-{}", std::process::id())),
            tenant: args.tenant.clone(),
            window,
            irq: None,
        })?;
        nexus_io::attach(vm.vm(), device)?;
    }
    let stats = vm.vcpu().stats().ok();
    let kvm_exits_before = stats.as_ref().and_then(|s| s.read("exits").ok().flatten());
    let setup = start.elapsed();
    let result = vm.run();
    let total = start.elapsed();
    if args.stats {
        let user = vm.exit_counters();
        let kvm_exits = match (&stats, kvm_exits_before) {
            (Some(s), Some(before)) => s.read("exits").ok().flatten().map(|a| a - before),
            _ => None,
        };
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
    }
    match result {
        Ok(code) => Ok(code),
        Err(e) => bail!("{e}"),
    }
}

fn run_linux(args: &RunArgs, kernel: PathBuf) -> Result<u32> {
    use nexus_kvm::linux::{self, LinuxConfig};
    let config = LinuxConfig {
        kernel,
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
    };
    let mut vm = nexus_kvm::Vm::new(nexus_kvm::VmConfig {
        memory: memory(args),
        irqchip: true,
    })?;
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

/// A backend serving in this process (the library, on its own tokio runtime).
struct EmbeddedBackend {
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    socket: PathBuf,
}

impl EmbeddedBackend {
    fn start(store: &std::path::Path, dir: &std::path::Path) -> Result<Self> {
        use nexus_backend::{Backend, BackendConfig, S3Options, StoreConfig, StoreUrl};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nexus-backend")
            .enable_all()
            .build()?;
        let store = StoreConfig {
            url: StoreUrl::File(store.to_path_buf()),
            s3: S3Options::default(),
        };
        let config = BackendConfig::new(store, dir.join("vms"));
        let backend = Backend::new(config, runtime.handle().clone())?;
        let socket = dir.join("backend.sock");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket)
                .with_context(|| format!("Cannot listen on {}", socket.display()))?
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            backend
                .serve_control(listener, async {
                    let _ = rx.await;
                })
                .await;
            backend.detach_all();
        });
        Ok(EmbeddedBackend {
            runtime,
            shutdown: Some(tx),
            socket,
        })
    }
}

impl Drop for EmbeddedBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_file(&self.socket);
        let _ = &self.runtime;
    }
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

fn demo() -> Result<()> {
    guests::build_bundled(true)?;
    println!("Part 1 — bundled micro-guests, each in a fresh 64 MiB VM started at CPL 3:\n");
    table_header();
    let runs: [(&str, &[&str]); 3] = [
        ("hello", &["Nexus", "demo"]),
        ("fib", &["20"]),
        ("crash", &[]),
    ];
    for (name, args) in runs {
        print_run(name, args, &demo_run(name, args, None)?);
    }

    let dir = std::env::temp_dir().join(format!("nexus-demo-{}", std::process::id()));
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("inputs"))?;
    std::fs::create_dir_all(store.join("outputs"))?;
    let text = sample_text(4 << 20);
    std::fs::write(store.join("inputs/words.txt"), &text)?;
    eprintln!(
        "nexus: starting an embedded backend over the local store {}…",
        store.display()
    );
    let backend = EmbeddedBackend::start(&store, &dir)?;
    println!(
        "\nPart 2 — I/O offload: functions read and write objects through the nexus-io device;\n\
         the backend (in this process) serves them from {} with zero-copy reads\n\
         and writes in each VM's I/O window. Input: inputs/words.txt ({} bytes).\n",
        store.display(),
        text.len()
    );
    table_header();
    let io_runs: [(&str, &[&str]); 4] = [
        ("wordcount", &["inputs/words.txt", "outputs/words.count"]),
        ("compress", &["inputs/words.txt", "outputs/words.txt.z"]),
        ("aes", &["inputs/words.txt", "outputs/words.txt.aes"]),
        ("hostile", &["outputs/hostile-probe"]),
    ];
    for (name, args) in io_runs {
        let run = demo_run(name, args, Some(&backend.socket))?;
        if name == "hostile" {
            // One line per malicious request is a lot: show the verdict only.
            let summary = DemoRun {
                console: run
                    .console
                    .lines()
                    .rev()
                    .take(2)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
                ..run
            };
            print_run(name, args, &summary);
        } else {
            print_run(name, args, &run);
        }
    }
    drop(backend);
    println!("\nOutputs (kept for you to inspect):");
    for entry in std::fs::read_dir(store.join("outputs"))? {
        let entry = entry?;
        println!(
            "  {:>9} bytes  {}",
            entry.metadata()?.len(),
            entry.path().display()
        );
    }
    println!(
        "\nEvery guest ran in 64-bit user mode; \"exits\" counts the VM exits its VMM handled in\n\
         user space, \"KVM\" all exits KVM counted (doorbells are absorbed inside KVM)."
    );
    Ok(())
}
