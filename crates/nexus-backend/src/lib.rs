// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The shared I/O backend of the Nexus hypervisor.
//!
//! One always-on process per host serves the I/O of every function VM: object storage
//! (`GET`, `PUT`, `HEAD`, `DELETE`, `LIST`), HTTP, logs, calls between functions and the
//! invocation loop (`NEXT`/`COMPLETE`). A VM reaches it through its nexus-io device: the VMM
//! attaches the VM on the backend's control socket and receives, with the reply, its end of
//! the VM's vhost-user connection (a socket pair; no socket file exists), on which it is the
//! frontend, sharing **only the VM's I/O window** (the memory table holds that one region).
//! Requests are [`nexus_ring`] messages on the device's request queue; payloads are read and
//! written in place in the window.
//!
//! ```text
//!  VMM ──control socket (JSON lines)──► Backend::attach ─► socket pair, one end to the VMM
//!  VMM ──vhost-user (window only)─────► the event loop (one epoll, all VMs) ─► RequestRing
//!                                          checked pop (nexus_ring::queue) → Decoder → task
//!                                          on the shared runtime → store / HTTP / invoker
//!                                          → response in the window → add_used + signal
//! ```
//!
//! - **Safe to share**: every ring field a guest controls is bounded by `nexus_ring::queue`;
//!   a guest that breaks a ring rule breaks only its own queue (unwatched, one log line, the
//!   VMM told) until it resets its device; each VM has bounded requests in flight, staging
//!   room and write-behind; only allowed users reach the control socket, and a VM only from
//!   the user that attached it (`docs/security.md`).
//!
//! - **One engine**: every VM's requests run on one tokio runtime with one staging budget
//!   ([`BackendConfig::staging_bytes`]); the store and HTTP clients are one per tenant that
//!   has a store or an allow-list of its own, one shared by the others.
//! - **Tenants apart**: a tenant's own store, credentials, HTTP allow-list and quotas
//!   (bytes, objects, requests per second) apply to all its VMs; SIGHUP or the control op
//!   `reload` re-reads the configuration without detaching VMs (a bad one is refused and the
//!   old one stays).
//! - **Zero copy**: `GET` writes the object straight into the response buffers (the file
//!   store `read`s into the mapped window; S3 bodies are streamed in chunk by chunk), `PUT`
//!   writes from the window (one copy into the file or the request body).
//! - **Isolation**: every descriptor is checked against the VM's window by the nexus-ring
//!   decoder and again on every access; every key must lie under the VM's tenant prefix
//!   ([`Tenant`]); a malformed request gets an error answer and the VM keeps being served;
//!   nothing a guest sends can panic the backend or reach another VM.
//! - **Write-behind** `PUT`s are copied out of the window and acknowledged at once, uploaded
//!   in the background in order with the VM's other requests on the same key; `FLUSH`, and
//!   the end of an invocation, wait for them and report failures by key.
//! - **Prefetch**: [`Backend::hint`] (control `hint`) fetches an object into the VM's bounded
//!   cache so the following `GET` is served from memory.
//! - **Invocations**: [`Backend::invoke`] queues work for a VM's `NEXT` and resolves with its
//!   `COMPLETE`; `INVOKE` goes to the [`Invoker`] the node daemon registers
//!   ([`Backend::set_invoker`]), and answers `BACKEND_UNAVAILABLE` while there is none.
//! - **Metrics**: every VM's payload bytes and requests are counted as they are served;
//!   [`Backend::stats`] (control `stats`) reports them with the queue depth and the
//!   process's memory and CPU time, and a control `invoke` reply carries its invocation's
//!   share.
//!
//! The contract with the VMM is `docs/nexus-io.md`; the wire format `docs/protocol.md`.

#![deny(missing_docs)]

mod config;
mod config_file;
mod control;
mod cpu_share;
mod device;
mod engine;
mod error;
mod event_loop;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
mod invocations;
mod invoke;
mod journal;
mod key_order;
mod listing;
mod log_limit;
mod ops;
mod panics;
mod peer;
mod prefetch;
mod privileges;
mod scan_rate;
mod server;
mod session;
mod snapshots;
mod staging;
mod stats;
mod store;
mod sync;
mod tenant;
mod tenant_state;
pub mod threads;
mod vhost_user;
mod window;
mod window_map;
mod write_behind;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

pub use config::{
    BackendConfig, ControlAccess, DEFAULT_PREFETCH_CACHE_BYTES, DEFAULT_STAGING_BYTES,
    DEFAULT_STORE_URL, DEFAULT_WRITE_BEHIND_BYTES, HttpPolicy, Quota, S3Options, StoreConfig,
    StoreUrl, TenantSpec, VmLimits,
};
pub use config_file::{ConfigFile, LimitOverrides, TenantEntry};
pub use control::{
    CONNECTION_FD, ControlEvent, ControlInput, ControlReply, ControlRequest,
    DEFAULT_PARKED_TIMEOUT_MS, ErrorCode, InvokeTimings, MAX_BINARY_INPUT, MAX_HELD_INPUT,
    MAX_LINE, parse_request,
};
pub use device::{FEATURES, NEXUS_F_WAIT, NEXUS_F_WRITE_BEHIND, QUEUE_SIZE_MAX};
pub use error::{Error, InputFailure, Result};
pub use invoke::{
    Invocation, InvocationInput, InvocationResult, InvokeError, InvokeRequest, Invoker,
    PendingInvocation,
};
pub use privileges::{DropTo, drop_privileges};
pub use server::{Backend, Reloader, RunOptions};
pub use stats::{BackendStats, TenantStats};
pub use tenant::{DEFAULT_TENANT, Tenant, Tenants, check_key, check_prefix};

/// How long shutdown waits for acknowledged write-behind uploads.
pub const SHUTDOWN_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a backend until SIGINT or SIGTERM: listens on the control socket `listen`, serves
/// every VM attached there with `io_threads` I/O threads, then detaches every VM, removes the
/// sockets and waits (bounded) for acknowledged write-behind uploads.
pub fn run(config: BackendConfig, listen: &Path, io_threads: usize) -> Result<()> {
    run_with(config, listen, io_threads, RunOptions::default())
}

/// [`run`], reloading on SIGHUP with `options.reloader` and dropping privileges to
/// `options.drop_to` once the control socket is bound.
pub fn run_with(
    config: BackendConfig,
    listen: &Path,
    io_threads: usize,
    options: RunOptions,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads.max(1))
        .thread_name("nexus-io")
        .on_thread_start(threads::engine_thread_start())
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let access = config.control.clone();
    let state_dir = config.state_dir.clone();
    let backend = Backend::new(config, runtime.handle().clone())?;
    if let Some(reloader) = options.reloader {
        backend.set_reloader(reloader);
    }
    // Set up: this thread serves the control socket from here on.
    threads::thread_started(threads::ThreadRole::Engine);
    runtime.block_on(async {
        let listener = bind_control(listen, &access)?;
        drop_privileges(options.drop_to, &backend.own_dirs(state_dir))?;
        backend.reload_on_hangup()?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(Error::Runtime)?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(Error::Runtime)?;
        log::info!("listening on {}", listen.display());
        backend
            .serve_control(listener, async {
                tokio::select! {
                    _ = terminate.recv() => log::info!("SIGTERM: shutting down"),
                    _ = interrupt.recv() => log::info!("SIGINT: shutting down"),
                }
            })
            .await;
        let _ = std::fs::remove_file(listen);
        let detaching = backend.clone();
        let _ = tokio::task::spawn_blocking(move || detaching.detach_all()).await;
        let left = backend.drain_uploads(SHUTDOWN_UPLOAD_TIMEOUT).await;
        if left > 0 {
            log::error!(
                "{left} acknowledged write-behind upload(s) did not finish before shutdown"
            );
        }
        Ok(())
    })
}

/// Binds the control socket in its directory, which the backend owns: created by it (mode
/// `0700`, or `0750` with [`ControlAccess::socket_group`](crate::ControlAccess)), or an
/// existing directory of the backend's own user that no one else may write to. A stale socket
/// file nobody listens on is replaced. The socket is bound under a temporary name and renamed
/// into place once it listens, with its mode and group set: whoever waits for the file (a
/// node daemon, a script, systemd's `PathExists=`) never finds it refusing connections
/// (binding and listening are two steps).
fn bind_control(path: &Path, access: &ControlAccess) -> Result<tokio::net::UnixListener> {
    let listen_error = |source| Error::Listen {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    prepare_socket_dir(dir, access)?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(listen_error(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another backend is listening there",
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            let _ = std::fs::remove_file(path);
        }
        _ => {}
    }
    // A short name beside it (a socket's path has at most 107 bytes).
    let staging = dir.join(format!(".nxb{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging).map_err(listen_error)?;
    let placed = (|| {
        let mode = if access.socket_group.is_some() {
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = access.socket_group {
            std::os::unix::fs::chown(&staging, None, Some(gid))?;
        }
        std::fs::rename(&staging, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(listen_error(e));
    }
    Ok(listener)
}

/// Creates the socket directory, or checks an existing one (see [`bind_control`]).
fn prepare_socket_dir(dir: &Path, access: &ControlAccess) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let refuse = |reason: String| Error::SocketDir {
        path: dir.to_owned(),
        reason,
    };
    let mode = if access.socket_group.is_some() {
        0o750
    } else {
        0o700
    };
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let own = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .map_err(|e| refuse(format!("cannot create it: {e}")))?;
        }
        Err(e) => return Err(refuse(e.to_string())),
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(refuse(
                    "it is not a directory (or it is a symbolic link)".into(),
                ));
            }
            if meta.uid() != own {
                return Err(refuse(format!(
                    "it belongs to uid {}, not to this backend's uid {own}: give the backend a \
                     directory of its own (it creates a missing one)",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(refuse(format!(
                    "others may write to it (mode {:o})",
                    meta.mode() & 0o7777
                )));
            }
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| refuse(format!("cannot set its mode: {e}")))?;
    if let Some(gid) = access.socket_group {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|e| refuse(format!("cannot give it group {gid}: {e}")))?;
    }
    Ok(())
}

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
