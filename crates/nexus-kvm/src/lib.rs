//! The vCPU and memory core of the Nexus hypervisor.
//!
//! `nexus-kvm` is usable on its own by any VMM built on KVM:
//!
//! - [`memory`]: guest RAM plus a separate, memfd-backed **I/O window** outside RAM, laid out
//!   as [`layout`] documents;
//! - [`vm`]: a VM over kvm-ioctls with memory slots, port and MMIO [`bus`]es, and
//!   ioeventfd/irqfd helpers;
//! - [`vcpu`]: vCPUs and their run loop (one thread each), with a clean stop from another
//!   thread and typed errors for crashes;
//! - [`serial`]: an 8250 console (vm-superio) writing to any writer;
//! - [`persist`]: the [`Persist`](persist::Persist) trait through which every device saves
//!   and restores its state, under its own section name in a snapshot;
//! - [`virtio_mmio`]: a virtio-mmio transport over the register map of `nexus_ring::mmio`;
//! - [`micro`]: the micro-guest loader — a static ELF started at CPL 3 (see
//!   `docs/micro-guest-abi.md`);
//! - [`linux`]: the Linux loader — an ELF `vmlinux` through its PVH entry or a bzImage
//!   through the Linux boot protocol, with initramfs, command line and an e820 map in which
//!   the I/O window is reserved;
//! - [`stats`]: KVM's binary statistics, which count every VM exit.
//!
//! # Example
//!
//! ```no_run
//! use nexus_kvm::memory::MemoryConfig;
//! use nexus_kvm::micro::{MicroVm, MicroVmConfig};
//! use nexus_kvm::serial::Console;
//!
//! let elf = std::fs::read("target/release/hello").unwrap();
//! let config = MicroVmConfig {
//!     memory: MemoryConfig { ram_size: 64 << 20, window_size: 0 },
//!     args: vec!["world".into()],
//!     device: None,
//!     net_device: None,
//!     console: Console::new(std::io::stdout()),
//! };
//! let mut vm = MicroVm::new(&elf, config).unwrap();
//! let code = vm.run().unwrap();
//! println!("guest exited with {code}");
//! ```

#![deny(missing_docs)]

pub mod bus;
pub mod elf;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod micro;
pub mod park;
pub mod persist;
pub mod pool;
pub mod serial;
pub mod stats;
pub mod threads;
pub mod vcpu;
pub mod virtio_mmio;
pub mod vm;
pub mod x86;

pub use bus::{BusAction, BusDevice};
pub use memory::{GuestMemoryMmap, MemoryConfig, VmMemory, WindowRegion};
pub use vcpu::{CrashReport, ExitCounters, Vcpu, VcpuConfig, VcpuHandle, VcpuStop};
pub use vm::{BusKind, Vm, VmConfig};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Memory set-up failed.
    #[error("Guest memory set-up failed")]
    Memory(#[from] memory::Error),
    /// `/dev/kvm` could not be opened or queried.
    #[error("Cannot use /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("Cannot create a KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// The interrupt controllers could not be created.
    #[error("Cannot create the in-kernel interrupt controllers")]
    IrqChip(#[source] kvm_ioctls::Error),
    /// A memory slot was refused.
    #[error("KVM refused a guest memory region")]
    MemoryRegion(#[source] kvm_ioctls::Error),
    /// Guest memory could not be accessed.
    #[error("Guest memory access failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// A device could not be placed on a bus.
    #[error("Cannot place a device on the bus")]
    Bus(#[from] bus::Error),
    /// An ioeventfd could not be (un)registered.
    #[error("Cannot register an ioeventfd")]
    IoEventFd(#[source] kvm_ioctls::Error),
    /// An irqfd could not be registered.
    #[error("Cannot register an irqfd")]
    IrqFd(#[source] kvm_ioctls::Error),
    /// An irqfd needs the in-kernel interrupt controllers.
    #[error("The VM has no interrupt controller, so it cannot take irqfd interrupts")]
    NoIrqChip,
    /// `KVM_CREATE_VCPU` failed.
    #[error("Cannot create a vCPU")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    /// Setting vCPU registers or CPUID failed.
    #[error("Cannot set up the vCPU")]
    VcpuSetup(#[source] kvm_ioctls::Error),
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// The micro-guest could not be loaded.
    #[error("Cannot load the micro-guest")]
    Load(#[from] micro::LoadError),
    /// The Linux kernel could not be loaded.
    #[error("Cannot load the Linux kernel")]
    Linux(#[from] linux::Error),
    /// Writing boot structures failed.
    #[error("Cannot write the boot structures")]
    BootStructures(#[from] x86::Error),
    /// The guest crashed.
    #[error("The guest crashed: {0}")]
    GuestCrash(Box<CrashReport>),
    /// The guest accessed a port or address no device holds.
    #[error("Unexpected {kind} at {addr:#x} (RIP {rip:#x}): no device is there")]
    UnexpectedExit {
        /// The access.
        kind: vcpu::AccessKind,
        /// Port or guest-physical address.
        addr: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// The guest halted with nothing to wake it.
    #[error("The guest halted without exiting")]
    Halted,
    /// The vCPU was stopped from another thread.
    #[error("The vCPU was stopped")]
    Stopped,
    /// A vCPU thread could not be started.
    #[error("Cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// A vCPU thread could not be signalled.
    #[error("Cannot signal the vCPU thread")]
    Kick(#[source] vmm_sys_util::errno::Error),
    /// A vCPU thread panicked.
    #[error("A vCPU thread panicked")]
    VcpuPanicked,
    /// Code run for the vCPU (a device's exit handler) panicked: the run ended there, the
    /// thread (or the pool's worker) went on. The guest is left mid-exit: discard the VM.
    #[error("The vCPU's run panicked: {0}")]
    RunPanicked(String),
    /// A vCPU pool's epoll set or wake-up eventfd could not be set up.
    #[error("Cannot set up the vCPU pool")]
    Pool(#[source] std::io::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
