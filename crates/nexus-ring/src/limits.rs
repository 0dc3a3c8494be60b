// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The protocol's limits. Every one is enforced on decode, and by the encoders.
//!
//! They are part of the wire contract of [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION): a
//! peer may rely on them, and changing one is a version change.

/// Longest object key (and LIST prefix), in bytes. Matches the common object-store limit.
pub const MAX_KEY_LEN: u32 = 1024;
/// Longest function name (INVOKE key, invocation context), in bytes.
pub const MAX_FUNCTION_NAME_LEN: u32 = 256;
/// Longest external request id in an invocation context, in bytes.
pub const MAX_REQUEST_ID_LEN: u32 = 256;
/// Longest URL (HTTP key), in bytes.
pub const MAX_URL_LEN: u32 = 8192;
/// Longest LIST continuation token, in bytes.
pub const MAX_TOKEN_LEN: u32 = 1024;
/// Longest entity tag in an object entry, in bytes.
pub const MAX_ETAG_LEN: u32 = 256;
/// Largest request meta segment and largest response meta area, in bytes.
pub const MAX_META_LEN: u32 = 64 * 1024;
/// Most HTTP headers in one header list.
pub const MAX_HEADERS: u32 = 64;
/// Most entries in one LIST page.
pub const MAX_LIST_ENTRIES: u32 = 1000;
/// Largest request payload and largest total response payload capacity, in bytes (64 MiB).
pub const MAX_PAYLOAD_LEN: u32 = 64 * 1024 * 1024;
/// Largest LOG payload, in bytes.
pub const MAX_LOG_LEN: u32 = 64 * 1024;
/// Most payload segments in each direction (request payload; response payload buffers).
pub const MAX_PAYLOAD_SEGMENTS: usize = 16;
