// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The process's event loop: one thread and one epoll(7) for every virtio-net device of the
//! process (a node keeps thousands of VMs; a thread per device would not do).
//!
//! A live device registers two descriptors, edge-triggered: its doorbell eventfd (the
//! ioeventfd on `QueueNotify`) and its tap. An event marks what the device has to do and puts
//! it at the back of the **run queue**, once. The loop then gives every device in the run
//! queue one **turn**, in order; a turn does a bounded amount of work per queue (the device's
//! business), and a device with work left goes to the back of the queue again. Between two
//! rounds the loop looks for new events without sleeping, so a device that just became
//! ready joins the queue behind one that always has work: a guest flooding its transmit queue
//! gets one turn per round, like everybody else, and cannot starve the others. The loop
//! sleeps only when the run queue is empty.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The loop does little per frame: a small stack keeps the VMM's footprint small.
const LOOP_STACK_SIZE: usize = 256 * 1024;
/// Most events taken from the kernel in one wait.
const LOOP_EVENTS: usize = 64;

/// Which of a device's descriptors an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The doorbell eventfd.
    Kick,
    /// The tap.
    Tap,
}

/// A device the loop serves.
pub(crate) trait LoopDevice: Send + Sync {
    /// An event on the device's registration `id`. Returns whether the device must be put in
    /// the run queue (it has work and is not queued yet).
    fn note(&self, id: u64, source: Source, events: EventSet) -> bool;

    /// One turn of work for registration `id`. Returns whether work is left (the device goes
    /// to the back of the run queue).
    fn turn(&self, id: u64) -> bool;
}

/// The epoll data of a registration's descriptor: its ID and which descriptor.
fn token(id: u64, source: Source) -> u64 {
    (id << 1) | u64::from(source == Source::Tap)
}

fn split_token(data: u64) -> (u64, Source) {
    let source = if data & 1 == 1 {
        Source::Tap
    } else {
        Source::Kick
    };
    (data >> 1, source)
}

/// The process's event loop.
pub(crate) struct EventLoop {
    epoll: Epoll,
    /// The registered devices by registration ID (never reused: an event that was already
    /// read for a registration that is gone finds nothing, or the device under a new ID).
    devices: Mutex<HashMap<u64, Arc<dyn LoopDevice>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("devices", &self.devices().len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// The process's loop, started on first use (and tried again if that failed).
    pub(crate) fn get() -> std::io::Result<Arc<Self>> {
        static LOOP: Mutex<Option<Arc<EventLoop>>> = Mutex::new(None);
        let mut event_loop = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(event_loop) = event_loop.as_ref() {
            return Ok(Arc::clone(event_loop));
        }
        let started = Arc::new(EventLoop {
            epoll: Epoll::new()?,
            devices: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        let running = Arc::clone(&started);
        thread::Builder::new()
            .name("nexus-net".into())
            .stack_size(LOOP_STACK_SIZE)
            .spawn(move || {
                nexus_kvm::threads::thread_started(nexus_kvm::threads::ThreadRole::Device);
                running.run()
            })?;
        Ok(Arc::clone(event_loop.insert(started)))
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<u64, Arc<dyn LoopDevice>>> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `kick` (readable) and `tap` (`tap_interest`), both edge-triggered, for
    /// `device`; returns the registration's ID. The descriptors must stay open until
    /// [`unregister`](Self::unregister).
    pub(crate) fn register(
        &self,
        device: Arc<dyn LoopDevice>,
        kick: RawFd,
        tap: RawFd,
        tap_interest: EventSet,
    ) -> std::io::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // In the map before the descriptors are watched: the first event finds the device.
        self.devices().insert(id, device);
        let kick_interest = EventSet::IN | EventSet::EDGE_TRIGGERED;
        let added = self
            .epoll
            .ctl(
                ControlOperation::Add,
                kick,
                EpollEvent::new(kick_interest, token(id, Source::Kick)),
            )
            .and_then(|()| {
                let event = EpollEvent::new(tap_interest, token(id, Source::Tap));
                self.epoll
                    .ctl(ControlOperation::Add, tap, event)
                    .inspect_err(|_| self.delete(kick))
            });
        if let Err(e) = added {
            self.devices().remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// Changes what the loop waits for on registration `id`'s tap. Modifying re-arms the
    /// edge: a tap already readable (writable) reports it again.
    pub(crate) fn set_tap_interest(
        &self,
        id: u64,
        tap: RawFd,
        interest: EventSet,
    ) -> std::io::Result<()> {
        let event = EpollEvent::new(interest, token(id, Source::Tap));
        self.epoll.ctl(ControlOperation::Modify, tap, event)
    }

    /// Stops watching registration `id`'s descriptors (which are still open).
    pub(crate) fn unregister(&self, id: u64, kick: RawFd, tap: RawFd) {
        self.delete(kick);
        self.delete(tap);
        self.devices().remove(&id);
    }

    fn delete(&self, fd: RawFd) {
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            warn!("nexus-net: the event loop cannot unregister a descriptor: {e}");
        }
    }

    /// The loop thread.
    fn run(&self) {
        let mut events = vec![EpollEvent::default(); LOOP_EVENTS];
        let mut run_queue: VecDeque<(u64, Arc<dyn LoopDevice>)> = VecDeque::new();
        loop {
            // Sleep only when nobody has work left.
            let timeout = if run_queue.is_empty() { -1 } else { 0 };
            let ready = match self.epoll.wait(timeout, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    warn!("nexus-net: the event loop cannot wait: {e}");
                    thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            for event in &events[..ready] {
                let (id, source) = split_token(event.data());
                let device = self.devices().get(&id).cloned();
                let Some(device) = device else { continue };
                if device.note(id, source, event.event_set()) {
                    run_queue.push_back((id, device));
                }
            }
            // One turn each for the devices queued now; those with work left go to the back.
            for _ in 0..run_queue.len() {
                let Some((id, device)) = run_queue.pop_front() else {
                    break;
                };
                if device.turn(id) {
                    run_queue.push_back((id, device));
                }
            }
        }
    }
}

/// The event loop held inside a turn ([`EventLoop::hold`]): nothing of the process is served
/// until this is dropped.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) struct LoopHold {
    event_loop: Arc<EventLoop>,
    id: u64,
    blocker: Arc<Blocker>,
    release: Option<std::sync::mpsc::Sender<()>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl std::fmt::Debug for LoopHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHold").field("id", &self.id).finish()
    }
}

/// A device whose one turn waits for its release.
#[cfg(any(test, feature = "test-utils"))]
struct Blocker {
    kick: vmm_sys_util::eventfd::EventFd,
    other: vmm_sys_util::eventfd::EventFd,
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl LoopDevice for Blocker {
    fn note(&self, _id: u64, _source: Source, _events: EventSet) -> bool {
        let _ = self.kick.read();
        true
    }

    fn turn(&self, _id: u64) -> bool {
        let entered = self
            .entered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let release = self
            .release
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(entered) = entered {
            let _ = entered.send(());
        }
        if let Some(release) = release {
            let _ = release.recv();
        }
        false
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl EventLoop {
    /// Holds the loop thread inside a turn until the returned guard is dropped: events that
    /// come meanwhile are all seen at once afterwards, in the order they came.
    pub(crate) fn hold(self: &Arc<Self>) -> std::io::Result<LoopHold> {
        use std::os::fd::AsRawFd;
        use std::sync::mpsc::channel;
        use vmm_sys_util::eventfd::EventFd;
        let (entered, inside) = channel();
        let (release, released) = channel();
        let blocker = Arc::new(Blocker {
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            other: EventFd::new(libc::EFD_NONBLOCK)?,
            entered: Mutex::new(Some(entered)),
            release: Mutex::new(Some(released)),
        });
        let id = self.register(
            Arc::clone(&blocker) as Arc<dyn LoopDevice>,
            blocker.kick.as_raw_fd(),
            blocker.other.as_raw_fd(),
            EventSet::EDGE_TRIGGERED,
        )?;
        blocker.kick.write(1)?;
        let hold = LoopHold {
            event_loop: Arc::clone(self),
            id,
            blocker,
            release: Some(release),
        };
        inside
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        Ok(hold)
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl Drop for LoopHold {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        drop(self.release.take());
        self.event_loop.unregister(
            self.id,
            self.blocker.kick.as_raw_fd(),
            self.blocker.other.as_raw_fd(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Instant;
    use vmm_sys_util::eventfd::EventFd;

    /// A device that needs `work` turns after its kick (`usize::MAX`: until `stop`), and logs
    /// every turn.
    struct Counting {
        name: char,
        work: AtomicUsize,
        stop: AtomicBool,
        queued: Mutex<bool>,
        kick: EventFd,
        log: Arc<Mutex<Vec<char>>>,
    }

    impl LoopDevice for Counting {
        fn note(&self, _id: u64, source: Source, _events: EventSet) -> bool {
            assert_eq!(source, Source::Kick);
            let _ = self.kick.read();
            let mut queued = self.queued.lock().unwrap();
            !std::mem::replace(&mut *queued, true)
        }

        fn turn(&self, _id: u64) -> bool {
            self.log.lock().unwrap().push(self.name);
            let left = if self.stop.load(Ordering::SeqCst) {
                0
            } else {
                self.work.fetch_sub(1, Ordering::SeqCst) - 1
            };
            let mut queued = self.queued.lock().unwrap();
            *queued = left > 0;
            *queued
        }
    }

    #[test]
    fn devices_with_work_left_take_turns() {
        let event_loop = EventLoop::get().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let device = |name, work| {
            Arc::new(Counting {
                name,
                work: AtomicUsize::new(work),
                stop: AtomicBool::new(false),
                queued: Mutex::new(false),
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                log: Arc::clone(&log),
            })
        };
        // `a` always has work (a guest flooding its queue); `b` becomes ready meanwhile.
        let (a, b) = (device('a', usize::MAX), device('b', 3));
        let mut registrations = Vec::new();
        for d in [&a, &b] {
            // Something to stand for the tap, never ready.
            let tap = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let id = event_loop
                .register(
                    Arc::clone(d) as Arc<dyn LoopDevice>,
                    d.kick.as_raw_fd(),
                    tap.as_raw_fd(),
                    EventSet::EDGE_TRIGGERED,
                )
                .unwrap();
            registrations.push((id, tap));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                thread::sleep(Duration::from_millis(1));
            }
        };
        a.kick.write(1).unwrap();
        wait("a's turns", &|| log.lock().unwrap().len() >= 20);
        b.kick.write(1).unwrap();
        wait("b's turns", &|| b.work.load(Ordering::SeqCst) == 0);
        a.stop.store(true, Ordering::SeqCst);
        wait("a to stop", &|| !*a.queued.lock().unwrap());
        // `b` got its three turns one round each, while `a` kept its work.
        let log: String = log.lock().unwrap().iter().collect();
        let (first_b, last_b) = (log.find('b').unwrap(), log.rfind('b').unwrap());
        assert_eq!(log.matches('b').count(), 3, "{log}");
        assert_eq!(&log[first_b..=last_b], "babab", "{log}");
        assert!(log[last_b..].contains('a'), "{log}");
        for ((id, tap), d) in registrations.into_iter().zip([&a, &b]) {
            event_loop.unregister(id, d.kick.as_raw_fd(), tap.as_raw_fd());
        }
    }
}
