// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend: attached VMs, each served by a vhost-user daemon on its own thread, over
//! the shared engine.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::config::BackendConfig;
use crate::device::NexusDevice;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::exit_events::ExitEvents;
use crate::invoke::{Invocation, InvocationInput, Invoker, PendingInvocation};
use crate::session::{QueuedInvocation, Session, lock};
use crate::stats::{BackendStats, ProcessUsage};
use crate::tenant::{Tenants, check_key, valid_name};

/// The shared backend (cheap to clone; clones share everything).
///
/// It serves many VMs at once. [`attach`](Self::attach) creates a VM's vhost-user socket,
/// served by a `VhostUserDaemon` on its own thread; every VM's requests run on the one tokio
/// runtime given to [`new`](Self::new), with one store client and one HTTP client.
#[derive(Clone, Debug)]
pub struct Backend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    tenants: Tenants,
    runtime_dir: PathBuf,
    vms: Mutex<HashMap<String, Attached>>,
    next_attach: AtomicU64,
}

#[derive(Debug)]
struct Attached {
    id: u64,
    session: Arc<Session>,
    server: VhostServer,
}

impl Backend {
    /// Opens the store, builds the shared clients and prepares the runtime directory.
    /// Requests run on `runtime`.
    pub fn new(config: BackendConfig, runtime: Handle) -> Result<Self> {
        let tenants = Tenants::from_specs(&config.tenants, &config.store.url)?;
        std::fs::create_dir_all(&config.runtime_dir).map_err(|source| Error::RuntimeDir {
            path: config.runtime_dir.clone(),
            source,
        })?;
        if config.runtime_dir.to_str().is_none() {
            return Err(Error::NonUtf8Path(config.runtime_dir));
        }
        let engine = Arc::new(Engine::new(&config, runtime)?);
        log::info!(
            "backend ready: store {:?}, tenants {:?}, runtime dir {}",
            config.store.url,
            tenants.names(),
            config.runtime_dir.display()
        );
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                tenants,
                runtime_dir: config.runtime_dir,
                vms: Mutex::new(HashMap::new()),
                next_attach: AtomicU64::new(1),
            }),
        })
    }

    /// Where per-VM sockets are created.
    pub fn runtime_dir(&self) -> &Path {
        &self.shared.runtime_dir
    }

    /// The VMs attached now, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut vms: Vec<String> = lock(&self.shared.vms).keys().cloned().collect();
        vms.sort_unstable();
        vms
    }

    /// Attaches VM `vm` to tenant `tenant`: creates its vhost-user socket and starts serving
    /// it. Returns the socket's path, for the VMM to connect to as the vhost-user frontend.
    pub fn attach(&self, vm: &str, tenant: &str) -> Result<PathBuf> {
        self.attach_tracked(vm, tenant).map(|(path, _)| path)
    }

    /// [`attach`](Self::attach), also returning the attachment's id (for
    /// [`detach_if`](Self::detach_if)).
    pub(crate) fn attach_tracked(&self, vm: &str, tenant: &str) -> Result<(PathBuf, u64)> {
        if !valid_name(vm) || vm.starts_with('.') {
            return Err(Error::InvalidVmId(vm.to_owned()));
        }
        let tenant = self.shared.tenants.get(tenant)?;
        let mut vms = lock(&self.shared.vms);
        if vms.contains_key(vm) {
            return Err(Error::VmAlreadyAttached(vm.to_owned()));
        }
        let path = self.shared.runtime_dir.join(format!("{vm}.sock"));
        let session = Arc::new(Session::new(vm, tenant, self.shared.engine.clone()));
        let server = VhostServer::start(session.clone(), &path)?;
        let id = self.shared.next_attach.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "vm {vm} attached to tenant {} at {}",
            session.tenant.name(),
            path.display()
        );
        vms.insert(
            vm.to_owned(),
            Attached {
                id,
                session,
                server,
            },
        );
        Ok((path, id))
    }

    /// Starts prefetching object `key` for VM `vm`: a following GET of it (or an invocation
    /// whose input it is) is served from the VM's prefetch cache. A wrong hint costs only the
    /// fetch; an object larger than the cache is not prefetched.
    pub fn hint(&self, vm: &str, key: &str) -> Result<()> {
        let session = self.session(vm)?;
        check_key(key).map_err(|reason| Error::InvalidKey {
            key: key.to_owned(),
            reason,
        })?;
        if !session.tenant.allows(key) {
            return Err(Error::KeyNotPermitted {
                key: key.to_owned(),
                tenant: session.tenant.name().to_owned(),
            });
        }
        prefetch(&session, key);
        Ok(())
    }

    /// Detaches VM `vm`: closes its vhost-user connection, removes its socket, fails its
    /// pending invocations. Its acknowledged write-behind uploads still complete.
    pub fn detach(&self, vm: &str) -> Result<()> {
        let attached = lock(&self.shared.vms)
            .remove(vm)
            .ok_or_else(|| Error::UnknownVm(vm.to_owned()))?;
        Self::shut(vm, attached);
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
            Self::shut(vm, attached);
        }
    }

    fn shut(vm: &str, attached: Attached) {
        attached.session.detach();
        attached.server.stop();
        log::info!("vm {vm} detached");
    }

    /// Detaches every VM.
    pub fn detach_all(&self) {
        let vms: Vec<(String, Attached)> = lock(&self.shared.vms).drain().collect();
        for (vm, attached) in vms {
            Self::shut(&vm, attached);
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
        }
        .to_vec()
        .map_err(|e| Error::InputUnavailable {
            key: String::new(),
            reason: format!("bad invocation context: {e}"),
        })?;
        if let InvocationInput::Object(key) = &input {
            self.hint(vm, key)?;
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
        check_key(key).map_err(|reason| {
            Error::InvalidKey {
                key: key.to_owned(),
                reason,
            }
            .to_string()
        })?;
        if !session.tenant.allows(key) {
            return Err(Error::KeyNotPermitted {
                key: key.to_owned(),
                tenant: session.tenant.name().to_owned(),
            }
            .to_string());
        }
        session.prefetch.invalidate(key);
        let engine = &session.engine;
        engine
            .store
            .put(key, crate::store::PutSource::Owned(bytes), &engine.staging)
            .await
            .map_err(|e| format!("Storing the output at `{key}` failed: {e}"))
    }

    /// VM `vm`'s session (it outlives a detach while held).
    pub(crate) fn session(&self, vm: &str) -> Result<Arc<Session>> {
        lock(&self.shared.vms)
            .get(vm)
            .map(|a| a.session.clone())
            .ok_or_else(|| Error::UnknownVm(vm.to_owned()))
    }
}

/// Runs a prefetch of `key` for `session`, in order with the VM's requests on that key.
fn prefetch(session: &Arc<Session>, key: &str) {
    let Some(slot) = session.prefetch.begin(key) else {
        return;
    };
    let mut turn = session.take_turn(key);
    let session = session.clone();
    let key = key.to_owned();
    session.engine.runtime.clone().spawn(async move {
        turn.ready().await;
        let limit = session.prefetch.limit();
        match session.engine.store.fetch(&key, limit).await {
            Ok(bytes) => {
                log::debug!(
                    "vm {}: prefetched {key} ({} bytes)",
                    session.vm,
                    bytes.len()
                );
                session.prefetch.complete(slot, Some(bytes));
            }
            Err(e) => {
                log::info!("vm {}: prefetch of {key} failed: {e}", session.vm);
                session.prefetch.complete(slot, None);
            }
        }
        drop(turn);
    });
}

/// One VM's vhost-user socket and the thread serving it: one frontend connection at a time,
/// accepting a new one when a connection ends (a device reset reconnects).
#[derive(Debug)]
struct VhostServer {
    path: PathBuf,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

/// Tells a VM's vhost-user thread to stop, and lets the stopper end its connection.
#[derive(Default)]
struct StopSignal {
    stopping: AtomicBool,
    connection: Mutex<Option<ShutdownHandle>>,
    /// The listening socket's descriptor (owned by the serving thread until it is joined).
    listener: std::sync::atomic::AtomicI32,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl VhostServer {
    fn start(session: Arc<Session>, path: &Path) -> Result<Self> {
        let mut listener = Listener::new(path, true).map_err(|source| Error::VhostSocket {
            path: path.to_owned(),
            source,
        })?;
        let stop = Arc::new(StopSignal::default());
        stop.listener
            .store(std::os::fd::AsRawFd::as_raw_fd(&listener), Ordering::SeqCst);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", session.vm))
            .spawn(move || serve(&session, &mut listener, &thread_stop))
            .map_err(Error::SpawnThread)?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the connection (or the wait for one) and joins the thread; the socket is removed.
    fn stop(mut self) {
        {
            let connection = lock(&self.stop.connection);
            self.stop.stopping.store(true, Ordering::SeqCst);
            match connection.as_ref() {
                Some(handle) => handle.shutdown(),
                // Waiting in accept: wake it with a connection of our own, or, if the socket
                // file is gone (removed from under us), by shutting the listening socket.
                None => {
                    if UnixStream::connect(&self.path).is_err() {
                        shut_listener(self.stop.listener.load(Ordering::SeqCst));
                    }
                }
            }
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the vhost-user thread of {} panicked", self.path.display());
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A streak of failed attempts and the pause before the next: 100 ms, doubling up to 5 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Failures in the streak so far.
    pub(crate) count: u32,
}

impl Backoff {
    /// Counts one more failure and returns how long to wait before trying again.
    pub(crate) fn next(&mut self) -> Duration {
        self.count = self.count.saturating_add(1);
        let exponent = (self.count - 1).min(6);
        Duration::from_millis(100 << exponent).min(Duration::from_secs(5))
    }
}

/// Makes a thread blocked in `accept` on listening socket `fd` return (Linux: `EINVAL`).
fn shut_listener(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) touches no memory of ours; `fd` is the listener that the serving
    // thread owns and keeps open until `VhostServer::stop` has joined it, which happens after
    // this call, so it is still that socket.
    if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } != 0 {
        log::warn!(
            "cannot shut the vhost-user listener: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Closes a daemon's exit events when dropped (after the daemon).
struct CloseExitEvents(Arc<ExitEvents>);

impl Drop for CloseExitEvents {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn serve(session: &Arc<Session>, listener: &mut Listener, stop: &StopSignal) {
    let mut failures = Backoff::default();
    while !stop.stopping.load(Ordering::SeqCst) {
        // Declared before the daemon, so dropped after it: see `ExitEvents`.
        let exits = CloseExitEvents(Arc::new(ExitEvents::default()));
        let device = NexusDevice::new(session.clone(), exits.0.clone());
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new(format!("nexus-{}", session.vm), device, memory)
        {
            Ok(daemon) => daemon,
            Err(e) => {
                log::error!(
                    "vm {}: cannot create the vhost-user daemon: {e}",
                    session.vm
                );
                return;
            }
        };
        if let Err(e) = daemon.start(listener) {
            if stop.stopping.load(Ordering::SeqCst) {
                break;
            }
            // Out of descriptors, accept fails at once and again while the connection waits
            // in the backlog: back off, and say so once per streak, not once per attempt.
            let pause = failures.next();
            if failures.count == 1 {
                log::warn!("vm {}: vhost-user connection failed: {e}", session.vm);
            }
            std::thread::sleep(pause);
            continue;
        }
        if failures.count > 1 {
            log::info!(
                "vm {}: vhost-user connection accepted after {} failed attempts",
                session.vm,
                failures.count
            );
        }
        failures = Backoff::default();
        {
            let mut connection = lock(&stop.connection);
            *connection = daemon.shutdown_handle();
            if stop.stopping.load(Ordering::SeqCst) {
                daemon.request_shutdown();
            }
        }
        log::info!("vm {}: vhost-user frontend connected", session.vm);
        let result = daemon.wait();
        *lock(&stop.connection) = None;
        match result {
            Ok(()) => log::info!("vm {}: vhost-user frontend disconnected", session.vm),
            Err(e) => log::info!("vm {}: vhost-user connection ended: {e}", session.vm),
        }
        // Whatever was in flight belongs to the old connection's queue.
        session.stop_queue();
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.count, 9);
    }
}
