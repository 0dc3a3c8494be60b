// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz seeds: every sample is valid, the committed corpus matches the generator
//! (`cargo run -p nexus-ring --example gen_fuzz_corpus -- fuzz/corpus`), and every fuzz oracle
//! passes on every seed.

use std::fs;
use std::path::{Path, PathBuf};

use nexus_ring::mock::{
    self, ChainImage, QueueImage, RawKind, sample_queues, sample_records, sample_requests,
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn samples_are_valid_requests() {
    for (name, image) in sample_requests() {
        let request = image.decode().unwrap();
        assert!(request.is_ok(), "{name}: {:?}", request.unwrap_err());
        mock::fuzz_chain(&image);
        let mut raw = vec![RawKind::ChainImage as u8];
        raw.extend(image.to_bytes());
        mock::fuzz_raw(&raw);
    }
    for (name, bytes) in sample_records() {
        assert!(bytes.len() > 1, "{name}");
        mock::fuzz_raw(&bytes);
    }
}

#[test]
fn committed_corpus_matches_the_generator() {
    let dir = corpus_dir();
    if !dir.exists() {
        eprintln!("no fuzz corpus at {} (packaged crate?)", dir.display());
        return;
    }
    for (name, image) in sample_requests() {
        let path = dir.join("decode_chain").join(format!("seed_{name}"));
        let committed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(committed, image.to_bytes(), "{} is stale", path.display());
    }
    for (name, bytes) in sample_records() {
        let path = dir.join("decode_raw").join(format!("seed_{name}"));
        let committed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(committed, bytes, "{} is stale", path.display());
    }
    let queue_dir = dir.join("ring_queue");
    for (name, image) in sample_queues() {
        let path = queue_dir.join(format!("seed_{name}"));
        let committed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(committed, image.to_bytes(), "{} is stale", path.display());
    }
    assert_eq!(
        fs::read_dir(&queue_dir).unwrap().count(),
        sample_queues().len(),
        "{} holds seeds the generator does not write",
        queue_dir.display()
    );
}

#[test]
fn every_seed_passes_its_oracle() {
    let dir = corpus_dir();
    if !dir.exists() {
        return;
    }
    for entry in fs::read_dir(dir.join("decode_chain")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        mock::fuzz_chain(&ChainImage::from_bytes(&bytes).unwrap());
    }
    for entry in fs::read_dir(dir.join("decode_raw")).unwrap() {
        mock::fuzz_raw(&fs::read(entry.unwrap().path()).unwrap());
    }
    for entry in fs::read_dir(dir.join("ring_queue")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        mock::fuzz_queue(&QueueImage::from_bytes(&bytes));
    }
}
