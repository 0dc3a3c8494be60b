// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Background working-set prefetch: one thread per [`crate::RestoreMode::Prefetch`] restore
//! that installs the recorded working set into guest RAM while the guest already runs.
//!
//! The thread installs the working set in page order, in spans: runs of working-set pages
//! with the gaps of up to [`MAX_GAP_PAGES`] pages between them filled in, at most
//! [`MAX_BATCH_PAGES`] pages each, one `UFFDIO_COPY` per span from the memory file's shared
//! read-only mapping — the page cache every restore of the snapshot shares, which the fault
//! handler serves from too (`UFFDIO_ZEROPAGE` for a span of pages the file does not store).
//! The gaps are filled because KVM maps the neighbours of a faulting guest page along with
//! it only while they are consecutive and present: over every fourth page installed alone,
//! the benchmark's guest took a fault per page and ran about twice as long as over memory
//! restored eagerly. The spans' ranges of the file are asked to be read ahead
//! (`POSIX_FADV_WILLNEED`) first, so that a cold page cache is filled in large reads.
//!
//! Meanwhile the fault handler ([`crate::uffd`]) serves every page the guest touches first.
//! Both only ever fill missing pages — the kernel refuses to overwrite a present page
//! (`EEXIST`) — so a page is installed exactly once, by whichever comes first, and a write
//! the guest made to a page served on demand is never undone: the prefetch skips that page.
//!
//! The thread stops early when the VM's memory is unmapped (the VM was dropped): the fault
//! handler raises [`FaultShared::unmapped`] when it reads the unmap event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use vm_memory::{MmapRegion, VolatileMemory};

use crate::restore::SnapshotInner;
use crate::sys::{Filled, Userfaultfd};
use crate::uffd::{FaultShared, UffdRegion};
use crate::working_set::WorkingSet;
use crate::{Error, PAGE_SIZE, Result};

/// Pages installed by one `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` at most (256 KiB): a guest waiting
/// for a page of a batch is woken when the batch is in, and between batches
/// the thread checks whether the VM is gone.
pub const MAX_BATCH_PAGES: u64 = 64;

/// The largest gap between two working-set pages that a span fills in (KVM maps up to 8
/// neighbouring pages with a faulting one).
pub const MAX_GAP_PAGES: u64 = 7;

/// Where a background prefetch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchState {
    /// Still checking or installing the working set.
    Running,
    /// Every page of the working set is in guest RAM (installed, or served on demand first).
    Done,
    /// Given up because the VM's memory was unmapped (the VM was dropped).
    Stopped,
    /// Given up on an error (a memory file truncated meanwhile, say); the pages not installed
    /// are served on demand as in a [`crate::RestoreMode::Uffd`] restore. The error, for the
    /// log.
    Failed(String),
}

/// What a background prefetch has done so far ([`crate::FaultServer::prefetch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Pages of the working set in it.
    pub working_set_pages: u64,
    /// Pages the prefetch installed: pages of the working set and of the gaps it filled.
    pub installed_pages: u64,
    /// Pages the prefetch found already present — the guest touched them first and the fault
    /// handler served them — and left alone.
    pub present_pages: u64,
    /// Where it is.
    pub state: PrefetchState,
}

/// Shared between the prefetch thread and the [`crate::FaultServer`].
#[derive(Debug)]
pub(crate) struct PrefetchShared {
    pages: u64,
    installed: AtomicU64,
    present: AtomicU64,
    state: Mutex<PrefetchState>,
    changed: Condvar,
}

impl PrefetchShared {
    /// What the prefetch has done so far.
    pub(crate) fn report(&self) -> PrefetchReport {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.report_with(state)
    }

    /// Blocks until the prefetch has ended, and reports.
    pub(crate) fn wait(&self) -> PrefetchReport {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while *state == PrefetchState::Running {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let state = state.clone();
        self.report_with(state)
    }

    fn report_with(&self, state: PrefetchState) -> PrefetchReport {
        PrefetchReport {
            working_set_pages: self.pages,
            installed_pages: self.installed.load(Ordering::Acquire),
            present_pages: self.present.load(Ordering::Acquire),
            state,
        }
    }

    fn finish(&self, state: PrefetchState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_all();
    }
}

/// A span of guest RAM to install: working-set pages and the gaps between them, inside one
/// region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Host address of its first page.
    host: u64,
    /// Page-list index of its first page.
    first_page: u64,
    pages: u64,
}

/// The spans covering `pages` (ascending page-list indices of RAM pages): runs of them with
/// gaps of up to [`MAX_GAP_PAGES`] filled in, split at region boundaries and after
/// [`MAX_BATCH_PAGES`] pages.
fn spans(pages: &[u64], regions: &[UffdRegion]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for &page in pages {
        let Some(r) = regions
            .iter()
            .find(|r| page >= r.first_page && page < r.first_page + r.len / PAGE_SIZE)
        else {
            continue; // Checked when the working set was read: never happens.
        };
        let host = r.host + (page - r.first_page) * PAGE_SIZE;
        match spans.last_mut() {
            Some(s)
                if page >= s.first_page + s.pages
                    && page - (s.first_page + s.pages) <= MAX_GAP_PAGES
                    && page - s.first_page < MAX_BATCH_PAGES
                    && s.host + (page - s.first_page) * PAGE_SIZE == host =>
            {
                s.pages = page - s.first_page + 1;
            }
            _ => spans.push(Span {
                host,
                first_page: page,
                pages: 1,
            }),
        }
    }
    spans
}

/// The working set's pages, stored and zero ones together, in page order.
fn all_pages(ws: &WorkingSet) -> Vec<u64> {
    let mut all = Vec::with_capacity(ws.data_pages.len() + ws.zero_pages.len());
    all.extend_from_slice(&ws.data_pages);
    all.extend_from_slice(&ws.zero_pages);
    all.sort_unstable();
    all
}

/// Whether `error` says the memory is no longer registered with the userfaultfd (it was
/// unmapped before the fault handler raised [`FaultShared::unmapped`]).
fn unregistered(error: &Error) -> bool {
    matches!(error, Error::Userfaultfd { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
}

/// `error` and its causes, as one line.
fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct Prefetcher {
    uffd: Arc<Userfaultfd>,
    spans: Vec<Span>,
    snapshot: Arc<SnapshotInner>,
    faults: Arc<FaultShared>,
    shared: Arc<PrefetchShared>,
}

/// Starts the prefetch thread for `ws` into `regions` (registered with `uffd`, served by the
/// fault handler that shares `faults`) from `snapshot`'s memory file. With a `gate`, the
/// thread waits for it (a message, or its sender dropped) before it starts.
pub(crate) fn spawn(
    uffd: Arc<Userfaultfd>,
    regions: &[UffdRegion],
    ws: &WorkingSet,
    snapshot: Arc<SnapshotInner>,
    faults: Arc<FaultShared>,
    gate: Option<Receiver<()>>,
) -> Result<Arc<PrefetchShared>> {
    let shared = Arc::new(PrefetchShared {
        pages: (ws.data_pages.len() + ws.zero_pages.len()) as u64,
        installed: AtomicU64::new(0),
        present: AtomicU64::new(0),
        state: Mutex::new(PrefetchState::Running),
        changed: Condvar::new(),
    });
    let prefetcher = Prefetcher {
        uffd,
        spans: spans(&all_pages(ws), regions),
        snapshot,
        faults,
        shared: Arc::clone(&shared),
    };
    std::thread::Builder::new()
        .name("nexus-prefetch".into())
        .spawn(move || {
            nexus_kvm::threads::thread_started(nexus_kvm::threads::ThreadRole::Device);
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            prefetcher.run();
        })
        .map_err(Error::Thread)?;
    Ok(shared)
}

impl Prefetcher {
    fn run(self) {
        let start = Instant::now();
        let state = match self.install() {
            Ok(true) => PrefetchState::Done,
            Ok(false) => PrefetchState::Stopped,
            Err(e) if self.vm_gone() || unregistered(&e) => {
                log::debug!("Prefetch stopped with the VM: {}", error_chain(&e));
                PrefetchState::Stopped
            }
            Err(e) => {
                let text = error_chain(&e);
                log::warn!("Prefetch of the working set given up: {text}");
                PrefetchState::Failed(text)
            }
        };
        let report = self.shared.report_with(state.clone());
        log::debug!(
            "Prefetch {state:?} after {:?}: {} of {} pages installed, {} already present",
            start.elapsed(),
            report.installed_pages,
            report.working_set_pages,
            report.present_pages
        );
        self.shared.finish(state);
    }

    fn vm_gone(&self) -> bool {
        self.faults.unmapped.load(Ordering::Acquire)
    }

    /// Installs every span; `Ok(false)` when the VM went away first.
    fn install(&self) -> Result<bool> {
        let stop = || self.vm_gone();
        let memory = &self.snapshot.memory;
        let source = self
            .snapshot
            .source()
            .map_err(|e| Error::io("map", &memory.path, e))?;
        for span in &self.spans {
            crate::sys::will_need(
                &memory.file,
                (span.first_page + 1) * PAGE_SIZE,
                span.pages * PAGE_SIZE,
            );
        }
        for span in &self.spans {
            if stop() {
                return Ok(false);
            }
            let filled = install_span(&self.uffd, &self.snapshot, source, span, &stop)?;
            self.shared
                .installed
                .fetch_add(filled.installed, Ordering::AcqRel);
            self.shared
                .present
                .fetch_add(filled.present, Ordering::AcqRel);
        }
        Ok(true)
    }
}

/// Installs the missing pages of `span` from the memory file mapped at `source`
/// (`UFFDIO_ZEROPAGE` when the file stores none of them).
fn install_span(
    uffd: &Userfaultfd,
    snapshot: &SnapshotInner,
    source: &MmapRegion,
    span: &Span,
    stop: &dyn Fn() -> bool,
) -> Result<Filled> {
    let memory = &snapshot.memory;
    let err = |op| move |source| Error::Userfaultfd { op, source };
    let len = span.pages * PAGE_SIZE;
    if memory.bitmap.runs(span.first_page, span.pages).is_empty() {
        return uffd
            .zero_missing(span.host, len, stop)
            .map_err(err("zeropage (prefetch)"));
    }
    let src = source
        .get_slice(((span.first_page + 1) * PAGE_SIZE) as usize, len as usize)
        .map_err(|e| Error::malformed(&memory.path, e.to_string()))?;
    uffd.copy_missing(span.host, &src, stop)
        .map_err(|source| match memory.check() {
            // UFFDIO_COPY fails with EFAULT past the end of a truncated file.
            Err(changed) => changed,
            Ok(()) => err("copy (prefetch)")(source),
        })
}

/// Installs `pages` (ascending page-list indices of RAM pages in `regions`) from the
/// snapshot's memory file at once, before the VM runs. Returns the number of pages
/// installed (the gaps of up to [`MAX_GAP_PAGES`] between them included).
pub(crate) fn install_now(
    uffd: &Userfaultfd,
    regions: &[UffdRegion],
    snapshot: &SnapshotInner,
    pages: &[u64],
) -> Result<u64> {
    let source = snapshot
        .source()
        .map_err(|e| Error::io("map", &snapshot.memory.path, e))?;
    let mut installed = 0;
    for span in spans(pages, regions) {
        installed += install_span(uffd, snapshot, source, &span, &|| false)?.installed;
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_fill_small_gaps_and_split_at_large_ones_regions_and_batch_size() {
        let regions = [
            UffdRegion {
                host: 0x10_0000,
                len: 4 * PAGE_SIZE,
                first_page: 0,
            },
            UffdRegion {
                host: 0x90_0000,
                len: 1024 * PAGE_SIZE,
                first_page: 4,
            },
        ];
        // 2, 3 | 4, 5, gap of 7 filled, 13 | gap of 8: 22, then every 4th up to the batch
        // limit.
        let pages: Vec<u64> = [2, 3, 4, 5, 13]
            .into_iter()
            .chain((22..150).step_by(4))
            .collect();
        let summary: Vec<(u64, u64, u64)> = spans(&pages, &regions)
            .iter()
            .map(|s| (s.host, s.first_page, s.pages))
            .collect();
        let page = PAGE_SIZE;
        assert_eq!(
            summary,
            vec![
                (0x10_0000 + 2 * page, 2, 2),
                (0x90_0000, 4, 10),
                (0x90_0000 + 18 * page, 22, 61),
                (0x90_0000 + 82 * page, 86, 61),
            ]
        );
    }
}
