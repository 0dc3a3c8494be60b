// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend: attached VMs, each a vhost-user connection served by the shared event loop,
//! over the shared engine.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nexus_ring::control::{ControlEvent, TenantStats};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::config::{BackendConfig, ControlAccess, valid_name};
use crate::device::RequestRing;
use crate::engine::Engine;
use crate::error::{Error, InputFailure, Result};
use crate::event_loop::{Channel, EventLoop};
use crate::http::HttpGateway;
use crate::invocations::QueuedInvocation;
use crate::invoke::{Invocation, InvocationInput, Invoker, PendingInvocation};
use crate::peer::Peer;
use crate::prefetch::prefetch;
use crate::session::Session;
use crate::stats::{BackendStats, ProcessUsage};
use crate::store::Store;
use crate::sync::lock;
use crate::tenant::Tenants;
use crate::tenant_state::{TenantSources, TenantTable};
use crate::vhost_user::VmChannel;
use crate::write_behind::WriteBehind;

/// The shared backend (cheap to clone; clones share everything).
///
/// It serves many VMs at once. [`attach`](Self::attach) makes a VM's vhost-user connection —
/// a socket pair, one end served by the backend's shared event loop, the other returned to
/// the caller, the VM's frontend — and every VM's requests run on the one tokio runtime given
/// to [`new`](Self::new), with one store client and one HTTP client.
#[derive(Clone, Debug)]
pub struct Backend {
    pub(crate) shared: Arc<Shared>,
}

/// Produces the configuration a reload applies (the node's binary re-reads its file and
/// applies its command-line overrides).
pub type Reloader = Arc<dyn Fn() -> Result<BackendConfig> + Send + Sync>;

/// What [`run_with`](crate::run_with) does beyond serving its configuration.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Produces the configuration that SIGHUP and the control op `reload` apply
    /// ([`Backend::reload_config`]); `None`: reloads are refused.
    pub reloader: Option<Reloader>,
    /// The user and group to become once the control socket is bound
    /// ([`drop_privileges`](crate::drop_privileges)).
    pub drop_to: crate::privileges::DropTo,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("reloader", &self.reloader.as_ref().map(|_| "<set>"))
            .field("drop_to", &self.drop_to)
            .finish()
    }
}

pub(crate) struct Shared {
    engine: Arc<Engine>,
    /// The tenants as configured now (a reload replaces them).
    tenants: RwLock<TenantTable>,
    /// The backend's own store as configured now (tenants without their own, published
    /// snapshots).
    store: RwLock<Store>,
    /// What [`Backend::reload_config`] applies.
    reloader: Mutex<Option<Reloader>>,
    event_loop: Arc<EventLoop>,
    vms: Mutex<HashMap<String, Attached>>,
    /// Each VM's write-behind uploads, by VM ID: they outlive an attachment (a VMM that
    /// reconnects finds them) until nothing is pending or left to report.
    uploads: Mutex<HashMap<String, Arc<WriteBehind>>>,
    access: RwLock<ControlAccess>,
    /// Control peers refused so far (for the log's streaks).
    pub(crate) refused_peers: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("engine", &self.engine)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for channel in self.event_loop.shutdown() {
            channel.close();
        }
    }
}

#[derive(Debug)]
struct Attached {
    id: u64,
    session: Arc<Session>,
    channel: Arc<VmChannel>,
    /// The user that attached the VM; only its peers may reach the VM (`None`: in-process).
    owner: Option<u32>,
}

/// Threads of the shared event loop (vhost-user messages and kicks of every VM).
const EVENT_THREADS: usize = 1;

impl Backend {
    /// Opens the store, builds the shared clients and starts the event loop. Requests run
    /// on `runtime`.
    pub fn new(config: BackendConfig, runtime: Handle) -> Result<Self> {
        let tenants = Tenants::from_specs(&config.tenants, &config.store.url)?;
        let engine = Arc::new(Engine::new(&config, runtime.clone())?);
        let table = TenantTable::build(
            &TenantSources {
                tenants: &tenants,
                store: &engine.store,
                http: &config.http,
                gateway: &engine.http,
                limits: &engine.limits,
            },
            &runtime,
        )?;
        let uploads = lost_uploads(&engine);
        let event_loop = EventLoop::start(EVENT_THREADS).map_err(Error::SpawnThread)?;
        log::info!(
            "backend ready: store {:?}, tenants {:?}",
            config.store.url,
            tenants.names(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                store: RwLock::new(engine.store.clone()),
                engine,
                tenants: RwLock::new(table),
                reloader: Mutex::new(None),
                event_loop,
                vms: Mutex::new(HashMap::new()),
                uploads: Mutex::new(uploads),
                access: RwLock::new(config.control),
                refused_peers: AtomicU64::new(0),
            }),
        })
    }

    /// Sets what [`reload_config`](Self::reload_config) applies (SIGHUP and the control op
    /// `reload` call it).
    pub fn set_reloader(&self, reloader: Reloader) {
        *lock(&self.shared.reloader) = Some(reloader);
    }

    /// Reloads the configuration the [reloader](Self::set_reloader) produces (re-reading
    /// the configuration file), as [`reload`](Self::reload) does. Refused without a reloader,
    /// or if the reloader fails (a bad file: its error names the file, line and key); the
    /// configuration in force stays then, and the error is logged.
    pub fn reload_config(&self) -> Result<()> {
        let reloader = lock(&self.shared.reloader).clone();
        let result = match reloader {
            None => Err(Error::ReloadRefused(
                "this backend has no configuration file to reload".into(),
            )),
            Some(reloader) => reloader().and_then(|config| self.reload(&config)),
        };
        if let Err(e) = &result {
            log::error!("configuration reload failed, the old configuration stays: {e}");
        }
        result
    }

    /// The directories the backend owns and must keep writing in after dropping privileges:
    /// `state_dir`, and the staging directory of every file store open now.
    pub(crate) fn own_dirs(&self, state_dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
        let mut dirs = vec![state_dir];
        let stores = std::iter::once(self.store()).chain(
            read(&self.shared.tenants)
                .all()
                .into_iter()
                .map(|t| t.store()),
        );
        for store in stores {
            if let Some(dir) = store.staging_dir() {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    /// Reloads ([`reload_config`](Self::reload_config)) on every SIGHUP, from a task on the
    /// current runtime.
    pub(crate) fn reload_on_hangup(&self) -> Result<()> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(Error::Runtime)?;
        let backend = self.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                log::info!("SIGHUP: reloading the configuration");
                let backend = backend.clone();
                let reloaded = tokio::task::spawn_blocking(move || backend.reload_config()).await;
                if let Err(e) = reloaded {
                    if e.is_panic() {
                        crate::panics::record_task(
                            "a reload on SIGHUP",
                            &crate::panics::message(&*e.into_panic()),
                        );
                    }
                }
            }
        });
        Ok(())
    }

    /// Replaces the tenants (their stores, HTTP allow-lists, quotas, per-VM limits and who
    /// may attach their VMs), the backend's store and HTTP policy, and who may use the
    /// control socket, with `config`'s; attached VMs stay attached, and keep their tenant by
    /// name. What takes effect when:
    ///
    /// - at once, for attached VMs too: a tenant's store and prefix, its HTTP allow-list and
    ///   bounds, its quotas, control access;
    /// - for VMs attached from now on: per-VM limits (`[limits]`, `[tenants.NAME.limits]`);
    /// - never (a restart is needed): the control socket, the state directory, I/O threads,
    ///   the staging budget over all VMs.
    ///
    /// Refused, changing nothing, if `config` is invalid or would remove a tenant that has
    /// attached VMs.
    pub fn reload(&self, config: &BackendConfig) -> Result<()> {
        let tenants = Tenants::from_specs(&config.tenants, &config.store.url)?;
        let engine = &self.shared.engine;
        let (store, gateway) = {
            let _context = engine.runtime.enter();
            crate::http::install_crypto_provider();
            (Store::open(&config.store)?, HttpGateway::new(&config.http)?)
        };
        // Held across the check of attached VMs' tenants: an attach waits for the reload.
        let mut table = write(&self.shared.tenants);
        let in_use: Vec<String> = lock(&self.shared.vms)
            .values()
            .map(|a| a.session.tenant.name().to_owned())
            .collect();
        let sources = TenantSources {
            tenants: &tenants,
            store: &store,
            http: &config.http,
            gateway: &gateway,
            limits: &config.limits,
        };
        table.reload(&sources, &in_use, &engine.runtime)?;
        drop(table);
        *write(&self.shared.store) = store;
        *write(&self.shared.access) = config.control.clone();
        log::info!(
            "configuration reloaded: store {:?}, tenants {:?}",
            config.store.url,
            tenants.names()
        );
        Ok(())
    }

    /// The VMs attached now, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut vms: Vec<String> = lock(&self.shared.vms).keys().cloned().collect();
        vms.sort_unstable();
        vms
    }

    /// Attaches VM `vm` to tenant `tenant` and starts serving it. Returns the frontend's end
    /// of the VM's vhost-user connection: whoever holds it is the VM's frontend, and nobody
    /// else can be.
    pub fn attach(&self, vm: &str, tenant: &str) -> Result<UnixStream> {
        self.attach_tracked(vm, tenant, None, None)
            .map(|(connection, _)| connection)
    }

    /// [`attach`](Self::attach) for control peer `peer`, whose connection takes the VM's
    /// `events`; also returns the attachment's id (for [`detach_if`](Self::detach_if)).
    pub(crate) fn attach_tracked(
        &self,
        vm: &str,
        tenant: &str,
        peer: Option<Peer>,
        events: Option<mpsc::UnboundedSender<ControlEvent>>,
    ) -> Result<(UnixStream, u64)> {
        if !valid_name(vm) || vm.starts_with('.') {
            return Err(Error::InvalidVmId(vm.to_owned()));
        }
        // Held until the VM is attached, so that a reload sees it.
        let table = read(&self.shared.tenants);
        let tenant = table.get(tenant)?;
        if let Some(peer) = peer {
            if !peer.is_backend_user() && !tenant.now().tenant.admits(peer.uid, peer.gid) {
                return Err(Error::TenantNotPermitted {
                    tenant: tenant.name().to_owned(),
                    uid: peer.uid,
                });
            }
        }
        let mut vms = lock(&self.shared.vms);
        if vms.contains_key(vm) {
            return Err(Error::VmAlreadyAttached(vm.to_owned()));
        }
        let (ours, theirs) = UnixStream::pair().map_err(Error::Connection)?;
        let event_loop = &self.shared.event_loop;
        let id = event_loop.next_id();
        let earlier = lock(&self.shared.uploads).get(vm).cloned();
        let session = Arc::new(Session::with_uploads(
            vm,
            tenant,
            self.shared.engine.clone(),
            earlier,
        ));
        self.keep_uploads(vm, &session.write_behind, vms.len());
        session.set_events(events);
        let ring = Arc::new(RequestRing::new(id, session.clone(), event_loop));
        let channel = VmChannel::new(id, session.clone(), ring, ours).map_err(Error::Connection)?;
        event_loop.add(channel.clone()).map_err(Error::Connection)?;
        log::info!("vm {vm} attached to tenant {}", session.tenant.name());
        vms.insert(
            vm.to_owned(),
            Attached {
                id,
                session,
                channel,
                owner: peer.map(|p| p.uid),
            },
        );
        drop(vms);
        drop(table);
        Ok((theirs, id))
    }

    /// Whether `peer` may use the control socket: the backend's own user, or a user or group
    /// the configuration names.
    pub(crate) fn peer_allowed(&self, peer: Peer) -> Result<()> {
        let access = read(&self.shared.access);
        if peer.is_backend_user()
            || access.uids.contains(&peer.uid)
            || access.gids.contains(&peer.gid)
        {
            Ok(())
        } else {
            Err(Error::PeerNotAllowed {
                uid: peer.uid,
                gid: peer.gid,
            })
        }
    }

    /// Whether `peer` may reach VM `vm`: the user that attached it (and the backend's own).
    pub(crate) fn check_owner(&self, vm: &str, peer: Peer) -> Result<()> {
        match lock(&self.shared.vms).get(vm) {
            None => Err(Error::UnknownVm(vm.to_owned())),
            Some(a) if a.owner.is_none_or(|uid| uid == peer.uid) || peer.is_backend_user() => {
                Ok(())
            }
            Some(_) => Err(Error::NotVmOwner {
                vm: vm.to_owned(),
                uid: peer.uid,
            }),
        }
    }

    /// Starts prefetching object `key` for VM `vm`: a following GET of it (or an invocation
    /// whose input it is) is served from the VM's prefetch cache. A wrong hint costs only the
    /// fetch; an object larger than the cache is not prefetched.
    pub fn hint(&self, vm: &str, key: &str) -> Result<()> {
        let session = self.session(vm)?;
        session.tenant.check_object_key(key)?;
        prefetch(
            &session.prefetch,
            key,
            &session.key_order,
            &session.engine,
            session.tenant.store(),
            &session.cpu,
        );
        Ok(())
    }

    /// Detaches VM `vm`: closes its vhost-user connection, fails its pending invocations.
    /// Its acknowledged write-behind uploads still complete. Never waits on the guest.
    pub fn detach(&self, vm: &str) -> Result<()> {
        let attached = lock(&self.shared.vms)
            .remove(vm)
            .ok_or_else(|| Error::UnknownVm(vm.to_owned()))?;
        self.shut(vm, attached);
        Ok(())
    }

    /// Resets VM `vm` between two invocations without detaching it (per-invocation
    /// isolation): its queued and running invocations fail with [`Error::VmReset`], and the
    /// objects prefetched for it (hints, invocation inputs) are forgotten, so nothing the
    /// node queued or fetched for an earlier invocation is served to it. Its connection, its
    /// request queue, a parked `NEXT` and its acknowledged write-behind uploads stay.
    pub fn reset(&self, vm: &str) -> Result<()> {
        let failed = self.session(vm)?.reset();
        log::info!("vm {vm} reset ({failed} invocation(s) failed)");
        Ok(())
    }

    /// Detaches `vm` only if it is still the attachment `id` (a control connection that
    /// closes detaches only what it attached).
    pub(crate) fn detach_if(&self, vm: &str, id: u64) {
        let attached = {
            let mut vms = lock(&self.shared.vms);
            match vms.get(vm) {
                Some(a) if a.id == id => vms.remove(vm),
                _ => None,
            }
        };
        if let Some(attached) = attached {
            self.shut(vm, attached);
        }
    }

    fn shut(&self, vm: &str, attached: Attached) {
        self.shared.event_loop.remove(attached.id);
        attached.session.detach();
        attached.channel.close();
        if attached.session.write_behind.is_idle() {
            let mut uploads = lock(&self.shared.uploads);
            if uploads
                .get(vm)
                .is_some_and(|u| Arc::ptr_eq(u, &attached.session.write_behind))
            {
                uploads.remove(vm);
            }
        }
        log::info!("vm {vm} detached");
    }

    /// Keeps `uploads` as VM `vm`'s, and forgets those of VMs gone with nothing left to do
    /// once they outnumber the `attached` VMs.
    fn keep_uploads(&self, vm: &str, uploads: &Arc<WriteBehind>, attached: usize) {
        let mut all = lock(&self.shared.uploads);
        all.insert(vm.to_owned(), Arc::clone(uploads));
        if all.len() > 2 * attached + 64 {
            all.retain(|_, u| Arc::strong_count(u) > 1 || !u.is_idle());
        }
    }

    /// Detaches every VM.
    pub fn detach_all(&self) {
        let vms: Vec<(String, Attached)> = lock(&self.shared.vms).drain().collect();
        for (vm, attached) in vms {
            self.shut(&vm, attached);
        }
    }

    /// Waits until every acknowledged write-behind upload has finished, at most `timeout`;
    /// returns how many are still running.
    pub async fn drain_uploads(&self, timeout: Duration) -> u64 {
        self.shared.engine.drain_uploads(timeout).await
    }

    /// Registers the invoker that runs `INVOKE` requests (replacing any earlier one).
    pub fn set_invoker(&self, invoker: Arc<dyn Invoker>) {
        self.shared.engine.set_invoker(Some(invoker));
    }

    /// Queues an invocation for VM `vm`: its next `NEXT` request receives the invocation
    /// context and the input. An object input is prefetched at once. The returned future
    /// resolves with what the function reports in `COMPLETE`.
    pub fn invoke(
        &self,
        vm: &str,
        invocation: Invocation,
        input: InvocationInput,
    ) -> Result<PendingInvocation> {
        let session = self.session(vm)?;
        // The context must be encodable: check it as the guest will see it.
        nexus_ring::records::InvocationContext {
            invocation: 0,
            deadline_ms: invocation.deadline_ms,
            async_durability: invocation.async_durability,
            function: &invocation.function,
            request_id: &invocation.request_id,
            output_key: invocation.output_key.as_deref(),
        }
        .to_vec()
        .map_err(|e| Error::InputUnavailable {
            key: String::new(),
            cause: InputFailure::Context,
            reason: format!("bad invocation context: {e}"),
        })?;
        // A VM parked in NEXT reads an object input straight from the store into its window
        // as the NEXT is answered (one copy); one that is busy, restoring or not yet parked
        // has it prefetched meanwhile.
        match &input {
            InvocationInput::Object(key) if !session.invocations.parked() => self.hint(vm, key)?,
            _ => {}
        }
        let number = self.shared.engine.next_invocation();
        let (reply, result) = oneshot::channel();
        session.invocations.push(QueuedInvocation {
            number,
            invocation,
            input,
            reply,
        });
        Ok(PendingInvocation {
            number,
            vm: vm.to_owned(),
            result,
        })
    }

    /// What the backend is doing now (VMs, requests in flight, queued invocations, pending
    /// uploads) and has moved since it started, with the process's resident memory and CPU
    /// time. Reads counters and `/proc/self`; cheap enough to call on every metrics scrape.
    pub fn stats(&self) -> BackendStats {
        let sessions: Vec<Arc<Session>> = lock(&self.shared.vms)
            .values()
            .map(|a| a.session.clone())
            .collect();
        let queued_invocations = sessions.iter().map(|s| s.invocations.queued() as u64).sum();
        let engine = &self.shared.engine;
        let totals = engine.traffic.read();
        let usage = ProcessUsage::read();
        BackendStats {
            pid: std::process::id(),
            vms: sessions.len() as u64,
            in_flight: engine.in_flight(),
            queued_invocations,
            uploads_pending: engine.uploads_pending(),
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            requests: totals.requests,
            rss_bytes: usage.rss_bytes,
            cpu_seconds: usage.cpu_seconds,
            panics: crate::panics::count(),
            tenants: self
                .tenant_usage()
                .into_iter()
                .map(|(name, bytes, objects, quota_refusals)| TenantStats {
                    name,
                    bytes,
                    objects,
                    quota_refusals,
                })
                .collect(),
        }
    }

    /// Whether VM `vm` has a `NEXT` parked with nothing queued or running: it waits for its
    /// next invocation (the moment to snapshot it).
    pub fn next_parked(&self, vm: &str) -> Result<bool> {
        Ok(self.session(vm)?.invocations.parked())
    }

    /// When invocation `number` of VM `vm` was delivered to the guest and when it completed
    /// (each read once).
    pub(crate) fn invocation_times(
        &self,
        vm: &str,
        number: u64,
    ) -> Option<(std::time::Instant, Option<std::time::Instant>)> {
        self.session(vm).ok()?.invocations.take_times(number)
    }

    /// Stores `bytes` durably at `key` for VM `vm`, under its tenant's rules; the error
    /// names the object.
    pub(crate) async fn store_output(
        &self,
        vm: &str,
        key: &str,
        bytes: bytes::Bytes,
    ) -> std::result::Result<(), String> {
        let session = self.session(vm).map_err(|e| e.to_string())?;
        session
            .tenant
            .check_object_key(key)
            .map_err(|e| e.to_string())?;
        session.prefetch.invalidate(key);
        let store = session.tenant.store();
        let charge = if session.tenant.counts_usage() {
            let old = match store.head(key).await {
                Ok(info) => Some(info.size),
                Err(crate::store::StoreError::NotFound) => None,
                Err(e) => return Err(format!("Storing the output at `{key}` failed: {e}")),
            };
            session.tenant.charge_put(old, bytes.len() as u64)?
        } else {
            crate::tenant_state::Charge::default()
        };
        let engine = &session.engine;
        let result = store
            .put(key, crate::store::PutSource::Owned(bytes), &engine.staging)
            .await
            .map_err(|e| format!("Storing the output at `{key}` failed: {e}"));
        if result.is_err() {
            session.tenant.refund(charge);
        }
        result
    }

    /// The backend's own store, as configured now.
    pub(crate) fn store(&self) -> Store {
        read(&self.shared.store).clone()
    }

    /// Each tenant's quota usage: name, bytes, objects, requests refused for a quota.
    fn tenant_usage(&self) -> Vec<(String, u64, u64, u64)> {
        read(&self.shared.tenants)
            .all()
            .iter()
            .map(|t| {
                let (bytes, objects, refused) = t.usage();
                (t.name().to_owned(), bytes, objects, refused)
            })
            .collect()
    }

    /// VM `vm`'s session (it outlives a detach while held).
    pub(crate) fn session(&self, vm: &str) -> Result<Arc<Session>> {
        lock(&self.shared.vms)
            .get(vm)
            .map(|a| a.session.clone())
            .ok_or_else(|| Error::UnknownVm(vm.to_owned()))
    }
}

/// Reads `lock`, whatever a panicking writer left.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `lock`, whatever a panicking writer left.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The uploads an earlier run of the backend acknowledged and never finished, by VM: each
/// is logged, and reported as failed to the VM's next `FLUSH` if it attaches again.
fn lost_uploads(engine: &Arc<Engine>) -> HashMap<String, Arc<WriteBehind>> {
    let lost = engine.take_lost();
    let mut by_vm: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for (n, (id, upload)) in lost.into_iter().enumerate() {
        if n < 20 {
            log::error!(
                "vm {}: the write-behind upload of {} was acknowledged by an earlier run of the backend and lost; it is reported to the VM's next FLUSH",
                upload.vm,
                upload.key
            );
        }
        by_vm.entry(upload.vm).or_default().push((id, upload.key));
    }
    let total: usize = by_vm.values().map(Vec::len).sum();
    if total > 20 {
        log::error!(
            "{total} write-behind uploads of {} VMs were lost by an earlier run of the backend",
            by_vm.len()
        );
    }
    by_vm
        .into_iter()
        .map(|(vm, lost)| {
            let limits = &engine.limits;
            let uploads = Arc::new(WriteBehind::new(
                &vm,
                limits.write_behind_bytes,
                limits.write_behind_requests,
                engine.journal.clone(),
            ));
            uploads.adopt_lost(lost);
            (vm, uploads)
        })
        .collect()
}
