// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A byte stream for HTTP: [`Transport`], and how to open one: [`Connector`].
//!
//! The HTTP client and server speak over any transport: a TCP connection of the guest's
//! stack ([`TcpConnection`](super::TcpConnection)) in a VM, a `std` socket in host tests.

use super::error::Result;

/// A connected byte stream.
pub trait Transport {
    /// Sends all of `data` (blocks until the transport has taken it).
    fn send(&mut self, data: &[u8]) -> Result<()>;

    /// Blocks until bytes arrive, then calls `consume` with some of them (contiguous, from
    /// the transport's own buffer: a reader copies them once, to where they go); `consume`
    /// returns how many it took. Returns that number, or 0 — without calling `consume` — when
    /// the peer closed its side.
    fn recv(&mut self, consume: &mut dyn FnMut(&[u8]) -> usize) -> Result<usize>;

    /// Whether the stream can carry another exchange: open both ways, with nothing unread.
    fn is_reusable(&mut self) -> bool;

    /// Blocks until everything sent has reached the peer (a transport that keeps sending
    /// in the background may return at once).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Opens connections to one server.
pub trait Connector {
    /// The connection.
    type Connection: Transport;

    /// A new connection.
    fn connect(&mut self) -> Result<Self::Connection>;
}
