// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One attached VM's state: its tenant and limits, its shares of the engine (staging room,
//! CPU, LOG and LIST rates), its requests in flight and the queue generation that cancels
//! them on a reset, and the VM's parts named after their ideas — request ordering per key
//! (`key_order.rs`), write-behind uploads (`write_behind.rs`), the prefetch cache
//! (`prefetch.rs`) and its invocations (`invocations.rs`). A reset ([`Session::reset`])
//! drops what one invocation may leave for the next, short of a detach.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nexus_ring::control::ControlEvent;
use tokio::sync::{mpsc, watch};

use crate::config::VmLimits;
use crate::cpu_share::CpuShare;
use crate::engine::{Engine, Traffic, TrafficCounts};
use crate::invocations::Invocations;
use crate::key_order::KeyOrder;
use crate::log_limit::LogRateLimit;
use crate::prefetch::PrefetchCache;
use crate::scan_rate::ScanRate;
use crate::staging::Staging;
use crate::sync::lock;
#[cfg(test)]
use crate::tenant::Tenant;
use crate::tenant_state::TenantState;
use crate::write_behind::WriteBehind;

/// One attached VM.
#[derive(Debug)]
pub(crate) struct Session {
    /// The VM's ID.
    pub(crate) vm: String,
    /// The VM's tenant (its rules and store as configured now: a reload may change them).
    pub(crate) tenant: Arc<TenantState>,
    /// The shared I/O engine.
    pub(crate) engine: Arc<Engine>,
    /// What this VM may use: its tenant's limits, else the backend's defaults.
    pub(crate) limits: VmLimits,
    /// Tells the control connection that attached the VM what happened to it.
    events: Mutex<Option<mpsc::UnboundedSender<ControlEvent>>>,
    /// The VM's share of the engine's staging budget.
    pub(crate) staging: Staging,
    /// The VM's LOG rate limit.
    pub(crate) log_limit: LogRateLimit,
    /// The VM's listing rate (entries looked at per second).
    pub(crate) list_rate: ScanRate,
    /// The VM's share of the backend's CPU.
    pub(crate) cpu: Arc<CpuShare>,
    /// The queue generation: completions of an older generation are dropped.
    epoch: Mutex<u64>,
    /// Broadcasts the generation (`u64::MAX` once detached) to cancel parked requests.
    cancel: watch::Sender<u64>,
    inflight: Mutex<usize>,
    idle: Condvar,
    /// The order of the VM's requests on each key.
    pub(crate) key_order: KeyOrder,
    /// Write-behind uploads.
    pub(crate) write_behind: Arc<WriteBehind>,
    /// Prefetched objects.
    pub(crate) prefetch: Arc<PrefetchCache>,
    /// Queued and running invocations.
    pub(crate) invocations: Arc<Invocations>,
    /// Payload bytes and requests through this VM's window (the engine's totals count them
    /// too).
    traffic: Traffic,
}

impl Session {
    /// A session of VM `vm` of `tenant`, with the tenant's limits if it has its own, else the
    /// engine's defaults.
    #[cfg(test)]
    pub(crate) fn new(vm: &str, tenant: Arc<Tenant>, engine: Arc<Engine>) -> Self {
        let tenant = TenantState::on_engine(tenant, &engine);
        Self::with_uploads(vm, tenant, engine, None)
    }

    /// [`new`](Self::new), with the write-behind uploads an earlier attachment of the same VM
    /// left (still pending, or failed and not yet reported), if any.
    pub(crate) fn with_uploads(
        vm: &str,
        tenant: Arc<TenantState>,
        engine: Arc<Engine>,
        uploads: Option<Arc<WriteBehind>>,
    ) -> Self {
        let limits = tenant.now().limits.clone();
        let write_behind = uploads.unwrap_or_else(|| {
            Arc::new(WriteBehind::new(
                vm,
                limits.write_behind_bytes,
                limits.write_behind_requests,
                engine.journal.clone(),
            ))
        });
        Self {
            vm: vm.to_owned(),
            tenant,
            staging: engine.staging.share(limits.staging_bytes),
            log_limit: LogRateLimit::new(
                limits.log_records_per_second,
                limits.log_burst,
                tokio::time::Instant::now(),
            ),
            list_rate: ScanRate::new(limits.list_scan_per_second),
            cpu: Arc::new(CpuShare::new(limits.cpu_millis_per_second)),
            engine,
            limits: limits.clone(),
            events: Mutex::new(None),
            epoch: Mutex::new(0),
            cancel: watch::Sender::new(0),
            inflight: Mutex::new(0),
            idle: Condvar::new(),
            key_order: KeyOrder::default(),
            write_behind,
            prefetch: Arc::new(PrefetchCache::new(vm, limits.prefetch_cache_bytes)),
            invocations: Arc::default(),
            traffic: Traffic::default(),
        }
    }

    /// Counts `n` payload bytes the backend wrote into the VM's window.
    pub(crate) fn count_in(&self, n: u64) {
        self.traffic.add_in(n);
        self.engine.traffic.add_in(n);
    }

    /// Counts `n` payload bytes the backend read out of the VM's window.
    pub(crate) fn count_out(&self, n: u64) {
        self.traffic.add_out(n);
        self.engine.traffic.add_out(n);
    }

    /// Counts one ring request served.
    pub(crate) fn count_request(&self) {
        self.traffic.add_request();
        self.engine.traffic.add_request();
    }

    /// The VM's traffic so far (still readable after it is detached).
    pub(crate) fn traffic(&self) -> TrafficCounts {
        self.traffic.read()
    }

    /// The current queue generation.
    pub(crate) fn epoch(&self) -> u64 {
        *lock(&self.epoch)
    }

    /// Resolves once generation `epoch` ends (queue stopped, connection lost, VM detached).
    pub(crate) async fn cancelled(&self, epoch: u64) {
        let mut rx = self.cancel.subscribe();
        // An error means the sender is gone: the session is being dropped.
        let _ = rx.wait_for(|current| *current != epoch).await;
    }

    /// Ends the current queue generation: parked requests are cancelled, late completions
    /// dropped. Called with the ring's lock held, so no answer of the old generation slips in.
    pub(crate) fn end_generation(&self) {
        let mut epoch = lock(&self.epoch);
        *epoch += 1;
        let next = *epoch;
        self.cancel.send_modify(|current| {
            if *current != u64::MAX {
                *current = next;
            }
        });
    }

    /// Waits (at most `timeout`) until no request is in flight.
    pub(crate) fn wait_idle(&self, timeout: Duration) {
        let inflight = lock(&self.inflight);
        let (left, _) = self
            .idle
            .wait_timeout_while(inflight, timeout, |n| *n > 0)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *left > 0 {
            log::info!(
                "vm {}: {} request(s) still winding down after the queue stopped; their answers will be dropped",
                self.vm,
                *left
            );
        }
    }

    /// Requests being served now.
    pub(crate) fn in_flight(&self) -> usize {
        *lock(&self.inflight)
    }

    /// Where events about the VM go: the control connection that attached it.
    pub(crate) fn set_events(&self, events: Option<mpsc::UnboundedSender<ControlEvent>>) {
        *lock(&self.events) = events;
    }

    /// Tells the attaching VMM that the guest broke its request queue.
    pub(crate) fn report_queue_broken(&self, reason: &str) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(ControlEvent::QueueBroken {
                vm: self.vm.clone(),
                reason: reason.to_owned(),
            });
        }
    }

    /// The VM goes away: cancel everything parked and fail its invocations. Write-behind
    /// uploads already acknowledged go on to completion.
    pub(crate) fn detach(&self) {
        *lock(&self.epoch) += 1;
        self.cancel.send_replace(u64::MAX);
        self.invocations.fail_all(&self.vm);
        self.prefetch.clear();
        self.report_dropped_logs();
    }

    /// The backend panicked while serving the VM: its requests in flight are cancelled and
    /// its queued and running invocations fail
    /// ([`Error::HandlerPanicked`](crate::Error::HandlerPanicked)). The caller stops serving
    /// its queue.
    pub(crate) fn fail_panicked(&self) {
        self.end_generation();
        self.invocations.fail_panicked(&self.vm);
    }

    /// Logs, once, how many LOG records the rate limit dropped and nobody was told of yet.
    fn report_dropped_logs(&self) {
        let dropped = self.log_limit.take_unreported();
        if dropped > 0 {
            log::warn!(
                "vm {}: {dropped} LOG records dropped by the rate limit",
                self.vm
            );
        }
    }

    /// Drops what the VM's invocations left here, between two invocations (control `reset`):
    /// its queued and running invocations fail ([`Error::VmReset`](crate::Error::VmReset)),
    /// its prefetched objects are forgotten. The VM stays attached: its connection, its queue,
    /// a parked `NEXT` and its acknowledged uploads are untouched. Returns how many
    /// invocations failed.
    pub(crate) fn reset(&self) -> usize {
        let failed = self.invocations.reset(&self.vm);
        self.prefetch.clear();
        self.report_dropped_logs();
        failed
    }

    /// Counts a request as in flight until the guard is dropped.
    pub(crate) fn inflight(self: &Arc<Self>) -> InflightGuard {
        *lock(&self.inflight) += 1;
        self.engine.request_started();
        InflightGuard {
            session: self.clone(),
        }
    }
}

/// Keeps a request counted as in flight.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    session: Arc<Session>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.session.engine.request_finished();
        let mut n = lock(&self.session.inflight);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.session.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, S3Options, StoreConfig, StoreUrl};

    #[test]
    fn a_session_takes_its_tenants_limits_else_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = StoreConfig {
            url: StoreUrl::File(dir.path().to_owned()),
            s3: S3Options::default(),
        };
        let mut config = BackendConfig::new(store, dir.path().to_owned());
        config.limits.prefetch_cache_bytes = 12345;
        let engine = Arc::new(Engine::new(&config, runtime.handle().clone()).unwrap());
        let own = VmLimits {
            requests_in_flight: 3,
            prefetch_cache_bytes: 777,
            write_behind_requests: 1,
            log_burst: 0,
            ..VmLimits::default()
        };
        let tenant = Tenant::new("a", "a")
            .unwrap()
            .with_limits(Some(own.clone()));
        let session = Session::new("vm-a", Arc::new(tenant), engine.clone());
        assert_eq!(session.limits, own);
        assert_eq!(session.prefetch.limit(), 777);
        assert!(
            !session.log_limit.admit(tokio::time::Instant::now()),
            "a burst of 0"
        );
        let mut first = session.write_behind.register();
        assert!(first.reserve(1));
        assert!(
            !session.write_behind.register().reserve(1),
            "one upload at a time"
        );

        let plain = Session::new("vm-b", Arc::new(Tenant::new("b", "b").unwrap()), engine);
        assert_eq!(plain.limits, config.limits);
        assert_eq!(plain.prefetch.limit(), 12345);
        assert!(plain.log_limit.admit(tokio::time::Instant::now()));
    }
}
