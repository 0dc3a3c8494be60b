// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend binary against a real S3-compatible server on loopback (s3s-fs, started by
//! the test): objects from empty to several MiB (multipart), checked in the files s3s-fs
//! writes under its root.

mod common;

use std::time::Duration;

use common::{BackendProcess, Call, GuestVm, pattern};
use nexus_ring::records::{EntryList, ObjectEntry};
use nexus_ring::{Command, Status};

const ACCESS_KEY: &str = "nexus-test-access";
const SECRET_KEY: &str = "nexus-test-secret-key";
const BUCKET: &str = "nexus-data";
const WINDOW: u64 = 40 << 20;

fn put(vm: &mut GuestVm, key: &str, data: &[u8], write_behind: bool) -> common::Answer {
    // Split the payload over up to three segments.
    let a = data.len() / 3;
    let b = 2 * data.len() / 3;
    let parts: Vec<&[u8]> = [&data[..a], &data[a..b], &data[b..]]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    vm.call(
        &Call::new(Command::Put { write_behind })
            .key(key.as_bytes())
            .payload(&parts)
            .response_meta(1024),
    )
}

fn get(vm: &mut GuestVm, key: &str, offset: u64, max_len: u64, buffers: &[u32]) -> common::Answer {
    vm.call(
        &Call::new(Command::Get { offset, max_len })
            .key(key.as_bytes())
            .response_meta(512)
            .buffers(buffers),
    )
}

#[test]
fn objects_through_an_s3_compatible_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    let bucket_dir = root.join(BUCKET);
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let (_s3, port) = common::start_s3(&root, ACCESS_KEY, SECRET_KEY);

    let backend = BackendProcess::start(
        dir.path(),
        &[
            "--store".into(),
            format!("s3://{BUCKET}"),
            "--s3-endpoint".into(),
            format!("http://127.0.0.1:{port}"),
            "--tenant".into(),
            format!("alpha={BUCKET}/alpha"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ],
    );
    let mut control = backend.connect();
    let connection = control.attach("vm1", "alpha");
    let mut vm = GuestVm::connect(connection, WINDOW);

    // PUT objects from empty to 12 MiB (the largest in 8 MiB multipart parts); s3s-fs
    // stores each as a file under its root.
    let sizes = [0usize, 1, 4099, (3 << 20) + 5, (12 << 20) + 7];
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(size, i as u8);
        let key = format!("alpha/obj-{i}");
        let answer = put(&mut vm, &key, &data, false);
        assert_eq!(
            answer.header.status,
            Status::Ok,
            "{key}: {}",
            answer.meta_text()
        );
        let stored = std::fs::read(bucket_dir.join(&key)).unwrap();
        assert!(stored == data, "{key}: stored bytes differ");
    }

    // GET them back whole, into two buffers, and check sizes.
    for (i, &size) in sizes.iter().enumerate() {
        let key = format!("alpha/obj-{i}");
        let half = size as u32 / 2 + 1;
        let answer = get(&mut vm, &key, 0, 0, &[half, half]);
        assert_eq!(
            answer.header.status,
            Status::Ok,
            "{key}: {}",
            answer.meta_text()
        );
        assert_eq!(answer.header.total, size as u64);
        assert!(
            answer.payload == pattern(size, i as u8),
            "{key}: bytes differ"
        );
    }
    // Ranges: limited by max_len, by the buffers, and past the end.
    let big = pattern((12 << 20) + 7, 4);
    let answer = get(&mut vm, "alpha/obj-4", 10 << 20, 1000, &[1 << 20]);
    assert_eq!(answer.payload, &big[10 << 20..(10 << 20) + 1000]);
    let answer = get(&mut vm, "alpha/obj-4", 5, 0, &[100, 28]);
    assert_eq!(answer.payload, &big[5..133]);
    assert_eq!(answer.header.total, big.len() as u64);
    let answer = get(&mut vm, "alpha/obj-2", 4099, 0, &[64]);
    assert_eq!(
        (answer.header.status, answer.header.payload_len),
        (Status::Ok, 0)
    );
    assert_eq!(answer.header.total, 4099);
    let answer = get(&mut vm, "alpha/obj-2", 1 << 30, 0, &[64]);
    assert_eq!(
        (answer.header.status, answer.header.total),
        (Status::Ok, 4099)
    );
    let answer = get(&mut vm, "alpha/missing", 0, 0, &[64]);
    assert_eq!(
        answer.header.status,
        Status::NotFound,
        "{}",
        answer.meta_text()
    );
    let answer = get(&mut vm, "beta/obj", 0, 0, &[64]);
    assert_eq!(answer.header.status, Status::PermissionDenied);

    // HEAD.
    let answer = vm.call(
        &Call::new(Command::Head)
            .key(b"alpha/obj-3")
            .response_meta(276),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    let entry = ObjectEntry::decode(&answer.meta).unwrap();
    assert_eq!(entry.size, (3 << 20) + 5);
    assert!(!entry.etag.is_empty());
    assert!(entry.last_modified_ms > 0);

    // LIST two at a time.
    let mut keys = Vec::new();
    let mut token = Vec::new();
    loop {
        let answer = vm.call(
            &Call::new(Command::List { max_entries: 2 })
                .key(b"alpha/obj-")
                .meta(&token)
                .response_meta(1024)
                .buffers(&[4096]),
        );
        assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
        keys.extend(
            EntryList::decode(&answer.payload)
                .unwrap()
                .iter()
                .map(|e| (e.key.to_owned(), e.size)),
        );
        if answer.meta.is_empty() {
            break;
        }
        token = answer.meta;
    }
    let expected: Vec<(String, u64)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| (format!("alpha/obj-{i}"), s as u64))
        .collect();
    assert_eq!(keys, expected);

    // DELETE.
    let answer = vm.call(
        &Call::new(Command::Delete)
            .key(b"alpha/obj-1")
            .response_meta(256),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert!(!bucket_dir.join("alpha/obj-1").exists());
    let answer = vm.call(
        &Call::new(Command::Delete)
            .key(b"alpha/obj-1")
            .response_meta(256),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());

    // Write-behind, multipart too; durable after FLUSH.
    let late = pattern((9 << 20) + 1, 42);
    assert_eq!(
        put(&mut vm, "alpha/late", &late, true).header.status,
        Status::Ok
    );
    assert_eq!(
        put(&mut vm, "alpha/late-small", b"small", true)
            .header
            .status,
        Status::Ok
    );
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert!(std::fs::read(bucket_dir.join("alpha/late")).unwrap() == late);
    assert_eq!(
        std::fs::read(bucket_dir.join("alpha/late-small")).unwrap(),
        b"small"
    );

    // Prefetch through S3: the cached copy serves the GET after the object is gone.
    let reply = control.send(r#"{"op":"hint","vm":"vm1","key":"alpha/obj-2"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(bucket_dir.join("alpha/obj-2")).unwrap();
    let answer = get(&mut vm, "alpha/obj-2", 0, 0, &[8192]);
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, pattern(4099, 2));

    // The credentials never show in the backend's output.
    assert!(!backend.log().contains(SECRET_KEY));
}
