// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! End to end against the real `nexus-backend` binary with a file store: a control
//! connection attaches VMs, and each test VM is a vhost-user frontend whose memfd window
//! holds a split virtqueue and every buffer.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{BackendProcess, Call, GuestVm, WAIT, pattern};
use nexus_ring::records::{EntryList, HeaderList, ObjectEntry};
use nexus_ring::{
    ChainDescriptor, Command, HttpMethod, LogLevel, REQUEST_HEADER_SIZE, RequestHeader, Status,
};
use vm_memory::Bytes;

const WINDOW: u64 = 16 << 20;

fn start(dir: &Path, extra: &[String]) -> BackendProcess {
    let mut args = vec![
        "--store".to_owned(),
        format!("file://{}", dir.join("objects").display()),
        "--tenant".to_owned(),
        "alpha=tenants/alpha".to_owned(),
        "--tenant".to_owned(),
        "beta=tenants/beta".to_owned(),
    ];
    args.extend_from_slice(extra);
    BackendProcess::start(dir, &args, &[])
}

fn get(vm: &mut GuestVm, key: &str, offset: u64, max_len: u64, buffers: &[u32]) -> common::Answer {
    vm.call(
        &Call::new(Command::Get { offset, max_len })
            .key(key.as_bytes())
            .buffers(buffers),
    )
}

fn put(vm: &mut GuestVm, key: &str, segments: &[&[u8]], write_behind: bool) -> common::Answer {
    vm.call(
        &Call::new(Command::Put { write_behind })
            .key(key.as_bytes())
            .payload(segments)
            .response_meta(1024),
    )
}

#[test]
fn object_ops_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path(), &[]);
    let objects = dir.path().join("objects");
    let mut control = backend.connect();
    let connection = control.attach("vm1", "alpha");
    // Nobody else can speak vhost-user for the VM: no socket file stands for it.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sock") || name.ends_with(".vms"))
        .collect();
    files.sort();
    assert_eq!(files, ["control.sock"]);
    let mut vm = GuestVm::connect(connection, WINDOW);

    // PUT, from a payload split over three segments; the file is there at once.
    let data = pattern(100_000, 1);
    let answer = put(
        &mut vm,
        "tenants/alpha/in/data.bin",
        &[&data[..10], &data[10..70_000], &data[70_000..]],
        false,
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(
        std::fs::read(objects.join("tenants/alpha/in/data.bin")).unwrap(),
        data
    );

    // GET whole, into two buffers.
    let answer = get(
        &mut vm,
        "tenants/alpha/in/data.bin",
        0,
        0,
        &[60_000, 60_000],
    );
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(answer.header.total, 100_000);
    assert_eq!(answer.payload, data);
    // GET a range, limited by max_len; then by the buffers; then past the end.
    let answer = get(&mut vm, "tenants/alpha/in/data.bin", 5, 100, &[4096]);
    assert_eq!(answer.payload, &data[5..105]);
    let answer = get(&mut vm, "tenants/alpha/in/data.bin", 99_000, 0, &[300, 300]);
    assert_eq!(answer.payload, &data[99_000..99_600]);
    assert_eq!(answer.header.total, 100_000);
    let answer = get(&mut vm, "tenants/alpha/in/data.bin", 100_000, 0, &[64]);
    assert_eq!(
        (answer.header.status, answer.header.payload_len),
        (Status::Ok, 0)
    );
    assert_eq!(answer.header.total, 100_000);
    // GET without buffers reports the size.
    let answer = get(&mut vm, "tenants/alpha/in/data.bin", 0, 0, &[]);
    assert_eq!(
        (answer.header.payload_len, answer.header.total),
        (0, 100_000)
    );

    // HEAD.
    let answer = vm.call(
        &Call::new(Command::Head)
            .key(b"tenants/alpha/in/data.bin")
            .response_meta(276),
    );
    assert_eq!(answer.header.status, Status::Ok);
    let entry = ObjectEntry::decode(&answer.meta).unwrap();
    assert_eq!((entry.size, entry.key), (100_000, ""));
    assert!(entry.last_modified_ms > 0 && !entry.etag.is_empty());

    // An empty object.
    assert_eq!(
        put(&mut vm, "tenants/alpha/empty", &[], false)
            .header
            .status,
        Status::Ok
    );
    assert_eq!(
        std::fs::read(objects.join("tenants/alpha/empty")).unwrap(),
        b""
    );
    let answer = get(&mut vm, "tenants/alpha/empty", 0, 0, &[16]);
    assert_eq!((answer.header.status, answer.header.total), (Status::Ok, 0));

    // LIST, one entry per page, following the continuation token.
    for name in ["b", "a", "c/d"] {
        let key = format!("tenants/alpha/list/{name}");
        assert_eq!(
            put(&mut vm, &key, &[name.as_bytes()], false).header.status,
            Status::Ok
        );
    }
    let mut keys = Vec::new();
    let mut token: Vec<u8> = Vec::new();
    loop {
        let answer = vm.call(
            &Call::new(Command::List { max_entries: 1 })
                .key(b"tenants/alpha/list/")
                .meta(&token)
                .response_meta(1024)
                .buffers(&[4096]),
        );
        assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
        let list = EntryList::decode(&answer.payload).unwrap();
        keys.extend(list.iter().map(|e| (e.key.to_owned(), e.size)));
        if answer.meta.is_empty() {
            break;
        }
        token = answer.meta;
    }
    assert_eq!(
        keys,
        vec![
            ("tenants/alpha/list/a".to_owned(), 1),
            ("tenants/alpha/list/b".to_owned(), 1),
            ("tenants/alpha/list/c/d".to_owned(), 3),
        ]
    );
    // LIST without a prefix lists the tenant's objects; too-small buffers are TOO_LARGE.
    let answer = vm.call(
        &Call::new(Command::List { max_entries: 0 })
            .response_meta(1024)
            .buffers(&[8192]),
    );
    assert_eq!(EntryList::decode(&answer.payload).unwrap().len(), 5);
    let answer = vm.call(
        &Call::new(Command::List { max_entries: 0 })
            .key(b"tenants/alpha/list/")
            .response_meta(1024)
            .buffers(&[16]),
    );
    assert_eq!(answer.header.status, Status::TooLarge);
    // The page with the first entry needs its count, fixed part, key and etag.
    assert!(answer.header.total > 4 + 20 + "tenants/alpha/list/a".len() as u64);

    // DELETE: the file goes; deleting again is fine; GET says NOT_FOUND.
    let answer = vm.call(&Call::new(Command::Delete).key(b"tenants/alpha/list/b"));
    assert_eq!(answer.header.status, Status::Ok);
    assert!(!objects.join("tenants/alpha/list/b").exists());
    let answer = vm.call(&Call::new(Command::Delete).key(b"tenants/alpha/list/b"));
    assert_eq!(answer.header.status, Status::Ok);
    let answer = get(&mut vm, "tenants/alpha/list/b", 0, 0, &[64]);
    assert_eq!(answer.header.status, Status::NotFound);
    assert!(answer.used_len >= 40);

    // Write-behind: acknowledged at once, durable after FLUSH; a GET after it sees it.
    let big = pattern(3 << 20, 7);
    for i in 0..4 {
        let key = format!("tenants/alpha/out/{i}");
        assert_eq!(
            put(&mut vm, &key, &[&big[..1 << 20], &big[1 << 20..]], true)
                .header
                .status,
            Status::Ok
        );
    }
    let answer = get(&mut vm, "tenants/alpha/out/3", 0, 0, &[4 << 20]);
    assert_eq!(answer.payload, big);
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    for i in 0..4 {
        assert_eq!(
            std::fs::read(objects.join(format!("tenants/alpha/out/{i}"))).unwrap(),
            big
        );
    }
    // Write-behind followed at once by DELETE of the same key: the delete wins.
    assert_eq!(
        put(&mut vm, "tenants/alpha/out/x", &[b"x"], true)
            .header
            .status,
        Status::Ok
    );
    assert_eq!(
        vm.call(&Call::new(Command::Delete).key(b"tenants/alpha/out/x"))
            .header
            .status,
        Status::Ok
    );
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 5000 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok);
    assert!(!objects.join("tenants/alpha/out/x").exists());
    // A write-behind upload that fails is reported by FLUSH, naming the key: a directory
    // stands where the object should go.
    std::fs::create_dir_all(objects.join("tenants/alpha/blocked/dir")).unwrap();
    assert_eq!(
        put(&mut vm, "tenants/alpha/blocked", &[b"y"], true)
            .header
            .status,
        Status::Ok
    );
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::UploadFailed);
    assert_eq!(answer.meta, b"tenants/alpha/blocked");
    assert_eq!(answer.header.detail, 1);
    // ...once.
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok);
    // A synchronous PUT that cannot be stored is UPLOAD_FAILED at once.
    let answer = put(&mut vm, "tenants/alpha/blocked", &[b"y"], false);
    assert_eq!(answer.header.status, Status::UploadFailed);
    assert_eq!(answer.meta, b"tenants/alpha/blocked");

    // Keys that are not keys.
    for bad in [
        &b"tenants/alpha/../beta/x"[..],
        b"tenants/alpha//x",
        b"tenants/alpha/\xff",
    ] {
        let answer = vm.call(
            &Call::new(Command::Get {
                offset: 0,
                max_len: 0,
            })
            .key(bad)
            .response_meta(128),
        );
        assert_eq!(answer.header.status, Status::InvalidRequest, "{bad:?}");
        assert!(!answer.meta.is_empty());
    }

    // LOG, INVOKE without an invoker, NEXT with nothing queued, a second NEXT at once.
    let answer = vm.call(
        &Call::new(Command::Log {
            level: LogLevel::Info,
        })
        .payload(&[b"hello from the guest\nsecond line"]),
    );
    assert_eq!(answer.header.status, Status::Ok);
    let answer = vm.call(
        &Call::new(Command::Invoke {
            timeout_ms: 0,
            asynchronous: false,
        })
        .key(b"other-fn")
        .response_meta(256),
    );
    assert_eq!(answer.header.status, Status::BackendUnavailable);
    // Long enough that the first NEXT is still parked when the second arrives, even on a
    // loaded machine.
    let next = vm.submit(
        &Call::new(Command::Next { timeout_ms: 3000 })
            .response_meta(536)
            .buffers(&[64]),
    );
    let second = vm.call(&Call::new(Command::Next { timeout_ms: 300 }).response_meta(536));
    assert_eq!(second.header.status, Status::InvalidRequest);
    assert_eq!(vm.wait(next).header.status, Status::Timeout);
    let answer = vm.call(
        &Call::new(Command::Complete {
            invocation: 77,
            outcome: nexus_ring::Outcome::Success,
            stored: false,
        })
        .payload(&[b"result"]),
    );
    assert_eq!(answer.header.status, Status::NotFound);

    // Requests complete out of order: a parked NEXT does not hold up a GET behind it.
    let parked = vm.submit(&Call::new(Command::Next { timeout_ms: 2000 }).response_meta(536));
    let quick = get(&mut vm, "tenants/alpha/empty", 0, 0, &[16]);
    assert_eq!(quick.header.status, Status::Ok);
    assert_eq!(vm.wait(parked).header.status, Status::Timeout);

    assert!(backend.log().contains("hello from the guest"));
    assert!(backend.log().contains("second line"));
}

#[test]
fn tenants_are_confined_and_hostile_chains_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path(), &[]);
    let mut control = backend.connect();

    // Control errors.
    let reply = control.send(r#"{"op":"attach","vm":"x","tenant":"gamma"}"#);
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("gamma"),
        "{reply}"
    );
    let reply = control.send("this is not json");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("malformed"),
        "{reply}"
    );
    let reply = control.send(r#"{"op":"attach","vm":"../evil","tenant":"alpha"}"#);
    assert_eq!(reply["ok"], false);

    let vm1_connection = control.attach("vm1", "alpha");
    let reply = control.send(r#"{"op":"attach","vm":"vm1","tenant":"alpha"}"#);
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("already attached"),
        "{reply}"
    );
    let vm2_connection = control.attach("vm2", "beta");
    let mut vm1 = GuestVm::connect(vm1_connection, WINDOW);
    let mut vm2 = GuestVm::connect(vm2_connection, WINDOW);

    assert_eq!(
        put(&mut vm1, "tenants/alpha/secret", &[b"alpha's"], false)
            .header
            .status,
        Status::Ok
    );
    assert_eq!(
        put(&mut vm2, "tenants/beta/secret", &[b"beta's"], false)
            .header
            .status,
        Status::Ok
    );
    // Neither can read, write, list or delete the other's objects.
    for (vm, other) in [(&mut vm1, "beta"), (&mut vm2, "alpha")] {
        let key = format!("tenants/{other}/secret");
        let answer = vm.call(
            &Call::new(Command::Get {
                offset: 0,
                max_len: 0,
            })
            .key(key.as_bytes())
            .response_meta(256)
            .buffers(&[64]),
        );
        assert_eq!(answer.header.status, Status::PermissionDenied);
        assert!(
            answer.meta_text().contains("outside prefix"),
            "{}",
            answer.meta_text()
        );
        assert_eq!(
            put(vm, &key, &[b"overwritten"], false).header.status,
            Status::PermissionDenied
        );
        assert_eq!(
            put(vm, &key, &[b"overwritten"], true).header.status,
            Status::PermissionDenied
        );
        let answer = vm.call(&Call::new(Command::Delete).key(key.as_bytes()));
        assert_eq!(answer.header.status, Status::PermissionDenied);
        let answer = vm.call(
            &Call::new(Command::Head)
                .key(key.as_bytes())
                .response_meta(276),
        );
        assert_eq!(answer.header.status, Status::PermissionDenied);
        let prefix = format!("tenants/{other}/");
        let answer = vm.call(
            &Call::new(Command::List { max_entries: 0 })
                .key(prefix.as_bytes())
                .response_meta(1024)
                .buffers(&[4096]),
        );
        assert_eq!(answer.header.status, Status::PermissionDenied);
        // Prefix tricks do not help.
        let answer = vm.call(
            &Call::new(Command::List { max_entries: 0 })
                .key(b"tenants/")
                .response_meta(1024)
                .buffers(&[4096]),
        );
        assert_eq!(answer.header.status, Status::PermissionDenied);
    }
    let objects = dir.path().join("objects");
    assert_eq!(
        std::fs::read(objects.join("tenants/alpha/secret")).unwrap(),
        b"alpha's"
    );
    assert_eq!(
        std::fs::read(objects.join("tenants/beta/secret")).unwrap(),
        b"beta's"
    );
    // A hint outside the tenant is refused.
    let reply = control.send(r#"{"op":"hint","vm":"vm1","key":"tenants/beta/secret"}"#);
    assert_eq!(reply["ok"], false);

    // Hostile chains from vm1.
    let end = vm1.window_end();
    let response = vm1.alloc(40 + 128);
    let header = RequestHeader {
        id: 42,
        command: Command::Get {
            offset: 0,
            max_len: 0,
        },
        key_len: 5,
        meta_len: 0,
        payload_len: 0,
    }
    .to_bytes()
    .unwrap();
    let header_at = vm1.put_bytes(&header);
    let key_at = vm1.put_bytes(b"tenants/alpha/secret"[..5].as_ref());
    let hostile: Vec<(&str, Vec<ChainDescriptor>, bool)> = vec![
        (
            "key outside the window",
            vec![
                ChainDescriptor {
                    addr: header_at.addr,
                    len: 48,
                    writable: false,
                },
                ChainDescriptor {
                    addr: end - 2,
                    len: 5,
                    writable: false,
                },
                ChainDescriptor {
                    addr: response,
                    len: 168,
                    writable: true,
                },
            ],
            true,
        ),
        (
            "key below the window (guest RAM)",
            vec![
                ChainDescriptor {
                    addr: header_at.addr,
                    len: 48,
                    writable: false,
                },
                ChainDescriptor {
                    addr: 0x1000,
                    len: 5,
                    writable: false,
                },
                ChainDescriptor {
                    addr: response,
                    len: 168,
                    writable: true,
                },
            ],
            true,
        ),
        (
            "buffer wrapping the address space",
            vec![
                ChainDescriptor {
                    addr: header_at.addr,
                    len: 48,
                    writable: false,
                },
                ChainDescriptor {
                    addr: key_at.addr,
                    len: 5,
                    writable: false,
                },
                ChainDescriptor {
                    addr: response,
                    len: 168,
                    writable: true,
                },
                ChainDescriptor {
                    addr: u64::MAX - 10,
                    len: 4096,
                    writable: true,
                },
            ],
            true,
        ),
        (
            "response head outside the window",
            vec![
                ChainDescriptor {
                    addr: header_at.addr,
                    len: 48,
                    writable: false,
                },
                ChainDescriptor {
                    addr: key_at.addr,
                    len: 5,
                    writable: false,
                },
                ChainDescriptor {
                    addr: end - 8,
                    len: 168,
                    writable: true,
                },
            ],
            false,
        ),
        (
            "no response head",
            vec![
                ChainDescriptor {
                    addr: header_at.addr,
                    len: 48,
                    writable: false,
                },
                ChainDescriptor {
                    addr: key_at.addr,
                    len: 5,
                    writable: false,
                },
            ],
            false,
        ),
    ];
    for (what, chain, answered) in hostile {
        vm1.mem
            .write_slice(&[0xEE; 40], vm_memory::GuestAddress(response))
            .unwrap();
        let head = vm1.submit_raw(&chain);
        let used = vm1.wait_raw(head);
        if answered {
            let raw = vm1.read(response, 40);
            let answer = nexus_ring::ResponseHeader::decode(&raw).unwrap();
            assert_eq!(answer.status, Status::InvalidRequest, "{what}");
            // Nothing is read before every descriptor is in the window: not even the id.
            assert_eq!(answer.id, 0, "{what}");
            assert_eq!(used, 40 + answer.meta_len, "{what}");
            let message =
                String::from_utf8(vm1.read(response + 40, answer.meta_len as usize)).unwrap();
            assert!(message.contains("refused"), "{what}: {message}");
        } else {
            assert_eq!(used, 0, "{what}");
            assert_eq!(
                vm1.read(response, 40),
                vec![0xEE; 40],
                "{what}: nothing written"
            );
        }
    }
    // A bad magic: answered with id 0; an unknown version: UNSUPPORTED_VERSION.
    let mut bad = header;
    bad[0] ^= 0xFF;
    let mut old = header;
    old[4] = 9;
    for (bytes, status, id) in [
        (bad, Status::InvalidRequest, 0),
        (old, Status::UnsupportedVersion, 42),
    ] {
        let at = vm1.put_bytes(&bytes);
        let head = vm1.submit_raw(&[
            ChainDescriptor {
                addr: at.addr,
                len: REQUEST_HEADER_SIZE as u32,
                writable: false,
            },
            ChainDescriptor {
                addr: key_at.addr,
                len: 5,
                writable: false,
            },
            ChainDescriptor {
                addr: response,
                len: 168,
                writable: true,
            },
        ]);
        vm1.wait_raw(head);
        let answer = nexus_ring::ResponseHeader::decode(&vm1.read(response, 40)).unwrap();
        assert_eq!((answer.status, answer.id), (status, id));
    }
    // A storm of garbage chains, while vm2 works on.
    let garbage = pattern(48, 9);
    let garbage_at = vm1.put_bytes(&garbage);
    let scratch = vm1.alloc(80 * 977 + 100);
    let mut heads = Vec::new();
    for i in 0..80u64 {
        heads.push(vm1.submit_raw(&[
            ChainDescriptor {
                addr: garbage_at.addr + (i % 3),
                len: 48,
                writable: false,
            },
            ChainDescriptor {
                addr: scratch + i * 977,
                len: 1 + i as u32,
                writable: i % 2 == 0,
            },
            ChainDescriptor {
                addr: response,
                len: 168,
                writable: true,
            },
        ]));
        if i % 10 == 0 {
            let answer = get(&mut vm2, "tenants/beta/secret", 0, 0, &[64]);
            assert_eq!(answer.payload, b"beta's");
        }
    }
    for head in heads {
        vm1.wait_raw(head);
    }
    // Both VMs are still served.
    assert_eq!(
        get(&mut vm1, "tenants/alpha/secret", 0, 0, &[64]).payload,
        b"alpha's"
    );
    assert_eq!(
        get(&mut vm2, "tenants/beta/secret", 0, 0, &[64]).payload,
        b"beta's"
    );

    // Detach: the VM's connection is closed; closing the control connection detaches the
    // rest.
    let reply = control.send(r#"{"op":"detach","vm":"vm1"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(vm1.frontend_closed(), "vm1's connection is closed");
    let reply = control.send(r#"{"op":"detach","vm":"vm1"}"#);
    assert_eq!(reply["ok"], false);
    drop(control);
    let start = std::time::Instant::now();
    while !vm2.frontend_closed() {
        assert!(start.elapsed() < WAIT, "vm2 was not detached");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prefetch_http_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // A one-shot HTTP server on loopback.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let http = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        let body_at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        while request.len() < body_at + 4 {
            let n = stream.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nX-Test: yes\r\nConnection: close\r\n\r\nhello world")
            .unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    let mut backend = start(
        dir.path(),
        &[
            "--http-allow".to_owned(),
            format!("http://127.0.0.1:{port}"),
        ],
    );
    let objects = dir.path().join("objects");
    let mut control = backend.connect();
    let connection = control.attach("vm1", "alpha");
    let mut vm = GuestVm::connect(connection, WINDOW);

    // Prefetch: hint, let it land, remove the file behind the backend's back: the GET is
    // served from the cache.
    std::fs::create_dir_all(objects.join("tenants/alpha/in")).unwrap();
    std::fs::write(objects.join("tenants/alpha/in/input"), b"prefetched input").unwrap();
    let reply = control.send(r#"{"op":"hint","vm":"vm1","key":"tenants/alpha/in/input"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(objects.join("tenants/alpha/in/input")).unwrap();
    let answer = get(&mut vm, "tenants/alpha/in/input", 0, 0, &[64]);
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(answer.payload, b"prefetched input");
    // Read to its end, the cached copy is dropped.
    let answer = get(&mut vm, "tenants/alpha/in/input", 0, 0, &[64]);
    assert_eq!(answer.header.status, Status::NotFound);
    // A wrong hint costs nothing but the fetch.
    let reply = control.send(r#"{"op":"hint","vm":"vm1","key":"tenants/alpha/nothing"}"#);
    assert_eq!(reply["ok"], true);
    let reply = control.send(r#"{"op":"hint","vm":"nobody","key":"tenants/alpha/x"}"#);
    assert_eq!(reply["ok"], false);

    // HTTP: a host off the list, then the allowed one.
    let answer = vm.call(
        &Call::new(Command::Http {
            method: HttpMethod::Get,
            timeout_ms: 0,
        })
        .key(b"http://example.com/")
        .response_meta(256),
    );
    assert_eq!(answer.header.status, Status::PermissionDenied);
    let url = format!("http://127.0.0.1:{port}/upload?x=1");
    let headers = HeaderList::encode_to_vec(&[nexus_ring::records::Header {
        name: "X-Guest",
        value: b"1",
    }])
    .unwrap();
    let answer = vm.call(
        &Call::new(Command::Http {
            method: HttpMethod::Post,
            timeout_ms: 10_000,
        })
        .key(url.as_bytes())
        .meta(&headers)
        .payload(&[b"da", b"ta"])
        .response_meta(1024)
        .buffers(&[5, 100]),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.header.detail, 201);
    assert_eq!(answer.payload, b"hello world");
    assert_eq!(answer.header.total, 11);
    let response_headers = HeaderList::decode(&answer.meta).unwrap();
    assert!(
        response_headers
            .iter()
            .any(|h| h.name == "x-test" && h.value == b"yes")
    );
    let request = http.join().unwrap();
    assert!(
        request.starts_with("POST /upload?x=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.to_ascii_lowercase().contains("x-guest: 1"),
        "{request}"
    );
    assert!(request.ends_with("data"), "{request}");

    // SIGTERM: the backend finishes write-behind uploads, removes its sockets, exits 0.
    assert_eq!(
        put(&mut vm, "tenants/alpha/late", &[b"durable"], true)
            .header
            .status,
        Status::Ok
    );
    let status = backend.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        std::fs::read(objects.join("tenants/alpha/late")).unwrap(),
        b"durable"
    );
    assert!(!backend.control.exists());
    assert!(vm.frontend_closed());
}

#[test]
fn attaching_and_detaching_vms_leaks_no_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path(), &[]);
    let mut control = backend.connect();
    let cycle = |control: &mut common::Control, n: usize| {
        let vm = format!("cycle{n}");
        let connection = control.attach(&vm, "alpha");
        let mut guest = GuestVm::connect(connection, WINDOW);
        let answer = guest.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
        assert_eq!(answer.header.status, nexus_ring::Status::Ok);
        drop(guest);
        let reply = control.send(&format!(r#"{{"op":"detach","vm":"{vm}"}}"#));
        assert_eq!(reply["ok"], true, "{reply}");
    };
    // The first cycle may allocate what later ones reuse (runtime threads, pools).
    cycle(&mut control, 0);
    let before = backend.open_descriptors();
    for n in 1..=40 {
        cycle(&mut control, n);
    }
    let after = backend.open_descriptors();
    // Each cycle used a dozen descriptors (sockets, eventfds, the window's memfd, an epoll):
    // a leak of even one per cycle shows as 40.
    assert!(
        after <= before + 4,
        "{before} descriptors before 40 attach/detach cycles, {after} after"
    );
}

#[test]
fn a_window_at_an_offset_of_a_larger_memfd_is_served_and_one_outside_it_refused() {
    use std::os::unix::fs::FileExt;

    use vhost::VhostBackend;
    use vhost::vhost_user::message::VhostUserHeaderFlag;
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path(), &[]);
    let objects = dir.path().join("objects");
    let mut control = backend.connect();
    // A slab of three windows; the VM's is the middle one. The others are marked, so a
    // window mapped at the wrong offset, or a write outside it, shows.
    const SLAB_WINDOW: u64 = 1 << 20;
    let slab = common::memfd(3 * SLAB_WINDOW);
    let mark = vec![0x5A; SLAB_WINDOW as usize];
    slab.write_all_at(&mark, 0).unwrap();
    slab.write_all_at(&mark, 2 * SLAB_WINDOW).unwrap();
    let connection = control.attach("slab", "alpha");
    let mut vm = GuestVm::connect_window(
        connection,
        slab.try_clone().unwrap(),
        SLAB_WINDOW,
        SLAB_WINDOW,
    );

    // PUT from the window, GET back into it.
    let data = pattern(300_000, 7);
    let answer = put(
        &mut vm,
        "tenants/alpha/slab.bin",
        &[&data[..1000], &data[1000..]],
        false,
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(
        std::fs::read(objects.join("tenants/alpha/slab.bin")).unwrap(),
        data
    );
    let answer = get(&mut vm, "tenants/alpha/slab.bin", 0, 0, &[200_000, 200_000]);
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(answer.payload, data);
    // The answer went into the window at its offset in the slab, nowhere else.
    let mut around = vec![0u8; SLAB_WINDOW as usize];
    slab.read_exact_at(&mut around, 0).unwrap();
    assert!(around == mark, "the slab before the window was written");
    slab.read_exact_at(&mut around, 2 * SLAB_WINDOW).unwrap();
    assert!(around == mark, "the slab after the window was written");

    // A window that does not fit in its file is refused, and the log says why.
    let refused = |control: &mut common::Control, vm: &str, file_size: u64, offset: u64| {
        let frontend = common::handshake(control.attach(vm, "alpha"));
        // Every request asks for an ack: a refusal fails the call.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(common::WINDOW_BASE),
            SLAB_WINDOW as usize,
            Some(FileOffset::new(common::memfd(file_size), 0)),
        )])
        .unwrap();
        let region = mem.find_region(GuestAddress(common::WINDOW_BASE)).unwrap();
        let mut info = vhost::VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        info.mmap_offset = offset;
        frontend
            .set_mem_table(&[info])
            .expect_err("a window outside its file was accepted")
    };
    // Past the end of the file; overlapping its end; not on a page boundary.
    refused(&mut control, "past", SLAB_WINDOW, 2 * SLAB_WINDOW);
    refused(&mut control, "across", 2 * SLAB_WINDOW, SLAB_WINDOW + 4096);
    refused(&mut control, "unaligned", 2 * SLAB_WINDOW, 512);
    // The ack goes out before the refusal is logged: wait for the lines.
    let log = |needle: &str, lines: usize| {
        let start = std::time::Instant::now();
        loop {
            let found = log_lines_with(&backend, needle);
            if found.len() >= lines || start.elapsed() > WAIT {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let fit = log("does not fit in its file", 2);
    assert_eq!(fit.len(), 2, "{}", backend.log());
    assert!(
        fit.iter().any(|line| line.contains("vm past")
            && line.contains(&format!(
                "{SLAB_WINDOW:#x} bytes at offset {:#x}",
                2 * SLAB_WINDOW
            ))
            && line.contains(&format!("file of {SLAB_WINDOW:#x} bytes"))),
        "{fit:?}"
    );
    assert!(
        log("not a multiple of the page size", 1)
            .iter()
            .any(|line| line.contains("vm unaligned")),
        "{}",
        backend.log()
    );
    // The VM on the slab is still served.
    let answer = get(&mut vm, "tenants/alpha/slab.bin", 10, 10, &[64]);
    assert_eq!(answer.payload, &data[10..20]);
}

#[test]
fn a_reset_drops_what_earlier_invocations_left_and_keeps_the_vm_attached() {
    use nexus_ring::Outcome;
    use nexus_ring::records::InvocationContext;

    let dir = tempfile::tempdir().unwrap();
    let backend = start(dir.path(), &[]);
    let objects = dir.path().join("objects");
    let mut control = backend.connect();
    let key = "tenants/alpha/in/input";
    std::fs::create_dir_all(objects.join("tenants/alpha/in")).unwrap();
    std::fs::write(objects.join(key), b"old input, hinted").unwrap();
    let mut kept = GuestVm::connect(control.attach("kept", "alpha"), WINDOW);
    let mut reset = GuestVm::connect(control.attach("reset", "alpha"), WINDOW);
    // Both VMs get the object prefetched. A GET waits for a running prefetch, and one that
    // stops short of the end keeps the cached copy: after it, the copy is in each cache.
    for (name, vm) in [("kept", &mut kept), ("reset", &mut reset)] {
        let reply = control.send(&format!(r#"{{"op":"hint","vm":"{name}","key":"{key}"}}"#));
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(get(vm, key, 0, 3, &[64]).payload, b"old");
    }
    // The object changes behind the backend's back: a cached copy is now stale.
    std::fs::write(objects.join(key), b"new input, stored").unwrap();

    // An invocation queued for the VM that is not taken before the reset.
    let invoke = |vm: &'static str, input: &'static str| {
        let path = backend.control.clone();
        std::thread::spawn(move || {
            // `invoke` answers late: on a connection of its own.
            common::Control::connect(&path).send(&format!(
                r#"{{"op":"invoke","vm":"{vm}","input":{{"inline":"{input}"}}}}"#
            ))
        })
    };
    let left_behind = invoke("reset", "left behind");
    let start = std::time::Instant::now();
    while control.send(r#"{"op":"stats"}"#)["stats"]["queued_invocations"] != 1 {
        assert!(start.elapsed() < WAIT, "the invocation was never queued");
        std::thread::sleep(Duration::from_millis(10));
    }

    let reply = control.send(r#"{"op":"reset","vm":"reset"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let failed = left_behind.join().unwrap();
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("was reset"),
        "{failed}"
    );
    assert_eq!(
        control.send(r#"{"op":"stats"}"#)["stats"]["queued_invocations"],
        0
    );

    // Still attached and served; its next invocation is the first queued after the reset.
    let fresh = invoke("reset", "fresh");
    let answer = reset.call(
        &Call::new(Command::Next { timeout_ms: 10_000 })
            .response_meta(536)
            .buffers(&[4096]),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"fresh");
    let number = InvocationContext::decode(&answer.meta).unwrap().invocation;
    let answer = reset.call(
        &Call::new(Command::Complete {
            invocation: number,
            outcome: Outcome::Success,
            stored: false,
        })
        .payload(&[b"done"])
        .response_meta(256),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    let done = fresh.join().unwrap();
    assert_eq!(
        (done["ok"].clone(), done["output"].clone()),
        (true.into(), "done".into()),
        "{done}"
    );
    // Its prefetched copy is gone: the GET reads the store.
    assert_eq!(get(&mut reset, key, 0, 3, &[64]).payload, b"new");
    // The VM that was not reset is still served its cached copy: what the reset dropped.
    assert_eq!(get(&mut kept, key, 0, 3, &[64]).payload, b"old");

    // Only an attached VM can be reset.
    let reply = control.send(r#"{"op":"reset","vm":"nobody"}"#);
    assert_eq!(
        (reply["ok"].clone(), reply["code"].clone()),
        (false.into(), "unknown_vm".into()),
        "{reply}"
    );
}

#[test]
fn a_detached_vm_can_be_attached_again_and_shutdown_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = start(dir.path(), &[]);
    let mut control = backend.connect();
    // Attached, never connected as a frontend: detach does not wait for one.
    let _unused = control.attach("orphan", "alpha");
    let reply = control.send(r#"{"op":"detach","vm":"orphan"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let connection = control.attach("orphan", "alpha");
    let mut vm = GuestVm::connect(connection, WINDOW);
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok);
    drop(control);
    assert!(backend.terminate().success(), "{}", backend.log());
}

/// Lines of the backend's log that contain `needle`.
fn log_lines_with(backend: &BackendProcess, needle: &str) -> Vec<String> {
    backend
        .log()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_config_file_sets_tenants_and_limits_and_a_log_flood_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backend.toml");
    std::fs::write(
        &config,
        format!(
            r#"io_threads = 1
[store]
url = "file://{}"
[limits]
list_scan_budget = 4
[tenants.alpha]
prefix = "tenants/alpha"
[tenants.alpha.limits]
log_records_per_second = 1
log_burst = 5
[tenants.beta]
prefix = "tenants/beta"
"#,
            dir.path().join("objects").display()
        ),
    )
    .unwrap();
    let backend = BackendProcess::start(
        dir.path(),
        &["--config".to_owned(), config.display().to_string()],
        &[],
    );
    let mut control = backend.connect();
    let mut vm = GuestVm::connect(control.attach("flood", "alpha"), WINDOW);

    // A flood of LOGs, each trying to forge a second log line and to colour the terminal.
    let lines_before = backend.log().lines().count();
    let started = std::time::Instant::now();
    let text = b"flood record\nINFO forged line\x1b[31m\n";
    let (mut ok, mut throttled) = (0u64, 0u64);
    for _ in 0..300 {
        let answer = vm.call(
            &Call::new(Command::Log {
                level: LogLevel::Info,
            })
            .payload(&[text])
            .response_meta(256),
        );
        match answer.header.status {
            Status::Ok => ok += 1,
            Status::Throttled => {
                assert!(answer.meta_text().contains("1 records a second"));
                throttled += 1;
            }
            other => panic!("LOG answered {other}"),
        }
    }
    // A burst of five, then one a second.
    let allowed = 5 + started.elapsed().as_secs() + 1;
    assert!(ok >= 5 && ok <= allowed, "{ok} LOGs got through");
    assert_eq!(ok + throttled, 300);

    // One escaped record per LOG that got through; nothing forged.
    let records = log_lines_with(&backend, "flood record");
    assert_eq!(records.len() as u64, ok, "{records:?}");
    assert!(
        records[0].contains(r"flood record\nINFO forged line\u{1b}[31m"),
        "{}",
        records[0]
    );
    assert!(!backend.log().contains('\x1b'));
    assert!(
        !backend
            .log()
            .lines()
            .any(|line| line.starts_with("INFO forged"))
    );
    // 300 LOGs cost the log a few lines: the records and a summary of the drops (at most
    // one per 10 s).
    let grown = (backend.log().lines().count() - lines_before) as u64;
    let summaries = log_lines_with(&backend, "LOG records dropped by the rate limit");
    let most = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=most).contains(&(summaries.len() as u64)),
        "{summaries:?}"
    );
    assert!(
        grown <= ok + summaries.len() as u64 + 1,
        "the log grew by {grown} lines"
    );

    // Detaching reports the rest: every drop is counted once.
    let reply = control.send(r#"{"op":"detach","vm":"flood"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let dropped = |line: &String| -> u64 {
        let (_, rest) = line.split_once("vm flood: ").unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let summaries = log_lines_with(&backend, "LOG records dropped by the rate limit");
    assert_eq!(
        summaries.iter().map(dropped).sum::<u64>(),
        throttled,
        "{summaries:?}"
    );
    drop(vm);

    // Another tenant without limits of its own gets the defaults (a burst of 200).
    let mut other = GuestVm::connect(control.attach("quiet", "beta"), WINDOW);
    for _ in 0..20 {
        let answer = other.call(
            &Call::new(Command::Log {
                level: LogLevel::Info,
            })
            .payload(&[b"beta record"]),
        );
        assert_eq!(answer.header.status, Status::Ok);
    }
    assert_eq!(log_lines_with(&backend, "beta record").len(), 20);

    // LIST pages stay in order under the file's scan budget of 4 entries a page.
    let mut expected = Vec::new();
    for i in 0..12 {
        for name in ["a", "b/c", "d"] {
            let key = format!("tenants/beta/list/{i:02}/{name}");
            let answer = put(&mut other, &key, &[b"x"], false);
            assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
            expected.push(key);
        }
    }
    expected.sort();
    let mut keys = Vec::new();
    let mut token: Vec<u8> = Vec::new();
    let mut pages = 0;
    loop {
        let answer = other.call(
            &Call::new(Command::List { max_entries: 0 })
                .key(b"tenants/beta/list/")
                .meta(&token)
                .response_meta(1024)
                .buffers(&[64 << 10]),
        );
        assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
        let list = EntryList::decode(&answer.payload).unwrap();
        keys.extend(list.iter().map(|e| e.key.to_owned()));
        pages += 1;
        if answer.meta.is_empty() {
            break;
        }
        assert_ne!(token, answer.meta, "no progress");
        token = answer.meta;
    }
    assert_eq!(keys, expected);
    assert!(
        pages > 3,
        "a budget of 4 entries cannot list 36 keys in {pages} pages"
    );
}

#[test]
fn overlapping_tenants_stop_the_backend_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("backend.log");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-backend"))
        .arg("--listen")
        .arg(dir.path().join("control.sock"))
        .arg("--store")
        .arg(format!("file://{}", dir.path().join("objects").display()))
        .args(["--tenant", "alpha=tenants", "--tenant", "beta=tenants/beta"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("`alpha` (prefix `tenants/`)")
            && log.contains("`beta` (prefix `tenants/beta/`)"),
        "{log}"
    );
}
