// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Panics while serving one VM. The backend serves every tenant's VMs in one process, so a
//! panic while handling one VM's vhost-user message, kick or request is caught where that
//! VM's work starts (the event loop's turn, the request's task): the panic is logged with the
//! VM's name and counted ([`BackendStats::panics`](crate::BackendStats)), that VM is failed
//! (its queue no longer served, its invocations failed with
//! [`Error::HandlerPanicked`](crate::Error::HandlerPanicked)), and the backend goes on
//! serving the others. The backend's other tasks — a write-behind upload (its ticket, dropped
//! unfinished, reports it failed), a prefetch, a control connection, the wait for a VM's
//! uploads before its `COMPLETE` is answered, a tenant's usage count — are
//! [`counted`]: tokio ends only the task that panicked, and the panic is counted as well.
//!
//! For tests only, the environment variable `NEXUS_TEST_PANIC=backend:<name>` (read once)
//! makes the backend panic while serving the `COMPLETE` of a VM whose ID is `<name>` or
//! starts with `<name>-` — the node names its VMs after their function — so that tests
//! can check the above through the real binaries. Unset (always, outside tests), it does
//! nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Panics caught since the process started.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics caught since the process started.
pub(crate) fn count() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Counts and logs a panic caught while `what` for VM `vm`.
pub(crate) fn record(vm: &str, what: &str, message: &str) {
    PANICS.fetch_add(1, Ordering::Relaxed);
    log::error!(
        "vm {vm}: the backend panicked while {what} ({message}); the VM is failed, the backend \
         goes on"
    );
}

/// Counts and logs a panic that ended a task of the backend's, in `what`.
pub(crate) fn record_task(what: &str, message: &str) {
    PANICS.fetch_add(1, Ordering::Relaxed);
    log::error!("the backend panicked in {what} ({message}); that task ends, the backend goes on");
}

/// `inner`, its panics counted and logged as in `what` on their way to the task's owner,
/// which sees them as before (tokio ends the task; its `JoinHandle` answers a panic).
pub(crate) fn counted<F: Future>(what: &'static str, inner: F) -> Counted<F> {
    Counted {
        inner: Box::pin(inner),
        what,
    }
}

/// See [`counted`].
pub(crate) struct Counted<F: Future> {
    inner: Pin<Box<F>>,
    what: &'static str,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let what = self.what;
        let inner = self.inner.as_mut();
        // AssertUnwindSafe: the panic is not caught here, only counted on its way.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                record_task(what, &message(&*payload));
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The test-only environment variable (see the module docs).
const TEST_PANIC: &str = "NEXUS_TEST_PANIC";

/// Whether the test-only hook asks for a panic while serving VM `vm`'s `COMPLETE`. False
/// unless `NEXUS_TEST_PANIC=backend:<name>` names it.
pub(crate) fn test_hook(vm: &str) -> bool {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let value = std::env::var(TEST_PANIC).ok()?;
        let name = value
            .strip_prefix("backend:")
            .filter(|name| !name.is_empty())?;
        log::warn!("{TEST_PANIC}={value}: test-only panic injection is on");
        Some(name.to_owned())
    });
    target.as_deref().is_some_and(|name| {
        vm == name
            || vm
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counted_tasks_panic_is_counted_and_still_ends_the_task() {
        let before = count();
        let fine = tokio::spawn(counted("a test task", async { 7 }));
        assert_eq!(fine.await.unwrap(), 7);
        assert_eq!(count(), before);
        let panicking = tokio::spawn(counted("a test task", async {
            tokio::task::yield_now().await;
            panic!("deliberate");
        }));
        let e = panicking.await.unwrap_err();
        assert!(e.is_panic());
        assert_eq!(message(&*e.into_panic()), "deliberate");
        assert!(count() > before);
    }

    #[test]
    fn messages_of_str_and_string_payloads() {
        let payload = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(message(&*payload), "plain");
        let n = 7;
        let payload = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(message(&*payload), "formatted 7");
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(3u8)).unwrap_err();
        assert_eq!(message(&*payload), "a panic without a message");
    }

    #[test]
    fn recording_counts() {
        let before = count();
        record("vm-x", "testing", "nothing");
        assert!(count() > before);
    }
}
