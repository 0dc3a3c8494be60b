// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The nexus-io virtio device (VMM side) of the Nexus hypervisor.
//!
//! A function's VM does compute only: its I/O requests travel, as nexus-ring messages, through
//! one virtqueue of this device to the host's shared backend. The rings and every buffer live
//! in the VM's **I/O window**, a memfd-backed region outside guest RAM, and the window is all
//! of the VM the backend is given. The contract is `docs/nexus-io.md` of the Nexus repository.
//!
//! - [`NexusIo`] is the device model ([`device`]): a [`VirtioDevice`] for the
//!   [`MmioTransport`] of `nexus-kvm`, with the WAIT register and the configuration space the
//!   guest finds its window in. Its contract with the guest driver and the backend (device
//!   ID, feature bits, configuration layout, WAIT values) is defined once, in
//!   `nexus_ring::device`, and re-exported here.
//! - On `DRIVER_OK` the device checks that the rings lie in the window, sends `attach` on the
//!   backend's control socket ([`ControlClient`]), and sets up a vhost-user session as the
//!   **frontend**: its memory table holds exactly one region, the window.
//! - The doorbell (`QueueNotify`) is an ioeventfd handed to the backend as its kick eventfd:
//!   KVM signals the backend without an exit to the VMM. Completions come back on the call
//!   eventfd: an irqfd for VMs with an interrupt controller, otherwise the WAIT register
//!   sleeps on it ([`event_handler`]).
//! - A monitor thread watches both backend connections; when the backend goes away the device
//!   reports `backend_state` 0 and WAIT returns [`BACKEND_UNAVAILABLE`], and on the next
//!   `DRIVER_OK` after a reset it reconnects.
//! - [`NexusIoState`] ([`persist`]) is the state a snapshot keeps; [`NexusIo::resume`]
//!   reconnects a restored device so that the guest notices nothing.
//!
//! # Example
//!
//! ```no_run
//! use nexus_io::{NexusIo, NexusIoConfig};
//! use nexus_kvm::memory::MemoryConfig;
//! use nexus_kvm::micro::{MicroVm, MicroVmConfig};
//! use nexus_kvm::serial::Console;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let elf = std::fs::read("target/release/my-function")?;
//! let mut vm = MicroVm::new(&elf, MicroVmConfig {
//!     memory: MemoryConfig { ram_size: 64 << 20, window_size: 16 << 20 },
//!     args: vec![],
//!     device: Some(nexus_io::device_info()),
//!     net_device: None,
//!     console: Console::new(std::io::stdout()),
//! })?;
//! let device = NexusIo::new(NexusIoConfig {
//!     control_socket: "/run/nexus-backend.sock".into(),
//!     vm_id: "vm-1".into(),
//!     tenant: "acme".into(),
//!     window: vm.vm().memory().window().expect("a window").clone(),
//!     irq: None,
//! })?;
//! let _device = nexus_io::attach(vm.vm(), device)?;
//! let code = vm.run()?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod control;
pub mod device;
pub mod event_handler;
mod frontend;
mod link;
pub mod persist;
mod polled;
mod sys;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::IoEventAddress;
use log::debug;
use nexus_kvm::layout::{MMIO_DEVICE_SIZE, mmio_device_base};
use nexus_kvm::micro::DeviceInfo;
use nexus_kvm::virtio_mmio::MmioTransport;
use nexus_kvm::{BusKind, Vm};
use nexus_ring::mmio::regs;

pub use control::{ControlClient, ControlEvent, EventHandler, SharedControl};
pub use device::{
    BACKEND_UNAVAILABLE, DEVICE_FEATURES, DEVICE_ID, InterruptMode, NEXUS_F_WAIT,
    NEXUS_F_WRITE_BEHIND, NexusIo, NexusIoConfig, QUEUE_SIZE_MAX, VENDOR_ID, WAIT_TIMEOUT,
};
pub use nexus_kvm::virtio_mmio::{MmioTransportState, QueueConfig, VirtioDevice};
pub use persist::{NexusIoDeviceState, NexusIoState};
pub use polled::attach_polled;

/// Guest memory as this crate sees it (the window alone).
type GuestMemoryMmap = nexus_kvm::GuestMemoryMmap;

/// The device behind its virtio-mmio transport.
pub type NexusIoTransport = MmioTransport<NexusIo>;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An eventfd could not be created or cloned.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The window could not be viewed as guest memory.
    #[error("Cannot view the I/O window as guest memory")]
    WindowMemory(#[source] vm_memory::GuestRegionCollectionError),
    /// The VM's window is not the device's.
    #[error("The device's I/O window is not the VM's")]
    WindowMismatch,
    /// The control socket could not be reached.
    #[error("Cannot connect to the backend's control socket {}", path.display())]
    ControlConnect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the control connection failed (or timed out).
    #[error("The backend's control connection failed")]
    ControlIo(#[source] std::io::Error),
    /// The backend closed the control connection.
    #[error("The backend closed the control connection")]
    ControlClosed,
    /// The backend's reply was not what the protocol says.
    #[error("The backend sent a malformed reply to {op}")]
    ControlReply {
        /// The request.
        op: &'static str,
        /// The JSON error, if that was the problem.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The backend answered `ok: false`.
    #[error("The backend refused {op}: {message}")]
    ControlRefused {
        /// The request.
        op: &'static str,
        /// The backend's message.
        message: String,
    },
    /// The VM's vhost-user connection could not be set up.
    #[error("Cannot set up the vhost-user connection to the backend")]
    VhostConnect(#[source] std::io::Error),
    /// A vhost-user request failed.
    #[error("The vhost-user request {request} failed")]
    Vhost {
        /// The request.
        request: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The backend monitor could not be started.
    #[error("Cannot start the backend monitor")]
    Monitor(#[source] std::io::Error),
    /// `DRIVER_OK` without a ready request queue.
    #[error("The driver set DRIVER_OK without a ready request queue")]
    QueueNotReady,
    /// A ring of the request queue is not inside the window.
    #[error(
        "The {area} of the request queue ({addr:#x}, {len} bytes) is not inside the I/O window"
    )]
    RingOutsideWindow {
        /// Which ring area.
        area: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The request queue is invalid.
    #[error("The request queue is invalid")]
    Queue(#[source] virtio_queue::Error),
    /// The VM has an interrupt controller but the device no interrupt line.
    #[error("The VM has an interrupt controller but the device was given no IRQ")]
    MissingIrq,
    /// The doorbell ioeventfd could not be registered.
    #[error("Cannot register the doorbell ioeventfd")]
    IoEventFd(#[source] nexus_kvm::Error),
    /// The completion irqfd could not be registered.
    #[error("Cannot register the completion irqfd")]
    IrqFd(#[source] nexus_kvm::Error),
    /// The device could not be placed on the MMIO bus.
    #[error("Cannot place the device on the MMIO bus")]
    Bus(#[source] nexus_kvm::bus::Error),
    /// The saved transport state does not fit the device.
    #[error("The saved transport state does not fit the device")]
    State(#[source] nexus_kvm::virtio_mmio::Error),
    /// The saved state is for another window.
    #[error(
        "The saved state is for a window at {saved_base:#x} of {saved_size:#x} bytes, \
         not {base:#x} of {size:#x} bytes"
    )]
    StateWindow {
        /// Saved base.
        saved_base: u64,
        /// Saved size.
        saved_size: u64,
        /// Base of the window given.
        base: u64,
        /// Size of the window given.
        size: u64,
    },
    /// A saved device section could not be parsed.
    #[error("The saved nexus-io state is {0}")]
    StateFormat(&'static str),
    /// The saved configuration fields differ from the device's.
    #[error("The saved configuration fields differ from this device's")]
    StateConfig,
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// `error: cause: cause…`, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Where [`attach`] puts the device: its slot of the MMIO hole
/// (`nexus_ring::device::MMIO_SLOT`, the first). Give it to the micro-guest loader (the
/// boot-info's `device_base`, `device_size`).
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        base: mmio_device_base(nexus_ring::device::MMIO_SLOT).0,
        size: MMIO_DEVICE_SIZE,
    }
}

/// A device on a VM's bus.
#[derive(Debug, Clone)]
pub struct AttachedDevice {
    /// The device and its transport, as the bus holds them.
    pub transport: Arc<Mutex<NexusIoTransport>>,
    /// Where it is, for the boot-info or the kernel command line.
    pub info: DeviceInfo,
}

/// Puts `device` on `vm`'s MMIO bus at [`device_info`]'s base, with its doorbell registered
/// as an ioeventfd, and — if the VM has an interrupt controller — its call eventfd as an irqfd
/// on the device's IRQ (otherwise the guest uses the WAIT register).
pub fn attach(vm: &Vm, device: NexusIo) -> Result<AttachedDevice> {
    attach_transport(vm, MmioTransport::new(device))
}

/// [`attach`] for a device already in its transport (for example one restored from a
/// snapshot).
pub fn attach_transport(vm: &Vm, mut transport: NexusIoTransport) -> Result<AttachedDevice> {
    let info = device_info();
    let device = transport.device_mut();
    let window = vm.memory().window().ok_or(Error::WindowMismatch)?;
    if (window.base(), window.size()) != (device.window().base(), device.window().size()) {
        return Err(Error::WindowMismatch);
    }
    if vm.has_irqchip() {
        let irq = device.irq().ok_or(Error::MissingIrq)?;
        vm.register_irqfd(device.call_eventfd(), irq)
            .map_err(Error::IrqFd)?;
        device.set_interrupt_mode(InterruptMode::Irqfd);
    } else {
        if let Some(irq) = device.irq() {
            debug!("nexus-io: the VM has no interrupt controller: IRQ {irq} unused, WAIT it is");
        }
        device.set_interrupt_mode(InterruptMode::Wait);
    }
    let doorbell = IoEventAddress::Mmio(info.base + u64::from(regs::QUEUE_NOTIFY));
    vm.register_ioeventfd(device.kick_eventfd(), doorbell, None)
        .map_err(Error::IoEventFd)?;
    let transport = Arc::new(Mutex::new(transport));
    if let Err(e) = vm.add_device(BusKind::Mmio, transport.clone(), info.base, info.size) {
        let transport = transport.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = vm.unregister_ioeventfd(transport.device().kick_eventfd(), doorbell, None);
        return Err(Error::Bus(e));
    }
    Ok(AttachedDevice { transport, info })
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
