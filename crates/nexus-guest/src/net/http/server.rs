// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small HTTP/1.1 server for invocations: [`HttpServer`].
//!
//! As function VMs of Firecracker-based platforms do, the function listens on a TCP port
//! and the platform sends each invocation as a request — `POST` with the input as the body —
//! and takes the response body as the result. One listener, one connection and one
//! request at a time, with keep-alive: the platform's connection stays open between
//! invocations. `Expect: 100-continue` is answered (curl sends it for large bodies), and
//! request bodies may be chunked. When the stack takes a new VM generation (a restore, see
//! [`NetStack::renew`](crate::net::NetStack::renew)) while the server waits, the connections
//! of the snapshotted VM are dropped and the port listens again.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use smoltcp::time::Duration;

use super::body::{Sink, read_body, send_chunked};
use super::head::{DEFAULT_MAX_HEAD, parse_request_head, read_head, request_framing};
use crate::net::error::{NetError, Result};
use crate::net::link::Link;
use crate::net::stack::{Net, TcpConnection, TcpListener};
use crate::net::transport::Transport;

/// The largest request body accepted by default (64 MiB).
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRequest {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ServerRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        super::head::find_header(&self.headers, name)
    }
}

/// The server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests refused as malformed (answered 400 or 413, connection closed).
    pub refused: u64,
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Reads one request from `connection`: `Ok(None)` if the peer closed before sending one.
/// Answers `Expect: 100-continue` before reading the body.
pub fn read_request<T: Transport>(
    connection: &mut T,
    head_buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Option<(ServerRequest, bool)>> {
    if !read_head(connection, head_buf, DEFAULT_MAX_HEAD)? {
        return Ok(None);
    }
    let head = parse_request_head(head_buf)?;
    let framing = request_framing(&head)?;
    if head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = Vec::new();
    read_body(
        connection,
        framing,
        &mut Sink::Vec {
            buf: &mut body,
            max: max_body,
        },
    )?;
    let keep_alive = head.keep_alive();
    Ok(Some((
        ServerRequest {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
        },
        keep_alive,
    )))
}

/// Writes a response head: status line, `Content-Type`, the framing header, `headers`, and
/// `Connection: keep-alive` or `Connection: close`.
fn response_head(
    status: u16,
    content_type: &str,
    length: Option<usize>,
    headers: &[(&str, &str)],
    keep_alive: bool,
) -> String {
    let mut head = String::with_capacity(192);
    // Writing to a `String` cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    let _ = match length {
        Some(len) => write!(head, "Content-Length: {len}\r\n"),
        None => write!(head, "Transfer-Encoding: chunked\r\n"),
    };
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head
}

/// The invocation server: one listener, one request at a time (over any number of kept
/// connections).
#[derive(Debug)]
pub struct HttpServer<L: Link> {
    listener: TcpListener<L>,
    connections: Vec<TcpConnection<L>>,
    /// The connection of the request awaiting its response, and whether it stays open.
    responding: Option<(usize, bool)>,
    head: Vec<u8>,
    max_body: usize,
    stats: ServerStats,
}

/// What a wait of the server found.
enum Ready {
    /// Connection `i` has bytes (or closed).
    Connection(usize),
    /// A new connection.
    New((smoltcp::iface::SocketHandle, u64)),
    /// The stack took a new VM generation: every connection and listening socket is gone.
    Renewed,
}

impl<L: Link> HttpServer<L> {
    /// Listens on `port`.
    pub fn new(net: &Net<L>, port: u16) -> Result<Self> {
        Ok(Self {
            listener: net.listen(port)?,
            connections: Vec::new(),
            responding: None,
            head: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            stats: ServerStats::default(),
        })
    }

    /// Sets the largest request body accepted.
    pub fn set_max_body(&mut self, max: usize) {
        self.max_body = max;
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// Waits until a kept connection has bytes (or closed) or a new one arrives.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Ready> {
        self.listener.prepare()?;
        let net = self.listener.net().clone();
        let ids: Vec<_> = self.connections.iter().map(TcpConnection::id).collect();
        let listener = &mut self.listener;
        let epoch_before = net.with(|stack| stack.epoch());
        net.block_until(timeout, "HTTP request", |stack| {
            if stack.epoch() != epoch_before {
                return Ok(Some(Ready::Renewed));
            }
            for (index, &(handle, epoch)) in ids.iter().enumerate() {
                let ready = stack
                    .tcp(handle, epoch)
                    .map_or(true, |socket| socket.can_recv() || !socket.may_recv());
                if ready {
                    return Ok(Some(Ready::Connection(index)));
                }
            }
            Ok(listener.ready(stack)?.map(Ready::New))
        })
    }

    /// Waits for the next request. A request returned before must have been answered.
    /// Malformed requests are answered 400 (413 for a body over the limit) and their
    /// connection closed; this goes on waiting. `timeout` bounds each wait for the peers;
    /// `None` waits for ever.
    pub fn next_request(&mut self, timeout: Option<Duration>) -> Result<ServerRequest> {
        if self.responding.is_some() {
            return Err(NetError::Http("the previous request has no response yet"));
        }
        loop {
            let index = match self.wait(timeout)? {
                Ready::New(id) => {
                    self.connections.push(self.listener.connection(id));
                    self.stats.connections += 1;
                    continue;
                }
                Ready::Connection(index) => index,
                // The connections belonged to the VM before the snapshot (the stack sent
                // nothing to their peers); the listener opens anew at the next wait.
                Ready::Renewed => {
                    self.connections.clear();
                    continue;
                }
            };
            let connection = &mut self.connections[index];
            match read_request(connection, &mut self.head, self.max_body) {
                Ok(Some((request, keep_alive))) => {
                    self.stats.requests += 1;
                    self.responding = Some((index, keep_alive));
                    return Ok(request);
                }
                // The client closed (or dropped) its connection between requests.
                Ok(None)
                | Err(
                    NetError::ConnectionReset
                    | NetError::Stale
                    | NetError::ConnectionClosed(_)
                    | NetError::Timeout(_),
                ) => {
                    self.connections.swap_remove(index);
                }
                Err(error) => {
                    self.stats.refused += 1;
                    let status = match error {
                        NetError::BodyTooLarge { .. } => 413,
                        _ => 400,
                    };
                    let head = response_head(status, "text/plain", Some(0), &[], false);
                    let _ = connection.send(head.as_bytes());
                    let _ = connection.flush();
                    self.connections.swap_remove(index);
                }
            }
        }
    }

    /// Sends a response on the pending request's connection, through `send`, and waits
    /// until the peer has it all.
    fn answer(
        &mut self,
        send: impl FnOnce(&mut TcpConnection<L>, bool) -> Result<()>,
    ) -> Result<()> {
        let (index, keep_alive) = self
            .responding
            .take()
            .ok_or(NetError::Http("no request to respond to"))?;
        let connection = &mut self.connections[index];
        let result = send(connection, keep_alive).and_then(|()| connection.flush());
        if result.is_err() || !keep_alive {
            self.connections.swap_remove(index);
        }
        result
    }

    /// Answers the pending request with `status` and `body`; returns once the client has
    /// it all (the function may compute for long after, without polling the stack).
    pub fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) -> Result<()> {
        self.respond_with(status, content_type, &[], body)
    }

    /// [`respond`](Self::respond), with more header fields (`name`, `value`; the server
    /// writes the framing and `Connection` fields itself).
    pub fn respond_with(
        &mut self,
        status: u16,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        self.answer(|connection, keep_alive| {
            let head = response_head(status, content_type, Some(body.len()), headers, keep_alive);
            connection.send(head.as_bytes())?;
            connection.send(body)
        })
    }

    /// Answers the pending request with `status` and a chunked body of `chunks`.
    pub fn respond_chunked(
        &mut self,
        status: u16,
        content_type: &str,
        chunks: &[&[u8]],
    ) -> Result<()> {
        self.answer(|connection, keep_alive| {
            let head = response_head(status, content_type, None, &[], keep_alive);
            connection.send(head.as_bytes())?;
            send_chunked(connection, chunks)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http::head::tests::Script;

    #[test]
    fn reads_requests_and_answers_expect_continue() {
        let input = b"POST /invoke HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello\
                      POST /again HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        let mut script = Script::new(input, 3);
        let mut head = Vec::new();
        let (first, keep) = read_request(&mut script, &mut head, 100).unwrap().unwrap();
        assert_eq!(
            (first.method.as_str(), first.target.as_str()),
            ("POST", "/invoke")
        );
        assert_eq!(first.body, b"hello");
        assert_eq!(first.header("host"), Some("x"));
        assert!(keep);
        assert_eq!(script.output, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (second, keep) = read_request(&mut script, &mut head, 100).unwrap().unwrap();
        assert_eq!(second.body, b"hi");
        assert!(!keep);
        assert_eq!(read_request(&mut script, &mut head, 100), Ok(None));
        let mut big = Script::new(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
            4,
        );
        assert!(matches!(
            read_request(&mut big, &mut head, 5),
            Err(NetError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn response_heads() {
        assert_eq!(
            response_head(200, "application/octet-stream", Some(3), &[], true),
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            response_head(
                404,
                "text/plain",
                Some(0),
                &[("X-A", "1"), ("X-B", "two")],
                true
            ),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nX-A: 1\r\nX-B: two\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            response_head(500, "text/plain", None, &[], false),
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }
}
