// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writes the seed corpus of the `mmio_transport` target: driver sessions a real guest would
//! run (full initialisation, notifications, configuration space, reset) and the refusals
//! around them (bad queues, refused activation, features the device did not offer, `FAILED`,
//! narrow accesses), each run through the harness first so that every seed passes the oracles.
//!
//! ```sh
//! cd fuzz && cargo run --example gen_mmio_corpus -- corpus/mmio_transport
//! ```

#[path = "../common/mmio_transport.rs"]
#[allow(dead_code)]
mod harness;

use harness::{Input, Kind, Setup, Step};
use nexus_kvm::virtio_mmio::{VIRTIO_F_VERSION_1, regs, status};

fn step(kind: Kind, width: usize, offset: u32, value: u64) -> Step {
    Step {
        kind,
        width,
        offset: offset.into(),
        value,
    }
}

fn w(offset: u32, value: u32) -> Step {
    step(Kind::Write, 4, offset, u64::from(value))
}

fn r(offset: u32) -> Step {
    step(Kind::Read, 4, offset, 0)
}

fn save_restore() -> Step {
    step(Kind::SaveRestore, 4, 0, 0)
}

const S1: u32 = status::ACKNOWLEDGE;
const S2: u32 = S1 | status::DRIVER;
const S3: u32 = S2 | status::FEATURES_OK;
const S4: u32 = S3 | status::DRIVER_OK;

/// Identification, then ACKNOWLEDGE, DRIVER and the feature words (`low` and VERSION_1).
fn negotiate(low: u32) -> Vec<Step> {
    vec![
        r(regs::MAGIC_VALUE),
        r(regs::VERSION),
        r(regs::DEVICE_ID),
        w(regs::STATUS, 0),
        w(regs::STATUS, S1),
        w(regs::STATUS, S2),
        w(regs::DEVICE_FEATURES_SEL, 0),
        r(regs::DEVICE_FEATURES),
        w(regs::DEVICE_FEATURES_SEL, 1),
        r(regs::DEVICE_FEATURES),
        w(regs::DRIVER_FEATURES_SEL, 0),
        w(regs::DRIVER_FEATURES, low),
        w(regs::DRIVER_FEATURES_SEL, 1),
        w(regs::DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32),
        w(regs::STATUS, S3),
        r(regs::STATUS),
    ]
}

/// Queue `sel` of `size` entries with its rings at `base`, `base + 0x1000`, `base + 0x2000`,
/// then `QueueReady`.
fn queue(sel: u32, size: u32, base: u64) -> Vec<Step> {
    let (avail, used) = (base + 0x1000, base + 0x2000);
    vec![
        w(regs::QUEUE_SEL, sel),
        r(regs::QUEUE_NUM_MAX),
        w(regs::QUEUE_NUM, size),
        w(regs::QUEUE_DESC_LOW, base as u32),
        w(regs::QUEUE_DESC_HIGH, (base >> 32) as u32),
        w(regs::QUEUE_DRIVER_LOW, avail as u32),
        w(regs::QUEUE_DRIVER_HIGH, (avail >> 32) as u32),
        w(regs::QUEUE_DEVICE_LOW, used as u32),
        w(regs::QUEUE_DEVICE_HIGH, (used >> 32) as u32),
        w(regs::QUEUE_READY, 1),
        r(regs::QUEUE_READY),
    ]
}

fn setup(queues: usize, flags: u8) -> Setup {
    Setup {
        maxima: [256, 16, 1024],
        queues,
        flags,
        features_low: 0b1011,
    }
}

/// What each seed must have gone through: status bits seen, successful and refused
/// activations.
fn expected(name: &str) -> (u32, u64, u64) {
    let needs_reset = status::DEVICE_NEEDS_RESET;
    match name {
        "seed_live_device" => (S4, 1, 0),
        "seed_activation_refused" => (S4 | needs_reset, 0, 1),
        "seed_bad_queues" => (S3 | needs_reset | status::FAILED, 0, 0),
        // Refused, then corrected and activated.
        "seed_features_refused" => (S4, 1, 0),
        "seed_no_version_1" => (S2, 0, 0),
        "seed_driver_mistakes" => (S4 | needs_reset | status::FAILED, 0, 1),
        other => panic!("no expectation for {other}"),
    }
}

fn seeds() -> Vec<(&'static str, Input)> {
    let live = |flags| {
        let mut steps = negotiate(0b11);
        steps.extend(queue(0, 128, 0xc000_0000));
        steps.extend(queue(1, 16, 0x1_0000_0000));
        steps.push(w(regs::STATUS, S4));
        steps.push(w(regs::QUEUE_NOTIFY, 0));
        steps.push(r(regs::INTERRUPT_STATUS));
        steps.push(w(regs::INTERRUPT_ACK, 1));
        steps.push(r(regs::CONFIG_GENERATION));
        steps.push(step(Kind::Read, 2, regs::CONFIG + 2, 0));
        steps.push(step(Kind::Write, 1, regs::CONFIG + 5, 0x7f));
        steps.push(step(Kind::Read, 8, regs::CONFIG, 0));
        steps.push(save_restore());
        steps.push(w(regs::QUEUE_NOTIFY, 1));
        steps.push(w(regs::STATUS, 0));
        Input {
            setup: setup(2, flags),
            steps,
        }
    };
    let mut out = vec![
        ("seed_live_device", live(0)),
        ("seed_activation_refused", live(1)),
    ];

    // Misaligned rings, a size above the maximum, a refused queue.
    let mut steps = negotiate(0);
    steps.extend(queue(0, 64, 0xc000_0008));
    steps.push(w(regs::STATUS, S4));
    steps.push(w(
        regs::STATUS,
        S3 | status::DEVICE_NEEDS_RESET | status::FAILED,
    ));
    steps.push(save_restore());
    steps.push(w(regs::STATUS, 0));
    steps.extend(negotiate(0));
    steps.extend(queue(2, 2048, 0xc000_0000));
    steps.push(save_restore());
    steps.extend(queue(1, 8, 0xc000_0000));
    out.push((
        "seed_bad_queues",
        Input {
            setup: setup(3, 1 << 2),
            steps,
        },
    ));

    // Features the device did not offer (then only those it did), and no VERSION_1 at all.
    let mut steps = negotiate(1 << 2);
    steps.push(w(regs::DRIVER_FEATURES_SEL, 0));
    steps.push(w(regs::DRIVER_FEATURES, 0b11));
    steps.push(w(regs::STATUS, S3));
    steps.push(w(regs::STATUS, S4));
    out.push((
        "seed_features_refused",
        Input {
            setup: Setup {
                features_low: 0b11,
                ..setup(1, 0)
            },
            steps: steps.clone(),
        },
    ));
    out.push((
        "seed_no_version_1",
        Input {
            setup: setup(1, 0x10),
            steps,
        },
    ));

    // Out of order, the driver giving up, queues touched outside set-up, narrow accesses.
    let mut steps = vec![
        w(regs::STATUS, S2),
        w(regs::STATUS, S1),
        w(regs::STATUS, S4),
        w(regs::QUEUE_NUM, 8),
        w(regs::QUEUE_READY, 1),
        step(Kind::Write, 2, regs::STATUS, 0),
        step(Kind::Write, 1, regs::STATUS, 0),
        step(Kind::Write, 8, regs::QUEUE_SEL, u64::MAX),
        step(Kind::Read, 1, regs::MAGIC_VALUE + 1, 0),
        step(Kind::Read, 8, regs::STATUS, 0),
        w(regs::QUEUE_SEL + 2, 1),
        w(regs::STATUS, S1 | status::FAILED),
        w(regs::STATUS, S4 | status::FAILED),
        r(regs::STATUS),
        w(regs::STATUS, 0),
    ];
    steps.extend(negotiate(0));
    steps.push(w(regs::QUEUE_SEL, 7));
    steps.push(w(regs::QUEUE_READY, 1));
    steps.push(r(regs::QUEUE_NUM_MAX));
    steps.push(step(Kind::Refusals, 4, 0, 1));
    steps.extend(queue(0, 1, 0xfff0));
    steps.push(w(regs::QUEUE_READY, 0));
    steps.push(w(regs::QUEUE_DESC_LOW, 0x10));
    steps.push(w(regs::QUEUE_READY, 1));
    steps.push(w(regs::STATUS, S4));
    out.push((
        "seed_driver_mistakes",
        Input {
            setup: setup(1, 0),
            steps,
        },
    ));
    out
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/mmio_transport".into());
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (name, input) in seeds() {
        let bytes = input.to_bytes();
        assert_eq!(Input::from_bytes(&bytes).as_ref(), Some(&input), "{name}");
        let outcome = harness::run(&input);
        let got = (
            outcome.status_seen,
            outcome.activations,
            outcome.activation_failures,
        );
        assert_eq!(got, expected(name), "{name}: {outcome:?}");
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, &bytes).expect("write a seed");
        println!("{} ({} steps)", path.display(), input.steps.len());
    }
}
