// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Raw message decoding: the first byte selects a decoder (request or response header,
//! invocation context, object entry, entry list, header list, flat chain image), the rest is
//! its input. Anything accepted must re-encode to the same bytes
//! (`nexus_ring::mock::fuzz_raw`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_ring::mock::fuzz_raw(data));
