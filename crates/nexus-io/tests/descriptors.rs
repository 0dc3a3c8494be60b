// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How many file descriptors an attached, connected device holds: a node daemon parks
//! thousands of VMs in one process, under an open-file limit it cannot raise.
//!
//! The backend (`common`'s echo backend) runs in a process of its own, this test binary run
//! again with [`BACKEND_ENV`] set, so that every descriptor this process gains is the
//! device's. This file is a test binary of its own: no other test of this crate runs beside
//! the count (`common`'s one test opens no descriptors).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Driver, TestBackend, wait_until};
use nexus_io::device::config;
use nexus_io::{NexusIo, NexusIoConfig};
use nexus_kvm::layout::WINDOW_START;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::{Vm, VmConfig};

/// Set to a control socket path, [`echo_backend_process`] serves the echo backend there.
const BACKEND_ENV: &str = "NEXUS_IO_TEST_BACKEND_CONTROL";

/// Descriptors of this process.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Not a test: the backend of [`an_attached_device_holds_four_descriptors`], run in a child
/// process. It serves until its standard input closes.
#[test]
#[ignore = "the backend process of an_attached_device_holds_four_descriptors"]
fn echo_backend_process() {
    let Some(control) = std::env::var_os(BACKEND_ENV) else {
        return;
    };
    let backend = TestBackend::start(Path::new(&control), true);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    backend.kill();
}

/// The echo backend in a child process; it goes away when this is dropped.
struct BackendProcess(Child);

impl BackendProcess {
    fn start(control: &Path) -> Self {
        let _ = std::fs::remove_file(control);
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["echo_backend_process", "--exact", "--ignored"])
            .args(["--test-threads=1", "--quiet"])
            .env(BACKEND_ENV, control)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let backend = BackendProcess(child);
        wait_until("the backend process to listen", || control.exists());
        backend
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        // Closing its standard input ends it; kill it if that did not.
        drop(self.0.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.0.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn vm() -> Vm {
    Vm::new(VmConfig {
        memory: MemoryConfig {
            ram_size: 16 << 20,
            window_size: 1 << 20,
        },
        irqchip: false,
    })
    .unwrap()
}

/// Attaches a device for VM `vm_id` to `vm`; the driver sets it up, and it serves a request.
fn live_device(vm: &Vm, control: &Path, vm_id: &str) -> Driver {
    let device = NexusIo::new(NexusIoConfig {
        control_socket: control.to_owned(),
        vm_id: vm_id.into(),
        tenant: "acme".into(),
        window: vm.memory().window().unwrap().clone(),
        irq: None,
    })
    .unwrap();
    let attached = nexus_io::attach(vm, device).unwrap();
    let mut driver = Driver::new(
        attached.transport,
        vm.memory().guest().clone(),
        WINDOW_START,
    );
    assert_eq!(driver.init(), 0b1111);
    assert_eq!(driver.config(config::BACKEND_STATE), 1);
    round_trip(&mut driver, 1);
    driver
}

/// Submits `token`, rings the doorbell as KVM would, and waits for the echo.
fn round_trip(driver: &mut Driver, token: u32) {
    let head = driver.submit(token);
    driver.write(nexus_kvm::virtio_mmio::regs::QUEUE_NOTIFY, 0);
    let (value, _) = driver.wait_for_completion();
    assert_eq!(value, u32::from(driver.last_used().wrapping_add(1)));
    assert_eq!(driver.response(head), token + 1000);
    driver.set_used_event(value as u16);
}

/// Per device, before (11): the kick and call eventfds, a clone of the call eventfd, the
/// monitor's stop eventfd and its clone; the control connection twice (reader, writer) and
/// the vhost-user connection twice (the frontend's, the watched one), and a clone of each
/// for the monitor thread.
///
/// Now (4): the kick and call eventfds, the control connection and the vhost-user
/// connection, each once. One process-wide epoll descriptor, opened with the first session,
/// watches every session's connections for hang-ups.
#[test]
fn an_attached_device_holds_four_descriptors() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let control: PathBuf = dir.path().join("control.sock");
    let backend = BackendProcess::start(&control);
    let (vm_a, vm_b) = (vm(), vm());

    let before = open_descriptors();
    let mut a = live_device(&vm_a, &control, "vm-a");
    let with_a = open_descriptors();
    let mut b = live_device(&vm_b, &control, "vm-b");
    let with_b = open_descriptors();
    eprintln!("descriptors: {before} before, {with_a} with one device, {with_b} with two");
    assert_eq!(with_b - with_a, 4, "a second device");
    assert_eq!(
        with_a - before,
        4 + 1,
        "the first device and the monitor's epoll"
    );

    // A reset keeps the session: nothing opened, nothing leaked.
    assert_eq!(a.init(), 0b1111);
    round_trip(&mut a, 2);
    assert_eq!(open_descriptors(), with_b);

    // The backend goes away and comes back: each device reconnects and holds as many as
    // before.
    drop(backend);
    wait_until("both devices to notice the loss", || {
        a.config(config::BACKEND_STATE) == 0 && b.config(config::BACKEND_STATE) == 0
    });
    let _backend = BackendProcess::start(&control);
    for driver in [&mut a, &mut b] {
        assert_eq!(driver.init(), 0b1111);
        assert_eq!(driver.config(config::BACKEND_STATE), 1);
        round_trip(driver, 3);
    }
    // (The new backend process's pipe replaced the first one's.)
    assert_eq!(open_descriptors(), with_b);
}
