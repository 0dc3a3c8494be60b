// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a guest is told when an HTTP request fails: a protocol status and a short message.
//!
//! Refusals name the rule that refused. Failures of the exchange itself are reduced to a
//! short generic cause ("connection refused", "timed out", "TLS handshake failed", "bad
//! response"): error chains of reqwest, hyper and rustls describe the backend's side of the
//! connection and are logged, never sent to the guest.

use std::error::Error as StdError;
use std::io;

use nexus_ring::Status;

use super::refusal::{Refusal, origin_text};
use super::resolve::Unresolved;

/// A failed HTTP call, as the guest will be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpFailure {
    /// The protocol status.
    pub(crate) status: Status,
    /// The message.
    pub(crate) message: String,
    /// The response's `total`.
    pub(crate) total: u64,
    /// The response's `detail`.
    pub(crate) detail: u64,
}

impl HttpFailure {
    /// `status` with `message`.
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            total: 0,
            detail: 0,
        }
    }

    /// A refusal: `PERMISSION_DENIED`, but `BACKEND_UNAVAILABLE` when the remote is at fault
    /// (too many redirects).
    pub(crate) fn refused(refusal: &Refusal) -> Self {
        let status = if refusal.is_denial() {
            Status::PermissionDenied
        } else {
            Status::BackendUnavailable
        };
        Self::new(status, refusal.to_string())
    }

    /// A request that did not produce a (whole) response.
    pub(crate) fn of_request(error: &reqwest::Error) -> Self {
        let causes = causes(error);
        let target = error.url().map(origin_text).unwrap_or_default();
        if let Some(refusal) = causes.iter().find_map(|e| e.downcast_ref::<Refusal>()) {
            return Self::refused(refusal);
        }
        log::debug!(
            "HTTP request to {target} failed: {}",
            causes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ")
        );
        if let Some(unresolved) = causes.iter().find_map(|e| e.downcast_ref::<Unresolved>()) {
            return Self::new(Status::BackendUnavailable, unresolved.to_string());
        }
        let io_kind = causes
            .iter()
            .find_map(|e| e.downcast_ref::<io::Error>())
            .map(io::Error::kind);
        let (status, cause) = if error.is_timeout() || io_kind == Some(io::ErrorKind::TimedOut) {
            (Status::Timeout, "timed out")
        } else if causes.iter().any(|e| e.is::<rustls::Error>()) {
            (Status::BackendUnavailable, "TLS handshake failed")
        } else {
            let cause = match io_kind {
                Some(io::ErrorKind::ConnectionRefused) => "connection refused",
                Some(
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof,
                ) => "connection closed",
                Some(io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable) => {
                    "unreachable"
                }
                _ if error.is_connect() => "connection failed",
                _ if error.is_redirect() => "bad redirect",
                _ => "bad response",
            };
            (Status::BackendUnavailable, cause)
        };
        let message = if target.is_empty() {
            cause.to_owned()
        } else {
            format!("{target}: {cause}")
        };
        Self::new(status, message)
    }
}

/// `error` and its causes, looking inside `io::Error`s (whose `source` skips the error they
/// wrap).
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut found = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        found.push(error);
        if found.len() == 32 {
            break;
        }
        next = match error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => error.source(),
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connect to http://10.9.8.7:9000/bucket failed")]
    struct Outer(#[source] io::Error);

    #[test]
    fn causes_look_inside_io_errors() {
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("secret detail".into()),
        );
        let outer = Outer(inner);
        let found = causes(&outer);
        assert_eq!(found.len(), 3);
        assert!(found.iter().any(|e| e.is::<rustls::Error>()));
        assert!(found.iter().any(|e| e.is::<io::Error>()));
    }
}
