// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The loopback transport of Nexus: an ordinary host process uses the real
//! [`nexus_guest::Nexus`] client against a real `nexus-backend`, with no VM.
//!
//! A function VM reaches the backend through the nexus-io device: the guest driver
//! (`nexus-guest`) writes the device's virtio-mmio registers, its requests and payloads live
//! in the VM's I/O window (a memfd the VMM maps and shares with the backend), and the VMM's
//! device model (`nexus-io`) attaches to the backend on its control socket and speaks
//! vhost-user to it. This crate puts all of that in one process: it creates and maps the
//! window memfd ([`nexus_kvm::WindowRegion`]), builds the **same** nexus-io device behind the
//! **same** virtio-mmio transport a VMM uses ([`nexus_io::NexusIoTransport`]), and hands the
//! driver a [`Registers`] implementation that calls the transport directly instead of trapping
//! through KVM. Nothing of the device, the driver or the protocol is written twice: what the
//! tests here check is what a guest runs.
//!
//! # The transport seam
//!
//! The driver needs exactly two things from its transport, and they are the seam every
//! transport implements:
//!
//! - [`Registers`] — 32-bit reads and writes of the device's register block. Two of them carry
//!   the I/O: the **doorbell** is a write to `QueueNotify` (in a VM an ioeventfd; here the
//!   transport writes the device's kick eventfd, which the backend polls), and the **wait** is
//!   a read of the config space's `WAIT` register (in a VM an exit that sleeps in the VMM;
//!   here the calling thread sleeps in the same code, on the backend's call eventfd).
//! - [`WindowMapping`] — where the window is in this program's address space and its
//!   guest-physical base (the device speaks guest-physical addresses to the backend). Here it
//!   is the memfd's mapping at [`nexus_kvm::layout::WINDOW_START`], kept mapped until the
//!   client and every [`WindowBuf`](nexus_guest::WindowBuf) of it are gone.
//!
//! The other transports are a micro-guest (identity-mapped registers and window,
//! `Nexus::from_boot_info`) and a Linux guest process (`/dev/mem` mappings, `nexus-guest`'s
//! feature `linux`).
//!
//! # Example
//!
//! ```no_run
//! use nexus_loopback::{Loopback, LoopbackConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut nexus = Loopback::connect(LoopbackConfig::new(
//!     "/run/nexus-backend.sock",
//!     "tool-1",
//!     "acme",
//! ))?;
//! nexus.put("acme/hello.txt", b"hello")?;
//! let object = nexus.get("acme/hello.txt")?; // a view of the window: no copy
//! assert_eq!(&object[..], b"hello");
//! for entry in nexus.list("acme/", None)?.entries {
//!     println!("{} {}", entry.key, entry.size);
//! }
//! # Ok(()) }
//! ```
//!
//! A [`Loopback`] is one "VM" to the backend (its VM id must be unique there) and is used
//! from one thread at a time; it is not `Send` (the client's buffers share the window
//! without locks). Dropping it flushes its write-behind PUTs and detaches the VM.

#![deny(missing_docs)]

use std::ops::{Deref, DerefMut};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use log::debug;
use nexus_guest::mmio::Registers;
use nexus_guest::{Nexus, WindowMapping};
use nexus_io::{InterruptMode, NexusIo, NexusIoConfig, NexusIoTransport};
use nexus_kvm::{BusDevice, WindowRegion};

/// The window size of [`LoopbackConfig::new`]: 16 MiB.
pub const DEFAULT_WINDOW_SIZE: u64 = 16 << 20;

/// How many times a [`Loopback`] client polls the used ring before it sleeps in WAIT: about
/// 50 µs of polling (the guest driver's quick-request default,
/// `nexus_guest::device::DEFAULT_QUICK_POLL_SPINS`), rather than the 512 polls a VM's driver
/// makes before its WAIT exit. A host process's sleep and wake-up cost about as much as the
/// backend's answer to a small request, and polling a little longer catches nearly every
/// such answer (on the development machine, a 4 KiB GET's median went from about 40 to
/// 26 µs). Change it with `device_mut().set_poll_spins(n)`.
pub const LOOPBACK_POLL_SPINS: u32 = nexus_guest::device::DEFAULT_QUICK_POLL_SPINS;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The window memfd could not be created or mapped.
    #[error("Cannot create the I/O window")]
    Window(#[source] nexus_kvm::memory::Error),
    /// The nexus-io device could not be created.
    #[error("Cannot create the nexus-io device")]
    Device(#[source] nexus_io::Error),
    /// The backend's control socket could not be reached.
    #[error("Cannot connect to the backend's control socket {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device came up but the backend did not take the VM (refused the attach, for
    /// example for an unknown tenant, or a VM id already attached; the reason is in this
    /// process's `log` output and the backend's).
    #[error(
        "The backend at {} did not attach VM {vm_id:?} of tenant {tenant:?}",
        path.display()
    )]
    NotAttached {
        /// The control socket.
        path: PathBuf,
        /// The VM id.
        vm_id: String,
        /// The tenant.
        tenant: String,
    },
    /// The driver refused the device or failed to set it up.
    #[error("The nexus-io driver failed")]
    Driver(#[source] nexus_guest::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// How to [`connect`](Loopback::connect).
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    /// The backend's control socket (`nexus-backend --listen`).
    pub control_socket: PathBuf,
    /// The VM id this process attaches as: unique on the backend while connected.
    pub vm_id: String,
    /// The tenant: it decides which keys the process may touch.
    pub tenant: String,
    /// Size of the I/O window in bytes: the rings (8 KiB) and every payload in flight. At
    /// least `nexus_guest::device::MIN_WINDOW_SIZE`, a multiple of the page size.
    pub window_size: u64,
    /// Longest one WAIT read sleeps before the driver looks again (`None`: the device's
    /// default, [`nexus_io::WAIT_TIMEOUT`]). (How long the driver polls before it sleeps is
    /// [`LOOPBACK_POLL_SPINS`].)
    pub wait_timeout: Option<Duration>,
}

impl LoopbackConfig {
    /// A configuration with a [`DEFAULT_WINDOW_SIZE`] window.
    pub fn new(
        control_socket: impl Into<PathBuf>,
        vm_id: impl Into<String>,
        tenant: impl Into<String>,
    ) -> Self {
        Self {
            control_socket: control_socket.into(),
            vm_id: vm_id.into(),
            tenant: tenant.into(),
            window_size: DEFAULT_WINDOW_SIZE,
            wait_timeout: None,
        }
    }
}

/// The driver's [`Registers`] in the loopback transport: each access goes straight to the
/// nexus-io device's virtio-mmio transport, as a VM exit would. A `QueueNotify` write kicks
/// the backend (the transport forwards it to the device's kick eventfd, which no ioeventfd
/// catches here); a `WAIT` read sleeps in the calling thread until the backend signals a
/// completion, the device's timeout passes or the backend goes away.
#[derive(Debug)]
pub struct LoopbackRegisters {
    transport: NexusIoTransport,
}

impl Registers for LoopbackRegisters {
    fn read(&mut self, offset: u32) -> u32 {
        let mut value = [0; 4];
        BusDevice::read(&mut self.transport, u64::from(offset), &mut value);
        u32::from_le_bytes(value)
    }

    fn write(&mut self, offset: u32, value: u32) {
        // The transport never asks a register write to stop a vCPU.
        let _ = BusDevice::write(&mut self.transport, u64::from(offset), &value.to_le_bytes());
    }
}

/// The client type of the loopback transport.
pub type LoopbackNexus = Nexus<LoopbackRegisters>;

/// A host process's connection to the backend: one nexus-io device and its window, in this
/// process, driven by the nexus-guest client ([`Nexus`], which `Loopback` dereferences to).
#[derive(Debug)]
pub struct Loopback {
    nexus: LoopbackNexus,
    vm_id: String,
}

impl Loopback {
    /// Creates a window of `config.window_size` bytes, a nexus-io device over it, and brings
    /// the device up with the nexus-guest driver — whose `DRIVER_OK` attaches the VM on the
    /// backend's control socket and starts the vhost-user session.
    pub fn connect(config: LoopbackConfig) -> Result<Self> {
        // A missing or dead socket says so here, rather than as an unavailable backend later.
        UnixStream::connect(&config.control_socket).map_err(|source| Error::Connect {
            path: config.control_socket.clone(),
            source,
        })?;
        let window = WindowRegion::new(config.window_size).map_err(Error::Window)?;
        let mut device = NexusIo::new(NexusIoConfig {
            control_socket: config.control_socket.clone(),
            vm_id: config.vm_id.clone(),
            tenant: config.tenant.clone(),
            window: window.clone(),
            irq: None,
        })
        .map_err(Error::Device)?;
        device.set_interrupt_mode(InterruptMode::Wait);
        if let Some(timeout) = config.wait_timeout {
            device.set_wait_timeout(timeout);
        }
        let regs = LoopbackRegisters {
            transport: NexusIoTransport::new(device),
        };
        let ptr = window.region().as_ptr();
        let base = window.base().0;
        let size = window.size();
        // SAFETY: `ptr` is the window region's mapping, `size` bytes, readable and writable;
        // the region is kept alive (mapped) by the mapping's owner below as long as the
        // mapping and every buffer of it live. Nothing else in this process touches that
        // memory: the device reads only its rings through its own view, following the
        // protocol, and the backend writes rings and the writable buffers of chains in flight.
        let mapping = unsafe { WindowMapping::new(ptr, base, size) }
            .map_err(Error::Driver)?
            .with_owner(Rc::new(window));
        let mut nexus = Nexus::new(regs, mapping).map_err(Error::Driver)?;
        nexus.device_mut().set_poll_spins(LOOPBACK_POLL_SPINS);
        if !nexus.device_mut().backend_connected() {
            return Err(Error::NotAttached {
                path: config.control_socket,
                vm_id: config.vm_id,
                tenant: config.tenant,
            });
        }
        debug!(
            "nexus-loopback: VM {} of tenant {} attached, window of {size:#x} bytes",
            config.vm_id, config.tenant
        );
        Ok(Self {
            nexus,
            vm_id: config.vm_id,
        })
    }

    /// The VM id this process is attached as.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The client.
    pub fn nexus(&mut self) -> &mut LoopbackNexus {
        &mut self.nexus
    }
}

impl Drop for Loopback {
    /// Waits for this process's write-behind PUTs to be durable (FLUSH), then drops the
    /// device, which closes its vhost-user session and control connection: the backend
    /// detaches the VM.
    fn drop(&mut self) {
        if self.nexus.unflushed_write_behind() > 0 {
            if let Err(e) = self.nexus.flush() {
                log::warn!(
                    "nexus-loopback: VM {}: write-behind PUTs failed: {}",
                    self.vm_id,
                    e.report()
                );
            }
        }
    }
}

impl Deref for Loopback {
    type Target = LoopbackNexus;

    fn deref(&self) -> &LoopbackNexus {
        &self.nexus
    }
}

impl DerefMut for Loopback {
    fn deref_mut(&mut self) -> &mut LoopbackNexus {
        &mut self.nexus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use nexus_guest::mmio::{regs, status};
    use nexus_io::device::config;

    /// The registers reach the device model itself: identity, config space and `Status`,
    /// with no backend (the device connects only on `DRIVER_OK`).
    #[test]
    fn registers_reach_the_devices_transport() {
        let window = WindowRegion::new(1 << 20).unwrap();
        let device = NexusIo::new(NexusIoConfig {
            control_socket: "/nonexistent/control.sock".into(),
            vm_id: "unit-1".into(),
            tenant: "acme".into(),
            window: window.clone(),
            irq: None,
        })
        .unwrap();
        let mut regs = LoopbackRegisters {
            transport: NexusIoTransport::new(device),
        };
        assert_eq!(
            regs.read(regs::MAGIC_VALUE),
            nexus_guest::nexus_ring::mmio::MAGIC
        );
        assert_eq!(regs.read(regs::VERSION), 2);
        assert_eq!(regs.read(regs::DEVICE_ID), nexus_io::DEVICE_ID);
        let base = u64::from(regs.read(regs::CONFIG + config::WINDOW_BASE))
            | u64::from(regs.read(regs::CONFIG + config::WINDOW_BASE + 4)) << 32;
        assert_eq!(base, window.base().0);
        assert_eq!(
            regs.read(regs::CONFIG + config::WINDOW_SIZE),
            window.size() as u32
        );
        regs.write(regs::STATUS, status::ACKNOWLEDGE);
        assert_eq!(regs.read(regs::STATUS), status::ACKNOWLEDGE);
        // Before the device is live, WAIT says there is no backend.
        assert_eq!(
            regs.read(regs::CONFIG + config::WAIT),
            nexus_io::BACKEND_UNAVAILABLE
        );
    }
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
