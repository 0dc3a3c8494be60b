// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Structure-aware: the input is a mock virtio device's set-up (queues, offered features,
//! refusals) and a sequence of register accesses (offset, width 1/2/4/8, read or write,
//! value), saves and restores, and changes of the mock's refusals (the byte format is in
//! `common/mmio_transport.rs`). Each step goes through `nexus_kvm::virtio_mmio::MmioTransport`
//! as a guest access would; after each one the oracles check that the status register only
//! moves as the virtio specification allows, that the device is activated only with valid,
//! ready queues that passed `QueueConfig::check`, and that `state()`/`from_state()`
//! round-trips.

#![no_main]

#[path = "../common/mmio_transport.rs"]
#[allow(dead_code)] // `Input::to_bytes` and `Outcome`'s fields are for the seed generator
mod harness;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct TransportInput(harness::Input);

impl<'a> Arbitrary<'a> for TransportInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let rest = u.bytes(u.len())?;
        harness::Input::from_bytes(rest)
            .map(TransportInput)
            .ok_or(arbitrary::Error::IncorrectFormat)
    }
}

fuzz_target!(|input: TransportInput| {
    harness::run(&input.0);
});
