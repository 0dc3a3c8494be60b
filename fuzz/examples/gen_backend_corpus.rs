// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writes the seed corpus of the `backend_ops` target: `nexus_backend::fuzzing::seeds()`
//! (objects, refused keys, write-behind and its bounds, LIST pages and tokens, invocations,
//! calls and logs, prefetch, one request at a time), each run through the harness first so
//! that every seed passes the oracles.
//!
//! ```sh
//! cd fuzz && cargo run --example gen_backend_corpus -- corpus/backend_ops
//! ```

use nexus_backend::fuzzing::{self, Scenario};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/backend_ops".into());
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (name, scenario) in fuzzing::seeds() {
        let bytes = scenario.to_bytes();
        assert_eq!(Scenario::from_bytes(&bytes), scenario, "{name}");
        let report = fuzzing::run(&scenario);
        let path = std::path::Path::new(&dir).join(format!("seed_{name}"));
        std::fs::write(&path, &bytes).expect("write a seed");
        println!(
            "{} ({} steps, {} skipped)",
            path.display(),
            report.steps,
            report.skipped
        );
    }
}
