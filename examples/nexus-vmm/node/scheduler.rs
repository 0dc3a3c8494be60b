//! Which VM runs an invocation: the warm pool of each function, the caps (per function and
//! per node), the queue of invocations waiting for a VM, eviction of an idle VM of another
//! function when only the node's cap is in the way, and the keep-alive of parked VMs.
//!
//! Pure bookkeeping over any [`PooledVm`]: it never starts or stops a VM itself. It tells the
//! caller to start one (a place is reserved) or hands back the VMs to stop (evicted, expired,
//! found dead), so it runs without KVM in its tests. Waiting is async: an invocation that
//! finds no VM waits for a change (a VM released, a place freed) without a thread.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the scheduler needs to know of a VM.
pub trait PooledVm {
    /// When it last finished an invocation (or was started).
    fn last_used(&self) -> Instant;
    /// Whether its guest still runs.
    fn is_alive(&self) -> bool;
}

/// Which parked VM takes the next invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pick {
    /// The most recently used: few VMs stay hot, the others time out (the default).
    Mru,
    /// The least recently used: invocations spread over every parked VM.
    Lru,
    /// Any parked VM, chosen at random (tests and benchmarks: no order to lean on).
    Random,
}

/// The node's caps.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// VMs on the node at once, all functions.
    pub max_vms: usize,
    /// Invocations that may wait for a VM at once.
    pub max_queue: usize,
    /// How long an invocation may wait for a VM.
    pub queue_timeout: Duration,
    /// Which parked VM takes an invocation.
    pub pick: Pick,
}

/// A VM to stop, and why (for the metrics).
#[derive(Debug)]
pub struct Victim<V> {
    /// Its function.
    pub function: String,
    /// The VM.
    pub vm: V,
    /// `evicted`, `idle`, `dead`, `shutdown`.
    pub reason: &'static str,
}

/// What an invocation got.
#[derive(Debug)]
pub enum Grant<V> {
    /// A parked VM: run the invocation on it, then [`release`](Scheduler::release) it.
    Warm(V),
    /// A place for a new VM: start one, then report it with
    /// [`started`](Scheduler::started).
    Start,
}

/// Why an invocation got no VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The queue is full.
    #[error("{waiting} invocations are waiting for a VM already (the node's --max-queue)")]
    QueueFull {
        /// Invocations waiting.
        waiting: usize,
    },
    /// No VM became free in time.
    #[error(
        "no VM of `{function}` became free within {} ms (max_vms {per_function} for the \
         function, {per_node} for the node)",
        timeout.as_millis()
    )]
    TimedOut {
        /// The function.
        function: String,
        /// How long it waited.
        timeout: Duration,
        /// The function's cap.
        per_function: usize,
        /// The node's cap.
        per_node: usize,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Closing,
}

#[derive(Debug)]
struct Pool<V> {
    idle: VecDeque<V>,
    /// Running an invocation, or being reset after one (counted in `resetting` too).
    busy: usize,
    /// Busy VMs whose invocation is answered and which are being reset to their snapshot:
    /// parked again in a moment.
    resetting: usize,
    /// Acquisitions waiting for a VM being reset rather than starting one (at most one per
    /// VM being reset).
    reset_claims: usize,
    starting: usize,
    max_vms: usize,
    keep_alive: Duration,
}

impl<V> Pool<V> {
    fn vms(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }
}

#[derive(Debug)]
struct State<V> {
    pools: BTreeMap<String, Pool<V>>,
    total: usize,
    waiting: usize,
    closing: bool,
    /// State of the generator behind [`Pick::Random`] (xorshift64, never zero).
    random: u64,
}

impl<V> State<V> {
    /// A number below `n` (`n` > 0), from a xorshift64 generator: uniform enough to pick a
    /// parked VM, and no more.
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        (x % n as u64) as usize
    }
}

/// One step of an acquisition, decided under the lock.
enum Step<V> {
    Granted(Grant<V>),
    Stop(Victim<V>),
    Wait,
}

impl<V: PooledVm> State<V> {
    /// Tries to give function `name` a VM, within the caps. `claimed` is the caller's claim
    /// on a VM being reset: an acquisition that finds no parked VM while one is being reset
    /// waits for it (a reset takes well under a millisecond) rather than starting a VM; one
    /// claim per VM being reset, so that a burst still starts VMs for the rest.
    fn step(&mut self, name: &str, caps: &Caps, claimed: &mut bool) -> Step<V> {
        let idle = self.pools.get(name).map_or(0, |p| p.idle.len());
        let random = (caps.pick == Pick::Random && idle > 0).then(|| self.below(idle));
        let Some(pool) = self.pools.get_mut(name) else {
            return Step::Wait;
        };
        let taken = match caps.pick {
            Pick::Mru => pool.idle.pop_back(),
            Pick::Lru => pool.idle.pop_front(),
            Pick::Random => random.and_then(|at| pool.idle.remove(at)),
        };
        if let Some(vm) = taken {
            if !vm.is_alive() {
                // Its guest ended while parked (a lost backend makes the runtime loop give
                // up, for one): stop it and look again.
                self.total -= 1;
                return Step::Stop(Victim {
                    function: name.to_owned(),
                    vm,
                    reason: "dead",
                });
            }
            pool.busy += 1;
            if std::mem::take(claimed) {
                pool.reset_claims -= 1;
            }
            return Step::Granted(Grant::Warm(vm));
        }
        if *claimed && pool.resetting > 0 {
            return Step::Wait;
        }
        if !*claimed && pool.reset_claims < pool.resetting {
            pool.reset_claims += 1;
            *claimed = true;
            return Step::Wait;
        }
        if std::mem::take(claimed) {
            // The VM it waited for did not come back (its reset failed): go on without it.
            pool.reset_claims -= 1;
        }
        if pool.vms() < pool.max_vms {
            if self.total < caps.max_vms {
                pool.starting += 1;
                self.total += 1;
                return Step::Granted(Grant::Start);
            }
            if let Some(victim) = self.evict_idle() {
                return Step::Stop(victim);
            }
        }
        Step::Wait
    }

    /// Gives up an acquisition's claim on a VM being reset, if it holds one.
    fn drop_claim(&mut self, name: &str, claimed: &mut bool) {
        if std::mem::take(claimed) {
            if let Some(pool) = self.pools.get_mut(name) {
                pool.reset_claims -= 1;
            }
        }
    }

    /// Takes the least recently used idle VM of any function.
    fn evict_idle(&mut self) -> Option<Victim<V>> {
        let (function, _) = self
            .pools
            .iter()
            .filter_map(|(f, p)| p.idle.front().map(|vm| (f.clone(), vm.last_used())))
            .min_by_key(|(_, used)| *used)?;
        let vm = self.pools.get_mut(&function)?.idle.pop_front()?;
        self.total -= 1;
        Some(Victim {
            function,
            vm,
            reason: "evicted",
        })
    }
}

/// The scheduler (see the module docs).
#[derive(Debug)]
pub struct Scheduler<V> {
    caps: Caps,
    state: Mutex<State<V>>,
    changed: Notify,
}

/// VMs of a function by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VmCounts {
    /// Parked, waiting for an invocation.
    pub idle: usize,
    /// Running an invocation.
    pub busy: usize,
    /// Being started.
    pub starting: usize,
}

impl<V: PooledVm> Scheduler<V> {
    /// A scheduler with `caps` for functions given as (name, cap on its VMs, keep-alive).
    pub fn new(caps: Caps, functions: impl IntoIterator<Item = (String, usize, Duration)>) -> Self {
        let pools = functions
            .into_iter()
            .map(|(name, max_vms, keep_alive)| {
                (
                    name,
                    Pool {
                        idle: VecDeque::new(),
                        busy: 0,
                        resetting: 0,
                        reset_claims: 0,
                        starting: 0,
                        max_vms,
                        keep_alive,
                    },
                )
            })
            .collect();
        Self {
            caps,
            state: Mutex::new(State {
                pools,
                total: 0,
                waiting: 0,
                closing: false,
                random: seed(),
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A VM (or a place to start one) for an invocation of function `name`, waiting in the
    /// queue (at most the queue timeout) if the caps are in the way. `stop` is called with
    /// each VM the scheduler takes out of the pools on the way (evicted, dead): the caller
    /// stops them.
    pub async fn acquire(
        &self,
        name: &str,
        mut stop: impl FnMut(Victim<V>),
    ) -> Result<Grant<V>, Refusal> {
        let deadline = tokio::time::Instant::now() + self.caps.queue_timeout;
        let mut queued = false;
        let mut claimed = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut state = self.state();
                if state.closing {
                    if queued {
                        state.waiting -= 1;
                    }
                    state.drop_claim(name, &mut claimed);
                    return Err(Refusal::Closing);
                }
                let step = state.step(name, &self.caps, &mut claimed);
                match &step {
                    Step::Granted(_) if queued => {
                        state.waiting -= 1;
                        queued = false;
                    }
                    Step::Wait if !queued => {
                        if state.waiting >= self.caps.max_queue {
                            state.drop_claim(name, &mut claimed);
                            return Err(Refusal::QueueFull {
                                waiting: state.waiting,
                            });
                        }
                        state.waiting += 1;
                        queued = true;
                    }
                    _ => {}
                }
                step
            };
            match step {
                Step::Granted(grant) => return Ok(grant),
                Step::Stop(victim) => {
                    stop(victim);
                    continue;
                }
                Step::Wait => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut state = self.state();
                // One last look: a change may have come with the deadline.
                if let Step::Granted(grant) = state.step(name, &self.caps, &mut claimed) {
                    state.waiting -= 1;
                    return Ok(grant);
                }
                state.waiting -= 1;
                state.drop_claim(name, &mut claimed);
                let per_function = state.pools.get(name).map_or(0, |p| p.max_vms);
                return Err(Refusal::TimedOut {
                    function: name.to_owned(),
                    timeout: self.caps.queue_timeout,
                    per_function,
                    per_node: self.caps.max_vms,
                });
            }
        }
    }

    /// A VM started for a [`Grant::Start`] of function `name`: `Some(vm)` is now busy (run the
    /// invocation on it, then release it); `None` (the start failed) frees the place.
    pub fn started(&self, name: &str, vm: Option<V>) -> Option<V> {
        let mut state = self.state();
        let state = &mut *state;
        if let Some(pool) = state.pools.get_mut(name) {
            pool.starting -= 1;
            if vm.is_some() {
                pool.busy += 1;
            } else {
                state.total -= 1;
            }
        }
        self.changed.notify_waiters();
        vm
    }

    /// A VM of function `name` is done with its invocation: parked again if `healthy` (and
    /// the node is not closing), else handed back to be stopped.
    pub fn release(&self, name: &str, vm: V, healthy: bool) -> Option<V> {
        self.give_back(name, vm, healthy, false)
    }

    /// [`release`](Self::release), of a VM that was being reset if `was_resetting` (in the
    /// same step: a waiter never sees it neither resetting nor parked).
    fn give_back(&self, name: &str, vm: V, healthy: bool, was_resetting: bool) -> Option<V> {
        let stopped = {
            let mut state = self.state();
            let state = &mut *state;
            let closing = state.closing;
            let pool = state.pools.get_mut(name)?;
            pool.busy -= 1;
            if was_resetting {
                pool.resetting -= 1;
            }
            if healthy && !closing {
                pool.idle.push_back(vm);
                None
            } else {
                state.total -= 1;
                Some(vm)
            }
        };
        self.changed.notify_waiters();
        stopped
    }

    /// A busy VM of function `name` has answered its invocation and is being reset: an
    /// acquisition that finds no parked VM waits for it rather than starting one. Hand it
    /// back with [`reset_done`](Self::reset_done).
    pub fn resetting(&self, name: &str) {
        if let Some(pool) = self.state().pools.get_mut(name) {
            pool.resetting += 1;
        }
    }

    /// A VM of `name` marked [`resetting`](Self::resetting) is back: as [`release`](Self::release).
    pub fn reset_done(&self, name: &str, vm: V, healthy: bool) -> Option<V> {
        self.give_back(name, vm, healthy, true)
    }

    /// A place for one more parked VM of `name` (for warming), if the caps allow and fewer
    /// than `count` are parked or starting.
    pub fn reserve_warm(&self, name: &str, count: usize) -> Result<bool, String> {
        let mut state = self.state();
        let state = &mut *state;
        let Some(pool) = state.pools.get_mut(name) else {
            return Ok(false);
        };
        if pool.idle.len() + pool.starting >= count {
            return Ok(false);
        }
        if pool.vms() >= pool.max_vms || state.total >= self.caps.max_vms {
            return Err(format!(
                "cannot park {count} VMs of `{name}`: {} VMs of it (max_vms {}), {} on the node \
                 (--max-vms {})",
                pool.vms(),
                pool.max_vms,
                state.total,
                self.caps.max_vms
            ));
        }
        pool.starting += 1;
        state.total += 1;
        Ok(true)
    }

    /// A VM started by [`reserve_warm`](Self::reserve_warm): parked, or the place freed.
    pub fn warmed(&self, name: &str, vm: Option<V>) {
        let mut state = self.state();
        let state = &mut *state;
        if let Some(pool) = state.pools.get_mut(name) {
            pool.starting -= 1;
            match vm {
                Some(vm) => pool.idle.push_back(vm),
                None => state.total -= 1,
            }
        }
        self.changed.notify_waiters();
    }

    /// Takes out the parked VMs idle past their function's keep-alive, and those whose
    /// guest ended, for the caller to stop.
    pub fn reap(&self, now: Instant) -> Vec<Victim<V>> {
        let mut expired = Vec::new();
        {
            let mut state = self.state();
            let state = &mut *state;
            for (name, pool) in state.pools.iter_mut() {
                // Oldest first: VMs are parked in the order they finished.
                while pool.idle.front().is_some_and(|vm| {
                    now.saturating_duration_since(vm.last_used()) > pool.keep_alive
                }) {
                    if let Some(vm) = pool.idle.pop_front() {
                        expired.push(Victim {
                            function: name.clone(),
                            vm,
                            reason: "idle",
                        });
                    }
                }
                if pool.idle.iter().any(|vm| !vm.is_alive()) {
                    let (alive, dead): (VecDeque<_>, VecDeque<_>) =
                        pool.idle.drain(..).partition(PooledVm::is_alive);
                    pool.idle = alive;
                    expired.extend(dead.into_iter().map(|vm| Victim {
                        function: name.clone(),
                        vm,
                        reason: "dead",
                    }));
                }
            }
            state.total -= expired.len();
        }
        if !expired.is_empty() {
            self.changed.notify_waiters();
        }
        expired
    }

    /// Refuses every later acquisition and hands back every parked VM.
    pub fn close(&self) -> Vec<Victim<V>> {
        let mut all = Vec::new();
        {
            let mut state = self.state();
            let state = &mut *state;
            state.closing = true;
            for (name, pool) in state.pools.iter_mut() {
                all.extend(pool.idle.drain(..).map(|vm| Victim {
                    function: name.clone(),
                    vm,
                    reason: "shutdown",
                }));
            }
            state.total -= all.len();
        }
        self.changed.notify_waiters();
        all
    }

    /// Function `name`'s VMs by state.
    pub fn counts(&self, name: &str) -> VmCounts {
        self.state()
            .pools
            .get(name)
            .map(|p| VmCounts {
                idle: p.idle.len(),
                busy: p.busy,
                starting: p.starting,
            })
            .unwrap_or_default()
    }

    /// Every function's VMs by state, and the invocations waiting.
    pub fn all_counts(&self) -> (Vec<(String, VmCounts)>, usize) {
        let state = self.state();
        let counts = state
            .pools
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    VmCounts {
                        idle: p.idle.len(),
                        busy: p.busy,
                        starting: p.starting,
                    },
                )
            })
            .collect();
        (counts, state.waiting)
    }

    /// VMs on the node.
    pub fn total(&self) -> usize {
        self.state().total
    }
}

/// A non-zero seed for [`Pick::Random`]: the clock's nanoseconds mixed with this process's ID.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Debug, Clone)]
    struct Fake {
        id: u32,
        used: Instant,
        alive: Arc<AtomicBool>,
    }

    impl PooledVm for Fake {
        fn last_used(&self) -> Instant {
            self.used
        }
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }
    }

    fn fake(id: u32) -> Fake {
        Fake {
            id,
            used: Instant::now(),
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    fn caps(max_vms: usize, max_queue: usize, pick: Pick) -> Caps {
        Caps {
            max_vms,
            max_queue,
            queue_timeout: Duration::from_millis(200),
            pick,
        }
    }

    fn scheduler(caps: Caps, functions: &[(&str, usize)]) -> Arc<Scheduler<Fake>> {
        Arc::new(Scheduler::new(
            caps,
            functions
                .iter()
                .map(|(n, max)| (n.to_string(), *max, Duration::from_secs(60))),
        ))
    }

    fn no_victims(v: Victim<Fake>) {
        panic!("unexpected victim {} ({})", v.vm.id, v.reason);
    }

    /// Starts a VM of `name` and parks it (as warming does).
    async fn park(s: &Scheduler<Fake>, name: &str, vm: Fake) {
        assert_eq!(s.reserve_warm(name, usize::MAX), Ok(true));
        s.warmed(name, Some(vm));
    }

    #[tokio::test]
    async fn a_parked_vm_is_reused_in_the_order_chosen() {
        for (pick, first) in [(Pick::Mru, 2), (Pick::Lru, 1)] {
            let s = scheduler(caps(8, 8, pick), &[("f", 4)]);
            park(&s, "f", fake(1)).await;
            park(&s, "f", fake(2)).await;
            assert_eq!(
                s.counts("f"),
                VmCounts {
                    idle: 2,
                    busy: 0,
                    starting: 0
                }
            );
            match s.acquire("f", no_victims).await {
                Ok(Grant::Warm(vm)) => assert_eq!(vm.id, first, "{pick:?}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                s.counts("f"),
                VmCounts {
                    idle: 1,
                    busy: 1,
                    starting: 0
                }
            );
        }
    }

    #[tokio::test]
    async fn a_random_pick_takes_every_parked_vm_and_no_other() {
        const VMS: u32 = 16;
        let s = scheduler(caps(64, 8, Pick::Random), &[("f", VMS as usize)]);
        for id in 0..VMS {
            park(&s, "f", fake(id)).await;
        }
        // Drawing all of them without putting any back: each exactly once, not in the order
        // they were parked (1 chance in 16! of that order).
        let mut order = Vec::new();
        for _ in 0..VMS {
            match s.acquire("f", no_victims).await {
                Ok(Grant::Warm(vm)) => order.push(vm.id),
                other => panic!("{other:?}"),
            }
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..VMS).collect::<Vec<_>>());
        assert_ne!(order, sorted, "a random pick went in parking order");
        // With every VM busy the next one must start a VM, within the function's cap: none.
        assert!(s.counts("f").idle == 0 && s.counts("f").busy == VMS as usize);
    }

    #[tokio::test]
    async fn the_function_cap_queues_and_a_release_wakes_the_waiter() {
        let s = scheduler(caps(8, 8, Pick::Mru), &[("f", 1)]);
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
        let vm = s.started("f", Some(fake(1))).unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("f", no_victims).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the cap of one VM holds it back");
        assert_eq!(s.all_counts().1, 1, "one invocation waiting");
        assert!(s.release("f", vm, true).is_none());
        match waiter.await.unwrap() {
            Ok(Grant::Warm(vm)) => assert_eq!(vm.id, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.all_counts().1, 0);
    }

    #[tokio::test]
    async fn an_acquisition_waits_for_a_vm_being_reset_one_per_vm_and_not_for_a_failed_one() {
        let s = scheduler(caps(8, 8, Pick::Mru), &[("f", 4)]);
        park(&s, "f", fake(1)).await;
        let vm = match s.acquire("f", no_victims).await {
            Ok(Grant::Warm(vm)) => vm,
            other => panic!("{other:?}"),
        };
        s.resetting("f");
        // Two invocations arrive while the only VM is being reset: the first waits for it,
        // the second (no VM left to claim) starts one.
        let first = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("f", no_victims).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!first.is_finished(), "it waits for the VM being reset");
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
        assert!(s.reset_done("f", vm, true).is_none());
        match first.await.unwrap() {
            Ok(Grant::Warm(vm)) => assert_eq!(vm.id, 1),
            other => panic!("{other:?}"),
        }
        // A reset that fails hands its waiter on to starting a VM.
        s.resetting("f");
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("f", no_victims).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert!(
            s.reset_done("f", fake(1), false).is_some(),
            "handed back to stop"
        );
        assert!(matches!(waiter.await.unwrap(), Ok(Grant::Start)));
        assert_eq!(s.all_counts().1, 0);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_waits_time_out() {
        let s = scheduler(caps(8, 1, Pick::Mru), &[("f", 1)]);
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("f", no_victims).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            s.acquire("f", no_victims).await.unwrap_err(),
            Refusal::QueueFull { waiting: 1 }
        );
        assert!(matches!(
            waiter.await.unwrap(),
            Err(Refusal::TimedOut {
                per_function: 1,
                ..
            })
        ));
        assert_eq!(s.all_counts().1, 0, "the timed-out waiter left the queue");
    }

    #[tokio::test]
    async fn the_node_cap_evicts_the_least_recently_used_idle_vm_of_another_function() {
        let s = scheduler(caps(2, 8, Pick::Mru), &[("a", 4), ("b", 4)]);
        let old = fake(1);
        park(&s, "a", old).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        park(&s, "a", fake(2)).await;
        let mut victims = Vec::new();
        let grant = s
            .acquire("b", |v| victims.push((v.function, v.vm.id, v.reason)))
            .await;
        assert!(matches!(grant, Ok(Grant::Start)));
        assert_eq!(victims, [("a".to_owned(), 1, "evicted")]);
        assert_eq!(s.total(), 2);
    }

    #[tokio::test]
    async fn a_failed_start_frees_its_place() {
        let s = scheduler(caps(1, 8, Pick::Mru), &[("f", 1)]);
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
        assert!(s.started("f", None).is_none());
        assert_eq!(s.total(), 0);
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
    }

    #[tokio::test]
    async fn dead_vms_are_dropped_and_idle_ones_reaped_after_their_keep_alive() {
        let s = Scheduler::new(
            caps(8, 8, Pick::Mru),
            [("f".to_string(), 4, Duration::from_millis(50))],
        );
        let dead = fake(1);
        park(&s, "f", dead.clone()).await;
        dead.alive.store(false, Ordering::Relaxed);
        let mut victims = Vec::new();
        let grant = s.acquire("f", |v| victims.push((v.vm.id, v.reason))).await;
        assert!(
            matches!(grant, Ok(Grant::Start)),
            "a dead VM is not handed out"
        );
        assert_eq!(victims, [(1, "dead")]);
        let vm = s.started("f", Some(fake(2))).unwrap();
        assert!(s.release("f", vm, true).is_none());
        assert!(
            s.reap(Instant::now()).is_empty(),
            "still within its keep-alive"
        );
        let reaped = s.reap(Instant::now() + Duration::from_millis(60));
        assert_eq!(reaped.len(), 1);
        assert_eq!((reaped[0].vm.id, reaped[0].reason), (2, "idle"));
        assert_eq!(s.total(), 0);
    }

    #[tokio::test]
    async fn an_unhealthy_vm_is_not_parked_and_closing_refuses_and_drains() {
        let s = scheduler(caps(8, 8, Pick::Mru), &[("f", 4)]);
        assert!(matches!(s.acquire("f", no_victims).await, Ok(Grant::Start)));
        let vm = s.started("f", Some(fake(1))).unwrap();
        assert_eq!(s.release("f", vm, false).map(|v| v.id), Some(1));
        park(&s, "f", fake(2)).await;
        let drained = s.close();
        assert_eq!(drained.len(), 1);
        assert_eq!(
            s.acquire("f", no_victims).await.unwrap_err(),
            Refusal::Closing
        );
        assert_eq!(s.total(), 0);
    }

    #[tokio::test]
    async fn warming_reserves_places_within_the_caps() {
        let s = scheduler(caps(3, 8, Pick::Mru), &[("f", 2)]);
        assert_eq!(s.reserve_warm("f", 5), Ok(true));
        s.warmed("f", Some(fake(1)));
        assert_eq!(s.reserve_warm("f", 1), Ok(false), "one is parked already");
        assert_eq!(s.reserve_warm("f", 5), Ok(true));
        s.warmed("f", None);
        assert_eq!(s.counts("f").idle, 1);
        assert_eq!(s.reserve_warm("f", 5), Ok(true));
        s.warmed("f", Some(fake(2)));
        assert!(s.reserve_warm("f", 5).unwrap_err().contains("max_vms 2"));
    }
}
