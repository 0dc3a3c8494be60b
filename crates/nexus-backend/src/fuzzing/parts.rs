// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the harness builds for a run: the engine over an in-memory store, the VM's session
//! and its request queue over the guest's window.

use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::memory::InMemory;

use super::{guest, scenario};
use crate::config::{BackendConfig, HttpPolicy, S3Options, StoreConfig, StoreUrl, VmLimits};
use crate::device::RequestRing;
use crate::engine::Engine;
use crate::event_loop::EventLoop;
use crate::http::HttpGateway;
use crate::session::Session;
use crate::store::Store;
use crate::tenant::Tenant;
use crate::window::WindowMemory;

/// What the harness drives: the store, the engine, the VM's session and queue.
pub(crate) struct Parts {
    pub(crate) memory: Arc<InMemory>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) session: Arc<Session>,
    pub(crate) ring: Arc<RequestRing>,
    pub(crate) guest: guest::Guest,
    pub(crate) options: scenario::Options,
}

/// The VM's limits for `options`.
pub(crate) fn limits(options: &scenario::Options) -> (VmLimits, u64) {
    use scenario::*;
    let pick = |index: u8, len: usize| usize::from(index) % len;
    let (write_behind_requests, write_behind_bytes) =
        WRITE_BEHIND[pick(options.write_behind, WRITE_BEHIND.len())];
    let (staging_bytes, global) = STAGING[pick(options.staging, STAGING.len())];
    let (log_burst, log_records_per_second) = LOG_LIMITS[pick(options.log, LOG_LIMITS.len())];
    let limits = VmLimits {
        requests_in_flight: IN_FLIGHT[pick(options.in_flight, IN_FLIGHT.len())],
        prefetch_cache_bytes: PREFETCH_BYTES[pick(options.prefetch, PREFETCH_BYTES.len())],
        write_behind_bytes,
        write_behind_requests,
        staging_bytes,
        log_records_per_second,
        log_burst,
        list_scan_budget: SCAN_BUDGETS[pick(options.scan_budget, SCAN_BUDGETS.len())],
        // Pacing runs on the paused clock; the CPU share is metered in real thread time,
        // which a fuzzer cannot control: give it room so that runs are deterministic.
        list_scan_per_second: 100_000,
        cpu_millis_per_second: 1_000_000,
    };
    (limits, global)
}

/// The HTTP client, built once per process: building one is costly, and with the empty
/// allow-list it never sends anything.
fn http() -> HttpGateway {
    static HTTP: OnceLock<HttpGateway> = OnceLock::new();
    HTTP.get_or_init(|| {
        HttpGateway::new(&HttpPolicy::default()).expect("the default HTTP policy is valid")
    })
    .clone()
}

/// The event loop a request queue is registered with (its kick is never rung here: the
/// harness serves the queue itself).
fn event_loop() -> &'static Arc<EventLoop> {
    static EVENT_LOOP: OnceLock<Arc<EventLoop>> = OnceLock::new();
    EVENT_LOOP.get_or_init(|| EventLoop::start(1).expect("an event loop thread"))
}

pub(crate) fn build(runtime: &tokio::runtime::Runtime, options: &scenario::Options) -> Parts {
    let (limits, global) = limits(options);
    let store_config = StoreConfig {
        url: StoreUrl::File("/nonexistent".into()),
        s3: S3Options::default(),
    };
    let mut config = BackendConfig::new(store_config, "/nonexistent".into());
    config.limits = limits;
    config.staging_bytes = global;
    let memory = Arc::new(InMemory::new());
    let engine = Arc::new(Engine::with_store(
        &config,
        Store::Remote(memory.clone()),
        http(),
        runtime.handle().clone(),
    ));
    let tenant = Tenant::new("tenant", scenario::TENANT_PREFIX).expect("a valid tenant");
    let session = Arc::new(Session::with_uploads(
        "vm-fuzz",
        crate::tenant_state::TenantState::on_engine(Arc::new(tenant), &engine),
        engine.clone(),
        None,
    ));
    let event_loop = event_loop();
    let ring = Arc::new(RequestRing::new(
        event_loop.next_id(),
        session.clone(),
        event_loop,
    ));
    let guest = guest::Guest::new();
    let window = WindowMemory::new(Arc::new(guest.mem.clone())).expect("one region");
    ring.set_window(window);
    ring.set_size(guest::QUEUE_SIZE)
        .expect("a valid queue size");
    ring.set_addresses(guest::DESC_TABLE, guest::AVAIL_RING, guest::USED_RING)
        .expect("valid ring addresses");
    let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    // SAFETY: the eventfd's descriptor is handed over to the File, its only owner.
    let kick = unsafe {
        <File as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kick))
    };
    ring.set_kick(Some(kick));
    Parts {
        memory,
        engine,
        session,
        ring,
        guest,
        options: *options,
    }
}

/// How long the harness lets the clock run at the end: past every timeout a request can
/// have (the longest is the invoker's 120 s).
pub(crate) const FINAL_ADVANCE: Duration = Duration::from_secs(2 * 3600);
