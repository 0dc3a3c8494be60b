// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! HTTP/1.1 over any [`Transport`](super::Transport): a keep-alive client
//! ([`HttpClient`]) and a one-request-at-a-time server for invocations ([`HttpServer`]).
//!
//! - [`head`]: reading a message head off the transport (bounded: 16 KiB by default) and
//!   parsing it; the body framing it announces.
//! - [`body`]: bodies by `Content-Length`, chunked, or until the close, copied once from the
//!   transport's buffer to where they go.
//! - [`client`], [`server`].
//!
//! Plain HTTP only: TLS is off on this path (the baseline talks to an S3 server on its own
//! network).

pub mod body;
pub mod client;
pub mod head;
pub mod server;

pub use body::Sink;
pub use client::{ClientStats, Exchange, HttpClient, Method, Request};
pub use head::{Framing, RequestHead, ResponseHead};
pub use server::{HttpServer, ServerRequest, ServerStats};
