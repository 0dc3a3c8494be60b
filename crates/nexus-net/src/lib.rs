// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-net device over a tap (VMM side) of the Nexus hypervisor.
//!
//! Nexus is measured against an in-guest networking baseline: function VMs that carry their
//! own TCP/IP, HTTP and S3 client and reach storage through a virtio-net device over a tap,
//! as Firecracker VMs do. This crate is that device, tuned as a fair baseline: the same
//! notification path as nexus-io (an ioeventfd doorbell, the WAIT register for micro-guests),
//! checksum offload both ways, one copy per frame between the kernel and guest memory. The
//! contract with the guest driver is `docs/nexus-net.md` of the Nexus repository.
//!
//! - [`NexusNet`] is the device model ([`device`]): a [`VirtioDevice`] for the
//!   [`MmioTransport`] of `nexus-kvm`, device ID 1, two queues (receive, transmit), the MAC,
//!   link status and MTU in its configuration space, and the WAIT register. The contract's
//!   constants (IDs, feature bits, configuration layout, WAIT value, `virtio_net_hdr_v1`) are
//!   defined once, in `nexus_ring::net`, and re-exported here.
//! - [`Tap`] ([`tap`]) opens the tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) in the calling
//!   thread's network namespace; the device takes any tap the caller made.
//! - The I/O path ([`event_handler`]) moves frames between the queues (in guest RAM, chains
//!   popped through `nexus_ring::queue::pop_checked`) and the tap; every device of the process
//!   is served by one event-loop thread, in turns of bounded work, so that no guest can starve
//!   another.
//! - [`NexusNetState`] ([`persist`]) is the state a snapshot keeps; a restored device resumes
//!   on a new tap without a guest reset.
//! - [`NetStats`] counts frames, bytes, drops and ring faults per device.
//!
//! # Example
//!
//! ```no_run
//! use nexus_kvm::memory::MemoryConfig;
//! use nexus_kvm::micro::{MicroVm, MicroVmConfig};
//! use nexus_kvm::serial::Console;
//! use nexus_net::{NexusNet, NexusNetConfig, Tap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let elf = std::fs::read("target/release/my-function")?;
//! let mut vm = MicroVm::new(&elf, MicroVmConfig {
//!     memory: MemoryConfig { ram_size: 64 << 20, window_size: 0 },
//!     args: vec!["ip=10.0.0.2/24".into(), "gw=10.0.0.1".into()],
//!     device: None,
//!     net_device: Some(nexus_net::device_info()),
//!     console: Console::new(std::io::stdout()),
//! })?;
//! // Made in the network namespace this thread is in (the node's, for its VMs).
//! let tap = Tap::open(Some("nx-vm1"))?;
//! let device = NexusNet::new(NexusNetConfig {
//!     tap,
//!     mac: [0x02, 0, 0, 0, 0, 1],
//!     memory: nexus_net::guest_ram(vm.vm().memory())?,
//! })?;
//! let attached = nexus_net::attach(vm.vm(), device)?;
//! let code = vm.run()?;
//! println!("exit {code}, {:?}", attached.stats.snapshot());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod device;
pub mod event_handler;
mod event_loop;
pub mod header;
pub mod persist;
pub mod stats;
pub mod tap;
#[cfg(feature = "test-utils")]
pub mod test_utils;

use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::IoEventAddress;
use nexus_kvm::layout::{MMIO_DEVICE_SIZE, mmio_device_base};
use nexus_kvm::micro::DeviceInfo;
use nexus_kvm::virtio_mmio::MmioTransport;
use nexus_kvm::{BusKind, Vm, VmMemory};
use nexus_ring::mmio::regs;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

pub use device::{
    DEVICE_FEATURES, DEVICE_ID, NexusNet, NexusNetConfig, QUEUE_SIZE_MAX, VENDOR_ID, WAIT_NOT_LIVE,
    WAIT_TIMEOUT, wait_value,
};
pub use event_handler::{QUEUE_BUDGET, QueuePosition};
pub use nexus_kvm::virtio_mmio::{MmioTransportState, QueueConfig, VirtioDevice};
pub use persist::{NexusNetDeviceState, NexusNetState, SavedQueue};
pub use stats::{NetCounters, NetStats};
pub use tap::Tap;

/// Guest memory as this crate sees it (guest RAM).
pub type GuestMemoryMmap = nexus_kvm::GuestMemoryMmap;

/// The device behind its virtio-mmio transport.
pub type NexusNetTransport = MmioTransport<NexusNet>;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tap could not be opened or configured.
    #[error("Tap error")]
    Tap(#[from] tap::Error),
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The event loop could not be started, or refused a device.
    #[error("The event loop cannot serve the device")]
    EventLoop(#[source] std::io::Error),
    /// Guest RAM could not be viewed without the I/O window.
    #[error("Cannot view guest RAM without the I/O window")]
    GuestRam(#[source] vm_memory::GuestRegionCollectionError),
    /// The device's memory is not the VM's RAM.
    #[error("The device's guest memory is not the VM's RAM")]
    MemoryMismatch,
    /// `DRIVER_OK` without a ready queue.
    #[error("The driver set DRIVER_OK without a ready {0} queue")]
    QueueNotReady(&'static str),
    /// A ring of a queue is not in guest RAM.
    #[error("The {area} of the {queue} queue ({addr:#x}, {len} bytes) is not in guest RAM")]
    RingOutsideMemory {
        /// Which queue.
        queue: &'static str,
        /// Which ring area.
        area: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A queue is invalid.
    #[error("A queue is invalid")]
    Queue(#[source] virtio_queue::Error),
    /// The doorbell ioeventfd could not be registered.
    #[error("Cannot register the doorbell ioeventfd")]
    IoEventFd(#[source] nexus_kvm::Error),
    /// The device could not be placed on the MMIO bus.
    #[error("Cannot place the device on the MMIO bus")]
    Bus(#[source] nexus_kvm::bus::Error),
    /// The saved transport state does not fit the device.
    #[error("The saved transport state does not fit the device")]
    State(#[source] nexus_kvm::virtio_mmio::Error),
    /// A saved device section could not be parsed.
    #[error("The saved nexus-net state is {0}")]
    StateFormat(&'static str),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Where [`attach`] puts the device: its slot of the MMIO hole (`nexus_ring::net::MMIO_SLOT`,
/// the second; nexus-io is in the first). Give it to the micro-guest loader
/// (`MicroVmConfig::net_device`: the boot-info's `net_device_base`).
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        base: mmio_device_base(nexus_ring::net::MMIO_SLOT).0,
        size: MMIO_DEVICE_SIZE,
    }
}

/// The VM's RAM, without the I/O window: the memory a [`NexusNet`] serves.
pub fn guest_ram(memory: &VmMemory) -> Result<GuestMemoryMmap> {
    match memory.window() {
        Some(window) => memory
            .guest()
            .remove_region(window.base(), window.size())
            .map(|(ram, _window)| ram)
            .map_err(Error::GuestRam),
        None => Ok(memory.guest().clone()),
    }
}

/// Whether `memory` is `vm`'s RAM: the same regions, mapped at the same host addresses.
fn is_vm_ram(vm: &Vm, memory: &GuestMemoryMmap) -> bool {
    let host =
        |r: &nexus_kvm::memory::GuestRegionMmap| r.get_host_address(MemoryRegionAddress(0)).ok();
    let window = vm.memory().window().map(|w| w.base());
    let ram: Vec<_> = vm
        .memory()
        .guest()
        .iter()
        .filter(|r| Some(r.start_addr()) != window)
        .map(|r| (r.start_addr(), r.len(), host(r)))
        .collect();
    let mine: Vec<_> = memory
        .iter()
        .map(|r| (r.start_addr(), r.len(), host(r)))
        .collect();
    ram == mine
}

/// A device on a VM's bus.
#[derive(Debug, Clone)]
pub struct AttachedNet {
    /// The device and its transport, as the bus holds them.
    pub transport: Arc<Mutex<NexusNetTransport>>,
    /// Where it is, for the boot-info.
    pub info: DeviceInfo,
    /// Its counters (readable without the transport's lock, which a sleeping WAIT holds).
    pub stats: Arc<NetStats>,
}

/// Puts `device` on `vm`'s MMIO bus at [`device_info`]'s base, with its doorbell
/// (`QueueNotify`, any value) registered as an ioeventfd. The device must serve the VM's RAM
/// ([`guest_ram`]). Completions reach the guest through the WAIT register (micro-guests take
/// no interrupts; an irqfd for guests with an interrupt controller is not wired).
pub fn attach(vm: &Vm, device: NexusNet) -> Result<AttachedNet> {
    attach_transport(vm, MmioTransport::new(device))
}

/// [`attach`] for a device already in its transport (for example one restored from a
/// snapshot, [`NexusNetState::restore`]).
pub fn attach_transport(vm: &Vm, transport: NexusNetTransport) -> Result<AttachedNet> {
    let info = device_info();
    let device = transport.device();
    if !is_vm_ram(vm, device.memory()) {
        return Err(Error::MemoryMismatch);
    }
    let stats = device.stats();
    let doorbell = IoEventAddress::Mmio(info.base + u64::from(regs::QUEUE_NOTIFY));
    vm.register_ioeventfd(device.kick_eventfd(), doorbell, None)
        .map_err(Error::IoEventFd)?;
    let transport = Arc::new(Mutex::new(transport));
    if let Err(e) = vm.add_device(BusKind::Mmio, transport.clone(), info.base, info.size) {
        let transport = transport.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = vm.unregister_ioeventfd(transport.device().kick_eventfd(), doorbell, None);
        return Err(Error::Bus(e));
    }
    Ok(AttachedNet {
        transport,
        info,
        stats,
    })
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
