// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Nothing acknowledged is lost silently: a write-behind PUT the backend acknowledged and then
//! lost — its connection dropped and came back, or the backend itself was killed before the
//! upload and restarted — is never reported durable. FLUSH answers `UPLOAD_FAILED` naming the
//! object (or keeps waiting while the upload still runs), and the invocation that wrote it
//! does not complete successfully.
//!
//! The uploads are made to stall on a "store" that accepts connections and never answers.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{BackendProcess, Call, Control, GuestVm};
use nexus_ring::{Command, Status};

const WINDOW: u64 = 16 << 20;

/// A TCP endpoint that accepts connections and never answers: every upload to it stalls.
fn black_hole() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn backend(dir: &Path, port: u16) -> BackendProcess {
    BackendProcess::start(
        dir,
        &[
            "--store".into(),
            "s3://stalled-bucket".into(),
            "--s3-endpoint".into(),
            format!("http://127.0.0.1:{port}"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "nexus".into()),
            ("AWS_SECRET_ACCESS_KEY", "nexus-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ],
    )
}

fn put_behind(vm: &mut GuestVm, key: &str) -> Status {
    vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(key.as_bytes())
            .payload(&[b"acknowledged, never stored"])
            .response_meta(1024),
    )
    .header
    .status
}

fn flush(vm: &mut GuestVm, timeout_ms: u64) -> common::Answer {
    vm.call(&Call::new(Command::Flush { timeout_ms }).response_meta(1024))
}

fn attach(backend: &BackendProcess, vm: &str) -> (Control, GuestVm) {
    let mut control = backend.connect();
    let guest = GuestVm::connect(control.attach(vm, "default"), WINDOW);
    (control, guest)
}

#[test]
fn a_reconnected_vm_still_waits_for_the_uploads_of_its_earlier_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, port) = black_hole();
    let backend = backend(dir.path(), port);
    let (mut control, mut vm) = attach(&backend, "vm1");
    assert_eq!(put_behind(&mut vm, "out/pending"), Status::Ok);
    // The VMM reconnects (as nexus-io does after losing its connection: detach, then attach
    // anew): the VM is detached with its upload still running.
    drop(vm);
    let reply = control.send(r#"{"op":"detach","vm":"vm1"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    drop(control);
    let (_control, mut vm) = attach(&backend, "vm1");
    // The upload of the earlier connection still counts: no OK while it runs.
    let answer = flush(&mut vm, 300);
    assert_eq!(
        answer.header.status,
        Status::Timeout,
        "{}",
        answer.meta_text()
    );
}

#[test]
fn uploads_lost_with_a_killed_backend_are_reported_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, port) = black_hole();
    let mut backend = backend(dir.path(), port);
    let (mut control, mut vm) = attach(&backend, "vm1");
    assert_eq!(put_behind(&mut vm, "out/first"), Status::Ok);
    assert_eq!(put_behind(&mut vm, "out/second"), Status::Ok);
    assert_eq!(flush(&mut vm, 200).header.status, Status::Timeout);

    // An invocation that wrote behind and completed: its reply waits for the upload.
    let invoked = std::thread::spawn(move || {
        control.send(r#"{"op":"invoke","vm":"vm1","input":{"inline":"x"}}"#)
    });
    let next = vm.submit(
        &Call::new(Command::Next { timeout_ms: 10_000 })
            .response_meta(1024)
            .buffers(&[64]),
    );
    let delivered = vm.wait(next);
    assert_eq!(delivered.header.status, Status::Ok);
    let number = u64::from_le_bytes(delivered.meta[0..8].try_into().unwrap());
    assert_eq!(put_behind(&mut vm, "out/third"), Status::Ok);
    let complete = vm.call(
        &Call::new(Command::Complete {
            invocation: number,
            outcome: nexus_ring::Outcome::Success,
            stored: false,
        })
        .payload(&[b"done"])
        .response_meta(1024),
    );
    assert_eq!(complete.header.status, Status::Ok);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !invoked.is_finished(),
        "the invocation waits for its upload"
    );

    // The backend dies before any upload is done.
    backend.kill();
    let reply = invoked.join();
    assert!(
        !matches!(&reply, Ok(r) if r["ok"] == true),
        "the invocation must not be reported done: {reply:?}"
    );
    drop(vm);

    // Restarted on the same state directory: the VM comes back and is told.
    let backend = self::backend(dir.path(), port);
    assert!(
        backend.log().contains("out/first") && backend.log().contains("lost"),
        "{}",
        backend.log()
    );
    let (_control, mut vm) = attach(&backend, "vm1");
    let answer = flush(&mut vm, 0);
    assert_eq!(
        answer.header.status,
        Status::UploadFailed,
        "{}",
        answer.meta_text()
    );
    assert_eq!(answer.meta_text(), "out/first");
    assert_eq!(answer.header.detail, 3, "three uploads were lost");
    // Reported once.
    assert_eq!(flush(&mut vm, 0).header.status, Status::Ok);

    // And only once across restarts too.
    drop(vm);
    drop(_control);
    let mut backend = backend;
    backend.kill();
    let backend = self::backend(dir.path(), port);
    let (_control, mut vm) = attach(&backend, "vm1");
    assert_eq!(flush(&mut vm, 0).header.status, Status::Ok);
}
