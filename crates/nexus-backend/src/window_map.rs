// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Mapping a VM's I/O window from the memfd its memory table came with, so that the
//! descriptor can be closed once the window is mapped: the backend keeps no file per VM, only
//! the mapping.
//!
//! The window is the range `[offset, offset + size)` of the file. `offset` (the region's
//! `mmap_offset`) need not be 0: a VMM may keep many VMs' windows in one memfd at different
//! offsets. The range must lie inside the file (checked against its size, `fstat`) and start
//! on a page boundary; anything else is refused with an error that says why.
//!
//! How: vm-memory reserves (and, when the last user of the window drops it, unmaps) an
//! anonymous range of the window's size; the file range is then mapped over that reservation
//! with `MAP_FIXED`. vm-memory's own file mappings keep the `File` inside the region, which is
//! the descriptor this module exists to close; mapping over a range vm-memory owns keeps
//! vm-memory the only owner of the mapping, so every clone of the window's
//! `GuestMemoryMmap` keeps it mapped and the last one unmaps it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::MmapRegion;

use crate::stats::page_size;

/// A window the backend cannot map.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MapError {
    /// The memory table's descriptor is not a regular file (a memfd).
    #[error("the I/O window's descriptor is not a regular file (a memfd)")]
    NotAFile,
    /// The window is not inside the file.
    #[error(
        "the I/O window ({size:#x} bytes at offset {offset:#x}) does not fit in its file of {file_size:#x} bytes"
    )]
    PastEnd {
        /// The region's `mmap_offset`.
        offset: u64,
        /// The region's size.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// The window's offset is not on a page boundary.
    #[error(
        "the I/O window's offset {offset:#x} in its file is not a multiple of the page size {page:#x}"
    )]
    Unaligned {
        /// The region's `mmap_offset`.
        offset: u64,
        /// The page size.
        page: u64,
    },
    /// The window is empty, or larger than this process can map.
    #[error("the I/O window's size {size:#x} cannot be mapped")]
    Size {
        /// The region's size.
        size: u64,
    },
    /// The file's size could not be read.
    #[error("cannot read the size of the I/O window's file")]
    Stat(#[source] io::Error),
    /// Reserving the window's address range failed.
    #[error("cannot reserve {size:#x} bytes of address space for the I/O window")]
    Reserve {
        /// The region's size.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Mapping the file failed.
    #[error("cannot map the I/O window ({size:#x} bytes at offset {offset:#x})")]
    Map {
        /// The region's `mmap_offset`.
        offset: u64,
        /// The region's size.
        size: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Maps `size` bytes of `file` from `offset`, shared and writable (see the module docs). The
/// mapping does not keep `file`: the caller may close it as soon as this returns.
pub(crate) fn map_window(file: &File, offset: u64, size: u64) -> Result<MmapRegion, MapError> {
    let meta = file.metadata().map_err(MapError::Stat)?;
    if !meta.is_file() {
        return Err(MapError::NotAFile);
    }
    let file_size = meta.len();
    if offset.checked_add(size).is_none_or(|end| end > file_size) {
        return Err(MapError::PastEnd {
            offset,
            size,
            file_size,
        });
    }
    let page = page_size();
    if offset % page != 0 {
        return Err(MapError::Unaligned { offset, page });
    }
    let len = usize::try_from(size)
        .ok()
        .filter(|len| *len > 0)
        .ok_or(MapError::Size { size })?;
    let file_offset = libc::off_t::try_from(offset).map_err(|_| MapError::PastEnd {
        offset,
        size,
        file_size,
    })?;
    let reservation = MmapRegion::<()>::build(
        None,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
    )
    .map_err(|source| MapError::Reserve { size, source })?;
    let at = reservation.as_ptr().cast::<libc::c_void>();
    // SAFETY: `[at, at + len)` is exactly the anonymous mapping `reservation` made just above
    // and owns; nothing else refers to it (the region has not been handed to anyone, and no
    // pointer into it exists), so replacing its pages with the file's (`MAP_FIXED`) cannot
    // pull memory from under any reader. The descriptor is valid for the call (`file` is
    // borrowed), and the kernel checks the range against the file again. The new mapping has
    // the reservation's protection, so the region's recorded `prot` stays true.
    let mapped = unsafe {
        libc::mmap(
            at,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        let source = io::Error::last_os_error();
        // A failed `MAP_FIXED` may already have unmapped part of the reservation, and another
        // thread may map something there before we could unmap it: never unmap the range
        // then. What is left of the reservation stays reserved (address space only: it is
        // `MAP_NORESERVE` and was never touched).
        std::mem::forget(reservation);
        return Err(MapError::Map {
            offset,
            size,
            source,
        });
    }
    debug_assert_eq!(mapped, at, "MAP_FIXED maps at the address given");
    Ok(reservation)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::VolatileMemory;

    use super::*;

    fn file_of(pages: u64) -> File {
        let file = tempfile::tempfile().unwrap();
        file.set_len(pages * page_size()).unwrap();
        file
    }

    #[test]
    fn maps_the_range_at_its_offset_and_shares_it() {
        let page = page_size();
        let file = file_of(4);
        let region = map_window(&file, 2 * page, 2 * page).unwrap();
        // Writes through the file show in the mapping, at the offset.
        FileExt::write_all_at(&file, b"window", 2 * page).unwrap();
        let mut out = [0u8; 6];
        region.get_slice(0, 6).unwrap().copy_to(&mut out);
        assert_eq!(&out, b"window");
        // Writes through the mapping show in the file.
        region.get_slice(7, 4).unwrap().copy_from(b"back");
        let mut back = [0u8; 4];
        FileExt::read_exact_at(&file, &mut back, 2 * page + 7).unwrap();
        assert_eq!(&back, b"back");
        // Nothing before the offset was touched.
        let mut head = [0xffu8; 8];
        FileExt::read_exact_at(&file, &mut head, 0).unwrap();
        assert_eq!(head, [0; 8]);
    }

    #[test]
    fn the_mapping_outlives_the_file() {
        let file = file_of(1);
        FileExt::write_all_at(&file, b"kept", 0).unwrap();
        let region = map_window(&file, 0, page_size()).unwrap();
        drop(file);
        let mut out = [0u8; 4];
        region.get_slice(0, 4).unwrap().copy_to(&mut out);
        assert_eq!(&out, b"kept");
    }

    #[test]
    fn refuses_what_is_not_in_the_file() {
        let page = page_size();
        let file = file_of(2);
        assert!(matches!(
            map_window(&file, 2 * page, page),
            Err(MapError::PastEnd { file_size, .. }) if file_size == 2 * page
        ));
        assert!(matches!(
            map_window(&file, page, 2 * page),
            Err(MapError::PastEnd { .. })
        ));
        assert!(matches!(
            map_window(&file, u64::MAX - 1, 2),
            Err(MapError::PastEnd { .. })
        ));
        assert!(matches!(
            map_window(&file, 1, page),
            Err(MapError::Unaligned { offset: 1, .. })
        ));
        assert!(matches!(
            map_window(&file, 0, 0),
            Err(MapError::Size { size: 0 })
        ));
        let dir = tempfile::tempdir().unwrap();
        let not_a_file = File::open(dir.path()).unwrap();
        assert!(matches!(
            map_window(&not_a_file, 0, page),
            Err(MapError::NotAFile)
        ));
    }
}
