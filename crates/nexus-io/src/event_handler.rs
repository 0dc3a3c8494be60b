// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's events: completions (the backend's call eventfd), served to the guest
//! through the WAIT register, and the loss of the backend, noticed by the backend monitor
//! (one thread of the process, watching every session's connections) and by every WAIT.
//!
//! Doorbells are no event of the VMM's: the guest's `QueueNotify` write is an ioeventfd that
//! KVM signals to the backend directly.
//!
//! A node daemon keeps thousands of VMs in one process under an open-file limit, so a device
//! holds no descriptor it does not need: the kick and call eventfds and its two connections,
//! each once (and the control connection may be one shared by every device of the process,
//! [`crate::SharedControl`]). What another part needs is shared (an `Arc`, or the `Frontend`, itself one),
//! never duplicated, and the monitor needs no descriptor per session.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use nexus_ring::device::wait::moved_past;
use vhost::vhost_user::Frontend;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;
use crate::control::EventReader;
use crate::sys::{HANGUP, PollFd, READABLE, poll};
use crate::{Error, Result};

/// The connection state shared by the device and the backend monitor.
#[derive(Debug)]
pub(crate) struct LinkState {
    connected: AtomicBool,
    /// Bumped on every change of `backend_state` (the `ConfigGeneration` register).
    generation: AtomicU32,
    /// A configuration change interrupt is pending (irqfd mode only).
    config_changed: AtomicBool,
    /// The call eventfd is an irqfd: a signal on it is an interrupt.
    irqfd: AtomicBool,
    /// The backend stopped serving the request queue (the guest broke a ring rule): the
    /// device shows `DEVICE_NEEDS_RESET` until the driver resets it.
    needs_reset: AtomicBool,
    /// The device's call eventfd (the backend's completions; with an irqfd, also the
    /// configuration change interrupt).
    call: EventFd,
}

impl LinkState {
    /// The state of a device whose call eventfd is `call`.
    pub(crate) fn new(call: EventFd) -> Self {
        LinkState {
            connected: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            config_changed: AtomicBool::new(false),
            irqfd: AtomicBool::new(false),
            needs_reset: AtomicBool::new(false),
            call,
        }
    }

    /// The device's call eventfd.
    pub(crate) fn call(&self) -> &EventFd {
        &self.call
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn set_irqfd(&self, on: bool) {
        self.irqfd.store(on, Ordering::Release);
    }

    pub(crate) fn irqfd(&self) -> bool {
        self.irqfd.load(Ordering::Acquire)
    }

    pub(crate) fn config_changed(&self) -> bool {
        self.config_changed.load(Ordering::Acquire)
    }

    pub(crate) fn ack_config_change(&self) {
        self.config_changed.store(false, Ordering::Release);
    }

    /// Whether the backend stopped serving the request queue until a reset.
    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The backend stopped serving the request queue: the device needs a reset. Wakes a
    /// waiting WAIT read (which returns `NEEDS_RESET`); with an irqfd, raises a configuration
    /// change interrupt.
    pub(crate) fn queue_broken(&self, reason: &str) {
        if self.needs_reset.swap(true, Ordering::AcqRel) {
            return;
        }
        warn!("nexus-io: the backend stopped serving the request queue: {reason}");
        self.generation.fetch_add(1, Ordering::AcqRel);
        if self.irqfd() {
            self.config_changed.store(true, Ordering::Release);
        }
        if let Err(e) = self.call.write(1) {
            warn!("nexus-io: cannot wake the guest: {e}");
        }
    }

    /// The driver reset the device.
    pub(crate) fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::Release);
    }

    /// Records a change of `backend_state`; with an irqfd, tells the guest through a
    /// configuration change interrupt.
    pub(crate) fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::AcqRel) == connected {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if !connected {
            warn!("nexus-io: lost the backend");
        }
        if self.irqfd() {
            self.config_changed.store(true, Ordering::Release);
            if let Err(e) = self.call.write(1) {
                warn!("nexus-io: cannot raise the configuration change interrupt: {e}");
            }
        }
    }
}

/// The monitor does little: a small stack keeps the VMM's footprint small.
const MONITOR_STACK_SIZE: usize = 256 * 1024;
/// Most hang-ups taken from the kernel in one wait.
const MONITOR_EVENTS: usize = 64;
/// What a hang-up of a connection is to epoll(7) (`EPOLLHUP` and `EPOLLERR` are always
/// reported; `EPOLLRDHUP` is the peer closing).
const MONITOR_INTEREST: EventSet = EventSet::READ_HANG_UP
    .union(EventSet::HANG_UP)
    .union(EventSet::ERROR);
/// The control connection is also watched for event lines, once per arrival.
const CONTROL_INTEREST: EventSet = MONITOR_INTEREST
    .union(EventSet::IN)
    .union(EventSet::EDGE_TRIGGERED);

/// One session's connections, as the monitor watches them. They are owned (shared, not
/// duplicated), so they stay open as long as they are registered with the monitor's epoll.
struct Watched {
    control: Arc<UnixStream>,
    /// Reads the backend's event lines on the control connection.
    events: EventReader,
    /// The vhost-user connection, held to keep `vhost_fd` open.
    _vhost: Frontend,
    /// Its descriptor, read once (`Frontend::as_raw_fd` takes the frontend's lock, which a
    /// request holds until the backend answers).
    vhost_fd: RawFd,
    state: Arc<LinkState>,
}

/// The process's backend monitor: one thread waiting in epoll(7) for a hang-up of any
/// watched connection. It runs for the life of the process; sessions come and go.
///
/// Control connections may be shared by many sessions ([`crate::SharedControl`]): each is
/// registered once, and its hang-up marks every session on it down.
struct BackendMonitor {
    epoll: Epoll,
    /// The watched sessions. A session is removed, and its connections unregistered, under
    /// this lock: once [`Monitor`] is dropped the monitor thread cannot mark the session's
    /// link down, nor see its connections.
    watched: Mutex<Registry>,
    next_id: AtomicU64,
}

/// The sessions by ID, and the sessions on each control connection (by its descriptor,
/// which stays open while a session on it is registered: the session holds it).
#[derive(Default)]
struct Registry {
    sessions: HashMap<u64, Watched>,
    controls: HashMap<RawFd, Vec<u64>>,
}

/// The epoll data of a connection: a session's vhost-user connection by the session's ID,
/// a control connection by its descriptor.
fn token(value: u64, vhost: bool) -> u64 {
    (value << 1) | u64::from(vhost)
}

impl BackendMonitor {
    /// The process's monitor, started on first use (and tried again if that failed).
    fn get() -> Result<Arc<Self>> {
        static MONITOR: Mutex<Option<Arc<BackendMonitor>>> = Mutex::new(None);
        let mut monitor = MONITOR.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(monitor) = monitor.as_ref() {
            return Ok(Arc::clone(monitor));
        }
        let started = Arc::new(BackendMonitor {
            epoll: Epoll::new().map_err(Error::Monitor)?,
            watched: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        let watching = Arc::clone(&started);
        thread::Builder::new()
            .name("nexus-io-monitor".into())
            .stack_size(MONITOR_STACK_SIZE)
            .spawn(move || {
                nexus_kvm::threads::thread_started(nexus_kvm::threads::ThreadRole::Device);
                watching.run()
            })
            .map_err(Error::Monitor)?;
        Ok(Arc::clone(monitor.insert(started)))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `watched`; returns its ID.
    fn add(&self, watched: Watched) -> Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let control = watched.control.as_raw_fd();
        let mut registry = self.registry();
        let vhost = EpollEvent::new(MONITOR_INTEREST, token(id, true));
        self.epoll
            .ctl(ControlOperation::Add, watched.vhost_fd, vhost)
            .map_err(Error::Monitor)?;
        if !registry.controls.contains_key(&control) {
            let event = EpollEvent::new(CONTROL_INTEREST, token(control as u64, false));
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, control, event) {
                self.unregister(watched.vhost_fd);
                return Err(Error::Monitor(e));
            }
        }
        registry.controls.entry(control).or_default().push(id);
        registry.sessions.insert(id, watched);
        Ok(id)
    }

    /// Stops watching session `id`, if it still is. Called with the registry locked.
    fn remove(&self, registry: &mut Registry, id: u64) -> Option<Watched> {
        let watched = registry.sessions.remove(&id)?;
        self.unregister(watched.vhost_fd);
        let control = watched.control.as_raw_fd();
        if let Some(ids) = registry.controls.get_mut(&control) {
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                registry.controls.remove(&control);
                self.unregister(control);
            }
        }
        Some(watched)
    }

    /// Unregisters `fd`, which its owner keeps open until this returns.
    fn unregister(&self, fd: RawFd) {
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            warn!("nexus-io: the backend monitor cannot unregister a connection: {e}");
        }
    }

    /// The monitor thread: marks a session's link down at the first hang-up of either of
    /// its connections (every session on a control connection that hangs up), and stops
    /// watching it.
    fn run(&self) {
        let mut events = vec![EpollEvent::default(); MONITOR_EVENTS];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("nexus-io: the backend monitor cannot wait: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for event in &events[..ready] {
                let (value, vhost) = (event.data() >> 1, event.data() & 1 == 1);
                let hang_up =
                    EventSet::from_bits_truncate(event.events).intersects(MONITOR_INTEREST);
                let control = RawFd::try_from(value).unwrap_or(-1);
                if !vhost && !hang_up {
                    // Event lines: read them outside the registry's lock (a device may be in
                    // the middle of a request on this connection).
                    let reader = {
                        let registry = self.registry();
                        registry
                            .controls
                            .get(&control)
                            .and_then(|ids| ids.first())
                            .and_then(|id| registry.sessions.get(id))
                            .map(|w| w.events.clone())
                    };
                    let closed = reader.is_some_and(|r| r.pump().is_err());
                    if !closed {
                        continue;
                    }
                }
                let mut registry = self.registry();
                let ids = if vhost {
                    vec![value]
                } else {
                    let ids = registry.controls.get(&control).cloned().unwrap_or_default();
                    // The descriptor may be another connection's by now (the one this event
                    // was about closed meanwhile): act only on a connection that did hang up.
                    let gone = ids
                        .first()
                        .and_then(|id| registry.sessions.get(id))
                        .is_some_and(|w| stream_hung_up(&w.control));
                    if gone { ids } else { Vec::new() }
                };
                // Gone already: stopped, or its other connection hung up too.
                let lost: Vec<Watched> = ids
                    .into_iter()
                    .filter_map(|id| self.remove(&mut registry, id))
                    .collect();
                drop(registry);
                if !lost.is_empty() {
                    debug!(
                        "nexus-io: backend hang-up on the {} connection ({} sessions)",
                        if vhost { "vhost-user" } else { "control" },
                        lost.len()
                    );
                }
                for watched in lost {
                    watched.state.set_connected(false);
                }
            }
        }
    }
}

/// Whether `stream` hung up (or cannot be polled).
fn stream_hung_up(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream, HANGUP)];
    match poll(&mut fds, Some(Duration::ZERO)) {
        Ok(_) => fds[0].has(HANGUP),
        Err(_) => true,
    }
}

/// A session's registration with the backend monitor, which marks the link down as soon as
/// either backend connection hangs up. Dropping it stops the watch.
pub(crate) struct Monitor {
    monitor: Arc<BackendMonitor>,
    id: u64,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Watches `control` and `vhost` (the device's connections, shared) for the device whose
    /// state is `state`.
    pub(crate) fn start(
        control: Arc<UnixStream>,
        events: EventReader,
        vhost: Frontend,
        state: Arc<LinkState>,
    ) -> Result<Self> {
        let monitor = BackendMonitor::get()?;
        let vhost_fd = vhost.as_raw_fd();
        let id = monitor.add(Watched {
            control,
            events,
            _vhost: vhost,
            vhost_fd,
            state,
        })?;
        Ok(Monitor { monitor, id })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let mut registry = self.monitor.registry();
        let watched = self.monitor.remove(&mut registry, self.id);
        drop(registry);
        drop(watched);
    }
}

/// What a WAIT read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// The used ring's index (new, or unchanged after the timeout).
    Used(u16),
    /// A backend connection hung up.
    Lost,
}

/// Serves a WAIT read: returns the used index at once if it has moved past the driver's
/// `used_event` ([`nexus_ring::device::wait::moved_past`]), else sleeps on the call eventfd
/// (and the backend connections' hang-ups) until it has, for at most `timeout` in all. A
/// completion that does not yet satisfy the driver (the first of two it waits for) wakes this
/// thread, not the guest: it costs no exit.
pub(crate) fn wait_for_used(
    queue: &Queue,
    window: &GuestMemoryMmap,
    call: &EventFd,
    connections: [&dyn AsRawFd; 2],
    timeout: Duration,
) -> std::result::Result<WaitOutcome, virtio_queue::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let used = match check_used(queue, window, call)? {
            Check::Moved(used) => return Ok(WaitOutcome::Used(used)),
            Check::NotYet(used) => used,
        };
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(WaitOutcome::Used(used));
        };
        let [control, vhost] = connections;
        let mut fds = [
            PollFd::new(call, READABLE),
            PollFd::new(control, HANGUP),
            PollFd::new(vhost, HANGUP),
        ];
        match poll(&mut fds, Some(left)) {
            Ok(_) => {}
            // A signal (for example the VMM stopping this vCPU): let the guest read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Ok(WaitOutcome::Used(
                    queue.used_idx(window, Ordering::Acquire)?.0,
                ));
            }
            Err(e) => {
                warn!("nexus-io: WAIT cannot poll: {e}");
                return Ok(WaitOutcome::Used(
                    queue.used_idx(window, Ordering::Acquire)?.0,
                ));
            }
        }
        if fds[1].has(HANGUP) || fds[2].has(HANGUP) {
            return Ok(WaitOutcome::Lost);
        }
    }
}

/// What a WAIT read that must not block found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The used ring's index has moved past the driver's `used_event`.
    Moved(u16),
    /// Not yet: the used ring's index as it is.
    NotYet(u16),
}

/// One look at the rings for a WAIT read, without blocking: consumes the call eventfd's
/// signal first (so that one arriving after the look is not lost to the next wait), then
/// compares the used ring's index with the driver's `used_event`.
pub(crate) fn check_used(
    queue: &Queue,
    window: &GuestMemoryMmap,
    call: &EventFd,
) -> std::result::Result<Check, virtio_queue::Error> {
    let _ = call.read();
    let used = queue.used_idx(window, Ordering::Acquire)?.0;
    let used_event: u16 = window
        .load(used_event_addr(queue), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(if moved_past(used, used_event) {
        Check::Moved(used)
    } else {
        Check::NotYet(used)
    })
}

/// The `used_event` field: after the available ring's flags, idx and entries.
fn used_event_addr(queue: &Queue) -> GuestAddress {
    GuestAddress(queue.avail_ring()).unchecked_add(4 + 2 * u64::from(queue.size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A session's connections, their far ends, and its state, marked connected.
    fn session() -> (Monitor, Arc<LinkState>, UnixStream, UnixStream) {
        let (control, control_peer) = UnixStream::pair().unwrap();
        let client = crate::ControlClient::from_stream(control);
        let (monitor, state, vhost_peer) = shared_session(&client);
        (monitor, state, control_peer, vhost_peer)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_monitor_marks_the_session_that_hung_up_and_no_stopped_one() {
        let (_a, a, _a_control, a_vhost) = session();
        let (b, b_state, b_control, _b_vhost) = session();
        let (_c, c, c_control, _c_vhost) = session();
        drop(a_vhost);
        wait_until("the vhost-user hang-up", || !a.connected());
        drop(c_control);
        wait_until("the control hang-up", || !c.connected());
        // Stopped, then hung up: not a loss.
        drop(b);
        drop(b_control);
        thread::sleep(Duration::from_millis(50));
        assert!(b_state.connected());
        assert_eq!((a.generation(), b_state.generation()), (2, 1));
    }

    /// A session on `client`'s connection (shared), marked connected, and its vhost-user
    /// connection's far end.
    fn shared_session(client: &crate::ControlClient) -> (Monitor, Arc<LinkState>, UnixStream) {
        let (vhost, vhost_peer) = UnixStream::pair().unwrap();
        let state = Arc::new(LinkState::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        state.set_connected(true);
        let monitor = Monitor::start(
            Arc::clone(client.stream()),
            client.event_reader(),
            Frontend::from_stream(vhost, 1),
            Arc::clone(&state),
        )
        .unwrap();
        (monitor, state, vhost_peer)
    }

    #[test]
    fn sessions_sharing_a_control_connection_are_watched_together() {
        use std::io::Write;
        let (control, mut peer) = UnixStream::pair().unwrap();
        let client = crate::ControlClient::from_stream(control);
        let (a, a_state, _a_vhost) = shared_session(&client);
        let (_b, b_state, b_vhost) = shared_session(&client);
        let (_c, c_state, _c_vhost) = shared_session(&client);
        // Events reach the VM they are about, whichever session's registration saw them.
        let seen = Arc::new(Mutex::new(Vec::new()));
        for vm in ["b", "c"] {
            let sink = Arc::clone(&seen);
            client.set_vm_event_handler(vm, Box::new(move |e| sink.lock().unwrap().push((vm, e))));
        }
        peer.write_all(b"{\"event\":\"queue_broken\",\"vm\":\"c\",\"reason\":\"x\"}\n")
            .unwrap();
        wait_until("the event", || !seen.lock().unwrap().is_empty());
        assert_eq!(seen.lock().unwrap()[0].0, "c");
        // One session's vhost-user hang-up is its own.
        drop(b_vhost);
        wait_until("the vhost-user hang-up", || !b_state.connected());
        assert!(a_state.connected() && c_state.connected());
        // A session stopped leaves the connection watched for the others.
        drop(a);
        thread::sleep(Duration::from_millis(20));
        assert!(c_state.connected());
        // The shared connection's hang-up is everyone's still watched.
        drop(peer);
        wait_until("the control hang-up", || !c_state.connected());
        assert!(a_state.connected(), "a stopped session is not marked");
        assert_eq!(c_state.generation(), 2);
    }
}
