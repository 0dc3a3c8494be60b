//! The device's registers: the [`Registers`] trait and its MMIO implementation.
//!
//! The driver reaches the nexus-io device only through [`Registers`], 32-bit reads and writes
//! at byte offsets of its 4 KiB virtio-mmio block. [`MmioRegisters`] is the real thing: volatile
//! accesses through a pointer to the block — the identity-mapped guest-physical address in a
//! micro-guest, or a `/dev/mem` mapping in a Linux process. Tests plug in a fake device.

use core::ptr::NonNull;

/// Offsets of the virtio-mmio (version 2) registers and of the nexus-io config space
/// (`docs/nexus-io.md`).
pub mod regs {
    /// `MagicValue`: [`MAGIC`].
    pub const MAGIC_VALUE: u32 = 0x000;
    /// `Version`: 2 for a modern device.
    pub const VERSION: u32 = 0x004;
    /// `DeviceID`: [`DEVICE_ID`].
    pub const DEVICE_ID: u32 = 0x008;
    /// `VendorID`: [`VENDOR_ID`].
    pub const VENDOR_ID: u32 = 0x00C;
    /// `DeviceFeatures`: 32 feature bits, selected by `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES: u32 = 0x010;
    /// `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES_SEL: u32 = 0x014;
    /// `DriverFeatures`: 32 feature bits, selected by `DriverFeaturesSel`.
    pub const DRIVER_FEATURES: u32 = 0x020;
    /// `DriverFeaturesSel`.
    pub const DRIVER_FEATURES_SEL: u32 = 0x024;
    /// `QueueSel`.
    pub const QUEUE_SEL: u32 = 0x030;
    /// `QueueNumMax`.
    pub const QUEUE_NUM_MAX: u32 = 0x034;
    /// `QueueNum`.
    pub const QUEUE_NUM: u32 = 0x038;
    /// `QueueReady`.
    pub const QUEUE_READY: u32 = 0x044;
    /// `QueueNotify`: the doorbell, an ioeventfd inside KVM.
    pub const QUEUE_NOTIFY: u32 = 0x050;
    /// `InterruptStatus`.
    pub const INTERRUPT_STATUS: u32 = 0x060;
    /// `InterruptACK`.
    pub const INTERRUPT_ACK: u32 = 0x064;
    /// `Status`.
    pub const STATUS: u32 = 0x070;
    /// `QueueDescLow` (`QueueDescHigh` follows at +4).
    pub const QUEUE_DESC_LOW: u32 = 0x080;
    /// `QueueDriverLow` (`QueueDriverHigh` follows at +4): the avail ring.
    pub const QUEUE_DRIVER_LOW: u32 = 0x090;
    /// `QueueDeviceLow` (`QueueDeviceHigh` follows at +4): the used ring.
    pub const QUEUE_DEVICE_LOW: u32 = 0x0A0;
    /// `ConfigGeneration`.
    pub const CONFIG_GENERATION: u32 = 0x0FC;
    /// Start of the device's config space.
    pub const CONFIG: u32 = 0x100;

    /// Config `window_base` (u64).
    pub const WINDOW_BASE: u32 = CONFIG;
    /// Config `window_size` (u64).
    pub const WINDOW_SIZE: u32 = CONFIG + 0x08;
    /// Config `max_payload` (u32).
    pub const MAX_PAYLOAD: u32 = CONFIG + 0x10;
    /// Config `num_queues` (u32).
    pub const NUM_QUEUES: u32 = CONFIG + 0x14;
    /// Config `queue_size_max` (u32).
    pub const QUEUE_SIZE_MAX: u32 = CONFIG + 0x18;
    /// Config `backend_state` (u32): 1 while connected to the backend.
    pub const BACKEND_STATE: u32 = CONFIG + 0x1C;
    /// Config `WAIT` (u32, read): blocks until the used ring moves past `used_event`.
    pub const WAIT: u32 = CONFIG + 0x20;

    /// The value of `MagicValue`: `"virt"` little endian.
    pub const MAGIC: u32 = 0x7472_6976;
    /// The virtio-mmio version this driver speaks.
    pub const MMIO_VERSION: u32 = 2;
    /// The nexus-io device ID (`"NX"`).
    pub const DEVICE_ID_NEXUS: u32 = 0x4E58;
    /// The nexus-io vendor ID (`"NXUS"`).
    pub const VENDOR_ID_NEXUS: u32 = 0x5355_584E;
    /// What a `WAIT` read returns when the device has no backend connection.
    pub const WAIT_BACKEND_UNAVAILABLE: u32 = nexus_ring::device::wait::BACKEND_UNAVAILABLE;
    /// What a `WAIT` read returns when the backend stopped serving the queue (the device
    /// needs a reset).
    pub const WAIT_NEEDS_RESET: u32 = nexus_ring::device::wait::NEEDS_RESET;
    /// Size of the register block.
    pub const BLOCK_SIZE: u32 = 0x1000;
}

/// Device status bits (the `Status` register).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Feature bits of the nexus-io device.
pub mod features {
    /// `NEXUS_F_WAIT`: the WAIT register exists (always offered; required by this driver).
    pub const NEXUS_F_WAIT: u64 = 1 << 0;
    /// `NEXUS_F_WRITE_BEHIND`: the backend accepts write-behind PUTs.
    pub const NEXUS_F_WRITE_BEHIND: u64 = 1 << 1;
    /// `VIRTIO_F_VERSION_1`: a modern device (required).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
}

/// 32-bit access to a virtio-mmio register block.
///
/// `offset` is a byte offset inside the block, a multiple of 4. Every access may be a VM exit
/// (about 34 µs on PVM) except writes to `QueueNotify`, which KVM absorbs as an ioeventfd: the
/// driver keeps them few.
pub trait Registers {
    /// Reads the register at `offset`.
    fn read(&mut self, offset: u32) -> u32;
    /// Writes `value` to the register at `offset`.
    fn write(&mut self, offset: u32, value: u32);
}

/// A virtio-mmio register block reached through a pointer, with volatile accesses.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u32>,
    size: usize,
}

impl MmioRegisters {
    /// The register block at `base`, `size` bytes long. `None` if `base` is null or not
    /// 4-byte aligned, or `size` does not cover the nexus-io registers (up to `WAIT`).
    ///
    /// # Safety
    ///
    /// `base` must point to the device's register block, mapped (uncached) for 32-bit reads
    /// and writes of `size` bytes for as long as the returned value lives, and nothing else
    /// in this program may access the device meanwhile.
    pub unsafe fn new(base: *mut u8, size: usize) -> Option<Self> {
        let base = NonNull::new(base)?.cast::<u32>();
        if !base.as_ptr().is_aligned() || size < (regs::WAIT as usize + 4) {
            return None;
        }
        Some(Self { base, size })
    }

    /// The register block at guest-physical address `base` in an identity-mapped guest (a
    /// micro-guest). `None` as for [`Self::new`], or if the range does not fit the address
    /// space.
    ///
    /// # Safety
    ///
    /// As for [`Self::new`]: virtual address `base` must be the device's register block.
    pub unsafe fn identity(base: u64, size: u64) -> Option<Self> {
        let addr = usize::try_from(base).ok()?;
        let size = usize::try_from(size).ok()?;
        addr.checked_add(size)?;
        let ptr = core::ptr::with_exposed_provenance_mut::<u8>(addr);
        // SAFETY: the caller's guarantee is `new`'s.
        unsafe { Self::new(ptr, size) }
    }

    /// The register at `offset`; panics on an offset outside the block or not 4-aligned
    /// (a driver bug: offsets are constants).
    fn register(&self, offset: u32) -> *mut u32 {
        let offset = offset as usize;
        assert!(
            offset % 4 == 0 && offset + 4 <= self.size,
            "register offset {offset:#x} outside the block"
        );
        // SAFETY: `offset / 4 < size / 4`, so the result stays inside the mapped block that
        // `new`'s caller guaranteed.
        unsafe { self.base.as_ptr().add(offset / 4) }
    }
}

impl Registers for MmioRegisters {
    fn read(&mut self, offset: u32) -> u32 {
        let register = self.register(offset);
        // SAFETY: an aligned register inside the block `new`'s caller guaranteed mapped and
        // ours alone; MMIO must be read with one volatile access of the register's width.
        unsafe { register.read_volatile() }
    }

    fn write(&mut self, offset: u32, value: u32) {
        let register = self.register(offset);
        // SAFETY: as for `read`. The write's side effects (reset, doorbell…) are the driver's
        // protocol with the device and touch no memory Rust knows about; ring memory is
        // published with a fence before the doorbell.
        unsafe { register.write_volatile(value) }
    }
}
