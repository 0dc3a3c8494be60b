// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device model: identity, features, configuration space, the WAIT register, and
//! activation (which connects the backend).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use nexus_kvm::WindowRegion;
use nexus_kvm::virtio_mmio::{QueueConfig, VirtioDevice, interrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::event_handler::{Check, LinkState, WaitOutcome, check_used, wait_for_used};
use crate::link::{BackendLink, Identity, RingSetup};
use crate::{Error, GuestMemoryMmap, Result, error_chain};
use nexus_kvm::park::{self, ParkRequest, Readiness, WaitMode};

pub use nexus_ring::device::wait::{BACKEND_UNAVAILABLE, NEEDS_RESET};
pub use nexus_ring::device::{
    DEVICE_FEATURES, DEVICE_ID, NEXUS_F_WAIT, NEXUS_F_WRITE_BEHIND, NUM_QUEUES, QUEUE_SIZE_MAX,
    VENDOR_ID, config,
};

/// Longest a WAIT read blocks by default (see [`NexusIo::set_wait_timeout`]).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(100);

/// How the guest learns of completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// By reading the WAIT register (micro-guests; the default).
    Wait,
    /// By an interrupt: the call eventfd is registered as an irqfd.
    Irqfd,
}

/// How to build a [`NexusIo`].
#[derive(Debug, Clone)]
pub struct NexusIoConfig {
    /// The backend's control socket.
    pub control_socket: PathBuf,
    /// This VM's ID, unique on the backend.
    pub vm_id: String,
    /// The tenant the VM belongs to: it decides what the VM may touch.
    pub tenant: String,
    /// The VM's I/O window: the rings and every buffer live in it, and it is all the backend
    /// is given.
    pub window: WindowRegion,
    /// The interrupt line, for VMs with an interrupt controller.
    pub irq: Option<u32>,
}

/// The request queue while the device is live.
#[derive(Debug)]
struct ActiveQueue {
    config: QueueConfig,
    queue: Queue,
}

/// The nexus-io device, VMM side. Put it behind a
/// [`MmioTransport`](nexus_kvm::virtio_mmio::MmioTransport) (or use [`attach`](crate::attach)).
#[derive(Debug)]
pub struct NexusIo {
    identity: Identity,
    window: WindowRegion,
    /// The window alone, as guest memory (what the device may read).
    window_memory: GuestMemoryMmap,
    irq: Option<u32>,
    kick: EventFd,
    /// Also holds the call eventfd (see [`NexusIo::call_eventfd`]).
    state: Arc<LinkState>,
    link: BackendLink,
    acked_features: u64,
    active: Option<ActiveQueue>,
    wait_timeout: Duration,
    /// When the WAIT read a parked vCPU repeats gives up (see [`nexus_kvm::park`]).
    wait_deadline: Option<Instant>,
}

impl NexusIo {
    /// A device over `config.window`, not connected to the backend yet: it connects when the
    /// driver sets `DRIVER_OK`.
    pub fn new(config: NexusIoConfig) -> Result<Self> {
        let window_memory =
            GuestMemoryMmap::from_arc_regions(vec![Arc::clone(config.window.region())])
                .map_err(Error::WindowMemory)?;
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let call = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let state = Arc::new(LinkState::new(call));
        Ok(NexusIo {
            identity: Identity {
                control_socket: config.control_socket,
                vm_id: config.vm_id,
                tenant: config.tenant,
            },
            window: config.window,
            window_memory,
            irq: config.irq,
            kick,
            state,
            link: BackendLink::default(),
            acked_features: 0,
            active: None,
            wait_timeout: WAIT_TIMEOUT,
            wait_deadline: None,
        })
    }

    /// The doorbell: register it as an ioeventfd on `QueueNotify` (the backend's kick fd).
    pub fn kick_eventfd(&self) -> &EventFd {
        &self.kick
    }

    /// The backend's call eventfd: register it as an irqfd for [`InterruptMode::Irqfd`].
    pub fn call_eventfd(&self) -> &EventFd {
        self.state.call()
    }

    /// The configured interrupt line.
    pub fn irq(&self) -> Option<u32> {
        self.irq
    }

    /// The I/O window.
    pub fn window(&self) -> &WindowRegion {
        &self.window
    }

    /// Speaks to the backend's control socket on `shared`'s connection, shared with other
    /// devices, rather than on a connection of its own: a process with thousands of VMs
    /// saves a descriptor per VM. The device detaches its VM when dropped (the shared
    /// connection stays open); the backend still detaches every VM of a process that dies.
    /// Call it before the device connects (before [`resume`](Self::resume), or before the
    /// driver sets `DRIVER_OK`).
    pub fn share_control(&mut self, shared: crate::SharedControl) {
        self.link.share(shared);
    }

    /// Sets how long one WAIT read may block before the guest gets the unchanged used index
    /// back (and reads again: one more exit). A VM that idles parked in `NEXT` for long,
    /// as in a warm pool, costs one exit per timeout; stopping the vCPU interrupts a WAIT at
    /// once whatever the timeout (the kick signal ends the wait).
    pub fn set_wait_timeout(&mut self, timeout: Duration) {
        self.wait_timeout = timeout.max(Duration::from_millis(1));
    }

    /// Says how completions reach the guest (see [`InterruptMode`]).
    pub fn set_interrupt_mode(&mut self, mode: InterruptMode) {
        self.state.set_irqfd(mode == InterruptMode::Irqfd);
    }

    /// How completions reach the guest.
    pub fn interrupt_mode(&self) -> InterruptMode {
        if self.state.irqfd() {
            InterruptMode::Irqfd
        } else {
            InterruptMode::Wait
        }
    }

    /// Whether the device is connected to the backend (`backend_state`).
    pub fn backend_connected(&self) -> bool {
        self.state.connected()
    }

    /// The features the driver accepted (0 before `DRIVER_OK`).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The request queue, while the device is live.
    pub fn active_queue(&self) -> Option<&QueueConfig> {
        self.active.as_ref().map(|a| &a.config)
    }

    /// `max_payload`: the protocol's limit, capped by the window.
    pub fn max_payload(&self) -> u32 {
        let cap = u32::try_from(self.window.size()).unwrap_or(u32::MAX);
        nexus_ring::limits::MAX_PAYLOAD_LEN.min(cap)
    }

    /// Checks that the request queue's rings lie in the window.
    fn check_rings(&self, queue: &QueueConfig) -> Result<()> {
        for (area, addr, len) in queue.areas() {
            if !self.window.contains(addr, len) {
                return Err(Error::RingOutsideWindow { area, addr, len });
            }
        }
        Ok(())
    }

    /// A virtio-queue view of the request queue, to read its rings.
    fn queue_view(&self, config: &QueueConfig) -> Result<Queue> {
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
        queue.set_ready(true);
        if !queue.is_valid(&self.window_memory) {
            return Err(Error::RingOutsideWindow {
                area: "ring",
                addr: config.desc_table,
                len: config.desc_table_size(),
            });
        }
        Ok(queue)
    }

    /// Marks the request queue live (without connecting: the snapshot restore path).
    pub(crate) fn set_active(&mut self, features: u64, config: Option<QueueConfig>) -> Result<()> {
        self.acked_features = features;
        self.active = match config {
            Some(config) => {
                self.check_rings(&config)?;
                Some(ActiveQueue {
                    queue: self.queue_view(&config)?,
                    config,
                })
            }
            None => None,
        };
        Ok(())
    }

    /// Connects a device restored from a snapshot ([`NexusIoState::restore`]) to the
    /// backend at once, so that **the guest notices nothing**: the request queue is started
    /// with its base at the used ring's `idx`, so the backend pops again every chain the
    /// guest made available and never got back (the `NEXT` it was parked in), and the
    /// doorbell is rung for it. `attached` is a control connection on which the caller
    /// already sent `attach` for this VM, with the connection it got back (to send a
    /// prefetch `hint` before the restore); without it the device attaches itself.
    ///
    /// A device that was not live when saved has nothing to resume. If the backend cannot be
    /// reached the device stays disconnected, as after a backend loss, and this says why.
    ///
    /// [`NexusIoState::restore`]: crate::NexusIoState::restore
    pub fn resume(
        &mut self,
        attached: Option<(crate::ControlClient, std::os::unix::net::UnixStream)>,
    ) -> Result<()> {
        if let Some((control, connection)) = attached {
            self.link.adopt(control, connection);
        }
        let Some(active) = &self.active else {
            return Ok(());
        };
        let queue = active.config;
        let base = active
            .queue
            .used_idx(&self.window_memory, std::sync::atomic::Ordering::Acquire)
            .map_err(Error::Queue)?
            .0;
        let ring = RingSetup {
            features: self.acked_features,
            queue: &queue,
            base,
            window: &self.window,
            kick: &self.kick,
            call: self.state.call(),
        };
        self.link.start(&self.identity, &ring, &self.state)?;
        debug!("nexus-io: resumed the request queue at base {base}");
        self.kick.write(1).map_err(Error::EventFd)
    }

    /// Stops the request queue on the backend (`GET_VRING_BASE`: the backend cancels what it
    /// popped and did not answer, such as a parked `NEXT`), for a caller that is about to put
    /// the window and guest RAM back to an earlier state (a snapshot's). [`resume`] then
    /// starts the queue again from the used ring's `idx` as the window has it by then; the
    /// session stays (no new `attach`) if it is alive. The vCPU must not run meanwhile.
    ///
    /// [`resume`]: Self::resume
    pub fn stop_queue(&mut self) {
        if self.active.is_some() {
            self.link.stop(&self.state);
        }
    }

    /// The WAIT register.
    fn wait(&mut self) -> u32 {
        let Some(active) = &self.active else {
            debug!("nexus-io: WAIT while the device is not live");
            return BACKEND_UNAVAILABLE;
        };
        if self.state.needs_reset() {
            return NEEDS_RESET;
        }
        if !self.state.connected() {
            return BACKEND_UNAVAILABLE;
        }
        let Some(connections) = self.link.connections() else {
            return BACKEND_UNAVAILABLE;
        };
        let mode = park::wait_mode();
        if mode != WaitMode::Block {
            return self.wait_without_blocking(mode);
        }
        match wait_for_used(
            &active.queue,
            &self.window_memory,
            self.state.call(),
            connections,
            self.wait_timeout,
        ) {
            Ok(WaitOutcome::Used(_)) if self.state.needs_reset() => NEEDS_RESET,
            Ok(WaitOutcome::Used(idx)) => u32::from(idx),
            Ok(WaitOutcome::Lost) => {
                self.state.set_connected(false);
                BACKEND_UNAVAILABLE
            }
            Err(e) => {
                warn!("nexus-io: WAIT cannot read the rings: {}", error_chain(&e));
                BACKEND_UNAVAILABLE
            }
        }
    }

    /// The WAIT register on a vCPU that must not block ([`nexus_kvm::park`]): answers if the
    /// used ring has moved, the backend is gone or the timeout has passed (measured from the
    /// first read, across the parks); otherwise parks the vCPU on the call eventfd and the
    /// backend connections' hang-ups — `WaitMode::Park` — or answers with the used index as
    /// it is — `WaitMode::Now`, a vCPU being stopped.
    fn wait_without_blocking(&mut self, mode: WaitMode) -> u32 {
        let Some(active) = &self.active else {
            return BACKEND_UNAVAILABLE;
        };
        let Some(connections) = self.link.connections() else {
            return BACKEND_UNAVAILABLE;
        };
        let used = match check_used(&active.queue, &self.window_memory, self.state.call()) {
            Ok(Check::Moved(used)) => {
                self.wait_deadline = None;
                return if self.state.needs_reset() {
                    NEEDS_RESET
                } else {
                    u32::from(used)
                };
            }
            Ok(Check::NotYet(used)) => used,
            Err(e) => {
                self.wait_deadline = None;
                warn!("nexus-io: WAIT cannot read the rings: {}", error_chain(&e));
                return BACKEND_UNAVAILABLE;
            }
        };
        if connections.iter().any(|c| crate::link::hung_up(*c)) {
            self.wait_deadline = None;
            self.state.set_connected(false);
            return BACKEND_UNAVAILABLE;
        }
        let now = Instant::now();
        let deadline = *self.wait_deadline.get_or_insert(now + self.wait_timeout);
        if mode == WaitMode::Now || now >= deadline {
            self.wait_deadline = None;
            return u32::from(used);
        }
        let [control, vhost] = connections;
        park::park(ParkRequest {
            fds: vec![
                (self.state.call().as_raw_fd(), Readiness::Readable),
                (control.as_raw_fd(), Readiness::HangUp),
                (vhost.as_raw_fd(), Readiness::HangUp),
            ],
            deadline: Some(deadline),
        });
        // Not seen by the guest: the vCPU parks and repeats this read.
        u32::from(used)
    }

    fn config_bytes(&self) -> [u8; config::SIZE as usize] {
        let mut b = [0u8; config::SIZE as usize];
        let mut put = |offset: u64, bytes: &[u8]| {
            b[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes)
        };
        let mut put = |offset: u32, bytes: &[u8]| put(u64::from(offset), bytes);
        put(config::WINDOW_BASE, &self.window.base().0.to_le_bytes());
        put(config::WINDOW_SIZE, &self.window.size().to_le_bytes());
        put(config::MAX_PAYLOAD, &self.max_payload().to_le_bytes());
        put(config::NUM_QUEUES, &NUM_QUEUES.to_le_bytes());
        put(
            config::QUEUE_SIZE_MAX,
            &u32::from(QUEUE_SIZE_MAX).to_le_bytes(),
        );
        put(
            config::BACKEND_STATE,
            &u32::from(self.state.connected()).to_le_bytes(),
        );
        b
    }
}

impl VirtioDevice for NexusIo {
    type Error = Error;

    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn vendor_id(&self) -> u32 {
        VENDOR_ID
    }

    fn device_features(&self) -> u64 {
        DEVICE_FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE_MAX]
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if offset == u64::from(config::WAIT) && data.len() == 4 {
            let value = self.wait();
            data.copy_from_slice(&value.to_le_bytes());
            return;
        }
        let bytes = self.config_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "nexus-io: {}-byte write to read-only config offset {offset:#x} ignored",
            data.len()
        );
    }

    fn validate_queue(&mut self, _index: usize, queue: &QueueConfig) -> Result<()> {
        self.check_rings(queue)
    }

    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<()> {
        let queue = queues
            .first()
            .filter(|q| q.ready)
            .copied()
            .ok_or(Error::QueueNotReady)?;
        self.set_active(features, Some(queue))?;
        let ring = RingSetup {
            features,
            queue: &queue,
            base: 0,
            window: &self.window,
            kick: &self.kick,
            call: self.state.call(),
        };
        if let Err(e) = self.link.start(&self.identity, &ring, &self.state) {
            warn!("nexus-io: the backend is unavailable: {}", error_chain(&e));
        }
        Ok(())
    }

    fn needs_reset(&self) -> bool {
        self.state.needs_reset()
    }

    fn reset(&mut self) {
        self.state.clear_needs_reset();
        if self.active.take().is_some() {
            self.link.stop(&self.state);
        } else if !self.state.connected() {
            self.link.drop_session();
        }
        self.acked_features = 0;
        self.state.ack_config_change();
    }

    fn queue_notify(&mut self, _value: u32) {
        // Only reached when no ioeventfd caught the write: forward it as KVM would.
        if let Err(e) = self.kick.write(1) {
            warn!("nexus-io: cannot kick the backend: {e}");
        }
    }

    fn interrupt_status(&self) -> u32 {
        if !self.state.irqfd() {
            return 0;
        }
        // The backend signals the irqfd directly, so the VMM never sees a used-buffer
        // notification: while live, report one on every interrupt.
        let vring = if self.active.is_some() {
            interrupt::VRING
        } else {
            0
        };
        let config = if self.state.config_changed() {
            interrupt::CONFIG
        } else {
            0
        };
        vring | config
    }

    fn ack_interrupt(&mut self, mask: u32) {
        if mask & interrupt::CONFIG != 0 {
            self.state.ack_config_change();
        }
    }

    fn config_generation(&self) -> u32 {
        self.state.generation()
    }
}
