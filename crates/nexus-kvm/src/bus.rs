//! Port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! A vCPU exit for a port or an MMIO address is dispatched to the device whose range holds
//! it, with the offset inside that range. Devices are shared between vCPUs, so each sits
//! behind a mutex.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What the vCPU should do after a device handled an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    /// Resume the guest.
    Continue,
    /// Stop the VM: the guest asked to exit with this code.
    Exit(u32),
}

/// A device on a bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction;
}

/// A device shared between vCPUs.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus set-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A range of zero length or one that wraps around.
    #[error("The bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("The bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// An address space of devices: one for ports, one for MMIO.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for e in &self.entries {
            list.entry(&format_args!("{:#x}+{:#x}", e.base, e.len));
        }
        list.finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::InvalidRange { base, len })?;
        let at = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = at > 0 && {
            let prev = &self.entries[at - 1];
            prev.base + prev.len > base
        };
        let overlaps_next = self.entries.get(at).is_some_and(|next| next.base < end);
        if overlaps_prev || overlaps_next {
            return Err(Error::Overlap { base, len });
        }
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    /// The device holding `addr` and the offset of `addr` inside it.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some((&entry.device, offset))
    }

    /// Dispatches a read; `false` when no device holds `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `None` when no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusAction> {
        let (device, offset) = self.resolve(addr)?;
        Some(lock(device).write(offset, data))
    }
}

fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    // A device that panicked while locked is left as it was; the VM keeps its other devices.
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
            self.last = Some((offset, data.to_vec()));
            if data == [0xff] {
                BusAction::Exit(7)
            } else {
                BusAction::Continue
            }
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(b.clone(), 0x100, 0x10).unwrap();
        bus.insert(a.clone(), 0x10, 8).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x13, &mut data));
        assert_eq!(data, [3, 3]);
        assert_eq!(bus.write(0x10f, &[1]), Some(BusAction::Continue));
        assert_eq!(b.lock().unwrap().last, Some((0xf, vec![1])));
        assert_eq!(bus.write(0x10, &[0xff]), Some(BusAction::Exit(7)));
        assert!(!bus.read(0x18, &mut data));
        assert!(!bus.read(0x0, &mut data));
        assert_eq!(bus.write(0x110, &[1]), None);
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0xf8, 0x9),
            Err(Error::Overlap { base: 0xf8, len: 9 })
        );
        assert_eq!(
            bus.insert(d(), 0x10f, 1),
            Err(Error::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert!(bus.insert(d(), 0xf8, 0x8).is_ok());
        assert!(bus.insert(d(), 0x110, 0x8).is_ok());
        assert_eq!(
            bus.insert(d(), 0x200, 0),
            Err(Error::InvalidRange {
                base: 0x200,
                len: 0
            })
        );
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(Error::InvalidRange { .. })
        ));
    }
}
