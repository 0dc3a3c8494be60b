//! A virtio-mmio transport (version 2, "modern"), usable by any VMM.
//!
//! [`MmioTransport`] implements the register block of the virtio specification (§4.2.2) as a
//! [`BusDevice`]; the device behind it implements [`VirtioDevice`]. The transport owns the
//! driver-facing state machine:
//!
//! - identification (magic, version, device and vendor IDs);
//! - the 64-bit feature words, read and written 32 bits at a time through selectors;
//! - the status register: `ACKNOWLEDGE` → `DRIVER` → `FEATURES_OK` (refused unless the driver
//!   accepted `VIRTIO_F_VERSION_1` and nothing the device did not offer) → `DRIVER_OK`, which
//!   activates the device; writing 0 resets it. Bits may only be added, in that order; a write
//!   breaking the order is ignored. `FAILED` is taken at any point, but `FEATURES_OK` and
//!   `DRIVER_OK` written along with it are not (they need the feature check and activation);
//!   bits the specification does not define are never taken;
//! - per-queue configuration (size, ready, the three ring addresses), writable only between
//!   `FEATURES_OK` and `DRIVER_OK` and only while the queue is not ready. Setting `QueueReady`
//!   checks the queue ([`QueueConfig::check`], then [`VirtioDevice::validate_queue`]); a queue
//!   that fails stays not ready and the device is marked `DEVICE_NEEDS_RESET`, as is a device
//!   whose activation fails;
//! - `QueueNotify` (for VMMs that do not catch it with an ioeventfd), the interrupt status and
//!   acknowledgement, the configuration generation, and the device-specific configuration space
//!   from offset `regs::CONFIG` (`0x100`).
//!
//! The register map (offsets, magic, version, status and interrupt bits) is defined once, in
//! `nexus_ring::mmio`, for this transport and the guest drivers alike; it is re-exported here.
//! Registers below `regs::CONFIG` are accessed 32 bits at a time; other accesses are ignored (reads
//! return zeros). The state a snapshot needs is a plain struct, [`MmioTransportState`]; any
//! state the driver can bring the transport to restores ([`MmioTransport::from_state`]).
//!
//! The `mmio_transport` fuzz target (`fuzz/` in the workspace) drives this state machine with
//! arbitrary register accesses and checks these rules after every one.
//!
//! # Example
//!
//! ```
//! use nexus_kvm::virtio_mmio::{regs, status, MmioTransport, QueueConfig, VirtioDevice,
//!     MAGIC, VIRTIO_F_VERSION_1};
//! use nexus_kvm::BusDevice;
//!
//! struct Null;
//! impl VirtioDevice for Null {
//!     type Error = std::io::Error;
//!     fn device_type(&self) -> u32 { 42 }
//!     fn device_features(&self) -> u64 { VIRTIO_F_VERSION_1 }
//!     fn queue_max_sizes(&self) -> &[u16] { &[16] }
//!     fn read_config(&mut self, _offset: u64, data: &mut [u8]) { data.fill(0) }
//!     fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
//!     fn activate(&mut self, _features: u64, _queues: &[QueueConfig]) -> std::io::Result<()> {
//!         Ok(())
//!     }
//!     fn reset(&mut self) {}
//! }
//!
//! let mut t = MmioTransport::new(Null);
//! let mut word = [0u8; 4];
//! t.read(regs::MAGIC_VALUE.into(), &mut word);
//! assert_eq!(u32::from_le_bytes(word), MAGIC);
//! t.write(regs::STATUS.into(), &status::ACKNOWLEDGE.to_le_bytes());
//! ```

use log::{debug, warn};

use crate::bus::{BusAction, BusDevice};

/// Largest queue size of a split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The register map: its one definition is `nexus_ring::mmio` (shared with the guest
/// drivers), re-exported here for VMMs.
pub use nexus_ring::mmio::{MAGIC, VERSION, VIRTIO_F_VERSION_1, interrupt, regs, status};

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A queue size of zero, above the maximum, or not a power of two.
    #[error("Queue size {size} is invalid: it must be a power of two between 1 and {max}")]
    QueueSize {
        /// The size the driver set.
        size: u16,
        /// The queue's maximum.
        max: u16,
    },
    /// A ring address that breaks the ring's alignment.
    #[error("The {area} address {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Which ring area.
        area: &'static str,
        /// Its address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// A ring that wraps around the address space.
    #[error("The {area} at {addr:#x} wraps around the address space")]
    Overflow {
        /// Which ring area.
        area: &'static str,
        /// Its address.
        addr: u64,
    },
    /// Saved state with a different number of queues than the device has.
    #[error("The saved state has {found} queues but the device has {expected}")]
    QueueCount {
        /// Queues of the device.
        expected: usize,
        /// Queues in the state.
        found: usize,
    },
    /// Saved state whose queue does not match the device's.
    #[error("Saved queue {index} is invalid for this device (maximum size {max})")]
    SavedQueue {
        /// The queue.
        index: usize,
        /// The device's maximum size for it.
        max: u16,
    },
}

/// The configuration of one virtqueue, as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueConfig {
    /// Largest size the device accepts (`QueueNumMax`).
    pub max_size: u16,
    /// Size the driver chose (`QueueNum`).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the driver area (available ring).
    pub avail_ring: u64,
    /// Guest-physical address of the device area (used ring).
    pub used_ring: u64,
}

impl QueueConfig {
    /// A queue of at most `max_size` entries, not configured yet (size = maximum).
    pub fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }

    /// Bytes of the descriptor table: 16 per entry.
    pub fn desc_table_size(&self) -> u64 {
        16 * u64::from(self.size)
    }

    /// Bytes of the driver area: flags, idx, the ring and `used_event`.
    pub fn avail_ring_size(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Bytes of the device area: flags, idx, the ring of 8-byte elements and `avail_event`.
    pub fn used_ring_size(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Address of the `idx` field of the used ring.
    pub fn used_idx_addr(&self) -> u64 {
        self.used_ring.wrapping_add(2)
    }

    /// Address of the `used_event` field at the end of the driver area.
    pub fn used_event_addr(&self) -> u64 {
        self.avail_ring.wrapping_add(4 + 2 * u64::from(self.size))
    }

    /// The three ring areas as `(name, address, length)`.
    pub fn areas(&self) -> [(&'static str, u64, u64); 3] {
        [
            ("descriptor table", self.desc_table, self.desc_table_size()),
            ("driver area", self.avail_ring, self.avail_ring_size()),
            ("device area", self.used_ring, self.used_ring_size()),
        ]
    }

    /// Checks what the transport can check: the size, alignments, no wrap-around.
    pub fn check(&self) -> Result<(), Error> {
        if self.size == 0 || self.size > self.max_size || !self.size.is_power_of_two() {
            return Err(Error::QueueSize {
                size: self.size,
                max: self.max_size,
            });
        }
        for ((area, addr, len), align) in self.areas().into_iter().zip([16, 2, 4]) {
            if addr % align != 0 {
                return Err(Error::Misaligned { area, addr, align });
            }
            if addr.checked_add(len).is_none() {
                return Err(Error::Overflow { area, addr });
            }
        }
        Ok(())
    }
}

/// A virtio device behind an [`MmioTransport`].
///
/// Calls come from vCPU threads, one at a time (the transport sits behind a mutex on the bus).
pub trait VirtioDevice: Send {
    /// Why activation or a queue check failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The virtio device ID (`DeviceID`).
    fn device_type(&self) -> u32;

    /// The vendor ID (`VendorID`).
    fn vendor_id(&self) -> u32 {
        0
    }

    /// The features the device offers. Must include [`VIRTIO_F_VERSION_1`].
    fn device_features(&self) -> u64;

    /// The maximum size of each queue; the number of queues is the length.
    fn queue_max_sizes(&self) -> &[u16];

    /// A driver read of `data.len()` bytes at `offset` in the configuration space. May block
    /// (a register that waits for the device is allowed).
    fn read_config(&mut self, offset: u64, data: &mut [u8]);

    /// A driver write at `offset` in the configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Called when the driver sets `QueueReady` on queue `index`, after the transport's own
    /// checks. An error leaves the queue not ready and sets `DEVICE_NEEDS_RESET`.
    fn validate_queue(&mut self, index: usize, queue: &QueueConfig) -> Result<(), Self::Error> {
        let _ = (index, queue);
        Ok(())
    }

    /// The driver set `DRIVER_OK`: start with the negotiated `features` and every queue
    /// (ready or not). An error sets `DEVICE_NEEDS_RESET`.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), Self::Error>;

    /// The driver wrote 0 to `Status`: stop and forget the queues. Called on every reset,
    /// whether or not the device was activated.
    fn reset(&mut self);

    /// A `QueueNotify` write that reached the VMM (no ioeventfd caught it), while active.
    fn queue_notify(&mut self, value: u32) {
        let _ = value;
    }

    /// The `InterruptStatus` register.
    fn interrupt_status(&self) -> u32 {
        0
    }

    /// A write of `mask` to `InterruptACK`.
    fn ack_interrupt(&mut self, mask: u32) {
        let _ = mask;
    }

    /// The `ConfigGeneration` register: changes whenever the configuration space does.
    fn config_generation(&self) -> u32 {
        0
    }

    /// Whether the device can no longer serve its queues until the driver resets it (for
    /// example because its backend stopped serving a queue the guest broke). The transport
    /// then shows `DEVICE_NEEDS_RESET` in `Status` and stops forwarding notifications.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// The driver-visible state of an [`MmioTransport`], for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MmioTransportState {
    /// The `Status` register.
    pub status: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// Every queue's configuration.
    pub queues: Vec<QueueConfig>,
}

/// A virtio-mmio register block around a [`VirtioDevice`].
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: D,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport in the reset state around `device`.
    pub fn new(device: D) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueConfig::new(max))
            .collect();
        MmioTransport {
            device,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
        }
    }

    /// A transport in a saved state around `device`. The device is not activated: restoring
    /// its own state is the caller's business. Refused if the queues do not match the
    /// device's (count, maxima) or a ready queue fails [`QueueConfig::check`]; a queue that is
    /// not ready is taken as the driver left it, and checked when it is set ready.
    pub fn from_state(device: D, state: &MmioTransportState) -> Result<Self, Error> {
        let maxima = device.queue_max_sizes();
        if maxima.len() != state.queues.len() {
            return Err(Error::QueueCount {
                expected: maxima.len(),
                found: state.queues.len(),
            });
        }
        // A queue that is not ready holds whatever the driver wrote (a size above the maximum
        // too): it is checked when the driver sets it ready, after the restore as before.
        for (index, (queue, &max)) in state.queues.iter().zip(maxima).enumerate() {
            if queue.max_size != max || (queue.ready && queue.check().is_err()) {
                return Err(Error::SavedQueue { index, max });
            }
        }
        Ok(MmioTransport {
            device,
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            queue_sel: state.queue_sel,
            queues: state.queues.clone(),
        })
    }

    /// The state to save.
    pub fn state(&self) -> MmioTransportState {
        MmioTransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues: self.queues.clone(),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The `Status` register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The queues as the driver configured them.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Whether the device is live: `DRIVER_OK` set, neither `DEVICE_NEEDS_RESET` nor `FAILED`.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn needs_reset(&mut self, why: &dyn std::fmt::Display) {
        warn!("virtio-mmio: device needs a reset: {why}");
        self.status |= status::DEVICE_NEEDS_RESET;
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        let queue = self.selected_queue().copied().unwrap_or_default();
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => self.device.vendor_id(),
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => u32::from(queue.max_size),
            regs::QUEUE_READY => u32::from(queue.ready),
            regs::INTERRUPT_STATUS => self.device.interrupt_status(),
            regs::STATUS => {
                if self.is_active() && self.device.needs_reset() {
                    self.needs_reset(&"the device stopped serving its queues");
                }
                self.status
            }
            regs::QUEUE_DESC_LOW => queue.desc_table as u32,
            regs::QUEUE_DESC_HIGH => (queue.desc_table >> 32) as u32,
            regs::QUEUE_DRIVER_LOW => queue.avail_ring as u32,
            regs::QUEUE_DRIVER_HIGH => (queue.avail_ring >> 32) as u32,
            regs::QUEUE_DEVICE_LOW => queue.used_ring as u32,
            regs::QUEUE_DEVICE_HIGH => (queue.used_ring >> 32) as u32,
            // No shared memory regions: a length (and base) of -1.
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.device.config_generation(),
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_field(offset, value),
            regs::QUEUE_READY => self.write_queue_ready(value),
            regs::QUEUE_NOTIFY => {
                if self.is_active() {
                    self.device.queue_notify(value);
                } else {
                    warn!("virtio-mmio: QueueNotify while the device is not live, ignored");
                }
            }
            regs::INTERRUPT_ACK => self.device.ack_interrupt(value),
            regs::STATUS => self.write_status(value),
            regs::SHM_SEL => {}
            _ => debug!("virtio-mmio: write of {value:#x} to unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has(status::DRIVER) || self.has(status::FEATURES_OK) {
            warn!("virtio-mmio: DriverFeatures written outside feature negotiation, ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => warn!("virtio-mmio: DriverFeatures word {sel} does not exist, ignored"),
        }
    }

    /// The selected queue, if the driver may change it now.
    fn configurable_queue(&mut self, what: &str) -> Option<&mut QueueConfig> {
        let phase_ok = self.has(status::FEATURES_OK)
            && self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0;
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            Some(queue) if phase_ok && !queue.ready => Some(queue),
            Some(_) if phase_ok => {
                warn!("virtio-mmio: {what} of queue {sel} while it is ready, ignored");
                None
            }
            Some(_) => {
                warn!("virtio-mmio: {what} of queue {sel} outside queue set-up, ignored");
                None
            }
            None => {
                warn!("virtio-mmio: {what} of queue {sel}, which does not exist, ignored");
                None
            }
        }
    }

    fn write_queue_field(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.configurable_queue("a write") else {
            return;
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            regs::QUEUE_NUM => queue.size = value.min(u32::from(u16::MAX)) as u16,
            regs::QUEUE_DESC_LOW => queue.desc_table = low(queue.desc_table),
            regs::QUEUE_DESC_HIGH => queue.desc_table = high(queue.desc_table),
            regs::QUEUE_DRIVER_LOW => queue.avail_ring = low(queue.avail_ring),
            regs::QUEUE_DRIVER_HIGH => queue.avail_ring = high(queue.avail_ring),
            regs::QUEUE_DEVICE_LOW => queue.used_ring = low(queue.used_ring),
            regs::QUEUE_DEVICE_HIGH => queue.used_ring = high(queue.used_ring),
            _ => unreachable!("not a queue field: {offset:#x}"),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let index = self.queue_sel as usize;
        if value == 0 {
            // Allowed outside set-up too, as long as the device is not live.
            if self.is_active() {
                warn!("virtio-mmio: un-readying queue {index} of a live device, ignored");
            } else if let Some(queue) = self.queues.get_mut(index) {
                queue.ready = false;
            }
            return;
        }
        let Some(queue) = self.configurable_queue("QueueReady").copied() else {
            return;
        };
        if let Err(e) = queue.check() {
            return self.needs_reset(&format_args!("queue {index}: {e}"));
        }
        if let Err(e) = self.device.validate_queue(index, &queue) {
            return self.needs_reset(&format_args!("queue {index}: {e}"));
        }
        self.queues[index].ready = true;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if old & status::DEVICE_NEEDS_RESET != 0 && value & status::FAILED == 0 {
            warn!("virtio-mmio: status {value:#x} written to a device that needs a reset, ignored");
            return;
        }
        // The driver sets only its own bits: never DEVICE_NEEDS_RESET (it may write it back as
        // it read it), nor bits the specification does not define.
        const DRIVER_BITS: u32 = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        let undefined = value & !(DRIVER_BITS | status::DEVICE_NEEDS_RESET);
        if undefined != 0 {
            warn!("virtio-mmio: undefined status bits {undefined:#x} written, not taken");
        }
        let new = (value & DRIVER_BITS) | (old & !DRIVER_BITS);
        if new & old != old {
            warn!("virtio-mmio: status {value:#x} clears bits of {old:#x}, ignored");
            return;
        }
        let added = new & !old;
        let order = [
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ];
        if let Some((bit, needs)) = order
            .into_iter()
            .find(|&(bit, needs)| added & bit != 0 && new & needs == 0)
        {
            warn!("virtio-mmio: status bit {bit:#x} set before {needs:#x}, ignored");
            return;
        }
        if new & status::FAILED != 0 {
            // The driver gave up. FEATURES_OK and DRIVER_OK need the device's agreement (the
            // feature check, activation), which a failed driver does not get: written along
            // with FAILED they are not taken.
            let unagreed = added & (status::FEATURES_OK | status::DRIVER_OK);
            if unagreed != 0 {
                warn!("virtio-mmio: status bits {unagreed:#x} written with FAILED, not taken");
            }
            self.status = new & !unagreed;
            return;
        }
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let unknown = self.driver_features & !offered;
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 || unknown != 0 {
                warn!(
                    "virtio-mmio: refusing FEATURES_OK for driver features {:#x} \
                     (offered {offered:#x}; VIRTIO_F_VERSION_1 is required)",
                    self.driver_features
                );
                self.status = new & !(status::FEATURES_OK | status::DRIVER_OK);
                return;
            }
        }
        self.status = new;
        if added & status::DRIVER_OK != 0 {
            if let Err(e) = self.device.activate(self.driver_features, &self.queues) {
                self.needs_reset(&format_args!("activation failed: {e}"));
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(regs::CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
        } else if let (4, 0, Ok(offset)) = (data.len(), offset % 4, u32::try_from(offset)) {
            let value = self.read_register(offset);
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            warn!(
                "virtio-mmio: {}-byte read at {offset:#x}: registers are 32-bit, ignored",
                data.len()
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let config = u64::from(regs::CONFIG);
        if offset >= config {
            self.device.write_config(offset - config, data);
        } else if let (Ok(bytes), 0, Ok(offset)) =
            (<[u8; 4]>::try_from(data), offset % 4, u32::try_from(offset))
        {
            self.write_register(offset, u32::from_le_bytes(bytes));
        } else {
            warn!(
                "virtio-mmio: {}-byte write at {offset:#x}: registers are 32-bit, ignored",
                data.len()
            );
        }
        BusAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("mock refusal")]
    struct Refused;

    #[derive(Debug, Default)]
    struct Mock {
        config: [u8; 16],
        activated: Option<(u64, Vec<QueueConfig>)>,
        resets: u32,
        notified: Vec<u32>,
        acked: u32,
        refuse_queue: bool,
        refuse_activate: bool,
        broken: bool,
    }

    impl VirtioDevice for Mock {
        type Error = Refused;
        fn device_type(&self) -> u32 {
            0x4e58
        }
        fn vendor_id(&self) -> u32 {
            0x5355_584e
        }
        fn device_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b11
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 8]
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn validate_queue(&mut self, _: usize, _: &QueueConfig) -> Result<(), Refused> {
            if self.refuse_queue {
                Err(Refused)
            } else {
                Ok(())
            }
        }
        fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), Refused> {
            if self.refuse_activate {
                return Err(Refused);
            }
            self.activated = Some((features, queues.to_vec()));
            Ok(())
        }
        fn queue_notify(&mut self, value: u32) {
            self.notified.push(value);
        }
        fn interrupt_status(&self) -> u32 {
            interrupt::VRING
        }
        fn ack_interrupt(&mut self, mask: u32) {
            self.acked |= mask;
        }
        fn config_generation(&self) -> u32 {
            7
        }
        fn needs_reset(&self) -> bool {
            self.broken
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
            self.broken = false;
        }
    }

    fn r(t: &mut MmioTransport<Mock>, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<Mock>, offset: u32, value: u32) {
        assert_eq!(
            t.write(offset.into(), &value.to_le_bytes()),
            BusAction::Continue
        );
    }

    /// Status up to FEATURES_OK with VERSION_1 and bit 0.
    fn negotiated() -> MmioTransport<Mock> {
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::DRIVER_FEATURES_SEL, 0);
        w(&mut t, regs::DRIVER_FEATURES, 1);
        w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        w(&mut t, regs::DRIVER_FEATURES, 1);
        w(&mut t, regs::STATUS, 0b1011);
        assert_eq!(r(&mut t, regs::STATUS), 0b1011);
        t
    }

    fn set_queue(t: &mut MmioTransport<Mock>, sel: u32, size: u32, base: u64) {
        w(t, regs::QUEUE_SEL, sel);
        w(t, regs::QUEUE_NUM, size);
        w(t, regs::QUEUE_DESC_LOW, base as u32);
        w(t, regs::QUEUE_DESC_HIGH, (base >> 32) as u32);
        let (avail, used) = (base.wrapping_add(0x1000), base.wrapping_add(0x2000));
        w(t, regs::QUEUE_DRIVER_LOW, avail as u32);
        w(t, regs::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        w(t, regs::QUEUE_DEVICE_LOW, used as u32);
        w(t, regs::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    }

    #[test]
    fn identifies_itself() {
        let mut t = MmioTransport::new(Mock::default());
        assert_eq!(r(&mut t, regs::MAGIC_VALUE), MAGIC);
        assert_eq!(r(&mut t, regs::VERSION), 2);
        assert_eq!(r(&mut t, regs::DEVICE_ID), 0x4e58);
        assert_eq!(r(&mut t, regs::VENDOR_ID), 0x5355_584e);
        assert_eq!(r(&mut t, regs::CONFIG_GENERATION), 7);
        assert_eq!(r(&mut t, regs::SHM_LEN_LOW), u32::MAX);
        assert_eq!(r(&mut t, 0x0c8), 0);
        // Feature words through the selector.
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 0b11);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 1);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 0);
        // Queue maxima through the selector; a missing queue has 0.
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 256);
        w(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 8);
        w(&mut t, regs::QUEUE_SEL, 2);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn full_initialisation_activates_with_the_negotiated_setup() {
        let mut t = negotiated();
        set_queue(&mut t, 0, 16, 0xC000_0000);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 1);
        assert_eq!(r(&mut t, regs::QUEUE_DRIVER_LOW), 0xC000_1000);
        assert!(!t.is_active());
        w(&mut t, regs::STATUS, 0b1111);
        assert!(t.is_active());
        assert_eq!(r(&mut t, regs::STATUS), 0b1111);
        let (features, queues) = t.device().activated.clone().unwrap();
        assert_eq!(features, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(
            queues[0],
            QueueConfig {
                max_size: 256,
                size: 16,
                ready: true,
                desc_table: 0xC000_0000,
                avail_ring: 0xC000_1000,
                used_ring: 0xC000_2000,
            }
        );
        assert_eq!(queues[1], QueueConfig::new(8));
        // Notifications, interrupts and config pass through.
        w(&mut t, regs::QUEUE_NOTIFY, 0);
        assert_eq!(t.device().notified, [0]);
        assert_eq!(r(&mut t, regs::INTERRUPT_STATUS), interrupt::VRING);
        w(&mut t, regs::INTERRUPT_ACK, interrupt::VRING);
        assert_eq!(t.device().acked, interrupt::VRING);
        t.write(u64::from(regs::CONFIG) + 2, &[0xaa, 0xbb]);
        let mut b = [0u8; 3];
        t.read(u64::from(regs::CONFIG) + 1, &mut b);
        assert_eq!(b, [0, 0xaa, 0xbb]);
        // Queue set-up is closed once live.
        w(&mut t, regs::QUEUE_NUM, 8);
        w(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(t.queues()[0].size, 16);
        assert!(t.queues()[0].ready);
        // Reset forgets everything.
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
        assert!(t.device().activated.is_none());
        assert_eq!(t.device().resets, 1);
        assert_eq!(t.queues()[0], QueueConfig::new(256));
        assert_eq!(t.state().driver_features, 0);
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits() {
        for (low, high) in [(1, 0), (0b111, 1), (1 << 31, 1)] {
            let mut t = MmioTransport::new(Mock::default());
            w(&mut t, regs::STATUS, 3);
            w(&mut t, regs::DRIVER_FEATURES, low);
            w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
            w(&mut t, regs::DRIVER_FEATURES, high);
            w(&mut t, regs::STATUS, 0b1011);
            assert_eq!(r(&mut t, regs::STATUS), 3, "features {high:#x}:{low:#x}");
            // Without FEATURES_OK, DRIVER_OK is refused too.
            w(&mut t, regs::STATUS, 0b0111);
            assert_eq!(r(&mut t, regs::STATUS), 3);
            assert!(t.device().activated.is_none());
        }
    }

    #[test]
    fn status_bits_come_in_order_and_never_go() {
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::STATUS, status::DRIVER); // before ACKNOWLEDGE
        assert_eq!(r(&mut t, regs::STATUS), 0);
        w(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        ); // skips DRIVER
        assert_eq!(r(&mut t, regs::STATUS), 0);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE); // clears DRIVER
        assert_eq!(r(&mut t, regs::STATUS), 3);
        // Driver features only between DRIVER and FEATURES_OK.
        let mut t = negotiated();
        w(&mut t, regs::DRIVER_FEATURES_SEL, 0);
        w(&mut t, regs::DRIVER_FEATURES, 0b11);
        assert_eq!(t.state().driver_features, VIRTIO_F_VERSION_1 | 1);
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::DRIVER_FEATURES, 1);
        assert_eq!(t.state().driver_features, 0);
        // FAILED is accepted at any point and stops nothing else from being reset.
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::FAILED);
        assert_eq!(r(&mut t, regs::STATUS), 0x81);
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
    }

    #[test]
    fn failed_does_not_carry_features_ok_or_driver_ok_past_their_checks() {
        // Found by the mmio_transport fuzz target: one write of every bit from reset set
        // FEATURES_OK with no features negotiated, and DRIVER_OK without activation.
        // (Bits 0x10 and 0x20, which the specification does not define, are not taken.)
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::STATUS, 0xff);
        assert_eq!(
            r(&mut t, regs::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED
        );
        w(&mut t, regs::STATUS, 0);
        w(&mut t, regs::STATUS, 0x31);
        assert_eq!(r(&mut t, regs::STATUS), status::ACKNOWLEDGE);
        assert!(t.device().activated.is_none());
        // After FEATURES_OK was agreed, DRIVER_OK still needs activation.
        let mut t = negotiated();
        w(&mut t, regs::STATUS, 0b1111 | status::FAILED);
        assert_eq!(r(&mut t, regs::STATUS), 0b1011 | status::FAILED);
        assert!(t.device().activated.is_none());
        // Features the device never offered are not agreed either.
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::DRIVER_FEATURES, 0x8000_0000);
        w(&mut t, regs::STATUS, 0b1011 | status::FAILED);
        assert_eq!(r(&mut t, regs::STATUS) & status::FEATURES_OK, 0);
        // A reset starts over.
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
    }

    #[test]
    fn a_queue_mid_setup_with_any_size_saves_and_restores() {
        // Found by the mmio_transport fuzz target: a driver that wrote a QueueNum above
        // QueueNumMax (and had not set the queue ready) made the transport's saved state
        // unrestorable, so a guest could make its VM's snapshot unusable.
        let mut t = negotiated();
        set_queue(&mut t, 0, 1000, 0xC000_0000);
        w(&mut t, regs::QUEUE_SEL, 1);
        w(&mut t, regs::QUEUE_NUM, u32::MAX);
        let state = t.state();
        assert_eq!(
            (state.queues[0].size, state.queues[1].size),
            (1000, u16::MAX)
        );
        let mut u = MmioTransport::from_state(Mock::default(), &state).unwrap();
        assert_eq!(u.state(), state);
        // The size is still refused when the driver sets the queue ready.
        w(&mut u, regs::QUEUE_SEL, 0);
        w(&mut u, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut u, regs::QUEUE_READY), 0);
        assert_ne!(r(&mut u, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_setup_only_between_features_ok_and_driver_ok() {
        let mut t = MmioTransport::new(Mock::default());
        w(&mut t, regs::STATUS, 3);
        set_queue(&mut t, 0, 16, 0xC000_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(t.queues()[0], QueueConfig::new(256));
        assert_eq!(r(&mut t, regs::STATUS), 3);
        // Missing queue: ignored.
        let mut t = negotiated();
        set_queue(&mut t, 5, 16, 0xC000_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        assert_eq!(r(&mut t, regs::STATUS), 0b1011);
        // A ready queue is frozen until un-readied.
        set_queue(&mut t, 1, 8, 0x10_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::QUEUE_NUM, 4);
        assert_eq!(t.queues()[1].size, 8);
        w(&mut t, regs::QUEUE_READY, 0);
        w(&mut t, regs::QUEUE_NUM, 4);
        assert_eq!(t.queues()[1].size, 4);
    }

    #[test]
    fn bad_queues_need_a_reset() {
        let cases: [(u32, u64, &str); 5] = [
            (0, 0xC000_0000, "size 0"),
            (512, 0xC000_0000, "above max"),
            (12, 0xC000_0000, "not a power of two"),
            (16, 0xC000_0008, "misaligned descriptor table"),
            (16, u64::MAX - 0xff, "wraps around"),
        ];
        for (size, base, why) in cases {
            let mut t = negotiated();
            set_queue(&mut t, 0, size, base);
            w(&mut t, regs::QUEUE_READY, 1);
            assert_eq!(r(&mut t, regs::QUEUE_READY), 0, "{why}");
            assert_eq!(r(&mut t, regs::STATUS), 0b1011 | status::DEVICE_NEEDS_RESET);
            // Nothing but a reset (or FAILED) is taken now.
            w(&mut t, regs::STATUS, 0b1111);
            assert!(t.device().activated.is_none(), "{why}");
            assert!(!t.is_active());
            w(&mut t, regs::STATUS, 0);
            assert_eq!(r(&mut t, regs::STATUS), 0);
        }
        // The device refuses the queue.
        let mut t = negotiated();
        t.device_mut().refuse_queue = true;
        set_queue(&mut t, 0, 16, 0xC000_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        assert_ne!(r(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn failed_activation_needs_a_reset() {
        let mut t = negotiated();
        t.device_mut().refuse_activate = true;
        w(&mut t, regs::STATUS, 0b1111);
        assert_eq!(r(&mut t, regs::STATUS), 0b1111 | status::DEVICE_NEEDS_RESET);
        assert!(!t.is_active());
        // Notifications do not reach a device that is not live.
        w(&mut t, regs::QUEUE_NOTIFY, 0);
        assert!(t.device().notified.is_empty());
    }

    #[test]
    fn a_device_that_stopped_serving_needs_a_reset_until_the_driver_resets_it() {
        let mut t = negotiated();
        set_queue(&mut t, 0, 16, 0x1000_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::STATUS, 0b1111);
        assert!(t.is_active());
        t.device_mut().broken = true;
        assert_eq!(r(&mut t, regs::STATUS), 0b1111 | status::DEVICE_NEEDS_RESET);
        assert!(!t.is_active());
        w(&mut t, regs::QUEUE_NOTIFY, 0);
        assert!(
            t.device().notified.is_empty(),
            "no notifications while broken"
        );
        // The driver resets; the device serves again after a new setup.
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
        assert!(!t.device().broken);
    }

    #[test]
    fn narrow_register_accesses_are_ignored() {
        let mut t = MmioTransport::new(Mock::default());
        let mut b = [0xffu8; 2];
        t.read(regs::MAGIC_VALUE.into(), &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(u64::from(regs::MAGIC_VALUE) + 2, &mut b);
        assert_eq!(b, [0; 4]);
        t.write(regs::STATUS.into(), &[1]);
        t.write(u64::from(regs::STATUS) + 1, &[1, 0, 0, 0]);
        assert_eq!(r(&mut t, regs::STATUS), 0);
    }

    #[test]
    fn state_round_trips() {
        let mut t = negotiated();
        set_queue(&mut t, 0, 16, 0xC000_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::STATUS, 0b1111);
        let state = t.state();
        let mut u = MmioTransport::from_state(Mock::default(), &state).unwrap();
        assert_eq!(u.state(), state);
        assert!(u.is_active());
        assert!(
            u.device().activated.is_none(),
            "restoring does not activate"
        );
        for reg in [regs::STATUS, regs::QUEUE_READY, regs::QUEUE_DESC_LOW] {
            assert_eq!(r(&mut u, reg), r(&mut t, reg));
        }
        let mut bad = state.clone();
        bad.queues.pop();
        assert_eq!(
            MmioTransport::from_state(Mock::default(), &bad).unwrap_err(),
            Error::QueueCount {
                expected: 2,
                found: 1
            }
        );
        let mut bad = state.clone();
        bad.queues[0].max_size = 128;
        assert!(matches!(
            MmioTransport::from_state(Mock::default(), &bad),
            Err(Error::SavedQueue { index: 0, .. })
        ));
        let mut bad = state;
        bad.queues[0].size = 12;
        assert!(matches!(
            MmioTransport::from_state(Mock::default(), &bad),
            Err(Error::SavedQueue { index: 0, .. })
        ));
    }
}
