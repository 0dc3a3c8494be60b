//! The I/O window: its mapping, its buffer allocator and the buffers it hands out.
//!
//! - [`WindowMapping`] is where the window is in this program's address space: the only type
//!   in this module with `unsafe` inside. It translates window offsets to pointers and
//!   guest-physical addresses, and gives the virtqueue atomic access to its ring fields.
//! - [`WindowAllocator`] manages the window's buffer area (everything after the rings) as
//!   offsets: first fit, 64-byte granules, coalescing free. Its bookkeeping lives in guest
//!   RAM, never in the window, which the backend can write.
//! - [`WindowBuf`] is one allocated buffer: a zero-copy `&[u8]`/`&mut [u8]` view of window
//!   memory that goes back to the allocator when dropped.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::RefCell;
use core::fmt;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use nexus_ring::SegmentRef;

use crate::error::{Error, Result};

/// The I/O window as mapped in this program: `size` bytes at `ptr`, which the device knows
/// as guest-physical `[base, base + size)`.
///
/// Identity for a micro-guest (`ptr == base`); a `/dev/mem` mapping in a Linux process; the
/// window's memfd mapped by a host process (`nexus-loopback`); a heap block in tests. A
/// mapping that must be undone when the last buffer goes carries its owner
/// ([`with_owner`](Self::with_owner)).
#[derive(Debug)]
pub struct WindowMapping {
    ptr: NonNull<u8>,
    base: u64,
    size: usize,
    /// Whatever keeps the memory mapped (dropped with the last buffer of the window).
    owner: Option<Rc<dyn Any>>,
}

impl WindowMapping {
    /// Alignment required of the mapping's pointer and guest-physical base.
    pub const ALIGN: usize = 64;

    /// The window `[base, base + size)` (guest-physical), mapped at `ptr`.
    ///
    /// Fails if `ptr` is null, `ptr` or `base` is not [`Self::ALIGN`]-aligned, `size` is 0,
    /// or the range does not fit the address space.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `size` bytes for as long as the mapping
    /// and any [`WindowBuf`] of it live; no other part of this program may access that memory
    /// (the mapping hands out the only references to it); the only other party writing it is
    /// the device, following the protocol: it writes rings and the writable buffers of chains
    /// in flight, nothing else.
    pub unsafe fn new(ptr: *mut u8, base: u64, size: u64) -> Result<Self> {
        let bad = Error::BadMapping {
            what: "window",
            addr: base,
            size,
        };
        let ptr = NonNull::new(ptr).ok_or(bad.clone())?;
        let size_usize = usize::try_from(size).map_err(|_| bad.clone())?;
        if size == 0
            || ptr.as_ptr().addr() % Self::ALIGN != 0
            || base % Self::ALIGN as u64 != 0
            || base.checked_add(size).is_none()
            || ptr.as_ptr().addr().checked_add(size_usize).is_none()
            || size_usize > isize::MAX as usize
        {
            return Err(bad);
        }
        Ok(Self {
            ptr,
            base,
            size: size_usize,
            owner: None,
        })
    }

    /// Keeps `owner` alive as long as this mapping and every [`WindowBuf`] of it: the owner of
    /// the memory in a program that maps the window itself — a `/dev/mem` mapping in a Linux
    /// process, the window memfd's mapping in a host process (`nexus-loopback`) — whose drop
    /// unmaps it. The client and its buffers share the mapping, so the memory stays mapped
    /// until the last of them is gone, whatever order they are dropped in.
    pub fn with_owner(mut self, owner: Rc<dyn Any>) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The window at guest-physical `base` in an identity-mapped guest (a micro-guest).
    ///
    /// # Safety
    ///
    /// As for [`Self::new`], with `ptr` the virtual address `base`.
    pub unsafe fn identity(base: u64, size: u64) -> Result<Self> {
        let addr = usize::try_from(base).map_err(|_| Error::BadMapping {
            what: "window",
            addr: base,
            size,
        })?;
        let ptr = core::ptr::with_exposed_provenance_mut::<u8>(addr);
        // SAFETY: the caller's guarantee is `new`'s.
        unsafe { Self::new(ptr, base, size) }
    }

    /// Guest-physical base of the window.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Size of the window in bytes.
    pub const fn size(&self) -> usize {
        self.size
    }

    /// The guest-physical address of window offset `offset`.
    pub const fn gpa(&self, offset: usize) -> u64 {
        self.base + offset as u64
    }

    /// A pointer to `[offset, offset + len)`; panics if that is not inside the window (a
    /// driver bug: every offset comes from the ring layout or the allocator).
    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "window access {offset:#x}+{len:#x} outside the window"
        );
        // SAFETY: `offset <= size`, and `new` checked that `ptr + size` fits the address
        // space and that the whole range is one allocation (the caller's guarantee).
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The aligned pointer to a `T`-sized ring field at `offset`.
    fn field<T>(&self, offset: usize) -> *mut T {
        let ptr = self.at(offset, size_of::<T>()).cast::<T>();
        assert!(ptr.is_aligned(), "misaligned ring field at {offset:#x}");
        ptr
    }

    /// Atomically loads the `u16` ring field at `offset`.
    pub(crate) fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        // SAFETY: aligned and inside the window (`field`); ring fields are only ever accessed
        // atomically (after the non-atomic zeroing at setup, which happens before in this
        // thread), and the memory lives as long as `self`.
        unsafe { AtomicU16::from_ptr(self.field(offset)) }.load(order)
    }

    /// Atomically stores the `u16` ring field at `offset`.
    pub(crate) fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        // SAFETY: as for `load_u16`.
        unsafe { AtomicU16::from_ptr(self.field(offset)) }.store(value, order)
    }

    /// Atomically loads the `u32` ring field at `offset`.
    pub(crate) fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        // SAFETY: as for `load_u16`.
        unsafe { AtomicU32::from_ptr(self.field(offset)) }.load(order)
    }

    /// Atomically stores the `u32` ring field at `offset`.
    pub(crate) fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        // SAFETY: as for `load_u16`.
        unsafe { AtomicU32::from_ptr(self.field(offset)) }.store(value, order)
    }

    /// Atomically stores the `u64` ring field at `offset`.
    pub(crate) fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        // SAFETY: as for `load_u16`.
        unsafe { AtomicU64::from_ptr(self.field(offset)) }.store(value, order)
    }

    /// Zeroes `[offset, offset + len)` (ring memory, before the device is told about it).
    pub(crate) fn zero(&self, offset: usize, len: usize) {
        let ptr = self.at(offset, len);
        // SAFETY: inside the window (`at`); ring memory, which no reference points to and the
        // device does not use while the queue is being set up.
        unsafe { ptr.write_bytes(0, len) }
    }

    /// The bytes `[offset, offset + len)`.
    ///
    /// # Safety
    ///
    /// The caller owns the range exclusively (an allocator extent) and no `&mut` to it lives.
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let ptr = self.at(offset, len);
        // SAFETY: inside the window and valid (`new`'s contract); window memory is always
        // initialised; exclusivity is the caller's guarantee.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    /// The bytes `[offset, offset + len)`, mutable.
    ///
    /// # Safety
    ///
    /// The caller owns the range exclusively (an allocator extent) and no other reference to
    /// it lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        let ptr = self.at(offset, len);
        // SAFETY: as for `bytes`, and the caller guarantees no other reference.
        unsafe { core::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// A free range of the buffer area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: usize,
    len: usize,
}

impl Extent {
    const fn end(&self) -> usize {
        self.start + self.len
    }
}

/// The window's buffer allocator: first fit over an address-ordered list of free extents,
/// [`Self::GRANULE`]-byte granules, neighbours merged on free.
///
/// It deals in window offsets only and keeps its list in guest RAM (the window is writable by
/// the backend, so nothing of the allocator's may live there). Freeing everything gives back
/// one extent: the window does not fragment across invocations.
#[derive(Debug, Clone)]
pub struct WindowAllocator {
    start: usize,
    end: usize,
    free: Vec<Extent>,
    free_bytes: usize,
}

const fn align_down(value: usize, align: usize) -> usize {
    value & !(align - 1)
}

fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(align_down(value.checked_add(align - 1)?, align))
}

impl WindowAllocator {
    /// Size and alignment unit of every allocation.
    pub const GRANULE: usize = 64;

    /// An allocator for `[start, end)` (rounded inwards to granules).
    pub fn new(start: usize, end: usize) -> Self {
        let start = align_up(start, Self::GRANULE).unwrap_or(usize::MAX);
        let end = align_down(end, Self::GRANULE);
        let mut free = Vec::new();
        let mut free_bytes = 0;
        if end > start {
            free.push(Extent {
                start,
                len: end - start,
            });
            free_bytes = end - start;
        }
        Self {
            start,
            end: end.max(start),
            free,
            free_bytes,
        }
    }

    /// Bytes managed.
    pub fn capacity(&self) -> usize {
        self.end - self.start
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    /// The largest free block.
    pub fn largest_free(&self) -> usize {
        self.free.iter().map(|e| e.len).max().unwrap_or(0)
    }

    /// Allocates at least `len` bytes (at least one granule); returns `(offset, capacity)`.
    pub fn allocate(&mut self, len: usize) -> Option<(usize, usize)> {
        let capacity = align_up(len.max(1), Self::GRANULE)?;
        let index = self.free.iter().position(|e| e.len >= capacity)?;
        Some(self.take(index, capacity))
    }

    /// Allocates as much as possible, up to `max` bytes (rounded down to granules), from the
    /// largest free block; returns `(offset, capacity)`.
    pub fn allocate_largest(&mut self, max: usize) -> Option<(usize, usize)> {
        let max = align_down(max, Self::GRANULE);
        let (index, extent) = self.largest_extent()?;
        let capacity = extent.len.min(max);
        if capacity == 0 {
            return None;
        }
        Some(self.take(index, capacity))
    }

    /// Where [`allocate_largest`](Self::allocate_largest) would allocate: the offset of the
    /// largest free block (the lowest of equals); `None` if nothing is free.
    pub fn largest_free_offset(&self) -> Option<usize> {
        self.largest_extent().map(|(_, extent)| extent.start)
    }

    /// The largest free extent (the first of equals) and its index.
    fn largest_extent(&self) -> Option<(usize, &Extent)> {
        self.free
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (e.len, usize::MAX - i))
    }

    /// Takes `capacity` bytes from the front of free extent `index`.
    fn take(&mut self, index: usize, capacity: usize) -> (usize, usize) {
        let extent = &mut self.free[index];
        let offset = extent.start;
        extent.start += capacity;
        extent.len -= capacity;
        if extent.len == 0 {
            self.free.remove(index);
        }
        self.free_bytes -= capacity;
        (offset, capacity)
    }

    /// Shrinks the allocation `(offset, capacity)` to hold `len` bytes, giving the tail back;
    /// returns the new capacity.
    pub fn shrink(&mut self, offset: usize, capacity: usize, len: usize) -> usize {
        let Some(new_capacity) = align_up(len.max(1), Self::GRANULE) else {
            return capacity;
        };
        if new_capacity >= capacity {
            return capacity;
        }
        self.free(offset + new_capacity, capacity - new_capacity);
        new_capacity
    }

    /// Frees the allocation `(offset, capacity)`. A range that is not a live allocation
    /// (outside the area, misaligned, overlapping free space) is ignored: the allocator leaks
    /// rather than hand the same bytes out twice.
    pub fn free(&mut self, offset: usize, capacity: usize) {
        let Some(end) = offset.checked_add(capacity) else {
            return;
        };
        if capacity == 0
            || offset < self.start
            || end > self.end
            || offset % Self::GRANULE != 0
            || capacity % Self::GRANULE != 0
        {
            debug_assert!(
                false,
                "freeing {offset:#x}+{capacity:#x}: not an allocation"
            );
            return;
        }
        let index = self.free.partition_point(|e| e.start < offset);
        let merge_prev = match index.checked_sub(1).map(|i| self.free[i]) {
            Some(prev) if prev.end() > offset => {
                debug_assert!(false, "double free of {offset:#x}");
                return;
            }
            Some(prev) => prev.end() == offset,
            None => false,
        };
        let merge_next = match self.free.get(index) {
            Some(next) if next.start < end => {
                debug_assert!(false, "double free of {offset:#x}");
                return;
            }
            Some(next) => next.start == end,
            None => false,
        };
        match (merge_prev, merge_next) {
            (true, true) => {
                let next = self.free.remove(index);
                self.free[index - 1].len += capacity + next.len;
            }
            (true, false) => self.free[index - 1].len += capacity,
            (false, true) => {
                let next = &mut self.free[index];
                next.start = offset;
                next.len += capacity;
            }
            (false, false) => self.free.insert(
                index,
                Extent {
                    start: offset,
                    len: capacity,
                },
            ),
        }
        self.free_bytes += capacity;
    }

    /// Checks the invariants; returns the number of free extents.
    #[cfg(test)]
    pub(crate) fn check(&self) -> usize {
        let mut total = 0;
        for pair in self.free.windows(2) {
            assert!(
                pair[0].end() < pair[1].start,
                "unsorted or unmerged: {pair:?}"
            );
        }
        for e in &self.free {
            assert!(e.len > 0 && e.start >= self.start && e.end() <= self.end);
            assert_eq!(e.start % Self::GRANULE, 0);
            assert_eq!(e.len % Self::GRANULE, 0);
            total += e.len;
        }
        assert_eq!(total, self.free_bytes);
        self.free.len()
    }
}

/// The window and its allocator, shared by the driver and every [`WindowBuf`].
#[derive(Debug)]
pub(crate) struct SharedWindow {
    pub(crate) mapping: WindowMapping,
    allocator: RefCell<WindowAllocator>,
}

impl SharedWindow {
    /// The window, with `[buffers_start, size)` given to the allocator.
    pub(crate) fn new(mapping: WindowMapping, buffers_start: usize) -> Rc<Self> {
        let allocator = WindowAllocator::new(buffers_start, mapping.size());
        Rc::new(Self {
            mapping,
            allocator: RefCell::new(allocator),
        })
    }

    /// A buffer of at least `len` bytes.
    pub(crate) fn alloc(self: &Rc<Self>, len: usize) -> Result<WindowBuf> {
        let mut allocator = self.allocator.borrow_mut();
        match allocator.allocate(len) {
            Some((offset, capacity)) => Ok(WindowBuf {
                window: Rc::clone(self),
                offset,
                capacity,
                len: 0,
            }),
            None => Err(Error::OutOfWindowMemory {
                requested: len as u64,
                largest: allocator.largest_free() as u64,
            }),
        }
    }

    /// The biggest buffer there is, up to `max` bytes.
    pub(crate) fn alloc_largest(self: &Rc<Self>, max: usize) -> Result<WindowBuf> {
        let mut allocator = self.allocator.borrow_mut();
        match allocator.allocate_largest(max) {
            Some((offset, capacity)) => Ok(WindowBuf {
                window: Rc::clone(self),
                offset,
                capacity,
                len: 0,
            }),
            None => Err(Error::OutOfWindowMemory {
                requested: max as u64,
                largest: allocator.largest_free() as u64,
            }),
        }
    }

    /// A copy of the allocator's state (statistics, tests).
    pub(crate) fn allocator(&self) -> WindowAllocator {
        self.allocator.borrow().clone()
    }
}

/// A buffer in the I/O window: what `get` returns and `put_buf` sends.
///
/// It dereferences to its first [`len`](Self::len) bytes (`&[u8]`, `&mut [u8]`) — a
/// zero-copy view of window memory — and has a fixed [`capacity`](Self::capacity); fill it in
/// place through [`full_mut`](Self::full_mut) and [`set_len`](Self::set_len), or with
/// [`extend_from_slice`](Self::extend_from_slice). Dropping it (or [`free`](Self::free))
/// returns its memory to the window allocator.
pub struct WindowBuf {
    window: Rc<SharedWindow>,
    offset: usize,
    capacity: usize,
    len: usize,
}

impl WindowBuf {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Guest-physical address of the first byte (what the device sees).
    pub fn gpa(&self) -> u64 {
        self.window.mapping.gpa(self.offset)
    }

    /// Offset of the first byte from the window base.
    pub fn window_offset(&self) -> usize {
        self.offset
    }

    /// Sets the data length; panics if `len > capacity`. Window memory is always
    /// initialised, so any length up to the capacity is valid.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "length {len} beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Shortens the data to `len` bytes (no effect if already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`, if it fits the capacity.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<()> {
        let start = self.len;
        let end = start
            .checked_add(data.len())
            .filter(|&end| end <= self.capacity)
            .ok_or(Error::OutOfWindowMemory {
                requested: data.len() as u64,
                largest: (self.capacity - self.len) as u64,
            })?;
        self.full_mut()[start..end].copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    /// The data, `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[offset, offset + capacity)` is this buffer's allocator extent: no other
        // buffer or ring overlaps it, and `&self` excludes a `&mut` through this buffer. The
        // device writes it only while it is in a request in flight, and the driver holds the
        // buffer (by `&mut` or by value) for the whole of such a request.
        unsafe { self.window.mapping.bytes(self.offset, self.len) }
    }

    /// The data, `len` bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` excludes every other reference to the extent.
        unsafe { self.window.mapping.bytes_mut(self.offset, self.len) }
    }

    /// The whole capacity, mutable: fill it in place, then [`set_len`](Self::set_len).
    pub fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_mut_slice`.
        unsafe { self.window.mapping.bytes_mut(self.offset, self.capacity) }
    }

    /// Returns the buffer to the window allocator now (as dropping it does).
    pub fn free(self) {}

    /// Gives the capacity beyond `len` back to the allocator.
    pub fn shrink_to_fit(&mut self) {
        self.capacity =
            self.window
                .allocator
                .borrow_mut()
                .shrink(self.offset, self.capacity, self.len);
    }

    /// The data as a segment (`len` bytes; `None` when empty: segments are non-empty).
    pub(crate) fn data_segment(&self) -> Option<SegmentRef> {
        segment(self.gpa(), self.len)
    }

    /// `[offset, offset + len)` of the buffer as a segment.
    pub(crate) fn sub_segment(&self, offset: usize, len: usize) -> Option<SegmentRef> {
        if offset.checked_add(len)? > self.capacity {
            return None;
        }
        segment(self.gpa() + offset as u64, len)
    }
}

/// A non-empty segment whose length fits a descriptor.
fn segment(addr: u64, len: usize) -> Option<SegmentRef> {
    match u32::try_from(len) {
        Ok(len) if len > 0 => Some(SegmentRef::new(addr, len)),
        _ => None,
    }
}

impl Drop for WindowBuf {
    fn drop(&mut self) {
        if let Ok(mut allocator) = self.window.allocator.try_borrow_mut() {
            allocator.free(self.offset, self.capacity);
        }
    }
}

impl Deref for WindowBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for WindowBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for WindowBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for WindowBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for WindowBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowBuf")
            .field("gpa", &format_args!("{:#x}", self.gpa()))
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::alloc::{Layout, alloc_zeroed, dealloc};

    /// Page-aligned host memory standing in for a window (freed on drop).
    pub(crate) struct HostMemory {
        ptr: *mut u8,
        layout: Layout,
    }

    impl HostMemory {
        pub(crate) fn new(size: usize) -> Self {
            let layout = Layout::from_size_align(size, 4096).unwrap();
            // SAFETY: non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Self { ptr, layout }
        }

        pub(crate) fn ptr(&self) -> *mut u8 {
            self.ptr
        }

        pub(crate) fn size(&self) -> usize {
            self.layout.size()
        }
    }

    impl Drop for HostMemory {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr, self.layout) }
        }
    }

    #[test]
    fn allocate_free_coalesce_first_fit() {
        let mut a = WindowAllocator::new(0x2000, 0x1_0000);
        assert_eq!(a.capacity(), 0xE000);
        let (x, cx) = a.allocate(1).unwrap();
        assert_eq!((x, cx), (0x2000, 64));
        let (y, cy) = a.allocate(65).unwrap();
        assert_eq!((y, cy), (0x2040, 128));
        let (z, cz) = a.allocate(0).unwrap();
        assert_eq!((z, cz), (0x20C0, 64));
        assert_eq!(a.check(), 1);
        a.free(y, cy);
        assert_eq!(a.check(), 2);
        // First fit reuses the hole.
        assert_eq!(a.allocate(100).unwrap(), (0x2040, 128));
        a.free(0x2040, 128);
        a.free(x, cx);
        assert_eq!(a.check(), 2);
        a.free(z, cz);
        assert_eq!(a.check(), 1);
        assert_eq!(a.free_bytes(), a.capacity());
    }

    #[test]
    fn largest_and_shrink() {
        let mut a = WindowAllocator::new(0, 0x1000);
        assert_eq!(a.largest_free_offset(), Some(0));
        let (small, cs) = a.allocate(64).unwrap();
        assert_eq!(a.largest_free_offset(), Some(64));
        let (big, cb) = a.allocate_largest(usize::MAX).unwrap();
        assert_eq!((big, cb), (64, 0x1000 - 64));
        assert!(a.allocate(1).is_none());
        assert!(a.allocate_largest(usize::MAX).is_none());
        assert_eq!(a.largest_free_offset(), None);
        let cb = a.shrink(big, cb, 100);
        assert_eq!(cb, 128);
        assert_eq!(a.free_bytes(), 0x1000 - 64 - 128);
        // Capped by `max`.
        let (_, c) = a.allocate_largest(1000).unwrap();
        assert_eq!(c, 960);
        a.free(192, 960);
        a.free(big, cb);
        a.free(small, cs);
        assert_eq!(a.check(), 1);
        assert_eq!(a.free_bytes(), 0x1000);
        assert!(a.allocate_largest(63).is_none());
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn bad_frees_are_ignored() {
        let mut a = WindowAllocator::new(0, 0x1000);
        let (x, c) = a.allocate(64).unwrap();
        a.free(x, c);
        a.free(x, c);
        a.free(0x2000, 64);
        a.free(3, 64);
        assert_eq!(a.check(), 1);
    }

    #[test]
    fn random_workload_returns_everything() {
        let mut a = WindowAllocator::new(0x2000, 0x10_0000);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut live: Vec<(usize, usize)> = Vec::new();
        for step in 0..5000 {
            if live.is_empty() || rand(3) != 0 {
                if let Some((o, c)) = a.allocate(1 + rand(9000)) {
                    assert!(live.iter().all(|&(lo, lc)| o + c <= lo || lo + lc <= o));
                    live.push((o, c));
                }
            } else {
                let (o, c) = live.swap_remove(rand(live.len()));
                if rand(2) == 0 {
                    let c2 = a.shrink(o, c, rand(c));
                    a.free(o, c2);
                } else {
                    a.free(o, c);
                }
            }
            if step % 250 == 0 {
                a.check();
            }
        }
        for (o, c) in live.drain(..) {
            a.free(o, c);
        }
        assert_eq!(a.check(), 1);
        assert_eq!(a.free_bytes(), a.capacity());
    }

    #[test]
    fn window_buf_views_and_frees() {
        let memory = HostMemory::new(0x4000);
        // SAFETY: `memory` outlives the mapping and every buffer; nothing else uses it.
        let mapping =
            unsafe { WindowMapping::new(memory.ptr(), 0xC000_0000, memory.size() as u64) }.unwrap();
        let window = SharedWindow::new(mapping, 0x2000);
        let mut a = window.alloc(10).unwrap();
        assert_eq!(a.capacity(), 64);
        assert_eq!(a.gpa(), 0xC000_2000);
        assert!(a.is_empty());
        a.extend_from_slice(b"hello").unwrap();
        a.extend_from_slice(b", world").unwrap();
        assert_eq!(&a[..], b"hello, world");
        a[0] = b'H';
        assert!(a.extend_from_slice(&[0; 60]).is_err());
        // The bytes really are in the window.
        // SAFETY: reading the host memory behind the buffer, no `&mut` alive.
        let raw = unsafe { core::slice::from_raw_parts(memory.ptr().add(0x2000), 12) };
        assert_eq!(raw, b"Hello, world");
        let mut b = window.alloc_largest(usize::MAX).unwrap();
        assert_eq!(b.capacity(), 0x2000 - 64);
        b.full_mut()[..3].copy_from_slice(b"abc");
        b.set_len(3);
        b.shrink_to_fit();
        assert_eq!(b.capacity(), 64);
        assert_eq!(&*b, b"abc");
        assert_eq!(b.data_segment(), Some(SegmentRef::new(0xC000_2040, 3)));
        assert_eq!(b.sub_segment(60, 4), Some(SegmentRef::new(0xC000_207C, 4)));
        assert_eq!(b.sub_segment(60, 5), None);
        drop(a);
        b.free();
        assert_eq!(window.allocator().free_bytes(), 0x2000);
        assert_eq!(window.allocator().check(), 1);
    }

    #[test]
    fn mapping_refuses_bad_parameters() {
        let memory = HostMemory::new(0x1000);
        // SAFETY: refused before any use.
        unsafe {
            assert!(WindowMapping::new(core::ptr::null_mut(), 0, 0x1000).is_err());
            assert!(WindowMapping::new(memory.ptr().add(8), 0, 0x100).is_err());
            assert!(WindowMapping::new(memory.ptr(), 8, 0x100).is_err());
            assert!(WindowMapping::new(memory.ptr(), 0, 0).is_err());
            assert!(WindowMapping::new(memory.ptr(), u64::MAX - 63, 0x1000).is_err());
        }
    }
}
