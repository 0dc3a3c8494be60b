// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's events: completions (the backend's call eventfd), served to the guest
//! through the WAIT register, and the loss of the backend, noticed by a monitor thread that
//! watches both backend connections and by every WAIT.
//!
//! Doorbells are no event of the VMM's: the guest's `QueueNotify` write is an ioeventfd that
//! KVM signals to the backend directly.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;
use crate::sys::{HANGUP, PollFd, READABLE, poll};
use crate::{Error, Result};

/// The connection state shared by the device and its monitor thread.
#[derive(Debug)]
pub(crate) struct LinkState {
    connected: AtomicBool,
    /// Bumped on every change of `backend_state` (the `ConfigGeneration` register).
    generation: AtomicU32,
    /// A configuration change interrupt is pending (irqfd mode only).
    config_changed: AtomicBool,
    /// The call eventfd is an irqfd: a signal on it is an interrupt.
    irqfd: AtomicBool,
    /// The call eventfd (a clone), to raise the configuration change interrupt.
    call: EventFd,
}

impl LinkState {
    pub(crate) fn new(call: &EventFd) -> Result<Self> {
        Ok(LinkState {
            connected: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            config_changed: AtomicBool::new(false),
            irqfd: AtomicBool::new(false),
            call: call.try_clone().map_err(Error::EventFd)?,
        })
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

/// A thread that marks the link down as soon as either backend connection hangs up.
#[derive(Debug)]
pub(crate) struct Monitor {
    stop: EventFd,
    thread: Option<thread::JoinHandle<()>>,
}

impl Monitor {
    /// Watches `control` and `vhost` (clones of the device's connections).
    pub(crate) fn start(
        control: UnixStream,
        vhost: UnixStream,
        state: Arc<LinkState>,
    ) -> Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let stop_watch = stop.try_clone().map_err(Error::EventFd)?;
        let thread = thread::Builder::new()
            .name("nexus-io-monitor".into())
            .stack_size(MONITOR_STACK_SIZE)
            .spawn(move || watch(&control, &vhost, &stop_watch, &state))
            .map_err(Error::Monitor)?;
        Ok(Monitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            warn!("nexus-io: cannot stop the backend monitor: {e}");
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(control: &UnixStream, vhost: &UnixStream, stop: &EventFd, state: &LinkState) {
    loop {
        let mut fds = [
            PollFd::new(control, HANGUP),
            PollFd::new(vhost, HANGUP),
            PollFd::new(stop, READABLE),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("nexus-io: the backend monitor cannot poll: {e}");
                return;
            }
        }
        if fds[2].has(READABLE) {
            return;
        }
        if fds[0].has(HANGUP) || fds[1].has(HANGUP) {
            debug!(
                "nexus-io: backend hang-up (control: {}, vhost-user: {})",
                fds[0].has(HANGUP),
                fds[1].has(HANGUP)
            );
            state.set_connected(false);
            return;
        }
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

/// Serves a WAIT read: returns the used index at once if it differs from the driver's
/// `used_event`, else sleeps on the call eventfd (and the backend connections' hang-ups) for
/// at most `timeout`.
pub(crate) fn wait_for_used(
    queue: &Queue,
    window: &GuestMemoryMmap,
    call: &EventFd,
    connections: [BorrowedFd<'_>; 2],
    timeout: Duration,
) -> std::result::Result<WaitOutcome, virtio_queue::Error> {
    // Consume any earlier signal first: one that arrives after the check below wakes us.
    let _ = call.read();
    let used = queue.used_idx(window, Ordering::Acquire)?.0;
    let used_event = used_event_addr(queue);
    let used_event: u16 = window
        .load(used_event, Ordering::Acquire)
        .map(u16::from_le)
        .map_err(virtio_queue::Error::GuestMemory)?;
    if used != used_event {
        return Ok(WaitOutcome::Used(used));
    }
    let [control, vhost] = connections;
    let mut fds = [
        PollFd::new(call, READABLE),
        PollFd::new(&control, HANGUP),
        PollFd::new(&vhost, HANGUP),
    ];
    match poll(&mut fds, Some(timeout)) {
        Ok(_) => {}
        // A signal (for example the VMM stopping this vCPU): let the guest read again.
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(e) => warn!("nexus-io: WAIT cannot poll: {e}"),
    }
    if fds[1].has(HANGUP) || fds[2].has(HANGUP) {
        return Ok(WaitOutcome::Lost);
    }
    if fds[0].has(READABLE) {
        let _ = call.read();
    }
    Ok(WaitOutcome::Used(
        queue.used_idx(window, Ordering::Acquire)?.0,
    ))
}

/// The `used_event` field: after the available ring's flags, idx and entries.
fn used_event_addr(queue: &Queue) -> GuestAddress {
    GuestAddress(queue.avail_ring()).unchecked_add(4 + 2 * u64::from(queue.size()))
}
