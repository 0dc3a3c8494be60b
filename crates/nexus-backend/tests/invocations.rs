// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The library API the node daemon uses — `Backend::new`, `attach`, `invoke`,
//! `set_invoker`, `detach`, `stats` — and the control socket's `invoke` and `stats`,
//! in-process, with the guest side driven over real vhost-user.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Call, GuestVm};
use futures::future::BoxFuture;
use nexus_backend::{
    Backend, BackendConfig, Error, Invocation, InvocationInput, InvocationResult, InvokeError,
    InvokeRequest, Invoker, S3Options, StoreConfig, StoreUrl,
};
use nexus_ring::records::InvocationContext;
use nexus_ring::{Command, Outcome, Status};
use vhost::VhostBackend;

const WINDOW: u64 = 4 << 20;

struct Echo;

impl Invoker for Echo {
    fn invoke(
        &self,
        request: InvokeRequest,
    ) -> BoxFuture<'static, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            match request.function.as_str() {
                "reverse" => {
                    let mut output = request.input.to_vec();
                    output.reverse();
                    assert_eq!(request.caller_vm, "vm1");
                    Ok(InvocationResult {
                        outcome: Outcome::Success,
                        output: Bytes::from(output),
                        stored_len: None,
                    })
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err(InvokeError::Unavailable("too slow".into()))
                }
                other => Err(InvokeError::NotFound(other.to_owned())),
            }
        })
    }
}

fn invocation(function: &str) -> Invocation {
    Invocation {
        function: function.into(),
        request_id: "req-1".into(),
        deadline_ms: 1_900_000_000_000,
        async_durability: false,
        output_key: None,
        return_output: true,
    }
}

fn next(vm: &mut GuestVm, buffers: &[u32]) -> common::Answer {
    vm.call(
        &Call::new(Command::Next { timeout_ms: 10_000 })
            .response_meta(536)
            .buffers(buffers),
    )
}

fn complete(vm: &mut GuestVm, number: u64, result: &[u8]) -> common::Answer {
    complete_stored(vm, number, result, false)
}

/// COMPLETE of a success; `stored`: the guest says it stored the result at the output key.
fn complete_stored(vm: &mut GuestVm, number: u64, result: &[u8], stored: bool) -> common::Answer {
    vm.call(
        &Call::new(Command::Complete {
            invocation: number,
            outcome: Outcome::Success,
            stored,
        })
        .payload(&[result])
        .response_meta(256),
    )
}

#[test]
fn the_invocation_loop() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = BackendConfig::new(
        StoreConfig {
            url: StoreUrl::File(objects.clone()),
            s3: S3Options::default(),
        },
        dir.path().join("vms"),
    );
    let backend = Backend::new(config, runtime.handle().clone()).unwrap();
    assert!(matches!(
        backend.attach("vm1", "alpha"),
        Err(Error::UnknownTenant(_))
    ));
    let connection = backend.attach("vm1", "default").unwrap();
    assert_eq!(backend.attached(), vec!["vm1".to_owned()]);
    let mut vm = GuestVm::connect(connection, WINDOW);

    // An invocation whose input is an object: prefetched, delivered by NEXT.
    std::fs::create_dir_all(objects.join("in")).unwrap();
    std::fs::write(objects.join("in/event.json"), br#"{"n":42}"#).unwrap();
    let pending = backend
        .invoke(
            "vm1",
            invocation("resize"),
            InvocationInput::Object("in/event.json".into()),
        )
        .unwrap();
    let number = pending.number();
    let answer = next(&mut vm, &[4096]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    let context = InvocationContext::decode(&answer.meta).unwrap();
    assert_eq!(context.invocation, number);
    assert_eq!(context.function, "resize");
    assert_eq!(context.request_id, "req-1");
    assert_eq!(context.deadline_ms, 1_900_000_000_000);
    assert_eq!(answer.payload, br#"{"n":42}"#);
    assert_eq!(answer.header.total, 8);
    // Its output is written behind; completion is reported once it is durable.
    let answer = vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(b"out/result")
            .payload(&[b"resized"]),
    );
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(complete(&mut vm, number, b"done").header.status, Status::Ok);
    let result = runtime.block_on(pending).unwrap();
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(&result.output[..], b"done");
    assert_eq!(
        std::fs::read(objects.join("out/result")).unwrap(),
        b"resized"
    );
    // A second COMPLETE of it is NOT_FOUND.
    assert_eq!(
        complete(&mut vm, number, b"again").header.status,
        Status::NotFound
    );

    // Inline input too large for the buffers: TOO_LARGE, and it stays queued.
    let input = common::pattern(10_000, 3);
    let pending = backend
        .invoke(
            "vm1",
            invocation("big"),
            InvocationInput::Bytes(Bytes::from(input.clone())),
        )
        .unwrap();
    let answer = next(&mut vm, &[1024]);
    assert_eq!(
        (answer.header.status, answer.header.total),
        (Status::TooLarge, 10_000)
    );
    let answer = next(&mut vm, &[8192, 8192]);
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(answer.payload, input);
    // The function fails one of its uploads: the invocation fails, naming the object.
    std::fs::create_dir_all(objects.join("out/blocked/dir")).unwrap();
    let answer = vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(b"out/blocked")
            .payload(&[b"x"]),
    );
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(
        complete(&mut vm, pending.number(), b"ok").header.status,
        Status::Ok
    );
    match runtime.block_on(pending) {
        Err(Error::UploadFailed { key, count }) => {
            assert_eq!((key.as_str(), count), ("out/blocked", 1))
        }
        other => panic!("expected UploadFailed, got {other:?}"),
    }

    // A parked NEXT is answered when an invocation arrives later.
    let parked = vm.submit(
        &Call::new(Command::Next { timeout_ms: 0 })
            .response_meta(536)
            .buffers(&[64]),
    );
    std::thread::sleep(Duration::from_millis(100));
    let pending = backend
        .invoke(
            "vm1",
            invocation("later"),
            InvocationInput::Bytes(Bytes::from_static(b"hi")),
        )
        .unwrap();
    let answer = vm.wait(parked);
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(answer.payload, b"hi");
    assert_eq!(
        complete(&mut vm, pending.number(), b"bye").header.status,
        Status::Ok
    );
    assert_eq!(&runtime.block_on(pending).unwrap().output[..], b"bye");

    // INVOKE: unavailable without an invoker; with one, results (truncated to the buffers),
    // NOT_FOUND, asynchronous calls and timeouts.
    let invoke =
        |vm: &mut GuestVm, name: &[u8], asynchronous: bool, timeout_ms: u64, buffers: &[u32]| {
            vm.call(
                &Call::new(Command::Invoke {
                    timeout_ms,
                    asynchronous,
                })
                .key(name)
                .payload(&[b"abc"])
                .response_meta(256)
                .buffers(buffers),
            )
        };
    assert_eq!(
        invoke(&mut vm, b"reverse", false, 0, &[16]).header.status,
        Status::BackendUnavailable
    );
    backend.set_invoker(Arc::new(Echo));
    let answer = invoke(&mut vm, b"reverse", false, 0, &[16]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(
        (
            answer.payload.as_slice(),
            answer.header.total,
            answer.header.detail
        ),
        (&b"cba"[..], 3, 0)
    );
    let answer = invoke(&mut vm, b"reverse", false, 0, &[2]);
    assert_eq!(
        (answer.payload.as_slice(), answer.header.total),
        (&b"cb"[..], 3)
    );
    assert_eq!(
        invoke(&mut vm, b"nothing", false, 0, &[16]).header.status,
        Status::NotFound
    );
    assert_eq!(
        invoke(&mut vm, b"reverse", true, 0, &[]).header.status,
        Status::Ok
    );
    assert_eq!(
        invoke(&mut vm, b"slow", false, 200, &[16]).header.status,
        Status::Timeout
    );

    // A frontend that goes away attaches again (as the device does after losing its
    // connection) and is served again.
    drop(vm);
    backend.detach("vm1").unwrap();
    let connection = backend.attach("vm1", "default").unwrap();
    let mut vm = GuestVm::connect(connection, WINDOW);
    let answer = vm.call(
        &Call::new(Command::Get {
            offset: 0,
            max_len: 0,
        })
        .key(b"out/result")
        .buffers(&[64]),
    );
    assert_eq!(answer.payload, b"resized");

    // GET_VRING_BASE stops the queue: a parked NEXT is cancelled, not waited for.
    let _parked = vm.submit(&Call::new(Command::Next { timeout_ms: 0 }).response_meta(536));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    vm.frontend().get_vring_base(0).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "stopping the queue took {:?}",
        start.elapsed()
    );

    // Detaching fails what the VM had not finished.
    let pending = backend
        .invoke(
            "vm1",
            invocation("never"),
            InvocationInput::Bytes(Bytes::new()),
        )
        .unwrap();
    backend.detach("vm1").unwrap();
    assert!(matches!(
        runtime.block_on(pending),
        Err(Error::VmDetached(_))
    ));
    assert!(vm.frontend_closed(), "the VM's connection is closed");
    assert!(matches!(backend.detach("vm1"), Err(Error::UnknownVm(_))));
    assert!(backend.attached().is_empty());
}

/// Polls control `stats` until `accept` holds (at most [`common::WAIT`]); the stats.
fn stats_until(
    control: &mut common::Control,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let reply = control.send(r#"{"op":"stats"}"#);
        assert_eq!(reply["ok"], true, "{reply}");
        let stats = reply["stats"].clone();
        if accept(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < common::WAIT,
            "stats never matched: {stats}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn control_invoke_reports_its_traffic_and_stats_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = BackendConfig::new(
        StoreConfig {
            url: StoreUrl::File(objects.clone()),
            s3: S3Options::default(),
        },
        dir.path().join("vms"),
    );
    let backend = Backend::new(config, runtime.handle().clone()).unwrap();
    let control_path = dir.path().join("control.sock");
    let listener = {
        let _context = runtime.enter();
        tokio::net::UnixListener::bind(&control_path).unwrap()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn({
        let backend = backend.clone();
        async move {
            backend
                .serve_control(listener, async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    let mut control = common::Control::connect(&control_path);

    // A fresh backend: this process, nothing attached, nothing moved.
    let reply = control.send(r#"{"op":"stats"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let stats = &reply["stats"];
    assert_eq!(stats["pid"], std::process::id());
    for zero in [
        "vms",
        "in_flight",
        "queued_invocations",
        "uploads_pending",
        "bytes_in",
        "bytes_out",
        "requests",
    ] {
        assert_eq!(stats[zero], 0, "{zero}: {stats}");
    }
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["cpu_seconds"].as_f64().unwrap() >= 0.0, "{stats}");

    let connection = control.attach("vm1", "default");
    let mut vm = GuestVm::connect(connection, WINDOW);
    assert_eq!(control.send(r#"{"op":"stats"}"#)["stats"]["vms"], 1);

    // One invocation: 5 bytes of input and a 100 000-byte GET in, a 13-byte write-behind
    // PUT and a 3 000-byte result out, in four requests (NEXT, GET, PUT, COMPLETE).
    let data = common::pattern(100_000, 7);
    std::fs::create_dir_all(objects.join("in")).unwrap();
    std::fs::write(objects.join("in/data.bin"), &data).unwrap();
    let result = common::pattern(3_000, 9);
    let invoking = std::thread::spawn({
        let path = control_path.clone();
        move || {
            // `invoke` answers late: on a connection of its own.
            let mut control = common::Control::connect(&path);
            control.send(r#"{"op":"invoke","vm":"vm1","input":{"inline":"hello"}}"#)
        }
    });
    let answer = next(&mut vm, &[4096]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"hello");
    let number = InvocationContext::decode(&answer.meta).unwrap().invocation;
    let got = vm.call(
        &Call::new(Command::Get {
            offset: 0,
            max_len: 0,
        })
        .key(b"in/data.bin")
        .buffers(&[65_536, 65_536]),
    );
    assert_eq!(got.header.status, Status::Ok, "{}", got.meta_text());
    assert_eq!(got.payload, data);
    let put = vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(b"out/part")
            .payload(&[b"0123456789", b"abc"]),
    );
    assert_eq!(put.header.status, Status::Ok);
    assert_eq!(complete(&mut vm, number, &result).header.status, Status::Ok);
    let reply = invoking.join().unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["output_len"], 3_000);
    assert_eq!(reply["bytes_in"], 5 + 100_000, "{reply}");
    assert_eq!(reply["bytes_out"], 13 + 3_000, "{reply}");
    assert_eq!(reply["requests"], 4, "{reply}");

    // The totals hold the same, once the last answer's bookkeeping is done.
    assert_eq!(runtime.block_on(backend.drain_uploads(common::WAIT)), 0);
    let stats = stats_until(&mut control, |s| s["in_flight"] == 0);
    assert_eq!(stats["bytes_in"], 100_005, "{stats}");
    assert_eq!(stats["bytes_out"], 3_013, "{stats}");
    assert_eq!(stats["requests"], 4, "{stats}");
    assert_eq!(stats["uploads_pending"], 0, "{stats}");
    assert_eq!(stats["queued_invocations"], 0, "{stats}");

    // An invocation nobody has taken yet is queued; the library reports what the socket does.
    let pending = backend
        .invoke(
            "vm1",
            invocation("queued"),
            InvocationInput::Bytes(Bytes::from_static(b"x")),
        )
        .unwrap();
    let library = backend.stats();
    assert_eq!(
        (library.pid, library.vms, library.queued_invocations),
        (std::process::id(), 1, 1)
    );
    assert_eq!(
        control.send(r#"{"op":"stats"}"#)["stats"]["queued_invocations"],
        1
    );
    let answer = next(&mut vm, &[64]);
    assert_eq!(answer.payload, b"x");
    assert_eq!(backend.stats().queued_invocations, 0);
    assert_eq!(
        complete(&mut vm, pending.number(), b"yz").header.status,
        Status::Ok
    );
    runtime.block_on(pending).unwrap();

    // A parked NEXT is in flight (and counts as a request only once answered).
    let _parked = vm.submit(
        &Call::new(Command::Next { timeout_ms: 0 })
            .response_meta(536)
            .buffers(&[64]),
    );
    let stats = stats_until(&mut control, |s| s["in_flight"] == 1);
    assert_eq!(stats["bytes_in"], 100_006, "{stats}");
    assert_eq!(stats["bytes_out"], 3_015, "{stats}");
    assert_eq!(stats["requests"], 6, "{stats}");
    let totals = backend.stats();
    assert!(totals.rss_bytes > 0);

    // Detached VMs stay in the totals.
    assert_eq!(control.send(r#"{"op":"detach","vm":"vm1"}"#)["ok"], true);
    let stats = stats_until(&mut control, |s| s["in_flight"] == 0);
    assert_eq!(stats["vms"], 0, "{stats}");
    assert_eq!(stats["bytes_in"], totals.bytes_in);
    assert_eq!(stats["bytes_out"], totals.bytes_out);
    assert_eq!(stats["requests"], totals.requests);

    drop(control);
    let _ = stop.send(());
    runtime.block_on(serving).unwrap();
}

/// A backend of this process serving its control socket in `dir` (until dropped).
struct ControlServer {
    /// Runs the control server (dropped last).
    _runtime: tokio::runtime::Runtime,
    backend: Backend,
    path: std::path::PathBuf,
    objects: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ControlServer {
    fn start(dir: &std::path::Path) -> Self {
        let objects = dir.join("objects");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = BackendConfig::new(
            StoreConfig {
                url: StoreUrl::File(objects.clone()),
                s3: S3Options::default(),
            },
            dir.join("vms"),
        );
        let backend = Backend::new(config, runtime.handle().clone()).unwrap();
        let path = dir.join("control.sock");
        let listener = {
            let _context = runtime.enter();
            tokio::net::UnixListener::bind(&path).unwrap()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn({
            let backend = backend.clone();
            async move {
                backend
                    .serve_control(listener, async {
                        let _ = stopped.await;
                    })
                    .await;
            }
        });
        Self {
            _runtime: runtime,
            backend,
            path,
            objects,
            stop: Some(stop),
        }
    }

    fn connect(&self) -> common::Control {
        common::Control::connect(&self.path)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An invoke line with a binary input of `len` bytes (and a binary result), tagged.
fn binary_invoke(vm: &str, len: usize, tag: u64) -> Vec<u8> {
    format!(
        "{{\"op\":\"invoke\",\"vm\":\"{vm}\",\"input\":{{\"binary\":{len}}},\"binary\":true,\"tag\":{tag}}}\n"
    )
    .into_bytes()
}

#[test]
fn control_invoke_takes_binary_input_and_returns_binary_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlServer::start(dir.path());
    let mut control = server.connect();
    let mut vm = GuestVm::connect(control.attach("vm1", "default"), WINDOW);

    // Any bytes (a newline, 0xff, NULs), and more than a control line may hold.
    let mut input = common::pattern(300_000, 5);
    input[..4].copy_from_slice(b"\n\xff\0{");
    let invoking = std::thread::spawn({
        let path = server.path.clone();
        let input = input.clone();
        move || {
            let mut control = common::Control::connect(&path);
            let mut request = binary_invoke("vm1", input.len(), 7);
            request.extend_from_slice(&input);
            control.write_raw(&request);
            let reply = control.next_line();
            let output = control.read_bytes(reply["output_len"].as_u64().unwrap() as usize);
            // The connection is in step after the bytes: it serves the next request.
            let stats = control.send(r#"{"op":"stats"}"#);
            (reply, output, stats)
        }
    });
    let answer = next(&mut vm, &[262_144, 65_536]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, input);
    let number = InvocationContext::decode(&answer.meta).unwrap().invocation;
    let result = b"\xfe\x00result\n";
    assert_eq!(complete(&mut vm, number, result).header.status, Status::Ok);
    let (reply, output, stats) = invoking.join().unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["tag"], 7, "{reply}");
    assert_eq!(reply["output_encoding"], "binary", "{reply}");
    assert_eq!(reply["bytes_in"], input.len(), "{reply}");
    assert_eq!(output, result);
    assert_eq!(stats["ok"], true, "{stats}");

    // An empty binary input is an empty input.
    let invoking = std::thread::spawn({
        let path = server.path.clone();
        move || {
            let mut control = common::Control::connect(&path);
            control.write_raw(&binary_invoke("vm1", 0, 8));
            control.next_line()
        }
    });
    let answer = next(&mut vm, &[64]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert!(answer.payload.is_empty());
    let number = InvocationContext::decode(&answer.meta).unwrap().invocation;
    assert_eq!(complete(&mut vm, number, b"-").header.status, Status::Ok);
    let reply = invoking.join().unwrap();
    assert_eq!(
        (reply["ok"].clone(), reply["bytes_in"].clone()),
        (true.into(), 0.into()),
        "{reply}"
    );
}

#[test]
fn control_refusals_carry_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlServer::start(dir.path());
    let mut control = server.connect();
    let mut vm = GuestVm::connect(control.attach("vm1", "default"), WINDOW);
    let refused = |reply: &serde_json::Value, code: &str| {
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert!(!reply["error"].as_str().unwrap().is_empty(), "{reply}");
    };

    // The caller's mistakes.
    refused(&control.send(r#"{"op":"nope"}"#), "invalid");
    refused(
        &control.send(r#"{"op":"invoke","vm":"vm1","input":{"key":"in/../x"}}"#),
        "invalid",
    );
    refused(
        &control.send(r#"{"op":"invoke","vm":"vm1","input":{"inline":"x"},"output":"out//y"}"#),
        "invalid",
    );
    refused(
        &control.send(r#"{"op":"attach","vm":"vm2","tenant":"nobody"}"#),
        "not_found",
    );
    // The VM's absence.
    refused(
        &control.send(r#"{"op":"invoke","vm":"ghost","input":{"inline":"x"}}"#),
        "unknown_vm",
    );
    refused(
        &control.send(r#"{"op":"detach","vm":"ghost"}"#),
        "unknown_vm",
    );

    // An input object that does not exist: refused once the VM asks for it, and the VM's
    // NEXT is still there for the next invocation.
    let invoking = std::thread::spawn({
        let path = server.path.clone();
        move || {
            common::Control::connect(&path)
                .send(r#"{"op":"invoke","vm":"vm1","input":{"key":"in/missing.txt"}}"#)
        }
    });
    let parked = vm.submit(
        &Call::new(Command::Next { timeout_ms: 0 })
            .response_meta(536)
            .buffers(&[4096]),
    );
    let reply = invoking.join().unwrap();
    refused(&reply, "not_found");
    assert!(
        reply["error"].as_str().unwrap().contains("in/missing.txt"),
        "{reply}"
    );
    std::fs::create_dir_all(server.objects.join("in")).unwrap();
    std::fs::write(server.objects.join("in/there.txt"), b"here").unwrap();
    let invoking = std::thread::spawn({
        let path = server.path.clone();
        move || {
            common::Control::connect(&path)
                .send(r#"{"op":"invoke","vm":"vm1","input":{"key":"in/there.txt"}}"#)
        }
    });
    let answer = vm.wait(parked);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"here");
    let number = InvocationContext::decode(&answer.meta).unwrap().invocation;
    assert_eq!(complete(&mut vm, number, b"ok").header.status, Status::Ok);
    assert_eq!(invoking.join().unwrap()["ok"], true);
    drop(server);
}

#[test]
fn binary_inputs_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlServer::start(dir.path());
    let mut control = server.connect();
    let _vm = GuestVm::connect(control.attach("vm1", "default"), WINDOW);
    let max = nexus_backend::MAX_BINARY_INPUT as usize;
    let held = nexus_backend::MAX_HELD_INPUT as usize;

    // Inputs no VM takes yet stay held by the connection, up to its budget; past it, an
    // input is read and dropped, and refused `throttled`; the connection goes on.
    let mut sender = server.connect();
    let chunk = vec![0x5a_u8; max];
    let fits = held / max;
    for tag in 1..=fits as u64 {
        sender.write_raw(&binary_invoke("vm1", max, tag));
        sender.write_raw(&chunk);
    }
    sender.write_raw(&binary_invoke("vm1", 10, 99));
    sender.write_raw(b"0123456789");
    let reply = sender.next_line();
    assert_eq!(
        (reply["tag"].clone(), reply["code"].clone()),
        (99.into(), "throttled".into()),
        "{reply}"
    );
    assert_eq!(sender.send(r#"{"op":"stats","tag":100}"#)["ok"], true);
    assert_eq!(
        server.backend.stats().queued_invocations,
        fits as u64,
        "the held inputs are queued"
    );
    // Dropping the VM fails them, which frees the budget.
    assert_eq!(control.send(r#"{"op":"detach","vm":"vm1"}"#)["ok"], true);
    for _ in 0..fits {
        let reply = sender.next_line();
        assert_eq!(reply["code"], "unknown_vm", "{reply}");
    }
    let _vm = GuestVm::connect(control.attach("vm1", "default"), WINDOW);
    sender.write_raw(&binary_invoke("vm1", 10, 101));
    sender.write_raw(b"0123456789");
    let start = Instant::now();
    while server.backend.stats().queued_invocations == 0 {
        assert!(start.elapsed() < common::WAIT, "the input was not accepted");
        std::thread::sleep(Duration::from_millis(10));
    }

    // One that announces more than the maximum is refused and its connection closed: the
    // stream cannot be trusted to be in step.
    let mut greedy = server.connect();
    greedy.write_raw(&binary_invoke("vm1", max + 1, 1));
    let reply = greedy.next_line();
    assert_eq!(reply["code"], "invalid", "{reply}");
    assert!(greedy.closed());
    drop(server);
}

/// NEXT with room for the output key.
fn next_with_key_room(vm: &mut GuestVm) -> common::Answer {
    vm.call(
        &Call::new(Command::Next { timeout_ms: 10_000 })
            .response_meta(nexus_ring::records::INVOCATION_CONTEXT_WITH_KEY_MAX_LEN)
            .buffers(&[4096]),
    )
}

#[test]
fn the_output_key_goes_to_guests_with_room_for_it_and_a_stored_result_is_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = BackendConfig::new(
        StoreConfig {
            url: StoreUrl::File(objects.clone()),
            s3: S3Options::default(),
        },
        dir.path().join("vms"),
    );
    let backend = Backend::new(config, runtime.handle().clone()).unwrap();
    let control_path = dir.path().join("control.sock");
    let listener = {
        let _context = runtime.enter();
        tokio::net::UnixListener::bind(&control_path).unwrap()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn({
        let backend = backend.clone();
        async move {
            backend
                .serve_control(listener, async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    let mut control = common::Control::connect(&control_path);
    let connection = control.attach("vm1", "default");
    let mut vm = GuestVm::connect(connection, WINDOW);
    let invoke = |line: &'static str| {
        let path = control_path.clone();
        std::thread::spawn(move || common::Control::connect(&path).send(line))
    };

    // A guest with room for the key receives it, stores the result there itself (write
    // behind) and says so: the backend does not store the COMPLETE payload over it. (The
    // guest stores other bytes than it reports, to tell who wrote the object.)
    let reply = invoke(r#"{"op":"invoke","vm":"vm1","input":{"inline":"a"},"output":"out/a"}"#);
    let answer = next_with_key_room(&mut vm);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    let context = InvocationContext::decode(&answer.meta).unwrap();
    assert_eq!(context.output_key, Some("out/a"));
    let put = vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(b"out/a")
            .payload(&[b"stored by the guest"]),
    );
    assert_eq!(put.header.status, Status::Ok);
    let done = complete_stored(&mut vm, context.invocation, b"result a", true);
    assert_eq!(done.header.status, Status::Ok);
    let reply = reply.join().unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["output"], "result a", "{reply}");
    assert_eq!(reply["timings"]["output_store_us"], 0, "{reply}");
    // Durable when invoke answered.
    assert_eq!(
        std::fs::read(objects.join("out/a")).unwrap(),
        b"stored by the guest"
    );

    // Stored by the guest and not wanted back: the result is not even read out of the window
    // (bytes out: the PUT's alone), yet its length is reported.
    let reply = invoke(
        r#"{"op":"invoke","vm":"vm1","input":{"inline":"e"},"output":"out/e","return_output":false}"#,
    );
    let answer = next_with_key_room(&mut vm);
    let context = InvocationContext::decode(&answer.meta).unwrap();
    let put = vm.call(
        &Call::new(Command::Put { write_behind: true })
            .key(b"out/e")
            .payload(&[b"result e"]),
    );
    assert_eq!(put.header.status, Status::Ok);
    let done = complete_stored(&mut vm, context.invocation, b"result e", true);
    assert_eq!(done.header.status, Status::Ok);
    let reply = reply.join().unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        (
            &reply["output"],
            &reply["output_encoding"],
            &reply["output_len"]
        ),
        (
            &serde_json::Value::Null,
            &serde_json::json!("none"),
            &serde_json::json!(8)
        ),
        "{reply}"
    );
    assert_eq!(reply["bytes_out"], 8, "{reply}");
    assert_eq!(std::fs::read(objects.join("out/e")).unwrap(), b"result e");

    // Without the flag, the backend stores the result as before.
    let reply = invoke(r#"{"op":"invoke","vm":"vm1","input":{"inline":"b"},"output":"out/b"}"#);
    let answer = next_with_key_room(&mut vm);
    let context = InvocationContext::decode(&answer.meta).unwrap();
    assert_eq!(context.output_key, Some("out/b"));
    assert_eq!(
        complete(&mut vm, context.invocation, b"result b")
            .header
            .status,
        Status::Ok
    );
    assert_eq!(reply.join().unwrap()["ok"], true);
    assert_eq!(std::fs::read(objects.join("out/b")).unwrap(), b"result b");

    // A guest that offers only the old meta capacity sees the context it always saw, and a
    // `STORED` from it means nothing: it was never told the key.
    let reply = invoke(r#"{"op":"invoke","vm":"vm1","input":{"inline":"c"},"output":"out/c"}"#);
    let answer = next(&mut vm, &[4096]);
    assert_eq!(answer.header.status, Status::Ok);
    let context = InvocationContext::decode(&answer.meta).unwrap();
    assert_eq!(context.output_key, None);
    assert_eq!(answer.meta[16], 0, "no flag bit");
    assert_eq!(
        complete_stored(&mut vm, context.invocation, b"result c", true)
            .header
            .status,
        Status::Ok
    );
    assert_eq!(reply.join().unwrap()["ok"], true);
    assert_eq!(std::fs::read(objects.join("out/c")).unwrap(), b"result c");

    // Through the library: the result says whether the guest stored it.
    let pending = backend
        .invoke(
            "vm1",
            Invocation {
                output_key: Some("out/d".into()),
                ..invocation("library")
            },
            InvocationInput::Bytes(Bytes::from_static(b"d")),
        )
        .unwrap();
    let answer = next_with_key_room(&mut vm);
    let context = InvocationContext::decode(&answer.meta).unwrap();
    assert_eq!(context.output_key, Some("out/d"));
    assert_eq!(
        complete_stored(&mut vm, context.invocation, b"result d", true)
            .header
            .status,
        Status::Ok
    );
    let result = runtime.block_on(pending).unwrap();
    assert_eq!(result.stored_len, Some(8));
    assert_eq!(&result.output[..], b"result d");
    // Nobody stored anything: the library leaves storing to its caller.
    assert!(!objects.join("out/d").exists());

    drop(control);
    let _ = stop.send(());
    runtime.block_on(serving).unwrap();
}
