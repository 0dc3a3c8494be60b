// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! **Unstable, for fuzzing and tests only** (feature `fuzzing`): the operation layer run
//! in-process, without a VM and without a vhost-user connection, against a model.
//!
//! [`run`] builds what an attached VM has — the shared engine over an in-memory object store
//! (`object_store::memory::InMemory` behind the same `Store::Remote` the S3 store uses), a
//! session of a VM of a tenant confined to [`scenario::TENANT_PREFIX`], and the VM's request
//! queue over a window of plain memory — on a current-thread tokio runtime whose clock is
//! paused, so timeouts, token buckets and TTLs move only when the scenario says so. The
//! guest's requests are laid out with nexus-ring's encoders in a split virtqueue in the
//! window and served by the backend's own request queue (the checked pop, the decoder,
//! `dispatch` with its key turns, write-behind tickets, FLUSH marks and NEXT claims taken in
//! arrival order, the in-flight limit, `ops::execute` and `ops::respond`), exactly as a
//! kick would. Invocations and hints come in as the node daemon's (`Backend::invoke`,
//! `Backend::hint`) would.
//!
//! After every step that lets the backend run, every answer is checked (it panics on the
//! first violation, which is what a fuzzer looks for):
//!
//! - the guest's own check ([`nexus_ring::ResponseHeader::check_reply`] for the request's id
//!   and capacities), the used length, and nothing written past what the header claims;
//! - a model of the store kept from the answers (successful PUTs and DELETEs, in each key's
//!   arrival order, which key turns guarantee) agrees with every GET, HEAD and LIST answer
//!   and with every invocation input read from an object, wherever no write was in flight;
//!   LIST pages are in key order, within the token and prefix, and skip no key before the
//!   token they hand out;
//! - keys outside the tenant's prefix are always `PERMISSION_DENIED` and invalid keys
//!   `INVALID_REQUEST`; at the end the store holds exactly the model (nothing outside the
//!   prefix was touched);
//! - after a FLUSH answered `OK` (and once an invocation without asynchronous durability is
//!   reported complete), every write-behind PUT acknowledged before it is in the store;
//! - the VM's write-behind uploads stay within their count and bytes, its requests in
//!   flight within its limit; when everything is done, no upload, staging room or request
//!   slot is left held, and every request but a NEXT waiting without a timeout is answered;
//! - NEXT delivers queued invocations in order with their context and input, COMPLETE is
//!   accepted once per delivered invocation, and the node gets the result it reported;
//!   INVOKE answers what the invoker returned, within the caller's timeout; HTTP never
//!   leaves the empty allow-list.
//!
//! The input format is in [`scenario`]. Nothing here is part of the supported API.

pub mod scenario;

mod guest;
mod model;
mod seeds;

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nexus_ring::{Op, Status};
use object_store::memory::InMemory;

use crate::config::{BackendConfig, HttpPolicy, S3Options, StoreConfig, StoreUrl, VmLimits};
use crate::device::RequestRing;
use crate::engine::Engine;
use crate::event_loop::EventLoop;
use crate::http::HttpGateway;
use crate::session::Session;
use crate::store::Store;
use crate::tenant::Tenant;
use crate::window::WindowMemory;

pub use self::scenario::Scenario;
pub use self::seeds::seeds;

/// What a run saw: answers by op and status, and the steps that could not be taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    answers: BTreeMap<(u16, u16), usize>,
    /// Steps taken.
    pub steps: usize,
    /// Requests the guest could not send (every slot busy, or a layout nexus-ring refuses),
    /// and node calls the backend would refuse.
    pub skipped: usize,
    /// Invocations whose result the node received.
    pub invocations_completed: usize,
}

impl Report {
    /// How many `op` requests were answered with `status`.
    pub fn answers(&self, op: Op, status: Status) -> usize {
        self.answers
            .get(&(op.code(), status.code()))
            .copied()
            .unwrap_or(0)
    }

    fn count(&mut self, op: Op, status: Status) {
        *self.answers.entry((op.code(), status.code())).or_default() += 1;
    }
}

/// Runs `scenario` against a fresh backend engine, in-memory store and VM; panics when an
/// oracle is violated (see the module docs).
pub fn run(scenario: &Scenario) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let report = {
        let _context = runtime.enter();
        let mut harness = model::Harness::new(&runtime, build(&runtime, &scenario.options));
        for step in &scenario.steps {
            harness.step(step);
        }
        harness.finish()
    };
    drop(runtime);
    report
}

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

fn build(runtime: &tokio::runtime::Runtime, options: &scenario::Options) -> Parts {
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
        Arc::new(tenant),
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

#[cfg(test)]
mod tests;
