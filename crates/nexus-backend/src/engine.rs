// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The shared I/O engine: one tokio runtime, one store client, one HTTP client and one staging
//! budget for every VM the backend serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::{BackendConfig, VmLimits};
use crate::error::{Error, Result};
use crate::http::HttpGateway;
use crate::invoke::Invoker;
use crate::journal::{LostUpload, UploadJournal};
use crate::staging::Staging;
use crate::store::Store;
use crate::sync::lock;

/// The shared engine.
pub(crate) struct Engine {
    pub(crate) runtime: Handle,
    pub(crate) store: Store,
    pub(crate) http: HttpGateway,
    pub(crate) staging: Staging,
    /// Per-VM limits of VMs whose tenant sets none of its own.
    pub(crate) limits: VmLimits,
    invoker: RwLock<Option<Arc<dyn Invoker>>>,
    /// Write-behind uploads acknowledged and not yet finished, over all VMs.
    uploads: watch::Sender<u64>,
    next_invocation: AtomicU64,
    /// Traffic through every VM's window since the engine started, detached VMs included.
    pub(crate) traffic: Traffic,
    /// Ring requests popped and not yet answered, over all VMs.
    in_flight: AtomicU64,
    /// The record of acknowledged write-behind uploads (`None`: not kept, for tests).
    pub(crate) journal: Option<Arc<UploadJournal>>,
    /// What the journal said an earlier run lost, until the backend takes it.
    lost: std::sync::Mutex<Vec<(u64, LostUpload)>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine's clients; runs inside `runtime`'s context.
    pub(crate) fn new(config: &BackendConfig, runtime: Handle) -> Result<Self> {
        let _context = runtime.enter();
        let (journal, lost) =
            UploadJournal::open(&config.state_dir).map_err(|source| Error::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        crate::http::install_crypto_provider();
        let store = Store::open(&config.store)?;
        let http = HttpGateway::new(&config.http)?;
        Ok(Self::from_parts(
            config,
            store,
            http,
            Some(Arc::new(journal)),
            lost,
            runtime,
        ))
    }

    /// An engine over `store` and `http` that keeps no upload journal, for the
    /// operation-layer harness ([`crate::fuzzing`]); `config`'s store, state directory and
    /// HTTP policy are not used.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn with_store(
        config: &BackendConfig,
        store: Store,
        http: HttpGateway,
        runtime: Handle,
    ) -> Self {
        Self::from_parts(config, store, http, None, Vec::new(), runtime)
    }

    fn from_parts(
        config: &BackendConfig,
        store: Store,
        http: HttpGateway,
        journal: Option<Arc<UploadJournal>>,
        lost: Vec<(u64, LostUpload)>,
        runtime: Handle,
    ) -> Self {
        Self {
            store,
            http,
            staging: Staging::new(config.staging_bytes),
            limits: config.limits.clone(),
            invoker: RwLock::new(None),
            uploads: watch::Sender::new(0),
            next_invocation: AtomicU64::new(1),
            traffic: Traffic::default(),
            in_flight: AtomicU64::new(0),
            journal,
            lost: std::sync::Mutex::new(lost),
            runtime,
        }
    }

    /// The uploads an earlier run of the backend acknowledged and lost (once).
    pub(crate) fn take_lost(&self) -> Vec<(u64, LostUpload)> {
        std::mem::take(&mut *lock(&self.lost))
    }

    /// The registered invoker, if any.
    pub(crate) fn invoker(&self) -> Option<Arc<dyn Invoker>> {
        self.invoker
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_invoker(&self, invoker: Option<Arc<dyn Invoker>>) {
        *self
            .invoker
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = invoker;
    }

    /// A fresh invocation number.
    pub(crate) fn next_invocation(&self) -> u64 {
        self.next_invocation.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an acknowledged upload until the guard drops.
    pub(crate) fn upload_started(self: &Arc<Self>) -> UploadGuard {
        self.uploads.send_modify(|n| *n += 1);
        UploadGuard {
            engine: self.clone(),
        }
    }

    /// Waits until no acknowledged upload is pending, at most `timeout`; the number still
    /// pending.
    pub(crate) async fn drain_uploads(&self, timeout: Duration) -> u64 {
        let mut rx = self.uploads.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        *self.uploads.borrow()
    }

    /// Acknowledged write-behind uploads not yet finished.
    pub(crate) fn uploads_pending(&self) -> u64 {
        *self.uploads.borrow()
    }

    /// Ring requests popped and not yet answered, over all VMs.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// One more request in flight.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// One request fewer in flight.
    pub(crate) fn request_finished(&self) {
        // Never below zero: every finish follows its start.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Payload bytes and requests that went through VM windows (one VM's, or all of them).
///
/// `bytes_in` counts payload the backend wrote into a window (GET data, a NEXT's input, LIST
/// pages, HTTP and INVOKE results), `bytes_out` payload it read out of one (PUT data, LOG
/// text, HTTP and INVOKE bodies, COMPLETE results); request headers, keys, meta areas and
/// response headers are not counted.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests: AtomicU64,
}

/// A reading of [`Traffic`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrafficCounts {
    /// Payload bytes written into the window.
    pub(crate) bytes_in: u64,
    /// Payload bytes read out of the window.
    pub(crate) bytes_out: u64,
    /// Ring requests served.
    pub(crate) requests: u64,
}

impl Traffic {
    /// Counts `n` payload bytes written into the window.
    pub(crate) fn add_in(&self, n: u64) {
        if n > 0 {
            self.bytes_in.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` payload bytes read out of the window.
    pub(crate) fn add_out(&self, n: u64) {
        if n > 0 {
            self.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts one ring request served.
    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn read(&self) -> TrafficCounts {
        TrafficCounts {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

impl TrafficCounts {
    /// What was counted between `earlier` and this reading.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            requests: self.requests.saturating_sub(earlier.requests),
        }
    }
}

/// Keeps an acknowledged upload counted.
pub(crate) struct UploadGuard {
    engine: Arc<Engine>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.engine
            .uploads
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}
