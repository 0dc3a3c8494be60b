// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Published snapshots: the files nodes share through the backend (`snapshot_put`,
//! `snapshot_get`), kept in the store under [`SYSTEM_PREFIX`] (`nexus-system/snapshots/
//! {function}/{identity}/{name}`), where no tenant reaches. The node never holds the store's
//! credentials: the backend does, as for every other object. What the files are (a
//! manifest, an HMAC, a packed memory file) is the nodes' business; the backend checks only
//! the names and stores the bytes, the manifest with a create-only PUT so that the first
//! publisher wins.

use bytes::Bytes;
use nexus_ring::control::{ControlReply, ErrorCode, MAX_SNAPSHOT_FILE, snapshot_key};

use crate::server::Backend;
use crate::store::StoreError;

impl Backend {
    /// Stores file `name` of the snapshot of `function` with `identity` (`create`: only if
    /// it does not exist); the reply to send.
    pub(crate) async fn snapshot_put(
        &self,
        function: &str,
        identity: &str,
        name: &str,
        bytes: Bytes,
        create: bool,
    ) -> ControlReply {
        let Some(key) = checked_key(function, identity, name) else {
            return bad_names();
        };
        let len = bytes.len();
        match self.store().put_bytes(&key, bytes, create).await {
            Ok(()) => {
                log::info!("snapshot: stored {key} ({len} bytes)");
                ControlReply::ok()
            }
            Err(StoreError::Exists) => ControlReply::refused(
                ErrorCode::Exists,
                format!("`{key}` exists already (another node published it first)"),
            ),
            Err(e) => {
                log::warn!("snapshot: storing {key} failed: {e}");
                ControlReply::refused(store_code(&e), format!("Storing `{key}` failed: {e}"))
            }
        }
    }

    /// Reads file `name` of the snapshot of `function` with `identity`: the reply, and the
    /// bytes that follow it.
    pub(crate) async fn snapshot_get(
        &self,
        function: &str,
        identity: &str,
        name: &str,
    ) -> (ControlReply, Option<Bytes>) {
        let Some(key) = checked_key(function, identity, name) else {
            return (bad_names(), None);
        };
        match self.store().fetch(&key, MAX_SNAPSHOT_FILE).await {
            Ok(bytes) => (
                ControlReply {
                    output_len: Some(bytes.len() as u64),
                    output_encoding: Some(nexus_ring::control::BINARY.into()),
                    ..ControlReply::ok()
                },
                Some(bytes),
            ),
            Err(e) => {
                if !matches!(e, StoreError::NotFound) {
                    log::warn!("snapshot: reading {key} failed: {e}");
                }
                (
                    ControlReply::refused(store_code(&e), format!("Reading `{key}` failed: {e}")),
                    None,
                )
            }
        }
    }
}

/// The key of a published snapshot's file, or `None` for bad names ([`bad_names`]).
fn checked_key(function: &str, identity: &str, name: &str) -> Option<String> {
    snapshot_key(function, identity, name)
}

/// The refusal of names that are not key segments.
fn bad_names() -> ControlReply {
    ControlReply::refused(
        ErrorCode::Invalid,
        "a snapshot's function, identity and file name are 1 to 128 ASCII letters, digits, \
         `-`, `_` or `.`",
    )
}

/// The code of a refusal for a store failure.
fn store_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::NotFound => ErrorCode::NotFound,
        StoreError::Exists => ErrorCode::Exists,
        StoreError::InvalidKey(_) | StoreError::TooLarge(_) => ErrorCode::Invalid,
        StoreError::PermissionDenied(_) | StoreError::Unavailable(_) => ErrorCode::Unavailable,
        StoreError::Conflict(_) | StoreError::Internal(_) => ErrorCode::Internal,
    }
}
