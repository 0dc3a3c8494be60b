//! The userfaultfd handler: one thread per restored VM that serves missing-page faults on its
//! RAM from the snapshot's memory file (`UFFDIO_COPY` from a shared read-only mapping of the
//! file, so every VM restored from it reads the same page cache) or with the zero page
//! (`UFFDIO_ZEROPAGE`) for pages the file does not store.
//!
//! The thread ends by itself once every registered range has been unmapped (the guest memory
//! was dropped), which it learns through `UFFD_EVENT_UNMAP`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::VolatileMemory;

use crate::restore::SnapshotInner;
use crate::sys::{UFFD_EVENT_PAGEFAULT, UFFD_EVENT_UNMAP, UFFD_MSG_SIZE, Userfaultfd};
use crate::{Error, PAGE_SIZE, Result};

/// A registered range of guest RAM.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UffdRegion {
    /// Host address of the mapping.
    pub(crate) host: u64,
    /// Its length.
    pub(crate) len: u64,
    /// Index of its first page in the memory file's page list.
    pub(crate) first_page: u64,
}

/// Counters shared between the handler thread and the [`crate::FaultServer`].
#[derive(Debug, Default)]
pub(crate) struct FaultShared {
    pub(crate) copied: AtomicU64,
    pub(crate) zeroed: AtomicU64,
    pub(crate) finished: AtomicBool,
    /// Set when the first registered range is unmapped (the VM is being dropped): the
    /// background prefetch stops.
    pub(crate) unmapped: AtomicBool,
    /// Page-list indices of the pages served, when recording.
    pub(crate) recorded: Option<Mutex<Vec<u64>>>,
}

/// Host ranges `(start, len)` of guest RAM registered with a userfaultfd by this crate and
/// still mapped: their missing pages are not zero but the snapshot's, so saving reads them
/// whole instead of trusting which pages are present ([`crate::memfile`]).
static REGISTERED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Whether `[start, start + len)` overlaps RAM this crate registered with a userfaultfd.
pub(crate) fn is_registered(start: u64, len: u64) -> bool {
    REGISTERED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|&(s, l)| start < s + l && s < start + len)
}

struct Handler {
    uffd: Arc<Userfaultfd>,
    regions: Vec<(UffdRegion, bool)>,
    snapshot: Arc<SnapshotInner>,
    shared: Arc<FaultShared>,
}

/// Starts the handler thread for `regions`, registered with `uffd`.
pub(crate) fn spawn(
    uffd: Arc<Userfaultfd>,
    regions: Vec<UffdRegion>,
    snapshot: Arc<SnapshotInner>,
    shared: Arc<FaultShared>,
) -> Result<()> {
    REGISTERED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(regions.iter().map(|r| (r.host, r.len)));
    let handler = Handler {
        uffd,
        regions: regions.into_iter().map(|r| (r, true)).collect(),
        snapshot,
        shared,
    };
    std::thread::Builder::new()
        .name("nexus-uffd".into())
        .spawn(move || {
            nexus_kvm::threads::thread_started(nexus_kvm::threads::ThreadRole::Device);
            handler.run()
        })
        .map_err(Error::Thread)?;
    Ok(())
}

fn u64_at(msg: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(msg[offset..offset + 8].try_into().expect("8 bytes"))
}

impl Handler {
    fn run(mut self) {
        let mut buf = [0u8; UFFD_MSG_SIZE * 32];
        while self.regions.iter().any(|(_, alive)| *alive) {
            let n = match self.uffd.read_events(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    log::error!("Reading userfaultfd events failed: {e}; the handler stops");
                    break;
                }
            };
            for msg in buf[..n].chunks_exact(UFFD_MSG_SIZE) {
                match msg[0] {
                    // struct uffd_msg: event at 0; pagefault { flags at 8, address at 16 }.
                    UFFD_EVENT_PAGEFAULT => self.serve(u64_at(msg, 16)),
                    // unmap { start at 8, end at 16 }.
                    UFFD_EVENT_UNMAP => {
                        let (start, end) = (u64_at(msg, 8), u64_at(msg, 16));
                        self.shared.unmapped.store(true, Ordering::Release);
                        REGISTERED
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|&(s, l)| !(start < s + l && s < end));
                        for (r, alive) in &mut self.regions {
                            if start < r.host + r.len && end > r.host {
                                *alive = false;
                            }
                        }
                    }
                    other => log::debug!("Ignoring userfaultfd event {other:#x}"),
                }
            }
        }
        self.shared.finished.store(true, Ordering::Release);
        log::debug!("userfaultfd handler finished");
    }

    fn serve(&self, addr: u64) {
        let page_addr = addr & !(PAGE_SIZE - 1);
        let Some((r, _)) = self
            .regions
            .iter()
            .find(|(r, _)| page_addr >= r.host && page_addr < r.host + r.len)
        else {
            log::error!("userfaultfd fault at {addr:#x} outside every registered range");
            return;
        };
        let page = r.first_page + (page_addr - r.host) / PAGE_SIZE;
        let inner = &self.snapshot;
        let stored = inner.memory.bitmap.get(page);
        // Count and record before the page is installed: installing it wakes the faulting
        // thread, which must find the page already accounted for. Undone if it fails.
        let counter = if stored {
            &self.shared.copied
        } else {
            &self.shared.zeroed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(rec) = &self.shared.recorded {
            rec.lock().unwrap_or_else(|p| p.into_inner()).push(page);
        }
        let result = if stored {
            let source = inner.source().and_then(|src| {
                src.get_slice(((page + 1) * PAGE_SIZE) as usize, PAGE_SIZE as usize)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            });
            source.and_then(|slice| self.uffd.copy(page_addr, &slice))
        } else {
            self.uffd.zero(page_addr, PAGE_SIZE)
        };
        if result.is_err() {
            counter.fetch_sub(1, Ordering::Relaxed);
            if let Some(rec) = &self.shared.recorded {
                rec.lock().unwrap_or_else(|p| p.into_inner()).pop();
            }
        }
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Another fault on the same page was served first.
                let _ = self.uffd.wake(page_addr, PAGE_SIZE);
            }
            Err(e) => {
                log::error!("Cannot serve the page fault at {addr:#x}: {e}");
                let _ = self.uffd.wake(page_addr, PAGE_SIZE);
            }
        }
    }
}
