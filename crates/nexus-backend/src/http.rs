// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The HTTP op: one shared client, confined to an allow-list of hosts.
//!
//! A host not on the list is refused with `PERMISSION_DENIED`, and so is a redirect that
//! leads to one (redirects to allowed hosts are followed, at most 10). The response body is
//! streamed into the window as it arrives.

use std::sync::Arc;
use std::time::Duration;

use nexus_ring::records::{Header, HeaderList, LIST_PREFIX_SIZE};
use nexus_ring::{HttpMethod, Status};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{Error, Result};
use crate::ops::Reply;
use crate::window::WindowMemory;

/// Timeout of an HTTP request whose `arg1` is 0.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Request headers the backend sets itself.
const OWN_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

/// The hosts the HTTP op may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AllowList {
    hosts: Vec<AllowedHost>,
}

impl AllowList {
    /// Parses `host` or `host:port` entries (`[v6]:port` for IPv6), case-insensitively.
    pub(crate) fn parse(entries: &[String]) -> Result<Self> {
        let mut hosts = Vec::new();
        for entry in entries {
            let invalid = || Error::InvalidHttpAllow(entry.clone());
            let lower = entry.to_ascii_lowercase();
            let (host, port) = match lower.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') || host.ends_with(']') => (
                    host.to_owned(),
                    Some(port.parse::<u16>().map_err(|_| invalid())?),
                ),
                _ => (lower.clone(), None),
            };
            let plain = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            let v6 = host.len() > 2
                && host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok();
            if !plain && !v6 {
                return Err(invalid());
            }
            hosts.push(AllowedHost { host, port });
        }
        Ok(Self { hosts })
    }

    /// Whether `url` may be requested.
    pub(crate) fn allows(&self, url: &Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|allowed| allowed.host == host && allowed.port.is_none_or(|p| p == port))
    }
}

/// The shared HTTP client.
#[derive(Clone, Debug)]
pub(crate) struct HttpGateway {
    client: reqwest::Client,
    allow: Arc<AllowList>,
}

/// What the guest asked for, copied out of the window.
pub(crate) struct HttpCall<'a> {
    pub(crate) url: &'a [u8],
    pub(crate) headers: Option<&'a [u8]>,
    pub(crate) body: bytes::Bytes,
    pub(crate) method: HttpMethod,
    pub(crate) timeout_ms: u64,
}

impl HttpGateway {
    /// A client for `allow`ed hosts.
    pub(crate) fn new(allow: &[String]) -> Result<Self> {
        let allow = Arc::new(AllowList::parse(allow)?);
        let policy_allow = allow.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 || !policy_allow.allows(attempt.url()) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(policy)
            .build()
            .map_err(Error::HttpClient)?;
        Ok(Self { client, allow })
    }

    /// Performs the call, writing the response headers into the meta area and the body into
    /// the response payload buffers.
    pub(crate) async fn execute(
        &self,
        call: HttpCall<'_>,
        window: &WindowMemory,
        response: &nexus_ring::ResponseTarget,
    ) -> Reply {
        let Ok(url) = std::str::from_utf8(call.url) else {
            return Reply::error(Status::InvalidRequest, "the URL is not UTF-8");
        };
        let url = match Url::parse(url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(_) => {
                return Reply::error(Status::InvalidRequest, "the URL is not http:// or https://");
            }
            Err(e) => return Reply::error(Status::InvalidRequest, format!("bad URL: {e}")),
        };
        if !self.allow.allows(&url) {
            return Reply::error(
                Status::PermissionDenied,
                format!(
                    "host `{}` is not on the backend's HTTP allow-list",
                    url.host_str().unwrap_or_default()
                ),
            );
        }
        let mut headers = HeaderMap::new();
        if let Some(bytes) = call.headers {
            let list = match HeaderList::decode(bytes) {
                Ok(list) => list,
                Err(e) => {
                    return Reply::error(Status::InvalidRequest, format!("bad header list: {e}"));
                }
            };
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
                    return Reply::error(
                        Status::InvalidRequest,
                        format!("header `{}` is not valid", header.name),
                    );
                };
                headers.append(name, value);
            }
        }
        let method = reqwest::Method::from_bytes(call.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let timeout = match call.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let request = self
            .client
            .request(method, url)
            .headers(headers)
            .body(call.body)
            .timeout(timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => return request_failed(&e),
        };

        // Response headers into the meta area (dropped if it has no room at all).
        let mut reply = Reply::ok().detail(answer.status().as_u16().into());
        let capacity = response.meta_capacity() as usize;
        if capacity > 0 {
            let entries: Vec<Header<'_>> = answer
                .headers()
                .iter()
                .take(nexus_ring::limits::MAX_HEADERS as usize)
                .map(|(name, value)| Header {
                    name: name.as_str(),
                    value: value.as_bytes(),
                })
                .collect();
            if answer.headers().len() > entries.len() {
                log::warn!("HTTP response has more than 64 headers; the rest are dropped");
            }
            let needed = entries.iter().fold(LIST_PREFIX_SIZE as usize, |n, h| {
                n + 4 + h.name.len() + h.value.len()
            });
            if needed > capacity {
                return Reply::error(
                    Status::TooLarge,
                    format!("the response headers need {needed} bytes of meta area"),
                )
                .detail(needed as u64);
            }
            let mut meta = vec![0u8; needed];
            let mut writer = HeaderList::writer(&mut meta);
            for entry in &entries {
                if let Err(e) = writer.push(entry) {
                    return Reply::error(
                        Status::Internal,
                        format!("cannot encode the response headers: {e}"),
                    );
                }
            }
            match writer.finish() {
                Ok(len) => meta.truncate(len),
                Err(e) => {
                    return Reply::error(
                        Status::Internal,
                        format!("cannot encode the response headers: {e}"),
                    );
                }
            }
            reply = reply.meta(meta);
        }

        // The body, streamed into the buffers; its full length is counted.
        let target = response.payload;
        let capacity = target.total_len();
        let announced = answer.content_length();
        let mut written: u32 = 0;
        let mut total: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, answer.chunk()).await {
                Err(_) => return Reply::error(Status::Timeout, "the response body timed out"),
                Ok(Err(e)) => return request_failed(&e),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            total += chunk.len() as u64;
            let room = (capacity - written) as usize;
            let take = chunk.len().min(room);
            if take > 0 {
                if let Err(e) = window.write_stream(&target, written, &chunk[..take]) {
                    return Reply::error(Status::Internal, e.to_string());
                }
                written += take as u32;
            }
            if written == capacity {
                if let Some(length) = announced {
                    total = length.max(total);
                    break;
                }
            }
        }
        reply.payload(written).total(total)
    }
}

/// The answer to a request that did not produce a response.
fn request_failed(error: &reqwest::Error) -> Reply {
    if error.is_timeout() {
        Reply::error(Status::Timeout, "the HTTP request timed out")
    } else if error.is_redirect() {
        Reply::error(
            Status::PermissionDenied,
            "a redirect led off the HTTP allow-list",
        )
    } else {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Reply::error(Status::BackendUnavailable, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowList> {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn allow_list() {
        let allow = list(&["Example.com", "127.0.0.1:8080", "[::1]:9000", "api.test"]).unwrap();
        let ok = |u: &str| allow.allows(&Url::parse(u).unwrap());
        assert!(ok("https://example.com/x"));
        assert!(ok("http://EXAMPLE.com:81/"));
        assert!(ok("http://127.0.0.1:8080/a"));
        assert!(!ok("http://127.0.0.1:8081/a"));
        assert!(!ok("http://127.0.0.1/a"));
        assert!(ok("http://[::1]:9000/"));
        assert!(!ok("http://[::1]:9001/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://example.com.evil/"));
        assert!(!ok("ftp://example.com/"));
        assert!(ok("https://api.test/v1"));
        for bad in ["", "a b", "host:port", "host:99999", "[zz]:1", "a/b"] {
            assert!(list(&[bad]).is_err(), "{bad}");
        }
        assert!(!AllowList::default().allows(&Url::parse("http://x/").unwrap()));
    }
}
