// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The harness's input: per-VM options and a sequence of steps, in a byte format every byte
//! string decodes to (fixed-size records, so a fuzzer's byte flips change a parameter without
//! shifting the steps after it).
//!
//! ```text
//! options: 4 bytes (see `Options`)
//! steps:   8 bytes each, at most `MAX_STEPS`:
//!          byte 0: action (low 7 bits, modulo the number of actions) | 0x80 settle after it
//!          bytes 1..8: the action's parameters, in field order; missing bytes read as 0
//! ```
//!
//! Parameters are raw bytes, interpreted through the tables below (index modulo the table's
//! length), so that every value decodes and the interesting ones are a byte away.

/// Bytes of the options header.
pub const OPTIONS_LEN: usize = 4;
/// Bytes of one step.
pub const STEP_LEN: usize = 8;
/// Most steps taken from one input.
pub const MAX_STEPS: usize = 160;

/// What a key is to the VM's tenant (prefix `t/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// A valid key inside the tenant's prefix.
    Allowed,
    /// A valid key outside the prefix: `PERMISSION_DENIED`.
    Outside,
    /// Not a valid key (or not UTF-8): `INVALID_REQUEST`.
    Invalid,
}

/// The tenant's prefix.
pub const TENANT_PREFIX: &str = "t/";

const LONG_KEY: [u8; 1024] = {
    let mut key = [b'k'; 1024];
    key[0] = b't';
    key[1] = b'/';
    key
};

/// Object keys (GET, PUT, HEAD, DELETE, hints and invocation inputs).
pub const KEYS: [(&[u8], KeyClass); 24] = [
    (b"t/a", KeyClass::Allowed),
    (b"t/b", KeyClass::Allowed),
    (b"t/a/b", KeyClass::Allowed),
    (b"t/a.b", KeyClass::Allowed),
    (b"t/c/d/e", KeyClass::Allowed),
    ("t/é".as_bytes(), KeyClass::Allowed),
    (b"t/sp ace", KeyClass::Allowed),
    (&LONG_KEY, KeyClass::Allowed),
    (b"t/a/c", KeyClass::Allowed),
    (b"t/c/x", KeyClass::Allowed),
    (b"t/a0", KeyClass::Allowed),
    (b"other/secret", KeyClass::Outside),
    (b"t", KeyClass::Outside),
    (b"tx/a", KeyClass::Outside),
    (b"T/a", KeyClass::Outside),
    (b"t//a", KeyClass::Invalid),
    (b"t/./a", KeyClass::Invalid),
    (b"t/../other/secret", KeyClass::Invalid),
    (b"/t/a", KeyClass::Invalid),
    (b"t/a/", KeyClass::Invalid),
    (b"t/\x01", KeyClass::Invalid),
    (b"t/\xff", KeyClass::Invalid),
    (b".nexus-tmp/x", KeyClass::Invalid),
    ("t/a\u{85}".as_bytes(), KeyClass::Invalid),
];

/// The object outside the tenant's prefix that the store holds from the start.
pub const OUTSIDE_OBJECT: &str = "other/secret";

/// LIST prefixes (the key segment; `None`: no key segment, the tenant's prefix).
pub const LIST_PREFIXES: [Option<&[u8]>; 12] = [
    None,
    Some(b"t/"),
    Some(b"t/a"),
    Some(b"t/a/"),
    Some(b"t/c/"),
    Some(b"t/b"),
    Some(b"t/a."),
    Some(b"other/"),
    Some(b"t"),
    Some(b"t//"),
    Some(b"t/\xff"),
    Some(b"t/c/d"),
];

/// A LIST continuation token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// No token: the first page.
    None,
    /// The token the last LIST answer handed out, with that LIST's prefix (the first page if
    /// there is none).
    Continue,
    /// These bytes.
    Bytes(&'static [u8]),
}

/// LIST tokens.
pub const LIST_TOKENS: [Token; 12] = [
    Token::None,
    Token::Continue,
    Token::Bytes(b"t/a"),
    Token::Bytes(b"t/a/"),
    Token::Bytes(b"t/b"),
    Token::Bytes(b"t/zzz"),
    Token::Bytes(b"t/"),
    Token::Bytes(b"a"),
    Token::Bytes(b"t//x"),
    Token::Bytes(b"t/\xff"),
    Token::Continue,
    Token::Continue,
];

/// LIST `max_entries` (0: the protocol's maximum).
pub const LIST_MAX_ENTRIES: [u32; 8] = [0, 1, 2, 3, 5, 1000, 1, 2];

/// Response payload capacities (split over the step's buffers).
pub const CAPACITIES: [u32; 8] = [0, 1, 3, 64, 1000, 4096, 20_000, 65_536];

/// GET offsets.
pub const OFFSETS: [u64; 8] = [0, 1, 2, 17, 100, 4096, 20_000, 1 << 40];

/// GET `max_len` (0: as much as fits).
pub const MAX_LENS: [u64; 8] = [0, 1, 2, 10, 100, 4096, 30_000, u64::MAX];

/// Payload lengths (PUT, LOG, HTTP and INVOKE bodies, COMPLETE results, invocation inputs);
/// a length code's high 5 bits add up to 31 to the table entry.
pub const LENGTHS: [usize; 8] = [0, 1, 3, 16, 100, 1000, 4096, 20_000];

/// The longest payload a step sends (the harness's window has room for it in every slot).
pub const MAX_PAYLOAD: usize = 20_031;

/// The length a code stands for.
pub fn length(code: u8) -> usize {
    LENGTHS[usize::from(code & 7)] + usize::from(code >> 3)
}

/// Timeouts of FLUSH, NEXT, HTTP and INVOKE, in milliseconds (0: the op's default).
pub const TIMEOUTS_MS: [u64; 8] = [0, 1, 50, 1000, 5000, 200_000, 0, 10];

/// Extra response meta capacity beyond the op's minimum.
pub const META_EXTRA: [u32; 4] = [0, 1, 100, 2000];

/// How far an `Advance` step moves the clock, in milliseconds.
pub const ADVANCES_MS: [u64; 8] = [1, 10, 50, 200, 1000, 10_000, 60_000, 3_600_000];

/// HTTP URLs (the key segment); the backend's allow-list is empty.
pub const URLS: [&[u8]; 8] = [
    b"http://example.com/",
    b"https://127.0.0.1:8443/x",
    b"http://[::1]/",
    b"ftp://example.com/",
    b"not a url",
    b"http://user@example.com/",
    b"http://\xff/",
    b"http://10.0.0.1:80/a?b",
];

/// HTTP header lists (the meta segment): none, a valid list, garbage.
pub const HTTP_HEADERS: [Option<&[u8]>; 3] = [
    None,
    Some(b"\x01\x00\x00\x00\x06\x00\x03\x00accept*/*"),
    Some(b"\xff\xff\xff\xff"),
];

/// INVOKE function names, as the harness's invoker treats them: `echo` returns its input
/// reversed, `fail` an error document, `slow` answers after 120 s, `missing`, `denied` and
/// `busy` fail, any other name is not found.
pub const FUNCTIONS: [&[u8]; 8] = [
    b"echo",
    b"fail",
    b"slow",
    b"missing",
    b"denied",
    b"busy",
    b"\xff\xfe",
    b"other",
];

/// Function names of invocations queued through the API.
pub const QUEUED_FUNCTIONS: [&str; 4] = ["fn-a", "fn-b", "f", "a-function-with-a-long-name"];

/// COMPLETE invocation numbers that name no invocation (`which` from 0xf0 on): a run
/// queues fewer than 999.
pub const BOGUS_INVOCATIONS: [u64; 4] = [0, u64::MAX, 1_000_000, 999];

/// The VM's limits and the harness's set-up. Every field is an index into its table, taken
/// modulo its length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `requests_in_flight`: [`IN_FLIGHT`].
    pub in_flight: u8,
    /// `write_behind_requests` and `write_behind_bytes`: [`WRITE_BEHIND`].
    pub write_behind: u8,
    /// The VM's staging share and the global budget: [`STAGING`].
    pub staging: u8,
    /// `list_scan_budget`: [`SCAN_BUDGETS`].
    pub scan_budget: u8,
    /// `prefetch_cache_bytes`: [`PREFETCH_BYTES`].
    pub prefetch: u8,
    /// `log_burst` and `log_records_per_second`: [`LOG_LIMITS`].
    pub log: u8,
    /// An invoker is registered (INVOKE works).
    pub invoker: bool,
    /// The store holds objects of the tenant from the start (besides [`OUTSIDE_OBJECT`]).
    pub seeded: bool,
}

/// `requests_in_flight` choices.
pub const IN_FLIGHT: [u32; 4] = [64, 1, 2, 4];
/// `(write_behind_requests, write_behind_bytes)` choices.
pub const WRITE_BEHIND: [(u32, u64); 4] =
    [(256, 256 << 20), (0, 256 << 20), (1, 4096), (2, 30_000)];
/// `(VM share, global budget)` staging choices, in bytes (the budget's unit is 64 KiB).
pub const STAGING: [(u64, u64); 4] = [
    (256 << 20, 1 << 30),
    (64 << 10, 1 << 30),
    (64 << 10, 64 << 10),
    (128 << 10, 128 << 10),
];
/// `list_scan_budget` choices.
pub const SCAN_BUDGETS: [u32; 4] = [100_000, 1, 2, 5];
/// `prefetch_cache_bytes` choices.
pub const PREFETCH_BYTES: [u64; 4] = [64 << 20, 0, 2048, 30_000];
/// `(log_burst, log_records_per_second)` choices.
pub const LOG_LIMITS: [(u32, u32); 4] = [(200, 100), (0, 100), (2, 1), (1, 1000)];

impl Options {
    fn from_bytes(bytes: [u8; OPTIONS_LEN]) -> Self {
        Self {
            in_flight: bytes[0] & 3,
            write_behind: (bytes[0] >> 2) & 3,
            staging: (bytes[0] >> 4) & 3,
            scan_budget: (bytes[0] >> 6) & 3,
            prefetch: bytes[1] & 3,
            log: (bytes[1] >> 2) & 3,
            invoker: bytes[1] & 0x10 != 0,
            seeded: bytes[1] & 0x20 != 0,
        }
    }

    fn to_bytes(self) -> [u8; OPTIONS_LEN] {
        [
            (self.in_flight & 3)
                | (self.write_behind & 3) << 2
                | (self.staging & 3) << 4
                | (self.scan_budget & 3) << 6,
            (self.prefetch & 3)
                | (self.log & 3) << 2
                | u8::from(self.invoker) << 4
                | u8::from(self.seeded) << 5,
            0,
            0,
        ]
    }
}

/// One thing the guest (or the node, through the backend's API) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// GET [`KEYS`]`[key]` at [`OFFSETS`]`[offset]`, at most [`MAX_LENS`]`[max_len]` bytes,
    /// into [`CAPACITIES`]`[capacity]` bytes over `buffers % 4 + 1` buffers.
    Get {
        /// Key index.
        key: u8,
        /// Offset index.
        offset: u8,
        /// `max_len` index.
        max_len: u8,
        /// Capacity index.
        capacity: u8,
        /// Buffer count code.
        buffers: u8,
    },
    /// PUT [`KEYS`]`[key]`: [`length`]`(len)` bytes of a pattern seeded by `seed`, over
    /// `segments % 4 + 1` segments.
    Put {
        /// Key index.
        key: u8,
        /// Length code.
        len: u8,
        /// Pattern seed.
        seed: u8,
        /// Segment count code.
        segments: u8,
        /// Write-behind.
        write_behind: bool,
    },
    /// HEAD [`KEYS`]`[key]`, with [`META_EXTRA`]`[meta]` more meta room than needed.
    Head {
        /// Key index.
        key: u8,
        /// Meta room index.
        meta: u8,
    },
    /// DELETE [`KEYS`]`[key]`.
    Delete {
        /// Key index.
        key: u8,
    },
    /// LIST [`LIST_PREFIXES`]`[prefix]` after [`LIST_TOKENS`]`[token]`.
    List {
        /// Prefix index.
        prefix: u8,
        /// Token index.
        token: u8,
        /// [`LIST_MAX_ENTRIES`] index.
        max_entries: u8,
        /// Capacity index.
        capacity: u8,
        /// Buffer count code.
        buffers: u8,
    },
    /// FLUSH with [`TIMEOUTS_MS`]`[timeout]`.
    Flush {
        /// Timeout index.
        timeout: u8,
    },
    /// LOG [`length`]`(len)` bytes (at least 1) at level `level % 5`.
    Log {
        /// Level code.
        level: u8,
        /// Length code.
        len: u8,
    },
    /// HTTP to [`URLS`]`[url]`.
    Http {
        /// URL index.
        url: u8,
        /// Method code (`% 7 + 1`).
        method: u8,
        /// Timeout index.
        timeout: u8,
        /// Body length code.
        body: u8,
        /// [`HTTP_HEADERS`] index.
        headers: u8,
        /// Capacity index.
        capacity: u8,
    },
    /// INVOKE [`FUNCTIONS`]`[function]`.
    Invoke {
        /// Function index.
        function: u8,
        /// Asynchronous.
        asynchronous: bool,
        /// Timeout index.
        timeout: u8,
        /// Input length code.
        input: u8,
        /// Capacity index.
        capacity: u8,
    },
    /// NEXT with [`TIMEOUTS_MS`]`[timeout]`.
    Next {
        /// Timeout index.
        timeout: u8,
        /// Capacity index.
        capacity: u8,
        /// Meta room index.
        meta: u8,
        /// Buffer count code.
        buffers: u8,
    },
    /// COMPLETE the invocation delivered `which`-th (modulo those delivered), or from 0xf0
    /// on one of [`BOGUS_INVOCATIONS`].
    Complete {
        /// Which invocation.
        which: u8,
        /// The function failed.
        error: bool,
        /// Result length code.
        len: u8,
    },
    /// The node queues an invocation (`Backend::invoke`): input [`length`]`(input)` bytes, or
    /// with `object` the object [`KEYS`]`[input]`.
    Queue {
        /// Input length code or key index.
        input: u8,
        /// The input is an object.
        object: bool,
        /// The caller accepts completion before uploads are durable.
        async_durability: bool,
        /// [`QUEUED_FUNCTIONS`] index.
        function: u8,
    },
    /// The node hints [`KEYS`]`[key]` (`Backend::hint`: prefetch).
    Hint {
        /// Key index.
        key: u8,
    },
    /// Time passes: [`ADVANCES_MS`]`[ms]`.
    Advance {
        /// Duration index.
        ms: u8,
    },
}

/// Number of actions (the modulus of the action byte).
const ACTIONS: u8 = 14;

/// One step: an action, and whether the harness lets the backend run to a standstill after
/// it (otherwise the next steps are submitted while it is still busy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// What is done.
    pub action: Action,
    /// Run the backend until it is idle (1 ms of the clock) afterwards.
    pub settle: bool,
}

impl Step {
    /// A step that settles afterwards.
    pub fn settled(action: Action) -> Self {
        Self {
            action,
            settle: true,
        }
    }

    /// A step after which the next is submitted at once.
    pub fn unsettled(action: Action) -> Self {
        Self {
            action,
            settle: false,
        }
    }

    fn from_bytes(b: [u8; STEP_LEN]) -> Self {
        let flag = |byte: u8| byte & 1 != 0;
        let action = match (b[0] & 0x7f) % ACTIONS {
            0 => Action::Get {
                key: b[1],
                offset: b[2],
                max_len: b[3],
                capacity: b[4],
                buffers: b[5],
            },
            1 => Action::Put {
                key: b[1],
                len: b[2],
                seed: b[3],
                segments: b[4],
                write_behind: flag(b[5]),
            },
            2 => Action::Head {
                key: b[1],
                meta: b[2],
            },
            3 => Action::Delete { key: b[1] },
            4 => Action::List {
                prefix: b[1],
                token: b[2],
                max_entries: b[3],
                capacity: b[4],
                buffers: b[5],
            },
            5 => Action::Flush { timeout: b[1] },
            6 => Action::Log {
                level: b[1],
                len: b[2],
            },
            7 => Action::Http {
                url: b[1],
                method: b[2],
                timeout: b[3],
                body: b[4],
                headers: b[5],
                capacity: b[6],
            },
            8 => Action::Invoke {
                function: b[1],
                asynchronous: flag(b[2]),
                timeout: b[3],
                input: b[4],
                capacity: b[5],
            },
            9 => Action::Next {
                timeout: b[1],
                capacity: b[2],
                meta: b[3],
                buffers: b[4],
            },
            10 => Action::Complete {
                which: b[1],
                error: flag(b[2]),
                len: b[3],
            },
            11 => Action::Queue {
                input: b[1],
                object: flag(b[2]),
                async_durability: flag(b[3]),
                function: b[4],
            },
            12 => Action::Hint { key: b[1] },
            _ => Action::Advance { ms: b[1] },
        };
        Self {
            action,
            settle: b[0] & 0x80 != 0,
        }
    }

    fn to_bytes(self) -> [u8; STEP_LEN] {
        let (code, params): (u8, [u8; 6]) = match self.action {
            Action::Get {
                key,
                offset,
                max_len,
                capacity,
                buffers,
            } => (0, [key, offset, max_len, capacity, buffers, 0]),
            Action::Put {
                key,
                len,
                seed,
                segments,
                write_behind,
            } => (1, [key, len, seed, segments, u8::from(write_behind), 0]),
            Action::Head { key, meta } => (2, [key, meta, 0, 0, 0, 0]),
            Action::Delete { key } => (3, [key, 0, 0, 0, 0, 0]),
            Action::List {
                prefix,
                token,
                max_entries,
                capacity,
                buffers,
            } => (4, [prefix, token, max_entries, capacity, buffers, 0]),
            Action::Flush { timeout } => (5, [timeout, 0, 0, 0, 0, 0]),
            Action::Log { level, len } => (6, [level, len, 0, 0, 0, 0]),
            Action::Http {
                url,
                method,
                timeout,
                body,
                headers,
                capacity,
            } => (7, [url, method, timeout, body, headers, capacity]),
            Action::Invoke {
                function,
                asynchronous,
                timeout,
                input,
                capacity,
            } => (
                8,
                [
                    function,
                    u8::from(asynchronous),
                    timeout,
                    input,
                    capacity,
                    0,
                ],
            ),
            Action::Next {
                timeout,
                capacity,
                meta,
                buffers,
            } => (9, [timeout, capacity, meta, buffers, 0, 0]),
            Action::Complete { which, error, len } => (10, [which, u8::from(error), len, 0, 0, 0]),
            Action::Queue {
                input,
                object,
                async_durability,
                function,
            } => (
                11,
                [
                    input,
                    u8::from(object),
                    u8::from(async_durability),
                    function,
                    0,
                    0,
                ],
            ),
            Action::Hint { key } => (12, [key, 0, 0, 0, 0, 0]),
            Action::Advance { ms } => (13, [ms, 0, 0, 0, 0, 0]),
        };
        let mut out = [0u8; STEP_LEN];
        out[0] = code | if self.settle { 0x80 } else { 0 };
        out[1..7].copy_from_slice(&params);
        out
    }
}

/// A whole input: options and steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scenario {
    /// The VM's limits and the set-up.
    pub options: Options,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Decodes any byte string (see the module docs): missing bytes read as 0, steps past
    /// [`MAX_STEPS`] and a trailing partial step are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut options = [0u8; OPTIONS_LEN];
        let head = bytes.len().min(OPTIONS_LEN);
        options[..head].copy_from_slice(&bytes[..head]);
        let steps = bytes
            .get(OPTIONS_LEN..)
            .unwrap_or_default()
            .chunks_exact(STEP_LEN)
            .take(MAX_STEPS)
            .map(|chunk| {
                let mut step = [0u8; STEP_LEN];
                step.copy_from_slice(chunk);
                Step::from_bytes(step)
            })
            .collect();
        Self {
            options: Options::from_bytes(options),
            steps,
        }
    }

    /// Encodes the scenario; [`from_bytes`](Self::from_bytes) gives it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.options.to_bytes().to_vec();
        for step in &self.steps {
            out.extend_from_slice(&step.to_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_round_trip() {
        let scenario = Scenario {
            options: Options {
                in_flight: 2,
                write_behind: 3,
                staging: 1,
                scan_budget: 2,
                prefetch: 3,
                log: 1,
                invoker: true,
                seeded: true,
            },
            steps: vec![
                Step::settled(Action::Put {
                    key: 1,
                    len: 0x45,
                    seed: 9,
                    segments: 3,
                    write_behind: true,
                }),
                Step::unsettled(Action::Http {
                    url: 1,
                    method: 2,
                    timeout: 3,
                    body: 4,
                    headers: 5,
                    capacity: 6,
                }),
                Step::settled(Action::Advance { ms: 7 }),
            ],
        };
        assert_eq!(Scenario::from_bytes(&scenario.to_bytes()), scenario);
        // Anything decodes; a partial step is ignored.
        let odd = Scenario::from_bytes(&[0xff; OPTIONS_LEN + STEP_LEN + 3]);
        assert_eq!(odd.steps.len(), 1);
        assert_eq!(Scenario::from_bytes(&[]).steps.len(), 0);
    }
}
