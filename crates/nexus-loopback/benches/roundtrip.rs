// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The loopback transport's round trip: a 4 KiB GET from the real backend over a file store
//! (the object is in the page cache after the first), through the nexus-guest client, the
//! in-process nexus-io device and vhost-user. `get` allocates the window buffer each time;
//! `get_into` reuses one.
//!
//! `cargo bench -p nexus-loopback --bench roundtrip`; the median is in
//! `target/criterion/loopback/get_4k/new/estimates.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn roundtrip(c: &mut Criterion) {
    let backend = common::Backend::start(&["bench=bench"]);
    let mut nexus = backend.connect("bench-1", "bench");
    let object = common::pattern(4096, 3);
    nexus.put("bench/object-4k", &object).unwrap();
    assert_eq!(&nexus.get("bench/object-4k").unwrap()[..], &object[..]);

    let mut group = c.benchmark_group("loopback");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("get_4k", |b| {
        b.iter(|| {
            let buf = nexus.get("bench/object-4k").unwrap();
            assert_eq!(buf.len(), 4096);
            buf
        })
    });
    let mut buf = nexus.alloc(4096).unwrap();
    group.bench_function("get_into_4k", |b| {
        b.iter(|| {
            let n = nexus.get_into("bench/object-4k", 0, &mut buf).unwrap();
            assert_eq!(n, 4096);
        })
    });
    drop(buf);
    // Polling the used ring up to about 100 µs before sleeping in WAIT.
    let spins = nexus.device().poll_spins();
    nexus.device_mut().set_poll_spins(4096);
    group.bench_function("get_4k_spin", |b| {
        b.iter(|| {
            let buf = nexus.get("bench/object-4k").unwrap();
            assert_eq!(buf.len(), 4096);
            buf
        })
    });
    nexus.device_mut().set_poll_spins(spins);
    group.bench_function("head", |b| {
        b.iter(|| nexus.head("bench/object-4k").unwrap().size)
    });
    group.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
