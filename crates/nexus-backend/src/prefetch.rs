// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Prefetch: an object the node expects a VM to read — a hint (control `hint`), or the input
//! of an invocation queued while the VM is busy or restoring — is fetched into the VM's
//! cache ahead of time, so that the `GET` (or the `NEXT`) that reads it is served from
//! memory. The cache is bounded in bytes ([`VmLimits::prefetch_cache_bytes`](crate::VmLimits);
//! the oldest entries are evicted first), an entry nobody reads expires, and one is dropped
//! as soon as its key is written, deleted or read to its end. A wrong hint costs only the
//! fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::cpu_share::{CpuShare, Metered};
use crate::engine::Engine;
use crate::key_order::KeyOrder;
use crate::store::Store;
use crate::sync::lock;

/// How long a prefetched object stays cached if nobody reads it.
const PREFETCH_TTL: Duration = Duration::from_secs(60);

/// The state of one prefetch.
#[derive(Clone, Debug)]
enum Fetch {
    Running,
    Ready(Bytes),
    Failed,
}

#[derive(Debug)]
struct CacheEntry {
    id: u64,
    state: watch::Receiver<Fetch>,
    size: u64,
    /// On tokio's clock, so that a paused clock (tests, the fuzzing harness) drives the TTL.
    since: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<String, CacheEntry>,
    bytes: u64,
    next_id: u64,
}

/// A VM's prefetched objects, bounded in bytes.
#[derive(Debug)]
pub(crate) struct PrefetchCache {
    /// The VM, for the log.
    vm: String,
    limit: u64,
    state: Mutex<CacheState>,
}

/// A prefetch to run: fill it with [`PrefetchCache::complete`].
#[derive(Debug)]
pub(crate) struct PrefetchSlot {
    id: u64,
    key: String,
    state: watch::Sender<Fetch>,
}

impl PrefetchCache {
    /// VM `vm`'s cache, of at most `limit` bytes (0 disables prefetching).
    pub(crate) fn new(vm: &str, limit: u64) -> Self {
        Self {
            vm: vm.to_owned(),
            limit,
            state: Mutex::new(CacheState::default()),
        }
    }

    /// The most bytes one object may have to be prefetched.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Starts tracking a prefetch of `key`, unless one is cached or running (or prefetching
    /// is disabled).
    pub(crate) fn begin(&self, key: &str) -> Option<PrefetchSlot> {
        if self.limit == 0 {
            return None;
        }
        let mut state = lock(&self.state);
        if let Some(entry) = state.entries.get(key) {
            let dead = entry.size == 0 && entry.state.has_changed().is_err();
            if !dead && entry.since.elapsed() < PREFETCH_TTL {
                return None;
            }
        }
        Self::remove_locked(&mut state, key);
        let id = state.next_id;
        state.next_id += 1;
        let (tx, rx) = watch::channel(Fetch::Running);
        state.entries.insert(
            key.to_owned(),
            CacheEntry {
                id,
                state: rx,
                size: 0,
                since: tokio::time::Instant::now(),
            },
        );
        Some(PrefetchSlot {
            id,
            key: key.to_owned(),
            state: tx,
        })
    }

    /// Records the outcome of a prefetch (ignored if the entry was invalidated meanwhile),
    /// evicting the oldest entries to stay within the bound.
    pub(crate) fn complete(&self, slot: PrefetchSlot, bytes: Option<Bytes>) {
        let mut state = lock(&self.state);
        let current = state
            .entries
            .get(&slot.key)
            .is_some_and(|e| e.id == slot.id);
        match bytes {
            Some(bytes) if current => {
                let size = bytes.len() as u64;
                while state.bytes + size > self.limit {
                    let oldest = state
                        .entries
                        .iter()
                        .filter(|(key, e)| **key != slot.key && e.size > 0)
                        .min_by_key(|(_, e)| e.since)
                        .map(|(key, _)| key.clone());
                    match oldest {
                        Some(key) => Self::remove_locked(&mut state, &key),
                        None => break,
                    }
                }
                if state.bytes + size > self.limit {
                    state.entries.remove(&slot.key);
                    slot.state.send_replace(Fetch::Failed);
                    return;
                }
                state.bytes += size;
                if let Some(entry) = state.entries.get_mut(&slot.key) {
                    entry.size = size;
                    entry.since = tokio::time::Instant::now();
                }
                slot.state.send_replace(Fetch::Ready(bytes));
            }
            _ => {
                if current {
                    state.entries.remove(&slot.key);
                }
                slot.state.send_replace(Fetch::Failed);
            }
        }
    }

    /// The cached object, waiting for a running prefetch; `None` if there is none (or it
    /// failed).
    pub(crate) async fn lookup(&self, key: &str) -> Option<Bytes> {
        let mut rx = {
            let mut state = lock(&self.state);
            let entry = state.entries.get(key)?;
            if entry.since.elapsed() >= PREFETCH_TTL && entry.size > 0 {
                Self::remove_locked(&mut state, key);
                return None;
            }
            entry.state.clone()
        };
        let fetched = rx
            .wait_for(|f| !matches!(f, Fetch::Running))
            .await
            .ok()?
            .clone();
        match fetched {
            Fetch::Ready(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The cached object if its prefetch has finished; never waits. For requests on the
    /// key, which run in key order after every prefetch begun before they arrived: a fetch
    /// still running was begun after them, and waits for their turn to end.
    pub(crate) fn fetched(&self, key: &str) -> Option<Bytes> {
        let mut state = lock(&self.state);
        let entry = state.entries.get(key)?;
        if entry.since.elapsed() >= PREFETCH_TTL && entry.size > 0 {
            Self::remove_locked(&mut state, key);
            return None;
        }
        match &*entry.state.borrow() {
            Fetch::Ready(bytes) => Some(bytes.clone()),
            Fetch::Running | Fetch::Failed => None,
        }
    }

    /// Forgets `key` (it was written, deleted, or read to its end).
    pub(crate) fn invalidate(&self, key: &str) {
        Self::remove_locked(&mut lock(&self.state), key);
    }

    fn remove_locked(state: &mut CacheState, key: &str) {
        if let Some(entry) = state.entries.remove(key) {
            state.bytes = state.bytes.saturating_sub(entry.size);
        }
    }

    /// Forgets everything (the VM is detached).
    pub(crate) fn clear(&self) {
        let mut state = lock(&self.state);
        state.entries.clear();
        state.bytes = 0;
    }

    /// Bytes cached.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }
}

/// Starts a prefetch of `key` into `cache` from `store` (the VM's tenant's), unless it is cached or
/// being fetched already: it runs on the engine's runtime, in order with the VM's requests
/// on the key (`order`), and its work is charged to the VM's `cpu` share.
pub(crate) fn prefetch(
    cache: &Arc<PrefetchCache>,
    key: &str,
    order: &KeyOrder,
    engine: &Arc<Engine>,
    store: Store,
    cpu: &Arc<CpuShare>,
) {
    let Some(slot) = cache.begin(key) else {
        return;
    };
    let mut turn = order.take_turn(key);
    let cache = Arc::clone(cache);
    let key = key.to_owned();
    engine.runtime.spawn(Metered::new(
        Arc::clone(cpu),
        crate::panics::counted("a prefetch", async move {
            turn.ready().await;
            match store.fetch(&key, cache.limit()).await {
                Ok(bytes) => {
                    log::debug!("vm {}: prefetched {key} ({} bytes)", cache.vm, bytes.len());
                    cache.complete(slot, Some(bytes));
                }
                Err(e) => {
                    log::info!("vm {}: prefetch of {key} failed: {e}", cache.vm);
                    cache.complete(slot, None);
                }
            }
            drop(turn);
        }),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefetch_lookup_waits_for_the_fetch() {
        let cache = Arc::new(PrefetchCache::new("vm", 10));
        let slot = cache.begin("a").unwrap();
        assert!(cache.begin("a").is_none(), "already running");
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.lookup("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cache.complete(slot, Some(Bytes::from_static(b"xyz")));
        assert_eq!(waiter.await.unwrap().unwrap(), &b"xyz"[..]);
        // A prefetch that died without an outcome does not block a new one.
        let dead = cache.begin("d").unwrap();
        drop(dead);
        assert_eq!(cache.lookup("d").await, None);
        assert!(cache.begin("d").is_some());
    }

    /// A GET that arrived before a hint of its key runs before that prefetch (key order),
    /// so it must not wait for it: it takes only a finished fetch. (It waited, and the
    /// prefetch waited for the GET's turn: the GET was never answered and the key stuck.)
    #[tokio::test]
    async fn a_request_on_the_key_takes_only_a_finished_prefetch() {
        let cache = PrefetchCache::new("vm", 10);
        let slot = cache.begin("k").unwrap();
        assert_eq!(cache.fetched("k"), None, "running: not waited for");
        cache.complete(slot, Some(Bytes::from_static(b"abc")));
        assert_eq!(cache.fetched("k").unwrap(), &b"abc"[..]);
        let failed = cache.begin("f").unwrap();
        cache.complete(failed, None);
        assert_eq!(cache.fetched("f"), None);
        assert_eq!(cache.fetched("none"), None);
    }

    #[tokio::test]
    async fn prefetch_cache_is_bounded() {
        let cache = PrefetchCache::new("vm", 10);
        let a = cache.begin("a").unwrap();
        cache.complete(a, Some(Bytes::from_static(b"123456")));
        assert_eq!(cache.bytes(), 6);
        assert_eq!(cache.lookup("a").await.unwrap(), &b"123456"[..]);
        let b = cache.begin("b").unwrap();
        cache.complete(b, Some(Bytes::from_static(b"abcdef")));
        // "a" was evicted to make room.
        assert_eq!(cache.bytes(), 6);
        assert_eq!(cache.lookup("a").await, None);
        assert!(cache.lookup("b").await.is_some());
        let c = cache.begin("c").unwrap();
        cache.complete(c, Some(Bytes::from(vec![0u8; 11])));
        assert_eq!(cache.lookup("c").await, None, "larger than the bound");
        cache.invalidate("b");
        assert_eq!(cache.bytes(), 0);
        assert!(PrefetchCache::new("vm", 0).begin("x").is_none());
    }
}
