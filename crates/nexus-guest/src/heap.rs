//! A first-fit free-list heap with coalescing.
//!
//! [`FreeListHeap`] manages one contiguous region of memory. It keeps no header on allocated
//! blocks — the caller gives the [`Layout`] back on free, as [`core::alloc::GlobalAlloc`]
//! does — and threads a singly linked list of free blocks through the free memory itself,
//! sorted by address:
//!
//! - every block (free or allocated) is a multiple of [`FreeListHeap::GRANULE`] (16) bytes
//!   and starts on a 16-byte boundary, so a free block always has room for its header
//!   (`size`, `next`);
//! - allocation walks the list and takes the first block that can hold the request at the
//!   requested alignment; the padding in front of an over-aligned allocation and the unused
//!   tail stay on the list as free blocks;
//! - freeing inserts the block at its address and merges it with its neighbours, so freeing
//!   everything gives back one block: the heap does not fragment across invocations that
//!   free what they allocate;
//! - growing in place takes the free block right after an allocation when it is big enough;
//!   shrinking in place gives the tail back.
//!
//! The heap is not thread-safe by itself; [`crate::rt::GuestAllocator`] wraps it in a lock.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// The header of a free block, stored in the block's first bytes.
#[repr(C)]
struct FreeBlock {
    /// Size of the block in bytes, a multiple of [`FreeListHeap::GRANULE`].
    size: usize,
    /// The next free block (higher address), or null.
    next: *mut FreeBlock,
}

const _: () = assert!(core::mem::size_of::<FreeBlock>() <= FreeListHeap::GRANULE);

/// A first-fit, address-ordered, coalescing free-list heap over one region of memory.
#[derive(Debug)]
pub struct FreeListHeap {
    /// Any pointer into the region, to derive block pointers from (provenance).
    base: *mut u8,
    /// First free block, or null.
    head: *mut FreeBlock,
    /// Start of the managed region (aligned to `GRANULE`).
    start: usize,
    /// End of the managed region (exclusive, aligned to `GRANULE`).
    end: usize,
    /// Bytes currently on the free list.
    free: usize,
}

// SAFETY: the heap owns its region exclusively (the contract of `init`); its raw pointers
// point only into that region, so moving the heap to another thread moves that ownership.
unsafe impl Send for FreeListHeap {}

impl Default for FreeListHeap {
    fn default() -> Self {
        Self::empty()
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None` on overflow.
const fn align_up(value: usize, align: usize) -> Option<usize> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

impl FreeListHeap {
    /// Allocation granule and smallest block: every block size and address is a multiple.
    pub const GRANULE: usize = 16;

    /// A heap with no memory: every allocation fails until [`Self::init`].
    pub const fn empty() -> Self {
        Self {
            base: ptr::null_mut(),
            head: ptr::null_mut(),
            start: 0,
            end: 0,
            free: 0,
        }
    }

    /// Gives the heap the `size` bytes at `base`, forgetting any previous region and every
    /// allocation made from it. Bytes before the first 16-byte boundary and after the last
    /// one are not used.
    ///
    /// # Safety
    ///
    /// `[base, base + size)` must be valid for reads and writes, must not be used by anything
    /// else while the heap (or any allocation from it) is in use, and must not wrap around
    /// the address space.
    pub unsafe fn init(&mut self, base: *mut u8, size: usize) {
        *self = Self::empty();
        let Some(start) = align_up(base.addr(), Self::GRANULE) else {
            return;
        };
        let end = base.addr().saturating_add(size) & !(Self::GRANULE - 1);
        if end <= start {
            return;
        }
        self.base = base;
        self.start = start;
        self.end = end;
        let block = self.block_at(start);
        // SAFETY: `start..end` lies in the caller's region, is 16-byte aligned and at least
        // `GRANULE` bytes long, so the header fits.
        unsafe {
            block.write(FreeBlock {
                size: end - start,
                next: ptr::null_mut(),
            })
        };
        self.head = block;
        self.free = end - start;
    }

    /// Size of the managed region in bytes.
    pub const fn size(&self) -> usize {
        self.end - self.start
    }

    /// Bytes currently free (including the rounding of allocations, excluding nothing).
    pub const fn free_bytes(&self) -> usize {
        self.free
    }

    /// Bytes currently allocated, counted in whole granules.
    pub const fn used_bytes(&self) -> usize {
        self.size() - self.free
    }

    /// A block pointer for `addr`, with the region's provenance.
    fn block_at(&self, addr: usize) -> *mut FreeBlock {
        self.base.with_addr(addr).cast()
    }

    /// The size a layout occupies on the heap, or `None` if it cannot.
    fn block_size(layout: Layout) -> Option<usize> {
        align_up(layout.size().max(1), Self::GRANULE)
    }

    /// Allocates a block for `layout`, or returns `None` if no free block is large enough.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let size = Self::block_size(layout)?;
        let align = layout.align().max(Self::GRANULE);
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut cur = self.head;
        while !cur.is_null() {
            // SAFETY: every pointer on the list points at a valid header inside the region
            // (the list invariant kept by `init`, `allocate` and `insert_free`).
            let (block_size, next) = unsafe { ((*cur).size, (*cur).next) };
            let block_start = cur.addr();
            let block_end = block_start + block_size;
            if let Some(alloc_start) = align_up(block_start, align) {
                if alloc_start
                    .checked_add(size)
                    .is_some_and(|e| e <= block_end)
                {
                    let alloc_end = alloc_start + size;
                    // Both are multiples of GRANULE, so each piece is 0 or ≥ GRANULE bytes.
                    let front = alloc_start - block_start;
                    let back = block_end - alloc_end;
                    let after = if back > 0 {
                        let tail = self.block_at(alloc_end);
                        // SAFETY: `[alloc_end, block_end)` is part of the free block, at
                        // least GRANULE bytes and 16-byte aligned.
                        unsafe { tail.write(FreeBlock { size: back, next }) };
                        tail
                    } else {
                        next
                    };
                    if front > 0 {
                        // SAFETY: `cur` is a valid header (list invariant); it keeps the front.
                        unsafe {
                            (*cur).size = front;
                            (*cur).next = after;
                        }
                    } else {
                        self.link(prev, after);
                    }
                    self.free -= size;
                    return NonNull::new(self.base.with_addr(alloc_start));
                }
            }
            prev = cur;
            cur = next;
        }
        None
    }

    /// Makes `prev.next` (or the head, if `prev` is null) point at `next`.
    fn link(&mut self, prev: *mut FreeBlock, next: *mut FreeBlock) {
        if prev.is_null() {
            self.head = next;
        } else {
            // SAFETY: a non-null `prev` is a valid header on the list.
            unsafe { (*prev).next = next };
        }
    }

    /// Puts `[addr, addr + size)` back on the free list, merging with its neighbours.
    /// A range outside the heap or overlapping a free block is ignored (leaked) rather than
    /// allowed to corrupt the list.
    fn insert_free(&mut self, addr: usize, size: usize) {
        if size == 0
            || addr % Self::GRANULE != 0
            || addr < self.start
            || addr.checked_add(size).is_none_or(|end| end > self.end)
        {
            return;
        }
        let end = addr + size;
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut cur = self.head;
        while !cur.is_null() && cur.addr() < addr {
            prev = cur;
            // SAFETY: list pointers are valid headers (list invariant).
            cur = unsafe { (*cur).next };
        }
        let prev_end = if prev.is_null() {
            self.start
        } else {
            // SAFETY: a non-null `prev` is a valid header on the list.
            prev.addr() + unsafe { (*prev).size }
        };
        if prev_end > addr || (!cur.is_null() && cur.addr() < end) {
            return; // overlaps a free block: a double free or a foreign pointer
        }
        let merges_prev = !prev.is_null() && prev_end == addr;
        let merges_next = !cur.is_null() && cur.addr() == end;
        let (next_size, next_next) = if merges_next {
            // SAFETY: `cur` is non-null here, so a valid header on the list.
            unsafe { ((*cur).size, (*cur).next) }
        } else {
            (0, cur)
        };
        if merges_prev {
            // SAFETY: `prev` is a valid header; the merged block covers only free memory.
            unsafe {
                (*prev).size += size + next_size;
                (*prev).next = next_next;
            }
        } else {
            let block = self.block_at(addr);
            // SAFETY: `[addr, end)` is inside the region, aligned, at least GRANULE bytes and
            // no longer allocated (the caller gives it back), so the header may go there.
            unsafe {
                block.write(FreeBlock {
                    size: size + next_size,
                    next: next_next,
                })
            };
            self.link(prev, block);
        }
        self.free += size;
    }

    /// Frees a block from [`Self::allocate`] (possibly resized by [`Self::reallocate_in_place`]).
    ///
    /// # Safety
    ///
    /// `ptr` must have been returned by this heap for `layout` (the layout of its
    /// allocation or of its last successful in-place resize) and not freed since.
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        if let Some(size) = Self::block_size(layout) {
            self.insert_free(ptr.as_ptr().addr(), size);
        }
    }

    /// Resizes a block in place to `new_size` bytes, keeping its alignment. Returns `false`
    /// (and changes nothing) if it cannot grow in place; the caller then moves it.
    ///
    /// # Safety
    ///
    /// As for [`Self::deallocate`]; on success the block's layout becomes `new_size` bytes
    /// with `layout.align()`.
    pub unsafe fn reallocate_in_place(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> bool {
        let (Some(old), Some(new)) = (
            Self::block_size(layout),
            align_up(new_size.max(1), Self::GRANULE),
        ) else {
            return false;
        };
        let addr = ptr.as_ptr().addr();
        if new <= old {
            self.insert_free(addr + new, old - new);
            return true;
        }
        let need = new - old;
        let want = addr + old;
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut cur = self.head;
        while !cur.is_null() && cur.addr() < want {
            prev = cur;
            // SAFETY: list pointers are valid headers (list invariant).
            cur = unsafe { (*cur).next };
        }
        if cur.is_null() || cur.addr() != want {
            return false;
        }
        // SAFETY: `cur` is a valid header.
        let (size, next) = unsafe { ((*cur).size, (*cur).next) };
        if size < need {
            return false;
        }
        let after = if size > need {
            let tail = self.block_at(want + need);
            // SAFETY: the tail is inside the free block, aligned, ≥ GRANULE bytes.
            unsafe {
                tail.write(FreeBlock {
                    size: size - need,
                    next,
                })
            };
            tail
        } else {
            next
        };
        self.link(prev, after);
        self.free -= need;
        true
    }

    /// Walks the free list and checks its invariants: sorted, inside the region, aligned,
    /// fully merged, and summing to `free_bytes`.
    #[cfg(test)]
    fn check(&self) -> usize {
        let mut blocks = 0;
        let mut total = 0;
        let mut last_end = 0;
        let mut cur = self.head;
        while !cur.is_null() {
            // SAFETY: list pointers are valid headers.
            let (size, next) = unsafe { ((*cur).size, (*cur).next) };
            let addr = cur.addr();
            assert!(addr >= self.start && addr + size <= self.end);
            assert_eq!(addr % Self::GRANULE, 0);
            assert_eq!(size % Self::GRANULE, 0);
            assert!(size >= Self::GRANULE);
            assert!(
                blocks == 0 || addr > last_end,
                "unsorted or unmerged free list"
            );
            last_end = addr + size;
            total += size;
            blocks += 1;
            cur = next;
        }
        assert_eq!(total, self.free);
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const ARENA: usize = 64 * 1024;

    #[repr(C, align(4096))]
    struct Arena([u8; ARENA]);

    fn heap(arena: &mut Arena) -> FreeListHeap {
        let mut heap = FreeListHeap::empty();
        // SAFETY: the arena is exclusively the heap's for the test.
        unsafe { heap.init(arena.0.as_mut_ptr(), ARENA) };
        heap
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn empty_heap_fails() {
        let mut heap = FreeListHeap::empty();
        assert!(heap.allocate(layout(8, 8)).is_none());
        assert_eq!(heap.size(), 0);
    }

    #[test]
    fn init_aligns_the_region() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = FreeListHeap::empty();
        // SAFETY: the arena is exclusively the heap's.
        unsafe { heap.init(arena.0.as_mut_ptr().wrapping_add(3), 100) };
        assert_eq!(heap.size(), 80);
        assert_eq!(heap.free_bytes(), heap.size());
        heap.check();
        // SAFETY: as above; a region smaller than a granule gives an empty heap.
        unsafe { heap.init(arena.0.as_mut_ptr().wrapping_add(1), 20) };
        assert_eq!(heap.size(), 0);
        assert!(heap.allocate(layout(1, 1)).is_none());
    }

    #[test]
    fn allocate_free_reuse_and_merge() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        let a = heap.allocate(layout(10, 1)).unwrap();
        let b = heap.allocate(layout(100, 8)).unwrap();
        let c = heap.allocate(layout(16, 16)).unwrap();
        assert_eq!(heap.used_bytes(), 16 + 112 + 16);
        assert_eq!(a.as_ptr().addr() % 16, 0);
        // SAFETY: a, b, c came from this heap with these layouts.
        unsafe {
            heap.deallocate(b, layout(100, 8));
            assert_eq!(heap.check(), 2);
            // First fit: the hole left by `b` is reused.
            let d = heap.allocate(layout(50, 4)).unwrap();
            assert_eq!(d, b);
            heap.deallocate(a, layout(10, 1));
            heap.deallocate(c, layout(16, 16));
            heap.deallocate(d, layout(50, 4));
        }
        assert_eq!(heap.check(), 1);
        assert_eq!(heap.free_bytes(), ARENA);
    }

    #[test]
    fn over_aligned_allocation_keeps_the_padding_free() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        let small = heap.allocate(layout(16, 16)).unwrap();
        let page = heap.allocate(layout(4096, 4096)).unwrap();
        assert_eq!(page.as_ptr().addr() % 4096, 0);
        assert_eq!(heap.used_bytes(), 16 + 4096);
        assert_eq!(heap.check(), 2); // the padding between `small` and `page`, and the tail
        // The padding is reused.
        let filler = heap.allocate(layout(32, 8)).unwrap();
        assert!(filler.as_ptr().addr() < page.as_ptr().addr());
        // SAFETY: all came from this heap with these layouts.
        unsafe {
            heap.deallocate(page, layout(4096, 4096));
            heap.deallocate(small, layout(16, 16));
            heap.deallocate(filler, layout(32, 8));
        }
        assert_eq!(heap.check(), 1);
        assert_eq!(heap.free_bytes(), ARENA);
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        assert!(heap.allocate(layout(ARENA + 1, 1)).is_none());
        let all = heap.allocate(layout(ARENA, 1)).unwrap();
        assert_eq!(heap.free_bytes(), 0);
        assert!(heap.allocate(layout(1, 1)).is_none());
        // SAFETY: from this heap with this layout.
        unsafe { heap.deallocate(all, layout(ARENA, 1)) };
        assert_eq!(heap.free_bytes(), ARENA);
        assert!(heap.allocate(layout(isize::MAX as usize, 1)).is_none());
    }

    #[test]
    fn double_free_and_foreign_pointers_are_ignored() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        let a = heap.allocate(layout(64, 8)).unwrap();
        let _b = heap.allocate(layout(64, 8)).unwrap();
        let mut outside = [0u128; 4];
        // SAFETY: deliberately violates the contract; the heap must stay consistent.
        unsafe {
            heap.deallocate(a, layout(64, 8));
            heap.deallocate(a, layout(64, 8));
            heap.deallocate(
                NonNull::new(outside.as_mut_ptr().cast()).unwrap(),
                layout(64, 8),
            );
        }
        heap.check();
        assert_eq!(heap.used_bytes(), 64);
    }

    #[test]
    fn reallocate_in_place_grows_and_shrinks() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        let a = heap.allocate(layout(32, 8)).unwrap();
        let b = heap.allocate(layout(32, 8)).unwrap();
        // SAFETY: all pointers came from this heap with the layouts given.
        unsafe {
            // `a` is followed by `b`: it cannot grow.
            assert!(!heap.reallocate_in_place(a, layout(32, 8), 100));
            // `b` is followed by the free tail: it can.
            assert!(heap.reallocate_in_place(b, layout(32, 8), 1000));
            assert_eq!(heap.used_bytes(), 32 + 1008);
            assert!(heap.reallocate_in_place(b, layout(1000, 8), 40));
            assert_eq!(heap.used_bytes(), 32 + 48);
            heap.check();
            // Free `b`, then `a` can grow into its place, exactly filling it.
            heap.deallocate(b, layout(40, 8));
            assert!(heap.reallocate_in_place(a, layout(32, 8), 80));
            assert_eq!(heap.used_bytes(), 80);
            heap.deallocate(a, layout(80, 8));
        }
        assert_eq!(heap.check(), 1);
        assert_eq!(heap.free_bytes(), ARENA);
    }

    #[test]
    fn random_workload_keeps_invariants_and_returns_everything() {
        let mut arena = Box::new(Arena([0; ARENA]));
        let mut heap = heap(&mut arena);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
        for round in 0..4 {
            for step in 0..2000 {
                if live.is_empty() || rand(3) != 0 {
                    let l = layout(1 + rand(700), 1 << rand(8));
                    if let Some(p) = heap.allocate(l) {
                        assert_eq!(p.as_ptr().addr() % l.align(), 0);
                        let tag = (step % 251) as u8;
                        // SAFETY: freshly allocated, `l.size()` bytes.
                        unsafe { p.as_ptr().write_bytes(tag, l.size()) };
                        live.push((p, l, tag));
                    }
                } else {
                    let (p, l, tag) = live.swap_remove(rand(live.len()));
                    // SAFETY: a live allocation of `l.size()` bytes, filled with `tag`.
                    let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), l.size()) };
                    assert!(
                        bytes.iter().all(|&b| b == tag),
                        "allocation was overwritten"
                    );
                    // SAFETY: from this heap with this layout.
                    unsafe { heap.deallocate(p, l) };
                }
                if step % 100 == 0 {
                    heap.check();
                }
            }
            // End of an "invocation": free everything, the heap is whole again.
            for (p, l, _) in live.drain(..) {
                // SAFETY: from this heap with this layout.
                unsafe { heap.deallocate(p, l) };
            }
            assert_eq!(heap.check(), 1, "round {round}");
            assert_eq!(heap.free_bytes(), ARENA);
        }
    }
}
