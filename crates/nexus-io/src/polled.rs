// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Attaching the device to a VM whose guest driver waits in the WAIT register whatever
//! interrupt controller the VM has: a Linux guest's user-space driver (`nexus-guest`'s
//! feature `linux`), which maps the device from `/dev/mem` and has no interrupt handler.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::IoEventAddress;
use nexus_kvm::virtio_mmio::MmioTransport;
use nexus_kvm::{BusKind, Vm};
use nexus_ring::mmio::regs;

use crate::{AttachedDevice, Error, InterruptMode, NexusIo, Result, device_info};

/// Puts `device` on `vm`'s MMIO bus at [`device_info`]'s base with its doorbell registered as
/// an ioeventfd, like [`attach`](crate::attach), but never as an interrupt: completions are
/// waited for in the WAIT register even if the VM has an interrupt controller (the device's
/// IRQ, if any, is unused). For guests whose driver runs in user space, where an interrupt
/// nobody handles would only be counted as spurious.
pub fn attach_polled(vm: &Vm, device: NexusIo) -> Result<AttachedDevice> {
    let info = device_info();
    let mut transport = MmioTransport::new(device);
    let device = transport.device_mut();
    let window = vm.memory().window().ok_or(Error::WindowMismatch)?;
    if (window.base(), window.size()) != (device.window().base(), device.window().size()) {
        return Err(Error::WindowMismatch);
    }
    device.set_interrupt_mode(InterruptMode::Wait);
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
