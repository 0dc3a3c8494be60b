// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One hostile VM cannot hurt its neighbours: each attack runs against a real backend process
//! while a well-behaved VM keeps reading an object (a 4 KiB GET every 2 ms; see
//! `common::hostile`). Each test checks how the attacker was contained (inside the attack),
//! that the neighbour's requests all succeeded throughout, that the backend spent less than
//! 0.5 s of CPU per 3 s beyond what the neighbour alone costs, and that its log grew by a few
//! lines at most. The `hostile_neighbour` benchmark runs the same attacks and reports the
//! neighbour's latency.
//!
//! The tests run one at a time (their CPU figures would mix otherwise).

mod common;

use std::sync::Mutex;

use common::hostile::{Attack, PHASE};

/// The CPU an attack may add per [`PHASE`].
const CPU_BUDGET: f64 = 0.5;

/// One test at a time: each measures its backend's CPU.
static SERIAL: Mutex<()> = Mutex::new(());

fn contained(attack: Attack) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let what = attack.name();
    let report = attack.run();
    let (quiet, under) = (&report.quiet, &report.attack);
    eprintln!(
        "{what}: {}; backend CPU {:.3} s quiet, {:.3} s under attack (per {PHASE:?}); neighbour \
         GETs {} quiet, {} under attack; log +{} lines",
        report.contained, quiet.cpu, under.cpu, quiet.served, under.served, under.log_lines
    );
    assert!(
        report.failures.is_empty(),
        "{what}: the neighbour failed: {:?}",
        report.failures
    );
    assert!(
        under.served > 0,
        "{what}: the neighbour was not served during the attack"
    );
    assert!(
        under.cpu - quiet.cpu < CPU_BUDGET,
        "{what}: the attack cost the backend {:.3} s of CPU beyond the neighbour's {:.3} s",
        under.cpu - quiet.cpu,
        quiet.cpu
    );
    assert!(
        under.log_lines <= attack.log_budget(),
        "{what}: the log grew by {} lines:\n{}",
        under.log_lines,
        report.log
    );
}

#[test]
fn an_available_index_far_ahead_breaks_only_the_attackers_queue() {
    contained(Attack::AvailIndexAhead);
}

#[test]
fn a_descriptor_loop_breaks_only_the_attackers_queue() {
    contained(Attack::DescriptorLoop);
}

#[test]
fn an_indirect_descriptor_breaks_only_the_attackers_queue() {
    contained(Attack::IndirectDescriptor);
}

#[test]
fn a_head_out_of_range_and_an_overlong_chain_break_only_the_attackers_queue() {
    contained(Attack::HeadOutOfRangeAndLongChain);
}

#[test]
fn a_log_flood_is_throttled_and_costs_a_few_lines() {
    contained(Attack::LogFlood);
}

#[test]
fn a_flood_of_empty_write_behind_puts_is_bounded() {
    contained(Attack::EmptyWriteBehindFlood);
}

#[test]
fn listing_a_large_tree_is_bounded_per_page_and_over_time() {
    contained(Attack::ListLargeTree);
}

#[test]
fn http_with_an_empty_allow_list_is_refused_before_the_body_is_copied() {
    contained(Attack::HttpRefusedLargeBody);
}

#[test]
fn a_slow_endless_http_body_is_cut_at_the_backends_deadline() {
    contained(Attack::HttpSlowEndlessBody);
}
