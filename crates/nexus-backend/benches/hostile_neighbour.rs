// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The hostile-neighbour benchmark: every attack of the containment tests against a real
//! backend process, beside a well-behaved VM that reads a 4 KiB object every 2 ms; prints, per
//! attack, the neighbour's GET latency (p50/p99) alone and under attack, the backend's CPU
//! time over each 3 s phase, and what the attack cost the log.
//!
//! ```text
//! cargo bench -p nexus-backend --bench hostile_neighbour
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use common::hostile::{ALL, PHASE};

fn micros(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; a filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    println!(
        "| attack | neighbour GET p50 / p99, quiet (µs) | under attack (µs) | backend CPU per {:?} quiet → under attack (s) | log under attack | contained |",
        PHASE
    );
    println!("|---|---|---|---|---|---|");
    for attack in ALL {
        if filter
            .as_ref()
            .is_some_and(|f| !attack.name().contains(f.as_str()))
        {
            continue;
        }
        let report = attack.run();
        let (quiet, under) = (&report.quiet, &report.attack);
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} → {:.2} | {} B, {} lines | {}{} |",
            attack.name(),
            micros(quiet.quantile(0.5)),
            micros(quiet.quantile(0.99)),
            micros(under.quantile(0.5)),
            micros(under.quantile(0.99)),
            quiet.cpu,
            under.cpu,
            under.log_bytes,
            under.log_lines,
            report.contained,
            if report.failures.is_empty() {
                String::new()
            } else {
                format!(" — {} neighbour failures", report.failures.len())
            }
        );
    }
}
