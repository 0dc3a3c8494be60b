// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writes the seed corpora of the fuzz targets from valid messages.
//!
//! ```text
//! cargo run -p nexus-ring --features test-utils --example gen_fuzz_corpus -- fuzz/corpus
//! ```
//!
//! `decode_chain` gets one chain image per sample request; `decode_raw` gets every record kind
//! plus the same chain images behind their selector byte; `ring_queue` gets one queue image
//! per sample queue (well-formed ones and one for every ring fault). Output is deterministic.

use std::path::PathBuf;
use std::{env, fs, io};

use nexus_ring::mock::{RawKind, sample_queues, sample_records, sample_requests};

fn main() -> io::Result<()> {
    let root = PathBuf::from(env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let chain_dir = root.join("decode_chain");
    let raw_dir = root.join("decode_raw");
    let queue_dir = root.join("ring_queue");
    fs::create_dir_all(&chain_dir)?;
    fs::create_dir_all(&raw_dir)?;
    fs::create_dir_all(&queue_dir)?;
    let mut written = 0;
    for (name, image) in sample_requests() {
        let bytes = image.to_bytes();
        fs::write(chain_dir.join(format!("seed_{name}")), &bytes)?;
        let mut raw = vec![RawKind::ChainImage as u8];
        raw.extend_from_slice(&bytes);
        fs::write(raw_dir.join(format!("seed_chain_{name}")), raw)?;
        written += 2;
    }
    for (name, bytes) in sample_records() {
        fs::write(raw_dir.join(format!("seed_{name}")), bytes)?;
        written += 1;
    }
    for (name, image) in sample_queues() {
        fs::write(queue_dir.join(format!("seed_{name}")), image.to_bytes())?;
        written += 1;
    }
    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}
