// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Structure-aware: the input is a descriptor chain plus the window's bytes (the seedable
//! `nexus_ring::mock::ChainImage` format). The chain is built in a mock split virtqueue in
//! guest memory (`virtio_queue::mock::MockSplitQueue`) and decoded with
//! `Decoder::decode_chain`, exactly as the device does; accepted requests must satisfy every
//! invariant and agree with the flat decoder (`nexus_ring::mock::fuzz_chain`).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexus_ring::mock::{ChainImage, fuzz_chain};

#[derive(Debug)]
struct ChainInput(ChainImage);

impl<'a> Arbitrary<'a> for ChainInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let rest = u.bytes(u.len())?;
        ChainImage::from_bytes(rest)
            .map(ChainInput)
            .ok_or(arbitrary::Error::IncorrectFormat)
    }
}

fuzz_target!(|input: ChainInput| fuzz_chain(&input.0));
