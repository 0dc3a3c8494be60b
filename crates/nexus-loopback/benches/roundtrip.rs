// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The loopback transport's round trip: a 4 KiB GET from the real backend over a file store
//! (the object is in the page cache after the first), through the nexus-guest client, the
//! in-process nexus-io device and vhost-user. `get` allocates the window buffer each time;
//! `get_into` reuses one; `get_4k_short_poll` polls the used ring only as long as a VM's
//! driver (512 polls) before sleeping in WAIT.
//!
//! The backend gives the bench's VM a whole core (`cpu_millis_per_second = 1000`); with the
//! default share a loop of back-to-back requests soon waits for the CPU limit.
//!
//! `cargo bench -p nexus-loopback --bench roundtrip`; the median is in
//! `target/criterion/loopback/get_4k/new/estimates.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn roundtrip(c: &mut Criterion) {
    // A whole core for the one VM: the default share (200 ms of backend CPU per second per
    // VM) would throttle a loop of back-to-back requests, and measure the limit instead.
    let backend = common::Backend::start_with(
        &["bench=bench"],
        Some("[limits]\ncpu_millis_per_second = 1000\n"),
    );
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
    // Polling the used ring only as long as a VM's driver does before sleeping in WAIT (the
    // loopback's default polls about 50 µs: `LOOPBACK_POLL_SPINS`).
    let spins = nexus.device().poll_spins();
    nexus
        .device_mut()
        .set_poll_spins(nexus_guest::device::DEFAULT_POLL_SPINS);
    group.bench_function("get_4k_short_poll", |b| {
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
