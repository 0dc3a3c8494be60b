// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Structure-aware: the input is a whole split virtqueue (the seedable
//! `nexus_ring::mock::QueueImage` format: queue size, chain limit, `next_avail`, available
//! index, how much of guest memory is mapped, the available ring's entries, the descriptor
//! table and the I/O window's bytes; every byte string is an image). The queue is laid out in
//! a small guest memory and drained with `nexus_ring::queue::pop_checked` until it is empty or
//! faults (`nexus_ring::mock::fuzz_queue`): no panic, at most `limit + 2` reads per pop, every
//! chain within the rules and equal to what virtio-queue's iterator yields, every fault true
//! of the image and reported again unchanged.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexus_ring::mock::{QueueImage, fuzz_queue};

#[derive(Debug)]
struct QueueInput(QueueImage);

impl<'a> Arbitrary<'a> for QueueInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let rest = u.bytes(u.len())?;
        Ok(QueueInput(QueueImage::from_bytes(rest)))
    }
}

fuzz_target!(|input: QueueInput| fuzz_queue(&input.0));
