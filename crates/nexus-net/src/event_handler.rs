// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's I/O: frames between the guest's queues and the tap, served by the process's
//! event loop ([`crate::event_loop`]), and the WAIT register's sleep.
//!
//! - **Transmit.** On the doorbell the device pops the transmit queue's chains
//!   (`nexus_ring::queue::pop_checked`, at most 16 descriptors), reads each header once into
//!   its own memory and checks it ([`crate::header`]), and writes header and frame to the tap
//!   with one `writev` (the frame straight from guest memory). Notifications are off while it
//!   drains and back on at the end, checked for chains that came meanwhile.
//! - **Receive.** When the tap is readable the device pops a receive chain and reads a frame
//!   into it with one `readv` over guest memory (the kernel copies into guest memory
//!   directly), then sets `num_buffers` (and clears `flags` without `GUEST_CSUM`). Frames
//!   waiting and no chain: it stops watching the tap and turns receive notifications on until
//!   the guest adds buffers (the doorbell); the frames wait in the tap's queue. Receive
//!   notifications are otherwise off: the guest need not ring for every buffer.
//! - **Fairness.** A turn does at most [`QUEUE_BUDGET`] chains per queue; a device with work
//!   left waits for the other devices' turns.
//! - **Completions.** After a turn that added used entries the device signals its call
//!   eventfd, on which a WAIT read sleeps.
//! - **Ring faults.** A chain that breaks a ring rule stops both queues: the device stops
//!   watching its descriptors (a guest that keeps ringing costs nothing), shows
//!   `DEVICE_NEEDS_RESET`, and WAIT returns `0xFFFF_FFFF` until the driver resets it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, warn};
use nexus_kvm::virtio_mmio::QueueConfig;
use nexus_ring::queue::{
    CheckedChain, RingFault, enable_notification_checked, pending, pop_checked,
};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{
    MAX_CHAIN_LEN, MAX_FRAME_LEN, MIN_FRAME_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    WAIT_NOT_LIVE, wait_value,
};
use crate::event_loop::{EventLoop, LoopDevice, Source};
use crate::header::{self, HDR_FLAGS_OFFSET, HDR_NUM_BUFFERS_OFFSET, HEADER_LEN, NetHeader};
use crate::stats::NetStats;
use crate::tap::{MAX_SEGMENTS, ReadFrame, Tap};
use crate::{Error, GuestMemoryMmap, Result};

/// Most chains one turn serves per queue before the device yields to the other devices.
pub const QUEUE_BUDGET: usize = 64;

/// Where the device is in a queue: what a snapshot keeps besides the queue's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueuePosition {
    /// The next available ring entry the device will read.
    pub next_avail: u16,
    /// The next used ring entry the device will write.
    pub next_used: u16,
}

/// A broken ring rule, or a chain whose buffers the device cannot use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueFault {
    /// A rule of the split virtqueue (`nexus_ring::queue`).
    #[error(transparent)]
    Ring(#[from] RingFault),
    /// The used ring cannot be written.
    #[error("the used ring cannot be written")]
    UsedRing(#[source] virtio_queue::Error),
    /// A descriptor in the wrong direction for its queue.
    #[error("descriptor {index} of the chain at head {head} is {found}")]
    Direction {
        /// Head of the chain.
        head: u16,
        /// Position of the descriptor in the chain.
        index: usize,
        /// `"device-readable"` or `"device-writable"`.
        found: &'static str,
    },
    /// A buffer outside guest RAM.
    #[error(
        "the buffer at {addr:#x} ({len} bytes) of the chain at head {head} is not in guest RAM"
    )]
    OutsideMemory {
        /// Head of the chain.
        head: u16,
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A receive chain too short for the header.
    #[error("the chain at head {head} holds {len} bytes, less than the 12-byte header")]
    TooShort {
        /// Head of the chain.
        head: u16,
        /// Its bytes.
        len: usize,
    },
    /// A chain in more pieces of memory than one read or write takes.
    #[error("the chain at head {head} lies in more than {MAX_SEGMENTS} pieces of memory")]
    Fragmented {
        /// Head of the chain.
        head: u16,
    },
}

/// The call eventfd: the I/O side signals it after adding used entries; a WAIT read sleeps on
/// it.
#[derive(Debug)]
struct CallEvent(OwnedFd);

impl CallEvent {
    fn new() -> std::io::Result<Self> {
        let flags = EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC;
        Ok(CallEvent(rustix::event::eventfd(0, flags)?))
    }

    fn signal(&self) {
        if let Err(e) = rustix::io::write(&self.0, &1u64.to_ne_bytes()) {
            warn!("nexus-net: cannot signal the call eventfd: {e}");
        }
    }

    /// Consumes any signal.
    fn drain(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut count);
    }

    /// Sleeps until the eventfd is signalled, `timeout` passes or a signal interrupts.
    fn sleep(&self, timeout: Duration) {
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            // A signal (for example the VMM stopping this vCPU): let the guest read again.
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => warn!("nexus-net: WAIT cannot poll: {e}"),
        }
    }
}

/// The two queues while the device is live.
#[derive(Debug)]
struct Queues {
    rx: Queue,
    tx: Queue,
    /// `VIRTIO_NET_F_CSUM`: the guest may send partial checksums.
    csum: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM`: the guest takes partial checksums.
    guest_csum: bool,
}

/// The I/O side's state, under the device's lock.
#[derive(Debug, Default)]
struct IoState {
    /// The queues, while the device is live (also while paused or broken).
    queues: Option<Queues>,
    /// The event loop's registration, while the device is served.
    registration: Option<u64>,
    /// In the event loop's run queue.
    queued: bool,
    /// The doorbell rang.
    kicked: bool,
    /// The transmit queue may have chains.
    tx_ready: bool,
    /// The tap may have frames.
    rx_ready: bool,
    /// The guest had no receive buffer: the tap is not watched until the doorbell.
    rx_stalled: bool,
    /// The tap took no more frames: the transmit queue waits for it to be writable.
    tx_blocked: bool,
    /// A tap error was logged (until the tap works again).
    tap_error_logged: bool,
}

impl IoState {
    /// What the event loop waits for on the tap.
    fn tap_interest(&self) -> EventSet {
        tap_interest(self.rx_stalled, self.tx_blocked)
    }
}

/// What the event loop waits for on the tap (always edge-triggered): frames unless the guest
/// has no buffer for them, room for frames while the tap is full.
fn tap_interest(rx_stalled: bool, tx_blocked: bool) -> EventSet {
    let mut interest = EventSet::EDGE_TRIGGERED;
    if !rx_stalled {
        interest |= EventSet::IN;
    }
    if tx_blocked {
        interest |= EventSet::OUT;
    }
    interest
}

/// What one read from the tap gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// A frame of this many bytes (header included) is in the chain.
    Frame(u32),
    /// The frame was dropped (or the read interrupted): the chain is still free.
    Dropped,
    /// No frame (or the tap failed): the chain is still free.
    Nothing,
}

/// How a queue's part of a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Nothing left to do until the next event.
    Done,
    /// The budget ran out with work left.
    More,
    /// Receive: no buffer for waiting frames. Transmit: the tap is full.
    Blocked,
}

/// A device's I/O side, shared by the device model (vCPU threads) and the event loop.
#[derive(Debug)]
pub(crate) struct NetIo {
    tap: Tap,
    kick: EventFd,
    call: CallEvent,
    /// Guest RAM: rings and buffers must lie in it.
    memory: GuestMemoryMmap,
    stats: Arc<NetStats>,
    /// A ring fault stopped the queues until the driver resets the device.
    needs_reset: AtomicBool,
    event_loop: Arc<EventLoop>,
    state: Mutex<IoState>,
}

impl NetIo {
    /// The I/O side of a device over `tap` and guest RAM `memory`, not live yet.
    pub(crate) fn new(tap: Tap, memory: GuestMemoryMmap) -> Result<Self> {
        Ok(NetIo {
            tap,
            kick: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?,
            call: CallEvent::new().map_err(Error::EventFd)?,
            memory,
            stats: Arc::default(),
            needs_reset: AtomicBool::new(false),
            event_loop: EventLoop::get().map_err(Error::EventLoop)?,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, IoState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn tap(&self) -> &Tap {
        &self.tap
    }

    pub(crate) fn kick(&self) -> &EventFd {
        &self.kick
    }

    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub(crate) fn stats(&self) -> &Arc<NetStats> {
        &self.stats
    }

    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// A virtio-queue view of `config`, at `position`.
    fn queue_view(&self, config: &QueueConfig, position: QueuePosition) -> Result<Queue> {
        let mut queue = Queue::new(config.max_size).map_err(Error::Queue)?;
        queue.try_set_size(config.size).map_err(Error::Queue)?;
        queue
            .try_set_desc_table_address(GuestAddress(config.desc_table))
            .map_err(Error::Queue)?;
        queue
            .try_set_avail_ring_address(GuestAddress(config.avail_ring))
            .map_err(Error::Queue)?;
        queue
            .try_set_used_ring_address(GuestAddress(config.used_ring))
            .map_err(Error::Queue)?;
        queue.set_next_avail(position.next_avail);
        queue.set_next_used(position.next_used);
        queue.set_ready(true);
        Ok(queue)
    }

    /// Makes the queues live with the negotiated `features` (both already checked against
    /// guest RAM), at `positions` (a restore) or at the start, and starts serving them.
    pub(crate) fn start(
        self: &Arc<Self>,
        features: u64,
        rings: &[QueueConfig; 2],
        positions: [QueuePosition; 2],
    ) -> Result<()> {
        let mut state = self.lock();
        self.unregister(&mut state);
        let guest_csum = features & VIRTIO_NET_F_GUEST_CSUM != 0;
        // The kernel hands over partial checksums only to a guest that takes them.
        let offload = if guest_csum { libc::TUN_F_CSUM } else { 0 };
        self.tap.set_offload(offload)?;
        let mut rx = self.queue_view(&rings[0], positions[0])?;
        let tx = self.queue_view(&rings[1], positions[1])?;
        // Receive buffers need no doorbell unless the device runs out of them.
        rx.disable_notification(&self.memory)
            .map_err(Error::Queue)?;
        *state = IoState {
            queues: Some(Queues {
                rx,
                tx,
                csum: features & VIRTIO_NET_F_CSUM != 0,
                guest_csum,
            }),
            ..IoState::default()
        };
        self.needs_reset.store(false, Ordering::Release);
        self.register(&mut state)
    }

    /// Serves the live queues again after [`pause`](Self::pause).
    pub(crate) fn resume(self: &Arc<Self>) -> Result<()> {
        let mut state = self.lock();
        if state.queues.is_none() || state.registration.is_some() || self.needs_reset() {
            return Ok(());
        }
        self.register(&mut state)
    }

    /// Registers with the event loop and rings the doorbell once, so that the first turn
    /// takes what the guest made available meanwhile (and reads any waiting frame).
    fn register(self: &Arc<Self>, state: &mut IoState) -> Result<()> {
        state.rx_stalled = false;
        state.tx_blocked = false;
        state.queued = false;
        // A tap with frames waiting reports them when added to the loop's epoll.
        state.rx_ready = false;
        let device = Arc::clone(self) as Arc<dyn LoopDevice>;
        let id = self
            .event_loop
            .register(
                device,
                self.kick.as_raw_fd(),
                self.tap.as_raw_fd(),
                state.tap_interest(),
            )
            .map_err(Error::EventLoop)?;
        state.registration = Some(id);
        self.kick.write(1).map_err(Error::EventFd)
    }

    fn unregister(&self, state: &mut IoState) {
        if let Some(id) = state.registration.take() {
            self.event_loop
                .unregister(id, self.kick.as_raw_fd(), self.tap.as_raw_fd());
        }
        state.queued = false;
    }

    /// Stops serving the queues, keeping them (for a snapshot): once this returns the event
    /// loop no longer touches guest memory for this device.
    pub(crate) fn pause(&self) {
        let mut state = self.lock();
        self.unregister(&mut state);
    }

    /// Stops serving and forgets the queues (a reset).
    pub(crate) fn stop(&self) {
        let mut state = self.lock();
        self.unregister(&mut state);
        *state = IoState::default();
        self.needs_reset.store(false, Ordering::Release);
    }

    /// Where the device is in each queue, while live.
    pub(crate) fn positions(&self) -> Option<[QueuePosition; 2]> {
        let state = self.lock();
        let queues = state.queues.as_ref()?;
        let position = |q: &Queue| QueuePosition {
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        };
        Some([position(&queues.rx), position(&queues.tx)])
    }

    /// Whether the event loop serves the device.
    pub(crate) fn is_served(&self) -> bool {
        self.lock().registration.is_some()
    }

    /// A WAIT read: `rx_used_idx | tx_used_idx << 16` at once if either queue's used `idx`
    /// differs from the driver's `used_event`, else after sleeping on the call eventfd for at
    /// most `timeout` — or less, when the driver's hint asks for less
    /// ([`nexus_ring::net::wait_hint_offset`]); [`WAIT_NOT_LIVE`] if the device needs a reset.
    pub(crate) fn wait(&self, rings: &[QueueConfig; 2], timeout: Duration) -> u32 {
        if self.needs_reset() {
            return WAIT_NOT_LIVE;
        }
        // Consume any earlier signal first: one that comes after the check below wakes us.
        self.call.drain();
        match self.used_indices(rings) {
            Some((value, true)) => return value,
            Some((_, false)) => {}
            None => return WAIT_NOT_LIVE,
        }
        self.call.sleep(self.allowed_wait(&rings[0], timeout));
        if self.needs_reset() {
            return WAIT_NOT_LIVE;
        }
        self.used_indices(rings)
            .map_or(WAIT_NOT_LIVE, |(value, _)| value)
    }

    /// How long a WAIT may sleep: the device's `timeout`, shortened by the hint the driver
    /// left in the receive queue's used ring (an unreadable slot is no hint).
    fn allowed_wait(&self, rx: &QueueConfig, timeout: Duration) -> Duration {
        let slot = rx
            .used_ring
            .wrapping_add(nexus_ring::net::wait_hint_offset(rx.size));
        let hint = self
            .memory
            .load::<u16>(GuestAddress(slot), Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0);
        let device_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let allowed = nexus_ring::net::wait_allowed_ms(hint, device_ms);
        if allowed == device_ms {
            timeout
        } else {
            Duration::from_millis(allowed)
        }
    }

    /// The WAIT value, and whether the driver has completions to consume.
    fn used_indices(&self, rings: &[QueueConfig; 2]) -> Option<(u32, bool)> {
        let load = |addr: u64| {
            self.memory
                .load::<u16>(GuestAddress(addr), Ordering::Acquire)
                .map(u16::from_le)
                .ok()
        };
        let mut used = [0u16; 2];
        let mut pending = false;
        for (ring, used) in rings.iter().zip(&mut used) {
            *used = load(ring.used_idx_addr())?;
            pending |= *used != load(ring.used_event_addr())?;
        }
        Some((wait_value(used[0], used[1]), pending))
    }

    /// One turn's work: the doorbell, then at most a budget of chains per queue. Returns
    /// whether work is left.
    fn work(&self, state: &mut IoState, used: &mut bool) -> std::result::Result<bool, QueueFault> {
        let Some(queues) = state.queues.as_mut() else {
            return Ok(false);
        };
        if std::mem::take(&mut state.kicked) {
            state.tx_ready = true;
            if state.rx_stalled && pending(&queues.rx, &self.memory)? > 0 {
                // The guest added receive buffers: watch the tap again (re-arming the edge
                // reports frames already waiting), without receive notifications.
                state.rx_stalled = false;
                state.rx_ready = true;
                queues
                    .rx
                    .disable_notification(&self.memory)
                    .map_err(QueueFault::UsedRing)?;
                let interest = tap_interest(state.rx_stalled, state.tx_blocked);
                self.set_tap_interest(state.registration, interest);
            }
        }
        let mut more = false;
        if state.tx_ready {
            match self.transmit(queues, used, &mut state.tap_error_logged)? {
                Drain::More => more = true,
                Drain::Done => state.tx_ready = false,
                Drain::Blocked => {
                    state.tx_ready = false;
                    state.tx_blocked = true;
                    let interest = tap_interest(state.rx_stalled, state.tx_blocked);
                    self.set_tap_interest(state.registration, interest);
                }
            }
        }
        if state.rx_ready {
            match self.receive(queues, used, &mut state.tap_error_logged)? {
                Drain::More => more = true,
                Drain::Done => state.rx_ready = false,
                Drain::Blocked => {
                    state.rx_ready = false;
                    state.rx_stalled = true;
                    self.stats.rx_stalled();
                    let interest = tap_interest(state.rx_stalled, state.tx_blocked);
                    self.set_tap_interest(state.registration, interest);
                }
            }
        }
        Ok(more)
    }

    fn set_tap_interest(&self, registration: Option<u64>, interest: EventSet) {
        let Some(id) = registration else { return };
        if let Err(e) = self
            .event_loop
            .set_tap_interest(id, self.tap.as_raw_fd(), interest)
        {
            warn!("nexus-net {}: cannot watch the tap: {e}", self.tap.name());
        }
    }

    /// Transmit: at most [`QUEUE_BUDGET`] chains to the tap.
    fn transmit(
        &self,
        queues: &mut Queues,
        used: &mut bool,
        error_logged: &mut bool,
    ) -> std::result::Result<Drain, QueueFault> {
        let mem = &self.memory;
        let tx = &mut queues.tx;
        tx.disable_notification(mem).map_err(QueueFault::UsedRing)?;
        let mut frame = Vec::with_capacity(MAX_CHAIN_LEN);
        for _ in 0..QUEUE_BUDGET {
            let Some(chain) = pop_checked(tx, mem, MAX_CHAIN_LEN)? else {
                if enable_notification_checked(tx, mem)? {
                    tx.disable_notification(mem).map_err(QueueFault::UsedRing)?;
                    continue;
                }
                return Ok(Drain::Done);
            };
            if !self.send(&chain, queues.csum, &mut frame, error_logged)? {
                // The tap is full: give the chain back; it goes out once the tap is writable.
                tx.set_next_avail(tx.next_avail().wrapping_sub(1));
                return Ok(Drain::Blocked);
            }
            tx.add_used(mem, chain.head(), 0)
                .map_err(QueueFault::UsedRing)?;
            *used = true;
        }
        Ok(Drain::More)
    }

    /// Sends the frame of a transmit chain, or drops it (counted) if the header or its
    /// length breaks the contract or the tap refuses it. Returns false if the tap is full.
    fn send<'m>(
        &'m self,
        chain: &CheckedChain,
        csum: bool,
        frame: &mut Vec<VolatileSlice<'m>>,
        error_logged: &mut bool,
    ) -> std::result::Result<bool, QueueFault> {
        frame.clear();
        let header = tx_buffers(&self.memory, chain, frame)?;
        let frame_len: usize = frame.iter().map(|s| s.len()).sum();
        let header = match header {
            None => Err("a chain shorter than the header".to_owned()),
            Some(_) if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame_len) => {
                Err(format!("a frame of {frame_len} bytes"))
            }
            Some(header) => header::check_tx(header, csum).map_err(|e| e.to_string()),
        };
        let header = match header {
            Ok(header) => header,
            Err(why) => {
                debug!("nexus-net {}: transmit refused: {why}", self.tap.name());
                self.stats.tx_dropped();
                return Ok(true);
            }
        };
        match self.tap.write_frame(&header, frame) {
            Ok(_) => {
                *error_logged = false;
                self.stats.sent(frame_len);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => {
                if !std::mem::replace(error_logged, true) {
                    warn!(
                        "nexus-net {}: cannot write to the tap: {e}",
                        self.tap.name()
                    );
                }
                self.stats.tx_dropped();
            }
        }
        Ok(true)
    }

    /// Receive: at most [`QUEUE_BUDGET`] frames (or chains) from the tap.
    fn receive(
        &self,
        queues: &mut Queues,
        used: &mut bool,
        error_logged: &mut bool,
    ) -> std::result::Result<Drain, QueueFault> {
        let mem = &self.memory;
        let guest_csum = queues.guest_csum;
        let rx = &mut queues.rx;
        let mut buffers = Vec::with_capacity(MAX_CHAIN_LEN);
        // The chain popped and not used yet (a frame too large for it leaves it to the next).
        let mut chain: Option<CheckedChain> = None;
        let outcome = 'turn: {
            for _ in 0..QUEUE_BUDGET {
                let head = match &chain {
                    Some(chain) => chain.head(),
                    None => {
                        let Some(popped) = pop_checked(rx, mem, MAX_CHAIN_LEN)? else {
                            if !self.tap.has_frame().unwrap_or(true) {
                                break 'turn Drain::Done;
                            }
                            if enable_notification_checked(rx, mem)? {
                                rx.disable_notification(mem).map_err(QueueFault::UsedRing)?;
                                continue;
                            }
                            // Frames wait and the guest has no buffer: notifications stay on,
                            // the guest rings when it adds buffers.
                            break 'turn Drain::Blocked;
                        };
                        buffers.clear();
                        rx_buffers(mem, &popped, &mut buffers)?;
                        chain.insert(popped).head()
                    }
                };
                match self.read_frame(&buffers, guest_csum, error_logged) {
                    Received::Frame(len) => {
                        rx.add_used(mem, head, len).map_err(QueueFault::UsedRing)?;
                        *used = true;
                        chain = None;
                    }
                    // The chain waits for the next frame.
                    Received::Dropped => {}
                    Received::Nothing => break 'turn Drain::Done,
                }
            }
            Drain::More
        };
        if chain.is_some() {
            // Give the unused chain back: the next turn pops it again.
            rx.set_next_avail(rx.next_avail().wrapping_sub(1));
        }
        Ok(outcome)
    }

    /// Reads a frame from the tap into `buffers` (a receive chain) and completes its header.
    fn read_frame(
        &self,
        buffers: &[VolatileSlice<'_>],
        guest_csum: bool,
        error_logged: &mut bool,
    ) -> Received {
        match self.tap.read_frame(buffers) {
            Ok(ReadFrame::Frame(n)) if n >= HEADER_LEN => {
                *error_logged = false;
                finish_rx_header(buffers, guest_csum);
                self.stats.received(n - HEADER_LEN);
                // At most the chain's length, which is a u32 sum.
                Received::Frame(n as u32)
            }
            Ok(ReadFrame::Frame(0)) => Received::Nothing,
            Ok(read) => {
                debug!(
                    "nexus-net {}: a frame did not fit a receive chain ({read:?})",
                    self.tap.name()
                );
                self.stats.rx_dropped();
                Received::Dropped
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Received::Dropped,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && !std::mem::replace(error_logged, true)
                {
                    warn!(
                        "nexus-net {}: cannot read from the tap: {e}",
                        self.tap.name()
                    );
                }
                Received::Nothing
            }
        }
    }

    /// A ring fault: stop serving both queues until the driver resets the device.
    fn fail(&self, state: &mut IoState, fault: &QueueFault) {
        warn!(
            "nexus-net {}: {fault}: the device stops until the driver resets it",
            self.tap.name()
        );
        self.stats.ring_fault();
        self.unregister(state);
        self.needs_reset.store(true, Ordering::Release);
        // Wake a sleeping WAIT read: it returns 0xFFFF_FFFF.
        self.call.signal();
    }
}

impl LoopDevice for NetIo {
    fn note(&self, id: u64, source: Source, events: EventSet) -> bool {
        let mut state = self.lock();
        if state.registration != Some(id) {
            return false;
        }
        match source {
            Source::Kick => {
                let _ = self.kick.read();
                state.kicked = true;
            }
            Source::Tap => {
                if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    state.rx_ready = true;
                }
                if events.contains(EventSet::OUT) && state.tx_blocked {
                    state.tx_blocked = false;
                    state.tx_ready = true;
                    self.set_tap_interest(state.registration, state.tap_interest());
                }
            }
        }
        !std::mem::replace(&mut state.queued, true)
    }

    fn turn(&self, id: u64) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.registration != Some(id) {
            // Stopped, or registered again under another ID: that one has its own turns.
            return false;
        }
        let mut used = false;
        let more = match self.work(state, &mut used) {
            Ok(more) => more,
            Err(fault) => {
                self.fail(state, &fault);
                false
            }
        };
        if used {
            self.call.signal();
        }
        state.queued &= more;
        more
    }
}

/// The transmit chain's header (read once, into our memory; `None` if the chain is shorter)
/// and its frame's slices of guest memory, into `frame`.
fn tx_buffers<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &CheckedChain,
    frame: &mut Vec<VolatileSlice<'m>>,
) -> std::result::Result<Option<NetHeader>, QueueFault> {
    let head = chain.head();
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    for (index, d) in chain.descriptors().iter().enumerate() {
        if d.writable {
            return Err(QueueFault::Direction {
                head,
                index,
                found: "device-writable",
            });
        }
        let outside = || QueueFault::OutsideMemory {
            head,
            addr: d.addr,
            len: d.len,
        };
        let len = d.len as usize;
        let take = (HEADER_LEN - have).min(len);
        if take > 0 {
            mem.read_slice(&mut header[have..have + take], GuestAddress(d.addr))
                .map_err(|_| outside())?;
            have += take;
        }
        let rest = GuestAddress(d.addr.checked_add(take as u64).ok_or_else(outside)?);
        for slice in mem.get_slices(rest, len - take) {
            frame.push(slice.map_err(|_| outside())?);
        }
    }
    if frame.len() > MAX_SEGMENTS {
        return Err(QueueFault::Fragmented { head });
    }
    Ok((have == HEADER_LEN).then(|| NetHeader::from_bytes(&header)))
}

/// The receive chain's slices of guest memory, into `buffers`.
fn rx_buffers<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &CheckedChain,
    buffers: &mut Vec<VolatileSlice<'m>>,
) -> std::result::Result<(), QueueFault> {
    let head = chain.head();
    let mut capacity = 0usize;
    for (index, d) in chain.descriptors().iter().enumerate() {
        if !d.writable {
            return Err(QueueFault::Direction {
                head,
                index,
                found: "device-readable",
            });
        }
        for slice in mem.get_slices(GuestAddress(d.addr), d.len as usize) {
            buffers.push(slice.map_err(|_| QueueFault::OutsideMemory {
                head,
                addr: d.addr,
                len: d.len,
            })?);
        }
        capacity += d.len as usize;
    }
    if capacity < HEADER_LEN {
        return Err(QueueFault::TooShort {
            head,
            len: capacity,
        });
    }
    if buffers.len() > MAX_SEGMENTS {
        return Err(QueueFault::Fragmented { head });
    }
    Ok(())
}

/// Completes the header the kernel wrote at the start of `buffers`: `num_buffers` = 1, and
/// `flags` cleared for a guest without `GUEST_CSUM` (which must see none).
fn finish_rx_header(buffers: &[VolatileSlice<'_>], guest_csum: bool) {
    write_at(buffers, HDR_NUM_BUFFERS_OFFSET, &1u16.to_le_bytes());
    if !guest_csum {
        write_at(buffers, HDR_FLAGS_OFFSET, &[0]);
    }
}

/// Writes `bytes` at `offset` of the concatenation of `slices` (inside it: the caller read
/// at least the header into them).
fn write_at(slices: &[VolatileSlice<'_>], mut offset: usize, mut bytes: &[u8]) {
    for slice in slices {
        if bytes.is_empty() {
            break;
        }
        if offset >= slice.len() {
            offset -= slice.len();
            continue;
        }
        let n = (slice.len() - offset).min(bytes.len());
        if let Err(e) = slice.write_slice(&bytes[..n], offset) {
            warn!("nexus-net: cannot write the receive header: {e}");
        }
        bytes = &bytes[n..];
        offset = 0;
    }
}
