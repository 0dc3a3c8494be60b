// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Structure-aware: the input is a scenario (`nexus_backend::fuzzing::scenario`: the VM's
//! limits, then fixed-size steps — GET, PUT with or without write-behind, HEAD, DELETE, LIST
//! with tokens, FLUSH, LOG, HTTP, INVOKE, NEXT, COMPLETE, invocations queued and hints sent
//! by the node, the clock moving). Each request is laid out in a split virtqueue in a plain
//! memory window and served by the backend's own request queue, dispatch and ops, against an
//! in-memory object store on a paused clock; `nexus_backend::fuzzing::run` panics when an
//! answer fails the guest's check or disagrees with the model of the store, when a bound is
//! exceeded, an acknowledged upload is missing after FLUSH, or a request is never answered.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexus_backend::fuzzing::{self, Scenario};

#[derive(Debug)]
struct Input(Scenario);

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let rest = u.bytes(u.len())?;
        Ok(Input(Scenario::from_bytes(rest)))
    }
}

fuzz_target!(|input: Input| {
    fuzzing::run(&input.0);
});
