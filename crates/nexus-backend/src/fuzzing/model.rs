// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The harness proper: takes the steps, keeps the model, and checks every answer against
//! it (see the parent module's docs for the oracles).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use nexus_ring::records::{EntryList, InvocationContext, ObjectEntry};
use nexus_ring::{Command, HttpMethod, LogLevel, Op, Outcome, Status};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::oneshot;

use super::guest::{Answer, Outgoing, SLOTS, Sent};
use super::parts::{FINAL_ADVANCE, Parts};
use super::report::Report;
use super::scenario::{self, Action, KeyClass, Step, Token};
use crate::error::Error;
use crate::invocations::QueuedInvocation;
use crate::invoke::{
    Invocation, InvocationInput, InvocationResult, InvokeError, InvokeRequest, Invoker,
    PendingInvocation,
};
use crate::listing::Resume;
use crate::session::Session;
use crate::store::get_length;
use crate::tenant::{check_key, check_prefix};

/// The bytes of a PUT (and of every other payload): a pattern that does not repeat soon.
pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (usize::from(seed) * 31 + i * 7 + (i >> 8) * 13) as u8)
        .collect()
}

/// An index into a table.
fn pick<T: Copy>(table: &[T], index: u8) -> T {
    table[usize::from(index) % table.len()]
}

/// The time a `slow` function takes.
const SLOW: Duration = Duration::from_secs(120);

/// The invoker the node would register: answers by function name (see
/// [`scenario::FUNCTIONS`]).
struct FakeInvoker;

impl Invoker for FakeInvoker {
    fn invoke(
        &self,
        request: InvokeRequest,
    ) -> BoxFuture<'static, std::result::Result<InvocationResult, InvokeError>> {
        async move {
            let echo = |input: &Bytes| InvocationResult {
                outcome: Outcome::Success,
                output: input.iter().rev().copied().collect(),
                stored_len: None,
            };
            match request.function.as_str() {
                "echo" => Ok(echo(&request.input)),
                "fail" => Ok(InvocationResult {
                    outcome: Outcome::Error,
                    output: Bytes::from_static(b"{\"error\":\"boom\"}"),
                    stored_len: None,
                }),
                "slow" => {
                    tokio::time::sleep(SLOW).await;
                    Ok(echo(&request.input))
                }
                "denied" => Err(InvokeError::PermissionDenied(request.function)),
                "busy" => Err(InvokeError::Unavailable(request.function)),
                _ => Err(InvokeError::NotFound(request.function)),
            }
        }
        .boxed()
    }
}

/// What the invoker answers for `function` and `input`: a result, or the status.
fn invoke_expected(function: &str, input: &[u8]) -> Result<(Outcome, Vec<u8>), Status> {
    match function {
        "echo" | "slow" => Ok((Outcome::Success, input.iter().rev().copied().collect())),
        "fail" => Ok((Outcome::Error, b"{\"error\":\"boom\"}".to_vec())),
        "denied" => Err(Status::PermissionDenied),
        "busy" => Err(Status::BackendUnavailable),
        _ => Err(Status::NotFound),
    }
}

/// A request the guest sent, as the model remembers it.
#[derive(Debug)]
enum What {
    Get {
        key: usize,
        offset: u64,
        max_len: u64,
    },
    Put {
        key: usize,
        bytes: Vec<u8>,
    },
    Head {
        key: usize,
    },
    Delete {
        key: usize,
    },
    List {
        prefix: Option<&'static [u8]>,
        token: Option<Vec<u8>>,
        max: u32,
    },
    Flush {
        timeout_ms: u64,
    },
    Log,
    Http,
    Invoke {
        function: &'static [u8],
        input: Vec<u8>,
        asynchronous: bool,
        timeout_ms: u64,
    },
    Next {
        timeout_ms: u64,
        /// An earlier NEXT was unanswered when this one was sent.
        earlier: bool,
    },
    Complete {
        number: u64,
        outcome: Outcome,
        output: Vec<u8>,
        /// The invocation was running when this was sent.
        running: bool,
    },
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    sent: Sent,
    op: Op,
    what: What,
    /// The tick it was sent at.
    submitted: u64,
}

/// A PUT or DELETE of an allowed key: when it was sent, and from when it is known to have
/// taken effect (or to have had none).
#[derive(Debug)]
struct Mutation {
    seq: u64,
    key: String,
    submitted: u64,
    done: Option<u64>,
    write_behind: bool,
    /// Answered `OK` (a PUT's bytes).
    ok: Option<Vec<u8>>,
}

/// A queued invocation, as the node remembers it.
#[derive(Debug)]
struct Queued {
    number: u64,
    function: &'static str,
    async_durability: bool,
    input: Input,
    pending: PendingInvocation,
}

#[derive(Debug)]
enum Input {
    Bytes(Vec<u8>),
    Object(String),
}

/// An invocation the guest completed; the node waits for its result.
#[derive(Debug)]
struct Completed {
    seq: u64,
    outcome: Outcome,
    output: Vec<u8>,
    async_durability: bool,
    pending: Option<PendingInvocation>,
}

/// The harness's state: the backend's parts, the guest's outstanding requests, the model.
pub(crate) struct Harness<'r> {
    /// Only `Runtime::block_on` drives a current-thread runtime's tasks and timers.
    runtime: &'r tokio::runtime::Runtime,
    parts: Parts,
    report: Report,
    /// Advances at every request sent and every time the backend runs.
    tick: u64,
    seq: u64,
    outstanding: BTreeMap<usize, Pending>,
    model: BTreeMap<String, Vec<u8>>,
    mutations: Vec<Mutation>,
    /// The last LIST answer's token, with its prefix.
    last_token: Option<(Option<&'static [u8]>, Vec<u8>)>,
    queued: VecDeque<Queued>,
    running: BTreeMap<u64, Queued>,
    delivered: Vec<u64>,
    completed: Vec<Completed>,
    /// Invocations NEXT passed over because their input object could not be read.
    dropped: Vec<PendingInvocation>,
}

impl<'r> Harness<'r> {
    pub(crate) fn new(runtime: &'r tokio::runtime::Runtime, parts: Parts) -> Self {
        let mut model = BTreeMap::new();
        model.insert(scenario::OUTSIDE_OBJECT.to_owned(), pattern(0xEE, 300));
        if parts.options.seeded {
            model.insert("t/a".to_owned(), pattern(1, 100));
            model.insert("t/a/b".to_owned(), pattern(2, 5000));
            model.insert("t/b".to_owned(), Vec::new());
            model.insert("t/c/d/e".to_owned(), pattern(3, 1));
        }
        for (key, bytes) in &model {
            let path = object_store::path::Path::parse(key).expect("a valid path");
            let memory = parts.memory.clone();
            let payload = PutPayload::from(bytes.clone());
            runtime
                .block_on(async move { memory.put(&path, payload).await })
                .expect("the in-memory store takes it");
        }
        if parts.options.invoker {
            parts.engine.set_invoker(Some(Arc::new(FakeInvoker)));
        }
        Self {
            runtime,
            parts,
            report: Report::default(),
            tick: 0,
            seq: 0,
            outstanding: BTreeMap::new(),
            model,
            mutations: Vec::new(),
            last_token: None,
            queued: VecDeque::new(),
            running: BTreeMap::new(),
            delivered: Vec::new(),
            completed: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn session(&self) -> &Arc<Session> {
        &self.parts.session
    }

    /// Takes one step.
    pub(crate) fn step(&mut self, step: &Step) {
        self.report.steps += 1;
        match step.action {
            Action::Queue {
                input,
                object,
                async_durability,
                function,
            } => self.queue(input, object, async_durability, function),
            Action::Hint { key } => {
                let (bytes, class) = pick(&scenario::KEYS, key);
                match (class, std::str::from_utf8(bytes)) {
                    (KeyClass::Allowed, Ok(key)) => prefetch(self.session(), key),
                    // `Backend::hint` refuses it.
                    _ => self.report.skipped += 1,
                }
            }
            Action::Advance { ms } => {
                self.run_for(Duration::from_millis(pick(&scenario::ADVANCES_MS, ms)));
                return;
            }
            action => self.send(action),
        }
        if step.settle {
            self.run_for(Duration::from_millis(1));
        }
    }

    /// Queues an invocation as `Backend::invoke` does.
    fn queue(&mut self, input: u8, object: bool, async_durability: bool, function: u8) {
        let function = pick(&scenario::QUEUED_FUNCTIONS, function);
        let input = if object {
            let (bytes, class) = pick(&scenario::KEYS, input);
            match (class, std::str::from_utf8(bytes)) {
                (KeyClass::Allowed, Ok(key)) => {
                    prefetch(self.session(), key);
                    Input::Object(key.to_owned())
                }
                _ => {
                    // `Backend::invoke` refuses an input outside the tenant.
                    self.report.skipped += 1;
                    return;
                }
            }
        } else {
            Input::Bytes(pattern(input, scenario::length(input)))
        };
        let number = self.parts.engine.next_invocation();
        let (reply, result) = oneshot::channel();
        let invocation = Invocation {
            function: function.to_owned(),
            request_id: format!("request-{number}"),
            deadline_ms: number * 1000,
            async_durability,
            output_key: None,
            return_output: true,
        };
        let queued_input = match &input {
            Input::Bytes(bytes) => InvocationInput::Bytes(Bytes::from(bytes.clone())),
            Input::Object(key) => InvocationInput::Object(key.clone()),
        };
        self.session().invocations.push(QueuedInvocation {
            number,
            invocation,
            input: queued_input,
            reply,
        });
        self.queued.push_back(Queued {
            number,
            function,
            async_durability,
            input,
            pending: PendingInvocation {
                number,
                vm: self.session().vm.clone(),
                result,
            },
        });
    }

    /// Sends a guest request.
    fn send(&mut self, action: Action) {
        if !self.parts.guest.has_room() {
            self.run_for(Duration::from_millis(1));
        }
        let meta_room = |min: u32, extra: u8| min + pick(&scenario::META_EXTRA, extra);
        let key_of = |index: u8| pick(&scenario::KEYS, index).0;
        let key_index = |index: u8| usize::from(index) % scenario::KEYS.len();
        let buffer_count = |code: u8| usize::from(code % 4) + 1;
        let mut payload = Vec::new();
        let mut segments = 1;
        let mut meta: Option<Vec<u8>> = None;
        let (command, key, meta_capacity, capacity, buffers, what): (
            Command,
            Option<&[u8]>,
            u32,
            u32,
            usize,
            What,
        ) = match action {
            Action::Get {
                key,
                offset,
                max_len,
                capacity,
                buffers,
            } => {
                let offset = pick(&scenario::OFFSETS, offset);
                let max_len = pick(&scenario::MAX_LENS, max_len);
                (
                    Command::Get { offset, max_len },
                    Some(key_of(key)),
                    0,
                    pick(&scenario::CAPACITIES, capacity),
                    buffer_count(buffers),
                    What::Get {
                        key: key_index(key),
                        offset,
                        max_len,
                    },
                )
            }
            Action::Put {
                key,
                len,
                seed,
                segments: count,
                write_behind,
            } => {
                payload = pattern(seed, scenario::length(len));
                segments = usize::from(count % 4) + 1;
                (
                    Command::Put { write_behind },
                    Some(key_of(key)),
                    0,
                    0,
                    0,
                    What::Put {
                        key: key_index(key),
                        bytes: payload.clone(),
                    },
                )
            }
            Action::Head { key, meta } => (
                Command::Head,
                Some(key_of(key)),
                meta_room(nexus_ring::records::OBJECT_INFO_MAX_LEN, meta),
                0,
                0,
                What::Head {
                    key: key_index(key),
                },
            ),
            Action::Delete { key } => (
                Command::Delete,
                Some(key_of(key)),
                0,
                0,
                0,
                What::Delete {
                    key: key_index(key),
                },
            ),
            Action::List {
                prefix,
                token,
                max_entries,
                capacity,
                buffers,
            } => {
                let mut prefix = pick(&scenario::LIST_PREFIXES, prefix);
                let token = match pick(&scenario::LIST_TOKENS, token) {
                    Token::None => None,
                    Token::Bytes(bytes) => Some(bytes.to_vec()),
                    Token::Continue => match &self.last_token {
                        Some((last_prefix, token)) => {
                            prefix = *last_prefix;
                            Some(token.clone())
                        }
                        None => None,
                    },
                };
                meta.clone_from(&token);
                let max = pick(&scenario::LIST_MAX_ENTRIES, max_entries);
                (
                    Command::List { max_entries: max },
                    prefix,
                    nexus_ring::limits::MAX_TOKEN_LEN,
                    pick(&scenario::CAPACITIES, capacity),
                    buffer_count(buffers),
                    What::List { prefix, token, max },
                )
            }
            Action::Flush { timeout } => {
                let timeout_ms = pick(&scenario::TIMEOUTS_MS, timeout);
                (
                    Command::Flush { timeout_ms },
                    None,
                    nexus_ring::limits::MAX_KEY_LEN,
                    0,
                    0,
                    What::Flush { timeout_ms },
                )
            }
            Action::Log { level, len } => {
                payload = pattern(level, scenario::length(len).max(1));
                (
                    Command::Log {
                        level: LogLevel::ALL[usize::from(level) % LogLevel::ALL.len()],
                    },
                    None,
                    100,
                    0,
                    0,
                    What::Log,
                )
            }
            Action::Http {
                url,
                method,
                timeout,
                body,
                headers,
                capacity,
            } => {
                payload = pattern(body, scenario::length(body));
                meta = pick(&scenario::HTTP_HEADERS, headers).map(<[u8]>::to_vec);
                (
                    Command::Http {
                        method: HttpMethod::ALL[usize::from(method) % HttpMethod::ALL.len()],
                        timeout_ms: pick(&scenario::TIMEOUTS_MS, timeout),
                    },
                    Some(pick(&scenario::URLS, url)),
                    200,
                    pick(&scenario::CAPACITIES, capacity),
                    1,
                    What::Http,
                )
            }
            Action::Invoke {
                function,
                asynchronous,
                timeout,
                input,
                capacity,
            } => {
                payload = pattern(input, scenario::length(input));
                let function = pick(&scenario::FUNCTIONS, function);
                let timeout_ms = pick(&scenario::TIMEOUTS_MS, timeout);
                (
                    Command::Invoke {
                        timeout_ms,
                        asynchronous,
                    },
                    Some(function),
                    200,
                    pick(&scenario::CAPACITIES, capacity),
                    2,
                    What::Invoke {
                        function,
                        input: payload.clone(),
                        asynchronous,
                        timeout_ms,
                    },
                )
            }
            Action::Next {
                timeout,
                capacity,
                meta,
                buffers,
            } => {
                let timeout_ms = pick(&scenario::TIMEOUTS_MS, timeout);
                let earlier = self
                    .outstanding
                    .values()
                    .any(|p| matches!(p.what, What::Next { .. }));
                (
                    Command::Next { timeout_ms },
                    None,
                    meta_room(nexus_ring::records::INVOCATION_CONTEXT_MAX_LEN, meta),
                    pick(&scenario::CAPACITIES, capacity),
                    buffer_count(buffers),
                    What::Next {
                        timeout_ms,
                        earlier,
                    },
                )
            }
            Action::Complete { which, error, len } => {
                let mut number = if which >= 0xF0 || self.delivered.is_empty() {
                    pick(&scenario::BOGUS_INVOCATIONS, which)
                } else {
                    self.delivered[usize::from(which) % self.delivered.len()]
                };
                let completing = self
                    .outstanding
                    .values()
                    .any(|p| matches!(p.what, What::Complete { number: n, .. } if n == number));
                if completing {
                    // One COMPLETE of an invocation at a time: which of two wins is a race.
                    number = pick(&scenario::BOGUS_INVOCATIONS, which);
                }
                payload = pattern(len, scenario::length(len));
                let outcome = if error {
                    Outcome::Error
                } else {
                    Outcome::Success
                };
                (
                    Command::Complete {
                        invocation: number,
                        outcome,
                        stored: false,
                    },
                    None,
                    100,
                    0,
                    0,
                    What::Complete {
                        number,
                        outcome,
                        output: payload.clone(),
                        running: self.running.contains_key(&number),
                    },
                )
            }
            Action::Queue { .. } | Action::Hint { .. } | Action::Advance { .. } => {
                unreachable!("not a guest request")
            }
        };
        let outgoing = Outgoing {
            command,
            key,
            meta: meta.as_deref(),
            payload: &payload,
            segments,
            meta_capacity,
            capacity,
            buffers,
        };
        let Some(sent) = self.parts.guest.submit(&outgoing) else {
            self.report.skipped += 1;
            return;
        };
        self.tick += 1;
        self.seq += 1;
        if let What::Put { key, .. } | What::Delete { key } = &what {
            let (bytes, class) = scenario::KEYS[*key];
            if class == KeyClass::Allowed {
                self.mutations.push(Mutation {
                    seq: self.seq,
                    key: String::from_utf8(bytes.to_vec()).expect("allowed keys are UTF-8"),
                    submitted: self.tick,
                    done: None,
                    write_behind: matches!(command, Command::Put { write_behind: true }),
                    ok: None,
                });
            }
        }
        self.outstanding.insert(
            sent.slot,
            Pending {
                seq: self.seq,
                sent,
                op: command.op(),
                what,
                submitted: self.tick,
            },
        );
        // The kick: the backend drains the queue.
        self.parts.ring.process();
    }

    /// Lets the backend run until it is idle and the clock has moved by `duration`, then
    /// checks what it answered.
    fn run_for(&mut self, duration: Duration) {
        self.runtime.block_on(tokio::time::sleep(duration));
        self.tick += 1;
        let mut answered: Vec<(Pending, Answer)> = Vec::new();
        for (slot, used) in self.parts.guest.take_used() {
            let pending = self
                .outstanding
                .remove(&slot)
                .expect("the guest's outstanding request");
            let answer = self.parts.guest.read_answer(&pending.sent, used);
            answered.push((pending, answer));
        }
        answered.sort_by_key(|(pending, _)| pending.seq);
        for (pending, answer) in answered {
            self.report.count(pending.op, answer.header.status);
            self.check_order(&pending);
            self.check(pending, &answer);
        }
        self.check_bounds();
        if self.parts.engine.uploads_pending() == 0 {
            // Every acknowledged upload is done.
            let tick = self.tick;
            for m in &mut self.mutations {
                if m.ok.is_some() && m.done.is_none() {
                    m.done = Some(tick);
                }
            }
        }
        self.poll_results();
    }

    /// An answered request on an allowed key: no earlier request on the key is unanswered
    /// (they run in arrival order).
    fn check_order(&self, pending: &Pending) {
        let Some(key) = keyed(&pending.what) else {
            return;
        };
        if scenario::KEYS[key].1 != KeyClass::Allowed {
            return;
        }
        if let Some(earlier) = self.outstanding.values().find(|p| {
            p.seq < pending.seq
                && keyed(&p.what).is_some_and(|k| scenario::KEYS[k].0 == scenario::KEYS[key].0)
        }) {
            panic!(
                "request {} ({}) on {:?} was answered before the earlier request {} ({}) on it",
                pending.sent.id,
                pending.op,
                key_text(key),
                earlier.sent.id,
                earlier.op
            );
        }
    }

    /// Whether no write of `key` overlapped the request `pending` (sent at its tick,
    /// answered by now).
    fn stable(&self, key: &str, pending: &Pending) -> bool {
        !self.mutations.iter().any(|m| {
            m.key == key && m.submitted < self.tick && m.done.is_none_or(|d| d > pending.submitted)
        })
    }

    fn mutation(&mut self, seq: u64) -> Option<&mut Mutation> {
        self.mutations.iter_mut().find(|m| m.seq == seq)
    }

    fn check(&mut self, pending: Pending, answer: &Answer) {
        let status = answer.header.status;
        let id = pending.sent.id;
        let context = format!("request {id} ({}): {:?}", pending.op, answer.header);
        match &pending.what {
            What::Get {
                key,
                offset,
                max_len,
            } => {
                if let Some(expected) = refusal(*key) {
                    assert_eq!(status, expected, "{context}");
                    return;
                }
                match self.model.get(&key_text(*key)) {
                    None => assert_eq!(status, Status::NotFound, "{context}"),
                    Some(value) => {
                        assert_eq!(status, Status::Ok, "{context}");
                        let size = value.len() as u64;
                        let n = get_length(size, *offset, *max_len, pending.sent.capacity);
                        assert_eq!(answer.header.total, size, "{context}: total");
                        assert_eq!(answer.header.payload_len, n, "{context}: bytes read");
                        let start = (*offset).min(size) as usize;
                        assert!(
                            answer.payload[..] == value[start..start + n as usize],
                            "{context}: GET {} returned other bytes than were stored",
                            key_text(*key)
                        );
                    }
                }
            }
            What::Put { key, bytes } => {
                let tick = self.tick;
                let mutation = self.mutation(pending.seq).map(|m| {
                    if status.is_ok() {
                        m.ok = Some(bytes.clone());
                    }
                    if !status.is_ok() || !m.write_behind {
                        m.done = Some(tick);
                    }
                });
                if let Some(expected) = refusal(*key) {
                    assert_eq!(status, expected, "{context}");
                    return;
                }
                assert!(mutation.is_some());
                assert_eq!(status, Status::Ok, "{context}: PUT {}", key_text(*key));
                self.model.insert(key_text(*key), bytes.clone());
            }
            What::Head { key } => {
                if let Some(expected) = refusal(*key) {
                    assert_eq!(status, expected, "{context}");
                    return;
                }
                match self.model.get(&key_text(*key)) {
                    None => assert_eq!(status, Status::NotFound, "{context}"),
                    Some(value) => {
                        assert_eq!(status, Status::Ok, "{context}");
                        let entry = ObjectEntry::decode(&answer.meta)
                            .unwrap_or_else(|e| panic!("{context}: bad HEAD record: {e}"));
                        assert_eq!(entry.size, value.len() as u64, "{context}");
                        assert_eq!(answer.header.total, value.len() as u64, "{context}");
                        assert_eq!(entry.key, "", "{context}");
                    }
                }
            }
            What::Delete { key } => {
                let tick = self.tick;
                if let Some(m) = self.mutation(pending.seq) {
                    m.done = Some(tick);
                }
                if let Some(expected) = refusal(*key) {
                    assert_eq!(status, expected, "{context}");
                    return;
                }
                assert_eq!(status, Status::Ok, "{context}");
                self.model.remove(&key_text(*key));
            }
            What::List { prefix, token, max } => {
                self.check_list(&pending, answer, *prefix, token.as_deref(), *max, &context);
            }
            What::Flush { timeout_ms } => match status {
                Status::Ok => self.flushed(pending.seq, &context),
                Status::Timeout => assert!(*timeout_ms > 0, "{context}: FLUSH without timeout"),
                _ => panic!("{context}: FLUSH answered {status:?}"),
            },
            What::Log => {
                let (burst, _) = pick(&scenario::LOG_LIMITS, self.parts.options.log);
                match status {
                    Status::Ok => assert!(burst > 0, "{context}: a burst of 0 admits nothing"),
                    Status::Throttled => {}
                    _ => panic!("{context}: LOG answered {status:?}"),
                }
            }
            What::Http => assert!(
                matches!(status, Status::InvalidRequest | Status::PermissionDenied),
                "{context}: HTTP with an empty allow-list"
            ),
            What::Invoke {
                function,
                input,
                asynchronous,
                timeout_ms,
            } => self.check_invoke(
                answer,
                (function, input),
                *asynchronous,
                *timeout_ms,
                pending.sent.capacity,
                &context,
            ),
            What::Next {
                timeout_ms,
                earlier,
            } => self.check_next(&pending, answer, *timeout_ms, *earlier, &context),
            What::Complete {
                number,
                outcome,
                output,
                running,
            } => {
                if !running {
                    assert_eq!(status, Status::NotFound, "{context}");
                    return;
                }
                assert_eq!(status, Status::Ok, "{context}");
                let queued = self
                    .running
                    .remove(number)
                    .expect("a running invocation completes once");
                self.completed.push(Completed {
                    seq: pending.seq,
                    outcome: *outcome,
                    output: output.clone(),
                    async_durability: queued.async_durability,
                    pending: Some(queued.pending),
                });
            }
        }
    }

    fn check_list(
        &mut self,
        pending: &Pending,
        answer: &Answer,
        prefix: Option<&[u8]>,
        token: Option<&[u8]>,
        max: u32,
        context: &str,
    ) {
        let status = answer.header.status;
        let prefix = match prefix {
            None => Ok(scenario::TENANT_PREFIX),
            Some(bytes) => std::str::from_utf8(bytes),
        };
        let Ok(prefix) = prefix else {
            assert_eq!(status, Status::InvalidRequest, "{context}");
            return;
        };
        if check_prefix(prefix).is_err() {
            assert_eq!(status, Status::InvalidRequest, "{context}");
            return;
        }
        if !prefix.starts_with(scenario::TENANT_PREFIX) {
            assert_eq!(status, Status::PermissionDenied, "{context}");
            return;
        }
        let base = &prefix[..prefix.rfind('/').map_or(0, |end| end + 1)];
        let token = match token.map(std::str::from_utf8) {
            None => None,
            Some(Ok(token)) if Resume::valid_token(token) && token.starts_with(base) => Some(token),
            Some(_) => {
                assert_eq!(status, Status::InvalidRequest, "{context}: a bad token");
                return;
            }
        };
        if token.is_some_and(|token| token.ends_with('/')) {
            // Directory tokens come from the file store's walk; an S3 listing refuses them.
            assert_eq!(
                status,
                Status::InvalidRequest,
                "{context}: a directory token"
            );
            return;
        }
        let resume = Resume::parse(token);
        let expected: Vec<(&String, &Vec<u8>)> = self
            .model
            .iter()
            .filter(|(key, _)| key.starts_with(prefix) && resume.before_key(key))
            .collect();
        if status == Status::TooLarge {
            let needed = answer.header.total;
            assert!(
                needed > u64::from(pending.sent.capacity),
                "{context}: TOO_LARGE for a page that fits"
            );
            return;
        }
        assert_eq!(status, Status::Ok, "{context}");
        let page = EntryList::decode(&answer.payload)
            .unwrap_or_else(|e| panic!("{context}: bad LIST page: {e}"));
        let entries: Vec<(String, u64)> = page
            .iter()
            .map(|entry| (entry.key.to_owned(), entry.size))
            .collect();
        let limit = if max == 0 {
            nexus_ring::limits::MAX_LIST_ENTRIES
        } else {
            max
        };
        assert!(entries.len() <= limit as usize, "{context}: more than max");
        let next = if answer.meta.is_empty() {
            None
        } else {
            Some(
                String::from_utf8(answer.meta.clone())
                    .unwrap_or_else(|_| panic!("{context}: a token that is not UTF-8")),
            )
        };
        for pair in entries.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{context}: keys out of order");
        }
        for (key, size) in &entries {
            assert!(
                key.starts_with(prefix) && resume.before_key(key),
                "{context}: {key} is not in the listing after {token:?}"
            );
            if self.stable(key, pending) {
                let value = self
                    .model
                    .get(key)
                    .unwrap_or_else(|| panic!("{context}: LIST shows {key}, which is not stored"));
                assert_eq!(*size, value.len() as u64, "{context}: size of {key}");
            }
        }
        if let Some(next) = &next {
            assert!(
                Resume::valid_token(next) && next.starts_with(base),
                "{context}: the next token {next:?} would be refused"
            );
            match entries.last() {
                Some((last, _)) => assert!(
                    !Resume::parse(Some(next)).before_key(last),
                    "{context}: the token {next:?} comes before the page's last key"
                ),
                None => assert!(
                    token.is_none_or(|token| next.as_str() > token),
                    "{context}: a page without entries makes no progress"
                ),
            }
        }
        let resumes = Resume::parse(next.as_deref());
        for (key, _) in expected {
            if entries.iter().any(|(listed, _)| listed == key) || !self.stable(key, pending) {
                continue;
            }
            assert!(
                next.is_some() && resumes.before_key(key),
                "{context}: LIST skipped {key} (next token {next:?})"
            );
        }
        self.last_token = next.map(|next| {
            let prefix = match &pending.what {
                What::List { prefix, .. } => *prefix,
                _ => None,
            };
            (prefix, next.into_bytes())
        });
    }

    /// FLUSH `seq` answered OK: every write-behind PUT acknowledged before it is durable.
    fn flushed(&mut self, seq: u64, context: &str) {
        let tick = self.tick;
        for m in &mut self.mutations {
            if m.seq < seq && m.ok.is_some() {
                m.done = Some(m.done.map_or(tick, |d| d.min(tick)));
            }
        }
        self.check_durable(seq, context);
    }

    /// Every write-behind PUT sent before `seq` and acknowledged, of a key nothing has been
    /// sent to since, is in the store.
    fn check_durable(&self, seq: u64, context: &str) {
        for m in &self.mutations {
            let Some(bytes) = &m.ok else {
                continue;
            };
            let later = self
                .mutations
                .iter()
                .any(|other| other.key == m.key && other.seq > m.seq);
            if !m.write_behind || m.seq >= seq || later {
                continue;
            }
            let stored = self.read_store(&m.key);
            assert!(
                stored.as_deref() == Some(&bytes[..]),
                "{context}: the write-behind PUT of {} acknowledged before it is not in the \
                 store",
                m.key
            );
        }
    }

    fn read_store(&self, key: &str) -> Option<Vec<u8>> {
        let path = object_store::path::Path::parse(key).ok()?;
        let memory = self.parts.memory.clone();
        self.runtime.block_on(async move {
            let got = memory.get(&path).await.ok()?;
            got.bytes().await.ok().map(|b| b.to_vec())
        })
    }

    fn check_invoke(
        &self,
        answer: &Answer,
        (function, input): (&[u8], &[u8]),
        asynchronous: bool,
        timeout_ms: u64,
        capacity: u32,
        context: &str,
    ) {
        let status = answer.header.status;
        let Ok(function) = std::str::from_utf8(function) else {
            assert_eq!(status, Status::InvalidRequest, "{context}");
            return;
        };
        if !self.parts.options.invoker {
            assert_eq!(status, Status::BackendUnavailable, "{context}");
            return;
        }
        let timeout = match timeout_ms {
            0 => crate::ops::DEFAULT_INVOKE_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        if function == "slow" && timeout < SLOW {
            assert_eq!(status, Status::Timeout, "{context}");
            return;
        }
        match invoke_expected(function, input) {
            Err(expected) => assert_eq!(status, expected, "{context}"),
            Ok(_) if asynchronous => {
                assert_eq!(status, Status::Ok, "{context}");
                assert_eq!(answer.header.payload_len, 0, "{context}");
            }
            Ok((outcome, output)) => {
                assert_eq!(status, Status::Ok, "{context}");
                let n = output.len().min(capacity as usize);
                assert_eq!(answer.header.total, output.len() as u64, "{context}");
                assert_eq!(answer.header.detail, outcome.code(), "{context}");
                assert!(answer.payload == output[..n], "{context}: INVOKE result");
            }
        }
    }

    fn check_next(
        &mut self,
        pending: &Pending,
        answer: &Answer,
        timeout_ms: u64,
        earlier: bool,
        context: &str,
    ) {
        let status = answer.header.status;
        let throttled = pick(&scenario::IN_FLIGHT, self.parts.options.in_flight) < SLOTS as u32;
        if earlier && !throttled {
            assert_eq!(status, Status::InvalidRequest, "{context}: a second NEXT");
            return;
        }
        match status {
            Status::Ok => {}
            Status::InvalidRequest => {
                assert!(earlier, "{context}: NEXT refused with no other outstanding");
                return;
            }
            Status::Timeout => {
                assert!(timeout_ms > 0, "{context}: NEXT without timeout timed out");
                return;
            }
            Status::TooLarge => {
                assert!(
                    answer.header.total > u64::from(pending.sent.capacity),
                    "{context}: TOO_LARGE for an input that fits"
                );
                return;
            }
            Status::BackendUnavailable => {
                assert!(
                    self.queued
                        .iter()
                        .any(|q| matches!(q.input, Input::Object(_))),
                    "{context}: no input object to fail"
                );
                return;
            }
            _ => panic!("{context}: NEXT answered {status:?}"),
        }
        let context_record = InvocationContext::decode(&answer.meta)
            .unwrap_or_else(|e| panic!("{context}: bad invocation context: {e}"));
        let number = context_record.invocation;
        let position = self
            .queued
            .iter()
            .position(|q| q.number == number)
            .unwrap_or_else(|| panic!("{context}: invocation {number} was not queued"));
        for passed in self.queued.drain(..position).collect::<Vec<_>>() {
            assert!(
                matches!(passed.input, Input::Object(_)),
                "{context}: invocation {} with its input in hand was passed over",
                passed.number
            );
            self.dropped.push(passed.pending);
        }
        let queued = self.queued.pop_front().expect("found above");
        assert_eq!(context_record.function, queued.function, "{context}");
        assert_eq!(
            context_record.request_id,
            format!("request-{number}"),
            "{context}"
        );
        assert_eq!(context_record.deadline_ms, number * 1000, "{context}");
        assert_eq!(
            context_record.async_durability, queued.async_durability,
            "{context}"
        );
        assert_eq!(
            answer.header.total,
            u64::from(answer.header.payload_len),
            "{context}: the whole input"
        );
        match &queued.input {
            Input::Bytes(bytes) => assert!(answer.payload == *bytes, "{context}: NEXT input"),
            Input::Object(key) => {
                if self.stable(key, pending) {
                    let value = self.model.get(key).unwrap_or_else(|| {
                        panic!("{context}: delivered the missing object {key} as input")
                    });
                    assert!(answer.payload == *value, "{context}: NEXT input from {key}");
                }
            }
        }
        self.delivered.push(number);
        self.running.insert(number, queued);
    }

    /// Results the node received: what the guest reported, and (unless the caller accepted
    /// asynchronous durability) only once the uploads before the COMPLETE are durable.
    fn poll_results(&mut self) {
        let mut durable_before = Vec::new();
        for completed in &mut self.completed {
            let Some(pending) = completed.pending.as_mut() else {
                continue;
            };
            let Some(result) = pending.now_or_never() else {
                continue;
            };
            let result = result.unwrap_or_else(|e| panic!("an invocation failed: {e}"));
            assert_eq!(result.outcome, completed.outcome, "the reported outcome");
            assert!(result.output == completed.output, "the reported result");
            completed.pending = None;
            self.report.invocations_completed += 1;
            if !completed.async_durability {
                durable_before.push(completed.seq);
            }
        }
        for seq in durable_before {
            self.check_durable(seq, "an invocation reported complete");
        }
    }

    fn check_bounds(&self) {
        let session = self.session();
        let limits = &session.limits;
        let write_behind = &session.write_behind;
        assert!(
            write_behind.requests() <= limits.write_behind_requests,
            "{} write-behind uploads pending, the bound is {}",
            write_behind.requests(),
            limits.write_behind_requests
        );
        assert!(
            write_behind.bytes() <= limits.write_behind_bytes,
            "{} write-behind bytes pending, the bound is {}",
            write_behind.bytes(),
            limits.write_behind_bytes
        );
        let (held, share) = session.staging.usage();
        assert!(
            held <= share,
            "staging: {held} held of a {share}-byte share"
        );
        let (held, total) = session.staging.global_usage();
        assert!(
            held <= total,
            "staging: {held} held of a {total}-byte budget"
        );
        assert!(
            session.in_flight() <= limits.requests_in_flight.max(1) as usize,
            "{} requests in flight, the limit is {}",
            session.in_flight(),
            limits.requests_in_flight
        );
    }

    /// Lets every timeout run out, then checks that everything was answered and given back,
    /// and that the store holds exactly the model.
    pub(crate) fn finish(mut self) -> Report {
        self.run_for(FINAL_ADVANCE);
        let session = self.session().clone();
        let limit = session.limits.requests_in_flight.max(1) as usize;
        // A NEXT waiting without a timeout holds its request slot: with a limit of one, the
        // requests after it wait in the ring (the guest's own doing).
        let first = self.outstanding.values().min_by_key(|p| p.seq);
        let blocked_after = match first {
            Some(p) if limit == 1 && matches!(p.what, What::Next { timeout_ms: 0, .. }) => p.seq,
            _ => u64::MAX,
        };
        for pending in self.outstanding.values() {
            assert!(
                matches!(pending.what, What::Next { timeout_ms: 0, .. })
                    || pending.seq > blocked_after,
                "request {} ({}) was never answered",
                pending.sent.id,
                pending.op
            );
        }
        let engine = &self.parts.engine;
        assert_eq!(engine.uploads_pending(), 0, "uploads still pending");
        assert_eq!(
            session.write_behind.requests(),
            0,
            "write-behind slots held"
        );
        assert_eq!(session.write_behind.bytes(), 0, "write-behind bytes held");
        assert_eq!(session.staging.usage().0, 0, "staging room held by the VM");
        assert_eq!(session.staging.global_usage().0, 0, "staging room held");
        let in_flight = self.outstanding.len().min(limit);
        assert_eq!(session.in_flight(), in_flight, "requests in flight");
        assert_eq!(engine.in_flight(), in_flight as u64, "requests in flight");
        for completed in &self.completed {
            assert!(
                completed.pending.is_none(),
                "a completed invocation was never reported"
            );
        }
        for dropped in self.dropped.drain(..) {
            let result = dropped
                .now_or_never()
                .expect("a passed-over invocation is answered");
            assert!(
                matches!(result, Err(Error::InputUnavailable { .. })),
                "a passed-over invocation: {result:?}"
            );
        }
        // The store holds exactly the model: nothing outside the prefix was touched.
        let memory = self.parts.memory.clone();
        let stored: Vec<String> = self.runtime.block_on(async move {
            use futures::StreamExt;
            memory
                .list(None)
                .map(|meta| meta.expect("in-memory listing").location.to_string())
                .collect()
                .await
        });
        let modelled: Vec<String> = self.model.keys().cloned().collect();
        assert_eq!(stored, modelled, "the store's keys against the model");
        for (key, value) in &self.model {
            assert!(
                self.read_store(key).as_ref() == Some(value),
                "the store's {key} against the model"
            );
        }
        self.report
    }
}

/// The key a request is on (GET, PUT, HEAD, DELETE).
fn keyed(what: &What) -> Option<usize> {
    match what {
        What::Get { key, .. }
        | What::Put { key, .. }
        | What::Head { key }
        | What::Delete { key } => Some(*key),
        _ => None,
    }
}

/// The text of allowed key `index`.
fn key_text(index: usize) -> String {
    String::from_utf8_lossy(scenario::KEYS[index].0).into_owned()
}

/// The status a request on key `index` must get if the key is refused.
fn refusal(index: usize) -> Option<Status> {
    let (bytes, class) = scenario::KEYS[index];
    match class {
        KeyClass::Allowed => {
            let key = std::str::from_utf8(bytes).expect("allowed keys are UTF-8");
            assert!(check_key(key).is_ok(), "table: {key} is valid");
            None
        }
        KeyClass::Outside => Some(Status::PermissionDenied),
        KeyClass::Invalid => Some(Status::InvalidRequest),
    }
}

/// Prefetches `key` as `Backend::hint` does: in order with the VM's requests on the key.
fn prefetch(session: &Arc<Session>, key: &str) {
    let Some(slot) = session.prefetch.begin(key) else {
        return;
    };
    let mut turn = session.key_order.take_turn(key);
    let session = session.clone();
    let key = key.to_owned();
    session.engine.runtime.clone().spawn(async move {
        turn.ready().await;
        let limit = session.prefetch.limit();
        let fetched = session.engine.store.fetch(&key, limit).await.ok();
        session.prefetch.complete(slot, fetched);
        drop(turn);
    });
}
