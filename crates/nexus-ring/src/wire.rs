// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bounds-checked little-endian readers and writers over byte slices.
//!
//! Nothing here indexes or does unchecked arithmetic: a short buffer is an error.

use crate::error::{Error, Field, Result};

/// Reads little-endian values from the front of a slice.
#[derive(Debug)]
pub struct WireReader<'a> {
    rest: &'a [u8],
    field: Field,
    start_len: usize,
}

impl<'a> WireReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], field: Field) -> Self {
        Self {
            rest: bytes,
            field,
            start_len: bytes.len(),
        }
    }

    fn truncated(&self, more: usize) -> Error {
        let consumed = self.start_len.saturating_sub(self.rest.len());
        Error::Truncated {
            field: self.field,
            needed: (consumed as u64).saturating_add(more as u64),
            got: self.start_len as u64,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(self.truncated(N)),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        match self.rest.split_at_checked(len) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(len)),
        }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                field: self.field,
                extra: self.rest.len() as u64,
            })
        }
    }
}

/// Writes little-endian values to the front of a mutable slice.
#[derive(Debug)]
pub struct WireWriter<'a> {
    rest: &'a mut [u8],
    field: Field,
    written: usize,
}

impl<'a> WireWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8], field: Field) -> Self {
        Self {
            rest: out,
            field,
            written: 0,
        }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let rest = core::mem::take(&mut self.rest);
        let got = rest.len();
        match rest.split_at_mut_checked(bytes.len()) {
            Some((head, tail)) => {
                head.copy_from_slice(bytes);
                self.rest = tail;
                self.written = self.written.saturating_add(bytes.len());
                Ok(())
            }
            None => Err(Error::BufferTooSmall {
                field: self.field,
                needed: (self.written as u64).saturating_add(bytes.len() as u64),
                got: (self.written as u64).saturating_add(got as u64),
            }),
        }
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn written(&self) -> usize {
        self.written
    }
}

/// Checks `min <= len <= max`.
pub(crate) fn check_len(field: Field, len: u64, min: u64, max: u64) -> Result<()> {
    if len < min || len > max {
        Err(Error::LengthOutOfRange {
            field,
            len,
            min,
            max,
        })
    } else {
        Ok(())
    }
}

/// Checks that `out` holds at least `needed` bytes.
pub(crate) fn check_room(field: Field, out: &[u8], needed: usize) -> Result<()> {
    if out.len() < needed {
        Err(Error::BufferTooSmall {
            field,
            needed: needed as u64,
            got: out.len() as u64,
        })
    } else {
        Ok(())
    }
}
