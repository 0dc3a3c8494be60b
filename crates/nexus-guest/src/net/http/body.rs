// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! HTTP/1.1 bodies: read by their framing (a length, chunks, or until the close) straight
//! from the transport's buffer into where they go — one copy. No `unsafe`: this parses the
//! peer's bytes.

use alloc::vec::Vec;

use super::head::Framing;
use crate::net::error::{NetError, Result};
use crate::net::transport::Transport;

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 1024;
/// Most trailer lines accepted.
const MAX_TRAILERS: usize = 32;

/// Where a body goes.
#[derive(Debug)]
pub enum Sink<'a> {
    /// Appended to a vector, up to `max` bytes in all.
    Vec {
        /// The vector.
        buf: &'a mut Vec<u8>,
        /// The most bytes it may hold.
        max: usize,
    },
    /// Into a slice, from its start.
    Slice {
        /// The slice.
        buf: &'a mut [u8],
        /// Bytes written so far.
        filled: usize,
    },
    /// Nowhere (counted only).
    Discard,
}

impl Sink<'_> {
    /// Room left, if bounded.
    fn room(&self) -> Option<usize> {
        match self {
            Sink::Vec { buf, max } => Some(max.saturating_sub(buf.len())),
            Sink::Slice { buf, filled } => Some(buf.len() - *filled),
            Sink::Discard => None,
        }
    }

    /// Prepares for `len` more bytes (one allocation for a known length).
    fn reserve(&mut self, len: u64) -> Result<()> {
        if let Some(room) = self.room() {
            if len > room as u64 {
                return Err(NetError::BodyTooLarge {
                    len,
                    max: room as u64,
                });
            }
        }
        if let Sink::Vec { buf, .. } = self {
            // `len <= room <= usize::MAX`.
            buf.reserve_exact(len as usize);
        }
        Ok(())
    }

    /// Takes as much of `bytes` as it has room for; returns how much.
    fn write(&mut self, bytes: &[u8]) -> usize {
        match self {
            Sink::Vec { buf, max } => {
                let n = bytes.len().min(max.saturating_sub(buf.len()));
                buf.extend_from_slice(&bytes[..n]);
                n
            }
            Sink::Slice { buf, filled } => {
                let n = bytes.len().min(buf.len() - *filled);
                buf[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                *filled += n;
                n
            }
            Sink::Discard => bytes.len(),
        }
    }
}

/// Reads a body framed by `framing` into `sink`; returns its length.
pub fn read_body<T: Transport>(
    transport: &mut T,
    framing: Framing,
    sink: &mut Sink<'_>,
) -> Result<u64> {
    match framing {
        Framing::Empty => Ok(0),
        Framing::Length(len) => {
            sink.reserve(len)?;
            read_exact(transport, len, sink)?;
            Ok(len)
        }
        Framing::Chunked => read_chunked(transport, sink),
        Framing::UntilClose => {
            let mut total = 0u64;
            loop {
                let mut full = false;
                let taken = transport.recv(&mut |bytes: &[u8]| {
                    let n = sink.write(bytes);
                    full = n < bytes.len();
                    n
                })?;
                total += taken as u64;
                if full {
                    return Err(NetError::BodyTooLarge {
                        len: total + 1,
                        max: total,
                    });
                }
                if taken == 0 {
                    return Ok(total);
                }
            }
        }
    }
}

/// Moves exactly `len` bytes from the transport to the sink (which has room for them).
fn read_exact<T: Transport>(transport: &mut T, len: u64, sink: &mut Sink<'_>) -> Result<()> {
    let mut left = len;
    while left > 0 {
        let taken = transport.recv(&mut |bytes: &[u8]| {
            let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            sink.write(&bytes[..n])
        })?;
        if taken == 0 {
            return Err(NetError::ConnectionClosed("the body was cut short"));
        }
        left -= taken as u64;
    }
    Ok(())
}

/// Reads one line (up to `\n`, which is consumed) into `line`, without its `\r\n`.
fn read_line<T: Transport>(transport: &mut T, line: &mut Vec<u8>) -> Result<()> {
    line.clear();
    let mut done = false;
    while !done {
        let taken = transport.recv(&mut |bytes: &[u8]| {
            let cap = (MAX_LINE + 3).saturating_sub(line.len()).max(1);
            let (mut n, mut end) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (bytes.len(), false),
            };
            if n > cap {
                n = cap;
                end = false;
            }
            line.extend_from_slice(&bytes[..n]);
            done = end;
            n
        })?;
        if taken == 0 {
            return Err(NetError::ConnectionClosed("a chunk was cut short"));
        }
        if !done && line.len() > MAX_LINE {
            return Err(NetError::Http("chunk line too long"));
        }
    }
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(NetError::Http("chunk line without CRLF"));
    }
    Ok(())
}

/// The size of a chunk-size line (`hex[;extensions]`).
fn chunk_size(line: &[u8]) -> Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(NetError::Http("bad chunk size"));
    }
    Ok(digits.iter().fold(0u64, |size, &d| {
        // A hex digit (checked above); 15 digits fit a u64.
        size << 4 | u64::from((d as char).to_digit(16).unwrap_or(0))
    }))
}

fn read_chunked<T: Transport>(transport: &mut T, sink: &mut Sink<'_>) -> Result<u64> {
    let mut line = Vec::new();
    let mut total = 0u64;
    loop {
        read_line(transport, &mut line)?;
        let size = chunk_size(&line)?;
        if size == 0 {
            break;
        }
        sink.reserve(size).map_err(|_| NetError::BodyTooLarge {
            len: total + size,
            max: total + sink.room().unwrap_or(0) as u64,
        })?;
        read_exact(transport, size, sink)?;
        total += size;
        read_line(transport, &mut line)?;
        if !line.is_empty() {
            return Err(NetError::Http("chunk data longer than its size"));
        }
    }
    // Trailers, up to the empty line: ignored.
    for _ in 0..=MAX_TRAILERS {
        read_line(transport, &mut line)?;
        if line.is_empty() {
            return Ok(total);
        }
    }
    Err(NetError::Http("too many trailer fields"))
}

/// Sends `chunks` as a chunked body (with the last, empty chunk).
pub fn send_chunked<T: Transport>(transport: &mut T, chunks: &[&[u8]]) -> Result<()> {
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let size = alloc::format!("{:x}\r\n", chunk.len());
        transport.send(size.as_bytes())?;
        transport.send(chunk)?;
        transport.send(b"\r\n")?;
    }
    transport.send(b"0\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http::head::tests::Script;
    use alloc::vec;

    fn read(input: &[u8], piece: usize, framing: Framing, max: usize) -> Result<(Vec<u8>, usize)> {
        let mut script = Script::new(input, piece);
        let mut out = Vec::new();
        read_body(&mut script, framing, &mut Sink::Vec { buf: &mut out, max })?;
        Ok((out, script.input.len()))
    }

    #[test]
    fn length_chunked_and_until_close() {
        for piece in [1, 2, 3, 7, 100] {
            assert_eq!(
                read(b"hello, worldNEXT", piece, Framing::Length(12), 100),
                Ok((b"hello, world".to_vec(), 4))
            );
            let chunked = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
            assert_eq!(
                read(chunked, piece, Framing::Chunked, 100),
                Ok((b"hello, world".to_vec(), 4))
            );
            assert_eq!(
                read(b"to the end", piece, Framing::UntilClose, 100),
                Ok((b"to the end".to_vec(), 0))
            );
        }
        let mut script = Script::new(b"abcdef", 2);
        let mut buf = [0u8; 8];
        let mut sink = Sink::Slice {
            buf: &mut buf,
            filled: 0,
        };
        assert_eq!(read_body(&mut script, Framing::Length(6), &mut sink), Ok(6));
        assert_eq!(&buf[..6], b"abcdef");
    }

    #[test]
    fn limits_and_malformed_bodies() {
        assert_eq!(
            read(b"0123456789", 4, Framing::Length(10), 5),
            Err(NetError::BodyTooLarge { len: 10, max: 5 })
        );
        assert!(matches!(
            read(b"a\r\n0123456789\r\n0\r\n\r\n", 4, Framing::Chunked, 5),
            Err(NetError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            read(b"0123456789", 4, Framing::UntilClose, 5),
            Err(NetError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            read(b"short", 4, Framing::Length(10), 100),
            Err(NetError::ConnectionClosed(_))
        ));
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(read(bad, 3, Framing::Chunked, 100).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; 5000];
        assert!(read(&long, 100, Framing::Chunked, 100).is_err());
    }

    #[test]
    fn chunked_round_trip() {
        let mut script = Script::new(b"", 1);
        send_chunked(&mut script, &[b"abc", b"", b"defgh"]).unwrap();
        let sent = script.output.clone();
        assert_eq!(sent, b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n");
        assert_eq!(
            read(&sent, 2, Framing::Chunked, 100),
            Ok((b"abcdefgh".to_vec(), 0))
        );
    }
}
