// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device-visible memory from the heap: [`DmaBlock`].
//!
//! The virtio-net rings and buffers live in the guest's own heap (the VMM maps all guest
//! RAM; there is no I/O window on this path). A micro-guest is identity mapped, so a heap
//! block's address is its guest-physical address. The block is viewed through a
//! [`WindowMapping`] whose "guest-physical base" is that address, which lets the split
//! virtqueue code of the nexus-io driver serve here unchanged. In host tests the same holds
//! by construction: the fake device takes the addresses as host pointers.

use alloc::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use core::ptr::NonNull;

use crate::window::WindowMapping;

/// Alignment of a block (a page: rings need 16, buffers 64).
const ALIGN: usize = 4096;

/// A zeroed, page-aligned heap block the device may access, freed on drop.
#[derive(Debug)]
pub(crate) struct DmaBlock {
    ptr: NonNull<u8>,
    mapping: WindowMapping,
    layout: Layout,
}

impl DmaBlock {
    /// A zeroed block of `size` bytes (rounded up to a page). Aborts through the allocation
    /// error handler if the heap cannot serve it, as `Vec` would.
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1).next_multiple_of(ALIGN);
        let layout = match Layout::from_size_align(size, ALIGN) {
            Ok(layout) => layout,
            Err(_) => handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: the layout has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { alloc_zeroed(layout) }) else {
            handle_alloc_error(layout);
        };
        let base = ptr.as_ptr().expose_provenance() as u64;
        // SAFETY: the block is `size` bytes, valid for reads and writes until `drop` frees
        // it, and reached only through this mapping (by the driver) and by the device, which
        // writes only the rings and the buffers the driver posted to it. The mapping does not
        // outlive the block: both are fields of `self`.
        let mapping = unsafe { WindowMapping::new(ptr.as_ptr(), base, size as u64) };
        match mapping {
            Ok(mapping) => Self {
                ptr,
                mapping,
                layout,
            },
            // Cannot happen: page aligned, non-null, inside the address space.
            Err(_) => handle_alloc_error(layout),
        }
    }

    /// The block as a mapping: offsets, guest-physical addresses, ring fields.
    pub(crate) fn mapping(&self) -> &WindowMapping {
        &self.mapping
    }
}

impl Drop for DmaBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with `self.layout`; the driver resets the device before
        // dropping its blocks, so nothing uses the memory any more.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
