// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the backend outside a single ring request (ring requests
/// are answered with a protocol status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--store` URL is not one the backend understands.
    #[error("Invalid store URL `{url}`: {reason}")]
    InvalidStoreUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `--tenant NAME=BUCKET/PREFIX` specification is malformed or does not fit the store.
    #[error("Invalid tenant `{spec}`: {reason}")]
    InvalidTenant {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An HTTP allow-list entry (`--http-allow`) is not `scheme://host[:port]`.
    #[error("Invalid HTTP allow-list entry `{entry}`: {reason}")]
    InvalidHttpAllow {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two tenants whose prefixes overlap: a key could belong to both.
    #[error(
        "Tenants `{first}` (prefix `{first_prefix}`) and `{second}` (prefix `{second_prefix}`) overlap: one prefix starts with the other, so a VM of one could touch the other's objects (an empty prefix is the whole store)"
    )]
    OverlappingTenants {
        /// One tenant.
        first: String,
        /// Its prefix.
        first_prefix: String,
        /// The other tenant.
        second: String,
        /// Its prefix.
        second_prefix: String,
    },
    /// The configuration file could not be read.
    #[error("Cannot read configuration file {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The configuration file is not valid: where, and what is wrong.
    #[error("Configuration file {path}{}{}: {reason}", line.map(|n| format!(", line {n}")).unwrap_or_default(), key.as_ref().map(|k| format!(", `{k}`")).unwrap_or_default())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The line at fault (1-based), if known.
        line: Option<usize>,
        /// The key at fault (dotted, like `limits.log_burst`), if known.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A configuration reload was refused; the configuration in force stays.
    #[error("Reload refused: {0}")]
    ReloadRefused(String),
    /// Dropping privileges (`--user`, `--group`) failed; the backend does not run.
    #[error("Cannot drop privileges: {0}")]
    Privileges(String),
    /// An attach named a tenant the backend was not configured with.
    #[error("Unknown tenant `{0}`")]
    UnknownTenant(String),
    /// A VM ID that cannot name a socket file (1 to 64 of `A-Z a-z 0-9 . _ -`, not starting
    /// with `.`).
    #[error(
        "Invalid VM ID `{0}`: use 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`"
    )]
    InvalidVmId(String),
    /// An attach named a VM that is already attached.
    #[error("VM `{0}` is already attached")]
    VmAlreadyAttached(String),
    /// A hint, detach or invocation named a VM that is not attached.
    #[error("VM `{0}` is not attached")]
    UnknownVm(String),
    /// A key that is not a valid object key.
    #[error("Invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key outside the tenant's prefix.
    #[error("Key `{key}` is outside the prefix of tenant `{tenant}`")]
    KeyNotPermitted {
        /// The key.
        key: String,
        /// The tenant.
        tenant: String,
    },
    /// The state directory could not be created or is not usable.
    #[error("Cannot use state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The local store directory could not be prepared.
    #[error("Cannot use store directory {path}")]
    StoreDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The object store client could not be configured.
    #[error("Cannot configure the object store")]
    ObjectStore(#[source] object_store::Error),
    /// The shared HTTP client could not be built.
    #[error("Cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The control socket could not be bound.
    #[error("Cannot listen on control socket {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A VM's vhost-user connection could not be made or served.
    #[error("Cannot set up the VM's vhost-user connection")]
    Connection(#[source] io::Error),
    /// A control peer the configuration does not allow on the control socket.
    #[error("uid {uid} (gid {gid}) is not allowed on this backend's control socket")]
    PeerNotAllowed {
        /// The peer's user ID.
        uid: u32,
        /// The peer's group ID.
        gid: u32,
    },
    /// A control peer may not attach VMs of this tenant.
    #[error("uid {uid} may not attach VMs of tenant `{tenant}`")]
    TenantNotPermitted {
        /// The tenant.
        tenant: String,
        /// The peer's user ID.
        uid: u32,
    },
    /// A control peer named a VM another user attached.
    #[error("VM `{vm}` was attached by another user than uid {uid}")]
    NotVmOwner {
        /// The VM.
        vm: String,
        /// The peer's user ID.
        uid: u32,
    },
    /// The directory of the control socket is not one the backend may use.
    #[error("Cannot use socket directory {path}: {reason}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A thread could not be started.
    #[error("Cannot start thread")]
    SpawnThread(#[source] io::Error),
    /// The tokio runtime could not be built, or a signal handler installed.
    #[error("Cannot start the I/O runtime")]
    Runtime(#[source] io::Error),
    /// An invocation ended without a result because its VM was detached.
    #[error("VM `{0}` was detached before the invocation completed")]
    VmDetached(String),
    /// An invocation ended without a result because its VM was reset
    /// ([`Backend::reset`](crate::Backend::reset)) before it completed.
    #[error("VM `{0}` was reset before the invocation completed")]
    VmReset(String),
    /// An invocation ended without a result because the backend panicked while serving its
    /// VM: that VM is failed (its queue no longer served), the backend goes on.
    #[error("VM `{0}` failed: the backend panicked while serving it")]
    HandlerPanicked(String),
    /// An invocation's input object could not be read (or, with an empty `key`, its context
    /// or its result could not be carried).
    #[error("Input object `{key}` of the invocation could not be read: {reason}")]
    InputUnavailable {
        /// The input object key (empty when the input was given inline).
        key: String,
        /// What went wrong, for a caller to act on.
        cause: InputFailure,
        /// Why, in words.
        reason: String,
    },
    /// A write-behind upload of the invocation failed for good: the invocation failed.
    #[error("Upload of `{key}` failed ({count} failed upload(s) in all)")]
    UploadFailed {
        /// The first object that could not be stored.
        key: String,
        /// How many uploads failed.
        count: u64,
    },
}

/// What kept an invocation from being delivered or its result from being read, as a
/// caller of the control socket is told it (see [`Error::InputUnavailable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFailure {
    /// The invocation's context (function name, request ID, output key) does not encode.
    Context,
    /// The input object does not exist.
    NotFound,
    /// The store cannot represent the input key.
    InvalidKey,
    /// The store refused or failed, or the result could not be read out of the window:
    /// not the caller's mistake, and worth a retry.
    Unavailable,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// `error` and its causes, for the log.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
