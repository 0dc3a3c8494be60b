// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Each VM's share of the backend's CPU.
//!
//! Valid requests can be expensive in bulk: a flood of cheap ones (LOGs, refused HTTP calls),
//! or of ones the kernel makes costly (synchronous PUTs and their `fsync`s). So the backend
//! meters the CPU time it spends for each VM — the event loop's work on its queue (kicks,
//! pops, decoding), every poll of its requests' tasks, and the blocking file I/O they run —
//! with the calling thread's CPU clock (user and system time: an `fsync`'s kernel work counts).
//! Each VM has a budget of [`VmLimits::cpu_millis_per_second`](crate::VmLimits) milliseconds
//! a second, with one second's worth as burst. A VM that has spent its budget is served no new
//! request until it is paid back: its chains wait in the ring and its kick is not watched, so
//! it costs nothing while it waits. A well-behaved function uses a small part of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

tokio::task_local! {
    /// The share the current task's CPU time is charged to (set by [`Metered`]).
    static CHARGED_TO: Arc<CpuShare>;
}

/// The calling thread's CPU time so far (user + system).
pub(crate) fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec into `now`, which we own; the thread CPU
    // clock always exists.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// One VM's CPU budget (see the module docs).
#[derive(Debug)]
pub(crate) struct CpuShare {
    /// CPU seconds a second.
    rate: f64,
    /// CPU seconds of burst.
    burst: f64,
    /// Spendable CPU seconds (negative: in debt), and when that was so.
    state: Mutex<(f64, Instant)>,
    /// Everything charged so far.
    used: Mutex<Duration>,
}

impl CpuShare {
    /// A budget of `millis_per_second` milliseconds of CPU a second (at least 1).
    pub(crate) fn new(millis_per_second: u32) -> Self {
        let rate = f64::from(millis_per_second.max(1)) / 1000.0;
        Self {
            rate,
            burst: rate,
            state: Mutex::new((rate, Instant::now())),
            used: Mutex::new(Duration::ZERO),
        }
    }

    /// Charges `spent` CPU time.
    pub(crate) fn charge(&self, spent: Duration) {
        if spent.is_zero() {
            return;
        }
        lock(&self.state).0 -= spent.as_secs_f64();
        *lock(&self.used) += spent;
    }

    /// How long until the VM may be served again (zero: now).
    pub(crate) fn wait(&self) -> Duration {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let (tokens, at) = &mut *state;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Charges `spent` unless the current task is [`Metered`] (whose polls are charged
    /// already).
    pub(crate) fn charge_outside_tasks(&self, spent: Duration) {
        if CHARGED_TO.try_with(|_| ()).is_err() {
            self.charge(spent);
        }
    }

    /// CPU time charged so far.
    #[cfg(test)]
    pub(crate) fn used(&self) -> Duration {
        *lock(&self.used)
    }

    /// Runs `f` (on a blocking thread) charging its CPU time to the current task's share,
    /// if the task is [`Metered`].
    pub(crate) fn charging_blocking<T>(f: impl FnOnce() -> T) -> impl FnOnce() -> T {
        let share = CHARGED_TO.try_with(Arc::clone).ok();
        move || {
            let start = thread_cpu();
            let value = f();
            if let Some(share) = share {
                share.charge(thread_cpu().saturating_sub(start));
            }
            value
        }
    }
}

/// A future whose polls are charged to a VM's [`CpuShare`] (and whose blocking work, through
/// [`CpuShare::charging_blocking`], too).
pub(crate) struct Metered<F: Future> {
    inner: Pin<Box<tokio::task::futures::TaskLocalFuture<Arc<CpuShare>, F>>>,
    share: Arc<CpuShare>,
}

impl<F: Future> Metered<F> {
    /// `inner`, charged to `share`.
    pub(crate) fn new(share: Arc<CpuShare>, inner: F) -> Self {
        Self {
            inner: Box::pin(CHARGED_TO.scope(Arc::clone(&share), inner)),
            share,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu();
        let poll = self.inner.as_mut().poll(cx);
        self.share.charge(thread_cpu().saturating_sub(start));
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu().saturating_sub(start) < d {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn polls_and_blocking_work_are_charged() {
        let share = Arc::new(CpuShare::new(1000));
        Metered::new(share.clone(), async {
            spin(Duration::from_millis(20));
            tokio::task::spawn_blocking(CpuShare::charging_blocking(|| {
                spin(Duration::from_millis(20))
            }))
            .await
            .unwrap();
        })
        .await;
        let used = share.used();
        assert!(
            used >= Duration::from_millis(40) && used < Duration::from_millis(200),
            "{used:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_spent_is_paid_back_over_time() {
        let share = CpuShare::new(100);
        assert_eq!(share.wait(), Duration::ZERO);
        // The burst (100 ms) and 200 ms more.
        share.charge(Duration::from_millis(300));
        let wait = share.wait();
        assert!((1.99..=2.01).contains(&wait.as_secs_f64()), "{wait:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(share.wait() > Duration::ZERO);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(share.wait(), Duration::ZERO);
    }
}
