// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A pool of threads that runs many vCPUs, where a vCPU waiting on its device holds no thread.
//!
//! [`Vcpu::spawn`] gives every vCPU a thread of its own, which then blocks inside a device
//! read (nexus-io's WAIT register) for as long as the VM is idle: a node with thousands of
//! parked function VMs would hold thousands of blocked threads. A [`VcpuPool`] runs vCPUs on
//! a few worker threads instead, and a vCPU whose device would block is *parked*
//! ([`crate::park`]): it leaves its worker with the MMIO read still pending in KVM, and
//! becomes an entry in the pool's epoll set — the descriptors its device named (the call
//! eventfd, the backend connections) and a deadline. When one is ready, a worker repeats the
//! device's read (which may park it again), completes the guest's access with its answer and
//! enters `KVM_RUN`.
//!
//! - **Threads**: as many workers as vCPUs are running (not parked), plus at least one and
//!   up to [`PoolConfig::spare_workers`] idle ones, and a monitor that sleeps unless no
//!   worker is watching. An idle worker *watches*: it waits in `epoll_wait` on the pool's one
//!   epoll set (all idle workers wait there, and the kernel wakes one per event), and the
//!   worker an event wakes runs the vCPU itself — one thread wake-up per invocation, as a
//!   vCPU on its own thread has. A worker leaving to run a vCPU while no other watches
//!   starts another (at most one per [`PoolConfig::spawn_delay`]; the monitor starts one
//!   when the delay has passed), so that the pool grows under a burst or a guest that keeps
//!   its worker (computing), and no more: starting threads for every burst of wake-ups
//!   would cost more than it saves (each thread's stack mapping calls every VM's MMU
//!   notifier). Workers beyond the spares end after [`PoolConfig::idle_retire`].
//! - **Handles**: [`VcpuPool::spawn`] returns the same [`VcpuHandle`] as [`Vcpu::spawn`]:
//!   stop (kicks a running vCPU with the same signal; a parked one is taken out of the pool
//!   and its device answers the pending read at once —
//!   [`WaitMode::Now`](crate::park::WaitMode::Now) — on the stopping thread), join,
//!   statistics.
//! - **Cost**: a park re-arms the device's descriptors in the epoll set (`EPOLLONESHOT`:
//!   one `epoll_ctl` each, nothing to remove when the vCPU wakes); they leave the set when
//!   its run ends.
//!
//! ```ignore
//! let pool = VcpuPool::new(PoolConfig::default())?;
//! let handle = pool.spawn(vcpu, |ended| log::info!("vCPU ended: {ended:?}"))?;
//! // ... the guest runs, parks in its device's WAIT, runs again ...
//! let (vcpu, result) = handle.stop()?;
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EFD_SEMAPHORE, EventFd};
use vmm_sys_util::signal::SIGRTMIN;

use crate::park::{ModeGuard, ParkRequest, Readiness, WaitMode};
use crate::vcpu::{KICK_SIGNAL_OFFSET, PendingRead, Run, Runner, VcpuHandle};
use crate::{Error, Result, Vcpu, VcpuStop};

/// How a [`VcpuPool`] runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The threads' name prefix (`<name>-<n>` workers, `<name>-mon`; Linux keeps 15 bytes).
    pub name: String,
    /// Idle workers kept watching, beyond those running vCPUs (at least one is always
    /// kept), so that a vCPU woken from its park does not wait for a thread to be created.
    pub spare_workers: usize,
    /// How long a worker beyond the spares stays idle before it ends.
    pub idle_retire: Duration,
    /// How long vCPUs may wait for a worker, none being idle, before another worker is
    /// started (one per such period while the backlog lasts). Workers usually come free
    /// within microseconds (the vCPU they run parks again): starting a thread for every
    /// burst of wake-ups would cost more than the wait — on a host with many VMs each
    /// thread's stack mapping calls every VM's MMU notifier. A guest that keeps its worker
    /// (computing) gets the others a new worker after this delay.
    pub spawn_delay: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "vcpu".into(),
            spare_workers: 2,
            idle_retire: Duration::from_secs(30),
            spawn_delay: Duration::from_millis(1),
        }
    }
}

/// What a pool holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// vCPUs spawned on the pool whose run has not ended.
    pub vcpus: usize,
    /// Of those, parked (waiting on their device, on no thread).
    pub parked: usize,
    /// Worker threads (the monitor not counted).
    pub workers: usize,
    /// Of those, idle (watching the epoll set).
    pub idle_workers: usize,
}

/// A pool of threads that runs vCPUs; see the [module documentation](self). Clones share the
/// pool; its threads end once the last clone is dropped and every vCPU spawned on it has
/// ended.
#[derive(Clone)]
pub struct VcpuPool {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for VcpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuPool")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The epoll event data of the pool's own wake-up eventfd (others carry their descriptor).
const WAKE: u64 = u64::MAX;

/// How often a vCPU whose device named nothing to wait for (or whose descriptors could not be
/// watched) repeats its read.
const FALLBACK_RETRY: Duration = Duration::from_millis(10);

struct Shared {
    config: PoolConfig,
    epoll: Epoll,
    /// Wakes one watching worker per unit written (a semaphore eventfd): a vCPU queued from
    /// outside, an earlier deadline, the pool ending.
    wake: EventFd,
    state: Mutex<State>,
    /// Wakes the monitor: no worker is watching.
    unwatched: Condvar,
}

#[derive(Default)]
struct State {
    next_token: u64,
    /// vCPUs ready to run, in order.
    ready: VecDeque<Arc<Slot>>,
    /// Parked vCPUs by token.
    parked: HashMap<u64, Parked>,
    /// Descriptors in the epoll set, with the vCPUs each wakes (a shared control connection
    /// is watched once for all the VMs on it).
    watched: HashMap<RawFd, Watch>,
    /// The descriptors each vCPU has in the epoll set (they stay while it runs).
    registered: HashMap<u64, Vec<RawFd>>,
    /// Parked vCPUs' deadlines (entries of vCPUs no longer parked are skipped).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The latest time a watching worker sleeps until (`None`: no deadline).
    sleeps_until: Option<Instant>,
    /// When the last worker was started.
    last_spawn: Option<Instant>,
    workers: usize,
    /// Workers watching (in `epoll_wait`).
    idle: usize,
    live: usize,
    shutdown: bool,
}

struct Watch {
    events: EventSet,
    tokens: HashSet<u64>,
}

struct Parked {
    slot: Arc<Slot>,
    deadline: Option<Instant>,
}

/// One vCPU spawned on a pool.
pub(crate) struct Slot {
    token: u64,
    stop: Arc<AtomicBool>,
    /// The vCPU's descriptor while its run lasts (for [`VcpuHandle::stats`]).
    fd: Arc<Mutex<Option<RawFd>>>,
    run: Mutex<SlotRun>,
    /// Signalled whenever `run` changes.
    changed: Condvar,
}

enum SlotRun {
    /// Ready to run, or parked: the vCPU is here.
    Waiting(Box<Job>),
    /// On a worker thread.
    Running(libc::pthread_t),
    /// Its run ended; `None` once taken (or if its `on_exit` panicked).
    Done(Option<(Vcpu, Result<VcpuStop>)>),
}

type OnExit = Box<dyn FnOnce(&Result<VcpuStop>) + Send>;

struct Job {
    vcpu: Vcpu,
    /// The MMIO read it owes the guest, if parked.
    pending: Option<PendingRead>,
    on_exit: Option<OnExit>,
}

/// Sets the pool's threads to end once nothing runs on it (dropped with the last clone).
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.shutdown = true;
        self.0.wake_all(&state);
    }
}

impl VcpuPool {
    /// A pool with its monitor started (workers start as vCPUs need them).
    pub fn new(config: PoolConfig) -> Result<Self> {
        let epoll = Epoll::new().map_err(Error::Pool)?;
        let wake = EventFd::new(EFD_NONBLOCK | EFD_SEMAPHORE).map_err(Error::Pool)?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, WAKE),
            )
            .map_err(Error::Pool)?;
        let shared = Arc::new(Shared {
            config,
            epoll,
            wake,
            state: Mutex::new(State::default()),
            unwatched: Condvar::new(),
        });
        let monitor = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("{}-mon", shared.config.name))
            .spawn(move || {
                crate::threads::thread_started(crate::threads::ThreadRole::PoolMonitor);
                monitor.monitor()
            })
            .map_err(Error::Thread)?;
        Ok(VcpuPool {
            _owner: Arc::new(Owner(Arc::clone(&shared))),
            shared,
        })
    }

    /// Runs `vcpu` on the pool; `on_exit` is called on a worker with how its run ended,
    /// just before the handle sees it end (as [`Vcpu::spawn_with_exit`] does).
    pub fn spawn(
        &self,
        vcpu: Vcpu,
        on_exit: impl FnOnce(&Result<VcpuStop>) + Send + 'static,
    ) -> Result<VcpuHandle> {
        let stop = vcpu.stop_flag();
        let fd = Arc::new(Mutex::new(Some(vcpu.fd().as_raw_fd())));
        let mut state = self.shared.lock();
        let token = state.next_token;
        state.next_token += 1;
        let slot = Arc::new(Slot {
            token,
            stop: Arc::clone(&stop),
            fd: Arc::clone(&fd),
            run: Mutex::new(SlotRun::Waiting(Box::new(Job {
                vcpu,
                pending: None,
                on_exit: Some(Box::new(on_exit)),
            }))),
            changed: Condvar::new(),
        });
        state.live += 1;
        state.ready.push_back(Arc::clone(&slot));
        if let Err(e) = self.shared.dispatch(&mut state) {
            // No worker can run it: take it back out.
            state.ready.retain(|s| s.token != token);
            state.live -= 1;
            return Err(e);
        }
        drop(state);
        Ok(VcpuHandle::new(
            stop,
            fd,
            Runner::Pool(Pooled {
                slot,
                shared: Arc::clone(&self.shared),
            }),
        ))
    }

    /// What the pool holds right now.
    pub fn stats(&self) -> PoolStats {
        let state = self.shared.lock();
        PoolStats {
            vcpus: state.live,
            parked: state.parked.len(),
            workers: state.workers,
            idle_workers: state.idle,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes one watching worker.
    fn wake_one(&self) {
        if let Err(e) = self.wake.write(1) {
            log::error!("vCPU pool: cannot wake a worker: {e}");
        }
    }

    /// Wakes every worker and the monitor (the pool is ending, or may be).
    fn wake_all(&self, state: &State) {
        for _ in 0..state.workers.max(1) {
            self.wake_one();
        }
        self.unwatched.notify_all();
    }

    /// Makes sure a worker takes the vCPU just queued from outside the workers: a watching
    /// one, else the first one, else (all are running) the monitor sees to it.
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Result<()> {
        if state.idle > 0 {
            self.wake_one();
            Ok(())
        } else if state.workers == 0 {
            self.spawn_worker(state)
        } else {
            self.unwatched.notify_one();
            Ok(())
        }
    }

    fn spawn_worker(self: &Arc<Self>, state: &mut State) -> Result<()> {
        let n = state.workers;
        let shared = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("{}-{n}", self.config.name))
            .spawn(move || {
                crate::threads::thread_started(crate::threads::ThreadRole::Vcpu);
                shared.work()
            })
            .map_err(Error::Thread)?;
        state.workers += 1;
        state.last_spawn = Some(Instant::now());
        Ok(())
    }

    /// Whether a worker may be started now (none within the spawn delay).
    fn may_spawn(&self, state: &State, now: Instant) -> bool {
        state
            .last_spawn
            .is_none_or(|at| now.duration_since(at) >= self.config.spawn_delay)
    }

    /// A worker: runs ready vCPUs; idle, watches the epoll set for parked vCPUs' events and
    /// deadlines, and runs the first vCPU an event wakes itself.
    fn work(self: Arc<Self>) {
        let mut events = vec![EpollEvent::default(); 32];
        let mut state = self.lock();
        let mut idle_since: Option<Instant> = None;
        loop {
            if let Some(slot) = state.ready.pop_front() {
                idle_since = None;
                if state.idle == 0 && !(state.parked.is_empty() && state.ready.is_empty()) {
                    // Nobody would watch while this one runs.
                    let now = Instant::now();
                    if self.may_spawn(&state, now) {
                        if let Err(e) = self.spawn_worker(&mut state) {
                            log::error!("vCPU pool: cannot start a worker: {e}");
                        }
                    } else {
                        self.unwatched.notify_one();
                    }
                }
                drop(state);
                // A panic the run step did not catch (the owner's `on_exit`): the slot's
                // `Unwind` guard has marked it ended; this worker goes on, so the pool keeps
                // its count of workers and watchers right.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.run_slot(&slot);
                }));
                if ran.is_err() {
                    log::error!("vCPU pool: a vCPU's exit callback panicked; the worker goes on");
                }
                state = self.lock();
                continue;
            }
            if state.shutdown && state.live == 0 {
                break;
            }
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            let retire_at = since + self.config.idle_retire;
            if now >= retire_at && state.idle >= self.config.spare_workers.max(1) {
                break;
            }
            let deadline = next_deadline(&mut state);
            if deadline.is_some_and(|d| state.sleeps_until.is_none_or(|s| d > s)) {
                state.sleeps_until = deadline;
            }
            let until = deadline.map_or(retire_at, |d| d.min(retire_at));
            let left = until.saturating_duration_since(now);
            let timeout_ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
            state.idle += 1;
            drop(state);
            let n = match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    log::error!("vCPU pool: epoll_wait failed: {e}");
                    std::thread::sleep(FALLBACK_RETRY);
                    0
                }
            };
            state = self.lock();
            state.idle -= 1;
            let before = state.ready.len();
            for event in events.iter().take(n) {
                if event.data() == WAKE {
                    // One unit: other watchers wake for the others.
                    let _ = self.wake.read();
                    continue;
                }
                let fd = event.data() as RawFd;
                // Disarmed by EPOLLONESHOT until a park re-arms it.
                let tokens: Vec<u64> = state
                    .watched
                    .get(&fd)
                    .map(|w| w.tokens.iter().copied().collect())
                    .unwrap_or_default();
                for token in tokens {
                    self.unpark(&mut state, token);
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((deadline, token))) = state.deadlines.peek() {
                if deadline > now {
                    break;
                }
                state.deadlines.pop();
                if state.parked.get(&token).and_then(|p| p.deadline) == Some(deadline) {
                    self.unpark(&mut state, token);
                }
            }
            // This worker takes the first one woken (at the top of the loop); other watchers
            // wake for the rest.
            let woken = state.ready.len().saturating_sub(before);
            for _ in 1..woken.min(state.idle.saturating_add(1)) {
                self.wake_one();
            }
        }
        state.workers -= 1;
        if state.shutdown {
            self.unwatched.notify_all();
        }
    }

    /// Runs one vCPU until it parks or its run ends.
    fn run_slot(self: &Arc<Self>, slot: &Arc<Slot>) {
        let mut job = {
            let mut run = slot.lock();
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            match std::mem::replace(&mut *run, SlotRun::Running(me)) {
                SlotRun::Waiting(job) => job,
                other => {
                    // Queued twice (cannot happen): leave it as it was.
                    *run = other;
                    return;
                }
            }
        };
        let mut unwind = Unwind {
            shared: self,
            slot,
            armed: true,
        };
        loop {
            let stopping = slot.stop.load(Ordering::Acquire);
            let mode = ModeGuard::set(if stopping {
                WaitMode::Now
            } else {
                WaitMode::Park
            });
            // One run step of this vCPU; a panic in it (a device's exit handler) ends this
            // vCPU's run with an error its owner sees, and the worker goes on with the
            // others. AssertUnwindSafe: the step touches this job's vCPU and its devices
            // only (no pool state is locked meanwhile); the devices' locks recover from
            // poisoning (bus.rs) and the vCPU, stopped mid-exit, is handed back with the
            // error, never run again by the pool.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match job.pending.take() {
                    Some(pending) => match job.vcpu.retry_read(pending) {
                        Some(request) => Ok(Run::Parked(request, pending)),
                        None => job.vcpu.run_parkable(),
                    },
                    None => job.vcpu.run_parkable(),
                }
            }));
            let result = step.unwrap_or_else(|payload| {
                Err(Error::RunPanicked(crate::vcpu::panic_message(&*payload)))
            });
            drop(mode);
            let result = match result {
                Ok(Run::Parked(request, pending)) => {
                    job.pending = Some(pending);
                    let mut run = slot.lock();
                    if slot.stop.load(Ordering::Acquire) {
                        // Being stopped: let the device answer now instead.
                        continue;
                    }
                    *run = SlotRun::Waiting(job);
                    let mut state = self.lock();
                    self.park(&mut state, slot, &request);
                    drop(state);
                    drop(run);
                    slot.changed.notify_all();
                    unwind.armed = false;
                    return;
                }
                Ok(Run::Stop(stop)) => Ok(stop),
                Err(e) => Err(e),
            };
            if let Some(on_exit) = job.on_exit.take() {
                on_exit(&result);
            }
            *slot.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
            unwind.armed = false;
            // Counted first: a handle that sees its vCPU done sees the pool without it.
            self.ended(slot.token);
            *slot.lock() = SlotRun::Done(Some((job.vcpu, result)));
            slot.changed.notify_all();
            return;
        }
    }

    /// A vCPU's run ended: its descriptors leave the epoll set.
    fn ended(&self, token: u64) {
        let mut state = self.lock();
        state.live -= 1;
        self.unregister(&mut state, token, &[]);
        if state.shutdown && state.live == 0 {
            self.wake_all(&state);
        }
    }

    /// Takes vCPU `token`'s descriptors out of the epoll set, but those in `keep`.
    fn unregister(&self, state: &mut State, token: u64, keep: &[RawFd]) {
        let Some(fds) = state.registered.remove(&token) else {
            return;
        };
        let mut kept = Vec::new();
        for fd in fds {
            if keep.contains(&fd) {
                kept.push(fd);
                continue;
            }
            let Some(watch) = state.watched.get_mut(&fd) else {
                continue;
            };
            watch.tokens.remove(&token);
            if watch.tokens.is_empty() {
                state.watched.remove(&fd);
                // Fails harmlessly if the descriptor was closed meanwhile.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
        if !kept.is_empty() {
            state.registered.insert(token, kept);
        }
    }

    /// Parks `slot`'s vCPU: (re-)arms the descriptors of `request` in the epoll set (one
    /// event each, `EPOLLONESHOT`), and its deadline.
    fn park(&self, state: &mut State, slot: &Arc<Slot>, request: &ParkRequest) {
        let token = slot.token;
        let wanted: Vec<RawFd> = request.fds.iter().map(|&(fd, _)| fd).collect();
        // Descriptors of an earlier park this one no longer names (a new connection).
        self.unregister(state, token, &wanted);
        let mut armed = Vec::with_capacity(request.fds.len());
        for &(fd, readiness) in &request.fds {
            let want = match readiness {
                Readiness::Readable => EventSet::IN,
                // EPOLLHUP and EPOLLERR are always reported.
                Readiness::HangUp => EventSet::empty(),
            };
            let events = state.watched.get(&fd).map_or(want, |w| w.events | want);
            // Modify first (re-arm); a descriptor new to the set, or closed and reopened
            // under the same number (which silently left the set), is added.
            let event = EpollEvent::new(events | EventSet::ONE_SHOT, fd as u64);
            if self.epoll.ctl(ControlOperation::Modify, fd, event).is_err() {
                if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, event) {
                    log::warn!("vCPU pool: cannot watch descriptor {fd} of a parked vCPU: {e}");
                    continue;
                }
            }
            let watch = state.watched.entry(fd).or_insert_with(|| Watch {
                events,
                tokens: HashSet::new(),
            });
            watch.events = events;
            watch.tokens.insert(token);
            armed.push(fd);
        }
        let deadline = if armed.is_empty() {
            let retry = Instant::now() + FALLBACK_RETRY;
            Some(request.deadline.map_or(retry, |d| d.min(retry)))
        } else {
            request.deadline
        };
        if !armed.is_empty() {
            state.registered.insert(token, armed);
        }
        if let Some(deadline) = deadline {
            state.deadlines.push(Reverse((deadline, token)));
            // Watchers that sleep past it: wake one to look again.
            if state.idle > 0 && state.sleeps_until.is_none_or(|s| deadline < s) {
                state.sleeps_until = Some(deadline);
                self.wake_one();
            }
        }
        state.parked.insert(
            token,
            Parked {
                slot: Arc::clone(slot),
                deadline,
            },
        );
    }

    /// Moves a parked vCPU to the ready queue (nothing if it is not parked).
    fn unpark(&self, state: &mut State, token: u64) {
        if let Some(slot) = self.withdraw(state, token) {
            state.ready.push_back(slot);
        }
    }

    /// Takes a parked vCPU's slot out of the parked set (`None` if it is not parked): no
    /// worker runs it unless it is queued again. Its descriptors stay in the epoll set,
    /// disarmed or not (an event for a vCPU not parked is ignored).
    fn withdraw(&self, state: &mut State, token: u64) -> Option<Arc<Slot>> {
        Some(state.parked.remove(&token)?.slot)
    }

    /// The monitor: sleeps until no worker watches, then starts one once the spawn delay
    /// allows (vCPUs ready or parked must not wait for a worker that runs a computing guest).
    fn monitor(self: Arc<Self>) {
        let mut state = self.lock();
        loop {
            if state.shutdown && state.live == 0 && state.workers == 0 {
                break;
            }
            let unwatched = state.idle == 0
                && state.live > 0
                && !(state.parked.is_empty() && state.ready.is_empty());
            if !unwatched {
                state = self
                    .unwatched
                    .wait_timeout(state, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let now = Instant::now();
            if self.may_spawn(&state, now) {
                if let Err(e) = self.spawn_worker(&mut state) {
                    log::error!("vCPU pool: cannot start a worker: {e}");
                }
            }
            state = self
                .unwatched
                .wait_timeout(state, self.config.spawn_delay)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The earliest deadline of a vCPU still parked with it (stale heap entries dropped).
fn next_deadline(state: &mut State) -> Option<Instant> {
    while let Some(&Reverse((deadline, token))) = state.deadlines.peek() {
        if state.parked.get(&token).and_then(|p| p.deadline) == Some(deadline) {
            return Some(deadline);
        }
        state.deadlines.pop();
    }
    None
}

/// Marks a slot ended (its vCPU lost) if its worker unwinds from a panic outside the run step
/// (which catches its own: a device's): the owner's `on_exit`.
struct Unwind<'a> {
    shared: &'a Arc<Shared>,
    slot: &'a Arc<Slot>,
    armed: bool,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.slot.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.shared.ended(self.slot.token);
            *self.slot.lock() = SlotRun::Done(None);
            self.slot.changed.notify_all();
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotRun> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`VcpuHandle`]'s hold on a vCPU that runs on a pool.
pub(crate) struct Pooled {
    slot: Arc<Slot>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("token", &self.slot.token)
            .finish()
    }
}

impl Pooled {
    /// Ends the run of a parked vCPU withdrawn from the pool, on the calling thread: its
    /// device answers the pending read at once ([`WaitMode::Now`]), as a worker would have
    /// had it do, without handing the vCPU to one.
    fn stop_here(&self, mut job: Job) -> (Vcpu, Result<VcpuStop>) {
        if let Some(pending) = job.pending.take() {
            let _now = ModeGuard::set(WaitMode::Now);
            if job.vcpu.retry_read(pending).is_some() {
                log::warn!("vCPU pool: a device parked a vCPU that is being stopped");
            }
        }
        let result = Ok(VcpuStop::Stopped);
        if let Some(on_exit) = job.on_exit.take() {
            on_exit(&result);
        }
        *self.slot.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.ended(self.slot.token);
        (job.vcpu, result)
    }

    /// Whether the vCPU's run has ended.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(*self.slot.lock(), SlotRun::Done(_))
    }

    /// Waits for the run to end — with `stop`, making it end: a running vCPU is kicked out
    /// of `KVM_RUN` (repeatedly: a kick just before `KVM_RUN` would be lost), a parked one is
    /// woken (its device then answers at once). The stop flag must be set already.
    pub(crate) fn finish(&self, stop: bool) -> Result<(Vcpu, Result<VcpuStop>)> {
        let mut run = self.slot.lock();
        loop {
            match &mut *run {
                SlotRun::Done(done) => return done.take().ok_or(Error::VcpuPanicked),
                SlotRun::Running(thread) if stop => {
                    // SAFETY: `thread` is the worker running this vCPU: it set `Running`
                    // under this lock, changes it only under this lock, and ends only after
                    // it has; so the thread is alive. The signal's handler does nothing.
                    unsafe { libc::pthread_kill(*thread, SIGRTMIN() + KICK_SIGNAL_OFFSET) };
                }
                SlotRun::Waiting(_) if stop => {
                    let withdrawn = {
                        let mut state = self.shared.lock();
                        self.shared.withdraw(&mut state, self.slot.token).is_some()
                    };
                    // Parked (not queued for a worker): it is this thread's to end, at once.
                    if withdrawn {
                        let SlotRun::Waiting(job) =
                            std::mem::replace(&mut *run, SlotRun::Done(None))
                        else {
                            unreachable!("matched as waiting under the same lock");
                        };
                        return Ok(self.stop_here(*job));
                    }
                }
                _ => {}
            }
            run = self
                .slot
                .changed
                .wait_timeout(run, Duration::from_micros(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
