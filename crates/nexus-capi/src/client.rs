// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The client behind a handle, whatever its transport: [`ObjectClient`], implemented for
//! every `nexus_guest::Nexus<R>`, and [`Client`], the lock that makes a handle usable from
//! any thread.

use std::sync::{Mutex, MutexGuard};

use nexus_guest::mmio::Registers;
use nexus_guest::{ListPage, Nexus, ObjectInfo};

use crate::error::{Error, Result};

/// The object operations of the ABI, over one nexus-io device. Every method drops the window
/// buffers it allocates before it returns.
pub trait ObjectClient {
    /// The largest payload one request carries.
    fn max_payload(&self) -> usize;
    /// Reads from `offset` into `dst` (at most one request's worth); returns the bytes read
    /// and the object's size.
    fn read_at(&mut self, key: &str, offset: u64, dst: &mut [u8]) -> Result<(usize, u64)>;
    /// Reads a whole object.
    fn read_all(&mut self, key: &str) -> Result<Vec<u8>>;
    /// Writes an object, synchronously or write-behind.
    fn write(&mut self, key: &str, data: &[u8], behind: bool) -> Result<()>;
    /// An object's metadata.
    fn head(&mut self, key: &str) -> Result<ObjectInfo>;
    /// Deletes an object.
    fn delete(&mut self, key: &str) -> Result<()>;
    /// One page of a listing.
    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage>;
    /// Waits until the write-behind uploads are durable.
    fn flush(&mut self) -> Result<()>;
}

impl<R: Registers> ObjectClient for Nexus<R> {
    fn max_payload(&self) -> usize {
        Nexus::max_payload(self)
    }

    fn read_at(&mut self, key: &str, offset: u64, dst: &mut [u8]) -> Result<(usize, u64)> {
        let capacity = dst.len().min(Nexus::max_payload(self)).max(1);
        let mut buf = self.alloc(capacity)?;
        let size = self.get_into(key, offset, &mut buf)?;
        let n = buf.len().min(dst.len());
        dst[..n].copy_from_slice(&buf[..n]);
        Ok((n, size))
    }

    fn read_all(&mut self, key: &str) -> Result<Vec<u8>> {
        match self.get(key) {
            Ok(buf) => Ok(buf.to_vec()),
            Err(nexus_guest::Error::ObjectTooLarge { size, .. }) => {
                let size = usize::try_from(size).map_err(|_| {
                    Error::Nexus(nexus_guest::Error::ObjectTooLarge {
                        size,
                        capacity: usize::MAX as u64,
                    })
                })?;
                let mut data = vec![0; size];
                let filled = read_range(self, key, 0, &mut data)?.0;
                data.truncate(filled);
                Ok(data)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write(&mut self, key: &str, data: &[u8], behind: bool) -> Result<()> {
        if behind {
            self.put_behind(key, data)?;
        } else {
            self.put(key, data)?;
        }
        Ok(())
    }

    fn head(&mut self, key: &str) -> Result<ObjectInfo> {
        Ok(Nexus::head(self, key)?)
    }

    fn delete(&mut self, key: &str) -> Result<()> {
        Ok(Nexus::delete(self, key)?)
    }

    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage> {
        Ok(Nexus::list(self, prefix, token)?)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(Nexus::flush(self)?)
    }
}

/// Reads from `offset` until `dst` is full or the object ends, request by request; returns
/// the bytes read and the object's size.
pub fn read_range(
    client: &mut (impl ObjectClient + ?Sized),
    key: &str,
    offset: u64,
    dst: &mut [u8],
) -> Result<(usize, u64)> {
    let mut filled = 0;
    loop {
        let at = offset + filled as u64;
        let (n, size) = client.read_at(key, at, &mut dst[filled..])?;
        filled += n;
        if n == 0 || filled == dst.len() || at + n as u64 >= size {
            return Ok((filled, size));
        }
    }
}

/// A client moved between threads as a whole.
struct Owned(Box<dyn ObjectClient>);

// SAFETY: a `Nexus` is not `Send` only because it shares its window through `Rc`s (with its
// `WindowBuf`s, and the loopback window's owner), not because any part is tied to a thread:
// the loopback registers are `Send` (checked by `transport::tests`), and the Linux
// transport's `MmioRegisters` is a pointer into a `/dev/mem` mapping of the whole process. `ObjectClient`'s
// methods drop every buffer they allocate before returning, so every `Rc` clone lives inside
// the boxed client, which moves between threads as one value and is reached only under
// `Client`'s lock, one thread at a time. `Client::new` is crate-private: only such clients
// are boxed here.
unsafe impl Send for Owned {}

/// The client behind a handle: one lock, so calls on a handle from several threads run one
/// at a time.
pub struct Client {
    inner: Mutex<Owned>,
}

impl Client {
    /// A handle's client over `client`, which must be usable from any thread (see `Owned`).
    // Unused in a build with no transport (every open answers UNSUPPORTED).
    #[cfg_attr(not(any(feature = "loopback", feature = "linux")), allow(dead_code))]
    pub(crate) fn new(client: Box<dyn ObjectClient>) -> Self {
        Self {
            inner: Mutex::new(Owned(client)),
        }
    }

    /// Runs `f` with the client locked. A handle whose earlier call panicked is refused.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn ObjectClient) -> Result<T>) -> Result<T> {
        let mut guard: MutexGuard<'_, Owned> = self.inner.lock().map_err(|_| Error::Poisoned)?;
        f(guard.0.as_mut())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}
