// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The in-guest S3 client: [`S3Client`], SigV4-signed, path-style, over the keep-alive
//! [`HttpClient`].
//!
//! Requests are path style (`http://host:port/bucket/key`): GET (optionally ranged), PUT,
//! HEAD, DELETE and LIST (`ListObjectsV2`, parsed by [`xml`]). Answers that are not a
//! success become the errors of the [`Nexus`](crate::Nexus) client — the same kinds for the
//! same failures, so one function handles both paths alike:
//!
//! | S3 | [`Error`] |
//! |---|---|
//! | 404 (`NoSuchKey`, `NoSuchBucket`…) | `NotFound` |
//! | 403 (`AccessDenied`, `SignatureDoesNotMatch`, `InvalidAccessKeyId`…) | `PermissionDenied` |
//! | 400 `EntityTooLarge`, 413 | `TooLarge` |
//! | other 4xx | `InvalidRequest` |
//! | 503 `SlowDown` | `Throttled` |
//! | other 503, 502 | `BackendUnavailable` |
//! | 408, 504 (`RequestTimeout`) | `Timeout` |
//! | other 5xx | `Internal` |
//! | the connection failed | `BackendUnavailable` (or `Timeout`) |
//! | the answer is not HTTP or S3 as spoken here | `Net` |
//!
//! A `RequestTimeTooSkewed` answer resets the client's idea of the time from the answer's
//! `Date` header and the request is signed and sent again once — the guest's wall clock
//! comes from its boot arguments, and may be stale after a snapshot restore.
//!
//! Credentials reach the guest in its boot arguments (that is the baseline's world); TLS is
//! off.

pub mod sigv4;
pub mod time;
pub mod xml;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use super::error::NetError;
use super::http::{Exchange, HttpClient, Method, Request, ResponseHead};
use super::link::Link;
use super::stack::{Net, StackConnector};
use super::transport::Connector;
use crate::client::{ListPage, ObjectInfo};
use crate::error::{Error, Result};
use sigv4::{
    Canonical, EMPTY_SHA256, Signer, UNSIGNED_PAYLOAD, canonical_query, sha256_hex, uri_encode,
};

/// The largest object [`S3Client::get`] reads by default (256 MiB).
pub const DEFAULT_MAX_OBJECT: usize = 256 << 20;
/// The largest error or listing document read.
const MAX_DOCUMENT: usize = 4 << 20;

/// What `x-amz-content-sha256` carries (see [`sigv4`] for the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSigning {
    /// The body's SHA-256: integrity without TLS, what SDKs do over plain HTTP.
    Signed,
    /// `UNSIGNED-PAYLOAD`: one pass over the body less.
    Unsigned,
}

/// Where the bucket is and how to sign for it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The server's address (an IPv4 literal: there is no DNS).
    pub host: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The bucket.
    pub bucket: String,
    /// The SigV4 region.
    pub region: String,
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token, if the credentials are temporary.
    pub session_token: Option<String>,
    /// What the payload hash is.
    pub payload: PayloadSigning,
    /// The largest object `get` reads.
    pub max_object: usize,
}

impl core::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A configuration with region `us-east-1`, signed payloads and the default limits.
    pub fn new(
        host: Ipv4Addr,
        port: u16,
        bucket: String,
        access_key: String,
        secret_key: String,
    ) -> Self {
        Self {
            host,
            port,
            bucket,
            region: String::from("us-east-1"),
            access_key,
            secret_key,
            session_token: None,
            payload: PayloadSigning::Signed,
            max_object: DEFAULT_MAX_OBJECT,
        }
    }

    /// The `Host` header's value.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// Requests signed and sent (retries included).
    pub requests: u64,
    /// Requests sent again after `RequestTimeTooSkewed`.
    pub skew_retries: u64,
}

/// The wall clock the client signs with: Unix milliseconds, if known.
pub type WallClock = Box<dyn Fn() -> Option<u64>>;

/// An S3 client for one bucket.
pub struct S3Client<C: Connector> {
    http: HttpClient<C>,
    config: S3Config,
    signer: Signer,
    host: String,
    clock: WallClock,
    /// Added to the clock: learned from the server's `Date` when it refused our time.
    skew_ms: i64,
    stats: S3Stats,
}

impl<C: Connector> core::fmt::Debug for S3Client<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("S3Client")
            .field("config", &self.config)
            .field("skew_ms", &self.skew_ms)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A request to sign and send.
struct S3Request<'a> {
    method: Method,
    /// The key (`None`: the bucket).
    key: Option<&'a str>,
    query: &'a [(&'a str, &'a str)],
    /// Headers to send and sign (lower case).
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

fn net_error(error: NetError) -> Error {
    match error {
        NetError::Timeout(what) => Error::Timeout(what.to_string()),
        NetError::Connect(_)
        | NetError::ConnectionReset
        | NetError::ConnectionClosed(_)
        | NetError::Stale
        | NetError::DeviceReset(_)
        | NetError::NoDevice
        | NetError::Transport(_) => {
            Error::BackendUnavailable(format!("S3 server unreachable: {error}"))
        }
        other => Error::Net(other),
    }
}

/// The error for a non-success answer `status` with the S3 error document `body`.
pub fn error_for(status: u16, body: &[u8]) -> Error {
    let (code, message) = core::str::from_utf8(body)
        .ok()
        .and_then(|text| xml::parse_error(text).ok())
        .unwrap_or_default();
    let message = match (code.is_empty(), message.is_empty()) {
        (true, _) => format!("HTTP status {status}"),
        (false, true) => code.clone(),
        (false, false) => format!("{code}: {message}"),
    };
    match (status, code.as_str()) {
        (404, _) => Error::NotFound(message),
        (403, _) => Error::PermissionDenied(message),
        (400, "EntityTooLarge") | (413, _) => Error::TooLarge {
            message,
            needed: 0,
            meta_needed: 0,
        },
        (503, "SlowDown") => Error::Throttled(message),
        (502 | 503, _) => Error::BackendUnavailable(message),
        (408 | 504, _) | (_, "RequestTimeout") => Error::Timeout(message),
        (400..=499, _) => Error::InvalidRequest(message),
        _ => Error::Internal(message),
    }
}

/// The total size in a `Content-Range` header (`bytes a-b/total` or `bytes */total`).
fn content_range_total(head: &ResponseHead) -> Option<u64> {
    head.header("content-range")?
        .rsplit_once('/')?
        .1
        .trim()
        .parse()
        .ok()
}

fn content_length(head: &ResponseHead) -> Option<u64> {
    head.header("content-length")?.trim().parse().ok()
}

impl<C: Connector> S3Client<C> {
    /// A client of `config`'s bucket over connections from `connector`, signing with the
    /// time `clock` tells.
    pub fn new(connector: C, config: S3Config, clock: WallClock) -> Self {
        let host = config.host_header();
        let signer = Signer {
            access_key: config.access_key.clone(),
            secret_key: config.secret_key.clone(),
            session_token: config.session_token.clone(),
            region: config.region.clone(),
        };
        Self {
            http: HttpClient::new(connector, host.clone()),
            config,
            signer,
            host,
            clock,
            skew_ms: 0,
            stats: S3Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The client's counters.
    pub fn stats(&self) -> S3Stats {
        self.stats
    }

    /// The HTTP client (its connection counters).
    pub fn http(&self) -> &HttpClient<C> {
        &self.http
    }

    /// The HTTP client, mutable (to drop the kept connection, say after a restore).
    pub fn http_mut(&mut self) -> &mut HttpClient<C> {
        &mut self.http
    }

    fn now_ms(&self) -> u64 {
        let local = (self.clock)().unwrap_or(0);
        local.saturating_add_signed(self.skew_ms)
    }

    /// Signs and sends `request`, and hands the response to `handle`. A
    /// `RequestTimeTooSkewed` refusal fixes the clock from the answer's `Date` and sends
    /// again, once.
    fn call<T>(
        &mut self,
        request: &S3Request<'_>,
        handle: impl FnOnce(Exchange<'_, C>) -> Result<T>,
    ) -> Result<T> {
        let path = match request.key {
            Some("") => return Err(Error::InvalidRequest(String::from("empty object key"))),
            Some(key) => format!(
                "/{}/{}",
                uri_encode(&self.config.bucket, true),
                uri_encode(key, false)
            ),
            None => format!("/{}", uri_encode(&self.config.bucket, true)),
        };
        let query = canonical_query(request.query);
        let payload_hash = match (self.config.payload, request.body.is_empty()) {
            (_, true) => String::from(EMPTY_SHA256),
            (PayloadSigning::Signed, false) => sha256_hex(request.body),
            (PayloadSigning::Unsigned, false) => String::from(UNSIGNED_PAYLOAD),
        };
        let target = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        };
        let mut handle = Some(handle);
        for attempt in 0..2 {
            let signed = self.signer.sign(
                &Canonical {
                    method: request.method.as_str(),
                    path: &path,
                    query: &query,
                    host: &self.host,
                    headers: request.headers,
                    payload_hash: &payload_hash,
                },
                self.now_ms(),
            );
            let mut headers: Vec<(&str, &str)> = request.headers.to_vec();
            headers.extend(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            self.stats.requests += 1;
            let local = (self.clock)().unwrap_or(0);
            let exchange = self
                .http
                .send(&Request {
                    method: request.method,
                    target: &target,
                    headers: &headers,
                    body: request.body,
                })
                .map_err(net_error)?;
            if exchange.status() != 403 || attempt == 1 {
                let handle = handle
                    .take()
                    .ok_or(Error::UnexpectedReply("handled twice"))?;
                return handle(exchange);
            }
            let date = exchange
                .head()
                .header("date")
                .and_then(time::parse_http_date);
            let error = failure(exchange);
            let skewed = matches!(&error, Error::PermissionDenied(m) if m.starts_with("RequestTimeTooSkewed"));
            match date {
                Some(server_ms) if skewed => {
                    self.skew_ms = server_ms as i64 - local as i64;
                    self.stats.skew_retries += 1;
                }
                _ => return Err(error),
            }
        }
        Err(Error::PermissionDenied(String::from(
            "RequestTimeTooSkewed",
        )))
    }

    /// Reads a whole object.
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>> {
        let max = self.config.max_object;
        self.call(&S3Request::new(Method::Get, key), |exchange| {
            if exchange.status() != 200 {
                return Err(failure(exchange));
            }
            let size = content_length(exchange.head()).unwrap_or(0);
            if size > max as u64 {
                return Err(Error::ObjectTooLarge {
                    size,
                    capacity: max as u64,
                });
            }
            let mut data = Vec::new();
            exchange.read_to_vec(&mut data, max).map_err(net_error)?;
            Ok(data)
        })
    }

    /// Reads at most `len` bytes of an object from byte `offset` into `buf` (from its
    /// start); returns `(bytes read, the object's size)`. Nothing is read at or past the end.
    pub fn get_range_into(
        &mut self,
        key: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(usize, u64)> {
        if buf.is_empty() {
            let info = self.head(key)?;
            return Ok((0, info.size));
        }
        let last = offset.saturating_add(buf.len() as u64 - 1);
        let range = format!("bytes={offset}-{last}");
        let headers = [("range", range.as_str())];
        let mut request = S3Request::new(Method::Get, key);
        request.headers = &headers;
        let max = self.config.max_object;
        let answer = self.call(&request, |exchange| match exchange.status() {
            206 => {
                let total = content_range_total(exchange.head())
                    .ok_or(Error::UnexpectedReply("206 without a Content-Range size"))?;
                let n = exchange.read_into(buf).map_err(net_error)?;
                Ok(Some((n, total)))
            }
            // The server ignored the range: take the part asked for from the whole object.
            200 => {
                let total = content_length(exchange.head()).unwrap_or(0);
                let mut whole = Vec::new();
                exchange.read_to_vec(&mut whole, max).map_err(net_error)?;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(whole.len());
                let n = (whole.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&whole[start..start + n]);
                Ok(Some((n, total)))
            }
            // At or past the end (or an empty object); not every server says the size.
            416 => {
                let total = content_range_total(exchange.head());
                exchange.discard().map_err(net_error)?;
                Ok(total.map(|total| (0, total)))
            }
            _ => Err(failure(exchange)),
        })?;
        match answer {
            Some(answer) => Ok(answer),
            None => Ok((0, self.head(key)?.size)),
        }
    }

    /// Writes an object (the body streams from `data`).
    pub fn put(&mut self, key: &str, data: &[u8]) -> Result<()> {
        let mut request = S3Request::new(Method::Put, key);
        request.body = data;
        self.call(&request, |exchange| match exchange.status() {
            200..=299 => exchange.discard().map(drop).map_err(net_error),
            _ => Err(failure(exchange)),
        })
    }

    /// An object's metadata (its `key` is empty, as from the Nexus client).
    pub fn head(&mut self, key: &str) -> Result<ObjectInfo> {
        self.call(&S3Request::new(Method::Head, key), |exchange| {
            if exchange.status() != 200 {
                return Err(failure(exchange));
            }
            let head = exchange.head();
            let info = ObjectInfo {
                key: String::new(),
                size: content_length(head).unwrap_or(0),
                last_modified_ms: head
                    .header("last-modified")
                    .and_then(time::parse_http_date)
                    .unwrap_or(0),
                etag: head.header("etag").unwrap_or_default().to_string(),
            };
            exchange.discard().map_err(net_error)?;
            Ok(info)
        })
    }

    /// Deletes an object (`Ok` also when it did not exist).
    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.call(
            &S3Request::new(Method::Delete, key),
            |exchange| match exchange.status() {
                200..=299 | 404 => exchange.discard().map(drop).map_err(net_error),
                _ => Err(failure(exchange)),
            },
        )
    }

    /// One page of the objects under `prefix`, after `token` (the previous page's
    /// `next_token`).
    pub fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage> {
        let token = match token {
            Some(token) => Some(core::str::from_utf8(token).map_err(|_| {
                Error::InvalidRequest(String::from("continuation token is not UTF-8"))
            })?),
            None => None,
        };
        let mut query = vec![("list-type", "2"), ("prefix", prefix)];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        let mut request = S3Request::bucket(Method::Get);
        request.query = &query;
        self.call(&request, |exchange| {
            if exchange.status() != 200 {
                return Err(failure(exchange));
            }
            let mut body = Vec::new();
            exchange
                .read_to_vec(&mut body, MAX_DOCUMENT)
                .map_err(net_error)?;
            let text = core::str::from_utf8(&body)
                .map_err(|_| Error::Net(NetError::Http("listing is not UTF-8")))?;
            let result = xml::parse_list(text).map_err(|e| Error::Net(NetError::Http(e.0)))?;
            let next_token = result
                .next_token
                .filter(|_| result.truncated)
                .map(String::into_bytes);
            Ok(ListPage {
                entries: result.entries,
                next_token,
            })
        })
    }
}

impl<L: Link + 'static> S3Client<StackConnector<L>> {
    /// A client over the guest's stack: connections to `config`'s server from `net`, signed
    /// with the stack's wall clock.
    pub fn over(net: &Net<L>, config: S3Config) -> Self {
        let connector = StackConnector::new(net, config.host, config.port);
        let clock_net = net.clone();
        let clock: WallClock = Box::new(move || clock_net.with(|stack| stack.unix_time_ms()));
        Self::new(connector, config, clock)
    }
}

impl<'a> S3Request<'a> {
    fn new(method: Method, key: &'a str) -> Self {
        Self {
            method,
            key: Some(key),
            query: &[],
            headers: &[],
            body: &[],
        }
    }

    fn bucket(method: Method) -> Self {
        Self {
            method,
            key: None,
            query: &[],
            headers: &[],
            body: &[],
        }
    }
}

/// The error of a non-success response, from its status and error document.
fn failure<C: Connector>(exchange: Exchange<'_, C>) -> Error {
    let status = exchange.status();
    let mut body = Vec::new();
    match exchange.read_to_vec(&mut body, MAX_DOCUMENT) {
        Ok(_) | Err(NetError::BodyTooLarge { .. }) => error_for(status, &body),
        Err(error) => net_error(error),
    }
}

impl<C: Connector> crate::io::ObjectIo for S3Client<C> {
    type Buf = Vec<u8>;

    fn alloc(&self, capacity: usize) -> Result<Vec<u8>> {
        Ok(Vec::with_capacity(capacity))
    }

    fn get(&mut self, key: &str) -> Result<Vec<u8>> {
        S3Client::get(self, key)
    }

    fn get_range(&mut self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let (n, _) = self.get_range_into(key, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn get_into(&mut self, key: &str, offset: u64, buf: &mut Vec<u8>) -> Result<u64> {
        let capacity = buf.capacity();
        buf.clear();
        buf.resize(capacity, 0);
        match self.get_range_into(key, offset, buf) {
            Ok((n, total)) => {
                buf.truncate(n);
                Ok(total)
            }
            Err(error) => {
                buf.clear();
                Err(error)
            }
        }
    }

    fn put(&mut self, key: &str, data: &[u8]) -> Result<()> {
        S3Client::put(self, key, data)
    }

    fn put_buf(&mut self, key: &str, buf: &Vec<u8>) -> Result<()> {
        S3Client::put(self, key, buf)
    }

    fn head(&mut self, key: &str) -> Result<ObjectInfo> {
        S3Client::head(self, key)
    }

    fn delete(&mut self, key: &str) -> Result<()> {
        S3Client::delete(self, key)
    }

    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage> {
        S3Client::list(self, prefix, token)
    }
}
