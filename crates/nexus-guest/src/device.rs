//! The nexus-io device, driver side: negotiation, the request queue, completions, WAIT and
//! the backend-unavailable path (`docs/nexus-io.md`).
//!
//! The device's contract (ID, feature bits, config layout, WAIT values) is
//! `nexus_ring::device`, the register map `nexus_ring::mmio`.
//!
//! [`NexusIo`] brings the device up (when the [`Nexus`](crate::Nexus) client is created):
//! checks the register block (magic, version 2, the nexus-io device ID), resets it, sets `ACKNOWLEDGE` and `DRIVER`, accepts
//! `VIRTIO_F_VERSION_1` and `NEXUS_F_WAIT` (both required) and `NEXUS_F_WRITE_BEHIND` (if
//! offered), checks `FEATURES_OK`, reads the config space (the window it reports must be the
//! one mapped), places queue 0's rings at the start of the window, sets `QueueReady` and
//! `DRIVER_OK`.
//!
//! A request is a descriptor chain: [`submit`](NexusIo::submit) makes it available and rings
//! the doorbell (`QueueNotify`, an ioeventfd: no exit to the VMM);
//! [`wait`](NexusIo::wait) polls the used ring for a short, bounded while, then reads the
//! WAIT register, which sleeps on the host until the used ring moves past `used_event`.
//! When WAIT reads `BACKEND_UNAVAILABLE` the device has no backend: every request in flight fails
//! with [`Error::BackendUnavailable`], the device is reset (`Status` = 0), and it is set up
//! again before the next request — whose `DRIVER_OK` makes the device reconnect.

use alloc::rc::Rc;

use nexus_ring::ChainDescriptor;

use crate::error::{Error, Result};
use nexus_ring::device::{self as contract, config, wait};
use nexus_ring::mmio::{self, regs, status};

use crate::mmio::{Registers, config_register, features};
use crate::virtqueue::{MAX_QUEUE_SIZE, QueueError, RING_AREA, SplitQueue};
use crate::window::SharedWindow;

/// Least window size accepted: the rings plus 64 KiB of buffers.
pub const MIN_WINDOW_SIZE: u64 = RING_AREA as u64 + 0x1_0000;

/// Default number of used-ring polls before a WAIT read.
pub const DEFAULT_POLL_SPINS: u32 = 512;

/// Default number of used-ring polls before a WAIT read for a request the backend answers
/// at once, without waiting for storage or the network (a write-behind PUT, answered once its
/// payload is copied): polling a little longer for such an answer saves a WAIT exit whenever
/// it comes within the poll. On the development machine a poll is about 23 ns, so this is
/// about 50 µs — one and a half VM exits' worth.
pub const DEFAULT_QUICK_POLL_SPINS: u32 = 2048;

/// The device's config space (`docs/nexus-io.md`), as read at setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Guest-physical base of the I/O window.
    pub window_base: u64,
    /// Its size.
    pub window_size: u64,
    /// Largest payload one request may carry.
    pub max_payload: u32,
    /// Number of queues (1).
    pub num_queues: u32,
    /// Largest queue (256).
    pub queue_size_max: u32,
    /// 1 while connected to the backend.
    pub backend_state: u32,
}

/// Counters of the driver's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Chains submitted.
    pub submitted: u64,
    /// Doorbell writes (`QueueNotify`).
    pub notifies: u64,
    /// WAIT register reads.
    pub wait_reads: u64,
    /// Requests that completed during the poll, without a WAIT read.
    pub polled: u64,
    /// Polls of the used ring while waiting (each a `pause` and a look at the used index).
    pub spins: u64,
    /// Device setups (the first one included).
    pub setups: u64,
    /// Resets after the backend was lost (or the device broke the queue).
    pub resets: u64,
    /// Resets the device asked for (`WAIT` returned `NEEDS_RESET`).
    pub needs_reset: u64,
    /// Used entries that named no request in flight (ignored).
    pub spurious: u64,
}

/// A submitted request, to [`wait`](NexusIo::wait) for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a submitted request must be waited for"]
pub struct Ticket {
    head: u16,
    seq: u64,
    epoch: u64,
}

/// The nexus-io device and its request queue.
#[derive(Debug)]
pub struct NexusIo<R> {
    regs: R,
    window: Rc<SharedWindow>,
    config: DeviceConfig,
    features: u64,
    /// `None` when the device must be set up again before the next request.
    queue: Option<SplitQueue>,
    /// Bumped on every reset: tickets of an older epoch failed with the backend.
    epoch: u64,
    seq: u64,
    poll_spins: u32,
    quick_poll_spins: u32,
    stats: DriverStats,
}

impl<R: Registers> NexusIo<R> {
    /// Finds and sets up the device behind `regs`, with its queue in `window`.
    pub(crate) fn new(mut regs: R, window: Rc<SharedWindow>) -> Result<Self> {
        let magic = regs.read(regs::MAGIC_VALUE);
        let version = regs.read(regs::VERSION);
        let device_id = regs.read(regs::DEVICE_ID);
        if magic != mmio::MAGIC || version != mmio::VERSION || device_id != contract::DEVICE_ID {
            return Err(Error::NotNexusDevice {
                magic,
                version,
                device_id,
            });
        }
        let size = window.mapping.size() as u64;
        if size < MIN_WINDOW_SIZE {
            return Err(Error::WindowTooSmall {
                size,
                needed: MIN_WINDOW_SIZE,
            });
        }
        let mut device = Self {
            regs,
            window,
            config: DeviceConfig {
                window_base: 0,
                window_size: 0,
                max_payload: 0,
                num_queues: 0,
                queue_size_max: 0,
                backend_state: 0,
            },
            features: 0,
            queue: None,
            epoch: 0,
            seq: 0,
            poll_spins: DEFAULT_POLL_SPINS,
            quick_poll_spins: DEFAULT_QUICK_POLL_SPINS,
            stats: DriverStats::default(),
        };
        device.setup()?;
        Ok(device)
    }

    /// The config space as read at the last setup.
    pub fn config(&self) -> DeviceConfig {
        self.config
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether the backend accepts write-behind PUTs (`NEXUS_F_WRITE_BEHIND` negotiated).
    pub fn write_behind(&self) -> bool {
        self.features & features::NEXUS_F_WRITE_BEHIND != 0
    }

    /// The driver's counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// How many times [`wait`](Self::wait) polls the used ring before reading WAIT
    /// ([`DEFAULT_POLL_SPINS`] unless set).
    pub fn poll_spins(&self) -> u32 {
        self.poll_spins
    }

    /// Sets how many times [`wait`](Self::wait) polls the used ring before reading WAIT.
    pub fn set_poll_spins(&mut self, spins: u32) {
        self.poll_spins = spins;
    }

    /// How many times the used ring is polled before reading WAIT for a request the backend
    /// answers at once ([`DEFAULT_QUICK_POLL_SPINS`] unless set).
    pub fn quick_poll_spins(&self) -> u32 {
        self.quick_poll_spins
    }

    /// Sets [`quick_poll_spins`](Self::quick_poll_spins).
    pub fn set_quick_poll_spins(&mut self, spins: u32) {
        self.quick_poll_spins = spins;
    }

    /// Whether the queue is live (false after the backend was lost, until the next request
    /// sets the device up again).
    pub fn is_ready(&self) -> bool {
        self.queue.is_some()
    }

    /// Reads the config space's `backend_state` now (one VM exit): whether the device is
    /// connected to the backend.
    pub fn backend_connected(&mut self) -> bool {
        self.regs.read(config_register(config::BACKEND_STATE)) == 1
    }

    /// Descriptors free in the request queue (0 if it is not set up).
    pub fn free_descriptors(&self) -> usize {
        self.queue.as_ref().map_or(0, SplitQueue::num_free)
    }

    /// Resets the device, negotiates and sets up the request queue.
    fn setup(&mut self) -> Result<()> {
        self.stats.setups += 1;
        self.queue = None;
        self.regs.write(regs::STATUS, 0);
        let mut device_status = status::ACKNOWLEDGE;
        self.regs.write(regs::STATUS, device_status);
        device_status |= status::DRIVER;
        self.regs.write(regs::STATUS, device_status);

        self.regs.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.regs.read(regs::DEVICE_FEATURES));
        self.regs.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.regs.read(regs::DEVICE_FEATURES));
        let offered = high << 32 | low;
        let required = features::VIRTIO_F_VERSION_1 | features::NEXUS_F_WAIT;
        if offered & required != required {
            self.regs
                .write(regs::STATUS, device_status | status::FAILED);
            return Err(Error::FeatureNegotiation { offered });
        }
        let accepted = required | (offered & features::NEXUS_F_WRITE_BEHIND);
        self.regs.write(regs::DRIVER_FEATURES_SEL, 0);
        self.regs.write(regs::DRIVER_FEATURES, accepted as u32);
        self.regs.write(regs::DRIVER_FEATURES_SEL, 1);
        self.regs
            .write(regs::DRIVER_FEATURES, (accepted >> 32) as u32);
        device_status |= status::FEATURES_OK;
        self.regs.write(regs::STATUS, device_status);
        if self.regs.read(regs::STATUS) & status::FEATURES_OK == 0 {
            self.regs
                .write(regs::STATUS, device_status | status::FAILED);
            return Err(Error::FeatureNegotiation { offered });
        }
        self.features = accepted;

        self.config = self.read_config();
        let mapping = &self.window.mapping;
        if self.config.window_base != mapping.base()
            || self.config.window_size != mapping.size() as u64
        {
            self.regs
                .write(regs::STATUS, device_status | status::FAILED);
            return Err(Error::WindowMismatch {
                device_base: self.config.window_base,
                device_size: self.config.window_size,
                mapped_base: mapping.base(),
                mapped_size: mapping.size() as u64,
            });
        }

        self.regs.write(regs::QUEUE_SEL, 0);
        let ready = self.regs.read(regs::QUEUE_READY);
        let max = self.regs.read(regs::QUEUE_NUM_MAX);
        let limit = max
            .min(self.config.queue_size_max)
            .min(MAX_QUEUE_SIZE.into());
        if ready != 0 || limit == 0 {
            self.regs
                .write(regs::STATUS, device_status | status::FAILED);
            return Err(Error::QueueUnavailable { max, ready });
        }
        // Split queues have power-of-two sizes; `limit <= 256` fits a u16.
        let size = 1u16 << (31 - limit.leading_zeros());
        let queue = SplitQueue::new(mapping, size);
        let layout = queue.layout();
        self.regs.write(regs::QUEUE_NUM, size.into());
        for (register, offset) in [
            (regs::QUEUE_DESC_LOW, layout.desc),
            (regs::QUEUE_DRIVER_LOW, layout.avail),
            (regs::QUEUE_DEVICE_LOW, layout.used),
        ] {
            let gpa = mapping.gpa(offset);
            self.regs.write(register, gpa as u32);
            self.regs.write(register + 4, (gpa >> 32) as u32);
        }
        self.regs.write(regs::QUEUE_READY, 1);
        device_status |= status::DRIVER_OK;
        self.regs.write(regs::STATUS, device_status);
        let now = self.regs.read(regs::STATUS);
        if now & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
            return Err(Error::DeviceNeedsReset { status: now });
        }
        self.queue = Some(queue);
        Ok(())
    }

    /// Reads the config space, consistently (`ConfigGeneration` unchanged across the reads).
    fn read_config(&mut self) -> DeviceConfig {
        loop {
            let generation = self.regs.read(regs::CONFIG_GENERATION);
            let read64 = |regs: &mut R, offset: u32| {
                u64::from(regs.read(offset)) | u64::from(regs.read(offset + 4)) << 32
            };
            let config = DeviceConfig {
                window_base: read64(&mut self.regs, config_register(config::WINDOW_BASE)),
                window_size: read64(&mut self.regs, config_register(config::WINDOW_SIZE)),
                max_payload: self.regs.read(config_register(config::MAX_PAYLOAD)),
                num_queues: self.regs.read(config_register(config::NUM_QUEUES)),
                queue_size_max: self.regs.read(config_register(config::QUEUE_SIZE_MAX)),
                backend_state: self.regs.read(config_register(config::BACKEND_STATE)),
            };
            if self.regs.read(regs::CONFIG_GENERATION) == generation {
                return config;
            }
        }
    }

    /// The backend is gone (WAIT read `BACKEND_UNAVAILABLE`) or the device broke the queue: fail
    /// everything in flight (their tickets belong to the old epoch), reset the device, and
    /// leave the setup to the next request.
    fn reset(&mut self) {
        self.regs.write(regs::STATUS, 0);
        self.queue = None;
        self.epoch += 1;
        self.stats.resets += 1;
    }

    /// Makes `chain` available to the device and rings the doorbell. Sets the device up first
    /// if it was reset.
    ///
    /// # Safety
    ///
    /// Every device-writable descriptor of `chain` that lies inside the window must point to
    /// memory that no reference is alive to until the request has completed (or failed); a
    /// device that follows the protocol writes nothing else.
    pub unsafe fn submit(&mut self, chain: &[ChainDescriptor]) -> Result<Ticket> {
        // SAFETY: the caller's guarantee.
        let [ticket] = unsafe { self.submit_all([chain]) }?;
        Ok(ticket)
    }

    /// Makes every chain of `chains` available, in order, and rings the doorbell **once**:
    /// one doorbell exit for them all (the device serves every chain the ring holds). Either
    /// all are submitted or none (`RingFull` if they do not fit together).
    ///
    /// # Safety
    ///
    /// As for [`submit`](Self::submit), for every chain.
    pub unsafe fn submit_all<const N: usize>(
        &mut self,
        chains: [&[ChainDescriptor]; N],
    ) -> Result<[Ticket; N]> {
        if self.queue.is_none() {
            self.setup()?;
        }
        let Some(queue) = self.queue.as_mut() else {
            return Err(Error::backend_lost());
        };
        let needed = chains.iter().map(|chain| chain.len()).sum::<usize>();
        if chains.iter().any(|chain| chain.is_empty()) {
            return Err(Error::RingFull { needed: 0, free: 0 });
        }
        if needed > queue.num_free() {
            return Err(Error::RingFull {
                needed,
                free: queue.num_free(),
            });
        }
        let mut tickets = [Ticket {
            head: 0,
            seq: 0,
            epoch: self.epoch,
        }; N];
        for (chain, ticket) in chains.iter().zip(tickets.iter_mut()) {
            self.seq += 1;
            ticket.head = queue
                .add(&self.window.mapping, chain, self.seq)
                .map_err(|error| match error {
                    QueueError::Full { needed, free } => Error::RingFull { needed, free },
                    QueueError::Empty => Error::RingFull { needed: 0, free: 0 },
                    QueueError::UsedIndexJump => Error::QueueCorrupt("used index jumped"),
                })?;
            ticket.seq = self.seq;
            self.stats.submitted += 1;
        }
        self.regs.write(regs::QUEUE_NOTIFY, 0);
        self.stats.notifies += 1;
        Ok(tickets)
    }

    /// Waits for a submitted request; returns its used length.
    ///
    /// Polls the used ring up to the poll limit, then reads WAIT until the request is done.
    /// [`Error::BackendUnavailable`] if the device lost its backend (then every request in
    /// flight fails, and the device is reset).
    pub fn wait(&mut self, ticket: Ticket) -> Result<u32> {
        self.wait_polling(ticket, self.poll_spins)
    }

    /// [`wait`](Self::wait), polling the used ring up to `poll_spins` times before the first
    /// WAIT read.
    pub fn wait_polling(&mut self, ticket: Ticket, poll_spins: u32) -> Result<u32> {
        let [done] = self.wait_all([ticket], poll_spins);
        done
    }

    /// Waits for every request of `tickets`; returns their used lengths (or why each failed),
    /// in the same order.
    ///
    /// Polls the used ring up to `poll_spins` times, then reads WAIT with `used_event` set so
    /// that the read returns only once as many requests have completed as are still awaited
    /// here: requests that complete one after the other (a COMPLETE answered at once, the
    /// NEXT beside it when the next invocation arrives) cost one WAIT exit, not one each.
    /// [`Error::BackendUnavailable`] for all if the device lost its backend (the device is
    /// reset).
    pub fn wait_all<const N: usize>(
        &mut self,
        tickets: [Ticket; N],
        poll_spins: u32,
    ) -> [Result<u32>; N] {
        let mut done: [Option<Result<u32>>; N] = [const { None }; N];
        let mut spins = 0u32;
        let mut waited = false;
        let failed = |done: [Option<Result<u32>>; N], error: Error| {
            done.map(|d| d.unwrap_or_else(|| Err(error.clone())))
        };
        loop {
            if tickets.iter().any(|t| t.epoch != self.epoch) {
                return failed(done, Error::backend_lost());
            }
            let Some(queue) = self.queue.as_mut() else {
                return failed(done, Error::backend_lost());
            };
            match queue.reap(&self.window.mapping) {
                Ok(reaped) => self.stats.spurious += u64::from(reaped.spurious),
                Err(_) => {
                    self.reset();
                    return failed(done, Error::QueueCorrupt("used index jumped"));
                }
            }
            let mut awaited = 0u16;
            for (slot, ticket) in done.iter_mut().zip(&tickets) {
                if slot.is_some() {
                    continue;
                }
                if let Some(used_len) = queue.take(ticket.head, ticket.seq) {
                    if !waited {
                        self.stats.polled += 1;
                    }
                    *slot = Some(Ok(used_len));
                } else if !queue.is_pending(ticket.head, ticket.seq) {
                    // Claimed already, or never ours: nothing will come.
                    *slot = Some(Err(Error::QueueCorrupt("unknown ticket")));
                } else {
                    awaited += 1;
                }
            }
            if awaited == 0 {
                // Every slot is filled: the error is never used.
                return failed(done, Error::QueueCorrupt("unknown ticket"));
            }
            if spins < poll_spins {
                spins += 1;
                self.stats.spins += 1;
                core::hint::spin_loop();
                continue;
            }
            // Sleep until `awaited` more completions have come (fewer may be ours: then the
            // loop reads WAIT again).
            queue.set_used_event(
                &self.window.mapping,
                queue.last_used().wrapping_add(awaited - 1),
            );
            waited = true;
            self.stats.wait_reads += 1;
            match self.regs.read(config_register(config::WAIT)) {
                wait::BACKEND_UNAVAILABLE => {
                    self.reset();
                    return failed(done, Error::backend_lost());
                }
                wait::NEEDS_RESET => {
                    self.reset();
                    self.stats.needs_reset += 1;
                    return failed(done, Error::QueueBroken);
                }
                _ => {}
            }
        }
    }

    /// Submits `chain` and waits for it; returns its used length.
    ///
    /// # Safety
    ///
    /// As for [`submit`](Self::submit).
    pub unsafe fn request(&mut self, chain: &[ChainDescriptor]) -> Result<u32> {
        // SAFETY: the caller's guarantee.
        let ticket = unsafe { self.submit(chain) }?;
        self.wait(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, Corrupt, FakeDevice, WINDOW_BASE};
    use crate::virtqueue::RingLayout;
    use crate::window::WindowMapping;
    use nexus_ring::{Command, RequestLayout, SegmentRef};

    fn device_with(
        size: usize,
        setup: impl FnOnce(&mut fake::FakeState),
    ) -> (Result<NexusIo<FakeDevice>>, FakeDevice, Rc<SharedWindow>) {
        let (fake, mapping): (FakeDevice, WindowMapping) = FakeDevice::new(size);
        setup(&mut fake.state());
        let window = SharedWindow::new(mapping, RING_AREA);
        (NexusIo::new(fake.clone(), Rc::clone(&window)), fake, window)
    }

    /// A well-formed DELETE of `key` laid out in `window`; the buffers are returned so they
    /// live as long as the request.
    fn delete_chain(
        window: &Rc<SharedWindow>,
        id: u64,
    ) -> (Vec<ChainDescriptor>, crate::WindowBuf) {
        let mut control = window.alloc(256).unwrap();
        control.set_len(256);
        control[64..67].copy_from_slice(b"k/1");
        let layout = RequestLayout {
            header: control.gpa(),
            key: Some(SegmentRef::new(control.gpa() + 64, 3)),
            meta: None,
            payload: &[],
            response_head: SegmentRef::new(control.gpa() + 128, 40),
            response_payload: &[],
        };
        let header = layout.header(id, Command::Delete).unwrap();
        header.encode(&mut control[..48]).unwrap();
        (layout.descriptors().collect(), control)
    }

    #[test]
    fn negotiates_and_places_the_queue_in_the_window() {
        let (device, fake, _window) = device_with(1 << 20, |_| {});
        let device = device.unwrap();
        let s = fake.state();
        use crate::mmio::status::*;
        assert_eq!(
            s.status_writes,
            [
                0,
                ACKNOWLEDGE,
                ACKNOWLEDGE | DRIVER,
                ACKNOWLEDGE | DRIVER | FEATURES_OK,
                ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
            ]
        );
        assert_eq!(
            s.driver_features,
            features::VIRTIO_F_VERSION_1 | features::NEXUS_F_WAIT | features::NEXUS_F_WRITE_BEHIND
        );
        assert!(device.write_behind());
        let layout = RingLayout::new(256);
        assert_eq!(s.queue_num, 256);
        assert_eq!(s.queue_ready, 1);
        assert_eq!(s.desc, WINDOW_BASE + layout.desc as u64);
        assert_eq!(s.avail, WINDOW_BASE + layout.avail as u64);
        assert_eq!(s.used, WINDOW_BASE + layout.used as u64);
        assert!(s.connected);
        assert_eq!(device.config().max_payload, 1 << 20);
        assert_eq!(device.config().window_size, 1 << 20);
        assert!(s.unexpected.is_empty(), "{:?}", s.unexpected);
    }

    #[test]
    fn write_behind_is_optional_version_1_and_wait_are_not() {
        let (device, fake, _w) = device_with(1 << 20, |s| {
            s.offered = features::VIRTIO_F_VERSION_1 | features::NEXUS_F_WAIT;
        });
        assert!(!device.unwrap().write_behind());
        assert_eq!(
            fake.state().driver_features,
            features::VIRTIO_F_VERSION_1 | features::NEXUS_F_WAIT
        );

        for offered in [features::NEXUS_F_WAIT, features::VIRTIO_F_VERSION_1] {
            let (device, fake, _w) = device_with(1 << 20, |s| s.offered = offered);
            assert_eq!(device.unwrap_err(), Error::FeatureNegotiation { offered });
            assert_ne!(fake.state().status & status::FAILED, 0);
            assert_eq!(fake.state().queue_ready, 0);
        }
    }

    #[test]
    fn refused_features_ok_fails_the_device() {
        let (device, fake, _w) = device_with(1 << 20, |s| s.refuse_features_ok = true);
        assert!(matches!(
            device.unwrap_err(),
            Error::FeatureNegotiation { .. }
        ));
        assert_ne!(fake.state().status & status::FAILED, 0);
    }

    #[test]
    fn refuses_other_devices_small_and_mismatched_windows() {
        let (device, _, _) = device_with(1 << 20, |s| s.device_id = 1);
        assert!(matches!(
            device.unwrap_err(),
            Error::NotNexusDevice { device_id: 1, .. }
        ));
        let (device, _, _) = device_with(1 << 20, |s| s.magic = 0);
        assert!(matches!(
            device.unwrap_err(),
            Error::NotNexusDevice { magic: 0, .. }
        ));
        let (device, _, _) = device_with(0x4000, |_| {});
        assert!(matches!(device.unwrap_err(), Error::WindowTooSmall { .. }));
        let (device, _, _) = device_with(1 << 20, |s| s.config_window.0 += 0x1000);
        assert!(matches!(device.unwrap_err(), Error::WindowMismatch { .. }));
        let (device, _, _) = device_with(1 << 20, |s| s.queue_num_max = 0);
        assert!(matches!(
            device.unwrap_err(),
            Error::QueueUnavailable { max: 0, .. }
        ));
    }

    #[test]
    fn queue_size_is_a_power_of_two_within_the_device_limit() {
        let (device, fake, _w) = device_with(1 << 20, |s| s.queue_num_max = 100);
        assert!(device.is_ok());
        assert_eq!(fake.state().queue_num, 64);
    }

    #[test]
    fn polled_completion_needs_no_wait_read() {
        let (device, fake, window) = device_with(1 << 20, |_| {});
        let mut device = device.unwrap();
        let (chain, _control) = delete_chain(&window, 1);
        // SAFETY: the writable descriptor is `_control`'s, alive and unreferenced.
        let used = unsafe { device.request(&chain) }.unwrap();
        assert_eq!(used, 40);
        let s = fake.state();
        assert_eq!(s.notifies, 1);
        assert_eq!(s.wait_reads, 0);
        assert_eq!(device.stats().polled, 1);
        assert!(s.seen[0].decoded.is_ok());
    }

    #[test]
    fn wait_register_with_timeouts_and_used_event() {
        let (device, fake, window) = device_with(1 << 20, |s| {
            s.process_on_notify = false;
            s.wait_timeouts = 2;
        });
        let mut device = device.unwrap();
        device.set_poll_spins(3);
        for round in 0..3u16 {
            let (chain, _control) = delete_chain(&window, u64::from(round));
            // SAFETY: as above.
            assert_eq!(unsafe { device.request(&chain) }.unwrap(), 40);
        }
        let s = fake.state();
        // Two WAIT reads time out (index unchanged), the third completes; then one read per
        // request. At every read, used_event was the used index consumed so far.
        assert_eq!(s.wait_reads, 5);
        assert_eq!(s.used_event_at_wait, [0, 0, 0, 1, 2]);
        // And after the last completion it moved on.
        drop(s);
        let layout = RingLayout::new(256);
        assert_eq!(
            window
                .mapping
                .load_u16(layout.used_event(), core::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(device.stats().wait_reads, 5);
        assert_eq!(device.stats().polled, 0);
    }

    #[test]
    fn backend_unavailable_fails_everything_in_flight_then_recovers() {
        let (device, fake, window) = device_with(1 << 20, |s| s.process_on_notify = false);
        let mut device = device.unwrap();
        device.set_poll_spins(0);
        let (chain_a, _ca) = delete_chain(&window, 1);
        let (chain_b, _cb) = delete_chain(&window, 2);
        fake.state().connected = false;
        fake.state().backend_present = false;
        // SAFETY: as above, for both chains.
        let (a, b) = unsafe {
            (
                device.submit(&chain_a).unwrap(),
                device.submit(&chain_b).unwrap(),
            )
        };
        assert_eq!(device.free_descriptors(), 256 - 6);
        assert!(matches!(device.wait(a), Err(Error::BackendUnavailable(_))));
        // The device was reset at once, and the other request failed too.
        assert!(!device.is_ready());
        assert_eq!(fake.state().status, 0);
        // (The first reset is the one every setup starts with.)
        assert_eq!(fake.state().resets, 2);
        assert!(matches!(device.wait(b), Err(Error::BackendUnavailable(_))));
        assert_eq!(device.stats().resets, 1);

        // Still no backend: the next request sets the device up again and fails again.
        // SAFETY: as above.
        let result = unsafe { device.request(&chain_a) };
        assert!(matches!(result, Err(Error::BackendUnavailable(_))));
        assert_eq!(device.stats().setups, 2);
        assert_eq!(device.stats().resets, 2);

        // The backend is back: set up again, and it works.
        fake.state().backend_present = true;
        // SAFETY: as above.
        assert_eq!(unsafe { device.request(&chain_a) }.unwrap(), 40);
        assert_eq!(device.stats().setups, 3);
        assert_eq!(device.free_descriptors(), 256);
        assert!(fake.state().seen.iter().all(|s| s.decoded.is_ok()));
    }

    #[test]
    fn a_broken_queue_fails_what_is_in_flight_and_the_reset_mends_it() {
        let (device, fake, window) = device_with(1 << 20, |s| s.process_on_notify = false);
        let mut device = device.unwrap();
        device.set_poll_spins(0);
        let (chain_a, _ca) = delete_chain(&window, 1);
        let (chain_b, _cb) = delete_chain(&window, 2);
        // SAFETY: as above, for both chains.
        let (a, b) = unsafe {
            (
                device.submit(&chain_a).unwrap(),
                device.submit(&chain_b).unwrap(),
            )
        };
        fake.state().broken = true;
        assert!(matches!(device.wait(a), Err(Error::QueueBroken)));
        assert!(!device.is_ready(), "the driver reset the device");
        assert_eq!(fake.state().status, 0);
        assert!(matches!(device.wait(b), Err(Error::BackendUnavailable(_))));
        assert_eq!(device.stats().needs_reset, 1);
        // The reset mended it: the next request sets the device up and is served.
        // SAFETY: as above.
        assert_eq!(unsafe { device.request(&chain_a) }.unwrap(), 40);
        assert_eq!(device.stats().setups, 2);
    }

    #[test]
    fn out_of_order_completions_reach_their_tickets() {
        let (device, fake, window) = device_with(1 << 20, |s| {
            s.process_on_notify = false;
            s.reverse = true;
        });
        let mut device = device.unwrap();
        let chains: Vec<_> = (1..=4).map(|id| delete_chain(&window, id)).collect();
        // SAFETY: as above, for every chain.
        let tickets: Vec<Ticket> = chains
            .iter()
            .map(|(chain, _)| unsafe { device.submit(chain) }.unwrap())
            .collect();
        for ticket in tickets {
            assert_eq!(device.wait(ticket).unwrap(), 40);
        }
        assert_eq!(fake.state().wait_reads, 1);
        assert_eq!(device.free_descriptors(), 256);
        // A ticket is claimed once.
        let (chain, _c) = delete_chain(&window, 9);
        // SAFETY: as above.
        let ticket = unsafe { device.submit(&chain) }.unwrap();
        assert_eq!(device.wait(ticket).unwrap(), 40);
        assert!(matches!(device.wait(ticket), Err(Error::QueueCorrupt(_))));
    }

    #[test]
    fn ring_full_is_an_error_not_a_hang() {
        let (device, _fake, window) = device_with(1 << 20, |s| s.queue_num_max = 4);
        let mut device = device.unwrap();
        let (chain, _c) = delete_chain(&window, 1);
        let long = [chain.as_slice(), chain.as_slice()].concat();
        // SAFETY: as above.
        let result = unsafe { device.submit(&long) };
        assert_eq!(result.unwrap_err(), Error::RingFull { needed: 6, free: 4 });
    }

    #[test]
    fn runaway_used_index_resets_the_device() {
        let (device, fake, window) =
            device_with(1 << 20, |s| s.corrupt = Some(Corrupt::UsedIndexJump));
        let mut device = device.unwrap();
        let (chain, _c) = delete_chain(&window, 1);
        // SAFETY: as above.
        let result = unsafe { device.request(&chain) };
        assert!(matches!(result, Err(Error::QueueCorrupt(_))));
        assert_eq!(fake.state().resets, 2);
        assert!(!device.is_ready());
        // SAFETY: as above.
        assert_eq!(unsafe { device.request(&chain) }.unwrap(), 40);
    }
}
