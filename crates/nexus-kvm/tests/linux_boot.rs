//! Boots a stock Linux kernel (Debian's cloud kernel) on /dev/kvm.
//!
//! The kernel comes from `scripts/fetch-test-kernel.sh`, which caches it outside the
//! repository: `NEXUS_TEST_VMLINUX` names the ELF `vmlinux` (default
//! `${NEXUS_KERNEL_CACHE:-$HOME/.cache/nexus/kernel}/vmlinux`), `NEXUS_TEST_BZIMAGE` the
//! bzImage (default: `vmlinuz` beside the vmlinux). Without them the tests fail, saying how to
//! fetch them.
//!
//! On a host whose KVM emulates CPL 0 (PVM, see DESIGN.md) a kernel prints its banner at once
//! and then crawls, so the PVH test stops at the banner, and the bzImage test — whose LZ4
//! decompressor alone runs for minutes there — checks only what the loader wrote.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use linux_loader::loader::bootparam::boot_params;
use nexus_kvm::layout::{BOOT_INFO_ADDR, PML4_ADDR, WINDOW_START};
use nexus_kvm::linux::{
    self, BootProtocol, CMDLINE_ADDR, E820_RAM, E820_RESERVED, LinuxConfig, LinuxEntry,
};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_kvm::{Vcpu, VcpuConfig, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
const MEMORY: MemoryConfig = MemoryConfig {
    ram_size: 256 * MIB,
    window_size: 4 * MIB,
};
/// `earlyprintk` registers a console early in `setup_arch`, which replays the log buffer —
/// the banner is logged just before; `console=ttyS0` would register only late in boot.
const CMDLINE: &str = "earlyprintk=serial,ttyS0,115200 console=ttyS0 reboot=k panic=-1";
const BANNER: &str = "Linux version";
/// The banner takes about 20 s on PVM (early init runs emulated before the early console
/// exists); the test stops as soon as it is seen.
const BANNER_TIMEOUT: Duration = Duration::from_secs(120);

fn cache_dir() -> PathBuf {
    match std::env::var_os("NEXUS_KERNEL_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nexus/kernel")
        }
    }
}

fn vmlinux() -> PathBuf {
    std::env::var_os("NEXUS_TEST_VMLINUX")
        .map_or_else(|| cache_dir().join("vmlinux"), PathBuf::from)
}

/// Runs `scripts/fetch-test-kernel.sh` once per test process (it is idempotent and caches
/// the kernel outside the repository), unless the caller named a kernel explicitly.
fn fetch_once() {
    static FETCH: std::sync::Once = std::sync::Once::new();
    FETCH.call_once(|| {
        let explicit = std::env::var_os("NEXUS_TEST_VMLINUX").is_some();
        if explicit || vmlinux().is_file() {
            return;
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-test-kernel.sh");
        eprintln!("Fetching the test kernel with {}", script.display());
        match std::process::Command::new("bash").arg(&script).status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("{} failed: {status}", script.display()),
            Err(e) => eprintln!("Cannot run {}: {e}", script.display()),
        }
    });
}

/// `path`, or a failure that says how to get it.
fn require(path: PathBuf, what: &str) -> PathBuf {
    fetch_once();
    assert!(
        path.is_file(),
        "The test kernel ({what}) is missing at {}. Fetch it with `scripts/fetch-test-kernel.sh` \
         (it caches Debian's cloud kernel in ${{NEXUS_KERNEL_CACHE:-$HOME/.cache/nexus/kernel}}), \
         or point NEXUS_TEST_VMLINUX / NEXUS_TEST_BZIMAGE at a kernel.",
        path.display()
    );
    path
}

/// A VM with interrupt controllers, COM1 on `out`, the kernel loaded and the vCPU set up.
fn linux_vm(config: &LinuxConfig, out: &ConsoleBuffer) -> (Vm, Vcpu, LinuxEntry) {
    let mut vm = Vm::new(VmConfig {
        memory: MEMORY,
        irqchip: true,
    })
    .unwrap();
    let entry = linux::load(vm.memory(), config).unwrap();
    linux::add_serial(&vm, Console::new(out.clone())).unwrap();
    let vcpu = vm.create_vcpu(VcpuConfig { strict_io: false }).unwrap();
    linux::setup_vcpu(vcpu.fd(), &entry).unwrap();
    (vm, vcpu, entry)
}

#[test]
fn vmlinux_prints_its_banner_through_pvh() {
    let kernel = require(vmlinux(), "ELF vmlinux");
    let out = ConsoleBuffer::default();
    let config = LinuxConfig {
        kernel,
        initrd: None,
        cmdline: CMDLINE.into(),
    };
    let start = Instant::now();
    let (_vm, vcpu, entry) = linux_vm(&config, &out);
    assert_eq!(entry.protocol, BootProtocol::Pvh);
    let loaded = start.elapsed();

    let handle = vcpu.spawn("linux-vcpu0".into()).unwrap();
    let mut seen = None;
    while start.elapsed() < BANNER_TIMEOUT && !handle.is_finished() {
        if out.text().contains(BANNER) {
            seen = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever the kernel did, stop and join the vCPU thread before judging.
    let (vcpu, result) = handle.stop().unwrap();
    let console = out.text();
    eprintln!(
        "loaded in {loaded:?}; banner after {seen:?}; vCPU ended with {result:?} after {:?}",
        vcpu.exit_counters()
    );
    eprintln!("--- console ---\n{console}\n---");
    assert!(
        seen.is_some(),
        "no {BANNER:?} on the console within {BANNER_TIMEOUT:?}; the vCPU ended with {result:?}"
    );
}

#[test]
fn bzimage_loads_with_boot_params() {
    let vmlinux = vmlinux();
    let default = vmlinux.with_file_name("vmlinuz");
    let kernel = std::env::var_os("NEXUS_TEST_BZIMAGE").map_or(default, PathBuf::from);
    let kernel = require(kernel, "bzImage");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, [0xa5u8; 12345]).unwrap();
    let config = LinuxConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: CMDLINE.into(),
    };
    let out = ConsoleBuffer::default();
    let (vm, vcpu, entry) = linux_vm(&config, &out);

    assert_eq!(entry.protocol, BootProtocol::BzImage);
    assert_eq!(entry.entry, entry.kernel_start + 0x200);
    assert_eq!(entry.page_tables, Some(PML4_ADDR));
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!((regs.rip, regs.rsi), (entry.entry, BOOT_INFO_ADDR));
    let sregs = vcpu.fd().get_sregs().unwrap();
    assert_eq!(
        (sregs.cs.l, sregs.cs.dpl, sregs.cr3),
        (1, 0, PML4_ADDR),
        "64-bit, CPL 0"
    );

    let g = vm.memory().guest();
    let params: boot_params = g.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
    let hdr = params.hdr;
    assert_eq!(&{ hdr.header }.to_le_bytes(), b"HdrS");
    assert!({ hdr.version } >= 0x020c, "protocol {:#x}", { hdr.version });
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.code32_start } as u64, entry.kernel_start);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_ADDR);
    let mut line = vec![0u8; CMDLINE.len()];
    g.read_slice(&mut line, GuestAddress(CMDLINE_ADDR)).unwrap();
    assert_eq!(line, CMDLINE.as_bytes());
    let (image, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(entry.initrd, Some((image, size)));
    assert_eq!(size, 12345);
    assert!(image >= entry.kernel_end && image + size <= MEMORY.ram_size);
    assert!(image + size <= u64::from(hdr.initrd_addr_max) + 1);
    assert_eq!(
        g.read_obj::<u8>(GuestAddress(image + size - 1)).unwrap(),
        0xa5
    );

    let e820: Vec<(u64, u64, u32)> = params.e820_table[..params.e820_entries as usize]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9_fc00, E820_RAM),
            (MIB, MEMORY.ram_size - MIB, E820_RAM),
            (WINDOW_START, MEMORY.window_size, E820_RESERVED),
        ]
    );
    // The start of the 64-bit entry point (startup_64) is in place.
    let mut code = [0u8; 16];
    g.read_slice(&mut code, GuestAddress(entry.entry)).unwrap();
    assert_ne!(code, [0u8; 16]);
}
