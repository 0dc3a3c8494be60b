//! A small HTTP/1.1 client for the node daemon: one keep-alive connection per [`Connection`].
//!
//! The load generator wants exactly one TCP connection per worker (not a pool that opens
//! more under load), so this wraps hyper's low-level `client::conn::http1` API: the
//! connection is opened on first use, reused for every request, and opened again after it
//! broke or a request timed out.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--url` given is not a plain `http://host[:port][/prefix]` URL.
    #[error("invalid daemon URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection could not be opened.
    #[error("daemon not reachable at {authority}")]
    Connect {
        /// `host:port` connected to.
        authority: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake on a fresh connection failed.
    #[error("HTTP/1.1 handshake with {authority} failed")]
    Handshake {
        /// `host:port` connected to.
        authority: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a path with characters a URI cannot hold).
    #[error("cannot build a request for {path:?}")]
    Request {
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: hyper::http::Error,
    },
    /// Sending the request or receiving the answer's head failed.
    #[error("HTTP exchange with the daemon failed")]
    Exchange(#[source] hyper::Error),
    /// Reading the answer's body failed.
    #[error("reading the daemon's answer failed")]
    Body(#[source] hyper::Error),
    /// No complete answer within the request timeout.
    #[error("no answer from the daemon within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// A one-word kind, used to group failures in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } | Error::Request { .. } => "request",
            Error::Connect { .. } | Error::Handshake { .. } => "connect",
            Error::Exchange(_) | Error::Body(_) => "http",
            Error::Timeout(_) => "timeout",
        }
    }
}

/// Result of the HTTP layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Where the daemon listens: parsed from `--url` once, shared by every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given (for messages).
    pub url: String,
    /// `host:port` to connect to (and to send as `Host`).
    pub authority: String,
    /// Path prefix put before every API path (`""` for none), without a trailing `/`.
    pub prefix: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]`. Only plain HTTP is supported (the daemon
    /// serves plain HTTP/1.1); the port defaults to 80.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(invalid(&format!(
                    "scheme {other:?} is not supported, use http://"
                )));
            }
            None => return Err(invalid("no scheme, expected http://host:port")),
        }
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        let port = uri.port_u16().unwrap_or(80);
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Endpoint {
            url: url.to_string(),
            authority: format!("{host}:{port}"),
            prefix,
        })
    }

    /// The request path for API path `path` (which starts with `/`).
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

/// An answer from the daemon: status, the header the load generator reads, and the body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The `X-Nexus-Start` header, when present and readable.
    pub start_header: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection to the daemon, opened lazily and re-opened after it
/// breaks. Not shared: each worker owns one.
#[derive(Debug)]
pub struct Connection {
    endpoint: Arc<Endpoint>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
    opened: u64,
}

impl Connection {
    /// A connection to `endpoint` whose requests time out after `timeout` (connecting
    /// included). Nothing is opened until the first request.
    pub fn new(endpoint: Arc<Endpoint>, timeout: Duration) -> Self {
        Connection {
            endpoint,
            timeout,
            sender: None,
            opened: 0,
        }
    }

    /// The endpoint this connection talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// How many TCP connections this has opened so far (1 when keep-alive held throughout).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Sends `method path` with `body` (JSON, when given) and reads the whole answer.
    ///
    /// `path` is an API path (`/v1/…`); the endpoint's prefix is put before it. On any
    /// error the connection is dropped and the next request opens a new one. A request is
    /// sent again only when hyper hands it back unsent (the kept-alive connection had closed
    /// under it); one that may have reached the daemon never is: an invocation is not
    /// idempotent.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(Error::Timeout(timeout))
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let full_path = self.endpoint.path(path);
        let mut builder = Request::builder()
            .method(method)
            .uri(full_path.as_str())
            .header(header::HOST, self.endpoint.authority.as_str());
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|source| Error::Request {
                path: full_path.clone(),
                source,
            })?;

        let opened_before = self.opened;
        let sender = self.ready_sender().await?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // The kept-alive connection closed before the request went out (the daemon
                // closed it while idle): nothing was sent, so sending it once on a new
                // connection cannot run the invocation twice.
                Some(request) if self.opened == opened_before => {
                    log::debug!("kept-alive connection closed before sending: {}", e.error());
                    self.sender = None;
                    self.ready_sender()
                        .await?
                        .send_request(request)
                        .await
                        .map_err(Error::Exchange)?
                }
                _ => return Err(Error::Exchange(e.into_error())),
            },
        };
        let status = response.status().as_u16();
        let start_header = response
            .headers()
            .get("x-nexus-start")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(Error::Body)?
            .to_bytes();
        Ok(Response {
            status,
            start_header,
            body,
        })
    }

    /// The sender of a connection ready for a request: the kept-alive one when it is still
    /// usable, otherwise a new one.
    async fn ready_sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let kept = match self.sender.take() {
            Some(mut sender) if !sender.is_closed() => sender.ready().await.ok().map(|()| sender),
            _ => None,
        };
        let sender = match kept {
            Some(sender) => sender,
            None => self.open().await?,
        };
        Ok(self.sender.insert(sender))
    }

    async fn open(&mut self) -> Result<SendRequest<Full<Bytes>>> {
        let authority = &self.endpoint.authority;
        let stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|source| Error::Connect {
                authority: authority.clone(),
                source,
            })?;
        // Small requests and answers: do not let Nagle hold them back.
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY on the connection to {authority}: {e}");
        }
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Handshake {
                authority: authority.clone(),
                source,
            })?;
        let authority_for_log = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("connection to {authority_for_log} ended: {e}");
            }
        });
        self.opened += 1;
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.prefix, "");
        assert_eq!(e.path("/healthz"), "/healthz");

        let e = Endpoint::parse("http://node-3/nexus/").unwrap();
        assert_eq!(e.authority, "node-3:80");
        assert_eq!(e.path("/v1/functions"), "/nexus/v1/functions");

        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(e.authority, "[::1]:9000");
    }

    #[test]
    fn rejects_what_it_cannot_serve() {
        for url in [
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            "http://",
            "http://h:1/?a=b",
            "not a url",
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
        }
    }
}
