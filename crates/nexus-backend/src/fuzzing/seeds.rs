// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Seed scenarios: one per area of the operation layer, each reaching the answers it is
//! about (the crate's tests check that, and the fuzz corpus is made of them).

use super::scenario::{Action, Options, Scenario, Step};

/// Key indices into [`KEYS`](super::scenario::KEYS).
mod key {
    pub(super) const A: u8 = 0;
    pub(super) const B: u8 = 1;
    pub(super) const A_B: u8 = 2;
    pub(super) const A_DOT_B: u8 = 3;
    pub(super) const C_D_E: u8 = 4;
    pub(super) const LONG: u8 = 7;
    pub(super) const A_C: u8 = 8;
    pub(super) const OUTSIDE: u8 = 11;
    pub(super) const JUST_T: u8 = 12;
    pub(super) const DOUBLE_SLASH: u8 = 15;
    pub(super) const DOT_DOT: u8 = 17;
    pub(super) const NOT_UTF8: u8 = 21;
}

fn put(key: u8, len: u8, seed: u8, write_behind: bool) -> Action {
    Action::Put {
        key,
        len,
        seed,
        segments: seed,
        write_behind,
    }
}

fn get(key: u8, offset: u8, max_len: u8, capacity: u8) -> Action {
    Action::Get {
        key,
        offset,
        max_len,
        capacity,
        buffers: offset + capacity,
    }
}

fn list(prefix: u8, token: u8, max_entries: u8, capacity: u8) -> Action {
    Action::List {
        prefix,
        token,
        max_entries,
        capacity,
        buffers: token,
    }
}

fn s(action: Action) -> Step {
    Step::settled(action)
}

fn u(action: Action) -> Step {
    Step::unsettled(action)
}

/// The seeds, by name.
pub fn seeds() -> Vec<(&'static str, Scenario)> {
    let plain = Options::default();
    vec![
        (
            "objects",
            Scenario {
                options: plain,
                steps: vec![
                    s(put(key::A, 5, 1, false)),
                    s(get(key::A, 0, 0, 7)),
                    s(get(key::A, 3, 3, 3)),
                    s(get(key::A, 7, 0, 4)),
                    s(Action::Head {
                        key: key::A,
                        meta: 1,
                    }),
                    s(put(key::LONG, 2, 2, false)),
                    s(get(key::LONG, 0, 0, 1)),
                    s(put(key::A_B, 0, 0, false)),
                    s(get(key::A_B, 0, 0, 4)),
                    s(Action::Delete { key: key::A }),
                    s(get(key::A, 0, 0, 4)),
                    s(Action::Head {
                        key: key::A,
                        meta: 0,
                    }),
                    s(Action::Delete { key: key::A }),
                ],
            },
        ),
        (
            "refused_keys",
            Scenario {
                options: plain,
                steps: vec![
                    s(get(key::OUTSIDE, 0, 0, 5)),
                    s(put(key::OUTSIDE, 3, 1, false)),
                    s(put(key::JUST_T, 3, 1, true)),
                    s(Action::Delete { key: key::OUTSIDE }),
                    s(Action::Head {
                        key: key::OUTSIDE,
                        meta: 3,
                    }),
                    s(put(key::DOUBLE_SLASH, 3, 1, false)),
                    s(get(key::DOT_DOT, 0, 0, 5)),
                    s(Action::Delete { key: key::NOT_UTF8 }),
                    s(list(7, 0, 0, 5)),
                    s(list(9, 0, 0, 5)),
                    s(list(10, 0, 0, 5)),
                ],
            },
        ),
        (
            "write_behind",
            Scenario {
                options: plain,
                steps: vec![
                    u(put(key::A_B, 6, 3, true)),
                    u(put(key::B, 4, 4, true)),
                    u(get(key::A_B, 0, 0, 6)),
                    u(put(key::A_B, 4, 5, true)),
                    u(list(0, 0, 0, 6)),
                    s(Action::Flush { timeout: 0 }),
                    s(list(0, 0, 0, 6)),
                    s(get(key::A_B, 0, 0, 6)),
                    s(Action::Flush { timeout: 3 }),
                ],
            },
        ),
        (
            "write_behind_bounds",
            Scenario {
                options: Options {
                    write_behind: 2,
                    ..plain
                },
                steps: vec![
                    u(put(key::A, 7, 1, true)),
                    u(put(key::B, 3, 2, true)),
                    u(put(key::C_D_E, 3, 3, true)),
                    u(put(key::B, 5, 4, true)),
                    s(Action::Flush { timeout: 0 }),
                    s(get(key::B, 0, 0, 5)),
                ],
            },
        ),
        (
            "list_pages",
            Scenario {
                options: Options {
                    seeded: true,
                    scan_budget: 2,
                    ..plain
                },
                steps: vec![
                    s(put(key::A_DOT_B, 3, 1, false)),
                    s(put(key::A_C, 3, 2, false)),
                    s(list(0, 0, 1, 5)),
                    s(list(0, 1, 1, 5)),
                    s(list(0, 1, 2, 5)),
                    s(list(0, 1, 2, 5)),
                    s(list(0, 1, 2, 5)),
                    s(list(0, 1, 2, 5)),
                    s(list(0, 1, 2, 5)),
                    s(list(2, 0, 0, 7)),
                    s(list(3, 2, 0, 7)),
                    s(list(1, 3, 0, 7)),
                    s(list(1, 6, 0, 7)),
                    s(list(1, 7, 0, 7)),
                    s(list(0, 0, 0, 2)),
                ],
            },
        ),
        (
            "invocations",
            Scenario {
                options: Options {
                    seeded: true,
                    ..plain
                },
                steps: vec![
                    s(Action::Queue {
                        input: 4,
                        object: false,
                        async_durability: false,
                        function: 0,
                    }),
                    s(Action::Queue {
                        input: key::A,
                        object: true,
                        async_durability: true,
                        function: 1,
                    }),
                    s(Action::Next {
                        timeout: 0,
                        capacity: 5,
                        meta: 0,
                        buffers: 1,
                    }),
                    u(put(key::C_D_E, 3, 9, true)),
                    s(Action::Complete {
                        which: 0,
                        error: false,
                        len: 3,
                    }),
                    s(Action::Next {
                        timeout: 3,
                        capacity: 5,
                        meta: 1,
                        buffers: 0,
                    }),
                    s(Action::Complete {
                        which: 1,
                        error: true,
                        len: 2,
                    }),
                    s(Action::Complete {
                        which: 1,
                        error: false,
                        len: 2,
                    }),
                    s(Action::Next {
                        timeout: 2,
                        capacity: 5,
                        meta: 0,
                        buffers: 0,
                    }),
                    s(Action::Advance { ms: 3 }),
                    s(Action::Queue {
                        input: 7,
                        object: false,
                        async_durability: false,
                        function: 2,
                    }),
                    s(Action::Next {
                        timeout: 0,
                        capacity: 4,
                        meta: 0,
                        buffers: 0,
                    }),
                    s(Action::Next {
                        timeout: 0,
                        capacity: 7,
                        meta: 0,
                        buffers: 2,
                    }),
                    s(Action::Complete {
                        which: 2,
                        error: false,
                        len: 0,
                    }),
                    s(Action::Next {
                        timeout: 0,
                        capacity: 7,
                        meta: 0,
                        buffers: 2,
                    }),
                ],
            },
        ),
        (
            "calls_and_logs",
            Scenario {
                options: Options {
                    invoker: true,
                    log: 2,
                    ..plain
                },
                steps: vec![
                    s(Action::Invoke {
                        function: 0,
                        asynchronous: false,
                        timeout: 0,
                        input: 4,
                        capacity: 3,
                    }),
                    s(Action::Invoke {
                        function: 1,
                        asynchronous: false,
                        timeout: 3,
                        input: 0,
                        capacity: 5,
                    }),
                    u(Action::Invoke {
                        function: 2,
                        asynchronous: false,
                        timeout: 3,
                        input: 1,
                        capacity: 5,
                    }),
                    u(Action::Invoke {
                        function: 2,
                        asynchronous: true,
                        timeout: 5,
                        input: 1,
                        capacity: 0,
                    }),
                    s(Action::Invoke {
                        function: 3,
                        asynchronous: false,
                        timeout: 0,
                        input: 1,
                        capacity: 0,
                    }),
                    s(Action::Invoke {
                        function: 6,
                        asynchronous: false,
                        timeout: 0,
                        input: 1,
                        capacity: 0,
                    }),
                    s(Action::Advance { ms: 6 }),
                    s(Action::Http {
                        url: 0,
                        method: 0,
                        timeout: 0,
                        body: 0,
                        headers: 0,
                        capacity: 5,
                    }),
                    s(Action::Http {
                        url: 3,
                        method: 2,
                        timeout: 2,
                        body: 4,
                        headers: 1,
                        capacity: 5,
                    }),
                    s(Action::Http {
                        url: 4,
                        method: 3,
                        timeout: 0,
                        body: 1,
                        headers: 2,
                        capacity: 0,
                    }),
                    s(Action::Log { level: 0, len: 4 }),
                    s(Action::Log { level: 3, len: 1 }),
                    s(Action::Log { level: 4, len: 1 }),
                    s(Action::Advance { ms: 4 }),
                    s(Action::Log { level: 2, len: 5 }),
                ],
            },
        ),
        (
            "prefetch",
            Scenario {
                options: Options {
                    seeded: true,
                    prefetch: 3,
                    ..plain
                },
                steps: vec![
                    s(Action::Hint { key: key::A_B }),
                    s(get(key::A_B, 0, 0, 4)),
                    s(get(key::A_B, 5, 0, 6)),
                    s(Action::Hint { key: key::A }),
                    u(put(key::A, 4, 7, true)),
                    s(get(key::A, 0, 0, 5)),
                    s(Action::Hint { key: key::A }),
                    s(Action::Advance { ms: 6 }),
                    s(get(key::A, 0, 0, 5)),
                ],
            },
        ),
        (
            "one_at_a_time",
            Scenario {
                options: Options {
                    in_flight: 1,
                    staging: 2,
                    ..plain
                },
                steps: vec![
                    u(put(key::A, 7, 1, true)),
                    u(get(key::A, 0, 0, 7)),
                    u(put(key::A, 6, 2, false)),
                    u(Action::Next {
                        timeout: 2,
                        capacity: 0,
                        meta: 0,
                        buffers: 0,
                    }),
                    u(Action::Head {
                        key: key::A,
                        meta: 2,
                    }),
                    u(Action::Flush { timeout: 0 }),
                    u(Action::Delete { key: key::A }),
                    s(list(0, 0, 0, 6)),
                ],
            },
        ),
    ]
}
