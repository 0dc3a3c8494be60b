// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `attach_polled`: the device of a VM with an interrupt controller whose guest driver runs in
//! user space (a Linux guest's `/dev/mem` driver) waits in the WAIT register, with no irqfd.

mod common;

use std::path::Path;

use common::{Driver, TestBackend};
use nexus_io::{Error, InterruptMode, NexusIo, NexusIoConfig};
use nexus_kvm::layout::WINDOW_START;
use nexus_kvm::memory::{MemoryConfig, WindowRegion};
use nexus_kvm::virtio_mmio::{interrupt, regs};
use nexus_kvm::{Vm, VmConfig};

fn device(control: &Path, window: WindowRegion, irq: Option<u32>) -> NexusIo {
    NexusIo::new(NexusIoConfig {
        control_socket: control.to_owned(),
        vm_id: "linux-1".into(),
        tenant: "acme".into(),
        window,
        irq,
    })
    .unwrap()
}

#[test]
fn a_vm_with_an_irqchip_gets_a_waiting_device() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let vm = Vm::new(VmConfig {
        memory: MemoryConfig {
            ram_size: 16 << 20,
            window_size: 1 << 20,
        },
        irqchip: true,
    })
    .unwrap();
    let window = vm.memory().window().unwrap().clone();
    // A device over another window does not fit the VM.
    assert!(matches!(
        nexus_io::attach_polled(
            &vm,
            device(&control, WindowRegion::new(2 << 20).unwrap(), None)
        ),
        Err(Error::WindowMismatch)
    ));

    let _backend = TestBackend::start(&control, true);
    // Where `attach` would insist on an IRQ, this takes none — and ignores one given.
    let attached = nexus_io::attach_polled(&vm, device(&control, window, Some(5))).unwrap();
    assert_eq!(attached.info, nexus_io::device_info());
    assert_eq!(
        attached.transport.lock().unwrap().device().interrupt_mode(),
        InterruptMode::Wait
    );
    let mut driver = Driver::new(
        attached.transport,
        vm.memory().guest().clone(),
        WINDOW_START,
    );
    assert_eq!(driver.init(), 0b1111);
    // A request through the doorbell, its completion through WAIT; no interrupt reported.
    let head = driver.submit(41);
    driver.kick_eventfd().write(1).unwrap();
    let (value, _) = driver.wait_for_completion();
    assert_eq!(value, u32::from(driver.last_used().wrapping_add(1)));
    assert_eq!(driver.response(head), 41 + 1000);
    assert_eq!(driver.read(regs::INTERRUPT_STATUS) & interrupt::VRING, 0);
}
