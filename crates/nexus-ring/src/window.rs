// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The I/O window and the segments that point into it.

use core::ops::Range;

use crate::error::{Error, Field, Result};
use crate::limits::MAX_PAYLOAD_SEGMENTS;

/// A guest-physical byte range `[addr, addr + len)`: one descriptor's buffer.
///
/// Segments in a decoded [`Request`](crate::Request) have been checked against the
/// [`IoWindow`]: non-empty and inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SegmentRef {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

impl SegmentRef {
    /// A segment of `len` bytes at `addr`.
    pub const fn new(addr: u64, len: u32) -> Self {
        Self { addr, len }
    }

    /// One past the last byte, or `None` if that overflows.
    pub const fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.len as u64)
    }

    /// The part `[offset, offset + len)` of this segment, if it lies inside it.
    pub fn sub(&self, offset: u32, len: u32) -> Option<SegmentRef> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(SegmentRef::new(self.addr.checked_add(offset.into())?, len))
    }
}

/// The VM's I/O window: the guest-physical range `[base, base + size)` that holds the
/// nexus-io virtqueue and every payload buffer, and the only part of the VM the backend maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoWindow {
    base: u64,
    size: u64,
}

impl IoWindow {
    /// The window `[base, base + size)`. It must be non-empty and must not wrap around.
    pub const fn new(base: u64, size: u64) -> Result<Self> {
        if size == 0 || base.checked_add(size).is_none() {
            return Err(Error::InvalidWindow { base, size });
        }
        Ok(Self { base, size })
    }

    /// Guest-physical address of the first byte.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[addr, addr + len)` lies entirely inside the window (no overflow possible).
    pub const fn contains(&self, addr: u64, len: u64) -> bool {
        if addr < self.base {
            return false;
        }
        // `addr >= base`, so the subtraction cannot wrap.
        let offset = addr.wrapping_sub(self.base);
        match offset.checked_add(len) {
            Some(end) => end <= self.size,
            None => false,
        }
    }

    /// Checks a descriptor's buffer: non-empty and inside the window.
    pub const fn check(&self, addr: u64, len: u32) -> Result<SegmentRef> {
        if len == 0 {
            return Err(Error::EmptySegment { addr });
        }
        if !self.contains(addr, len as u64) {
            return Err(Error::OutsideWindow {
                addr,
                len: len as u64,
            });
        }
        Ok(SegmentRef::new(addr, len))
    }

    /// The byte offsets of `segment` relative to the window base, for indexing the backend's
    /// own mapping of the window.
    pub fn offsets(&self, segment: SegmentRef) -> Result<Range<usize>> {
        let outside = Error::OutsideWindow {
            addr: segment.addr,
            len: segment.len.into(),
        };
        if !self.contains(segment.addr, segment.len.into()) {
            return Err(outside);
        }
        let start = usize::try_from(segment.addr.wrapping_sub(self.base)).map_err(|_| outside)?;
        let end = start
            .checked_add(usize::try_from(segment.len).map_err(|_| outside)?)
            .ok_or(outside)?;
        Ok(start..end)
    }
}

/// Up to [`MAX_PAYLOAD_SEGMENTS`] segments that together form one logical byte stream (a
/// request payload, or the response payload buffers), with their total length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SegmentList {
    segments: [SegmentRef; MAX_PAYLOAD_SEGMENTS],
    len: usize,
    total: u32,
}

impl SegmentList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            segments: [SegmentRef::new(0, 0); MAX_PAYLOAD_SEGMENTS],
            len: 0,
            total: 0,
        }
    }

    /// A list of these segments.
    pub fn from_slice(segments: &[SegmentRef]) -> Result<Self> {
        let mut list = Self::new();
        for segment in segments {
            list.push(*segment)?;
        }
        Ok(list)
    }

    /// Appends a segment (counted as [`Field::Payload`] in errors).
    pub fn push(&mut self, segment: SegmentRef) -> Result<()> {
        self.push_as(segment, Field::Payload)
    }

    pub(crate) fn push_as(&mut self, segment: SegmentRef, field: Field) -> Result<()> {
        let total = self
            .total
            .checked_add(segment.len)
            .ok_or(Error::LengthOutOfRange {
                field,
                len: u64::from(self.total).saturating_add(segment.len.into()),
                min: 0,
                max: u32::MAX.into(),
            })?;
        let slot = self
            .segments
            .get_mut(self.len)
            .ok_or(Error::TooManySegments {
                field,
                max: MAX_PAYLOAD_SEGMENTS as u64,
            })?;
        *slot = segment;
        self.len = self.len.saturating_add(1);
        self.total = total;
        Ok(())
    }

    /// The segments, in stream order.
    pub fn as_slice(&self) -> &[SegmentRef] {
        self.segments.get(..self.len).unwrap_or(&[])
    }

    /// Number of segments.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no segments.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes in all segments.
    pub const fn total_len(&self) -> u32 {
        self.total
    }

    /// Iterates over the segments.
    pub fn iter(&self) -> core::slice::Iter<'_, SegmentRef> {
        self.as_slice().iter()
    }

    /// The pieces of the segments that hold bytes `[offset, offset + len)` of the stream:
    /// where to read a request payload from, or where to write `len` response bytes.
    pub fn cover(&self, offset: u32, len: u32) -> Result<Cover<'_>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.total => Ok(Cover {
                segments: self.as_slice().iter(),
                skip: offset,
                left: len,
            }),
            _ => Err(Error::LengthOutOfRange {
                field: Field::Payload,
                len: u64::from(offset).saturating_add(len.into()),
                min: 0,
                max: self.total.into(),
            }),
        }
    }
}

impl<'a> IntoIterator for &'a SegmentList {
    type Item = &'a SegmentRef;
    type IntoIter = core::slice::Iter<'a, SegmentRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator of [`SegmentList::cover`].
#[derive(Clone, Debug)]
pub struct Cover<'a> {
    segments: core::slice::Iter<'a, SegmentRef>,
    skip: u32,
    left: u32,
}

impl Iterator for Cover<'_> {
    type Item = SegmentRef;

    fn next(&mut self) -> Option<SegmentRef> {
        while self.left > 0 {
            let segment = self.segments.next()?;
            if self.skip >= segment.len {
                self.skip = self.skip.saturating_sub(segment.len);
                continue;
            }
            let available = segment.len.saturating_sub(self.skip);
            let take = available.min(self.left);
            let piece = segment.sub(self.skip, take)?;
            self.skip = 0;
            self.left = self.left.saturating_sub(take);
            return Some(piece);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        assert!(IoWindow::new(0, 0).is_err());
        assert!(IoWindow::new(u64::MAX, 1).is_err());
        assert!(IoWindow::new(u64::MAX - 1, 1).is_ok());
        let w = IoWindow::new(0x1000, 0x1000).unwrap();
        assert!(w.contains(0x1000, 0x1000));
        assert!(w.contains(0x1FFF, 1));
        assert!(!w.contains(0x1FFF, 2));
        assert!(!w.contains(0xFFF, 1));
        // An empty range at the end is contained; `check` refuses empty segments anyway.
        assert!(w.contains(0x2000, 0));
        assert!(!w.contains(0x2001, 0));
        assert!(!w.contains(0x1800, u64::MAX));
        assert_eq!(
            w.check(0x1800, 0),
            Err(Error::EmptySegment { addr: 0x1800 })
        );
        assert_eq!(
            w.offsets(SegmentRef::new(0x1800, 16)).unwrap(),
            0x800..0x810
        );
        assert!(w.offsets(SegmentRef::new(0x1FF8, 16)).is_err());
        let top = IoWindow::new(u64::MAX - 0x1000, 0x1000).unwrap();
        assert!(top.contains(u64::MAX - 0x10, 0x10));
        assert!(!top.contains(u64::MAX - 0x10, 0x11));
        assert_eq!(
            top.check(u64::MAX, u32::MAX),
            Err(Error::OutsideWindow {
                addr: u64::MAX,
                len: u32::MAX.into()
            })
        );
    }

    #[test]
    fn segment_list_cover() {
        let list = SegmentList::from_slice(&[
            SegmentRef::new(100, 10),
            SegmentRef::new(200, 5),
            SegmentRef::new(300, 10),
        ])
        .unwrap();
        assert_eq!(list.total_len(), 25);
        let pieces: [SegmentRef; 3] = [
            SegmentRef::new(108, 2),
            SegmentRef::new(200, 5),
            SegmentRef::new(300, 1),
        ];
        assert!(list.cover(8, 8).unwrap().eq(pieces));
        assert!(list.cover(0, 25).unwrap().eq(list.iter().copied()));
        assert_eq!(list.cover(25, 0).unwrap().count(), 0);
        assert!(list.cover(20, 6).is_err());
        assert!(list.cover(u32::MAX, 2).is_err());
    }

    #[test]
    fn segment_list_limits() {
        let mut list = SegmentList::new();
        for i in 0..MAX_PAYLOAD_SEGMENTS as u64 {
            list.push(SegmentRef::new(i, 1)).unwrap();
        }
        assert!(matches!(
            list.push(SegmentRef::new(0, 1)),
            Err(Error::TooManySegments { .. })
        ));
        let mut list = SegmentList::new();
        list.push(SegmentRef::new(0, u32::MAX)).unwrap();
        assert!(matches!(
            list.push(SegmentRef::new(0, 1)),
            Err(Error::LengthOutOfRange { .. })
        ));
        assert_eq!(SegmentRef::new(u64::MAX, 1).end(), None);
        assert_eq!(
            SegmentRef::new(10, 10).sub(5, 5),
            Some(SegmentRef::new(15, 5))
        );
        assert_eq!(SegmentRef::new(10, 10).sub(5, 6), None);
    }
}
