//! Guest memory: RAM plus the I/O window, laid out as [`crate::layout`] describes.
//!
//! RAM is anonymous memory. The I/O window is a separate region backed by a memfd, so that it
//! can be shared — alone, never with the rest of guest memory — with another process such as
//! the vhost-user backend.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

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
///
/// The memfd is either the window's own ([`WindowRegion::new`]) or a slab shared with other
/// windows of the same size ([`WindowRegion::allocate`] once [`WindowSlabs::install`] was
/// called), in which case the window starts at [`WindowRegion::memfd_offset`] in it. Either
/// way the process holds one descriptor for it (the mapping and this share it), and a slab's
/// one descriptor serves many VMs.
#[derive(Debug, Clone)]
pub struct WindowRegion {
    memfd: Arc<File>,
    offset: u64,
    // Before `_lease`: the last clone drops its reference to the mapping first, so that the
    // slab sees the slot unused when the lease goes.
    region: Arc<GuestRegionMmap>,
    /// Held for its `Drop`: the last clone's lets the slab take the slot back.
    _lease: Option<Arc<SlabLease>>,
}

impl WindowRegion {
    /// Creates a window of `size` bytes at [`WINDOW_START`], in a memfd of its own.
    pub fn new(size: u64) -> Result<Self> {
        let memfd = Arc::new(create_memfd("nexus-io-window", size)?);
        let region = map_window(&memfd, 0, size)?;
        Ok(WindowRegion {
            memfd,
            offset: 0,
            region: Arc::new(region),
            _lease: None,
        })
    }

    /// Creates a window of `size` bytes at [`WINDOW_START`]: in a slab of the process's
    /// [`WindowSlabs`] if one was installed ([`WindowSlabs::install`]), else in a memfd of
    /// its own as [`WindowRegion::new`] does. Its memory is zero either way.
    pub fn allocate(size: u64) -> Result<Self> {
        match WindowSlabs::installed() {
            Some(slabs) => slabs.window(size),
            None => Self::new(size),
        }
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

    /// The memfd backing the window, to share it with another process. The window is
    /// [`size`](Self::size) bytes at [`memfd_offset`](Self::memfd_offset) in it (a slab's
    /// memfd holds other windows too: map only that range).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Where the window starts in [`memfd`](Self::memfd) (0 unless it is in a slab).
    pub fn memfd_offset(&self) -> u64 {
        self.offset
    }

    /// The mapped region.
    pub fn region(&self) -> &Arc<GuestRegionMmap> {
        &self.region
    }
}

/// Maps `size` bytes of `memfd` at `offset` as the window region, sharing the descriptor
/// (no duplicate is made for the mapping).
fn map_window(memfd: &Arc<File>, offset: u64, size: u64) -> Result<GuestRegionMmap> {
    let file_offset = FileOffset::from_arc(Arc::clone(memfd), offset);
    GuestRegionMmap::from_range(GuestAddress(WINDOW_START), size as usize, Some(file_offset))
        .map_err(Error::Mmap)
}

/// Windows per slab unless [`WindowSlabs::new`] says otherwise.
pub const DEFAULT_WINDOWS_PER_SLAB: u32 = 64;

/// I/O windows in slabs: each slab is one memfd holding up to `per_slab` windows of one size
/// at different offsets, so that a process with thousands of VMs holds one descriptor per
/// slab rather than one per VM (the vhost-user memory region carries the window's
/// `mmap_offset`).
///
/// A slot returns to its slab, its memory punched out of the memfd
/// (`FALLOC_FL_PUNCH_HOLE`, so the memory is freed and a later window there starts zeroed),
/// once the window is unused: every [`WindowRegion`] clone dropped and no mapping of it left
/// in the process (guest memory maps and vCPUs hold the mapping too). A slot whose mapping is
/// still held when its last `WindowRegion` goes is reclaimed by a later allocation, release or
/// [`reclaim`](Self::reclaim). A slab with no window left is closed.
///
/// Every window of a slab is reachable through its memfd: a process it is handed to (the
/// backend, which serves every VM anyway) could map its neighbours too.
#[derive(Debug)]
pub struct WindowSlabs {
    per_slab: u32,
    slabs: Mutex<Vec<Slab>>,
}

#[derive(Debug)]
struct Slab {
    memfd: Arc<File>,
    window_size: u64,
    /// Per slot: the mapping of the window in it, while one is handed out.
    slots: Vec<Option<Weak<GuestRegionMmap>>>,
}

/// A window's claim on its slot; dropping the last one asks the slabs to take unused slots
/// back.
#[derive(Debug)]
struct SlabLease {
    slabs: Arc<WindowSlabs>,
}

impl Drop for SlabLease {
    fn drop(&mut self) {
        self.slabs.reclaim();
    }
}

static INSTALLED: OnceLock<Arc<WindowSlabs>> = OnceLock::new();

impl WindowSlabs {
    /// Slabs of `per_slab` windows each (at least 1).
    pub fn new(per_slab: u32) -> Arc<Self> {
        Arc::new(WindowSlabs {
            per_slab: per_slab.max(1),
            slabs: Mutex::new(Vec::new()),
        })
    }

    /// Makes `slabs` the process's: [`WindowRegion::allocate`] takes windows from it from
    /// now on. Returns `false` (and changes nothing) if slabs were installed already.
    pub fn install(slabs: Arc<Self>) -> bool {
        INSTALLED.set(slabs).is_ok()
    }

    /// The process's slabs, if [`install`](Self::install)ed.
    pub fn installed() -> Option<&'static Arc<Self>> {
        INSTALLED.get()
    }

    /// A zeroed window of `size` bytes at [`WINDOW_START`], in the first slab of that window
    /// size with a free slot (a new slab if none has one).
    pub fn window(self: &Arc<Self>, size: u64) -> Result<WindowRegion> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: "I/O window",
                size,
            });
        }
        let mut slabs = self.lock();
        Self::sweep(&mut slabs);
        let found = slabs.iter().enumerate().find_map(|(i, slab)| {
            (slab.window_size == size)
                .then(|| slab.slots.iter().position(Option::is_none))
                .flatten()
                .map(|slot| (i, slot))
        });
        let (index, slot) = match found {
            Some(found) => found,
            None => {
                let bytes =
                    size.checked_mul(u64::from(self.per_slab))
                        .ok_or(Error::WindowTooLarge {
                            size,
                            max: WINDOW_MAX_SIZE,
                        })?;
                let memfd = create_memfd("nexus-io-windows", bytes)?;
                slabs.push(Slab {
                    memfd: Arc::new(memfd),
                    window_size: size,
                    slots: vec![None; self.per_slab as usize],
                });
                (slabs.len() - 1, 0)
            }
        };
        let slab = &mut slabs[index];
        let offset = slot as u64 * size;
        let region = Arc::new(map_window(&slab.memfd, offset, size)?);
        slab.slots[slot] = Some(Arc::downgrade(&region));
        Ok(WindowRegion {
            memfd: Arc::clone(&slab.memfd),
            offset,
            region,
            _lease: Some(Arc::new(SlabLease {
                slabs: Arc::clone(self),
            })),
        })
    }

    /// Takes back every slot whose window is no longer mapped (punching its memory out of the
    /// slab) and closes slabs left empty.
    pub fn reclaim(&self) {
        Self::sweep(&mut self.lock());
    }

    /// Windows handed out and not yet reclaimed, and slabs open.
    pub fn usage(&self) -> (usize, usize) {
        let slabs = self.lock();
        let windows = slabs
            .iter()
            .map(|s| s.slots.iter().filter(|w| w.is_some()).count())
            .sum();
        (windows, slabs.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slab>> {
        self.slabs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep(slabs: &mut Vec<Slab>) {
        for slab in slabs.iter_mut() {
            for (slot, window) in slab.slots.iter_mut().enumerate() {
                if window.as_ref().is_some_and(|w| w.strong_count() == 0) {
                    *window = None;
                    let offset = slot as u64 * slab.window_size;
                    if let Err(e) = punch_hole(&slab.memfd, offset, slab.window_size) {
                        // The slot cannot be handed out zeroed: keep it out of use.
                        log::warn!("Cannot free a window slot of a slab: {e}");
                        *window = Some(Weak::new());
                    }
                }
            }
        }
        slabs.retain(|slab| slab.slots.iter().any(Option::is_some));
    }
}

/// Frees `[offset, offset + len)` of `file` (reads give zeros afterwards).
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate only reads its integer arguments; `file` is an open memfd borrowed
    // for the call. Punching a hole changes the file's contents, not its size, and no mapping
    // of this range is left in the process (the caller checked).
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
            let window = WindowRegion::allocate(config.window_size)?;
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
    fn slab_windows_share_a_memfd_and_come_back_zeroed() {
        use std::os::unix::fs::FileExt;
        let slabs = WindowSlabs::new(2);
        let size = 64 << 10;
        let a = slabs.window(size).unwrap();
        let b = slabs.window(size).unwrap();
        assert_eq!(slabs.usage(), (2, 1));
        assert_eq!(a.memfd().as_raw_fd(), b.memfd().as_raw_fd());
        assert_eq!((a.memfd_offset(), b.memfd_offset()), (0, size));
        assert_eq!(a.base(), GuestAddress(WINDOW_START));
        let guest = GuestMemoryMmap::from_arc_regions(vec![Arc::clone(b.region())]).unwrap();
        guest
            .write_obj(0x5eed_u32, GuestAddress(WINDOW_START + 16))
            .unwrap();
        // Visible in the slab at the window's offset, where the backend maps it.
        let mut buf = [0u8; 4];
        b.memfd().read_at(&mut buf, size + 16).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x5eed);
        // A third window needs a second slab.
        let c = slabs.window(size).unwrap();
        assert_eq!(slabs.usage(), (3, 2));
        // `b` is still mapped through `guest`: its slot is not taken back yet.
        drop(b);
        assert_eq!(slabs.usage(), (3, 2));
        drop(guest);
        slabs.reclaim();
        assert_eq!(slabs.usage(), (2, 2));
        // The slot comes back punched out: a new window there reads zeros.
        let d = slabs.window(size).unwrap();
        assert_eq!(d.memfd_offset(), size);
        let guest = GuestMemoryMmap::from_arc_regions(vec![Arc::clone(d.region())]).unwrap();
        assert_eq!(
            guest
                .read_obj::<u32>(GuestAddress(WINDOW_START + 16))
                .unwrap(),
            0
        );
        drop(guest);
        drop((a, c, d));
        assert_eq!(slabs.usage(), (0, 0));
        assert!(slabs.window(0x800).is_err());
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
