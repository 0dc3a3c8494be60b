// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tenants as the running backend holds them: each tenant's rules, store, HTTP client and
//! per-VM limits as configured now ([`TenantNow`], replaced whole by a reload), and what it
//! uses of its quota ([`TenantState`], kept across reloads).
//!
//! # Quotas
//!
//! - **Requests per second** (over all the tenant's VMs): a token bucket refilled at the
//!   rate, holding at most `burst` tokens (default: one second's worth). GET, PUT, HEAD,
//!   DELETE, LIST, HTTP and INVOKE take one token each; a request that finds none is
//!   answered `THROTTLED`.
//! - **Bytes and objects**: counted at start (and when a reload gives the tenant another
//!   store or prefix) by listing the tenant's prefix in its store, in the background, then
//!   kept up to date by the backend's own PUTs (an overwrite replaces the old size, found
//!   with a HEAD) and DELETEs. A PUT that would go over is answered `PERMISSION_DENIED` with
//!   a message naming the quota.
//!
//! The counts are an approximation, on purpose: objects written or removed outside the
//! backend are seen only at the next count; a PUT or DELETE racing with the count may be
//! counted twice or not at all; two PUTs of one key at once may both count as new. Until the
//! first count is done, the tenant's usage is what was counted so far.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::runtime::Handle;

use crate::config::{HttpPolicy, Quota, StoreConfig, VmLimits};
use crate::error::{Error, Result};
use crate::http::HttpGateway;
use crate::store::{Store, StoreError};
use crate::sync::lock;
use crate::tenant::{Tenant, Tenants};

/// The most objects a count looks at before it gives up (and logs that it did).
const COUNT_MAX_OBJECTS: u64 = 50_000_000;
/// A count logs its progress every this many objects.
const COUNT_PROGRESS_EVERY: u64 = 100_000;

/// A tenant as configured now.
#[derive(Debug)]
pub(crate) struct TenantNow {
    /// Its rules.
    pub(crate) tenant: Arc<Tenant>,
    /// Its store: its own, or the backend's.
    pub(crate) store: Store,
    /// Its HTTP client, confined to its allow-list (its own, or the backend's).
    pub(crate) http: HttpGateway,
    /// The limits of each of its VMs attached from now on.
    pub(crate) limits: VmLimits,
}

/// What a tenant's quotas are charged against.
#[derive(Debug)]
struct Usage {
    bytes: u64,
    objects: u64,
    /// Bumped by every new count: a count of an older generation is dropped.
    generation: u64,
    /// Tokens of the request rate, and when they were last refilled.
    tokens: f64,
    refilled: Instant,
}

/// A tenant of the running backend.
#[derive(Debug)]
pub(crate) struct TenantState {
    name: String,
    now: RwLock<Arc<TenantNow>>,
    usage: Mutex<Usage>,
    /// Requests refused for a quota.
    refused: AtomicU64,
}

/// What a PUT charged to its tenant's quota, to be given back if it fails.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Charge {
    bytes: i128,
    objects: i64,
}

impl TenantState {
    /// A tenant configured as `now`.
    pub(crate) fn new(now: TenantNow) -> Self {
        let burst = now.tenant.quota().burst_tokens();
        Self {
            name: now.tenant.name().to_owned(),
            now: RwLock::new(Arc::new(now)),
            usage: Mutex::new(Usage {
                bytes: 0,
                objects: 0,
                generation: 0,
                tokens: burst,
                refilled: Instant::now(),
            }),
            refused: AtomicU64::new(0),
        }
    }

    /// `tenant` in `engine`'s store, with its HTTP client and default limits (the
    /// operation-layer harness and unit tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn on_engine(tenant: Arc<Tenant>, engine: &crate::engine::Engine) -> Arc<Self> {
        let limits = tenant.limits().unwrap_or(&engine.limits).clone();
        Arc::new(Self::new(TenantNow {
            tenant,
            store: engine.store.clone(),
            http: engine.http.clone(),
            limits,
        }))
    }

    /// The tenant's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The tenant as configured now.
    pub(crate) fn now(&self) -> Arc<TenantNow> {
        self.now
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the configuration; whether the usage must be counted again (another store
    /// or prefix, or a bytes/objects quota where there was none).
    fn replace(&self, now: TenantNow) -> bool {
        let mut slot = self
            .now
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = &slot.tenant;
        let recount = now.tenant.quota().counts_usage()
            && (old.store() != now.tenant.store()
                || old.prefix() != now.tenant.prefix()
                || !old.quota().counts_usage());
        *slot = Arc::new(now);
        recount
    }

    /// Whether a VM of this tenant may touch `key` now.
    pub(crate) fn allows(&self, key: &str) -> bool {
        self.now().tenant.allows(key)
    }

    /// The tenant's key prefix now.
    pub(crate) fn prefix(&self) -> String {
        self.now().tenant.prefix().to_owned()
    }

    /// Checks `key` as [`Tenant::check_object_key`] does, against the tenant now.
    pub(crate) fn check_object_key(&self, key: &str) -> Result<()> {
        self.now().tenant.check_object_key(key)
    }

    /// The tenant's store now.
    pub(crate) fn store(&self) -> Store {
        self.now().store.clone()
    }

    /// Takes one request from the tenant's rate; the refusal's message if there is none.
    pub(crate) fn take_request(&self) -> std::result::Result<(), String> {
        let quota = self.now().tenant.quota().clone();
        let Some(rate) = quota.requests_per_second else {
            return Ok(());
        };
        let burst = quota.burst_tokens();
        let mut usage = lock(&self.usage);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(usage.refilled).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * f64::from(rate)).min(burst);
        usage.refilled = now;
        if usage.tokens >= 1.0 {
            usage.tokens -= 1.0;
            return Ok(());
        }
        drop(usage);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "quota exceeded: tenant `{}` may make {rate} requests per second (burst {burst})",
            self.name
        ))
    }

    /// Whether PUTs and DELETEs must tell the quota the size of what they replace.
    pub(crate) fn counts_usage(&self) -> bool {
        self.now().tenant.quota().counts_usage()
    }

    /// Charges a PUT of `new` bytes that replaces an object of `old` bytes (`None`: a new
    /// object) to the quota; the refusal's message if it would go over.
    pub(crate) fn charge_put(
        &self,
        old: Option<u64>,
        new: u64,
    ) -> std::result::Result<Charge, String> {
        let quota = self.now().tenant.quota().clone();
        if !quota.counts_usage() {
            return Ok(Charge::default());
        }
        let charge = Charge {
            bytes: i128::from(new) - i128::from(old.unwrap_or(0)),
            objects: i64::from(old.is_none()),
        };
        let mut usage = lock(&self.usage);
        let bytes = apply(usage.bytes, charge.bytes);
        let objects = apply(usage.objects, charge.objects.into());
        let over = match (quota.bytes, quota.objects) {
            (Some(limit), _) if charge.bytes > 0 && bytes > limit => Some(format!(
                "quota exceeded: tenant `{}` may store {limit} bytes, it has {} and this PUT adds {}",
                self.name, usage.bytes, charge.bytes
            )),
            (_, Some(limit)) if charge.objects > 0 && objects > limit => Some(format!(
                "quota exceeded: tenant `{}` may store {limit} objects and has {}",
                self.name, usage.objects
            )),
            _ => None,
        };
        if let Some(message) = over {
            drop(usage);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(message);
        }
        usage.bytes = bytes;
        usage.objects = objects;
        Ok(charge)
    }

    /// Gives back what a failed PUT charged.
    pub(crate) fn refund(&self, charge: Charge) {
        let mut usage = lock(&self.usage);
        usage.bytes = apply(usage.bytes, -charge.bytes);
        usage.objects = apply(usage.objects, (-charge.objects).into());
    }

    /// Counts a DELETE of an object of `old` bytes (`None`: there was none).
    pub(crate) fn deleted(&self, old: Option<u64>) {
        if let Some(size) = old {
            let mut usage = lock(&self.usage);
            usage.bytes = usage.bytes.saturating_sub(size);
            usage.objects = usage.objects.saturating_sub(1);
        }
    }

    /// Bytes and objects counted now, and the requests refused for a quota so far.
    pub(crate) fn usage(&self) -> (u64, u64, u64) {
        let usage = lock(&self.usage);
        (
            usage.bytes,
            usage.objects,
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Counts the tenant's objects anew, in the background on `runtime`.
    fn start_count(self: &Arc<Self>, runtime: &Handle) {
        let generation = {
            let mut usage = lock(&self.usage);
            usage.generation += 1;
            usage.bytes = 0;
            usage.objects = 0;
            usage.generation
        };
        let state = Arc::clone(self);
        runtime.spawn(crate::panics::counted("a tenant's usage count", async move {
            let now = state.now();
            let started = Instant::now();
            match count(&state.name, &now).await {
                Ok((bytes, objects)) => {
                    let mut usage = lock(&state.usage);
                    if usage.generation == generation {
                        usage.bytes = usage.bytes.saturating_add(bytes);
                        usage.objects = usage.objects.saturating_add(objects);
                        log::info!(
                            "tenant {}: {objects} objects, {bytes} bytes under prefix `{}` (counted in {:?})",
                            state.name,
                            now.tenant.prefix(),
                            started.elapsed()
                        );
                    }
                }
                Err(e) => log::error!(
                    "tenant {}: cannot count its objects for its quota ({e}); its usage counts only what it writes from now on",
                    state.name
                ),
            }
        }));
    }
}

/// `value` changed by `delta`, within `0..=u64::MAX`.
fn apply(value: u64, delta: i128) -> u64 {
    u64::try_from((i128::from(value) + delta).max(0)).unwrap_or(u64::MAX)
}

/// Lists the tenant's prefix in its store: its bytes and objects.
async fn count(name: &str, now: &TenantNow) -> std::result::Result<(u64, u64), StoreError> {
    let (mut bytes, mut objects) = (0u64, 0u64);
    let mut token: Option<String> = None;
    loop {
        let page = now
            .store
            .list(now.tenant.prefix(), token.as_deref(), 1000, 100_000)
            .await?;
        for entry in page.entries.iter().filter(|e| now.tenant.allows(&e.key)) {
            bytes = bytes.saturating_add(entry.size);
            objects += 1;
            if objects % COUNT_PROGRESS_EVERY == 0 {
                log::info!("tenant {name}: counting its objects, {objects} so far");
            }
        }
        if objects >= COUNT_MAX_OBJECTS {
            log::warn!(
                "tenant {name}: stopped counting at {objects} objects; its usage is at least that"
            );
            break;
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    Ok((bytes, objects))
}

impl Quota {
    /// The request bucket's size: `burst`, else one second's worth.
    fn burst_tokens(&self) -> f64 {
        f64::from(self.burst.or(self.requests_per_second).unwrap_or(1).max(1))
    }
}

/// The tenants of the running backend, by name.
#[derive(Debug, Default)]
pub(crate) struct TenantTable {
    by_name: HashMap<String, Arc<TenantState>>,
}

/// What the backend's tenants are built from.
pub(crate) struct TenantSources<'a> {
    /// The checked tenants.
    pub(crate) tenants: &'a Tenants,
    /// The backend's store, for tenants without their own.
    pub(crate) store: &'a Store,
    /// The backend's HTTP policy (the allow-list of tenants without their own).
    pub(crate) http: &'a HttpPolicy,
    /// The backend's HTTP client, for tenants without their own allow-list.
    pub(crate) gateway: &'a HttpGateway,
    /// The per-VM limits of tenants without their own.
    pub(crate) limits: &'a VmLimits,
}

impl TenantSources<'_> {
    /// Every tenant as configured now, its own store opened and HTTP client built; fails
    /// naming the tenant. Must run inside the runtime.
    fn build(&self) -> Result<HashMap<String, TenantNow>> {
        let mut built = HashMap::new();
        for name in self.tenants.names() {
            let tenant = self.tenants.get(name)?;
            let in_tenant = |e: Error| Error::InvalidTenant {
                spec: name.to_owned(),
                reason: e.to_string(),
            };
            let store = match tenant.store() {
                None => self.store.clone(),
                Some(config) => open_store(config).map_err(in_tenant)?,
            };
            let http = match tenant.http_allow() {
                None => self.gateway.clone(),
                Some(allow) => HttpGateway::new(&HttpPolicy {
                    allow: allow.to_vec(),
                    ..self.http.clone()
                })
                .map_err(in_tenant)?,
            };
            let limits = tenant.limits().unwrap_or(self.limits).clone();
            built.insert(
                name.to_owned(),
                TenantNow {
                    tenant,
                    store,
                    http,
                    limits,
                },
            );
        }
        Ok(built)
    }
}

/// Opens a tenant's own store.
fn open_store(config: &StoreConfig) -> Result<Store> {
    Store::open(config)
}

impl TenantTable {
    /// The tenants of `sources`; each with a bytes or objects quota is counted in the
    /// background on `runtime`.
    pub(crate) fn build(sources: &TenantSources<'_>, runtime: &Handle) -> Result<Self> {
        let _context = runtime.enter();
        let mut by_name = HashMap::new();
        for (name, now) in sources.build()? {
            let counts = now.tenant.quota().counts_usage();
            let state = Arc::new(TenantState::new(now));
            if counts {
                state.start_count(runtime);
            }
            by_name.insert(name, state);
        }
        Ok(Self { by_name })
    }

    /// The tenant called `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<TenantState>> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTenant(name.to_owned()))
    }

    /// Replaces the tenants with those of `sources`: a tenant that stays keeps its state
    /// (its VMs and quota usage) with its new configuration; `in_use` are the tenants of
    /// attached VMs, none of which may go. Nothing changes if anything fails.
    pub(crate) fn reload(
        &mut self,
        sources: &TenantSources<'_>,
        in_use: &[String],
        runtime: &Handle,
    ) -> Result<()> {
        let _context = runtime.enter();
        let mut built = sources.build()?;
        let mut gone: Vec<&String> = in_use
            .iter()
            .filter(|name| !built.contains_key(name.as_str()))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        if !gone.is_empty() {
            return Err(Error::ReloadRefused(format!(
                "tenant(s) {} would be removed but have attached VMs: detach them first, or keep the tenant(s) in the file",
                gone.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut by_name = HashMap::new();
        for (name, now) in built.drain() {
            let state = match self.by_name.remove(&name) {
                Some(state) => {
                    if state.replace(now) {
                        state.start_count(runtime);
                    }
                    state
                }
                None => {
                    let counts = now.tenant.quota().counts_usage();
                    let state = Arc::new(TenantState::new(now));
                    if counts {
                        state.start_count(runtime);
                    }
                    state
                }
            };
            by_name.insert(name, state);
        }
        self.by_name = by_name;
        Ok(())
    }

    /// Every tenant.
    pub(crate) fn all(&self) -> Vec<Arc<TenantState>> {
        let mut all: Vec<Arc<TenantState>> = self.by_name.values().cloned().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
