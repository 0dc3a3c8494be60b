// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend's view of one VM's I/O window.
//!
//! The frontend's memory table holds exactly one region, the window; the backend maps it from
//! the memfd at the region's offset and closes the descriptor (`window_map.rs`), and touches
//! nothing else. The mapping lasts as long as the last clone of its [`WindowMemory`]: a new
//! memory table or the VM's detach unmaps it once the requests still using it are done. Every access here
//! is checked against the window again, on top of the decoder's checks, so a bug elsewhere
//! cannot reach outside it. All accesses are volatile copies (`vm-memory`): the guest may
//! change window bytes at any time, and the backend never forms a Rust reference to them.

use std::fs::File;
use std::sync::Arc;

use nexus_ring::{IoWindow, SegmentList, SegmentRef};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// A window access failed: the backend's fault (or a memory table that changed), never
/// reported as the guest's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WindowError {
    /// The range is not inside the window.
    #[error("{len} bytes at {addr:#x} are outside the I/O window")]
    Outside {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// vm-memory refused the access.
    #[error("I/O window access at {addr:#x} failed")]
    Memory {
        /// Guest-physical address.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One VM's window: the mapping (kept alive as long as this value) and its bounds.
#[derive(Clone, Debug)]
pub(crate) struct WindowMemory {
    mem: Arc<GuestMemoryMmap>,
    window: IoWindow,
}

impl WindowMemory {
    /// The window described by the memory table `mem`: its first (and normally only) region.
    pub(crate) fn new(mem: Arc<GuestMemoryMmap>) -> Option<Self> {
        let (window, regions) = {
            let mut regions = mem.iter();
            let first = regions.next()?;
            (
                IoWindow::new(first.start_addr().0, first.len()).ok()?,
                1 + regions.count(),
            )
        };
        if regions > 1 {
            log::warn!(
                "the memory table has {regions} regions; only the first, {:#x}+{:#x}, is used as the I/O window",
                window.base(),
                window.size()
            );
        }
        Some(Self { mem, window })
    }

    /// The window's bounds.
    pub(crate) fn window(&self) -> IoWindow {
        self.window
    }

    /// The mapping, for decoding descriptor chains.
    pub(crate) fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.mem
    }

    fn check(&self, addr: u64, len: u64) -> Result<(), WindowError> {
        if self.window.contains(addr, len) {
            Ok(())
        } else {
            Err(WindowError::Outside { addr, len })
        }
    }

    fn memory_error(addr: u64) -> impl FnOnce(vm_memory::GuestMemoryError) -> WindowError {
        move |source| WindowError::Memory { addr, source }
    }

    /// Copies a segment out of the window (headers, keys, meta segments: read once, then only
    /// the copy is used).
    pub(crate) fn copy_out(&self, segment: SegmentRef) -> Result<Vec<u8>, WindowError> {
        let mut out = vec![0u8; segment.len as usize];
        self.read_into(segment.addr, &mut out)?;
        Ok(out)
    }

    /// Reads `out.len()` bytes at `addr`.
    pub(crate) fn read_into(&self, addr: u64, out: &mut [u8]) -> Result<(), WindowError> {
        self.check(addr, out.len() as u64)?;
        self.mem
            .read_slice(out, GuestAddress(addr))
            .map_err(Self::memory_error(addr))
    }

    /// Copies bytes `[offset, offset + len)` of a segment list (a payload stream) into `out`,
    /// appending.
    pub(crate) fn copy_stream_out(
        &self,
        list: &SegmentList,
        offset: u32,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), WindowError> {
        let pieces = list.cover(offset, len).map_err(|_| WindowError::Outside {
            addr: 0,
            len: u64::from(offset) + u64::from(len),
        })?;
        for piece in pieces {
            let start = out.len();
            out.resize(start + piece.len as usize, 0);
            self.read_into(piece.addr, &mut out[start..])?;
        }
        Ok(())
    }

    /// Writes `bytes` at `addr`.
    pub(crate) fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), WindowError> {
        self.check(addr, bytes.len() as u64)?;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(Self::memory_error(addr))
    }

    /// Writes `bytes` into a segment list (a response payload stream) at stream offset
    /// `offset`. The caller has checked that they fit.
    pub(crate) fn write_stream(
        &self,
        list: &SegmentList,
        offset: u32,
        bytes: &[u8],
    ) -> Result<(), WindowError> {
        let len = u32::try_from(bytes.len()).map_err(|_| WindowError::Outside {
            addr: 0,
            len: bytes.len() as u64,
        })?;
        let pieces = list.cover(offset, len).map_err(|_| WindowError::Outside {
            addr: 0,
            len: u64::from(offset) + u64::from(len),
        })?;
        let mut rest = bytes;
        for piece in pieces {
            let (now, later) =
                rest.split_at_checked(piece.len as usize)
                    .ok_or(WindowError::Outside {
                        addr: piece.addr,
                        len: piece.len.into(),
                    })?;
            self.write(piece.addr, now)?;
            rest = later;
        }
        Ok(())
    }

    /// Reads exactly `segment.len` bytes from `file`'s current position straight into the
    /// window (one copy: page cache → window).
    pub(crate) fn read_from_file(
        &self,
        segment: SegmentRef,
        file: &mut File,
    ) -> Result<(), WindowError> {
        self.check(segment.addr, segment.len.into())?;
        self.mem
            .read_exact_volatile_from(GuestAddress(segment.addr), file, segment.len as usize)
            .map_err(Self::memory_error(segment.addr))
    }

    /// Reads `segment` from `file` at `offset` only if the file's bytes are in the page cache
    /// (`preadv2(RWF_NOWAIT)`: the read never waits for the disk). `Ok(false)` when they are
    /// not all there — nothing is known about the segment's bytes then, and the caller reads
    /// the normal way.
    pub(crate) fn read_from_cached_file(
        &self,
        segment: SegmentRef,
        file: &File,
        offset: u64,
    ) -> Result<bool, WindowError> {
        self.check(segment.addr, segment.len.into())?;
        let slice = self
            .mem
            .get_slice(GuestAddress(segment.addr), segment.len as usize)
            .map_err(Self::memory_error(segment.addr))?;
        let guard = slice.ptr_guard_mut();
        let Ok(offset) = libc::off_t::try_from(offset) else {
            return Ok(false);
        };
        let iov = libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: slice.len(),
        };
        // SAFETY: `iov` covers `slice`, a mapped range of the window checked above and kept
        // mapped by `self.mem` (and `guard`) for the call; the kernel writes at most
        // `iov_len` bytes there. The window is guest memory that the guest may change at any
        // time: no Rust reference to it exists, the bytes are only ever copied volatilely.
        let n = unsafe {
            libc::preadv2(
                std::os::fd::AsRawFd::as_raw_fd(file),
                &iov,
                1,
                offset,
                libc::RWF_NOWAIT,
            )
        };
        // EAGAIN (not cached), EOPNOTSUPP (no RWF_NOWAIT here), a short read: the slow way.
        Ok(usize::try_from(n).is_ok_and(|n| n == slice.len()))
    }

    /// Writes `segment` from the window straight to `file`'s current position (one copy:
    /// window → page cache).
    pub(crate) fn write_to_file(
        &self,
        segment: SegmentRef,
        file: &mut File,
    ) -> Result<(), WindowError> {
        self.check(segment.addr, segment.len.into())?;
        self.mem
            .write_all_volatile_to(GuestAddress(segment.addr), file, segment.len as usize)
            .map_err(Self::memory_error(segment.addr))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    fn window() -> WindowMemory {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        WindowMemory::new(Arc::new(mem)).unwrap()
    }

    #[test]
    fn accesses_stay_inside() {
        let w = window();
        assert_eq!(w.window().base(), 0x1000);
        assert_eq!(w.window().size(), 0x1000);
        w.write(0x1ffc, b"abcd").unwrap();
        assert_eq!(w.copy_out(SegmentRef::new(0x1ffc, 4)).unwrap(), b"abcd");
        assert!(w.write(0x1ffd, b"abcd").is_err());
        assert!(w.write(0xfff, b"a").is_err());
        assert!(w.copy_out(SegmentRef::new(u64::MAX, 2)).is_err());
    }

    #[test]
    fn cached_reads_fill_the_segment_or_say_no() {
        let w = window();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        // Just written: in the page cache.
        assert!(
            w.read_from_cached_file(SegmentRef::new(0x1800, 4), &file, 3)
                .unwrap()
        );
        assert_eq!(w.copy_out(SegmentRef::new(0x1800, 4)).unwrap(), b"3456");
        // Past the end: a short read, which is a no.
        assert!(
            !w.read_from_cached_file(SegmentRef::new(0x1800, 4), &file, 8)
                .unwrap()
        );
        // Outside the window: an error, whatever the file.
        assert!(
            w.read_from_cached_file(SegmentRef::new(0x1ffe, 4), &file, 0)
                .is_err()
        );
    }

    #[test]
    fn streams_span_segments() {
        let w = window();
        let list =
            SegmentList::from_slice(&[SegmentRef::new(0x1000, 3), SegmentRef::new(0x1100, 5)])
                .unwrap();
        w.write_stream(&list, 1, b"abcdef").unwrap();
        let mut out = Vec::new();
        w.copy_stream_out(&list, 0, 8, &mut out).unwrap();
        assert_eq!(&out[1..7], b"abcdef");
        assert!(w.write_stream(&list, 4, b"abcde").is_err());
    }

    #[test]
    fn file_io_goes_straight_to_the_window() {
        let w = window();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        file.seek(SeekFrom::Start(2)).unwrap();
        w.read_from_file(SegmentRef::new(0x1010, 4), &mut file)
            .unwrap();
        assert_eq!(w.copy_out(SegmentRef::new(0x1010, 4)).unwrap(), b"2345");
        let mut out = tempfile::tempfile().unwrap();
        w.write_to_file(SegmentRef::new(0x1010, 4), &mut out)
            .unwrap();
        out.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        std::io::Read::read_to_string(&mut out, &mut back).unwrap();
        assert_eq!(back, "2345");
    }
}
