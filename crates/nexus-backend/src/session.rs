// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One attached VM's state: request ordering per key, write-behind uploads, the prefetch
//! cache, queued invocations, and the queue generation that cancels in-flight work on a reset.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::VmLimits;
use crate::control::ControlEvent;
use crate::cpu_share::CpuShare;
use crate::engine::{Engine, Traffic, TrafficCounts};
use crate::error::{Error, Result};
use crate::invoke::{Invocation, InvocationInput, InvocationResult};
use crate::log_limit::LogRateLimit;
use crate::scan_rate::ScanRate;
use crate::staging::Staging;
use crate::tenant::Tenant;
use crate::write_behind::WriteBehind;

/// How long a prefetched object stays cached if nobody reads it.
const PREFETCH_TTL: Duration = Duration::from_secs(60);
/// The key-order table is swept of finished entries when it grows past this.
const KEY_ORDER_SWEEP: usize = 1024;

/// Locks a mutex, ignoring poisoning (the data is simple enough to stay consistent, and the
/// backend must keep serving other VMs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One attached VM.
#[derive(Debug)]
pub(crate) struct Session {
    /// The VM's ID.
    pub(crate) vm: String,
    /// The VM's tenant.
    pub(crate) tenant: Arc<Tenant>,
    /// The shared I/O engine.
    pub(crate) engine: Arc<Engine>,
    /// What this VM may use: its tenant's limits, else the backend's defaults.
    pub(crate) limits: VmLimits,
    /// Tells the control connection that attached the VM what happened to it.
    events: Mutex<Option<mpsc::UnboundedSender<ControlEvent>>>,
    /// The VM's share of the engine's staging budget.
    pub(crate) staging: Staging,
    /// The VM's LOG rate limit.
    pub(crate) log_limit: LogRateLimit,
    /// The VM's listing rate (entries looked at per second).
    pub(crate) list_rate: ScanRate,
    /// The VM's share of the backend's CPU.
    pub(crate) cpu: Arc<CpuShare>,
    /// The queue generation: completions of an older generation are dropped.
    epoch: Mutex<u64>,
    /// Broadcasts the generation (`u64::MAX` once detached) to cancel parked requests.
    cancel: watch::Sender<u64>,
    inflight: Mutex<usize>,
    idle: Condvar,
    key_order: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Write-behind uploads.
    pub(crate) write_behind: Arc<WriteBehind>,
    /// Prefetched objects.
    pub(crate) prefetch: Arc<PrefetchCache>,
    /// Queued and running invocations.
    pub(crate) invocations: Invocations,
    /// Payload bytes and requests through this VM's window (the engine's totals count them
    /// too).
    traffic: Traffic,
}

impl Session {
    /// A session of VM `vm` of `tenant`, with the tenant's limits if it has its own, else the
    /// engine's defaults.
    #[cfg(test)]
    pub(crate) fn new(vm: &str, tenant: Arc<Tenant>, engine: Arc<Engine>) -> Self {
        Self::with_uploads(vm, tenant, engine, None)
    }

    /// [`new`](Self::new), with the write-behind uploads an earlier attachment of the same VM
    /// left (still pending, or failed and not yet reported), if any.
    pub(crate) fn with_uploads(
        vm: &str,
        tenant: Arc<Tenant>,
        engine: Arc<Engine>,
        uploads: Option<Arc<WriteBehind>>,
    ) -> Self {
        let limits = tenant
            .limits()
            .cloned()
            .unwrap_or_else(|| engine.limits.clone());
        let write_behind = uploads.unwrap_or_else(|| {
            Arc::new(WriteBehind::new(
                vm,
                limits.write_behind_bytes,
                limits.write_behind_requests,
                engine.journal.clone(),
            ))
        });
        Self {
            vm: vm.to_owned(),
            tenant,
            staging: engine.staging.share(limits.staging_bytes),
            log_limit: LogRateLimit::new(
                limits.log_records_per_second,
                limits.log_burst,
                tokio::time::Instant::now(),
            ),
            list_rate: ScanRate::new(limits.list_scan_per_second),
            cpu: Arc::new(CpuShare::new(limits.cpu_millis_per_second)),
            engine,
            limits: limits.clone(),
            events: Mutex::new(None),
            epoch: Mutex::new(0),
            cancel: watch::Sender::new(0),
            inflight: Mutex::new(0),
            idle: Condvar::new(),
            key_order: Mutex::new(HashMap::new()),
            write_behind,
            prefetch: Arc::new(PrefetchCache::new(limits.prefetch_cache_bytes)),
            invocations: Invocations::default(),
            traffic: Traffic::default(),
        }
    }

    /// Counts `n` payload bytes the backend wrote into the VM's window.
    pub(crate) fn count_in(&self, n: u64) {
        self.traffic.add_in(n);
        self.engine.traffic.add_in(n);
    }

    /// Counts `n` payload bytes the backend read out of the VM's window.
    pub(crate) fn count_out(&self, n: u64) {
        self.traffic.add_out(n);
        self.engine.traffic.add_out(n);
    }

    /// Counts one ring request served.
    pub(crate) fn count_request(&self) {
        self.traffic.add_request();
        self.engine.traffic.add_request();
    }

    /// The VM's traffic so far (still readable after it is detached).
    pub(crate) fn traffic(&self) -> TrafficCounts {
        self.traffic.read()
    }

    /// The current queue generation.
    pub(crate) fn epoch(&self) -> u64 {
        *lock(&self.epoch)
    }

    /// Resolves once generation `epoch` ends (queue stopped, connection lost, VM detached).
    pub(crate) async fn cancelled(&self, epoch: u64) {
        let mut rx = self.cancel.subscribe();
        // An error means the sender is gone: the session is being dropped.
        let _ = rx.wait_for(|current| *current != epoch).await;
    }

    /// Ends the current queue generation: parked requests are cancelled, late completions
    /// dropped. Called with the ring's lock held, so no answer of the old generation slips in.
    pub(crate) fn end_generation(&self) {
        let mut epoch = lock(&self.epoch);
        *epoch += 1;
        let next = *epoch;
        self.cancel.send_modify(|current| {
            if *current != u64::MAX {
                *current = next;
            }
        });
    }

    /// Waits (at most `timeout`) until no request is in flight.
    pub(crate) fn wait_idle(&self, timeout: Duration) {
        let inflight = lock(&self.inflight);
        let (left, _) = self
            .idle
            .wait_timeout_while(inflight, timeout, |n| *n > 0)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *left > 0 {
            log::info!(
                "vm {}: {} request(s) still winding down after the queue stopped; their answers will be dropped",
                self.vm,
                *left
            );
        }
    }

    /// Requests being served now.
    pub(crate) fn in_flight(&self) -> usize {
        *lock(&self.inflight)
    }

    /// Where events about the VM go: the control connection that attached it.
    pub(crate) fn set_events(&self, events: Option<mpsc::UnboundedSender<ControlEvent>>) {
        *lock(&self.events) = events;
    }

    /// Tells the attaching VMM that the guest broke its request queue.
    pub(crate) fn report_queue_broken(&self, reason: &str) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(ControlEvent::QueueBroken {
                vm: self.vm.clone(),
                reason: reason.to_owned(),
            });
        }
    }

    /// The VM goes away: cancel everything parked and fail its invocations. Write-behind
    /// uploads already acknowledged go on to completion.
    pub(crate) fn detach(&self) {
        *lock(&self.epoch) += 1;
        self.cancel.send_replace(u64::MAX);
        self.invocations.fail_all(&self.vm);
        self.prefetch.clear();
        let dropped = self.log_limit.take_unreported();
        if dropped > 0 {
            log::warn!(
                "vm {}: {dropped} LOG records dropped by the rate limit",
                self.vm
            );
        }
    }

    /// Counts a request as in flight until the guard is dropped.
    pub(crate) fn inflight(self: &Arc<Self>) -> InflightGuard {
        *lock(&self.inflight) += 1;
        self.engine.request_started();
        InflightGuard {
            session: self.clone(),
        }
    }

    /// Claims the VM's one outstanding `NEXT` for a `NEXT` being dispatched, so that of two
    /// `NEXT`s the one that arrived first parks and the later one is refused, whichever task
    /// the runtime runs first. `None` if another `NEXT` holds it; the claim lasts as long as
    /// the returned guard.
    pub(crate) fn claim_next(self: &Arc<Self>) -> Option<NextClaim> {
        let taken = self
            .invocations
            .next_outstanding
            .swap(true, Ordering::AcqRel);
        (!taken).then(|| NextClaim {
            session: self.clone(),
        })
    }

    /// Takes this request's turn on `key`: it runs after every earlier request of this VM on
    /// the same key (including write-behind uploads) has finished.
    pub(crate) fn take_turn(&self, key: &str) -> KeyTurn {
        let (done, rx) = watch::channel(());
        let mut order = lock(&self.key_order);
        if order.len() >= KEY_ORDER_SWEEP {
            order.retain(|_, earlier| earlier.has_changed().is_ok());
        }
        let after = order.insert(key.to_owned(), rx);
        KeyTurn { after, _done: done }
    }
}

/// Keeps a request counted as in flight.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    session: Arc<Session>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.session.engine.request_finished();
        let mut n = lock(&self.session.inflight);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.session.idle.notify_all();
        }
    }
}

/// The VM's one outstanding `NEXT` (see [`Session::claim_next`]), released on drop.
#[derive(Debug)]
pub(crate) struct NextClaim {
    session: Arc<Session>,
}

impl Drop for NextClaim {
    fn drop(&mut self) {
        self.session
            .invocations
            .next_outstanding
            .store(false, Ordering::Release);
    }
}

/// A request's place in its key's order; the next request on the key runs once this is
/// dropped.
#[derive(Debug)]
pub(crate) struct KeyTurn {
    after: Option<watch::Receiver<()>>,
    _done: watch::Sender<()>,
}

impl KeyTurn {
    /// Waits until every earlier request on the key has finished.
    pub(crate) async fn ready(&mut self) {
        if let Some(mut earlier) = self.after.take() {
            // Nothing is ever sent: `changed` returns once the earlier turn is dropped.
            while earlier.changed().await.is_ok() {}
        }
    }
}

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
    fn new(limit: u64) -> Self {
        Self {
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

    fn clear(&self) {
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
    /// A `NEXT` is parked.
    pub(crate) next_outstanding: AtomicBool,
    /// The invocation the VM runs now (0: none), for log lines.
    pub(crate) current: AtomicU64,
    /// When recent invocations were delivered (NEXT answered) and completed, by number, for
    /// the control socket's timings (bounded: cleared when it grows past 1024 entries).
    times: Mutex<HashMap<u64, (Instant, Option<Instant>)>>,
}

impl Invocations {
    /// Queues an invocation for the VM's next `NEXT`.
    pub(crate) fn push(&self, queued: QueuedInvocation) {
        lock(&self.queue).push_back(queued);
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

    /// The VM took an invocation.
    pub(crate) fn start(&self, number: u64, running: RunningInvocation) {
        {
            let mut times = lock(&self.times);
            if times.len() >= 1024 {
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
            && lock(&self.queue).is_empty()
            && lock(&self.running).is_empty()
    }

    fn fail_all(&self, vm: &str) {
        let queued: Vec<_> = lock(&self.queue).drain(..).collect();
        for q in queued {
            let _ = q.reply.send(Err(Error::VmDetached(vm.to_owned())));
        }
        let running: Vec<_> = lock(&self.running).drain().collect();
        for (_, r) in running {
            let _ = r.reply.send(Err(Error::VmDetached(vm.to_owned())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, S3Options, StoreConfig, StoreUrl};

    #[test]
    fn a_session_takes_its_tenants_limits_else_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = StoreConfig {
            url: StoreUrl::File(dir.path().to_owned()),
            s3: S3Options::default(),
        };
        let mut config = BackendConfig::new(store, dir.path().to_owned());
        config.limits.prefetch_cache_bytes = 12345;
        let engine = Arc::new(Engine::new(&config, runtime.handle().clone()).unwrap());
        let own = VmLimits {
            requests_in_flight: 3,
            prefetch_cache_bytes: 777,
            write_behind_requests: 1,
            log_burst: 0,
            ..VmLimits::default()
        };
        let tenant = Tenant::new("a", "a")
            .unwrap()
            .with_limits(Some(own.clone()));
        let session = Session::new("vm-a", Arc::new(tenant), engine.clone());
        assert_eq!(session.limits, own);
        assert_eq!(session.prefetch.limit(), 777);
        assert!(
            !session.log_limit.admit(tokio::time::Instant::now()),
            "a burst of 0"
        );
        let mut first = session.write_behind.register();
        assert!(first.reserve(1));
        assert!(
            !session.write_behind.register().reserve(1),
            "one upload at a time"
        );

        let plain = Session::new("vm-b", Arc::new(Tenant::new("b", "b").unwrap()), engine);
        assert_eq!(plain.limits, config.limits);
        assert_eq!(plain.prefetch.limit(), 12345);
        assert!(plain.log_limit.admit(tokio::time::Instant::now()));
    }

    #[tokio::test]
    async fn key_turns_run_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let table: Mutex<HashMap<String, watch::Receiver<()>>> = Mutex::default();
        let take = |key: &str| {
            let (done, rx) = watch::channel(());
            let after = lock(&table).insert(key.to_owned(), rx);
            KeyTurn { after, _done: done }
        };
        let first = take("k");
        let mut second = take("k");
        let mut other = take("j");
        other.ready().await; // another key does not wait
        let handle = {
            let order = order.clone();
            tokio::spawn(async move {
                second.ready().await;
                lock(&order).push(2);
            })
        };
        tokio::task::yield_now().await;
        lock(&order).push(1);
        drop(first);
        handle.await.unwrap();
        assert_eq!(*lock(&order), vec![1, 2]);
    }

    #[tokio::test]
    async fn prefetch_lookup_waits_for_the_fetch() {
        let cache = Arc::new(PrefetchCache::new(10));
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
        let cache = PrefetchCache::new(10);
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
        let cache = PrefetchCache::new(10);
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
        assert!(PrefetchCache::new(0).begin("x").is_none());
    }
}
