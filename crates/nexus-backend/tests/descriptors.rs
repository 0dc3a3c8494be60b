// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What an attached VM costs the backend process in descriptors, threads and mappings,
//! counted from `/proc` of the real `nexus-backend` binary (the test's own ends — its
//! connections, memfds and eventfds — live in the test process and are not counted).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{BackendProcess, Call, Control, GuestVm, WAIT};
use nexus_ring::{Command, Status};

/// VMs attached at once.
const VMS: usize = 1_000;
/// Each VM's window: the ring and a few requests' buffers.
const WINDOW: u64 = 64 << 10;
/// The most descriptors an attached VM may hold in the backend: its vhost-user connection,
/// its kick and its call eventfds.
const DESCRIPTORS_PER_VM: usize = 3;

fn start(dir: &Path) -> BackendProcess {
    let args = [
        "--store".to_owned(),
        format!("file://{}", dir.join("objects").display()),
        "--tenant".to_owned(),
        "alpha=tenants/alpha".to_owned(),
    ];
    BackendProcess::start(dir, &args, &[])
}

fn attach(control: &mut Control, vm: &str) -> GuestVm {
    let connection = control.attach(vm, "alpha");
    let mut guest = GuestVm::connect(connection, WINDOW);
    let answer = guest.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    guest
}

fn detach(control: &mut Control, vm: &str) {
    let reply = control.send(&format!(r#"{{"op":"detach","vm":"{vm}"}}"#));
    assert_eq!(reply["ok"], true, "{reply}");
}

/// Waits (up to [`WAIT`]) until `done` holds of the backend; whether it did.
fn settles(backend: &BackendProcess, done: impl Fn(&BackendProcess) -> bool) -> bool {
    let start = Instant::now();
    while !done(backend) {
        if start.elapsed() > WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_thousand_vms_hold_three_descriptors_each_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path());
    // One control connection for every VM: a daemon's connection per VM would be the
    // daemon's descriptor, not the VM's.
    let mut control = backend.connect();
    // What the backend sets up once (runtime threads, pools) is in the baseline.
    let warm = attach(&mut control, "warm-up");
    detach(&mut control, "warm-up");
    drop(warm);
    assert!(
        settles(&backend, |b| b.memfd_mappings("nexus-window") == 0),
        "the warm-up VM's window is still mapped"
    );
    let descriptors = backend.open_descriptors();
    let threads = backend.threads();

    let started = Instant::now();
    let mut vms: Vec<GuestVm> = (0..VMS)
        .map(|n| attach(&mut control, &format!("vm{n}")))
        .collect();
    let attach_time = started.elapsed();
    // Every VM is served while all are attached.
    for vm in &mut vms {
        let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
        assert_eq!(answer.header.status, Status::Ok);
    }
    let attached_descriptors = backend.open_descriptors();
    let attached_threads = backend.threads();
    let mapped = backend.memfd_mappings("nexus-window");

    let detaching = Instant::now();
    for n in 0..VMS {
        detach(&mut control, &format!("vm{n}"));
    }
    drop(vms);
    let detach_time = detaching.elapsed();

    let per_vm = attached_descriptors.saturating_sub(descriptors) as f64 / VMS as f64;
    let threads_per_vm = attached_threads.saturating_sub(threads) as f64 / VMS as f64;
    eprintln!(
        "{VMS} VMs: {descriptors} descriptors and {threads} threads before, \
         {attached_descriptors} and {attached_threads} attached ({per_vm:.3} descriptors, \
         {threads_per_vm:.3} threads per VM), {mapped} windows mapped; attached and served in \
         {attach_time:.2?}, detached in {detach_time:.2?}"
    );
    // Each window is mapped once, and no memfd is kept open for it.
    assert_eq!(mapped, VMS, "windows mapped while {VMS} VMs are attached");
    assert!(
        attached_descriptors <= descriptors + DESCRIPTORS_PER_VM * VMS,
        "{descriptors} descriptors before, {attached_descriptors} with {VMS} VMs attached: \
         more than {DESCRIPTORS_PER_VM} per VM"
    );
    // No thread per VM: a thousand VMs may wake a few more pooled threads, not one each.
    assert!(
        attached_threads < threads + VMS / 100,
        "{threads} threads before, {attached_threads} with {VMS} VMs attached"
    );

    // Detached: every descriptor, mapping and thread of theirs is gone (pooled threads that
    // woke up for them retire after their idle time).
    let settling = Instant::now();
    eprintln!(
        "just detached: {} descriptors, {} threads, {} windows mapped",
        backend.open_descriptors(),
        backend.threads(),
        backend.memfd_mappings("nexus-window")
    );
    assert!(
        settles(&backend, |b| b.open_descriptors() <= descriptors),
        "{descriptors} descriptors before, {} after {VMS} VMs detached:\n{}",
        backend.open_descriptors(),
        backend
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        settles(&backend, |b| b.memfd_mappings("nexus-window") == 0),
        "{} windows still mapped after every VM detached",
        backend.memfd_mappings("nexus-window")
    );
    assert!(
        settles(&backend, |b| b.threads() <= threads),
        "{threads} threads before, {} after {VMS} VMs detached",
        backend.threads()
    );
    eprintln!(
        "back to the baseline {:.2?} after the last detach",
        settling.elapsed()
    );
}
