// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tenants of their own, through the backend binary and VM-like clients: each tenant's own
//! store (two directories; two buckets of a real S3-compatible server), its quotas (bytes,
//! objects, request rate) while another tenant goes on, and configuration reloads (SIGHUP
//! and the control op) while an attached VM keeps working.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{BackendProcess, Call, GuestVm, WAIT};
use nexus_ring::records::EntryList;
use nexus_ring::{Command, HttpMethod, LogLevel, Status};

const WINDOW: u64 = 4 << 20;

fn put(vm: &mut GuestVm, key: &str, data: &[u8], write_behind: bool) -> common::Answer {
    let segments: &[&[u8]] = if data.is_empty() { &[] } else { &[data] };
    vm.call(
        &Call::new(Command::Put { write_behind })
            .key(key.as_bytes())
            .payload(segments)
            .response_meta(1024),
    )
}

fn get(vm: &mut GuestVm, key: &str) -> common::Answer {
    vm.call(
        &Call::new(Command::Get {
            offset: 0,
            max_len: 0,
        })
        .key(key.as_bytes())
        .response_meta(1024)
        .buffers(&[4096]),
    )
}

fn head(vm: &mut GuestVm, key: &str) -> common::Answer {
    vm.call(
        &Call::new(Command::Head)
            .key(key.as_bytes())
            .response_meta(1024),
    )
}

fn delete(vm: &mut GuestVm, key: &str) -> common::Answer {
    vm.call(
        &Call::new(Command::Delete)
            .key(key.as_bytes())
            .response_meta(1024),
    )
}

/// The keys a LIST of `prefix` returns.
fn list(vm: &mut GuestVm, prefix: &str) -> Vec<String> {
    let answer = vm.call(
        &Call::new(Command::List { max_entries: 0 })
            .key(prefix.as_bytes())
            .response_meta(1024)
            .buffers(&[64 << 10]),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    EntryList::decode(&answer.payload)
        .unwrap()
        .iter()
        .map(|entry| entry.key.to_owned())
        .collect()
}

/// Asserts `answer` is OK.
fn ok(answer: &common::Answer) {
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
}

/// Asserts `answer` is `status` with a message containing `text`.
fn refused(answer: &common::Answer, status: Status, text: &str) {
    assert_eq!(answer.header.status, status, "{}", answer.meta_text());
    assert!(
        answer.meta_text().contains(text),
        "`{}` should say `{text}`",
        answer.meta_text()
    );
}

/// The payload of a GET answer.
fn body(answer: &common::Answer) -> Vec<u8> {
    ok(answer);
    answer.payload.clone()
}

/// Starts the backend with the configuration file `config` (written to `<dir>/backend.toml`).
fn start(dir: &Path, config: &str) -> BackendProcess {
    let file = dir.join("backend.toml");
    std::fs::write(&file, config).unwrap();
    BackendProcess::start(dir, &["--config".into(), file.display().to_string()], &[])
}

/// Waits until the backend's log holds `text` (at least `count` times).
fn wait_for_log(backend: &BackendProcess, text: &str, count: usize) {
    let start = Instant::now();
    while backend.log().matches(text).count() < count {
        assert!(
            start.elapsed() < WAIT,
            "the log never said `{text}` {count} time(s):\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attach(backend: &BackendProcess, vm: &str, tenant: &str) -> (common::Control, GuestVm) {
    let mut control = backend.connect();
    let connection = control.attach(vm, tenant);
    (control, GuestVm::connect(connection, WINDOW))
}

#[test]
fn tenants_with_their_own_directories_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, a_dir, b_dir) = (
        dir.path().join("objects"),
        dir.path().join("store-a"),
        dir.path().join("store-b"),
    );
    let backend = start(
        dir.path(),
        &format!(
            "[store]\nurl = \"file://{}\"\n\
             [tenants.a]\nurl = \"file://{}\"\n\
             [tenants.b]\nurl = \"file://{}\"\n\
             [tenants.c]\nprefix = \"c\"\n",
            objects.display(),
            a_dir.display(),
            b_dir.display()
        ),
    );
    let (_ca, mut a) = attach(&backend, "vm-a", "a");
    let (_cb, mut b) = attach(&backend, "vm-b", "b");
    let (_cc, mut c) = attach(&backend, "vm-c", "c");

    // The same key in each tenant's own store: each sees its own object only.
    ok(&put(&mut a, "shared/x", b"alpha's", false));
    ok(&put(&mut b, "shared/x", b"beta's", true));
    ok(&put(&mut c, "c/x", b"gamma's", false));
    assert_eq!(body(&get(&mut a, "shared/x")), b"alpha's");
    // A write-behind PUT is in the store by its key's next request.
    assert_eq!(body(&get(&mut b, "shared/x")), b"beta's");
    assert_eq!(std::fs::read(a_dir.join("shared/x")).unwrap(), b"alpha's");
    assert_eq!(std::fs::read(b_dir.join("shared/x")).unwrap(), b"beta's");
    assert_eq!(std::fs::read(objects.join("c/x")).unwrap(), b"gamma's");
    assert!(
        !objects.join("shared").exists(),
        "nothing in the backend's store"
    );

    // Only in a's store: b does not find it, and neither lists the other's.
    ok(&put(&mut a, "only-a", b"1", false));
    refused(&get(&mut b, "only-a"), Status::NotFound, "");
    refused(&head(&mut b, "only-a"), Status::NotFound, "");
    assert_eq!(list(&mut a, ""), ["only-a", "shared/x"]);
    assert_eq!(list(&mut b, ""), ["shared/x"]);
    // c is confined to its prefix in the backend's store, as before.
    refused(
        &get(&mut c, "shared/x"),
        Status::PermissionDenied,
        "outside",
    );
    assert_eq!(list(&mut c, "c/"), ["c/x"]);

    // A DELETE reaches only the tenant's own store.
    ok(&delete(&mut b, "shared/x"));
    assert!(!b_dir.join("shared/x").exists());
    assert_eq!(body(&get(&mut a, "shared/x")), b"alpha's");
}

#[test]
fn tenants_with_their_own_buckets_and_credentials_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    // Two S3 services, each with its own credentials: a tenant holds only its own.
    let (root_a, root_b) = (dir.path().join("s3-a"), dir.path().join("s3-b"));
    std::fs::create_dir_all(root_a.join("bucket-a")).unwrap();
    std::fs::create_dir_all(root_b.join("bucket-b")).unwrap();
    let (_s3a, port_a) = common::start_s3(&root_a, "key-a", "secret-of-a");
    let (_s3b, port_b) = common::start_s3(&root_b, "key-b", "secret-of-b");
    std::fs::write(dir.path().join("secret-a"), "secret-of-a\n").unwrap();
    std::fs::write(dir.path().join("secret-b"), "secret-of-b\n").unwrap();
    let backend = start(
        dir.path(),
        &format!(
            "[store]\nurl = \"file://{}\"\n\
             [tenants.a]\nurl = \"s3://bucket-a/fn\"\nendpoint = \"http://127.0.0.1:{port_a}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"key-a\"\nsecret_access_key_file = \"secret-a\"\n\
             [tenants.b]\nurl = \"s3://bucket-b\"\nendpoint = \"http://127.0.0.1:{port_b}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"key-b\"\nsecret_access_key_file = \"secret-b\"\n",
            dir.path().join("objects").display()
        ),
    );
    let (_ca, mut a) = attach(&backend, "vm-a", "a");
    let (_cb, mut b) = attach(&backend, "vm-b", "b");

    ok(&put(&mut a, "fn/x", b"in bucket a", false));
    ok(&put(&mut b, "fn/x", b"in bucket b", true));
    assert_eq!(body(&get(&mut a, "fn/x")), b"in bucket a");
    assert_eq!(body(&get(&mut b, "fn/x")), b"in bucket b");
    assert_eq!(
        std::fs::read(root_a.join("bucket-a/fn/x")).unwrap(),
        b"in bucket a"
    );
    assert_eq!(
        std::fs::read(root_b.join("bucket-b/fn/x")).unwrap(),
        b"in bucket b"
    );
    // a is confined to its prefix in its bucket.
    refused(
        &put(&mut a, "other", b"x", false),
        Status::PermissionDenied,
        "outside",
    );
    ok(&put(&mut b, "b-only", b"x", false));
    assert_eq!(list(&mut a, "fn/"), ["fn/x"]);
    assert_eq!(list(&mut b, ""), ["b-only", "fn/x"]);
    refused(&get(&mut a, "fn/b-only"), Status::NotFound, "");
    assert!(!root_a.join("bucket-a/b-only").exists());
}

#[test]
fn a_tenant_over_quota_is_refused_while_another_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    // 30 bytes in 1 object under q's prefix before the backend starts: counted at start.
    std::fs::create_dir_all(objects.join("q")).unwrap();
    std::fs::write(objects.join("q/old"), [7u8; 30]).unwrap();
    let backend = start(
        dir.path(),
        &format!(
            "[store]\nurl = \"file://{}\"\n\
             [tenants.q]\nprefix = \"q\"\n[tenants.q.quota]\nbytes = 100\nobjects = 3\n\
             [tenants.r]\nprefix = \"r\"\n\
             [tenants.s]\nprefix = \"s\"\n[tenants.s.quota]\nrequests_per_second = 1\nburst = 3\n",
            objects.display()
        ),
    );
    wait_for_log(&backend, "tenant q: 1 objects, 30 bytes", 1);
    let (_cq, mut q) = attach(&backend, "vm-q", "q");
    let (_cr, mut r) = attach(&backend, "vm-r", "r");
    let (_cs, mut s) = attach(&backend, "vm-s", "s");

    // Bytes: 30 + 50 fit, 30 more do not; the refusal names the quota.
    ok(&put(&mut q, "q/a", &[1; 50], false));
    refused(
        &put(&mut q, "q/b", &[1; 30], false),
        Status::PermissionDenied,
        "quota exceeded: tenant `q` may store 100 bytes",
    );
    // A write-behind PUT is refused before it is acknowledged.
    refused(
        &put(&mut q, "q/b", &[1; 30], true),
        Status::PermissionDenied,
        "quota exceeded",
    );
    assert!(!objects.join("q/b").exists());
    // Another tenant is not held back.
    ok(&put(&mut r, "r/big", &[2; 500], false));
    // An overwrite counts only what it adds: q/a from 50 to 60 bytes fits (90 of 100).
    ok(&put(&mut q, "q/a", &[3; 60], false));
    // Objects: a third fits, a fourth does not (even empty).
    ok(&put(&mut q, "q/c", b"", false));
    refused(
        &put(&mut q, "q/d", b"", false),
        Status::PermissionDenied,
        "may store 3 objects",
    );
    // A DELETE gives room back.
    ok(&delete(&mut q, "q/old"));
    ok(&put(&mut q, "q/d", &[4; 40], false));
    assert_eq!(std::fs::read(objects.join("q/d")).unwrap(), [4; 40]);

    // The request rate over all of s's VMs: a burst of 3, then THROTTLED, while r goes on.
    let (_cs2, mut s2) = attach(&backend, "vm-s2", "s");
    ok(&put(&mut s, "s/x", b"x", false));
    refused(&head(&mut s2, "s/none"), Status::NotFound, "");
    ok(&head(&mut s, "s/x"));
    refused(
        &head(&mut s2, "s/x"),
        Status::Throttled,
        "tenant `s` may make 1 requests per second",
    );
    for n in 0..10 {
        ok(&put(&mut r, &format!("r/{n}"), b"r", false));
    }
    // One second later there is a token again.
    std::thread::sleep(Duration::from_millis(1100));
    ok(&head(&mut s2, "s/x"));

    // The figures: q holds 60 + 0 + 40 bytes in 3 objects and was refused 3 times, s once.
    let stats = backend.connect().send(r#"{"op":"stats"}"#);
    assert_eq!(stats["ok"], true, "{stats}");
    let tenants = &stats["stats"]["tenants"];
    assert_eq!(tenants[0]["name"], "q", "{stats}");
    assert_eq!(
        (
            &tenants[0]["bytes"],
            &tenants[0]["objects"],
            &tenants[0]["quota_refusals"]
        ),
        (&100.into(), &3.into(), &3.into()),
        "{stats}"
    );
    assert_eq!(tenants[1]["name"], "r", "{stats}");
    assert_eq!(tenants[1]["quota_refusals"], 0, "{stats}");
    assert_eq!(tenants[2]["name"], "s", "{stats}");
    assert_eq!(tenants[2]["quota_refusals"], 1, "{stats}");
}

/// An HTTP server on loopback answering every request `200` with `hello`; its port.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            });
        }
    });
    port
}

/// The statuses of `n` LOG records sent at once.
fn log_burst(vm: &mut GuestVm, n: usize) -> Vec<Status> {
    (0..n)
        .map(|_| {
            vm.call(
                &Call::new(Command::Log {
                    level: LogLevel::Info,
                })
                .payload(&[b"a record"])
                .response_meta(256),
            )
            .header
            .status
        })
        .collect()
}

fn http_get(vm: &mut GuestVm, url: &str) -> common::Answer {
    vm.call(
        &Call::new(Command::Http {
            method: HttpMethod::Get,
            timeout_ms: 10_000,
        })
        .key(url.as_bytes())
        .response_meta(1024)
        .buffers(&[4096]),
    )
}

#[test]
fn a_reload_changes_a_tenant_while_its_vm_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, a_dir, a2_dir) = (
        dir.path().join("objects"),
        dir.path().join("store-a"),
        dir.path().join("store-a2"),
    );
    let port = http_server();
    let url = format!("http://127.0.0.1:{port}");
    let config = |a_store: &Path, extra: &str| {
        format!(
            "[store]\nurl = \"file://{}\"\n\
             [tenants.a]\nurl = \"file://{}\"\n{extra}\
             [tenants.b]\nprefix = \"b\"\n[tenants.b.limits]\nlog_burst = 1\nlog_records_per_second = 1\n",
            objects.display(),
            a_store.display()
        )
    };
    let file = dir.path().join("backend.toml");
    // At first b's VMs may log 100 records a second (the defaults).
    let backend = start(
        dir.path(),
        &format!(
            "[store]\nurl = \"file://{}\"\n[tenants.a]\nurl = \"file://{}\"\n[tenants.b]\nprefix = \"b\"\n",
            objects.display(),
            a_dir.display()
        ),
    );
    let (_ca, mut a) = attach(&backend, "vm-a", "a");
    let (_cb1, mut b1) = attach(&backend, "vm-b1", "b");
    ok(&put(&mut a, "k1", b"one", false));
    assert!(a_dir.join("k1").exists());
    refused(
        &http_get(&mut a, &format!("{url}/")),
        Status::PermissionDenied,
        "",
    );

    // SIGHUP: a's store moves, and it may reach the HTTP server; the VM stays attached.
    std::fs::write(
        &file,
        config(&a2_dir, &format!("[tenants.a.http]\nallow = [\"{url}\"]\n")),
    )
    .unwrap();
    // SAFETY: kill(2) with a signal number touches no memory.
    let sent = unsafe { libc::kill(backend.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0);
    wait_for_log(&backend, "configuration reloaded", 1);
    ok(&put(&mut a, "k2", b"two", false));
    assert!(a2_dir.join("k2").exists() && !a_dir.join("k2").exists());
    refused(&get(&mut a, "k1"), Status::NotFound, "");
    let answer = http_get(&mut a, &format!("{url}/"));
    assert_eq!(body(&answer), b"hello");
    // b's new per-VM limits apply to its VMs attached from now on, not to vm-b1.
    let (_cb2, mut b2) = attach(&backend, "vm-b2", "b");
    assert_eq!(log_burst(&mut b2, 2), [Status::Ok, Status::Throttled]);
    assert_eq!(log_burst(&mut b1, 3), [Status::Ok; 3]);

    // The control op: a quota of 2 objects (k2 is counted), and no more HTTP.
    std::fs::write(&file, config(&a2_dir, "[tenants.a.quota]\nobjects = 2\n")).unwrap();
    let mut control = backend.connect();
    let reply = control.send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    wait_for_log(&backend, "tenant a: 1 objects", 1);
    ok(&put(&mut a, "k3", b"three", false));
    refused(
        &put(&mut a, "k4", b"four", false),
        Status::PermissionDenied,
        "may store 2 objects",
    );
    refused(
        &http_get(&mut a, &format!("{url}/")),
        Status::PermissionDenied,
        "",
    );

    // A bad file is refused with its line and key; the old configuration goes on serving.
    std::fs::write(
        &file,
        format!(
            "{}[tenants.a.quota]\nobjects = 2\nbites = 5\n",
            config(&a2_dir, "")
        ),
    )
    .unwrap();
    let reply = control.send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("backend.toml")
            && error.contains("line 12")
            && error.contains("tenants.a.quota.bites"),
        "{error}"
    );
    assert!(backend.log().contains("configuration reload failed"));
    refused(
        &put(&mut a, "k4", b"four", false),
        Status::PermissionDenied,
        "may store 2 objects",
    );
    assert_eq!(body(&get(&mut a, "k3")), b"three");

    // A file without a's tenant is refused while vm-a is attached.
    std::fs::write(
        &file,
        format!(
            "[store]\nurl = \"file://{}\"\n[tenants.b]\nprefix = \"b\"\n",
            objects.display()
        ),
    )
    .unwrap();
    let reply = control.send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("`a`"), "{reply}");
    ok(&delete(&mut a, "k2"));
    ok(&put(&mut a, "k4", b"four", false));
    assert!(a2_dir.join("k4").exists());
}
