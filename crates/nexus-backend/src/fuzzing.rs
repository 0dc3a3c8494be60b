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
mod parts;
mod report;
mod seeds;

pub use self::report::Report;
pub use self::scenario::Scenario;
pub use self::seeds::seeds;

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
        let mut harness = model::Harness::new(&runtime, parts::build(&runtime, &scenario.options));
        for step in &scenario.steps {
            harness.step(step);
        }
        harness.finish()
    };
    drop(runtime);
    report
}

#[cfg(test)]
mod tests;
