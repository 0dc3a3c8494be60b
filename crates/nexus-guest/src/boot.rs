//! The boot-info block the VMM hands a micro-guest.
//!
//! The layout is the one of `docs/micro-guest-abi.md` ("The boot-info block"): 128 bytes,
//! little endian, `#[repr(C)]`, at [`BOOT_INFO_ADDR`], its address in `RDI` at entry.
//!
//! A [`BootInfo`] can only be obtained through [`BootInfo::from_ptr`], which checks the magic,
//! the version and the size, and validates every argument as UTF-8 once; its accessors are
//! then safe and cannot fail.

use core::fmt;
use core::mem::{align_of, offset_of, size_of};
use core::ops::Range;

/// Guest-physical address of the boot-info block (the value of `RDI` at entry).
pub const BOOT_INFO_ADDR: u64 = 0x2000;

/// The boot-info block, exactly as the VMM lays it out (`docs/micro-guest-abi.md`).
///
/// The fields are private: a `&BootInfo` is obtained only from [`BootInfo::from_ptr`], so the
/// addresses it holds (arguments, memory map) are known to be valid for as long as the
/// reference lives.
#[repr(C)]
#[derive(Debug)]
pub struct BootInfo {
    magic: u64,
    version: u32,
    size: u32,
    ram_size: u64,
    heap_base: u64,
    heap_size: u64,
    stack_top: u64,
    window_base: u64,
    window_size: u64,
    device_base: u64,
    device_size: u64,
    argc: u64,
    argv: u64,
    mem_map: u64,
    mem_map_len: u64,
    serial_port: u16,
    exit_port: u16,
    generation_offset: u32,
    net_device_base: u64,
}

// The layout is the ABI: pin every offset the document gives.
const _: () = {
    assert!(size_of::<BootInfo>() == BootInfo::SIZE as usize);
    assert!(align_of::<BootInfo>() == 8);
    assert!(offset_of!(BootInfo, magic) == 0);
    assert!(offset_of!(BootInfo, version) == 8);
    assert!(offset_of!(BootInfo, size) == 12);
    assert!(offset_of!(BootInfo, ram_size) == 16);
    assert!(offset_of!(BootInfo, heap_base) == 24);
    assert!(offset_of!(BootInfo, heap_size) == 32);
    assert!(offset_of!(BootInfo, stack_top) == 40);
    assert!(offset_of!(BootInfo, window_base) == 48);
    assert!(offset_of!(BootInfo, window_size) == 56);
    assert!(offset_of!(BootInfo, device_base) == 64);
    assert!(offset_of!(BootInfo, device_size) == 72);
    assert!(offset_of!(BootInfo, argc) == 80);
    assert!(offset_of!(BootInfo, argv) == 88);
    assert!(offset_of!(BootInfo, mem_map) == 96);
    assert!(offset_of!(BootInfo, mem_map_len) == 104);
    assert!(offset_of!(BootInfo, serial_port) == 112);
    assert!(offset_of!(BootInfo, exit_port) == 114);
    assert!(offset_of!(BootInfo, generation_offset) == 116);
    assert!(offset_of!(BootInfo, net_device_base) == 120);
    assert!(size_of::<ArgEntry>() == 16);
    assert!(size_of::<MemoryMapEntry>() == 24);
    assert!(offset_of!(MemoryMapEntry, kind) == 16);
};

/// One `argv` entry: `{ ptr: u64, len: u64 }`, UTF-8 bytes, not NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ArgEntry {
    ptr: u64,
    len: u64,
}

/// One memory map entry: `{ base: u64, size: u64, kind: u32, reserved: u32 }`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Guest-physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Raw kind: 1 = RAM, 2 = reserved, 3 = I/O window, 4 = MMIO; see [`Self::kind`].
    pub kind: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

impl MemoryMapEntry {
    /// What this range of guest-physical memory is.
    pub const fn kind(&self) -> MemoryKind {
        match self.kind {
            1 => MemoryKind::Ram,
            2 => MemoryKind::Reserved,
            3 => MemoryKind::IoWindow,
            4 => MemoryKind::Mmio,
            other => MemoryKind::Unknown(other),
        }
    }

    /// The range `[base, base + size)` (saturating at `u64::MAX`).
    pub const fn range(&self) -> Range<u64> {
        self.base..self.base.saturating_add(self.size)
    }
}

/// The kind of a [`MemoryMapEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Guest RAM (kind 1).
    Ram,
    /// Reserved (kind 2).
    Reserved,
    /// The I/O window shared with the backend (kind 3).
    IoWindow,
    /// Device registers (kind 4).
    Mmio,
    /// A kind this version of the crate does not know.
    Unknown(u32),
}

/// Why [`BootInfo::from_ptr`] refused a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// The block's address is null.
    Null,
    /// The block's address is not 8-byte aligned.
    Misaligned(u64),
    /// The magic is not [`BootInfo::MAGIC`].
    BadMagic(u64),
    /// The version is not [`BootInfo::VERSION`].
    UnsupportedVersion(u32),
    /// The `size` field is smaller than [`BootInfo::SIZE`].
    TooSmall(u32),
    /// `argv` is null or misaligned while `argc` is not 0, or the array does not fit the
    /// address space.
    BadArgv,
    /// An argument's address is null or its bytes do not fit the address space.
    BadArg(usize),
    /// An argument is not valid UTF-8.
    ArgNotUtf8(usize),
    /// `mem_map` is null or misaligned while `mem_map_len` is not 0, or the array does not fit
    /// the address space.
    BadMemoryMap,
    /// The heap range does not fit the address space.
    BadHeap,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => write!(f, "boot-info address is null"),
            Self::Misaligned(addr) => {
                write!(f, "boot-info address {addr:#x} is not 8-byte aligned")
            }
            Self::BadMagic(magic) => write!(f, "bad boot-info magic {magic:#018x}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported boot-info version {v}"),
            Self::TooSmall(size) => write!(f, "boot-info block of {size} bytes is too small"),
            Self::BadArgv => write!(f, "invalid argument array"),
            Self::BadArg(i) => write!(f, "argument {i} has an invalid address or length"),
            Self::ArgNotUtf8(i) => write!(f, "argument {i} is not valid UTF-8"),
            Self::BadMemoryMap => write!(f, "invalid memory map array"),
            Self::BadHeap => write!(f, "invalid heap range"),
        }
    }
}

impl core::error::Error for BootInfoError {}

/// `u64` address → `usize`, if it fits.
fn to_usize(value: u64) -> Option<usize> {
    usize::try_from(value).ok()
}

/// Checks that an array of `len` elements of `T` at `addr` is non-null (unless empty),
/// aligned, and inside the address space.
fn array_ok<T>(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let (Some(addr), Some(len)) = (to_usize(addr), to_usize(len)) else {
        return false;
    };
    addr != 0
        && addr % align_of::<T>() == 0
        && len
            .checked_mul(size_of::<T>())
            .and_then(|bytes| addr.checked_add(bytes))
            .is_some()
}

impl BootInfo {
    /// `b"NEXUSBI1"` read as a little-endian `u64`.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"NEXUSBI1");
    /// The version this crate understands.
    pub const VERSION: u32 = 1;
    /// Size of a version-1 block in bytes.
    pub const SIZE: u32 = 128;

    /// Validates the block at `ptr` and returns a reference to it.
    ///
    /// Checks, in order: `ptr` non-null and 8-byte aligned; magic; version (must be exactly
    /// [`Self::VERSION`]); `size` at least [`Self::SIZE`] (a larger block is accepted, its
    /// tail ignored); the `argv` array and every argument (address, length, UTF-8); the
    /// memory map array; the heap range.
    ///
    /// # Safety
    ///
    /// If `ptr` is non-null and aligned, it must be readable for [`Self::SIZE`] bytes; if
    /// the magic and version match, every address the block holds (the `argv` array, each
    /// argument's bytes, the memory map) must be readable for the lengths the block gives,
    /// and none of this memory may be written for the lifetime `'a`. The micro-guest ABI
    /// guarantees all of this for the block at [`BOOT_INFO_ADDR`] as long as the guest does
    /// not write below its image.
    pub unsafe fn from_ptr<'a>(ptr: *const BootInfo) -> Result<&'a BootInfo, BootInfoError> {
        if ptr.is_null() {
            return Err(BootInfoError::Null);
        }
        if !ptr.is_aligned() {
            return Err(BootInfoError::Misaligned(ptr.addr() as u64));
        }
        // SAFETY: non-null and aligned (checked above); the caller guarantees `SIZE`
        // readable bytes that are not written for `'a`. Every bit pattern is a valid
        // `BootInfo` (integers only).
        let info = unsafe { &*ptr };
        if info.magic != Self::MAGIC {
            return Err(BootInfoError::BadMagic(info.magic));
        }
        if info.version != Self::VERSION {
            return Err(BootInfoError::UnsupportedVersion(info.version));
        }
        if info.size < Self::SIZE {
            return Err(BootInfoError::TooSmall(info.size));
        }
        if !array_ok::<ArgEntry>(info.argv, info.argc) {
            return Err(BootInfoError::BadArgv);
        }
        for (index, entry) in info.arg_entries().iter().enumerate() {
            // SAFETY: the array was checked above; the caller guarantees the argument bytes
            // are readable for their length and not written for `'a`.
            let bytes = unsafe { Self::arg_bytes(entry) }.ok_or(BootInfoError::BadArg(index))?;
            if core::str::from_utf8(bytes).is_err() {
                return Err(BootInfoError::ArgNotUtf8(index));
            }
        }
        if !array_ok::<MemoryMapEntry>(info.mem_map, info.mem_map_len) {
            return Err(BootInfoError::BadMemoryMap);
        }
        match (to_usize(info.heap_base), to_usize(info.heap_size)) {
            (Some(base), Some(size)) if base.checked_add(size).is_some() => {}
            _ => return Err(BootInfoError::BadHeap),
        }
        Ok(info)
    }

    /// The bytes of one argument, or `None` if its address or length is invalid.
    ///
    /// # Safety
    ///
    /// If the entry's address is non-null, its `len` bytes must be readable and unchanged
    /// for `'a`.
    unsafe fn arg_bytes<'a>(entry: &ArgEntry) -> Option<&'a [u8]> {
        if entry.len == 0 {
            return Some(&[]);
        }
        let addr = to_usize(entry.ptr)?;
        let len = to_usize(entry.len)?;
        if addr == 0 || addr.checked_add(len).is_none() || len > isize::MAX as usize {
            return None;
        }
        let ptr = core::ptr::with_exposed_provenance::<u8>(addr);
        // SAFETY: non-null, `len` fits the address space and `isize`; readability and
        // immutability for `'a` are the caller's guarantee.
        Some(unsafe { core::slice::from_raw_parts(ptr, len) })
    }

    /// The raw `argv` array.
    fn arg_entries(&self) -> &[ArgEntry] {
        if self.argc == 0 {
            return &[];
        }
        let ptr = core::ptr::with_exposed_provenance::<ArgEntry>(self.argv as usize);
        // SAFETY: `from_ptr` checked that the array is non-null, aligned and fits the address
        // space, and its caller guaranteed it readable and unchanged while `self` lives.
        unsafe { core::slice::from_raw_parts(ptr, self.argc as usize) }
    }

    /// The format version (always [`Self::VERSION`] once validated).
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// Total guest RAM in bytes.
    pub const fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// The heap: `[heap_base, heap_base + heap_size)`, page aligned.
    pub const fn heap(&self) -> Range<u64> {
        self.heap_base..self.heap_base + self.heap_size
    }

    /// One past the last byte of the stack.
    pub const fn stack_top(&self) -> u64 {
        self.stack_top
    }

    /// The I/O window, if the VM has one.
    pub const fn window(&self) -> Option<Range<u64>> {
        if self.window_base == 0 || self.window_size == 0 {
            None
        } else {
            Some(self.window_base..self.window_base.saturating_add(self.window_size))
        }
    }

    /// The nexus-io device's MMIO register block, if the VM has one.
    pub const fn device(&self) -> Option<Range<u64>> {
        if self.device_base == 0 || self.device_size == 0 {
            None
        } else {
            Some(self.device_base..self.device_base.saturating_add(self.device_size))
        }
    }

    /// The virtio-net device's MMIO register block (`nexus_ring::mmio::BLOCK_SIZE` bytes), if the VM
    /// has one (boot-info `net_device_base`, offset 120; 0 means none — older VMMs left the
    /// field reserved and zero).
    pub const fn net_device(&self) -> Option<Range<u64>> {
        if self.net_device_base == 0 {
            None
        } else {
            let size = nexus_ring::mmio::BLOCK_SIZE as u64;
            Some(self.net_device_base..self.net_device_base.saturating_add(size))
        }
    }

    /// The address of the VM generation record (`nexus_ring::generation`, read it with
    /// [`generation::BootGeneration`](crate::generation::BootGeneration)), if the VMM wrote
    /// one: the block's `generation_offset` (offset 116, formerly `reserved`, 0 from VMMs
    /// without the record) from the block's own address, 8-byte aligned, after the block and
    /// within its 4 KiB page.
    pub fn generation_record(&self) -> Option<u64> {
        const PAGE: u64 = 4096;
        let offset = u64::from(self.generation_offset);
        let block = core::ptr::from_ref(self).addr() as u64;
        let end = (block % PAGE)
            .checked_add(offset)?
            .checked_add(nexus_ring::generation::RECORD_SIZE as u64)?;
        let fits = offset >= u64::from(Self::SIZE) && offset % 8 == 0 && end <= PAGE;
        fits.then(|| block + offset)
    }

    /// Base port of the 8250 console.
    pub const fn serial_port(&self) -> u16 {
        self.serial_port
    }

    /// The exit port.
    pub const fn exit_port(&self) -> u16 {
        self.exit_port
    }

    /// Number of arguments.
    pub fn argc(&self) -> usize {
        self.arg_entries().len()
    }

    /// The argument at `index` (0 is the first argument; there is no program name).
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.arg_entries().get(index).map(Self::arg_str)
    }

    /// An iterator over the arguments.
    pub fn args(&self) -> Args<'_> {
        Args {
            entries: self.arg_entries().iter(),
        }
    }

    /// The memory map.
    pub fn memory_map(&self) -> &[MemoryMapEntry] {
        if self.mem_map_len == 0 {
            return &[];
        }
        let ptr = core::ptr::with_exposed_provenance::<MemoryMapEntry>(self.mem_map as usize);
        // SAFETY: `from_ptr` checked that the array is non-null, aligned and fits the address
        // space, and its caller guaranteed it readable and unchanged while `self` lives.
        unsafe { core::slice::from_raw_parts(ptr, self.mem_map_len as usize) }
    }

    /// One argument as a string; `from_ptr` validated it, so the fallback never happens.
    fn arg_str(entry: &ArgEntry) -> &str {
        // SAFETY: `from_ptr` validated this entry's address and length, and its caller
        // guaranteed the bytes readable and unchanged while the `BootInfo` lives.
        let bytes = unsafe { Self::arg_bytes(entry) }.unwrap_or_default();
        core::str::from_utf8(bytes).unwrap_or_default()
    }
}

/// Iterator over a [`BootInfo`]'s arguments, from [`BootInfo::args`].
#[derive(Debug, Clone)]
pub struct Args<'a> {
    entries: core::slice::Iter<'a, ArgEntry>,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.entries.next().map(BootInfo::arg_str)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Args<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.entries.next_back().map(BootInfo::arg_str)
    }
}

impl ExactSizeIterator for Args<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A boot-info block in host memory, with the storage its addresses point to.
    struct Fixture {
        info: Box<BootInfo>,
        _argv: Vec<ArgEntry>,
        _map: Vec<MemoryMapEntry>,
    }

    fn addr<T>(ptr: *const T) -> u64 {
        ptr.expose_provenance() as u64
    }

    fn fixture(args: &[&'static [u8]]) -> Fixture {
        let argv: Vec<ArgEntry> = args
            .iter()
            .map(|a| ArgEntry {
                ptr: addr(a.as_ptr()),
                len: a.len() as u64,
            })
            .collect();
        let map = vec![
            MemoryMapEntry {
                base: 0,
                size: 0xC000_0000,
                kind: 1,
                reserved: 0,
            },
            MemoryMapEntry {
                base: 0xC000_0000,
                size: 0x100_0000,
                kind: 3,
                reserved: 0,
            },
            MemoryMapEntry {
                base: 0xE000_0000,
                size: 0x1000,
                kind: 4,
                reserved: 0,
            },
            MemoryMapEntry {
                base: 0x1000,
                size: 0xF000,
                kind: 2,
                reserved: 0,
            },
            MemoryMapEntry {
                base: 0,
                size: 0,
                kind: 9,
                reserved: 0,
            },
        ];
        let info = Box::new(BootInfo {
            magic: BootInfo::MAGIC,
            version: 1,
            size: 128,
            ram_size: 0x800_0000,
            heap_base: 0x20_0000,
            heap_size: 0x600_0000,
            stack_top: 0x800_0000,
            window_base: 0xC000_0000,
            window_size: 0x100_0000,
            device_base: 0xE000_0000,
            device_size: 0x1000,
            argc: argv.len() as u64,
            argv: if argv.is_empty() {
                0
            } else {
                addr(argv.as_ptr())
            },
            mem_map: addr(map.as_ptr()),
            mem_map_len: map.len() as u64,
            serial_port: 0x3F8,
            exit_port: 0xF4,
            generation_offset: 0x80,
            net_device_base: 0xE000_1000,
        });
        Fixture {
            info,
            _argv: argv,
            _map: map,
        }
    }

    fn parse(f: &Fixture) -> Result<&BootInfo, BootInfoError> {
        // SAFETY: the fixture owns the block and everything it points to.
        unsafe { BootInfo::from_ptr(&*f.info) }
    }

    #[test]
    fn magic_is_the_documented_value() {
        assert_eq!(BootInfo::MAGIC, 0x3149_4253_5558_454E);
    }

    #[test]
    fn parses_a_valid_block() {
        let f = fixture(&[b"hello", b"", "wörld".as_bytes()]);
        let info = parse(&f).unwrap();
        assert_eq!(info.version(), 1);
        assert_eq!(info.ram_size(), 0x800_0000);
        assert_eq!(info.heap(), 0x20_0000..0x620_0000);
        assert_eq!(info.stack_top(), 0x800_0000);
        assert_eq!(info.window(), Some(0xC000_0000..0xC100_0000));
        assert_eq!(info.device(), Some(0xE000_0000..0xE000_1000));
        assert_eq!(info.net_device(), Some(0xE000_1000..0xE000_2000));
        assert_eq!(info.serial_port(), 0x3F8);
        assert_eq!(info.exit_port(), 0xF4);
        assert_eq!(info.argc(), 3);
        let args: Vec<&str> = info.args().collect();
        assert_eq!(args, ["hello", "", "wörld"]);
        assert_eq!(info.args().len(), 3);
        assert_eq!(info.args().next_back(), Some("wörld"));
        assert_eq!(info.arg(0), Some("hello"));
        assert_eq!(info.arg(3), None);
        let kinds: Vec<MemoryKind> = info.memory_map().iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                MemoryKind::Ram,
                MemoryKind::IoWindow,
                MemoryKind::Mmio,
                MemoryKind::Reserved,
                MemoryKind::Unknown(9)
            ]
        );
        assert_eq!(info.memory_map()[1].range(), 0xC000_0000..0xC100_0000);
    }

    #[test]
    fn the_generation_record_is_after_the_block_within_its_page() {
        let mut f = fixture(&[]);
        let block = addr(&*f.info);
        let fits = |block: u64, offset: u64| (block % 4096) + offset + 48 <= 4096;
        let expected = fits(block, 0x80).then_some(block + 0x80);
        assert_eq!(parse(&f).unwrap().generation_record(), expected);
        // None from a VMM without the record (the field was reserved, 0), inside the block,
        // misaligned, or past the page.
        for offset in [0u32, 8, 127, 0x84, 4096 - 40, u32::MAX] {
            f.info.generation_offset = offset;
            assert_eq!(parse(&f).unwrap().generation_record(), None, "{offset:#x}");
        }
    }

    #[test]
    fn no_arguments_and_no_window() {
        let mut f = fixture(&[]);
        f.info.window_base = 0;
        f.info.window_size = 0;
        f.info.device_base = 0;
        f.info.net_device_base = 0;
        f.info.mem_map = 0;
        f.info.mem_map_len = 0;
        let info = parse(&f).unwrap();
        assert_eq!(info.argc(), 0);
        assert_eq!(info.args().next(), None);
        assert_eq!(info.window(), None);
        assert_eq!(info.device(), None);
        assert_eq!(info.net_device(), None);
        assert!(info.memory_map().is_empty());
    }

    #[test]
    fn parses_the_documented_byte_layout() {
        // Build the block byte by byte from the ABI document's offset table.
        #[repr(C, align(8))]
        struct Raw([u8; 128]);
        let mut raw = Raw([0; 128]);
        let mut put = |offset: usize, bytes: &[u8]| {
            raw.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, b"NEXUSBI1");
        put(8, &1u32.to_le_bytes());
        put(12, &128u32.to_le_bytes());
        put(16, &0x400_0000u64.to_le_bytes());
        put(24, &0x11_0000u64.to_le_bytes());
        put(32, &0x2000u64.to_le_bytes());
        put(40, &0x400_0000u64.to_le_bytes());
        put(48, &0xC000_0000u64.to_le_bytes());
        put(56, &0x1000u64.to_le_bytes());
        put(64, &0xE000_0000u64.to_le_bytes());
        put(72, &0x200u64.to_le_bytes());
        put(112, &0x3F8u16.to_le_bytes());
        put(114, &0xF4u16.to_le_bytes());
        put(120, &0xE000_1000u64.to_le_bytes());
        let ptr = (&raw as *const Raw).cast::<BootInfo>();
        // SAFETY: `raw` is 128 aligned bytes; no arguments, no memory map.
        let info = unsafe { BootInfo::from_ptr(ptr) }.unwrap();
        assert_eq!(info.ram_size(), 0x400_0000);
        assert_eq!(info.heap(), 0x11_0000..0x11_2000);
        assert_eq!(info.stack_top(), 0x400_0000);
        assert_eq!(info.window(), Some(0xC000_0000..0xC000_1000));
        assert_eq!(info.device(), Some(0xE000_0000..0xE000_0200));
        assert_eq!(info.serial_port(), 0x3F8);
        assert_eq!(info.exit_port(), 0xF4);
        assert_eq!(info.net_device(), Some(0xE000_1000..0xE000_2000));
        assert_eq!(info.argc(), 0);
    }

    #[test]
    fn refuses_bad_blocks() {
        // SAFETY: null is checked before any read.
        let null = unsafe { BootInfo::from_ptr(core::ptr::null()) };
        assert_eq!(null.unwrap_err(), BootInfoError::Null);

        let buf = [0u64; 17];
        let odd = (buf.as_ptr() as *const u8)
            .wrapping_add(4)
            .cast::<BootInfo>();
        // SAFETY: alignment is checked before any read.
        let misaligned = unsafe { BootInfo::from_ptr(odd) };
        assert!(matches!(misaligned, Err(BootInfoError::Misaligned(_))));

        type Corruption = (fn(&mut BootInfo), BootInfoError);
        let cases: [Corruption; 9] = [
            (|i| i.magic = 0, BootInfoError::BadMagic(0)),
            (|i| i.version = 2, BootInfoError::UnsupportedVersion(2)),
            (|i| i.size = 120, BootInfoError::TooSmall(120)),
            (|i| i.argv = 0, BootInfoError::BadArgv),
            (|i| i.argv += 4, BootInfoError::BadArgv),
            (|i| i.argv = !7, BootInfoError::BadArgv),
            (|i| i.mem_map = 0, BootInfoError::BadMemoryMap),
            (|i| i.mem_map += 1, BootInfoError::BadMemoryMap),
            (|i| i.heap_size = u64::MAX, BootInfoError::BadHeap),
        ];
        for (corrupt, expected) in cases {
            let mut f = fixture(&[b"a"]);
            corrupt(&mut f.info);
            assert_eq!(parse(&f).unwrap_err(), expected);
        }
    }

    #[test]
    fn refuses_bad_arguments() {
        let f = fixture(&[b"ok", b"\xff\xfe"]);
        assert_eq!(parse(&f).unwrap_err(), BootInfoError::ArgNotUtf8(1));

        let mut f = fixture(&[b"ok", b"x"]);
        f._argv[1].ptr = 0;
        assert_eq!(parse(&f).unwrap_err(), BootInfoError::BadArg(1));

        let mut f = fixture(&[b"x"]);
        f._argv[0].len = u64::MAX;
        assert_eq!(parse(&f).unwrap_err(), BootInfoError::BadArg(0));
    }

    #[test]
    fn errors_display() {
        let text = std::format!("{}", BootInfoError::BadMagic(0x1234));
        assert_eq!(text, "bad boot-info magic 0x0000000000001234");
        let text = std::format!("{}", BootInfoError::UnsupportedVersion(7));
        assert_eq!(text, "unsupported boot-info version 7");
    }
}
