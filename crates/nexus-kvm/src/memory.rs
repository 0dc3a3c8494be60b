//! Guest memory: RAM plus the I/O window, laid out as [`crate::layout`] describes.
//!
//! RAM is anonymous memory. The I/O window is a separate region backed by a memfd, so that it
//! can be shared — alone, never with the rest of guest memory — with another process such as
//! the vhost-user backend.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{
    HIGH_RAM_START, LOW_RAM_END, MIN_RAM_SIZE, PAGE_SIZE, RAM_START, WINDOW_MAX_SIZE, WINDOW_START,
};

/// Guest memory as used throughout Nexus.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<()>;

/// Errors of memory set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RAM size below the minimum.
    #[error("Guest RAM of {size} bytes is too small: at least {min} bytes are needed")]
    RamTooSmall {
        /// The requested size.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// A size not a multiple of the page size.
    #[error("The {what} size {size:#x} is not a multiple of the 4 KiB page size")]
    Unaligned {
        /// Which size.
        what: &'static str,
        /// The requested size.
        size: u64,
    },
    /// A window larger than its slot in the layout.
    #[error("An I/O window of {size:#x} bytes exceeds the largest window ({max:#x} bytes)")]
    WindowTooLarge {
        /// The requested size.
        size: u64,
        /// The largest window.
        max: u64,
    },
    /// RAM size overflowing the address space.
    #[error("Guest RAM of {0:#x} bytes does not fit the guest address space")]
    RamTooLarge(u64),
    /// memfd creation or sizing failed.
    #[error("Cannot create the memfd backing the I/O window")]
    Memfd(#[source] std::io::Error),
    /// The regions could not be mapped.
    #[error("Cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
    /// The region collection was refused.
    #[error("Cannot assemble guest memory regions")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Sizes of a VM's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes (a multiple of 4 KiB, at least [`MIN_RAM_SIZE`]).
    pub ram_size: u64,
    /// I/O window in bytes (a multiple of 4 KiB, at most [`WINDOW_MAX_SIZE`]); 0 for none.
    pub window_size: u64,
}

impl MemoryConfig {
    /// Checks the sizes against the layout.
    pub fn validate(&self) -> Result<()> {
        if self.ram_size < MIN_RAM_SIZE {
            return Err(Error::RamTooSmall {
                size: self.ram_size,
                min: MIN_RAM_SIZE,
            });
        }
        if self.ram_size % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: "RAM",
                size: self.ram_size,
            });
        }
        if self.window_size % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: "I/O window",
                size: self.window_size,
            });
        }
        if self.window_size > WINDOW_MAX_SIZE {
            return Err(Error::WindowTooLarge {
                size: self.window_size,
                max: WINDOW_MAX_SIZE,
            });
        }
        // Keep within a 46-bit guest-physical space.
        if self.ram_size > (1u64 << 46) - HIGH_RAM_START {
            return Err(Error::RamTooLarge(self.ram_size));
        }
        Ok(())
    }

    /// The RAM ranges (guest address, size) this configuration occupies.
    pub fn ram_ranges(&self) -> Vec<(GuestAddress, u64)> {
        let low = self.ram_size.min(LOW_RAM_END - RAM_START);
        let mut ranges = vec![(GuestAddress(RAM_START), low)];
        if self.ram_size > low {
            ranges.push((GuestAddress(HIGH_RAM_START), self.ram_size - low));
        }
        ranges
    }

    /// Size of the low RAM region.
    pub fn low_ram_size(&self) -> u64 {
        self.ram_size.min(LOW_RAM_END - RAM_START)
    }
}

/// The I/O window's memory: a memfd-backed region of guest-physical memory outside RAM, which
/// the VMM maps and shares with the backend. (The ring protocol's view of a window, the range
/// that bounds every guest address, is `nexus_ring::IoWindow`.)
#[derive(Debug, Clone)]
pub struct WindowRegion {
    memfd: Arc<File>,
    region: Arc<GuestRegionMmap>,
}

impl WindowRegion {
    /// Creates a window of `size` bytes at [`WINDOW_START`].
    pub fn new(size: u64) -> Result<Self> {
        let memfd = create_memfd("nexus-io-window", size)?;
        let file_offset = FileOffset::new(memfd.try_clone().map_err(Error::Memfd)?, 0);
        let region = GuestRegionMmap::from_range(
            GuestAddress(WINDOW_START),
            size as usize,
            Some(file_offset),
        )
        .map_err(Error::Mmap)?;
        Ok(WindowRegion {
            memfd: Arc::new(memfd),
            region: Arc::new(region),
        })
    }

    /// Guest-physical base address.
    pub fn base(&self) -> GuestAddress {
        self.region.start_addr()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.region.len()
    }

    /// Whether `[addr, addr + len)` lies entirely inside the window.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let base = self.base().0;
        addr >= base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= base + self.size())
    }

    /// The memfd backing the window, to share it with another process.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// The mapped region.
    pub fn region(&self) -> &Arc<GuestRegionMmap> {
        &self.region
    }
}

fn create_memfd(name: &str, size: u64) -> Result<File> {
    let cname = std::ffi::CString::new(name).expect("memfd name has no NUL");
    // SAFETY: `cname` is a valid NUL-terminated string; memfd_create has no other inputs and
    // returns a new file descriptor or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(Error::Memfd)?;
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

/// A VM's memory: the guest-memory map (RAM regions and, if any, the window) and the window.
#[derive(Debug, Clone)]
pub struct VmMemory {
    config: MemoryConfig,
    guest: GuestMemoryMmap,
    window: Option<WindowRegion>,
}

impl VmMemory {
    /// Allocates RAM and the window as `config` says.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        let mut regions = Vec::new();
        for (addr, size) in config.ram_ranges() {
            let region =
                GuestRegionMmap::from_range(addr, size as usize, None).map_err(Error::Mmap)?;
            regions.push(Arc::new(region));
        }
        let window = if config.window_size > 0 {
            let window = WindowRegion::new(config.window_size)?;
            regions.push(Arc::clone(window.region()));
            Some(window)
        } else {
            None
        };
        regions.sort_by_key(|r| r.start_addr());
        let guest = GuestMemoryMmap::from_arc_regions(regions).map_err(Error::Regions)?;
        Ok(VmMemory {
            config,
            guest,
            window,
        })
    }

    /// Builds a `VmMemory` from regions made elsewhere (for example mapped from a snapshot).
    pub fn from_parts(
        config: MemoryConfig,
        ram: Vec<Arc<GuestRegionMmap>>,
        window: Option<WindowRegion>,
    ) -> Result<Self> {
        config.validate()?;
        let mut regions = ram;
        if let Some(w) = &window {
            regions.push(Arc::clone(w.region()));
        }
        regions.sort_by_key(|r| r.start_addr());
        let guest = GuestMemoryMmap::from_arc_regions(regions).map_err(Error::Regions)?;
        Ok(VmMemory {
            config,
            guest,
            window,
        })
    }

    /// The sizes this memory was made with.
    pub fn config(&self) -> MemoryConfig {
        self.config
    }

    /// All of guest memory (RAM and window).
    pub fn guest(&self) -> &GuestMemoryMmap {
        &self.guest
    }

    /// The I/O window, if the VM has one.
    pub fn window(&self) -> Option<&WindowRegion> {
        self.window.as_ref()
    }

    /// The RAM regions (everything but the window).
    pub fn ram_regions(&self) -> impl Iterator<Item = &GuestRegionMmap> {
        let window_base = self.window.as_ref().map(|w| w.base());
        self.guest
            .iter()
            .filter(move |r| Some(r.start_addr()) != window_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn rejects_bad_sizes() {
        let bad = [
            (0x1000, 0, "too small"),
            (MIN_RAM_SIZE + 1, 0, "unaligned"),
            (MIN_RAM_SIZE, 0x800, "unaligned window"),
            (
                MIN_RAM_SIZE,
                WINDOW_MAX_SIZE + PAGE_SIZE,
                "window too large",
            ),
        ];
        for (ram_size, window_size, why) in bad {
            assert!(
                MemoryConfig {
                    ram_size,
                    window_size
                }
                .validate()
                .is_err(),
                "{why}"
            );
        }
    }

    #[test]
    fn window_is_separate_and_shared_through_memfd() {
        let mem = VmMemory::new(MemoryConfig {
            ram_size: 16 << 20,
            window_size: 1 << 20,
        })
        .unwrap();
        assert_eq!(mem.guest().num_regions(), 2);
        let window = mem.window().unwrap();
        assert_eq!(window.base(), GuestAddress(WINDOW_START));
        assert!(window.contains(WINDOW_START, 1 << 20));
        assert!(!window.contains(WINDOW_START, (1 << 20) + 1));
        assert!(!window.contains(WINDOW_START - 1, 1));
        assert!(!window.contains(u64::MAX, 2));
        mem.guest()
            .write_obj(0xabcd_u32, GuestAddress(WINDOW_START + 8))
            .unwrap();
        // The bytes are visible through the memfd, which is what another process maps.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_at(window.memfd(), &mut buf, 8).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
        assert_eq!(mem.ram_regions().count(), 1);
    }

    #[test]
    fn ram_beyond_low_region_goes_high() {
        let config = MemoryConfig {
            ram_size: LOW_RAM_END + (1 << 20),
            window_size: 0,
        };
        let ranges = config.ram_ranges();
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), LOW_RAM_END),
                (GuestAddress(HIGH_RAM_START), 1 << 20)
            ]
        );
    }
}
