// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The event loop every attached VM shares: one epoll(7) instance watching each VM's
//! vhost-user connection and its request queue's kick eventfd, served by a fixed set of
//! threads — no thread, epoll or eventfd of its own per VM.
//!
//! Every descriptor is registered `EPOLLONESHOT`: the thread that takes an event owns that
//! descriptor until it re-arms it, so one VM's connection (or kick) is never handled by two
//! threads at once, whatever the number of threads. A kick that is no longer watched (the
//! queue was stopped or broken) costs nothing: its descriptor is out of the epoll set, so a
//! guest that keeps ringing the doorbell wakes no thread of the backend.
//!
//! The loop knows a VM only as a [`Channel`]: two descriptors, what to do when either is
//! ready, and whose CPU share pays for it (`vhost_user.rs` implements it).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::cpu_share::{CpuShare, thread_cpu};
use crate::sync::lock;

/// Events taken from the kernel in one wait.
const EVENTS: usize = 64;
/// The token of the loop's own stop eventfd.
const STOP: u64 = u64::MAX;

/// What handling an event did to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The connection goes on.
    Continue,
    /// The connection is over (the frontend closed it, or broke the protocol).
    Closed,
}

/// A VM's connection as the loop serves it: its vhost-user connection, which the loop
/// watches from [`EventLoop::add`] to [`EventLoop::remove`], and its request queue's kick,
/// which the channel has watched ([`EventLoop::watch_kick`]) while its queue is live.
pub(crate) trait Channel: Send + Sync {
    /// The channel's ID in the loop ([`EventLoop::next_id`]).
    fn id(&self) -> u64;
    /// The connection's descriptor.
    fn connection_fd(&self) -> RawFd;
    /// The kick eventfd's descriptor, while the frontend has given one.
    fn kick_fd(&self) -> Option<RawFd>;
    /// Reads and answers one message of the connection.
    fn handle_message(&self) -> Handled;
    /// Takes a kick and serves the queue; the kick's descriptor if it is still watched.
    fn handle_kick(&self) -> Option<RawFd>;
    /// The VM's share of the backend's CPU (the loop charges its turns for the VM).
    fn cpu(&self) -> &CpuShare;
    /// The frontend closed the connection (it is no longer watched).
    fn disconnected(&self);
    /// Closes the connection (it is no longer watched).
    fn close(&self);
    /// Handling the channel's message or kick panicked (`message`): count it and fail the
    /// VM (it is no longer watched; [`close`](Self::close) follows).
    fn panicked(&self, message: &str);
}

/// What a token's descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The VM's vhost-user connection.
    Connection,
    /// The VM's request-queue kick eventfd.
    Kick,
}

/// The epoll data of a VM's descriptor.
pub(crate) fn token(id: u64, source: Source) -> u64 {
    (id << 1) | u64::from(source == Source::Kick)
}

fn decode(token: u64) -> (u64, Source) {
    let source = if token & 1 == 1 {
        Source::Kick
    } else {
        Source::Connection
    };
    (token >> 1, source)
}

/// What a connection is watched for: a message, or the peer closing.
const CONNECTION: EventSet = EventSet::IN
    .union(EventSet::READ_HANG_UP)
    .union(EventSet::ONE_SHOT);
/// What a kick is watched for.
const KICK: EventSet = EventSet::IN.union(EventSet::ONE_SHOT);

/// Charges a VM the CPU the event loop spent on it since `since`, when dropped.
struct Charge<'a> {
    share: &'a CpuShare,
    since: std::time::Duration,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.share.charge(thread_cpu().saturating_sub(self.since));
    }
}

/// The shared event loop (see the module docs).
pub(crate) struct EventLoop {
    epoll: Epoll,
    channels: Mutex<HashMap<u64, Arc<dyn Channel>>>,
    next_id: AtomicU64,
    stop: EventFd,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("channels", &lock(&self.channels).len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Starts the loop with `threads` threads (at least one).
    pub(crate) fn start(threads: usize) -> io::Result<Arc<Self>> {
        let event_loop = Arc::new(Self {
            epoll: Epoll::new()?,
            channels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        event_loop.epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&event_loop.stop),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        for index in 0..threads.max(1) {
            let serving = Arc::clone(&event_loop);
            let thread = std::thread::Builder::new()
                .name(format!("nexus-vhost-{index}"))
                .spawn(move || {
                    crate::threads::thread_started(crate::threads::ThreadRole::EventLoop);
                    serving.run()
                })?;
            lock(&event_loop.threads).push(thread);
        }
        Ok(event_loop)
    }

    /// A fresh ID for a channel.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts serving `channel`'s connection.
    pub(crate) fn add(&self, channel: Arc<dyn Channel>) -> io::Result<()> {
        let id = channel.id();
        let fd = channel.connection_fd();
        lock(&self.channels).insert(id, channel);
        let added = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(CONNECTION, token(id, Source::Connection)),
        );
        if added.is_err() {
            lock(&self.channels).remove(&id);
        }
        added
    }

    /// Stops serving channel `id` (its connection and kick are no longer watched; an event
    /// already taken by a thread finishes). The channel is returned for the caller to close.
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<dyn Channel>> {
        let channel = lock(&self.channels).remove(&id)?;
        self.forget(channel.connection_fd());
        if let Some(kick) = channel.kick_fd() {
            self.forget(kick);
        }
        Some(channel)
    }

    /// Watches `fd` as channel `id`'s kick (again).
    pub(crate) fn watch_kick(&self, id: u64, fd: RawFd) -> io::Result<()> {
        let event = EpollEvent::new(KICK, token(id, Source::Kick));
        match self.epoll.ctl(ControlOperation::Add, fd, event) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.epoll.ctl(ControlOperation::Modify, fd, event)
            }
            other => other,
        }
    }

    /// Stops watching kick `fd`: the guest's doorbell wakes nothing here any more.
    pub(crate) fn unwatch_kick(&self, fd: RawFd) {
        self.forget(fd);
    }

    fn forget(&self, fd: RawFd) {
        // ENOENT: not watched (never, or no more); EBADF: closed already. Both are fine.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Re-arms a one-shot descriptor after its event was handled. A descriptor removed
    /// meanwhile stays removed (`ENOENT`).
    fn rearm(&self, fd: RawFd, events: EventSet, token: u64) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token));
    }

    /// Stops the threads and waits for them; the channels still registered are returned.
    pub(crate) fn shutdown(&self) -> Vec<Arc<dyn Channel>> {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            if thread.join().is_err() {
                log::error!("an event-loop thread panicked");
            }
        }
        let ids: Vec<u64> = lock(&self.channels).keys().copied().collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn run(&self) {
        let mut events = vec![EpollEvent::default(); EVENTS];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("the event loop stopped: epoll_wait failed: {e}");
                    return;
                }
            };
            let mut woke = thread_cpu();
            for event in &events[..n] {
                if event.data() == STOP || self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                self.dispatch(event.data(), woke);
                woke = thread_cpu();
            }
        }
    }

    fn dispatch(&self, token_value: u64, woke: std::time::Duration) {
        let (id, source) = decode(token_value);
        let Some(channel) = lock(&self.channels).get(&id).cloned() else {
            return;
        };
        // The turn is the VM's: from the wake-up to the end of its handling.
        let _charge = Charge {
            share: channel.cpu(),
            since: woke,
        };
        // A panic while handling one VM's message or kick fails that VM only: it leaves the
        // loop, its connection is closed, and this thread goes on serving the others.
        // AssertUnwindSafe: the channel is dropped from the loop; the loop's own state (the
        // channel map) is not held across the call, and locks recover from poisoning.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle(&*channel, id, source, token_value);
        }));
        if let Err(payload) = handled {
            let message = crate::panics::message(&*payload);
            lock(&self.channels).remove(&id);
            if let Some(kick) = channel.kick_fd() {
                self.forget(kick);
            }
            self.forget(channel.connection_fd());
            channel.panicked(&message);
            channel.close();
        }
    }

    /// Handles one event of `channel`.
    fn handle(&self, channel: &dyn Channel, id: u64, source: Source, token_value: u64) {
        match source {
            Source::Connection => match channel.handle_message() {
                Handled::Continue => {
                    self.rearm(channel.connection_fd(), CONNECTION, token_value);
                }
                Handled::Closed => {
                    lock(&self.channels).remove(&id);
                    if let Some(kick) = channel.kick_fd() {
                        self.forget(kick);
                    }
                    self.forget(channel.connection_fd());
                    channel.disconnected();
                }
            },
            Source::Kick => {
                if let Some(fd) = channel.handle_kick() {
                    self.rearm(fd, KICK, token_value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use super::*;

    /// A channel whose "connection" is an eventfd; its message handler panics if asked to.
    struct Fake {
        id: u64,
        connection: EventFd,
        panics: bool,
        handled: AtomicU64,
        panicked: Mutex<Option<String>>,
        closed: AtomicBool,
        cpu: CpuShare,
    }

    impl Fake {
        fn new(id: u64, panics: bool) -> Arc<Self> {
            Arc::new(Self {
                id,
                connection: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                panics,
                handled: AtomicU64::new(0),
                panicked: Mutex::new(None),
                closed: AtomicBool::new(false),
                cpu: CpuShare::new(1000),
            })
        }
    }

    impl Channel for Fake {
        fn id(&self) -> u64 {
            self.id
        }
        fn connection_fd(&self) -> RawFd {
            self.connection.as_raw_fd()
        }
        fn kick_fd(&self) -> Option<RawFd> {
            None
        }
        fn handle_message(&self) -> Handled {
            let _ = self.connection.read();
            if self.panics {
                panic!("test: a message handler panics");
            }
            self.handled.fetch_add(1, Ordering::SeqCst);
            Handled::Continue
        }
        fn handle_kick(&self) -> Option<RawFd> {
            None
        }
        fn cpu(&self) -> &CpuShare {
            &self.cpu
        }
        fn disconnected(&self) {}
        fn close(&self) {
            self.closed.store(true, Ordering::SeqCst);
        }
        fn panicked(&self, message: &str) {
            *lock(&self.panicked) = Some(message.to_owned());
        }
    }

    fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_panicking_channel_is_dropped_and_the_others_still_served() {
        // One thread: the one that catches the panic must be the one that serves on.
        let event_loop = EventLoop::start(1).unwrap();
        let bad = Fake::new(event_loop.next_id(), true);
        let good = Fake::new(event_loop.next_id(), false);
        event_loop.add(bad.clone()).unwrap();
        event_loop.add(good.clone()).unwrap();

        good.connection.write(1).unwrap();
        until("the good channel is served", || {
            good.handled.load(Ordering::SeqCst) == 1
        });
        bad.connection.write(1).unwrap();
        until("the panicking channel is closed", || {
            bad.closed.load(Ordering::SeqCst)
        });
        assert_eq!(
            lock(&bad.panicked).as_deref(),
            Some("test: a message handler panics")
        );
        assert!(!lock(&event_loop.channels).contains_key(&bad.id));
        // No longer watched: another message wakes nothing of it.
        bad.connection.write(1).unwrap();

        for n in 2..=3 {
            good.connection.write(1).unwrap();
            until("the good channel is served again", || {
                good.handled.load(Ordering::SeqCst) == n
            });
        }
        assert!(!good.closed.load(Ordering::SeqCst));
        let left = event_loop.shutdown();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id(), good.id);
    }
}
