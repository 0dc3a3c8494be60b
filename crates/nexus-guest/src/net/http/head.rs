// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! HTTP/1.1 message heads: reading one off a transport, parsing it, and the body framing
//! it announces. No `unsafe`: this parses the peer's bytes.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::net::error::{NetError, Result};
use crate::net::transport::Transport;

/// Default limit of a message head (start line and headers).
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;
/// Most header fields a head may have.
pub const MAX_HEADERS: usize = 100;

/// A response's start line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// The header fields, names as sent, in order.
    pub headers: Vec<(String, String)>,
}

/// A request's start line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The header fields, names as sent, in order.
    pub headers: Vec<(String, String)>,
}

/// The first header named `name` (case-insensitive) in `headers`.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl ResponseHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the connection stays open after this response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version_minor, &self.headers)
    }
}

impl RequestHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version_minor, &self.headers)
    }
}

fn keep_alive(version_minor: u8, headers: &[(String, String)]) -> bool {
    let mut close = version_minor == 0;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    return false;
                }
                if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    !close
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Reads a message head — up to and including the empty line — into `buf` (cleared first),
/// consuming nothing after it. `Ok(false)` if the peer closed before sending a byte.
pub fn read_head<T: Transport>(transport: &mut T, buf: &mut Vec<u8>, max: usize) -> Result<bool> {
    buf.clear();
    let mut complete = false;
    let mut too_large = false;
    while !complete {
        let taken = transport.recv(&mut |bytes: &[u8]| {
            // Resume the search a few bytes back: the terminator may straddle two reads.
            let search_from = buf.len().saturating_sub(3);
            let room = max.saturating_sub(buf.len());
            let take = bytes.len().min(room.max(1));
            buf.extend_from_slice(&bytes[..take]);
            match find_terminator(&buf[search_from..]) {
                Some(end) => {
                    let keep = search_from + end;
                    let extra = buf.len() - keep;
                    buf.truncate(keep);
                    complete = true;
                    take - extra
                }
                None => {
                    if buf.len() >= max {
                        too_large = true;
                    }
                    take
                }
            }
        })?;
        if too_large {
            return Err(NetError::HeadTooLarge(max));
        }
        if taken == 0 {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(NetError::ConnectionClosed("the head was cut short"));
        }
    }
    Ok(true)
}

/// The end (exclusive) of the first `\r\n\r\n` in `bytes`.
fn find_terminator(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The lines of a head (without the final empty line), checked for bare CRs and NULs.
fn lines(bytes: &[u8]) -> Result<Vec<&str>> {
    let text = core::str::from_utf8(bytes).map_err(|_| NetError::Http("head is not UTF-8"))?;
    let text = text
        .strip_suffix("\r\n\r\n")
        .ok_or(NetError::Http("head does not end with an empty line"))?;
    let lines: Vec<&str> = text.split("\r\n").collect();
    if lines.iter().any(|line| line.contains(['\r', '\n', '\0'])) {
        return Err(NetError::Http("stray line break in head"));
    }
    Ok(lines)
}

fn parse_headers(lines: &[&str]) -> Result<Vec<(String, String)>> {
    if lines.len() > MAX_HEADERS {
        return Err(NetError::Http("too many header fields"));
    }
    lines
        .iter()
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or(NetError::Http("header field without a colon"))?;
            let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(NetError::Http("bad header field name"));
            }
            Ok((
                name.to_string(),
                value.trim_matches([' ', '\t']).to_string(),
            ))
        })
        .collect()
}

fn parse_version(text: &str) -> Result<u8> {
    match text {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        _ => Err(NetError::Http("not HTTP/1.x")),
    }
}

/// Parses a response head (as [`read_head`] leaves it).
pub fn parse_response_head(bytes: &[u8]) -> Result<ResponseHead> {
    let lines = lines(bytes)?;
    let (start, fields) = lines.split_first().ok_or(NetError::Http("empty head"))?;
    let mut parts = start.splitn(3, ' ');
    let version_minor = parse_version(parts.next().unwrap_or_default())?;
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(NetError::Http("bad status code"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| NetError::Http("bad status code"))?;
    if status < 100 {
        return Err(NetError::Http("bad status code"));
    }
    Ok(ResponseHead {
        version_minor,
        status,
        reason: parts.next().unwrap_or_default().to_string(),
        headers: parse_headers(fields)?,
    })
}

/// Parses a request head (as [`read_head`] leaves it).
pub fn parse_request_head(bytes: &[u8]) -> Result<RequestHead> {
    let lines = lines(bytes)?;
    let (start, fields) = lines.split_first().ok_or(NetError::Http("empty head"))?;
    let parts: Vec<&str> = start.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(NetError::Http("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err(NetError::Http("bad method"));
    }
    if target.is_empty() || !target.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(NetError::Http("bad request target"));
    }
    Ok(RequestHead {
        version_minor: parse_version(version)?,
        method: method.to_string(),
        target: target.to_string(),
        headers: parse_headers(fields)?,
    })
}

/// The framing the headers announce; `None` when they announce neither a length nor
/// chunks. Conflicting lengths are refused.
fn declared_framing(headers: &[(String, String)]) -> Result<Option<Framing>> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(',').map(str::trim) {
                if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(NetError::Http("bad Content-Length"));
                }
                let n: u64 = part
                    .parse()
                    .map_err(|_| NetError::Http("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(NetError::Http("conflicting Content-Length"));
                }
                length = Some(n);
            }
        }
    }
    Ok(match (chunked, length) {
        (Some(true), _) => Some(Framing::Chunked),
        // A transfer coding that is not chunked: the body runs until the close.
        (Some(false), _) => Some(Framing::UntilClose),
        (None, Some(n)) => Some(Framing::Length(n)),
        (None, None) => None,
    })
}

/// The body framing of a response to a request with method `method` (RFC 9112 §6.3).
pub fn response_framing(method: &str, head: &ResponseHead) -> Result<Framing> {
    if method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    Ok(declared_framing(&head.headers)?.unwrap_or(Framing::UntilClose))
}

/// The body framing of a request (no length and no chunks: no body).
pub fn request_framing(head: &RequestHead) -> Result<Framing> {
    match declared_framing(&head.headers)? {
        Some(Framing::UntilClose) => Err(NetError::Http("unsupported transfer coding")),
        Some(framing) => Ok(framing),
        None => Ok(Framing::Empty),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::vec;

    /// A transport over scripted bytes, handed out in pieces of at most `piece` bytes.
    #[derive(Debug)]
    pub(crate) struct Script {
        pub input: VecDeque<u8>,
        pub piece: usize,
        pub output: Vec<u8>,
    }

    impl Script {
        pub(crate) fn new(input: &[u8], piece: usize) -> Self {
            Self {
                input: input.iter().copied().collect(),
                piece: piece.max(1),
                output: Vec::new(),
            }
        }
    }

    impl Transport for Script {
        fn send(&mut self, data: &[u8]) -> Result<()> {
            self.output.extend_from_slice(data);
            Ok(())
        }

        fn recv(&mut self, consume: &mut dyn FnMut(&[u8]) -> usize) -> Result<usize> {
            if self.input.is_empty() {
                return Ok(0);
            }
            let n = self.piece.min(self.input.len());
            let bytes: Vec<u8> = self.input.iter().take(n).copied().collect();
            let taken = consume(&bytes).min(n);
            self.input.drain(..taken);
            Ok(taken)
        }

        fn is_reusable(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn reads_exactly_the_head_in_any_pieces() {
        let message = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        for piece in 1..message.len() {
            let mut script = Script::new(message, piece);
            let mut buf = Vec::new();
            assert!(read_head(&mut script, &mut buf, 1024).unwrap());
            assert_eq!(buf, &message[..message.len() - 3], "piece {piece}");
            assert_eq!(script.input, b"abc".to_vec(), "piece {piece}");
        }
        let mut empty = Script::new(b"", 4);
        assert!(!read_head(&mut empty, &mut Vec::new(), 1024).unwrap());
        let mut cut = Script::new(b"HTTP/1.1 200", 4);
        assert!(matches!(
            read_head(&mut cut, &mut Vec::new(), 1024),
            Err(NetError::ConnectionClosed(_))
        ));
        let mut big = Script::new(&vec![b'a'; 5000], 700);
        assert_eq!(
            read_head(&mut big, &mut Vec::new(), 1024),
            Err(NetError::HeadTooLarge(1024))
        );
    }

    #[test]
    fn parses_heads_and_framing() {
        let head = parse_response_head(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nETag:  \"x\" \r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.status, 206);
        assert_eq!(head.reason, "Partial Content");
        assert_eq!(head.header("etag"), Some("\"x\""));
        assert!(head.keep_alive());
        assert_eq!(response_framing("GET", &head), Ok(Framing::Length(10)));
        assert_eq!(response_framing("HEAD", &head), Ok(Framing::Empty));

        let chunked = parse_response_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(response_framing("GET", &chunked), Ok(Framing::Chunked));
        let old = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert!(!old.keep_alive());
        assert_eq!(response_framing("GET", &old), Ok(Framing::UntilClose));
        let closing = parse_response_head(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!closing.keep_alive());
        assert_eq!(response_framing("GET", &closing), Ok(Framing::Empty));

        let request = parse_request_head(
            b"POST /invoke?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (request.method.as_str(), request.target.as_str()),
            ("POST", "/invoke?x=1")
        );
        assert_eq!(request_framing(&request), Ok(Framing::Length(4)));
        let get = parse_request_head(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(request_framing(&get), Ok(Framing::Empty));
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse_response_head(bad).is_err(), "{bad:?}");
        }
        let conflicting = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        assert!(response_framing("GET", &conflicting).is_err());
        let negative =
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").unwrap();
        assert!(response_framing("GET", &negative).is_err());
        for bad in [
            &b"get / HTTP/1.1\r\n\r\n"[..],
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 x\r\n\r\n",
        ] {
            assert!(parse_request_head(bad).is_err(), "{bad:?}");
        }
        let gzip =
            parse_request_head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap();
        assert!(request_framing(&gzip).is_err());
    }
}
