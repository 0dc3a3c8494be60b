// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The HTTP/1.1 client: [`HttpClient`], with keep-alive.
//!
//! One connection is kept open and reused across requests; a new one is opened when the
//! server closed it (`Connection: close`, a body delimited by the close, an idle timeout).
//! When a reused connection turns out dead before the first byte of the response — the
//! server closed it while it was idle — an idempotent request is sent again, once, on a
//! new connection. Request bodies go from the caller's slice into the transport; response
//! bodies from the transport's buffer into the caller's (a [`Sink`]): one copy each way.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::body::{Sink, read_body};
use super::head::{
    DEFAULT_MAX_HEAD, Framing, ResponseHead, parse_response_head, read_head, response_framing,
};
use crate::net::error::{NetError, Result};
use crate::net::transport::{Connector, Transport};

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `PUT`.
    Put,
    /// `POST`.
    Post,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    /// Whether sending it twice has the effect of sending it once (RFC 9110 §9.2.2).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post)
    }
}

/// A request to send.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The request target: the path and query, already percent-encoded.
    pub target: &'a str,
    /// Header fields; the client adds `Host` and `Content-Length`.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body (sent with a `Content-Length`; none for an empty `GET`, `HEAD` or
    /// `DELETE`).
    pub body: &'a [u8],
}

/// The client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (retries included).
    pub requests: u64,
    /// Connections opened.
    pub connections: u64,
    /// Requests sent on a connection kept from an earlier one.
    pub reused: u64,
    /// Requests sent again after a kept connection turned out closed.
    pub retries: u64,
    /// Connections given up — closed by the server, found closed or broken, left with a
    /// body unread, or dropped by [`HttpClient::disconnect`]: each one the next request has
    /// to open anew.
    pub dropped: u64,
}

/// An HTTP/1.1 client for one server.
pub struct HttpClient<C: Connector> {
    connector: C,
    connection: Option<C::Connection>,
    host: String,
    head: Vec<u8>,
    max_head: usize,
    stats: ClientStats,
}

impl<C: Connector> core::fmt::Debug for HttpClient<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HttpClient")
            .field("host", &self.host)
            .field("connected", &self.connection.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A failed attempt, and whether any of the response had arrived.
struct Attempt {
    error: NetError,
    response_started: bool,
}

impl<C: Connector> HttpClient<C> {
    /// A client of the server `connector` reaches, named `host` in the `Host` header.
    pub fn new(connector: C, host: impl Into<String>) -> Self {
        Self {
            connector,
            connection: None,
            host: host.into(),
            head: Vec::new(),
            max_head: DEFAULT_MAX_HEAD,
            stats: ClientStats::default(),
        }
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Sets the largest response head accepted (default 16 KiB).
    pub fn set_max_head(&mut self, max: usize) {
        self.max_head = max;
    }

    /// Closes the kept connection (the next request opens a new one); returns whether there
    /// was one (counted in [`ClientStats::dropped`]).
    pub fn disconnect(&mut self) -> bool {
        self.drop_connection()
    }

    /// Gives the kept connection up, counting it; whether there was one.
    fn drop_connection(&mut self) -> bool {
        let had = self.connection.take().is_some();
        if had {
            self.stats.dropped += 1;
        }
        had
    }

    /// Whether a connection is kept.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Sends `request` and reads the response head; the body is read from the returned
    /// [`Exchange`].
    pub fn send(&mut self, request: &Request<'_>) -> Result<Exchange<'_, C>> {
        let reused = self
            .connection
            .as_mut()
            .is_some_and(|connection| connection.is_reusable());
        if !reused {
            self.drop_connection();
        }
        let (head, framing) = match self.attempt(request, reused) {
            Ok(answer) => answer,
            Err(Attempt {
                error,
                response_started,
            }) => {
                self.drop_connection();
                let dead_connection = matches!(
                    error,
                    NetError::ConnectionClosed(_) | NetError::ConnectionReset | NetError::Stale
                );
                if !(reused
                    && dead_connection
                    && !response_started
                    && request.method.is_idempotent())
                {
                    return Err(error);
                }
                self.stats.retries += 1;
                self.attempt(request, false).map_err(|attempt| {
                    self.drop_connection();
                    attempt.error
                })?
            }
        };
        Ok(Exchange {
            client: self,
            head,
            framing,
            done: false,
        })
    }

    /// One try: (connect,) send, read the head.
    fn attempt(
        &mut self,
        request: &Request<'_>,
        reused: bool,
    ) -> core::result::Result<(ResponseHead, Framing), Attempt> {
        let fail = |error| Attempt {
            error,
            response_started: false,
        };
        if !reused {
            let connection = self.connector.connect().map_err(fail)?;
            self.connection = Some(connection);
            self.stats.connections += 1;
        } else {
            self.stats.reused += 1;
        }
        self.stats.requests += 1;
        let mut head = String::with_capacity(256);
        // Writing to a `String` cannot fail.
        let _ = write!(
            head,
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            request.method.as_str(),
            request.target,
            self.host
        );
        for (name, value) in request.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let with_length =
            !request.body.is_empty() || matches!(request.method, Method::Put | Method::Post);
        if with_length {
            let _ = write!(head, "Content-Length: {}\r\n", request.body.len());
        }
        head.push_str("\r\n");
        let Some(connection) = self.connection.as_mut() else {
            return Err(fail(NetError::ConnectionClosed("no connection")));
        };
        connection.send(head.as_bytes()).map_err(fail)?;
        connection.send(request.body).map_err(fail)?;
        loop {
            if !read_head(connection, &mut self.head, self.max_head).map_err(|error| Attempt {
                error,
                response_started: !self.head.is_empty(),
            })? {
                return Err(fail(NetError::ConnectionClosed(
                    "the server closed the connection before responding",
                )));
            }
            let started = |error| Attempt {
                error,
                response_started: true,
            };
            let response = parse_response_head(&self.head).map_err(started)?;
            // Interim responses (100 Continue…) precede the real one.
            if (100..200).contains(&response.status) && response.status != 101 {
                continue;
            }
            let framing = response_framing(request.method.as_str(), &response).map_err(started)?;
            return Ok((response, framing));
        }
    }
}

/// A response whose head has arrived: read (or discard) its body. Dropping it with the
/// body unread closes the connection.
pub struct Exchange<'c, C: Connector> {
    client: &'c mut HttpClient<C>,
    head: ResponseHead,
    framing: Framing,
    done: bool,
}

impl<C: Connector> core::fmt::Debug for Exchange<'_, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exchange")
            .field("head", &self.head)
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl<C: Connector> Exchange<'_, C> {
    /// The response head.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The body's framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    fn read(&mut self, sink: &mut Sink<'_>) -> Result<u64> {
        let Some(connection) = self.client.connection.as_mut() else {
            return Err(NetError::ConnectionClosed("no connection"));
        };
        let len = read_body(connection, self.framing, sink)?;
        self.done = true;
        if !self.head.keep_alive() || self.framing == Framing::UntilClose {
            self.client.drop_connection();
        }
        Ok(len)
    }

    /// Appends the body to `buf`, refusing one that would make it longer than `max`;
    /// returns the body's length.
    pub fn read_to_vec(mut self, buf: &mut Vec<u8>, max: usize) -> Result<u64> {
        self.read(&mut Sink::Vec { buf, max })
    }

    /// Reads the body into `buf`, refusing one longer; returns its length.
    pub fn read_into(mut self, buf: &mut [u8]) -> Result<usize> {
        let mut sink = Sink::Slice { buf, filled: 0 };
        self.read(&mut sink)?;
        match sink {
            Sink::Slice { filled, .. } => Ok(filled),
            _ => Ok(0),
        }
    }

    /// Reads and drops the body (keeping the connection usable); returns its length.
    pub fn discard(mut self) -> Result<u64> {
        self.read(&mut Sink::Discard)
    }
}

impl<C: Connector> Drop for Exchange<'_, C> {
    fn drop(&mut self) {
        if !self.done && self.framing != Framing::Empty {
            // The body is still in the connection: it cannot carry another request.
            self.client.drop_connection();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http::head::tests::Script;
    use alloc::collections::VecDeque;
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;

    /// Hands out scripted connections, recording what was sent on each.
    struct Scripted {
        answers: VecDeque<(Vec<u8>, bool)>,
        sent: Rc<RefCell<Vec<Vec<u8>>>>,
    }

    struct Conn {
        script: Script,
        reusable: bool,
        index: usize,
        sent: Rc<RefCell<Vec<Vec<u8>>>>,
    }

    impl Transport for Conn {
        fn send(&mut self, data: &[u8]) -> Result<()> {
            self.sent.borrow_mut()[self.index].extend_from_slice(data);
            Ok(())
        }
        fn recv(&mut self, consume: &mut dyn FnMut(&[u8]) -> usize) -> Result<usize> {
            self.script.recv(consume)
        }
        fn is_reusable(&mut self) -> bool {
            self.reusable
        }
    }

    impl Connector for Scripted {
        type Connection = Conn;
        fn connect(&mut self) -> Result<Conn> {
            let (input, reusable) = self
                .answers
                .pop_front()
                .ok_or(NetError::Connect("no more"))?;
            let mut sent = self.sent.borrow_mut();
            sent.push(Vec::new());
            Ok(Conn {
                script: Script::new(&input, 5),
                reusable,
                index: sent.len() - 1,
                sent: Rc::clone(&self.sent),
            })
        }
    }

    /// What was sent on each connection.
    type Sent = Rc<RefCell<Vec<Vec<u8>>>>;

    fn client(answers: &[(&[u8], bool)]) -> (HttpClient<Scripted>, Sent) {
        let sent = Rc::new(RefCell::new(Vec::new()));
        let connector = Scripted {
            answers: answers.iter().map(|(a, r)| (a.to_vec(), *r)).collect(),
            sent: Rc::clone(&sent),
        };
        (HttpClient::new(connector, "10.0.0.1:9000"), sent)
    }

    const GET: Request<'static> = Request {
        method: Method::Get,
        target: "/b/k",
        headers: &[("x-a", "1")],
        body: &[],
    };

    #[test]
    fn keeps_the_connection_and_reads_both_framings() {
        let responses: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        let (mut client, sent) = client(&[(responses, true)]);
        let mut body = Vec::new();
        let exchange = client.send(&GET).unwrap();
        assert_eq!(exchange.status(), 200);
        assert_eq!(exchange.read_to_vec(&mut body, 100), Ok(5));
        let mut buf = [0u8; 8];
        let exchange = client
            .send(&Request {
                method: Method::Put,
                body: b"data",
                ..GET
            })
            .unwrap();
        assert_eq!(exchange.framing(), Framing::Chunked);
        assert_eq!(exchange.read_into(&mut buf), Ok(3));
        assert_eq!(&buf[..3], b"abc");
        let exchange = client
            .send(&Request {
                method: Method::Delete,
                ..GET
            })
            .unwrap();
        assert_eq!(exchange.discard(), Ok(0));
        assert_eq!(body, b"hello");
        assert_eq!(client.stats().connections, 1);
        assert_eq!(client.stats().reused, 2);
        let sent = sent.borrow();
        let text = core::str::from_utf8(&sent[0]).unwrap();
        assert_eq!(
            text,
            "GET /b/k HTTP/1.1\r\nHost: 10.0.0.1:9000\r\nx-a: 1\r\n\r\n\
             PUT /b/k HTTP/1.1\r\nHost: 10.0.0.1:9000\r\nx-a: 1\r\nContent-Length: 4\r\n\r\ndata\
             DELETE /b/k HTTP/1.1\r\nHost: 10.0.0.1:9000\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn reconnects_after_close_and_retries_idempotent_requests_once() {
        let (mut client, _) = client(&[
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", true),
        ]);
        let mut body = Vec::new();
        client
            .send(&GET)
            .unwrap()
            .read_to_vec(&mut body, 10)
            .unwrap();
        assert!(!client.is_connected(), "Connection: close");
        client
            .send(&GET)
            .unwrap()
            .read_to_vec(&mut body, 10)
            .unwrap();
        // The second connection's script is spent: the server "closed" it while idle.
        client
            .send(&GET)
            .unwrap()
            .read_to_vec(&mut body, 10)
            .unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(client.stats().connections, 3);
        assert_eq!(client.stats().retries, 1);
        // The one closed by `Connection: close`, the one found dead; the third is kept.
        assert_eq!(client.stats().dropped, 2);
        assert!(client.disconnect());
        assert!(!client.disconnect(), "nothing left to drop");
        assert_eq!(client.stats().dropped, 3);

        // POST is not sent twice.
        let (mut client, _) = client_pair();
        client.send(&GET).unwrap().discard().unwrap();
        let post = Request {
            method: Method::Post,
            ..GET
        };
        assert!(matches!(
            client.send(&post),
            Err(NetError::ConnectionClosed(_))
        ));
        assert_eq!(client.stats().retries, 0);
    }

    fn client_pair() -> (HttpClient<Scripted>, Sent) {
        client(&[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        ])
    }

    #[test]
    fn unread_bodies_and_bad_responses_drop_the_connection() {
        let (mut client, _) = client(&[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", true),
            (b"garbage\r\n\r\n", true),
        ]);
        drop(client.send(&GET).unwrap());
        assert!(!client.is_connected());
        let mut small = [0u8; 2];
        assert!(matches!(
            client.send(&GET).unwrap().read_into(&mut small),
            Err(NetError::BodyTooLarge { len: 3, max: 2 })
        ));
        assert!(!client.is_connected());
        assert!(matches!(client.send(&GET), Err(NetError::Http(_))));
        assert!(!client.is_connected());
        let _ = vec![0u8; 1];
    }
}
