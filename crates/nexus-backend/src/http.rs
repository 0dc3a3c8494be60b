// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The HTTP op: one shared client that reaches only what the allow-list names, within bounds
//! the backend sets.
//!
//! A request goes through, in order:
//!
//! 1. [`HttpGateway::check`], before a byte of the body is copied: the URL (printable ASCII
//!    without backslashes, no user info, `http`/`https`), its scheme, host and port against
//!    the allow-list ([`allow`]), the header list, and the body's size against
//!    [`HttpPolicy::max_request_bytes`]; the deadline is set
//!    (`min(guest timeout or 30 s, HttpPolicy::max_timeout)`).
//! 2. The caller copies the body out of the window, with room from the staging budget.
//! 3. [`HttpGateway::send`]: the body goes to the client as a one-shot stream that gives the
//!    staging room back once the client has taken it. Names are resolved by
//!    [`resolve::CheckedResolver`], which checks every address ([`address`]) and hands the
//!    client only checked ones; proxy variables are ignored; each redirect is checked like
//!    the request itself ([`refusal::redirect_policy`]). The response body is streamed into
//!    the window and read no further than [`HttpPolicy::max_response_bytes`].
//!
//! The caller bounds the whole exchange, body copy included, by the deadline.

mod address;
mod allow;
mod failure;
mod refusal;
mod resolve;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use nexus_ring::records::{Header, HeaderList, LIST_PREFIX_SIZE};
use nexus_ring::{HttpMethod, ResponseTarget, SegmentList, Status};
use reqwest::Url;
use reqwest::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use self::allow::AllowList;
pub(crate) use self::failure::HttpFailure;
use self::refusal::{GuestUrlError, Refusal, check_guest_url, origin_text, redirect_policy};
use self::resolve::{CheckedResolver, Lookup};
use crate::config::HttpPolicy;
use crate::error::{Error, Result};
use crate::staging::StagingPermit;
use crate::window::WindowMemory;

/// Timeout of an HTTP request whose `arg1` is 0 (still bounded by
/// [`HttpPolicy::max_timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Request headers the backend sets itself.
const OWN_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];
/// `total` of a response body cut at [`HttpPolicy::max_response_bytes`] whose full length
/// was not announced.
const TOTAL_UNKNOWN: u64 = u64::MAX;

/// Makes ring the process's TLS crypto provider (the HTTP client and the S3 store's client
/// use rustls), unless one is installed already.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The shared HTTP client and the policy it enforces.
#[derive(Clone, Debug)]
pub(crate) struct HttpGateway {
    client: reqwest::Client,
    allow: Arc<AllowList>,
    policy: HttpPolicy,
}

/// What the guest asked for, as found in its request (nothing copied from the payload yet).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpCall<'a> {
    /// The key segment: the URL.
    pub(crate) url: &'a [u8],
    /// The meta segment: a header list.
    pub(crate) headers: Option<&'a [u8]>,
    /// The method.
    pub(crate) method: HttpMethod,
    /// The guest's timeout (0: the default).
    pub(crate) timeout_ms: u64,
    /// Length of the body, still in the window.
    pub(crate) body_len: u32,
}

/// A call that passed every check, to be sent once its body is copied.
#[derive(Debug)]
pub(crate) struct CheckedCall {
    url: Url,
    headers: HeaderMap,
    method: reqwest::Method,
    /// When the whole exchange must be over.
    pub(crate) deadline: Instant,
}

/// A response, written into the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpAnswer {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// The response headers as a header list (`None`: the meta area has no room at all).
    pub(crate) headers: Option<Vec<u8>>,
    /// Body bytes written to the response payload buffers.
    pub(crate) written: u32,
    /// The body's full length; [`TOTAL_UNKNOWN`] if it was cut at the response limit and its
    /// length was not announced.
    pub(crate) total: u64,
}

impl HttpGateway {
    /// A client confined to `policy`; fails on a bad allow-list entry, naming it.
    pub(crate) fn new(policy: &HttpPolicy) -> Result<Self> {
        Self::with_lookup(policy, Lookup::System)
    }

    fn with_lookup(policy: &HttpPolicy, lookup: Lookup) -> Result<Self> {
        let allow = Arc::new(AllowList::parse(&policy.allow)?);
        install_crypto_provider();
        let client = reqwest::Client::builder()
            // HTTP_PROXY, ALL_PROXY and the like would send requests around every check.
            .no_proxy()
            .dns_resolver(CheckedResolver::new(allow.clone(), lookup))
            .redirect(redirect_policy(allow.clone()))
            // The previous URL (its path and query) is nobody else's business.
            .referer(false)
            .retry(reqwest::retry::never())
            .build()
            .map_err(Error::HttpClient)?;
        Ok(Self {
            client,
            allow,
            policy: policy.clone(),
        })
    }

    /// Checks `call` against the allow-list and the policy's bounds; nothing is copied out of
    /// the window yet.
    pub(crate) fn check(
        &self,
        call: HttpCall<'_>,
    ) -> std::result::Result<CheckedCall, HttpFailure> {
        let text = std::str::from_utf8(call.url)
            .map_err(|_| HttpFailure::new(Status::InvalidRequest, "the URL is not UTF-8"))?;
        let url = check_guest_url(&self.allow, text).map_err(|error| match error {
            GuestUrlError::Malformed(e) => {
                HttpFailure::new(Status::InvalidRequest, format!("bad URL: {e}"))
            }
            // The protocol's key is an http:// or https:// URL.
            GuestUrlError::Refused(refusal @ Refusal::Scheme(_)) => {
                HttpFailure::new(Status::InvalidRequest, refusal.to_string())
            }
            GuestUrlError::Refused(refusal) => {
                log::debug!("HTTP request refused: {refusal}");
                HttpFailure::refused(&refusal)
            }
        })?;
        let headers = request_headers(call.headers)?;
        let limit = self.policy.max_request_bytes;
        if u64::from(call.body_len) > limit {
            return Err(HttpFailure {
                total: limit,
                ..HttpFailure::new(
                    Status::TooLarge,
                    format!(
                        "the request body is {} bytes; this backend sends at most {limit}",
                        call.body_len
                    ),
                )
            });
        }
        let method = reqwest::Method::from_bytes(call.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let timeout = match call.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        }
        .min(self.policy.max_timeout);
        Ok(CheckedCall {
            url,
            headers,
            method,
            deadline: Instant::now() + timeout,
        })
    }

    /// Sends a checked call with its copied `body` (whose staging `room` is given back once
    /// the client has taken the body), writing the response headers into the meta area and
    /// the body into the response payload buffers.
    pub(crate) async fn send(
        &self,
        call: CheckedCall,
        body: Bytes,
        room: StagingPermit,
        window: &WindowMemory,
        response: &ResponseTarget,
    ) -> std::result::Result<HttpAnswer, HttpFailure> {
        let target = origin_text(&call.url);
        let mut request = self
            .client
            .request(call.method, call.url)
            .headers(call.headers)
            .timeout(call.deadline.saturating_duration_since(Instant::now()));
        if !body.is_empty() {
            request = request
                .header(CONTENT_LENGTH, body.len())
                .body(reqwest::Body::wrap_stream(OneShotBody {
                    bytes: Some(body),
                    room: Some(room),
                }));
        }
        let answer = request
            .send()
            .await
            .map_err(|e| HttpFailure::of_request(&e))?;
        let status = answer.status().as_u16();
        let headers = response_headers(answer.headers(), response.meta_capacity() as usize)?;
        let (written, total) = self
            .read_body(answer, window, response.payload, &target)
            .await?;
        Ok(HttpAnswer {
            status,
            headers,
            written,
            total,
        })
    }

    /// Streams the body into `target`; reads no more than the response limit. The bytes
    /// written and the body's full length (see [`HttpAnswer::total`]).
    async fn read_body(
        &self,
        mut answer: reqwest::Response,
        window: &WindowMemory,
        target: SegmentList,
        origin: &str,
    ) -> std::result::Result<(u32, u64), HttpFailure> {
        let limit = self.policy.max_response_bytes;
        let capacity = target.total_len();
        let announced = answer.content_length();
        let mut written: u32 = 0;
        let mut read: u64 = 0;
        loop {
            if written == capacity {
                if let Some(length) = announced {
                    // Full buffers and a known length: nothing more to learn.
                    return Ok((written, length));
                }
            }
            let chunk = match answer.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok((written, read)),
                Err(e) => return Err(HttpFailure::of_request(&e)),
            };
            let room_under_limit = limit - read;
            let cut = chunk.len() as u64 > room_under_limit;
            let keep = if cut {
                room_under_limit as usize
            } else {
                chunk.len()
            };
            let take = keep.min((capacity - written) as usize);
            if take > 0 {
                window
                    .write_stream(&target, written, &chunk[..take])
                    .map_err(|e| HttpFailure::new(Status::Internal, e.to_string()))?;
                written += take as u32;
            }
            read += keep as u64;
            if cut {
                log::debug!("HTTP response body from {origin} cut at {limit} bytes");
                return Ok((written, announced.unwrap_or(TOTAL_UNKNOWN)));
            }
        }
    }
}

/// The guest's header list as request headers, without those the backend sets itself.
fn request_headers(bytes: Option<&[u8]>) -> std::result::Result<HeaderMap, HttpFailure> {
    let mut headers = HeaderMap::new();
    let Some(bytes) = bytes else {
        return Ok(headers);
    };
    let list = HeaderList::decode(bytes)
        .map_err(|e| HttpFailure::new(Status::InvalidRequest, format!("bad header list: {e}")))?;
    for header in &list {
        if OWN_HEADERS
            .iter()
            .any(|own| header.name.eq_ignore_ascii_case(own))
        {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Err(HttpFailure::new(
                Status::InvalidRequest,
                format!("header `{}` is not valid", header.name),
            ));
        };
        headers.append(name, value);
    }
    Ok(headers)
}

/// The response headers as a header list for a meta area of `capacity` bytes (`None` if it
/// has no room at all: they are dropped).
fn response_headers(
    headers: &HeaderMap,
    capacity: usize,
) -> std::result::Result<Option<Vec<u8>>, HttpFailure> {
    if capacity == 0 {
        return Ok(None);
    }
    let entries: Vec<Header<'_>> = headers
        .iter()
        .take(nexus_ring::limits::MAX_HEADERS as usize)
        .map(|(name, value)| Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    if headers.len() > entries.len() {
        log::warn!("HTTP response has more than 64 headers; the rest are dropped");
    }
    let needed = entries.iter().fold(LIST_PREFIX_SIZE as usize, |n, h| {
        n + 4 + h.name.len() + h.value.len()
    });
    if needed > capacity {
        return Err(HttpFailure {
            detail: needed as u64,
            ..HttpFailure::new(
                Status::TooLarge,
                format!("the response headers need {needed} bytes of meta area"),
            )
        });
    }
    let encoding_failed = |e: nexus_ring::Error| {
        HttpFailure::new(
            Status::Internal,
            format!("cannot encode the response headers: {e}"),
        )
    };
    let mut meta = vec![0u8; needed];
    let mut writer = HeaderList::writer(&mut meta);
    for entry in &entries {
        writer.push(entry).map_err(encoding_failed)?;
    }
    let len = writer.finish().map_err(encoding_failed)?;
    meta.truncate(len);
    Ok(Some(meta))
}

/// A request body handed over in one piece; the staging room it holds is given back as soon
/// as the client takes the bytes, not when the exchange ends.
struct OneShotBody {
    bytes: Option<Bytes>,
    room: Option<StagingPermit>,
}

impl futures::Stream for OneShotBody {
    type Item = std::result::Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.room = None;
        Poll::Ready(self.bytes.take().map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use nexus_ring::{RESPONSE_HEADER_SIZE, SegmentRef};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::staging::Staging;

    const BASE: u64 = 0x1_0000;

    fn window() -> WindowMemory {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), 0x1_0000)]).unwrap();
        WindowMemory::new(Arc::new(mem)).unwrap()
    }

    fn target(buffer: u32) -> ResponseTarget {
        ResponseTarget {
            head: SegmentRef::new(BASE, RESPONSE_HEADER_SIZE as u32 + 1024),
            payload: SegmentList::from_slice(&[SegmentRef::new(BASE + 0x1000, buffer)]).unwrap(),
        }
    }

    fn gateway_for(allow: &[String], names: &[(&str, IpAddr)], policy: HttpPolicy) -> HttpGateway {
        let table = names
            .iter()
            .map(|(name, ip)| (name.to_string(), vec![*ip]))
            .collect();
        HttpGateway::with_lookup(
            &HttpPolicy {
                allow: allow.to_vec(),
                ..policy
            },
            Lookup::Fixed(Arc::new(table)),
        )
        .unwrap()
    }

    fn call(url: &str) -> HttpCall<'_> {
        HttpCall {
            url: url.as_bytes(),
            headers: None,
            method: HttpMethod::Get,
            timeout_ms: 5_000,
            body_len: 0,
        }
    }

    /// Reads one request (headers and a `Content-Length` body); its bytes.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let body_at = loop {
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-request");
            request.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&request[..body_at]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        while request.len() < body_at + length {
            let n = stream.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        request
    }

    /// A server that answers each connection with `response`; counts connections.
    async fn server(response: Vec<u8>) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    read_request(&mut stream).await;
                    let _ = stream.write_all(&response).await;
                });
            }
        });
        (addr, connections)
    }

    fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    async fn get(
        gateway: &HttpGateway,
        url: &str,
        buffer: u32,
    ) -> std::result::Result<(HttpAnswer, Vec<u8>), HttpFailure> {
        let window = window();
        let target = target(buffer);
        let checked = gateway.check(call(url))?;
        let staging = Staging::new(1 << 20);
        let answer = gateway
            .send(
                checked,
                Bytes::new(),
                staging.reserve(0).await,
                &window,
                &target,
            )
            .await?;
        let mut body = Vec::new();
        window
            .copy_stream_out(&target.payload, 0, answer.written, &mut body)
            .unwrap();
        Ok((answer, body))
    }

    #[tokio::test]
    async fn names_connect_to_the_checked_addresses_only() {
        let (addr, connections) =
            server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec()).await;
        let port = addr.port();
        let loopback = addr.ip();
        let allow = [
            format!("http://service.test:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://rebound.test:{port}"),
        ];
        let gateway = gateway_for(
            &allow,
            &[("service.test", loopback), ("rebound.test", loopback)],
            HttpPolicy::default(),
        );
        // `service.test` exists only in the gateway's table: the connection went where the
        // checked lookup said, to the address the allow-list names.
        let (answer, body) = get(&gateway, &format!("http://service.test:{port}/"), 64)
            .await
            .unwrap();
        assert_eq!((answer.status, body.as_slice()), (200, &b"hi"[..]));
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Any listed name may, where the address is listed with the same scheme and port.
        assert!(
            get(&gateway, &format!("http://rebound.test:{port}/"), 64)
                .await
                .is_ok()
        );
        // An unlisted port of the address is refused before any connection.
        let failure = get(&gateway, &format!("http://127.0.0.1:{}/", port ^ 1), 64)
            .await
            .unwrap_err();
        assert_eq!(failure.status, Status::PermissionDenied);

        // Without the IP-literal entry a name cannot reach loopback.
        let gateway = gateway_without_literal(port, loopback);
        let failure = get(&gateway, &format!("http://service.test:{port}/"), 64)
            .await
            .unwrap_err();
        assert_eq!(failure.status, Status::PermissionDenied);
        assert!(
            failure
                .message
                .contains("host `service.test` resolves to 127.0.0.1, which is loopback"),
            "{}",
            failure.message
        );
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    fn gateway_without_literal(port: u16, ip: IpAddr) -> HttpGateway {
        gateway_for(
            &[format!("http://service.test:{port}")],
            &[("service.test", ip)],
            HttpPolicy::default(),
        )
    }

    #[tokio::test]
    async fn response_bodies_stop_at_the_limit() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let policy = HttpPolicy {
            max_response_bytes: 1000,
            ..HttpPolicy::default()
        };
        // Length not announced: cut, `total` says the length is unknown.
        let (addr, _) = server(chunked(&body, 300)).await;
        let gateway = gateway_for(&[format!("http://{addr}")], &[], policy.clone());
        let (answer, got) = get(&gateway, &format!("http://{addr}/"), 4096)
            .await
            .unwrap();
        assert_eq!(answer.written, 1000);
        assert_eq!(answer.total, TOTAL_UNKNOWN);
        assert_eq!(got, body[..1000]);
        // Fewer buffers than the limit: the buffers' worth, still cut.
        let (answer, got) = get(&gateway, &format!("http://{addr}/"), 100)
            .await
            .unwrap();
        assert_eq!((answer.written, answer.total), (100, TOTAL_UNKNOWN));
        assert_eq!(got, body[..100]);

        // Announced: `total` is the announced length.
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        let (addr, _) = server(response).await;
        let gateway = gateway_for(&[format!("http://{addr}")], &[], policy.clone());
        let (answer, got) = get(&gateway, &format!("http://{addr}/"), 4096)
            .await
            .unwrap();
        assert_eq!((answer.written, answer.total), (1000, 5000));
        assert_eq!(got, body[..1000]);

        // Exactly the limit: not cut.
        let (addr, _) = server(chunked(&body[..1000], 256)).await;
        let gateway = gateway_for(&[format!("http://{addr}")], &[], policy);
        let (answer, got) = get(&gateway, &format!("http://{addr}/"), 4096)
            .await
            .unwrap();
        assert_eq!((answer.written, answer.total), (1000, 1000));
        assert_eq!(got, body[..1000]);
    }

    #[tokio::test]
    async fn the_backend_sets_the_bounds() {
        let policy = HttpPolicy {
            max_timeout: Duration::from_secs(2),
            max_request_bytes: 100,
            ..HttpPolicy::default()
        };
        let gateway = gateway_for(&["http://api.test".to_owned()], &[], policy);
        let before = Instant::now();
        // The guest's timeout is capped, and so is the default.
        for (timeout_ms, expected) in [(0, 2_000), (60_000, 2_000), (1_000, 1_000)] {
            let checked = gateway
                .check(HttpCall {
                    timeout_ms,
                    ..call("http://api.test/")
                })
                .unwrap();
            let expected = Duration::from_millis(expected);
            assert!(checked.deadline <= Instant::now() + expected);
            assert!(checked.deadline >= before + expected);
        }
        // A body over the limit is refused, naming the limit in `total`.
        let failure = gateway
            .check(HttpCall {
                body_len: 101,
                ..call("http://api.test/")
            })
            .unwrap_err();
        assert_eq!((failure.status, failure.total), (Status::TooLarge, 100));
        assert!(
            gateway
                .check(HttpCall {
                    body_len: 100,
                    ..call("http://api.test/")
                })
                .is_ok()
        );
        // The URL is checked first: a refused URL is refused whatever its body.
        let failure = gateway
            .check(HttpCall {
                body_len: 101,
                ..call("http://other.test/")
            })
            .unwrap_err();
        assert_eq!(failure.status, Status::PermissionDenied);
    }

    #[tokio::test]
    async fn staging_room_is_given_back_once_the_body_is_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_body, body_arrived) = oneshot::channel();
        let (answer_now, answer) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = read_request(&mut stream).await;
            let _ = got_body.send(request);
            let _ = answer.await;
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        });
        let gateway = gateway_for(&[format!("http://{addr}")], &[], HttpPolicy::default());
        let staging = Staging::new(64 << 10);
        let url = format!("http://{addr}/up");
        let checked = gateway
            .check(HttpCall {
                method: HttpMethod::Post,
                body_len: 5,
                ..call(&url)
            })
            .unwrap();
        let room = staging.reserve(64 << 10).await;
        assert!(staging.try_reserve(1).is_none());
        let sending = {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let window = window();
                gateway
                    .send(
                        checked,
                        Bytes::from_static(b"hello"),
                        room,
                        &window,
                        &target(64),
                    )
                    .await
            })
        };
        let request = body_arrived.await.unwrap();
        assert!(request.ends_with(b"\r\n\r\nhello"));
        assert!(
            String::from_utf8_lossy(&request)
                .to_ascii_lowercase()
                .contains("content-length: 5\r\n")
        );
        // The server holds its answer back; the room is free already.
        assert!(staging.try_reserve(64 << 10).is_some());
        answer_now.send(()).unwrap();
        let answer = sending.await.unwrap().unwrap();
        assert_eq!(answer.status, 204);
    }
}
