//! The device's registers: the [`Registers`] trait and its MMIO implementation.
//!
//! The driver reaches the nexus-io device only through [`Registers`], 32-bit reads and writes
//! at byte offsets of its 4 KiB virtio-mmio block. [`MmioRegisters`] is the real thing: volatile
//! accesses through a pointer to the block — the identity-mapped guest-physical address in a
//! micro-guest, or a `/dev/mem` mapping in a Linux process. Tests plug in a fake device.
//!
//! The register map is `nexus_ring::mmio` and the nexus-io device's contract (its ID, feature
//! bits, config layout, WAIT values) `nexus_ring::device` (`docs/nexus-io.md`): the driver
//! and the VMM take them from there.

use core::ptr::NonNull;

/// The virtio-mmio register offsets (`nexus_ring::mmio::regs`, the one definition shared with
/// the VMM's transport).
pub use nexus_ring::mmio::regs;
/// The `Status` register's bits (`nexus_ring::mmio::status`).
pub use nexus_ring::mmio::status;

/// Feature bits this crate's nexus-io driver negotiates (`nexus_ring::device`'s).
pub mod features {
    pub use nexus_ring::device::{NEXUS_F_WAIT, NEXUS_F_WRITE_BEHIND, VIRTIO_F_VERSION_1};
}

/// The register offset of the config space's field at `offset` (a device contract's config
/// offset: `nexus_ring::device::config`, `nexus_ring::net::config`).
pub(crate) const fn config_register(offset: u32) -> u32 {
    regs::CONFIG + offset
}

/// The nexus-io registers a [`MmioRegisters`] block must cover: up to the config space's last
/// field (WAIT).
const NEXUS_IO_REGISTERS_END: u32 = regs::CONFIG + nexus_ring::device::config::SIZE;

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
        if !base.as_ptr().is_aligned() || size < NEXUS_IO_REGISTERS_END as usize {
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
