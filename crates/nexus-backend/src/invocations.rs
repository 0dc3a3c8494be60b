// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VM's invocations: queued by the node ([`Backend::invoke`](crate::Backend::invoke))
//! until the VM's `NEXT` takes one, running until its `COMPLETE`, the one `NEXT` the VM may
//! have outstanding, and when each invocation was delivered and completed (for the control
//! socket's timings). The types the node sees are in `invoke.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use crate::error::{Error, Result};
use crate::invoke::{Invocation, InvocationInput, InvocationResult};
use crate::sync::lock;

/// Delivery and completion times kept for the control socket; past it, they are cleared.
const TIMES_KEPT: usize = 1024;

/// An invocation waiting for the VM's `NEXT`.
#[derive(Debug)]
pub(crate) struct QueuedInvocation {
    pub(crate) number: u64,
    pub(crate) invocation: Invocation,
    pub(crate) input: InvocationInput,
    pub(crate) reply: oneshot::Sender<Result<InvocationResult>>,
}

/// An invocation the VM has taken, waiting for its `COMPLETE`.
#[derive(Debug)]
pub(crate) struct RunningInvocation {
    pub(crate) invocation: Invocation,
    pub(crate) reply: oneshot::Sender<Result<InvocationResult>>,
}

/// A VM's invocations.
#[derive(Debug, Default)]
pub(crate) struct Invocations {
    queue: Mutex<VecDeque<QueuedInvocation>>,
    arrived: Notify,
    running: Mutex<HashMap<u64, RunningInvocation>>,
    /// A `NEXT` is parked (see [`claim_next`](Self::claim_next)).
    pub(crate) next_outstanding: AtomicBool,
    /// The invocation the VM runs now (0: none), for log lines.
    pub(crate) current: AtomicU64,
    /// When recent invocations were delivered (NEXT answered) and completed, by number
    /// (bounded: cleared when it grows past [`TIMES_KEPT`] entries).
    times: Mutex<HashMap<u64, (Instant, Option<Instant>)>>,
    /// The VM's ID once the backend panicked serving it ([`fail_panicked`](Self::fail_panicked)):
    /// it takes no invocation any more, and is never parked. Set under the queue's lock.
    failed: std::sync::OnceLock<String>,
}

impl Invocations {
    /// Queues an invocation for the VM's next `NEXT`.
    pub(crate) fn push(&self, queued: QueuedInvocation) {
        let mut queue = lock(&self.queue);
        if let Some(vm) = self.failed.get() {
            let _ = queued.reply.send(Err(Error::HandlerPanicked(vm.clone())));
            return;
        }
        queue.push_back(queued);
        drop(queue);
        self.arrived.notify_one();
    }

    /// Takes the first queued invocation whose caller still waits.
    pub(crate) fn pop(&self) -> Option<QueuedInvocation> {
        let mut queue = lock(&self.queue);
        while let Some(queued) = queue.pop_front() {
            if !queued.reply.is_closed() {
                return Some(queued);
            }
        }
        None
    }

    /// Puts an invocation back at the head of the queue (its input did not fit).
    pub(crate) fn push_front(&self, queued: QueuedInvocation) {
        lock(&self.queue).push_front(queued);
    }

    /// Resolves when an invocation may have been queued.
    pub(crate) async fn arrival(&self) {
        self.arrived.notified().await;
    }

    /// Claims the VM's one outstanding `NEXT` for a `NEXT` being dispatched, so that of two
    /// `NEXT`s the one that arrived first parks and the later one is refused, whichever task
    /// the runtime runs first. `None` if another `NEXT` holds it; the claim lasts as long as
    /// the returned guard.
    pub(crate) fn claim_next(self: &Arc<Self>) -> Option<NextClaim> {
        let taken = self.next_outstanding.swap(true, Ordering::AcqRel);
        (!taken).then(|| NextClaim {
            invocations: Arc::clone(self),
        })
    }

    /// The VM took an invocation.
    pub(crate) fn start(&self, number: u64, running: RunningInvocation) {
        {
            let mut times = lock(&self.times);
            if times.len() >= TIMES_KEPT {
                times.clear();
            }
            times.insert(number, (Instant::now(), None));
        }
        lock(&self.running).insert(number, running);
        self.current.store(number, Ordering::Relaxed);
    }

    /// The VM completed invocation `number`; `None` if it is not running.
    pub(crate) fn finish(&self, number: u64) -> Option<RunningInvocation> {
        let running = lock(&self.running).remove(&number)?;
        if let Some((_, completed)) = lock(&self.times).get_mut(&number) {
            *completed = Some(Instant::now());
        }
        let _ = self
            .current
            .compare_exchange(number, 0, Ordering::Relaxed, Ordering::Relaxed);
        Some(running)
    }

    /// When invocation `number` was delivered and completed (forgets them).
    pub(crate) fn take_times(&self, number: u64) -> Option<(Instant, Option<Instant>)> {
        lock(&self.times).remove(&number)
    }

    /// Invocations queued and not yet taken by a `NEXT` whose caller still waits.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.queue)
            .iter()
            .filter(|queued| !queued.reply.is_closed())
            .count()
    }

    /// Whether a `NEXT` is parked waiting for an invocation (none queued, none running).
    pub(crate) fn parked(&self) -> bool {
        self.next_outstanding.load(Ordering::Acquire)
            && self.failed.get().is_none()
            && lock(&self.queue).is_empty()
            && lock(&self.running).is_empty()
    }

    /// VM `vm` went away: every queued and running invocation fails.
    pub(crate) fn fail_all(&self, vm: &str) {
        self.fail_with(|| Error::VmDetached(vm.to_owned()));
    }

    /// The backend panicked while serving VM `vm`: every queued and running invocation fails.
    /// It takes no invocation any more ([`push`](Self::push) fails them at once) and is
    /// never [`parked`](Self::parked) again.
    pub(crate) fn fail_panicked(&self, vm: &str) {
        {
            let _queue = lock(&self.queue);
            let _ = self.failed.set(vm.to_owned());
        }
        self.fail_with(|| Error::HandlerPanicked(vm.to_owned()));
    }

    /// VM `vm` was reset: every queued and running invocation fails, and their times are
    /// forgotten. Returns how many failed. A parked `NEXT` stays parked: the VM's next
    /// invocation is the first after the reset.
    pub(crate) fn reset(&self, vm: &str) -> usize {
        let failed = self.fail_with(|| Error::VmReset(vm.to_owned()));
        lock(&self.times).clear();
        let _ = self.current.swap(0, Ordering::Relaxed);
        failed
    }

    /// Fails every queued and running invocation with `error()`; how many there were.
    fn fail_with(&self, error: impl Fn() -> Error) -> usize {
        let queued: Vec<_> = lock(&self.queue).drain(..).collect();
        let running: Vec<_> = lock(&self.running).drain().collect();
        let failed = queued.len() + running.len();
        for q in queued {
            let _ = q.reply.send(Err(error()));
        }
        for (_, r) in running {
            let _ = r.reply.send(Err(error()));
        }
        failed
    }
}

/// The VM's one outstanding `NEXT` (see [`Invocations::claim_next`]), released on drop.
#[derive(Debug)]
pub(crate) struct NextClaim {
    invocations: Arc<Invocations>,
}

impl Drop for NextClaim {
    fn drop(&mut self) {
        self.invocations
            .next_outstanding
            .store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn queued(
        number: u64,
    ) -> (
        QueuedInvocation,
        oneshot::Receiver<Result<InvocationResult>>,
    ) {
        let (reply, result) = oneshot::channel();
        let invocation = Invocation {
            function: "f".into(),
            request_id: String::new(),
            deadline_ms: 0,
            async_durability: false,
            output_key: None,
            return_output: true,
        };
        let queued = QueuedInvocation {
            number,
            invocation,
            input: InvocationInput::Bytes(Bytes::new()),
            reply,
        };
        (queued, result)
    }

    #[test]
    fn one_next_holds_the_claim_and_parks_only_with_nothing_to_do() {
        let invocations = Arc::new(Invocations::default());
        let claim = invocations.claim_next().expect("free");
        assert!(invocations.claim_next().is_none(), "one NEXT at a time");
        assert!(invocations.parked());
        let (first, _waiting) = queued(1);
        invocations.push(first);
        assert!(!invocations.parked(), "an invocation is queued");
        let taken = invocations.pop().unwrap();
        invocations.start(
            taken.number,
            RunningInvocation {
                invocation: taken.invocation,
                reply: taken.reply,
            },
        );
        assert!(!invocations.parked(), "an invocation is running");
        assert!(invocations.finish(1).is_some());
        assert!(invocations.parked());
        drop(claim);
        assert!(!invocations.parked());
        assert!(invocations.claim_next().is_some(), "released on drop");
    }

    #[test]
    fn withdrawn_invocations_are_skipped_and_a_detach_fails_the_rest() {
        let invocations = Invocations::default();
        let (withdrawn, caller) = queued(1);
        let (kept, mut waiting) = queued(2);
        invocations.push(withdrawn);
        invocations.push(kept);
        drop(caller);
        assert_eq!(invocations.queued(), 1);
        let next = invocations.pop().unwrap();
        assert_eq!(next.number, 2);
        invocations.push_front(next);
        invocations.fail_all("vm-a");
        assert!(matches!(
            waiting.try_recv(),
            Ok(Err(Error::VmDetached(vm))) if vm == "vm-a"
        ));
        assert_eq!(invocations.queued(), 0);
    }

    #[test]
    fn a_reset_fails_queued_and_running_invocations_and_keeps_a_parked_next() {
        let invocations = Arc::new(Invocations::default());
        let (running, mut running_result) = queued(1);
        invocations.push(running);
        let taken = invocations.pop().unwrap();
        invocations.start(
            taken.number,
            RunningInvocation {
                invocation: taken.invocation,
                reply: taken.reply,
            },
        );
        let (waiting, mut waiting_result) = queued(2);
        invocations.push(waiting);
        let claim = invocations.claim_next().expect("free");
        assert_eq!(invocations.reset("vm-a"), 2);
        for result in [&mut running_result, &mut waiting_result] {
            assert!(matches!(
                result.try_recv(),
                Ok(Err(Error::VmReset(vm))) if vm == "vm-a"
            ));
        }
        assert_eq!(invocations.queued(), 0);
        assert!(
            invocations.finish(1).is_none(),
            "its COMPLETE finds nothing"
        );
        assert!(invocations.take_times(1).is_none());
        assert!(invocations.parked(), "the NEXT stays parked");
        drop(claim);
    }

    #[test]
    fn a_panic_fails_every_invocation_and_the_vm_takes_no_more() {
        let invocations = Arc::new(Invocations::default());
        let _claim = invocations.claim_next().expect("free");
        let (first, mut first_result) = queued(1);
        invocations.push(first);
        invocations.fail_panicked("vm-a");
        assert!(matches!(
            first_result.try_recv(),
            Ok(Err(Error::HandlerPanicked(vm))) if vm == "vm-a"
        ));
        assert!(!invocations.parked(), "a failed VM is never parked");
        let (later, mut later_result) = queued(2);
        invocations.push(later);
        assert!(matches!(
            later_result.try_recv(),
            Ok(Err(Error::HandlerPanicked(vm))) if vm == "vm-a"
        ));
        assert!(invocations.pop().is_none());
    }
}
