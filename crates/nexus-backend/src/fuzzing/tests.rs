// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The harness run on hand-written scenarios (each reaching the answers it is about) and on
//! a deterministic stream of pseudo-random ones.

use super::scenario::{Action, Options, Scenario, Step};
use nexus_ring::{Op, Status};

use super::*;

#[test]
fn a_put_is_read_back() {
    let report = run(&Scenario {
        options: Options::default(),
        steps: vec![
            Step::settled(Action::Put {
                key: 0,
                len: 4,
                seed: 3,
                segments: 2,
                write_behind: false,
            }),
            Step::settled(Action::Get {
                key: 0,
                offset: 1,
                max_len: 0,
                capacity: 4,
                buffers: 3,
            }),
        ],
    });
    assert_eq!(report.answers(Op::Put, Status::Ok), 1);
    assert_eq!(report.answers(Op::Get, Status::Ok), 1);
}

/// What each seed is about: (op, status, least count).
fn expected(name: &str) -> &'static [(Op, Status, usize)] {
    match name {
        "objects" => &[
            (Op::Put, Status::Ok, 3),
            (Op::Get, Status::Ok, 5),
            (Op::Get, Status::NotFound, 1),
            (Op::Head, Status::Ok, 1),
            (Op::Head, Status::NotFound, 1),
            (Op::Delete, Status::Ok, 2),
        ],
        "refused_keys" => &[
            (Op::Get, Status::PermissionDenied, 1),
            (Op::Put, Status::PermissionDenied, 2),
            (Op::Delete, Status::PermissionDenied, 1),
            (Op::Head, Status::PermissionDenied, 1),
            (Op::Put, Status::InvalidRequest, 1),
            (Op::Get, Status::InvalidRequest, 1),
            (Op::Delete, Status::InvalidRequest, 1),
            (Op::List, Status::PermissionDenied, 1),
            (Op::List, Status::InvalidRequest, 2),
        ],
        "write_behind" => &[
            (Op::Put, Status::Ok, 3),
            (Op::Flush, Status::Ok, 2),
            (Op::List, Status::Ok, 2),
            (Op::Get, Status::Ok, 2),
        ],
        "write_behind_bounds" => &[(Op::Put, Status::Ok, 4), (Op::Flush, Status::Ok, 1)],
        "list_pages" => &[
            (Op::List, Status::Ok, 8),
            (Op::List, Status::InvalidRequest, 4),
            (Op::List, Status::TooLarge, 1),
        ],
        "invocations" => &[
            (Op::Next, Status::Ok, 3),
            (Op::Next, Status::Timeout, 1),
            (Op::Next, Status::TooLarge, 1),
            (Op::Complete, Status::Ok, 3),
            (Op::Complete, Status::NotFound, 1),
        ],
        "calls_and_logs" => &[
            (Op::Invoke, Status::Ok, 3),
            (Op::Invoke, Status::Timeout, 1),
            (Op::Invoke, Status::NotFound, 1),
            (Op::Invoke, Status::InvalidRequest, 1),
            (Op::Http, Status::PermissionDenied, 1),
            (Op::Http, Status::InvalidRequest, 1),
            (Op::Log, Status::Ok, 3),
            (Op::Log, Status::Throttled, 1),
        ],
        "prefetch" => &[(Op::Get, Status::Ok, 4), (Op::Put, Status::Ok, 1)],
        "one_at_a_time" => &[
            (Op::Put, Status::Ok, 2),
            (Op::Get, Status::Ok, 1),
            (Op::Next, Status::Timeout, 1),
            (Op::Flush, Status::Ok, 1),
            (Op::List, Status::Ok, 1),
        ],
        _ => panic!("no expectations for seed {name}"),
    }
}

#[test]
fn every_seed_passes_the_oracles_and_reaches_its_answers() {
    for (name, scenario) in seeds() {
        assert_eq!(
            Scenario::from_bytes(&scenario.to_bytes()),
            scenario,
            "{name}"
        );
        let report = run(&scenario);
        assert_eq!(report.skipped, 0, "{name}: {report:?}");
        for &(op, status, least) in expected(name) {
            assert!(
                report.answers(op, status) >= least,
                "{name}: {least} {op} answered {status:?} expected: {report:?}"
            );
        }
    }
    let invocations = seeds()
        .into_iter()
        .find(|(name, _)| *name == "invocations")
        .map(|(_, scenario)| run(&scenario))
        .unwrap();
    assert_eq!(invocations.invocations_completed, 3);
}

/// A deterministic stream of pseudo-random scenarios (xorshift bytes, decoded like a
/// fuzzer's input), short enough for every test run.
#[test]
fn pseudo_random_scenarios_pass_the_oracles() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let len = scenario::OPTIONS_LEN + scenario::STEP_LEN * (4 + (next() % 40) as usize);
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let input = Scenario::from_bytes(&bytes);
        let report = std::panic::catch_unwind(|| run(&input));
        assert!(report.is_ok(), "round {round}: {input:?}");
    }
}

/// Found by the fuzzer: a GET dispatched, then a hint of its key (here through an
/// invocation's input) before the GET's task ran. The GET waited for the prefetch, which
/// waited for the GET's turn: the GET was never answered and the key was stuck for good.
#[test]
fn a_get_sent_before_a_hint_of_its_key_is_answered() {
    for hint in [
        Action::Hint { key: 0 },
        Action::Queue {
            input: 0,
            object: true,
            async_durability: false,
            function: 0,
        },
    ] {
        let report = run(&Scenario {
            options: Options {
                seeded: true,
                ..Options::default()
            },
            steps: vec![
                Step::unsettled(Action::Get {
                    key: 0,
                    offset: 0,
                    max_len: 0,
                    capacity: 5,
                    buffers: 0,
                }),
                Step::settled(hint),
                Step::settled(Action::Get {
                    key: 0,
                    offset: 0,
                    max_len: 0,
                    capacity: 5,
                    buffers: 1,
                }),
            ],
        });
        assert_eq!(report.answers(Op::Get, Status::Ok), 2, "{report:?}");
    }
}

/// Found by the fuzzer (the input as it found it): with one write-behind upload allowed and
/// one staging unit, a later write-behind PUT on a key was acknowledged, holding the staging
/// room while its upload waited for the turn of an earlier PUT on the key, which waited for
/// that room to write the object: neither was ever done, the key hung, and the VM's (and
/// the backend's) staging room was held for good. The acknowledgement also came before the
/// earlier PUT's answer.
#[test]
fn a_write_behind_put_does_not_hold_staging_room_while_it_waits_for_its_key() {
    const INPUT: &[u8] = &[
        0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x80, 0x20, 0x00, 0x00,
        0x08, 0x00, 0x00, 0x74, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x6b, 0x6b, 0x6b,
        0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b,
        0x6b, 0x6b, 0x6b, 0xff, 0x6b, 0x9f, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39,
        0x39, 0x39, 0x39, 0x39, 0x39, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b,
        0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x6b, 0x39, 0x6b, 0x6b, 0x6b,
    ];
    let report = run(&Scenario::from_bytes(INPUT));
    assert_eq!(report.answers(Op::Put, Status::Ok), 3, "{report:?}");
}

/// Found by the fuzzer (the input as it found it): a LIST of an S3 (here in-memory) store
/// given a directory token (`t/a/`, which only the file store's walk hands out) and a small
/// scan budget handed out a token before the one it was given (`t/a.b`): the next page
/// listed again keys the token had said were done. Such tokens are refused now.
#[test]
fn a_remote_listing_refuses_directory_tokens() {
    const INPUT: &[u8] = &[
        0x7f, 0x20, 0x00, 0x00, 0x81, 0x03, 0xff, 0x00, 0xff, 0xff, 0x01, 0xff, 0x08, 0x23, 0x05,
        0x00, 0x40, 0x00, 0x84, 0x09, 0x01, 0x06, 0x00, 0x07, 0x06, 0x00, 0x00, 0x84, 0x01, 0x07,
        0x00, 0x07, 0x07, 0x00, 0x00, 0x00, 0x84, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00,
        0x3f, 0x84, 0x00, 0x01, 0x02, 0x24, 0x01, 0x00, 0x00, 0x84, 0x00, 0x01, 0x02, 0x05, 0x01,
        0x00, 0x00, 0x84, 0x00, 0x01, 0x02, 0x05, 0x01, 0x00, 0x07, 0x03, 0x00, 0x40, 0x84, 0x01,
        0x06, 0x00, 0x07, 0x06, 0x00, 0x00, 0x84, 0x02, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x84,
        0x03, 0x02, 0x74, 0x2f, 0xc3, 0x00, 0x07, 0x02, 0x00, 0x00, 0x84, 0x01, 0x03, 0x00, 0x07,
        0x03, 0x00, 0x40, 0x84, 0x01, 0x06, 0x00, 0x07, 0x06, 0x00, 0x00, 0x84, 0x01, 0x07, 0x00,
        0xff, 0xff, 0xff, 0x07, 0x07, 0x00, 0x00, 0x00, 0x84, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
        0x2a,
    ];
    let report = run(&Scenario::from_bytes(INPUT));
    assert!(
        report.answers(Op::List, Status::InvalidRequest) >= 1,
        "{report:?}"
    );
}
