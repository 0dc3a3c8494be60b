// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM's nexus-io request queue on the backend side: chains are popped through the
//! checked ring layer of `nexus_ring::queue`, decoded against the window, and handed to the
//! shared engine; answers go back through the used ring.
//!
//! A chain that breaks a ring rule (an available index more than a queue ahead, a head or
//! `next` out of range, an indirect descriptor, a loop, a chain longer than the protocol
//! allows) **breaks the queue**: the backend stops serving it — its kick is no longer watched,
//! so a guest that keeps ringing costs the backend nothing — logs one line naming the VM and
//! the cause, cancels the VM's requests in flight, and tells the attaching VMM on its control
//! connection, whose device then shows `DEVICE_NEEDS_RESET` to the guest. The guest's reset
//! (`GET_VRING_BASE`, then a new ring) brings the queue back.
//!
//! A VM has at most [`VmLimits::requests_in_flight`](crate::VmLimits) requests being served:
//! beyond it the drain stops and the chains wait in the ring until an answer frees a slot.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use nexus_ring::queue::{self as ring, CheckedChain, RingFault};
use nexus_ring::{Command, Decoder, Rejection, Request, ResponseHeader};
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::cpu_share::{Metered, thread_cpu};
use crate::event_loop::EventLoop;
use crate::ops::{self, Prepared};
use crate::session::{InflightGuard, Session};
use crate::sync::lock;
use crate::window::WindowMemory;

pub use nexus_ring::device::{NEXUS_F_WAIT, NEXUS_F_WRITE_BEHIND, QUEUE_SIZE_MAX};

/// The virtio features the backend offers on its vhost-user connections: the device's, and
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const FEATURES: u64 =
    nexus_ring::device::DEVICE_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// How long stopping a queue waits for its requests in flight to wind down (they are
/// cancelled at once; this bounds a request caught in a window copy).
const STOP_WAIT: Duration = Duration::from_millis(500);
/// Breaks of one VM's queue logged in full per [`BREAK_LOG_PERIOD`]; the rest are counted.
const BREAK_LOG_PERIOD: Duration = Duration::from_secs(60);

/// The state of the request queue, behind the ring's lock.
#[derive(Debug)]
struct RingState {
    queue: Queue,
    window: Option<WindowMemory>,
    kick: Option<EventFd>,
    call: Option<EventFd>,
    /// `SET_VRING_ENABLE` (or no protocol features: enabled from the start).
    enabled: bool,
    /// The kick is in the event loop's set.
    watched: bool,
    /// The guest broke a ring rule; nothing is served until the ring is stopped.
    broken: Option<RingFault>,
    /// Why the drain stopped early, if it did: the kick is not watched meanwhile.
    throttled: Option<Throttle>,
    /// A timer will resume the drain (the VM's CPU share is spent).
    timer_armed: bool,
    /// The backend panicked while serving the VM: its queue is never served again (the VMM
    /// discards the VM).
    failed: bool,
}

/// Why a VM's chains wait in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Throttle {
    /// At its requests-in-flight limit: the next answer resumes the drain.
    InFlight,
    /// Its CPU share is spent: a timer resumes the drain once it is paid back.
    Cpu,
}

impl RingState {
    /// Whether the queue is live: set up, started by a kick, enabled, and not broken.
    fn serving(&self) -> bool {
        self.queue.ready()
            && self.enabled
            && self.window.is_some()
            && self.broken.is_none()
            && !self.failed
    }
}

/// How often a VM's queue broke lately, for the log.
#[derive(Debug)]
struct BreakLog {
    since: Instant,
    logged: bool,
    unlogged: u64,
}

/// One VM's request queue (see the module docs). Shared by its vhost-user connection, the
/// event loop and every completion.
#[derive(Debug)]
pub(crate) struct RequestRing {
    id: u64,
    session: Arc<Session>,
    event_loop: Weak<EventLoop>,
    state: Mutex<RingState>,
    breaks: Mutex<BreakLog>,
}

impl RequestRing {
    /// The request queue of `session`'s VM, watched by `event_loop` as channel `id`.
    pub(crate) fn new(id: u64, session: Arc<Session>, event_loop: &Arc<EventLoop>) -> Self {
        let queue = Queue::new(QUEUE_SIZE_MAX)
            .expect("QUEUE_SIZE_MAX is a power of two within virtio's bound");
        Self {
            id,
            session,
            event_loop: Arc::downgrade(event_loop),
            state: Mutex::new(RingState {
                queue,
                window: None,
                kick: None,
                call: None,
                enabled: true,
                watched: false,
                broken: None,
                throttled: None,
                timer_armed: false,
                failed: false,
            }),
            breaks: Mutex::new(BreakLog {
                since: Instant::now(),
                logged: false,
                unlogged: 0,
            }),
        }
    }

    /// The kick's descriptor, if the frontend gave one.
    pub(crate) fn kick_fd(&self) -> Option<RawFd> {
        lock(&self.state).kick.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The memory table changed: this is the window now.
    pub(crate) fn set_window(&self, window: WindowMemory) {
        log::info!(
            "vm {}: I/O window {:#x}+{:#x}",
            self.session.vm,
            window.window().base(),
            window.window().size()
        );
        lock(&self.state).window = Some(window);
    }

    /// `SET_VRING_NUM`.
    pub(crate) fn set_size(&self, size: u16) -> vhost::vhost_user::Result<()> {
        lock(&self.state)
            .queue
            .try_set_size(size)
            .map_err(|_| vhost::vhost_user::Error::InvalidParam)
    }

    /// `SET_VRING_ADDR`, translated to guest-physical addresses.
    pub(crate) fn set_addresses(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> vhost::vhost_user::Result<()> {
        let mut state = lock(&self.state);
        let queue = &mut state.queue;
        let invalid = |_| vhost::vhost_user::Error::InvalidParam;
        queue
            .try_set_desc_table_address(GuestAddress(desc_table))
            .map_err(invalid)?;
        queue
            .try_set_avail_ring_address(GuestAddress(avail_ring))
            .map_err(invalid)?;
        queue
            .try_set_used_ring_address(GuestAddress(used_ring))
            .map_err(invalid)
    }

    /// `SET_VRING_BASE`.
    pub(crate) fn set_base(&self, base: u16) {
        let mut state = lock(&self.state);
        state.queue.set_next_avail(base);
        state.queue.set_next_used(base);
    }

    /// `SET_VRING_CALL`.
    pub(crate) fn set_call(&self, file: Option<File>) {
        lock(&self.state).call = file.map(eventfd);
    }

    /// `SET_VRING_KICK`: the queue starts (as the vhost-user specification says, on the kick).
    pub(crate) fn set_kick(self: &Arc<Self>, file: Option<File>) {
        let mut state = lock(&self.state);
        if let (Some(old), Some(event_loop)) = (&state.kick, self.event_loop.upgrade()) {
            event_loop.unwatch_kick(old.as_raw_fd());
            state.watched = false;
        }
        state.kick = file.map(eventfd);
        if state.kick.is_some() {
            let valid = state
                .window
                .as_ref()
                .is_some_and(|w| rings_inside(&state.queue, w));
            if !valid {
                log::info!(
                    "vm {}: the request queue was started with rings outside the window",
                    self.session.vm
                );
            }
            state.queue.set_ready(valid);
        }
        self.update_watch(&mut state);
        if state.serving() {
            drop(state);
            // Chains made available before the ring started (a restored VM's parked NEXT).
            self.process();
        }
    }

    /// `SET_VRING_ENABLE` (or the features' default).
    pub(crate) fn set_enabled(self: &Arc<Self>, enabled: bool) {
        let mut state = lock(&self.state);
        state.enabled = enabled;
        self.update_watch(&mut state);
        if state.serving() {
            drop(state);
            self.process();
        }
    }

    /// Watches the kick exactly while the queue is live.
    fn update_watch(&self, state: &mut RingState) {
        let Some(event_loop) = self.event_loop.upgrade() else {
            return;
        };
        let Some(kick) = state.kick.as_ref().map(AsRawFd::as_raw_fd) else {
            state.watched = false;
            return;
        };
        let want = state.serving() && state.throttled.is_none();
        if want && !state.watched {
            match event_loop.watch_kick(self.id, kick) {
                Ok(()) => state.watched = true,
                Err(e) => log::error!("vm {}: cannot watch the kick: {e}", self.session.vm),
            }
        } else if !want && state.watched {
            event_loop.unwatch_kick(kick);
            state.watched = false;
        }
    }

    /// Stops the queue (`GET_VRING_BASE`, a lost connection, a detach): it is no longer
    /// watched, its requests in flight are cancelled and their answers dropped, and a broken
    /// queue is mended. Returns the next available index.
    pub(crate) fn stop(&self) -> u16 {
        let next_avail = {
            let mut state = lock(&self.state);
            state.queue.set_ready(false);
            state.broken = None;
            state.throttled = None;
            self.update_watch(&mut state);
            state.kick = None;
            state.call = None;
            self.session.end_generation();
            state.queue.next_avail()
        };
        self.session.wait_idle(STOP_WAIT);
        next_avail
    }

    /// The kick fired: consume it and serve the queue. Returns the kick's descriptor if it
    /// is still watched (to re-arm it).
    pub(crate) fn kicked(self: &Arc<Self>) -> Option<RawFd> {
        let fd = {
            let state = lock(&self.state);
            let kick = state.kick.as_ref()?;
            // Consumed whatever follows: a kick only says "look at the ring".
            let _ = kick.read();
            if !state.watched {
                return None;
            }
            kick.as_raw_fd()
        };
        self.drain();
        lock(&self.state).watched.then_some(fd)
    }

    /// Drains the queue: with notifications off, take every available chain (up to the
    /// in-flight limit); turn them back on and go again if more arrived meanwhile.
    pub(crate) fn process(self: &Arc<Self>) {
        let start = thread_cpu();
        self.drain();
        self.session
            .cpu
            .charge_outside_tasks(thread_cpu().saturating_sub(start));
    }

    /// The drain without its CPU charged (the event loop charges its whole turn).
    pub(crate) fn drain(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        if !state.serving() {
            return;
        }
        let Some(window) = state.window.clone() else {
            return;
        };
        state.throttled = None;
        let decoder = Decoder::new(window.window());
        let limit = self.session.limits.requests_in_flight.max(1) as usize;
        let mut signal = false;
        let outcome = loop {
            let memory = &**window.memory();
            let _ = state.queue.disable_notification(memory);
            let drained = loop {
                if self.session.in_flight() >= limit {
                    state.throttled = Some(Throttle::InFlight);
                    break Ok(false);
                }
                let wait = self.session.cpu.wait();
                if !wait.is_zero() {
                    state.throttled = Some(Throttle::Cpu);
                    self.resume_after(&mut state, wait);
                    break Ok(false);
                }
                match ring::pop_checked(&mut state.queue, memory, nexus_ring::MAX_CHAIN_LEN) {
                    Ok(Some(chain)) => {
                        if let Some(used) = self.dispatch(&decoder, &window, &chain) {
                            signal |=
                                add_used(&mut state, &window, chain.head(), used, &self.session);
                        }
                    }
                    Ok(None) => break Ok(true),
                    Err(fault) => break Err(fault),
                }
            };
            match drained {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(fault) => break Err(fault),
            }
            match ring::enable_notification_checked(&mut state.queue, memory) {
                Ok(true) => continue,
                Ok(false) => break Ok(()),
                Err(fault) => break Err(fault),
            }
        };
        if let Err(fault) = outcome {
            self.break_queue(&mut state, fault);
            return;
        }
        if signal {
            if let Some(call) = &state.call {
                signal_used(call);
            }
        }
        self.update_watch(&mut state);
    }

    /// Resumes the drain after `wait` (once; the VM's CPU share is being paid back).
    fn resume_after(self: &Arc<Self>, state: &mut RingState, wait: Duration) {
        if std::mem::replace(&mut state.timer_armed, true) {
            return;
        }
        let ring = Arc::clone(self);
        self.session.engine.runtime.spawn(crate::panics::counted(
            "resuming a throttled queue",
            async move {
                tokio::time::sleep(wait).await;
                lock(&ring.state).timer_armed = false;
                ring.process();
            },
        ));
    }

    /// The backend panicked while `what` for this VM (`message`): the panic is counted and
    /// logged, the queue is no longer served (for good: a reset of the device does not bring
    /// it back), the VM's requests in flight are cancelled and its invocations fail. Other
    /// VMs are untouched.
    pub(crate) fn fail_panicked(&self, what: &str, message: &str) {
        crate::panics::record(&self.session.vm, what, message);
        // The lock may be poisoned by the panic (`lock` recovers it): what matters is that
        // nothing of this VM's ring is served again, whatever state the panic left.
        let mut state = lock(&self.state);
        state.failed = true;
        state.throttled = None;
        self.update_watch(&mut state);
        self.session.fail_panicked();
    }

    /// The guest broke a ring rule: stop serving the queue until it is reset.
    fn break_queue(&self, state: &mut RingState, fault: RingFault) {
        state.broken = Some(fault.clone());
        state.throttled = None;
        self.update_watch(state);
        self.session.end_generation();
        self.log_break(&fault);
        self.session.report_queue_broken(&fault.to_string());
    }

    fn log_break(&self, fault: &RingFault) {
        let mut breaks = lock(&self.breaks);
        if breaks.since.elapsed() >= BREAK_LOG_PERIOD {
            if breaks.unlogged > 0 {
                log::warn!(
                    "vm {} tenant {}: the request queue broke {} more time(s) in the last minute",
                    self.session.vm,
                    self.session.tenant.name(),
                    breaks.unlogged
                );
            }
            *breaks = BreakLog {
                since: Instant::now(),
                logged: false,
                unlogged: 0,
            };
        }
        if breaks.logged {
            breaks.unlogged += 1;
            return;
        }
        breaks.logged = true;
        log::warn!(
            "vm {} tenant {}: request queue broken, no longer served until the guest resets the device: {fault}",
            self.session.vm,
            self.session.tenant.name()
        );
    }

    /// Decodes and starts one chain; `Some(used_len)` when it was answered at once.
    fn dispatch(
        self: &Arc<Self>,
        decoder: &Decoder,
        window: &WindowMemory,
        chain: &CheckedChain,
    ) -> Option<u32> {
        let inflight = self.session.inflight();
        match decoder.decode_checked(chain, &**window.memory()) {
            Ok(request) => {
                let completion = Completion {
                    ring: Arc::clone(self),
                    head: chain.head(),
                    epoch: self.session.epoch(),
                    inflight,
                };
                dispatch(&self.session, window, request, completion)
            }
            Err(rejection) => Some(refuse(&self.session, window, &rejection)),
        }
    }
}

/// Whether the queue's three rings lie inside the window.
fn rings_inside(queue: &Queue, window: &WindowMemory) -> bool {
    let size = u64::from(queue.size());
    let areas = [
        (queue.desc_table(), 16 * size),
        (queue.avail_ring(), 6 + 2 * size),
        (queue.used_ring(), 6 + 8 * size),
    ];
    areas
        .iter()
        .all(|&(addr, len)| window.window().contains(addr, len))
}

/// Puts chain `head` in the used ring; whether the guest must be signalled.
fn add_used(
    state: &mut RingState,
    window: &WindowMemory,
    head: u16,
    used_len: u32,
    session: &Session,
) -> bool {
    match state.queue.add_used(&**window.memory(), head, used_len) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("vm {}: cannot return chain {head}: {e}", session.vm);
            false
        }
    }
}

fn signal_used(call: &EventFd) {
    if let Err(e) = call.write(1) {
        log::debug!("cannot signal the guest: {e}");
    }
}

fn eventfd(file: File) -> EventFd {
    // SAFETY: `file` is the eventfd the frontend sent with the message; taking its
    // descriptor hands sole ownership to the EventFd, which closes it.
    unsafe {
        <EventFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(file))
    }
}

/// Returns a used chain to the guest, unless its queue generation has ended.
pub(crate) struct Completion {
    ring: Arc<RequestRing>,
    head: u16,
    epoch: u64,
    inflight: InflightGuard,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("vm", &self.ring.session.vm)
            .field("head", &self.head)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Completion {
    /// The generation the request belongs to.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Puts the chain in the used ring with `used_len` bytes written, signals the guest, and
    /// resumes a drain that stopped at the in-flight limit.
    pub(crate) fn finish(self, used_len: u32) {
        let Self {
            ring,
            head,
            epoch,
            inflight,
        } = self;
        let resume = {
            let mut state = lock(&ring.state);
            if ring.session.epoch() != epoch || !state.serving() {
                log::debug!(
                    "vm {}: dropping the answer to chain {head} of an ended queue generation",
                    ring.session.vm
                );
                return;
            }
            let Some(window) = state.window.clone() else {
                return;
            };
            if add_used(&mut state, &window, head, used_len, &ring.session) {
                if let Some(call) = &state.call {
                    signal_used(call);
                }
            }
            state.throttled == Some(Throttle::InFlight)
        };
        drop(inflight);
        if resume {
            ring.process();
        }
    }
}

/// Answers a refused chain with an error in its response head when it has one, or returns
/// it with used length 0. Returns the used length.
fn refuse(session: &Session, window: &WindowMemory, rejection: &Rejection) -> u32 {
    log::debug!("vm {}: {rejection}", session.vm);
    session.count_request();
    match (rejection.response_header(), rejection.response) {
        (Some(header), Some(head)) => {
            let message = rejection.to_string();
            let capacity = head
                .len
                .saturating_sub(nexus_ring::RESPONSE_HEADER_SIZE as u32);
            let text = message.as_bytes();
            let mut len = text.len().min(capacity as usize);
            while len > 0 && text.get(len).is_some_and(|b| b & 0xC0 == 0x80) {
                len -= 1;
            }
            let meta_at = head.addr + nexus_ring::RESPONSE_HEADER_SIZE as u64;
            let header = if len > 0 && window.write(meta_at, &text[..len]).is_ok() {
                ResponseHeader {
                    meta_len: len as u32,
                    ..header
                }
            } else {
                header
            };
            ops::write_header(window, head.addr, &header)
        }
        _ => 0,
    }
}

/// Takes what must be taken in arrival order (segment copies, key turns, write-behind
/// tickets, FLUSH marks), then runs the request on the engine. `Some(used_len)` if it was
/// answered at once.
fn dispatch(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: Request,
    completion: Completion,
) -> Option<u32> {
    // A NEXT counts once answered (`ops::execute`): it may park for long, and belongs to the
    // invocation it delivers.
    if !matches!(request.command(), Command::Next { .. }) {
        session.count_request();
    }
    let copy = |segment: Option<nexus_ring::SegmentRef>| match segment {
        Some(segment) => window.copy_out(segment).map(Some),
        None => Ok(None),
    };
    let (key, meta) = match (copy(request.key), copy(request.meta)) {
        (Ok(key), Ok(meta)) => (key, meta),
        (Err(e), _) | (_, Err(e)) => {
            log::debug!("vm {}: {e}", session.vm);
            let reply = ops::Reply::error(nexus_ring::Status::Internal, e.to_string());
            return Some(ops::respond(window, request.id(), &request.response, reply));
        }
    };
    let mut prepared = Prepared {
        key,
        meta,
        ..Prepared::default()
    };
    match request.command() {
        Command::Get { .. } | Command::Head | Command::Delete | Command::Put { .. } => {
            if let Some(key) = prepared
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            {
                prepared.turn = Some(session.key_order.take_turn(key));
            }
            if matches!(request.command(), Command::Put { write_behind: true }) {
                prepared.write_behind = Some(session.write_behind.register());
            }
        }
        Command::Flush { .. } | Command::Complete { .. } => {
            prepared.mark = session.write_behind.mark();
        }
        // In arrival order, like the key turns: the tasks may run in any order.
        Command::Next { .. } => prepared.next = session.invocations.claim_next(),
        _ => {}
    }
    let session = session.clone();
    let window = window.clone();
    let share = Arc::clone(&session.cpu);
    session
        .engine
        .runtime
        .clone()
        .spawn(Metered::new(share, async move {
            let epoch = completion.epoch();
            // A panic while serving the request fails this VM only (`fail_panicked`); the
            // runtime's thread goes on with the other VMs' tasks. AssertUnwindSafe: what the
            // task owns (the request, its key turn and write-behind ticket) is dropped with
            // it, the shared state it touches is behind locks that recover from poisoning
            // (`sync::lock`), and the VM whose state it leaves half-changed is served no more.
            let execute = std::panic::AssertUnwindSafe(async {
                if crate::panics::test_hook(&session.vm)
                    && matches!(request.command(), Command::Complete { .. })
                {
                    panic!("test hook NEXUS_TEST_PANIC: a panic while serving a COMPLETE");
                }
                ops::execute(&session, &window, &request, prepared).await
            })
            .catch_unwind();
            let reply = tokio::select! {
                reply = execute => match reply {
                    Ok(reply) => reply,
                    Err(payload) => {
                        let message = crate::panics::message(&*payload);
                        completion.ring.fail_panicked("serving a request", &message);
                        return;
                    }
                },
                () = session.cancelled(epoch) => {
                    log::debug!("vm {}: request {} cancelled", session.vm, request.id());
                    return;
                }
            };
            let used = ops::respond(&window, request.id(), &request.response, reply);
            completion.finish(used);
        }));
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_ring::{RESPONSE_HEADER_SIZE, RequestLayout, SegmentRef, Status};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::config::{BackendConfig, S3Options, StoreConfig, StoreUrl};
    use crate::engine::Engine;
    use crate::tenant::Tenant;

    const WINDOW_BASE: u64 = 0xC000_0000;
    const DESC_TABLE: u64 = WINDOW_BASE;
    const AVAIL_RING: u64 = WINDOW_BASE + 0x1000;
    const USED_RING: u64 = WINDOW_BASE + 0x2000;
    const QUEUE_SIZE: u16 = 16;
    const RESPONSE_META: u32 = 536;

    /// Lays out `NEXT` number `n` (request id `n + 1`) as chain `2n` and makes it available;
    /// returns the chain's head and its response head's address.
    fn make_next_available(mem: &GuestMemoryMmap, n: u16) -> (u16, u64) {
        let header = WINDOW_BASE + 0x4000 + u64::from(n) * 0x1000;
        let response_head =
            SegmentRef::new(header + 0x100, RESPONSE_HEADER_SIZE as u32 + RESPONSE_META);
        let layout = RequestLayout {
            header,
            key: None,
            meta: None,
            payload: &[],
            response_head,
            response_payload: &[],
        };
        let command = Command::Next { timeout_ms: 60_000 };
        let bytes = layout
            .header(u64::from(n) + 1, command)
            .unwrap()
            .to_bytes()
            .unwrap();
        mem.write_slice(&bytes, GuestAddress(header)).unwrap();
        let head = 2 * n;
        let descriptors: Vec<_> = layout.descriptors().collect();
        assert_eq!(descriptors.len(), 2);
        for (i, d) in (head..).zip(&descriptors) {
            let at = GuestAddress(DESC_TABLE + u64::from(i) * 16);
            let next_flag = if i == head { 1u16 } else { 0 };
            let write_flag = if d.writable { 2u16 } else { 0 };
            mem.write_obj(d.addr, at).unwrap();
            mem.write_obj(d.len, GuestAddress(at.0 + 8)).unwrap();
            mem.write_obj(next_flag | write_flag, GuestAddress(at.0 + 12))
                .unwrap();
            mem.write_obj(i + 1, GuestAddress(at.0 + 14)).unwrap();
        }
        mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * u64::from(n)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(AVAIL_RING + 2)).unwrap();
        (head, response_head.addr)
    }

    /// Of two `NEXT`s popped together, the first parks and the second is refused, whatever
    /// order the runtime runs their tasks in: the claim is taken when a request is popped.
    /// (It was taken in the task, and two runtime threads picking the tasks up at once let
    /// the later `NEXT` park now and then while the earlier one was refused.)
    #[test]
    fn the_first_of_two_nexts_holds_the_claim_before_any_task_runs() {
        // A runtime nobody drives yet: dispatched tasks wait until the test runs them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_dir, event_loop, session, ring, mem) = ring_on(&runtime);
        let (_, _) = make_next_available(&mem, 0);
        let (second, second_response) = make_next_available(&mem, 1);

        ring.process();
        assert!(
            session
                .invocations
                .next_outstanding
                .load(std::sync::atomic::Ordering::Acquire),
            "the first NEXT popped holds the claim before its task runs"
        );

        let used_idx = || -> u16 { mem.read_obj(GuestAddress(USED_RING + 2)).unwrap() };
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                while used_idx() == 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the second NEXT is answered at once");
        });
        assert_eq!(used_idx(), 1, "the first NEXT stays parked");
        let used_id: u32 = mem.read_obj(GuestAddress(USED_RING + 4)).unwrap();
        assert_eq!(used_id, u32::from(second));
        let mut raw = [0u8; RESPONSE_HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(second_response))
            .unwrap();
        let answer = ResponseHeader::decode(&raw).unwrap();
        assert_eq!(answer.id, 2);
        assert_eq!(answer.status, Status::InvalidRequest);
        assert!(session.invocations.parked());
        // Dropping the runtime drops the parked NEXT's task, and its claim with it.
        drop(runtime);
        assert!(!session.invocations.parked());
        drop(event_loop);
    }

    /// A request ring over a 1 MiB window at [`WINDOW_BASE`] with its queue set up and
    /// started, as the handshake leaves it.
    fn ring_on(
        runtime: &tokio::runtime::Runtime,
    ) -> (
        tempfile::TempDir,
        Arc<EventLoop>,
        Arc<Session>,
        Arc<RequestRing>,
        GuestMemoryMmap,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreConfig {
            url: StoreUrl::File(dir.path().to_owned()),
            s3: S3Options::default(),
        };
        let config = BackendConfig::new(store, dir.path().to_owned());
        let engine = Arc::new(Engine::new(&config, runtime.handle().clone()).unwrap());
        let tenant = Arc::new(Tenant::new("default", "").unwrap());
        let session = Arc::new(Session::new("vm-1", tenant, engine));
        let event_loop = EventLoop::start(1).unwrap();
        let ring = Arc::new(RequestRing::new(1, session.clone(), &event_loop));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(WINDOW_BASE), 1 << 20)]).unwrap();
        ring.set_window(WindowMemory::new(Arc::new(mem.clone())).unwrap());
        ring.set_size(QUEUE_SIZE).unwrap();
        ring.set_addresses(DESC_TABLE, AVAIL_RING, USED_RING)
            .unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: the eventfd's descriptor is handed over to the File, its only owner.
        let kick = unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kick))
        };
        ring.set_kick(Some(kick));
        (dir, event_loop, session, ring, mem)
    }

    /// An available index far ahead breaks the queue at once: one fault, the kick no longer
    /// watched, the VMM told; stopping the ring (the guest's reset) mends it.
    #[test]
    fn a_runaway_available_index_breaks_the_queue_until_it_is_stopped() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_dir, _event_loop, session, ring, mem) = ring_on(&runtime);
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        session.set_events(Some(events));
        assert!(lock(&ring.state).watched);
        mem.write_obj(300u16, GuestAddress(AVAIL_RING + 2)).unwrap();
        ring.process();
        {
            let state = lock(&ring.state);
            assert!(
                matches!(state.broken, Some(RingFault::AvailIndexAhead { .. })),
                "{:?}",
                state.broken
            );
            assert!(!state.watched, "a broken queue's kick is not watched");
        }
        let event = received.try_recv().expect("the VMM is told");
        assert!(
            matches!(event, nexus_ring::control::ControlEvent::QueueBroken { ref vm, .. } if vm == "vm-1")
        );
        // Nothing more happens, however often the guest kicks.
        ring.process();
        assert!(received.try_recv().is_err(), "one report per break");
        // The reset: the frontend stops the ring and starts it again.
        mem.write_obj(0u16, GuestAddress(AVAIL_RING + 2)).unwrap();
        assert_eq!(ring.stop(), 0);
        assert!(lock(&ring.state).broken.is_none());
        ring.set_base(0);
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: the eventfd's descriptor is handed over to the File, its only owner.
        let kick = unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kick))
        };
        ring.set_kick(Some(kick));
        let state = lock(&ring.state);
        assert!(
            state.serving() && state.watched,
            "served again after the reset"
        );
    }
}
