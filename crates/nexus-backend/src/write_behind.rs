// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Write-behind: a `PUT` acknowledged before its upload is durable.
//!
//! The guest goes on at once; the backend uploads in the background, in order with the VM's
//! other requests on the key. `FLUSH` — and the end of an invocation — waits for every upload
//! made before it and reports the ones that failed, by key, once. A VM's uploads are bounded
//! by count and bytes ([`VmLimits`](crate::VmLimits)); a PUT beyond either is done
//! synchronously.
//!
//! Nothing acknowledged is lost silently:
//! - a VM's [`WriteBehind`] belongs to the VM's ID, not to one attachment: a VMM that
//!   reconnects (detach, attach) finds the uploads of its earlier connection still counted,
//!   and their failures still to be reported;
//! - every acknowledged upload is in the backend's [journal](crate::journal) until it is
//!   durable or its failure reported: after a backend restart, the uploads the dead backend
//!   acknowledged and never finished are reported as failed to the VM's next `FLUSH`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::journal::UploadJournal;
use crate::sync::lock;

/// Unreported failures kept by key per VM; beyond it, further ones are counted with the last.
const MAX_FAILURES_KEPT: usize = 1024;

/// A VM's write-behind uploads: which are pending, which failed, and what they hold of the
/// VM's bounds.
#[derive(Debug)]
pub(crate) struct WriteBehind {
    vm: String,
    state: Mutex<WriteBehindState>,
    changed: Notify,
    max_bytes: u64,
    max_requests: u32,
    journal: Option<Arc<UploadJournal>>,
}

#[derive(Debug, Default)]
struct WriteBehindState {
    next: u64,
    /// Pending uploads by sequence number, with what each holds.
    pending: BTreeMap<u64, Held>,
    /// Bytes held by reserved uploads.
    bytes: u64,
    /// Reserved uploads (each holds one request slot).
    requests: u32,
    /// Failed uploads not yet reported, in order.
    failed: Vec<Failure>,
}

/// A failed upload not yet reported.
#[derive(Debug)]
struct Failure {
    seq: u64,
    key: String,
    /// How many failed uploads this entry stands for (more than one past the cap).
    count: u64,
    /// Their journal records, closed once reported.
    journal: Vec<u64>,
}

/// What [`WriteBehind::wait`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Every upload before the mark is durable.
    Durable,
    /// Some failed: the first one's key and how many.
    Failed {
        /// The key of the first failed upload.
        key: String,
        /// How many failed.
        count: u64,
    },
}

/// What one registered upload holds of the VM's bounds.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// It was accepted as write-behind: it holds a request slot and `bytes`.
    reserved: bool,
    bytes: u64,
}

impl WriteBehind {
    /// The uploads of VM `vm`, bounded by `max_bytes` and `max_requests`, recorded in
    /// `journal` when they are acknowledged.
    pub(crate) fn new(
        vm: &str,
        max_bytes: u64,
        max_requests: u32,
        journal: Option<Arc<UploadJournal>>,
    ) -> Self {
        Self {
            vm: vm.to_owned(),
            state: Mutex::new(WriteBehindState::default()),
            changed: Notify::new(),
            max_bytes,
            max_requests,
            journal,
        }
    }

    /// Uploads an earlier run of the backend acknowledged to this VM and lost: the VM's next
    /// `FLUSH` (or invocation) reports them as failed. `lost` pairs journal records and keys.
    pub(crate) fn adopt_lost(&self, lost: Vec<(u64, String)>) {
        let mut state = lock(&self.state);
        for (journal, key) in lost {
            let seq = state.next;
            state.next += 1;
            push_failure(&mut state, seq, key, Some(journal), self.journal.as_deref());
        }
    }

    /// Registers a write-behind PUT in the order requests arrive; FLUSH and COMPLETE wait for
    /// every ticket registered before their [`mark`](Self::mark).
    pub(crate) fn register(self: &Arc<Self>) -> WriteBehindTicket {
        let mut state = lock(&self.state);
        let seq = state.next;
        state.next += 1;
        state.pending.insert(seq, Held::default());
        WriteBehindTicket {
            uploads: self.clone(),
            seq,
            journal: None,
            acknowledged: None,
            finished: false,
        }
    }

    /// Everything registered so far is before this mark.
    pub(crate) fn mark(&self) -> u64 {
        lock(&self.state).next
    }

    /// Whether nothing is pending and nothing is left to report.
    pub(crate) fn is_idle(&self) -> bool {
        let state = lock(&self.state);
        state.pending.is_empty() && state.failed.is_empty()
    }

    /// Waits until every upload registered before `mark` is durable or failed; failures
    /// before the mark are reported (once) and forgotten.
    pub(crate) async fn wait(&self, mark: u64) -> Durability {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if state.pending.range(..mark).next().is_none() {
                    let (reported, kept): (Vec<_>, Vec<_>) =
                        state.failed.drain(..).partition(|f| f.seq < mark);
                    state.failed = kept;
                    drop(state);
                    if let Some(journal) = &self.journal {
                        for failure in &reported {
                            for id in &failure.journal {
                                journal.close(*id);
                            }
                        }
                    }
                    return match reported.first() {
                        None => Durability::Durable,
                        Some(first) => Durability::Failed {
                            key: first.key.clone(),
                            count: reported.iter().map(|f| f.count).sum(),
                        },
                    };
                }
            }
            changed.await;
        }
    }

    /// Bytes currently held by pending uploads.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// Request slots currently held by pending uploads.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn requests(&self) -> u32 {
        lock(&self.state).requests
    }
}

/// Records a failure (merged into the last one past the cap, its journal record then closed:
/// it is counted, and logged, but not kept by key).
fn push_failure(
    state: &mut WriteBehindState,
    seq: u64,
    key: String,
    journal_id: Option<u64>,
    journal: Option<&UploadJournal>,
) {
    if state.failed.len() >= MAX_FAILURES_KEPT {
        if let Some(last) = state.failed.last_mut() {
            last.count += 1;
            if let (Some(id), Some(journal)) = (journal_id, journal) {
                journal.close(id);
            }
            return;
        }
    }
    state.failed.push(Failure {
        seq,
        key,
        count: 1,
        journal: journal_id.into_iter().collect(),
    });
}

/// One registered write-behind PUT; finishing (or dropping) it marks it done.
#[derive(Debug)]
pub(crate) struct WriteBehindTicket {
    uploads: Arc<WriteBehind>,
    seq: u64,
    /// The upload's journal record, once acknowledged.
    journal: Option<u64>,
    /// The key, once acknowledged: a ticket dropped before it is finished reports it failed.
    acknowledged: Option<String>,
    finished: bool,
}

impl WriteBehindTicket {
    /// Claims one request slot and `bytes` of the VM's write-behind bounds; `false` if either
    /// would be exceeded (the PUT is then done synchronously). A ticket reserves once.
    pub(crate) fn reserve(&mut self, bytes: u64) -> bool {
        let uploads = &self.uploads;
        let mut state = lock(&uploads.state);
        let over = state.requests >= uploads.max_requests
            || state.bytes.saturating_add(bytes) > uploads.max_bytes;
        let reserved = state
            .pending
            .get(&self.seq)
            .is_some_and(|held| held.reserved);
        if over || reserved {
            return false;
        }
        let Some(held) = state.pending.get_mut(&self.seq) else {
            return false;
        };
        *held = Held {
            reserved: true,
            bytes,
        };
        state.bytes += bytes;
        state.requests += 1;
        true
    }

    /// The PUT of `key` is about to be acknowledged: record it in the journal first, so that
    /// a backend that dies before the upload is done knows it lost it. `false` if it could
    /// not be recorded (the PUT must then be done synchronously).
    pub(crate) fn acknowledge(&mut self, key: &str) -> bool {
        if let Some(journal) = &self.uploads.journal {
            match journal.record(&self.uploads.vm, key) {
                Ok(id) => self.journal = Some(id),
                Err(e) => {
                    log::warn!(
                        "vm {}: cannot record a write-behind upload in the journal ({e}); PUT {key} is done synchronously",
                        self.uploads.vm
                    );
                    return false;
                }
            }
        }
        self.acknowledged = Some(key.to_owned());
        true
    }

    /// The upload is over: durable (`None`) or failed for good (`Some(key)`). Also how a PUT
    /// acknowledged here but answered with an error after all (its payload could not be
    /// copied) gives its ticket back: `None`, nothing to report.
    pub(crate) fn finish(mut self, failed: Option<String>) {
        self.acknowledged = None;
        self.complete(failed);
    }

    fn complete(&mut self, failed: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let uploads = &self.uploads;
        {
            let mut state = lock(&uploads.state);
            if let Some(held) = state.pending.remove(&self.seq) {
                if held.reserved {
                    state.bytes = state.bytes.saturating_sub(held.bytes);
                    state.requests = state.requests.saturating_sub(1);
                }
            }
            match failed {
                Some(key) => push_failure(
                    &mut state,
                    self.seq,
                    key,
                    self.journal.take(),
                    uploads.journal.as_deref(),
                ),
                None => {
                    if let (Some(id), Some(journal)) = (self.journal.take(), &uploads.journal) {
                        journal.close(id);
                    }
                }
            }
        }
        uploads.changed.notify_waiters();
    }
}

impl Drop for WriteBehindTicket {
    fn drop(&mut self) {
        // Never acknowledged (refused or cancelled): nothing to report. Acknowledged but not
        // finished (its upload task panicked, or was dropped unfinished): the upload is lost,
        // and reported failed like any other, so that nothing acknowledged is lost silently.
        let lost = self.acknowledged.take().filter(|_| !self.finished);
        if let Some(key) = &lost {
            log::error!(
                "vm {}: the write-behind upload of {key} ended unfinished: reported failed",
                self.uploads.vm
            );
        }
        self.complete(lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads(max_bytes: u64, max_requests: u32) -> Arc<WriteBehind> {
        Arc::new(WriteBehind::new("vm", max_bytes, max_requests, None))
    }

    #[tokio::test]
    async fn write_behind_marks_and_failures() {
        let wb = uploads(100, 10);
        let mut a = wb.register();
        let b = wb.register();
        let mark = wb.mark();
        let c = wb.register();
        assert!(a.reserve(60));
        let mut d = wb.register();
        assert!(!d.reserve(41));
        assert_eq!(wb.bytes(), 60);
        drop(d);

        let waiter = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.wait(mark).await })
        };
        a.finish(Some("k/a".into()));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.finish(None);
        assert_eq!(
            waiter.await.unwrap(),
            Durability::Failed {
                key: "k/a".into(),
                count: 1
            }
        );
        assert_eq!(wb.bytes(), 0);
        // Reported once only; `c` is after the mark and still pending.
        assert_eq!(wb.wait(mark).await, Durability::Durable);
        let later = wb.mark();
        drop(c);
        assert_eq!(wb.wait(later).await, Durability::Durable);
    }

    #[test]
    fn write_behind_is_bounded_by_requests_and_bytes() {
        let wb = uploads(100, 2);
        let mut empty = wb.register();
        let mut small = wb.register();
        let mut third = wb.register();
        // A 0-byte PUT still takes a request slot.
        assert!(empty.reserve(0));
        assert!(!empty.reserve(0), "a ticket reserves once");
        assert!(small.reserve(10));
        assert_eq!((wb.requests(), wb.bytes()), (2, 10));
        assert!(!third.reserve(0), "beyond two pending uploads");
        drop(third);
        empty.finish(None);
        assert_eq!((wb.requests(), wb.bytes()), (1, 10));
        let mut big = wb.register();
        assert!(!big.reserve(91), "beyond 100 bytes");
        assert!(big.reserve(90));
        assert_eq!((wb.requests(), wb.bytes()), (2, 100));
        // A ticket refused (or never reserved) gives nothing back when it ends.
        let unreserved = wb.register();
        drop(unreserved);
        assert_eq!((wb.requests(), wb.bytes()), (2, 100));
        small.finish(Some("k".into()));
        big.finish(None);
        assert_eq!((wb.requests(), wb.bytes()), (0, 0));
        // Zero request slots: write-behind is off.
        let off = uploads(100, 0);
        assert!(!off.register().reserve(0));
    }

    #[tokio::test]
    async fn an_acknowledged_upload_dropped_unfinished_is_reported_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = UploadJournal::open(dir.path()).unwrap();
        let journal = Arc::new(journal);
        let wb = Arc::new(WriteBehind::new("vm", 100, 10, Some(journal.clone())));
        // Refused (never acknowledged) and dropped: nothing to report.
        let mut refused = wb.register();
        assert!(refused.reserve(1));
        drop(refused);
        assert_eq!(wb.wait(wb.mark()).await, Durability::Durable);
        // Acknowledged, then given back after an error answer: nothing to report either.
        let mut answered_error = wb.register();
        assert!(answered_error.reserve(1) && answered_error.acknowledge("out/e"));
        answered_error.finish(None);
        assert_eq!(wb.wait(wb.mark()).await, Durability::Durable);
        assert_eq!(journal.open_count(), 0);
        // Acknowledged and dropped unfinished (its task panicked): failed, its journal record
        // kept until the failure is reported.
        let mut lost = wb.register();
        assert!(lost.reserve(10) && lost.acknowledge("out/lost"));
        let bounds_before = lock(&wb.state).bytes;
        drop(lost);
        assert_eq!(
            lock(&wb.state).bytes,
            bounds_before - 10,
            "its bounds are freed"
        );
        assert_eq!(journal.open_count(), 1);
        assert_eq!(
            wb.wait(wb.mark()).await,
            Durability::Failed {
                key: "out/lost".into(),
                count: 1
            }
        );
        assert_eq!(journal.open_count(), 0, "reported: closed in the journal");
    }

    #[tokio::test]
    async fn uploads_lost_by_an_earlier_run_are_reported_once_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = UploadJournal::open(dir.path()).unwrap();
        let journal = Arc::new(journal);
        let first = journal.record("vm", "out/a").unwrap();
        let second = journal.record("vm", "out/b").unwrap();
        let wb = Arc::new(WriteBehind::new("vm", 100, 10, Some(journal.clone())));
        wb.adopt_lost(vec![(first, "out/a".into()), (second, "out/b".into())]);
        assert!(!wb.is_idle());
        // An upload of this run, acknowledged and durable: journalled, then closed.
        let mut ticket = wb.register();
        assert!(ticket.reserve(1) && ticket.acknowledge("out/c"));
        assert_eq!(journal.open_count(), 3);
        ticket.finish(None);
        assert_eq!(journal.open_count(), 2);
        assert_eq!(
            wb.wait(wb.mark()).await,
            Durability::Failed {
                key: "out/a".into(),
                count: 2
            }
        );
        assert_eq!(journal.open_count(), 0, "reported: closed in the journal");
        assert!(wb.is_idle());
        assert_eq!(wb.wait(wb.mark()).await, Durability::Durable);
    }

    #[tokio::test]
    async fn failures_past_the_cap_are_counted_with_the_last() {
        let wb = uploads(u64::MAX, u32::MAX);
        for i in 0..MAX_FAILURES_KEPT + 5 {
            let mut ticket = wb.register();
            assert!(ticket.reserve(0));
            ticket.finish(Some(format!("k/{i}")));
        }
        assert_eq!(
            wb.wait(wb.mark()).await,
            Durability::Failed {
                key: "k/0".into(),
                count: MAX_FAILURES_KEPT as u64 + 5
            }
        );
    }
}
