//! `nexus-vmm`: the Nexus demo VMM.
//!
//! A thin binary: it parses arguments and calls the crates. See `nexus-vmm --help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use nexus::guests;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::Console;

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

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn demo() -> Result<()> {
    guests::build_bundled(true)?;
    let runs: [(&str, &[&str]); 3] = [
        ("hello", &["Nexus", "demo"]),
        ("fib", &["20"]),
        ("crash", &[]),
    ];
    println!("Running the bundled micro-guests, each in a fresh 64 MiB VM at CPL 3:\n");
    println!(
        "{:<7} {:<14} {:<34} {:>9} {:>10} {:>10}",
        "guest", "args", "outcome", "time ms", "user exits", "KVM exits"
    );
    for (name, args) in runs {
        let path = guests::resolve(name)?;
        let elf = std::fs::read(&path)?;
        let out = Captured::default();
        let config = MicroVmConfig {
            memory: MemoryConfig {
                ram_size: 64 << 20,
                window_size: 4 << 20,
            },
            args: args.iter().map(|s| s.to_string()).collect(),
            device: None,
            console: Console::new(out.clone()),
        };
        let start = Instant::now();
        let mut vm = MicroVm::new(&elf, config)?;
        let stats = vm.vcpu().stats().ok();
        let before = stats.as_ref().and_then(|s| s.read("exits").ok().flatten());
        let result = vm.run();
        let elapsed = start.elapsed();
        let kvm_exits = match (&stats, before) {
            (Some(s), Some(b)) => s.read("exits").ok().flatten().map(|a| (a - b).to_string()),
            _ => None,
        };
        let outcome = match &result {
            Ok(code) => format!("exit {code}"),
            Err(nexus_kvm::Error::GuestCrash(r)) => {
                format!("crash: {} at RIP {:#x}", r.cause, r.regs.rip)
            }
            Err(e) => format!("error: {e}"),
        };
        println!(
            "{:<7} {:<14} {:<34} {:>9.2} {:>10} {:>10}",
            name,
            args.join(" "),
            outcome,
            ms(elapsed),
            vm.exit_counters().total(),
            kvm_exits.unwrap_or_else(|| "n/a".into())
        );
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        for line in text.lines() {
            println!("        │ {line}");
        }
    }
    println!(
        "\nEach guest ran directly in 64-bit user mode; its console lines are shown under it."
    );
    Ok(())
}
