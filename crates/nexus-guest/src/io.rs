// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One I/O interface for functions: [`ObjectIo`].
//!
//! A function written against [`ObjectIo`] builds for both paths Nexus is measured on: the
//! nexus-io device ([`Nexus`], the shared backend does the I/O, buffers live in the I/O
//! window) and the in-guest fabric (`net::S3Client`, feature `net`: virtio-net, TCP/IP,
//! HTTP and SigV4 in the guest, buffers on its heap). Each keeps its own best way of moving
//! bytes: the buffer type is the implementation's ([`WindowBuf`], zero copy on the nexus-io
//! path; `Vec<u8>` on the network path), and errors are the crate's one [`Error`](crate::Error) enum, the
//! same kinds for the same failures.

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use crate::client::{ListPage, Nexus, ObjectInfo};
use crate::error::Result;
use crate::mmio::Registers;
use crate::window::WindowBuf;

/// A buffer of an [`ObjectIo`]: bytes with a capacity, filled in place.
pub trait IoBuf: Deref<Target = [u8]> + DerefMut {
    /// How many bytes it can hold (what `get_into` reads at most).
    fn capacity(&self) -> usize;

    /// Appends `data`; fails if it does not fit a fixed buffer.
    fn append_slice(&mut self, data: &[u8]) -> Result<()>;

    /// Empties it (the capacity stays).
    fn clear(&mut self);

    /// Sets the length to `len`, to be filled in place through `DerefMut` (say, by an
    /// encoder writing into `&mut buf[..]`): bytes beyond the old length are unspecified — a
    /// window buffer keeps what the window held there (no pass over them), a heap buffer
    /// zeroes them. Fails beyond the capacity of a fixed buffer.
    fn resize_for_overwrite(&mut self, len: usize) -> Result<()>;

    /// Shortens it to `len` bytes (no effect if already shorter).
    fn truncate(&mut self, len: usize);

    /// Gives up the capacity beyond the length where that costs no copy (a window buffer
    /// returns it to the window allocator; a heap buffer keeps it until it is dropped).
    fn release_spare(&mut self);
}

impl IoBuf for WindowBuf {
    fn capacity(&self) -> usize {
        WindowBuf::capacity(self)
    }

    fn append_slice(&mut self, data: &[u8]) -> Result<()> {
        self.extend_from_slice(data)
    }

    fn clear(&mut self) {
        WindowBuf::clear(self)
    }

    fn resize_for_overwrite(&mut self, len: usize) -> Result<()> {
        if len > WindowBuf::capacity(self) {
            return Err(crate::Error::OutOfWindowMemory {
                requested: len as u64,
                largest: WindowBuf::capacity(self) as u64,
            });
        }
        self.set_len(len);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        WindowBuf::truncate(self, len)
    }

    fn release_spare(&mut self) {
        self.shrink_to_fit()
    }
}

impl IoBuf for Vec<u8> {
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }

    fn append_slice(&mut self, data: &[u8]) -> Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }

    fn clear(&mut self) {
        Vec::clear(self)
    }

    fn resize_for_overwrite(&mut self, len: usize) -> Result<()> {
        self.resize(len, 0);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len)
    }

    fn release_spare(&mut self) {}
}

/// Object storage as a function sees it.
pub trait ObjectIo {
    /// The buffers objects arrive in and may be sent from.
    type Buf: IoBuf;

    /// An empty buffer of at least `capacity` bytes, to fill and [`put_buf`](Self::put_buf)
    /// or to read into with [`get_into`](Self::get_into).
    fn alloc(&self, capacity: usize) -> Result<Self::Buf>;

    /// Reads a whole object.
    fn get(&mut self, key: &str) -> Result<Self::Buf>;

    /// Reads at most `len` bytes of an object from byte `offset` (fewer at its end, none
    /// past it).
    fn get_range(&mut self, key: &str, offset: u64, len: usize) -> Result<Self::Buf>;

    /// Reads bytes of an object from `offset` into `buf` (up to its capacity, replacing its
    /// contents); returns the object's size.
    fn get_into(&mut self, key: &str, offset: u64, buf: &mut Self::Buf) -> Result<u64>;

    /// Writes an object from a slice.
    fn put(&mut self, key: &str, data: &[u8]) -> Result<()>;

    /// Writes an object from one of this interface's buffers (zero copy where the path
    /// allows it).
    fn put_buf(&mut self, key: &str, buf: &Self::Buf) -> Result<()>;

    /// An object's metadata (its `key` is empty).
    fn head(&mut self, key: &str) -> Result<ObjectInfo>;

    /// Deletes an object (`Ok` also when it did not exist).
    fn delete(&mut self, key: &str) -> Result<()>;

    /// One page of the objects under `prefix`, after `token` (the previous page's
    /// `next_token`; `None` for the first).
    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage>;
}

impl<R: Registers> ObjectIo for Nexus<R> {
    type Buf = WindowBuf;

    fn alloc(&self, capacity: usize) -> Result<WindowBuf> {
        Nexus::alloc(self, capacity)
    }

    fn get(&mut self, key: &str) -> Result<WindowBuf> {
        Nexus::get(self, key)
    }

    fn get_range(&mut self, key: &str, offset: u64, len: usize) -> Result<WindowBuf> {
        Nexus::get_range(self, key, offset, len)
    }

    fn get_into(&mut self, key: &str, offset: u64, buf: &mut WindowBuf) -> Result<u64> {
        Nexus::get_into(self, key, offset, buf)
    }

    fn put(&mut self, key: &str, data: &[u8]) -> Result<()> {
        Nexus::put(self, key, data)
    }

    fn put_buf(&mut self, key: &str, buf: &WindowBuf) -> Result<()> {
        Nexus::put_buf(self, key, buf)
    }

    fn head(&mut self, key: &str) -> Result<ObjectInfo> {
        Nexus::head(self, key)
    }

    fn delete(&mut self, key: &str) -> Result<()> {
        Nexus::delete(self, key)
    }

    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage> {
        Nexus::list(self, prefix, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;

    /// A function written once, against the trait.
    pub(crate) fn shout<Io: ObjectIo>(io: &mut Io, input: &str, output: &str) -> Result<usize> {
        let data = io.get(input)?;
        let mut out = io.alloc(data.len())?;
        out.append_slice(&data.to_ascii_uppercase())?;
        io.put_buf(output, &out)?;
        let mut part = io.alloc(3)?;
        let size = io.get_into(output, 1, &mut part)?;
        assert_eq!(size, data.len() as u64);
        // Up to the buffer's capacity (at least what was asked for).
        assert_eq!(part.len(), (data.len() - 1).min(part.capacity()));
        assert_eq!(&part[..], &data.to_ascii_uppercase()[1..1 + part.len()]);
        assert_eq!(
            &io.get_range(output, 2, 100)?[..],
            &data.to_ascii_uppercase()[2..]
        );
        assert_eq!(io.head(output)?.size, data.len() as u64);
        let page = io.list("", None)?;
        assert!(page.entries.iter().any(|e| e.key == output));
        io.delete(output)?;
        assert!(matches!(io.head(output), Err(crate::Error::NotFound(_))));
        Ok(out.len())
    }

    /// Fills a buffer in place, as an encoder would.
    fn fill_in_place<Io: ObjectIo>(io: &mut Io) -> Result<Io::Buf> {
        let mut buf = io.alloc(100)?;
        buf.resize_for_overwrite(100)?;
        assert_eq!(buf.len(), 100);
        buf[..5].copy_from_slice(b"hello");
        buf.truncate(5);
        buf.release_spare();
        Ok(buf)
    }

    #[test]
    fn buffers_of_both_paths_fill_in_place() {
        let (mut nexus, _device) = fake::nexus();
        let mut window = fill_in_place(&mut nexus).unwrap();
        assert_eq!(&window[..], b"hello");
        assert!(window.capacity() < 100, "the spare went back to the window");
        let capacity = window.capacity();
        assert!(window.resize_for_overwrite(capacity + 1).is_err());
        assert_eq!(window.len(), 5);

        let mut heap: Vec<u8> = Vec::with_capacity(4);
        heap.resize_for_overwrite(8).unwrap();
        assert_eq!(heap, [0u8; 8], "heap buffers grow zeroed");
        IoBuf::truncate(&mut heap, 3);
        assert_eq!(heap.len(), 3);
    }

    #[test]
    fn the_nexus_client_is_an_object_io() {
        let (mut nexus, device) = fake::nexus();
        device
            .state()
            .backend
            .objects
            .insert("in".into(), b"hello world".to_vec());
        assert_eq!(shout(&mut nexus, "in", "out").unwrap(), 11);
    }
}
