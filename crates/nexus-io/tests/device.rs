// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The nexus-io device driven through its registers, as a guest driver would, against a real
//! vhost-user backend (a thread of this process, see `common`). A KVM VM holds the ioeventfd
//! and irqfd registrations; no vCPU runs: the test plays the guest and, for doorbells, KVM
//! (which signals the kick eventfd on a `QueueNotify` write).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{Driver, TestBackend, wait_until};
use nexus_io::device::config;
use nexus_io::{BACKEND_UNAVAILABLE, Error, InterruptMode, NexusIo, NexusIoConfig};
use nexus_kvm::layout::WINDOW_START;
use nexus_kvm::memory::{MemoryConfig, WindowRegion};
use nexus_kvm::virtio_mmio::{VIRTIO_F_VERSION_1, interrupt, regs, status};
use nexus_kvm::{Vm, VmConfig};

const WINDOW_SIZE: u64 = 1 << 20;

fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn vm(irqchip: bool) -> Vm {
    Vm::new(VmConfig {
        memory: MemoryConfig {
            ram_size: 16 << 20,
            window_size: WINDOW_SIZE,
        },
        irqchip,
    })
    .unwrap()
}

fn device(vm: &Vm, control_socket: &Path, irq: Option<u32>) -> NexusIo {
    NexusIo::new(NexusIoConfig {
        control_socket: control_socket.to_owned(),
        vm_id: "vm-7".into(),
        tenant: "acme".into(),
        window: vm.memory().window().unwrap().clone(),
        irq,
    })
    .unwrap()
}

/// A VM with the device attached and a driver for it.
fn setup(control_socket: &Path) -> (Vm, Driver) {
    init_logging();
    let vm = vm(false);
    let attached = nexus_io::attach(&vm, device(&vm, control_socket, None)).unwrap();
    assert_eq!(attached.info, nexus_io::device_info());
    assert_eq!(attached.info.base, 0xE000_0000);
    assert_eq!(attached.info.size, 0x1000);
    let driver = Driver::new(
        attached.transport,
        vm.memory().guest().clone(),
        WINDOW_START,
    );
    (vm, driver)
}

fn control_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("control.sock")
}

/// Submits `token`, rings the doorbell as KVM would, and waits for the echo.
fn round_trip(driver: &mut Driver, token: u32) {
    let head = driver.submit(token);
    driver.kick_eventfd().write(1).unwrap();
    let (value, _) = driver.wait_for_completion();
    assert_eq!(value, u32::from(driver.last_used().wrapping_add(1)));
    assert_eq!(driver.response(head), token + 1000);
    driver.set_used_event(value as u16);
}

#[test]
fn serves_requests_with_only_the_window_shared() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TestBackend::start(&control_path(&dir), true);
    let (_vm, mut driver) = setup(&control_path(&dir));

    assert_eq!(
        driver.read(regs::MAGIC_VALUE),
        nexus_kvm::virtio_mmio::MAGIC
    );
    assert_eq!(driver.read(regs::VERSION), 2);
    assert_eq!(driver.read(regs::DEVICE_ID), nexus_io::DEVICE_ID);
    assert_eq!(driver.read(regs::VENDOR_ID), nexus_io::VENDOR_ID);
    assert_eq!(driver.config64(config::WINDOW_BASE), WINDOW_START);
    assert_eq!(driver.config64(config::WINDOW_SIZE), WINDOW_SIZE);
    assert_eq!(driver.config(config::MAX_PAYLOAD), WINDOW_SIZE as u32);
    assert_eq!(driver.config(config::NUM_QUEUES), 1);
    assert_eq!(
        driver.config(config::QUEUE_SIZE_MAX),
        u32::from(nexus_io::QUEUE_SIZE_MAX)
    );
    assert_eq!(driver.config(config::BACKEND_STATE), 0);
    let generation = driver.read(regs::CONFIG_GENERATION);

    assert_eq!(driver.init(), 0b1111);
    assert_eq!(driver.config(config::BACKEND_STATE), 1);
    assert_ne!(driver.read(regs::CONFIG_GENERATION), generation);
    let rec = backend.recorder();
    assert_eq!(
        *rec.attaches.lock().unwrap(),
        [("vm-7".to_string(), "acme".to_string())]
    );
    // Exactly one region, the window: the backend sees nothing else of the VM.
    assert_eq!(
        *rec.memory_tables.lock().unwrap(),
        [vec![(WINDOW_START, WINDOW_SIZE)]]
    );
    assert_eq!(
        driver.transport.lock().unwrap().device().acked_features(),
        VIRTIO_F_VERSION_1 | nexus_io::NEXUS_F_WAIT
    );

    // The doorbell through the ioeventfd path.
    round_trip(&mut driver, 7);
    assert!(rec.kicks.load(Ordering::SeqCst) >= 1);
    // And through a QueueNotify write that reached the VMM.
    let head = driver.submit(8);
    driver.write(regs::QUEUE_NOTIFY, 0);
    let (value, _) = driver.wait_for_completion();
    assert_eq!(value, 2);
    assert_eq!(driver.response(head), 1008);
    driver.set_used_event(2);
    // Micro-guests take no interrupts.
    assert_eq!(driver.read(regs::INTERRUPT_STATUS), 0);
    // Writes to the config space change nothing.
    driver.write(regs::CONFIG + config::BACKEND_STATE, 0);
    assert_eq!(driver.config(config::BACKEND_STATE), 1);
}

#[test]
fn wait_sleeps_until_the_backend_completes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TestBackend::start(&control_path(&dir), false);
    let (_vm, mut driver) = setup(&control_path(&dir));
    assert_eq!(driver.init(), 0b1111);

    // Nothing in flight: WAIT sleeps for its timeout, then returns the unchanged index.
    let (value, took) = driver.wait();
    assert_eq!(value, 0);
    assert!(took >= Duration::from_millis(80), "returned after {took:?}");
    assert!(took < Duration::from_secs(1), "returned after {took:?}");

    let head = driver.submit(1);
    driver.kick_eventfd().write(1).unwrap();
    let rec = Arc::clone(backend.recorder());
    wait_until("the backend to pop the chain", || {
        rec.pending.lock().unwrap().len() == 1
    });
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(40));
        rec.complete_pending();
    });
    let (value, took) = driver.wait();
    releaser.join().unwrap();
    if value == 0 {
        // A very slow machine: the completion came after the 100 ms timeout.
        assert!(took < Duration::from_secs(1));
        assert_eq!(driver.wait_for_completion().0, 1);
    } else {
        assert_eq!(value, 1);
        assert!(
            took >= Duration::from_millis(20),
            "WAIT did not sleep: {took:?}"
        );
        assert!(took < Duration::from_secs(1), "returned after {took:?}");
    }
    assert_eq!(driver.response(head), 1001);
    // The driver has not consumed it yet (used_event 0): WAIT answers at once.
    let (value, took) = driver.wait();
    assert_eq!(value, 1);
    assert!(took < Duration::from_millis(50), "returned after {took:?}");
}

#[test]
fn wait_for_two_sleeps_through_the_first_completion() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TestBackend::start(&control_path(&dir), false);
    let (_vm, mut driver) = setup(&control_path(&dir));
    assert_eq!(driver.init(), 0b1111);
    let first = driver.submit(1);
    let second = driver.submit(2);
    driver.kick_eventfd().write(1).unwrap();
    let rec = Arc::clone(backend.recorder());
    wait_until("the backend to pop both chains", || {
        rec.pending.lock().unwrap().len() == 2
    });
    // Nothing consumed yet, two awaited: used_event 0 + 2 - 1.
    driver.set_used_event(1);
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(10));
        rec.complete_one();
        thread::sleep(Duration::from_millis(60));
        rec.complete_one();
    });
    let (value, took) = driver.wait();
    releaser.join().unwrap();
    // The first completion did not end the read: it returned with the second, or (a very
    // slow machine) at its 100 ms timeout with the first only.
    assert!(
        took >= Duration::from_millis(60),
        "WAIT returned at the first completion: {value} after {took:?}"
    );
    assert!(
        value == 2 || (value == 1 && took >= Duration::from_millis(90)),
        "{value} after {took:?}"
    );
    assert_eq!(driver.wait_for_completion().0, 2);
    assert_eq!(
        (driver.response(first), driver.response(second)),
        (1001, 1002)
    );
}

#[test]
fn backend_loss_is_reported_and_a_reset_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_path(&dir);
    let backend = TestBackend::start(&control, true);
    let (_vm, mut driver) = setup(&control);
    assert_eq!(driver.init(), 0b1111);
    round_trip(&mut driver, 1);

    // The backend dies while the guest sleeps in WAIT.
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let killer = {
        let killed_at = Arc::clone(&killed_at);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            backend.kill();
            *killed_at.lock().unwrap() = Some(Instant::now());
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (value, _) = driver.wait();
        if value == BACKEND_UNAVAILABLE {
            break;
        }
        assert_eq!(value, 1);
        assert!(Instant::now() < deadline, "the loss went unnoticed");
    }
    let noticed = Instant::now();
    killer.join().unwrap();
    // Nothing of the dead backend reads the doorbell any more: a kick stays pending for the
    // next session. (A vring worker outliving its session took the next backend's kicks.)
    let kick = driver.kick_eventfd();
    kick.write(1).unwrap();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        kick.read().ok(),
        Some(1),
        "the dead backend's vring worker took the kick"
    );
    let after_kill = noticed - killed_at.lock().unwrap().unwrap();
    assert!(
        after_kill < Duration::from_millis(200),
        "noticed {after_kill:?} after the kill"
    );
    assert_eq!(driver.config(config::BACKEND_STATE), 0);
    let (value, took) = driver.wait();
    assert_eq!(value, BACKEND_UNAVAILABLE);
    assert!(took < Duration::from_millis(50));

    // The driver fails its requests, resets, and sets the device up again: the backend is
    // still away, so the device is live but unavailable.
    assert_eq!(driver.init(), 0b1111);
    assert_eq!(driver.config(config::BACKEND_STATE), 0);
    assert_eq!(driver.wait().0, BACKEND_UNAVAILABLE);

    // The backend comes back; the next reset and DRIVER_OK reconnect.
    let backend = TestBackend::start(&control, true);
    assert_eq!(driver.init(), 0b1111);
    assert_eq!(driver.config(config::BACKEND_STATE), 1);
    round_trip(&mut driver, 2);
    let rec = backend.recorder();
    assert_eq!(rec.attaches.lock().unwrap().len(), 1);
    assert_eq!(
        *rec.memory_tables.lock().unwrap(),
        [vec![(WINDOW_START, WINDOW_SIZE)]]
    );
}

#[test]
fn a_reset_keeps_a_live_backend_session() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TestBackend::start(&control_path(&dir), true);
    let (_vm, mut driver) = setup(&control_path(&dir));
    assert_eq!(driver.init(), 0b1111);
    round_trip(&mut driver, 1);
    // Reset: the queue stops, the connection stays.
    driver.write(regs::STATUS, 0);
    assert_eq!(driver.status(), 0);
    assert_eq!(driver.config(config::BACKEND_STATE), 1);
    assert_eq!(
        driver.wait().0,
        BACKEND_UNAVAILABLE,
        "no queue, nothing to wait for"
    );
    assert_eq!(driver.init(), 0b1111);
    round_trip(&mut driver, 2);
    round_trip(&mut driver, 3);
    let rec = backend.recorder();
    assert_eq!(rec.attaches.lock().unwrap().len(), 1);
    assert_eq!(rec.memory_tables.lock().unwrap().len(), 1);
}

#[test]
fn rings_outside_the_window_need_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TestBackend::start(&control_path(&dir), true);
    let (_vm, mut driver) = setup(&control_path(&dir));
    let cases = [
        (
            "descriptor table in RAM",
            0x10_0000,
            WINDOW_START + 0x1000,
            WINDOW_START + 0x2000,
        ),
        (
            "driver area below the window",
            WINDOW_START,
            WINDOW_START - 0x1000,
            WINDOW_START + 0x2000,
        ),
        // 16 entries: 6 + 8 × 16 bytes from 0x40 before the end overflows it.
        (
            "device area across the end",
            WINDOW_START,
            WINDOW_START + 0x1000,
            WINDOW_START + WINDOW_SIZE - 0x40,
        ),
    ];
    for (why, desc, avail, used) in cases {
        driver.desc = desc;
        driver.avail = avail;
        driver.used = used;
        driver.negotiate();
        driver.write(regs::QUEUE_READY, 1);
        assert_eq!(driver.read(regs::QUEUE_READY), 0, "{why}");
        assert_eq!(
            driver.status(),
            0b1011 | status::DEVICE_NEEDS_RESET,
            "{why}"
        );
        driver.write(regs::STATUS, 0b1111 | status::DEVICE_NEEDS_RESET);
        assert_eq!(driver.status() & status::DRIVER_OK, 0, "{why}");
        assert_eq!(driver.wait().0, BACKEND_UNAVAILABLE);
    }
    assert!(backend.recorder().attaches.lock().unwrap().is_empty());
    // Set up properly after a reset, it works.
    driver.desc = WINDOW_START;
    driver.avail = WINDOW_START + 0x1000;
    driver.used = WINDOW_START + 0x2000;
    assert_eq!(driver.init(), 0b1111);
    round_trip(&mut driver, 5);
}

#[test]
fn without_a_backend_the_device_is_live_but_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (_vm, mut driver) = setup(&control_path(&dir));
    assert_eq!(driver.init(), 0b1111);
    assert_eq!(driver.config(config::BACKEND_STATE), 0);
    let (value, took) = driver.wait();
    assert_eq!(value, BACKEND_UNAVAILABLE);
    assert!(took < Duration::from_millis(50));
}

#[test]
fn vms_with_an_irqchip_get_an_irqfd() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let control = control_path(&dir);
    let vm = vm(true);
    assert!(matches!(
        nexus_io::attach(&vm, device(&vm, &control, None)),
        Err(Error::MissingIrq)
    ));
    // A device over another window does not fit the VM.
    let other = NexusIo::new(NexusIoConfig {
        control_socket: control.clone(),
        vm_id: "x".into(),
        tenant: "acme".into(),
        window: WindowRegion::new(2 << 20).unwrap(),
        irq: Some(5),
    })
    .unwrap();
    assert!(matches!(
        nexus_io::attach(&vm, other),
        Err(Error::WindowMismatch)
    ));

    let backend = TestBackend::start(&control, true);
    let attached = nexus_io::attach(&vm, device(&vm, &control, Some(5))).unwrap();
    assert_eq!(
        attached.transport.lock().unwrap().device().interrupt_mode(),
        InterruptMode::Irqfd
    );
    let mut driver = Driver::new(
        attached.transport,
        vm.memory().guest().clone(),
        WINDOW_START,
    );
    assert_eq!(driver.read(regs::INTERRUPT_STATUS), 0);
    assert_eq!(driver.init(), 0b1111);
    // Connecting changed `backend_state`: a configuration change. And the backend signals
    // the irqfd directly, so the device reports a used buffer on every interrupt while live.
    assert_eq!(
        driver.read(regs::INTERRUPT_STATUS),
        interrupt::VRING | interrupt::CONFIG
    );
    driver.write(regs::INTERRUPT_ACK, interrupt::VRING | interrupt::CONFIG);
    assert_eq!(driver.read(regs::INTERRUPT_STATUS), interrupt::VRING);
    let head = driver.submit(9);
    driver.kick_eventfd().write(1).unwrap();
    wait_until("the completion", || driver.used_idx() == 1);
    assert_eq!(driver.response(head), 1009);

    // A loss is a configuration change interrupt.
    backend.kill();
    wait_until("the configuration change", || {
        driver.read(regs::INTERRUPT_STATUS) & interrupt::CONFIG != 0
    });
    assert_eq!(driver.config(config::BACKEND_STATE), 0);
    driver.write(regs::INTERRUPT_ACK, interrupt::CONFIG);
    assert_eq!(driver.read(regs::INTERRUPT_STATUS), interrupt::VRING);
}
