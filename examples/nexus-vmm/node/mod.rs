//! The node daemon: a function registry, a warm pool of parked VMs per function, cold
//! starts from each function's snapshot with the input prefetched during the restore, a
//! wall-clock limit per invocation, and metrics. [`http`] puts it behind an HTTP API.
//!
//! # Threads
//!
//! The control plane is async and runs on a small multi-threaded tokio runtime: the HTTP
//! API, the [`scheduler`] (an invocation that finds no VM waits without a thread), the
//! [`backend`] client (one connection carries every request in flight), the idle reaper.
//! An invocation on a warm VM is a handful of awaits and no thread hand-off. Each VM's vCPU
//! runs on a thread of its own and blocks only in `KVM_RUN` (and, parked, in the guest's
//! `WAIT`). Work that blocks — restoring a VM, taking a snapshot, joining a stopped vCPU's
//! thread — goes to the runtime's blocking pool.
//!
//! The shared backend is reached only through its control socket, so it may be a separate
//! process or embedded.
//!
//! # Two kinds of functions
//!
//! A nexus-io function (`io = "nexus"`, [`vm`]) reaches storage through the shared backend.
//! A net function (`io = "net"`, [`netvm`]) carries its own TCP/IP and S3 client and is
//! invoked over HTTP: the daemon gives it a tap in a network namespace of its own
//! ([`netplane`]), built at start if any function is a net function and removed at shutdown.
//! The scheduler, warm pools, caps, keep-alive and metrics are the same for both.

pub mod auth;
pub mod backend;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod netlink;
pub mod netplane;
pub mod netvm;
pub mod panics;
pub mod publish;
pub mod registry;
pub mod scheduler;
pub mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::pool::{PoolConfig, VcpuPool};
use nexus_kvm::serial::Console;
use nexus_ring::control::BackendStats;
use nexus_snapshot::{Snapshot, SnapshotFiles};
use serde::Serialize;

use backend::BackendClient;
use metrics::{Gauges, Metrics, Observation, Start};
use netplane::{NetPlane, Subnet};
use netvm::{NetFailure, S3Settings};
use registry::FunctionSpec;
use scheduler::{Caps, Grant, Refusal, Scheduler, Victim};
pub use scheduler::{Pick, VmCounts};
use vm::{Call, CallDone, CallFailure, FunctionVm, FunctionVmConfig, GuestLog, Input};

/// The node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The shared backend's control socket.
    pub backend: PathBuf,
    /// Where snapshots are kept (`<dir>/<function>/`).
    pub snapshot_dir: PathBuf,
    /// VMs on the node at once, all functions.
    pub max_vms: usize,
    /// Invocations that may wait for a VM; more are refused (429).
    pub max_queue: usize,
    /// How long an invocation may wait for a VM (then 503).
    pub queue_timeout: Duration,
    /// Which parked VM takes an invocation.
    pub pick: Pick,
    /// The WAIT timeout of a parked VM (each timeout costs the guest one exit).
    pub wait_timeout: Duration,
    /// How the vCPUs of nexus-io VMs run.
    pub vcpu_threads: VcpuThreads,
    /// How long a pool worker beyond the spares stays idle before it ends
    /// ([`PoolConfig::idle_retire`]).
    pub vcpu_idle_retire: Duration,
    /// How net functions are run.
    pub net: NetSettings,
    /// Snapshots shared with other nodes through the backend (none: every node takes its
    /// own).
    pub publish: Option<publish::PublishConfig>,
}

/// How the vCPUs of nexus-io VMs run (net VMs' vCPUs always have threads of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VcpuThreads {
    /// On a pool of workers: a parked VM is an entry in the pool's epoll set, not a blocked
    /// thread ([`nexus_kvm::pool`]).
    #[default]
    Pool,
    /// Each on a thread of its own, which blocks in the device's WAIT while the VM is parked.
    Own,
}

/// How the node runs net functions (`io = "net"`).
#[derive(Clone, Debug)]
pub struct NetSettings {
    /// The VMs' subnet (see [`netplane`]).
    pub subnet: Subnet,
    /// The object store the guests reach (in their boot arguments).
    pub s3: S3Settings,
    /// The longest WAIT of a net VM's device. The guest's driver asks for a shorter one
    /// whenever its stack has a timer due (a retransmission), so this bounds only the sleep
    /// of an idle guest.
    pub wait_timeout: Duration,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            subnet: Subnet::DEFAULT,
            s3: S3Settings::default(),
            wait_timeout: Duration::from_secs(60),
        }
    }
}

/// The network of a node's net functions ([`net_plane`]): none without any; the reason,
/// logged, if it could not be built (net functions are then answered 503, others served).
pub type NetPlaneStart = Option<Result<Arc<NetPlane>, String>>;

/// Builds the network of net functions if one of `functions` is one. It starts `ip`
/// processes and enters a namespace: call it before the node's seccomp filter is installed
/// on the calling thread.
pub fn net_plane(functions: &BTreeMap<String, FunctionSpec>, net: &NetSettings) -> NetPlaneStart {
    functions.values().any(FunctionSpec::is_net).then(|| {
        NetPlane::create(net.subnet).map_err(|e| {
            let why = format!("{:#}", anyhow::Error::from(e));
            log::warn!("net functions cannot run: {why}");
            why
        })
    })
}

/// Why the node did not run an invocation; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such function (404).
    #[error("no function is named `{0}`")]
    NotFound(String),
    /// An object the invocation names does not exist: its input object (404).
    #[error("{0}")]
    ObjectNotFound(String),
    /// The request is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// Too many invocations are waiting already (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// No VM could be had in time, or none could be started (503).
    #[error("{0}")]
    Unavailable(String),
    /// The function ran past its timeout; its VM was stopped (504).
    #[error("the function ran longer than its timeout of {} ms; its VM was stopped", .0.as_millis())]
    Timeout(Duration),
    /// The function's VM crashed during the invocation (502).
    #[error("the function's VM failed during the invocation: {0}")]
    Crashed(String),
    /// The backend failed the invocation (502): its store failed, say.
    #[error("the backend could not run the invocation: {0}")]
    Backend(String),
    /// A net function's object store failed (502).
    #[error("{0}")]
    Store(String),
    /// The node panicked while handling the invocation (500); the VM involved, if any, was
    /// discarded.
    #[error("the node panicked while handling the invocation (its VM was discarded): {0}")]
    Panicked(String),
}

impl NodeError {
    /// The error for the backend's refusal of an invocation, by its code: the caller's
    /// mistakes (an input object that does not exist, a bad key) are told from the backend's
    /// failures.
    fn from_backend(why: &backend::BackendError) -> Self {
        use nexus_ring::control::ErrorCode;
        match why.code() {
            Some(ErrorCode::NotFound) => NodeError::ObjectNotFound(why.to_string()),
            Some(ErrorCode::Invalid) => NodeError::BadRequest(why.to_string()),
            Some(ErrorCode::Throttled) => NodeError::TooManyRequests(why.to_string()),
            _ => NodeError::Backend(why.to_string()),
        }
    }
}

/// One invocation request.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The input.
    pub input: Input,
    /// Where to store the result.
    pub output_key: Option<String>,
    /// The caller's request id (one is made up if empty).
    pub request_id: String,
}

/// Where an invocation's time went, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Waiting for a VM (queue), excluding the snapshot and the restore.
    pub queue: f64,
    /// Taking (or opening, if an earlier run left it) the function's snapshot: the first
    /// cold start of the function in this daemon only.
    pub snapshot: f64,
    /// Restoring the VM (cold starts; 0 when warm).
    pub restore: f64,
    /// From the invoke to the guest's `NEXT` being answered.
    pub next_served: f64,
    /// The function's run, `NEXT` answered to `COMPLETE`.
    pub function: f64,
    /// `COMPLETE` to its write-behind uploads being durable.
    pub durable: f64,
    /// The backend storing the result at `output_key` (0 when the function's runtime stored
    /// it itself, write-behind, as the `nexus-guest` function SDK does).
    pub output_store: f64,
    /// The whole invocation in the node.
    pub total: f64,
}

/// A finished invocation (the function may still have reported an error).
#[derive(Debug, Clone, Serialize)]
pub struct InvocationResult {
    /// The function.
    pub function: String,
    /// The request id.
    pub request_id: String,
    /// `cold` or `warm`.
    pub start: &'static str,
    /// The VM that ran it.
    pub vm: String,
    /// `success` or `error` (the function's own verdict).
    pub outcome: String,
    /// The result (or the error document), unless it was stored at `output_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `utf8` or `base64`.
    pub output_encoding: String,
    /// The result's length in bytes.
    pub output_len: u64,
    /// Where the result was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// The result's (or error document's) bytes as the function wrote them, unless it was
    /// stored at `output_key` (for APIs that answer with raw bytes).
    #[serde(skip)]
    pub raw_output: Bytes,
    /// KVM exits of the vCPU during the invocation.
    pub vm_exits: u64,
    /// Payload bytes written into the VM's window (input, GETs).
    pub bytes_in: u64,
    /// Payload bytes read out of the window (result, PUTs).
    pub bytes_out: u64,
    /// Ring requests the backend served for it.
    pub requests: u64,
    /// Where the time went.
    pub timings_ms: Timings,
}

/// A function's figures for `GET /v1/functions`.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    /// The name.
    pub name: String,
    /// The micro-guest.
    pub guest: String,
    /// How it reaches storage.
    pub io: registry::Io,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// I/O window, MiB (none for a net function).
    pub window_mib: u64,
    /// The backend tenant.
    pub tenant: String,
    /// Restore mode of cold starts.
    pub restore: nexus_snapshot::RestoreMode,
    /// Limits.
    pub limits: registry::Limits,
    /// Whether its snapshot exists.
    pub snapshot: bool,
    /// VMs now.
    pub vms: VmCounts,
    /// Invocations so far.
    pub invocations: u64,
}

/// A registered function and its snapshot.
#[derive(Debug)]
struct Function {
    spec: FunctionSpec,
    /// Held while the snapshot is created, so that it is created once.
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The snapshot's window image, read once, for VMs reset after every invocation.
    window_image: Mutex<Option<Arc<nexus_snapshot::WindowImage>>>,
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    functions: BTreeMap<String, Function>,
    scheduler: Scheduler<FunctionVm>,
    metrics: Metrics,
    backend: BackendClient,
    /// The control connection every nexus-io VM's device shares (attach, hint, detach):
    /// one descriptor for all of them rather than one per VM.
    control: nexus_io::SharedControl,
    /// The network of net functions: absent without any; an error if it could not be built.
    net: NetPlaneStart,
    runtime: tokio::runtime::Handle,
    /// Where nexus-io VMs' vCPUs run (`VcpuThreads::Pool`).
    vcpus: Option<VcpuPool>,
    next_vm: AtomicU64,
    closing: AtomicBool,
}

/// The node (cheap to clone).
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// How long a fresh function VM may take to park in `NEXT` while its snapshot is taken.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    /// A node serving `functions` through the backend of `config`, its control plane on
    /// `runtime` (a multi-threaded runtime: blocking work waits on it from its blocking
    /// pool), its net functions on `net` ([`net_plane`]); starts the idle reaper there.
    pub fn new(
        config: NodeConfig,
        functions: BTreeMap<String, FunctionSpec>,
        net: NetPlaneStart,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self> {
        // The test-only panic hook is read once, here (a warning says it is set).
        panics::read_test_hook();
        std::fs::create_dir_all(&config.snapshot_dir).with_context(|| {
            format!(
                "Cannot create the snapshot directory {}",
                config.snapshot_dir.display()
            )
        })?;
        let scheduler = Scheduler::new(
            Caps {
                max_vms: config.max_vms,
                max_queue: config.max_queue,
                queue_timeout: config.queue_timeout,
                pick: config.pick,
            },
            functions
                .iter()
                .map(|(name, spec)| (name.clone(), spec.file.limits.max_vms, spec.keep_alive())),
        );
        let vcpus = match config.vcpu_threads {
            VcpuThreads::Pool => Some(
                VcpuPool::new(PoolConfig {
                    name: "nexus-vcpu".into(),
                    idle_retire: config.vcpu_idle_retire,
                    ..PoolConfig::default()
                })
                .context("Cannot start the vCPU pool")?,
            ),
            VcpuThreads::Own => None,
        };
        let inner = Arc::new(Inner {
            vcpus,
            backend: BackendClient::new(config.backend.clone()),
            control: nexus_io::SharedControl::new(&config.backend, Duration::from_secs(10)),
            net,
            config,
            functions: functions
                .into_iter()
                .map(|(name, spec)| {
                    (
                        name,
                        Function {
                            spec,
                            snapshot: Mutex::new(None),
                            window_image: Mutex::new(None),
                        },
                    )
                })
                .collect(),
            scheduler,
            metrics: Metrics::default(),
            runtime: runtime.clone(),
            next_vm: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        runtime.spawn(reaper(Arc::downgrade(&inner)));
        Ok(Node { inner })
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The registered functions' names.
    pub fn function_names(&self) -> Vec<String> {
        self.inner.functions.keys().cloned().collect()
    }

    /// Whether a function is named `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.inner.functions.contains_key(name)
    }

    fn function(&self, name: &str) -> Result<&Function, NodeError> {
        self.inner
            .functions
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_owned()))
    }

    /// One function's figures.
    pub fn function_info(&self, name: &str) -> Result<FunctionInfo, NodeError> {
        let f = self.function(name)?;
        let file = &f.spec.file;
        Ok(FunctionInfo {
            name: name.to_owned(),
            guest: file.guest.clone(),
            io: file.io,
            memory_mib: file.memory_mib,
            window_mib: f.spec.window_mib(),
            tenant: file.tenant.clone(),
            restore: file.restore,
            limits: file.limits.clone(),
            // Held while the snapshot is taken (a guest booting): not yet, rather than
            // blocking the control plane behind it.
            snapshot: match f.snapshot.try_lock() {
                Ok(snapshot) => snapshot.is_some(),
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().is_some(),
                Err(std::sync::TryLockError::WouldBlock) => false,
            },
            vms: self.inner.scheduler.counts(name),
            invocations: self.inner.metrics.invocations_of(name),
        })
    }

    /// VMs on the node now.
    pub fn vm_total(&self) -> usize {
        self.inner.scheduler.total()
    }

    /// The gauges of a scrape (asks the backend for its figures).
    pub async fn gauges(&self) -> Gauges {
        let (counts, queue_depth) = self.inner.scheduler.all_counts();
        let vms = counts
            .into_iter()
            .map(|(f, c)| (f, c.idle, c.busy, c.starting))
            .collect();
        let (vmm_rss, vmm_cpu) = metrics::self_usage();
        let backend = self.backend_stats().await.ok();
        Gauges {
            vms,
            queue_depth,
            vmm_rss,
            vmm_cpu,
            backend,
            vcpu_pool: self.inner.vcpus.as_ref().map(VcpuPool::stats),
        }
    }

    /// The backend's figures (also a health check of the backend).
    pub async fn backend_stats(&self) -> Result<BackendStats, backend::BackendError> {
        self.inner.backend.stats().await
    }

    /// Creates the snapshot of function `name` now if it has none. Blocks (it boots the
    /// function): call it from a thread that is not one of the runtime's workers.
    pub fn prepare(&self, name: &str) -> Result<Arc<Snapshot>> {
        let f = self.function(name)?;
        self.snapshot_of(f)
    }

    /// [`prepare`](Self::prepare) on the runtime's blocking pool.
    pub async fn prepare_async(&self, name: &str) -> Result<Arc<Snapshot>> {
        let node = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || node.prepare(&name))
            .await
            .context("the snapshot task failed")?
    }

    fn snapshot_of(&self, f: &Function) -> Result<Arc<Snapshot>> {
        let mut slot = lock(&f.snapshot);
        if let Some(snapshot) = &*slot {
            return Ok(snapshot.clone());
        }
        let spec = &f.spec;
        let dir = self.inner.config.snapshot_dir.join(&spec.name);
        let elf = std::fs::read(&spec.elf)
            .with_context(|| format!("Cannot read the guest {}", spec.elf.display()))?;
        let boot = self.boot_of(spec)?;
        // A snapshot a previous run left in the state directory is reused if it was taken of
        // the same guest with the same memory layout (and still opens: it is checksummed).
        let identity = snapshot_identity(&elf, spec, &boot);
        let identity_path = dir.join(SNAPSHOT_IDENTITY);
        if std::fs::read_to_string(&identity_path).is_ok_and(|text| text == identity) {
            match Snapshot::open(&SnapshotFiles::in_dir(&dir)) {
                Ok(snapshot) => {
                    log::info!(
                        "function {}: reusing the snapshot in {}",
                        spec.name,
                        dir.display()
                    );
                    self.inner.metrics.snapshot_event(&spec.name, "reused");
                    let snapshot = Arc::new(snapshot);
                    *slot = Some(snapshot.clone());
                    return Ok(snapshot);
                }
                Err(e) => log::warn!(
                    "function {}: the snapshot in {} does not open ({e}); taking a new one",
                    spec.name,
                    dir.display()
                ),
            }
        }
        let _ = std::fs::remove_file(&identity_path);
        // A snapshot another node published, if the node shares them (never a net function's:
        // it holds the guest's credentials).
        let publisher = match (&boot, &self.inner.config.publish) {
            (Boot::Nexus, Some(config)) => {
                Some(publish::Publisher::new(config, &self.inner.backend))
            }
            _ => None,
        };
        if let Some(publisher) = &publisher {
            let metrics = &self.inner.metrics;
            if self
                .inner
                .runtime
                .block_on(publisher.fetch(&spec.name, &identity, &dir, metrics))
            {
                match Snapshot::open(&SnapshotFiles::in_dir(&dir)) {
                    Ok(snapshot) => {
                        let _ = std::fs::write(&identity_path, &identity);
                        let snapshot = Arc::new(snapshot);
                        *slot = Some(snapshot.clone());
                        return Ok(snapshot);
                    }
                    Err(e) => log::warn!(
                        "function {}: the fetched snapshot does not open ({e}); taking one",
                        spec.name
                    ),
                }
            }
        }
        let vm_id = self.vm_id(&spec.name, "snapshot");
        let taken = match &boot {
            Boot::Nexus => {
                let backend = &self.inner.backend;
                let parked = |vm: &str, timeout: Duration| -> Result<()> {
                    self.inner
                        .runtime
                        .block_on(backend.parked(vm, timeout))
                        .map_err(anyhow::Error::from)
                };
                vm::take_snapshot(
                    &elf,
                    &self.vm_config(spec),
                    &vm_id,
                    &dir,
                    Console::new(GuestLog::new(&vm_id)),
                    PARK_TIMEOUT,
                    &parked,
                )
            }
            Boot::Net { plane, args } => netvm::take_snapshot(
                &elf,
                self.memory_config(spec),
                args,
                plane,
                &vm_id,
                &dir,
                PARK_TIMEOUT,
            ),
        }
        .with_context(|| format!("Cannot snapshot function `{}`", spec.name))?;
        self.inner.metrics.vm_started(&spec.name, "boot");
        self.inner.metrics.snapshot_event(&spec.name, "taken");
        log::info!(
            "function {}: snapshot taken in {} (parked after {:.1} ms, {} pages, saved in {:.1} ms)",
            spec.name,
            dir.display(),
            taken.parked_after.as_secs_f64() * 1e3,
            taken.report.nonzero_pages,
            taken.report.total.as_secs_f64() * 1e3
        );
        let snapshot = Arc::new(Snapshot::open(&SnapshotFiles::in_dir(&dir))?);
        if let Err(e) = std::fs::write(&identity_path, &identity) {
            log::warn!(
                "function {}: cannot record the snapshot's identity: {e}",
                spec.name
            );
        }
        if let Some(publisher) = publisher {
            let (node, name) = (self.clone(), spec.name.clone());
            let publishing = self.inner.runtime.spawn({
                let name = name.clone();
                async move {
                    let metrics = &node.inner.metrics;
                    publisher.publish(&name, &identity, &dir, metrics).await;
                }
            });
            self.inner.runtime.spawn(async move {
                match publishing.await {
                    Err(e) if e.is_panic() => {
                        log::error!(
                            "function {name}: publishing its snapshot panicked ({}); it is not \
                             published",
                            panics::message(&*e.into_panic())
                        );
                        panics::counted(panics::Site::Background);
                    }
                    _ => {}
                }
            });
        }
        *slot = Some(snapshot.clone());
        Ok(snapshot)
    }

    fn reload_snapshot(&self, f: &Function) -> Result<()> {
        let dir = self.inner.config.snapshot_dir.join(&f.spec.name);
        let snapshot = Arc::new(Snapshot::open(&SnapshotFiles::in_dir(&dir))?);
        *lock(&f.snapshot) = Some(snapshot);
        Ok(())
    }

    fn vm_config(&self, spec: &FunctionSpec) -> FunctionVmConfig {
        FunctionVmConfig {
            backend: self.inner.config.backend.clone(),
            tenant: spec.file.tenant.clone(),
            memory: self.memory_config(spec),
        }
    }

    fn memory_config(&self, spec: &FunctionSpec) -> MemoryConfig {
        MemoryConfig {
            ram_size: spec.file.memory_mib << 20,
            window_size: spec.window_mib() << 20,
        }
    }

    /// The node's network, for a net function.
    fn plane(&self) -> Result<&Arc<NetPlane>, NodeError> {
        match &self.inner.net {
            Some(Ok(plane)) => Ok(plane),
            Some(Err(why)) => Err(NodeError::Unavailable(format!(
                "net functions cannot run on this node: {why}"
            ))),
            None => Err(NodeError::Unavailable(
                "net functions cannot run: the node built no network".into(),
            )),
        }
    }

    /// How a function's snapshot is booted.
    fn boot_of(&self, spec: &FunctionSpec) -> Result<Boot> {
        if !spec.is_net() {
            return Ok(Boot::Nexus);
        }
        let plane = Arc::clone(self.plane()?);
        let args = netvm::boot_args(
            &plane.subnet(),
            &self.inner.config.net.s3,
            spec.http_port(),
            netvm::tsc_khz()?,
        );
        Ok(Boot::Net { plane, args })
    }

    /// Stops the network of net functions (its taps go as their VMs stop).
    pub fn close_network(&self) {
        if let Some(Ok(plane)) = &self.inner.net {
            plane.teardown();
        }
    }

    fn vm_id(&self, function: &str, kind: &str) -> String {
        let n = self.inner.next_vm.fetch_add(1, Ordering::Relaxed);
        format!("{function}-{kind}-{}-{n}", std::process::id())
    }

    /// Restores a new VM of `name` (the caller reserved its place with the scheduler), on
    /// the runtime's blocking pool.
    async fn start_vm(&self, name: &str, hint: Option<String>) -> Result<FunctionVm> {
        let node = self.clone();
        let name = name.to_owned();
        let started =
            tokio::task::spawn_blocking(move || node.start_vm_blocking(&name, hint.as_deref()))
                .await;
        match started {
            Ok(started) => started,
            Err(e) if e.is_panic() => {
                // What the restore had built was dropped as the panic unwound: no VM to park.
                let message = panics::message(&*e.into_panic());
                panics::counted(panics::Site::Invocation);
                bail!("the node panicked while starting a VM: {message}")
            }
            Err(e) => Err(e).context("the restore task failed"),
        }
    }

    fn start_vm_blocking(&self, name: &str, hint: Option<&str>) -> Result<FunctionVm> {
        let f = self.function(name)?;
        let spec = &f.spec;
        let t0 = Instant::now();
        let created = lock(&f.snapshot).is_none();
        let snapshot = self.snapshot_of(f)?;
        let snapshot_time = if created {
            t0.elapsed()
        } else {
            Duration::ZERO
        };
        let id = self.vm_id(&spec.name, "vm");
        let console = Console::new(GuestLog::new(&id));
        let restored = if spec.is_net() {
            netvm::restore(
                &snapshot,
                spec.file.restore,
                self.plane()?,
                spec.http_port(),
                console,
                self.inner.config.net.wait_timeout,
            )
        } else {
            vm::restore(
                &snapshot,
                spec.file.restore,
                &vm::RestoreTarget {
                    backend: &self.inner.config.backend,
                    tenant: &spec.file.tenant,
                    vm_id: &id,
                    hint,
                    shared: Some(&self.inner.control),
                },
                console,
                Some(self.inner.config.wait_timeout),
            )
        }
        .with_context(|| format!("Cannot restore a VM of `{}`", spec.name))?;
        if let Some(net) = &restored.net {
            self.inner.metrics.tap_setup(net.tap_setup);
            log::debug!(
                "vm {id}: address {}, tap set up in {:.3} ms",
                net.lease.address(),
                net.tap_setup.as_secs_f64() * 1e3
            );
        }
        log::debug!(
            "vm {id}: restored in {:.2} ms ({:?}, hint {:.2} ms)",
            restored.total.as_secs_f64() * 1e3,
            restored.stats.mode,
            restored.hinted.as_secs_f64() * 1e3
        );
        let reset = if spec.resets() {
            Some(vm::ResetSource {
                window: self.window_image(f, &snapshot)?,
                snapshot: snapshot.clone(),
            })
        } else {
            None
        };
        // A net VM's device blocks in its own WAIT: it keeps a thread of its own.
        let pool = if spec.is_net() {
            None
        } else {
            self.inner.vcpus.as_ref()
        };
        let mut vm = FunctionVm::start_with(&id, restored, reset, pool)?;
        vm.snapshot_time = snapshot_time;
        self.inner.metrics.vm_started(&spec.name, "restore");
        Ok(vm)
    }

    /// The window image of `f`'s snapshot, read on first use.
    fn window_image(
        &self,
        f: &Function,
        snapshot: &Snapshot,
    ) -> Result<Arc<nexus_snapshot::WindowImage>> {
        let mut slot = lock(&f.window_image);
        if let Some(image) = &*slot {
            return Ok(image.clone());
        }
        let image = Arc::new(nexus_snapshot::WindowImage::read(snapshot)?);
        log::info!(
            "function {}: window image read for resets ({} non-zero pages)",
            f.spec.name,
            image.nonzero_pages()
        );
        *slot = Some(image.clone());
        Ok(image)
    }

    /// Resets a VM of a function with `isolation = "reset"` to its snapshot (a VM of any
    /// other function comes back as it is). Returns it with whether it is fit for use.
    async fn reset_vm(&self, mut vm: FunctionVm) -> (FunctionVm, bool) {
        if !vm.resets() {
            return (vm, true);
        }
        let t0 = Instant::now();
        // The backend's reset (queued invocations, prefetch cache) runs while the VM's own
        // reset does; the queue starts again only once both are done.
        let (backend_done, backend_result) = std::sync::mpsc::channel::<Result<(), String>>();
        let id = vm.id.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            // A panic here fails this VM only: it is handed back and stopped, never parked
            // with its state half reset (nothing but its stop looks at it again).
            let hooked = panics::hooks_vm_at(panics::Site::Reset, &vm.id);
            let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if hooked {
                    panic!(
                        "test hook NEXUS_TEST_PANIC: a panic in the reset of vm {}",
                        vm.id
                    );
                }
                vm.reset(ram_reset(), || match backend_result.recv() {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => bail!("the backend's reset failed: {e}"),
                    Err(_) => bail!("the backend's reset was not answered"),
                })
            }))
            .map_err(|payload| panics::message(&*payload));
            let _ = tx.send((vm, report));
        });
        let backend = self.inner.backend.reset(&id).await;
        let backend_time = t0.elapsed();
        let _ = backend_done.send(backend.map_err(|e| e.to_string()));
        let (vm, report) = rx.await.expect("the reset task hands the VM back");
        match report {
            Ok(Ok(r)) => {
                let total = t0.elapsed();
                self.inner.metrics.vm_reset(total);
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                log::debug!(
                    "vm {}: reset in {:.0} us: backend {:.0}, vcpu stop {:.0}, queue stop {:.0}, \
                     ram {:.0} ({} of {} pages dropped, {} calls), window {:.0} ({} of {} \
                     resident pages rewritten), vcpu state {:.0}, backend wait {:.0}, queue \
                     start {:.0}, vcpu start {:.0}",
                    vm.id,
                    us(total),
                    us(backend_time),
                    us(r.vcpu_stop),
                    us(r.queue_stop),
                    us(r.ram),
                    r.ram_pages.dropped_pages,
                    r.ram_pages.scanned_pages,
                    r.ram_pages.calls,
                    us(r.window),
                    r.window_pages.rewritten_pages,
                    r.window_pages.resident_pages,
                    us(r.vcpu_state),
                    us(r.waited),
                    us(r.queue_start),
                    us(r.vcpu_start),
                );
                (vm, true)
            }
            Ok(Err(e)) => {
                log::warn!("vm {}: the reset failed: {e:#}; stopping the VM", vm.id);
                (vm, false)
            }
            Err(message) => {
                panics::counted(panics::Site::Reset);
                log::error!(
                    "vm {}: the node panicked while resetting it: {message}; stopping the VM",
                    vm.id
                );
                (vm, false)
            }
        }
    }

    /// Stops VMs the scheduler handed back, in the background.
    fn stop_vms(&self, victims: Vec<Victim<FunctionVm>>, detach: bool) {
        if !victims.is_empty() {
            let node = self.clone();
            self.inner
                .runtime
                .spawn(async move { node.retire(victims, detach).await });
        }
    }

    /// Stops VMs the scheduler handed back, off the runtime's workers (joining a vCPU
    /// thread blocks); `detach` first drops their backend sessions (failing an invocation
    /// still pending on one).
    async fn retire(&self, victims: Vec<Victim<FunctionVm>>, detach: bool) {
        if detach {
            for victim in victims.iter().filter(|v| !v.vm.is_net()) {
                if let Err(e) = self.inner.backend.detach(&victim.vm.id).await {
                    log::debug!("vm {}: detach: {e}", victim.vm.id);
                }
            }
        }
        let stopped = tokio::task::spawn_blocking(move || {
            let mut stopped = Vec::with_capacity(victims.len());
            for Victim {
                function,
                vm,
                reason,
            } in victims
            {
                log::debug!("vm {}: stopping it ({reason})", vm.id);
                vm.stop();
                stopped.push((function, reason));
            }
            stopped
        })
        .await;
        let stopped = stopped.unwrap_or_else(|e| {
            if e.is_panic() {
                log::error!(
                    "stopping retired VMs panicked ({}); the rest of them were dropped",
                    panics::message(&*e.into_panic())
                );
                panics::counted(panics::Site::Background);
            }
            Vec::new()
        });
        for (function, reason) in stopped {
            self.inner.metrics.vm_stopped(&function, reason);
        }
    }

    /// Gets a VM of `name` for one invocation: a parked one, else a new one if the caps
    /// allow (the scheduler evicts an idle VM of another function when only the node's cap
    /// is in the way), else waits in the queue.
    async fn acquire(
        &self,
        name: &str,
        hint: Option<&str>,
    ) -> Result<(FunctionVm, Start), NodeError> {
        let grant = self
            .inner
            .scheduler
            .acquire(name, |victim| self.stop_vms(vec![victim], false))
            .await
            .map_err(|refusal| match refusal {
                Refusal::QueueFull { .. } => NodeError::TooManyRequests(refusal.to_string()),
                Refusal::TimedOut { .. } | Refusal::Closing => {
                    NodeError::Unavailable(refusal.to_string())
                }
            })?;
        match grant {
            Grant::Warm(vm) => Ok((vm, Start::Warm)),
            Grant::Start => {
                let started = self.start_vm(name, hint.map(str::to_owned)).await;
                match started {
                    Ok(vm) => {
                        let vm = self.inner.scheduler.started(name, Some(vm));
                        Ok((vm.expect("a started VM comes back"), Start::Cold))
                    }
                    Err(e) => {
                        self.inner.scheduler.started(name, None);
                        Err(NodeError::Unavailable(format!("{e:#}")))
                    }
                }
            }
        }
    }

    /// Returns a VM after an invocation: parked again if it is healthy, else stopped (its
    /// backend session dropped first) before this resolves.
    /// A VM reset after every invocation is reset first (and stopped if that fails).
    async fn release(&self, function: &str, vm: FunctionVm, healthy: bool, reason: &'static str) {
        let (vm, healthy, reason) = if healthy {
            let (vm, fit) = self.reset_vm(vm).await;
            (vm, fit, if fit { reason } else { "reset" })
        } else {
            (vm, false, reason)
        };
        if let Some(vm) = self.inner.scheduler.release(function, vm, healthy) {
            let reason = if healthy { "shutdown" } else { reason };
            let victim = Victim {
                function: function.to_owned(),
                vm,
                reason,
            };
            self.retire(vec![victim], true).await;
        }
    }

    /// Resets a VM marked resetting in the scheduler after its answer, and parks it again
    /// (stops it if the reset failed, or the node is closing).
    async fn release_after_reset(&self, function: &str, vm: FunctionVm) {
        let (vm, fit) = self.reset_vm(vm).await;
        if let Some(vm) = self.inner.scheduler.reset_done(function, vm, fit) {
            let victim = Victim {
                function: function.to_owned(),
                vm,
                reason: if fit { "shutdown" } else { "reset" },
            };
            self.retire(vec![victim], true).await;
        }
    }

    /// Runs one invocation of function `name`. The invocation runs to its end (or its
    /// timeout) even if the caller stops waiting for it, so that its VM is always returned.
    pub async fn invoke(
        &self,
        name: &str,
        invocation: Invocation,
    ) -> Result<InvocationResult, NodeError> {
        self.function(name)?;
        if invocation.output_key.as_deref() == Some("") {
            return Err(NodeError::BadRequest("output_key is empty".into()));
        }
        let node = self.clone();
        let name = name.to_owned();
        let name2 = name.clone();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            match node.attempt(&name, &invocation, t0).await {
                Err(Attempt::Retry(why)) => {
                    log::warn!("{why}; retrying on another VM");
                    node.attempt(&name, &invocation, t0)
                        .await
                        .map_err(|e| match e {
                            Attempt::Failed(e) => e,
                            Attempt::Retry(why) => NodeError::Backend(why),
                        })
                }
                Err(Attempt::Failed(e)) => Err(e),
                Ok(result) => Ok(result),
            }
        });
        task.await.unwrap_or_else(|e| {
            if e.is_panic() {
                // The task's VM, if it had one, was discarded as the panic unwound (`Held`).
                let message = panics::message(&*e.into_panic());
                panics::counted(panics::Site::Invocation);
                log::error!("invocation of {name2}: the node panicked: {message}");
                Err(NodeError::Panicked(message))
            } else {
                Err(NodeError::Unavailable(format!(
                    "the invocation's task failed: {e}"
                )))
            }
        })
    }

    /// One attempt at an invocation. A warm VM that turns out to have lost its backend
    /// session (the backend restarted, say) asks for a second attempt on another VM.
    async fn attempt(
        &self,
        name: &str,
        invocation: &Invocation,
        t0: Instant,
    ) -> Result<InvocationResult, Attempt> {
        let f = self.function(name)?;
        // A net function's guest fetches its input itself: no one to hint.
        let hint = match &invocation.input {
            Input::Key(key) if !f.spec.is_net() => Some(key.as_str()),
            _ => None,
        };
        let (vm, start) = self.acquire(name, hint).await?;
        // Until the call's result is in hand, a panic discards the VM (see `Held`).
        let mut held = Held {
            node: self,
            function: name,
            vm: Some(vm),
        };
        let acquired = t0.elapsed();
        let (snapshot, restore) = if start == Start::Cold {
            (held.vm().snapshot_time, held.vm().restore_time)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let request_id = if invocation.request_id.is_empty() {
            let vm = held.vm();
            format!("{}-{}", vm.id, vm.invocations + 1)
        } else {
            invocation.request_id.clone()
        };
        let call = Call {
            input: invocation.input.clone(),
            output_key: invocation.output_key.clone(),
            request_id: request_id.clone(),
            timeout: f.spec.timeout(),
            return_output: false,
        };
        let result = held.vm().call(&self.inner.backend, &call).await;
        self.inner
            .metrics
            .net_reconnects(name, held.vm().take_store_reconnects());
        let net = held.vm().is_net();
        if panics::test_hook(panics::Site::Invocation, name) {
            panic!(
                "test hook NEXUS_TEST_PANIC: a panic handling invocation {request_id} of {name}"
            );
        }
        let vm = held.take();
        let observe = |outcome: &'static str, done: Option<&CallDone>| {
            self.inner.metrics.invocation(&Observation {
                function: name,
                outcome,
                start,
                latency: t0.elapsed(),
                start_latency: acquired,
                exits: done.map_or(0, |d| d.exits),
                bytes_in: done.map_or(0, |d| d.bytes_in),
                bytes_out: done.map_or(0, |d| d.bytes_out),
                net,
            });
        };
        match result {
            Ok(done) => {
                let vm = if vm.recording && vm.invocations == 1 {
                    self.write_working_set(name, vm).await
                } else {
                    vm
                };
                let success = done.is_success();
                observe(if success { "success" } else { "error" }, Some(&done));
                let vm_id = vm.id.clone();
                if vm.resets() {
                    // The answer goes first: the VM is reset meanwhile, and parked again
                    // after. An invocation that finds no parked VM waits for it.
                    self.inner.scheduler.resetting(name);
                    let node = self.clone();
                    let name = name.to_owned();
                    tokio::spawn(async move { node.release_after_reset(&name, vm).await });
                } else {
                    self.release(name, vm, true, "").await;
                }
                let timings = &done.timings;
                let t = |us: u64| us as f64 / 1e3;
                let stored = invocation.output_key.is_some() && success;
                let raw_output = done.output.clone();
                let (output, output_encoding) = if stored {
                    (None, "none".to_owned())
                } else {
                    let (text, encoding) = output_text(done.output.clone());
                    (Some(text), encoding.to_owned())
                };
                let queue = acquired.saturating_sub(restore).saturating_sub(snapshot);
                Ok(InvocationResult {
                    function: name.to_owned(),
                    request_id,
                    start: start.as_str(),
                    vm: vm_id,
                    outcome: done.outcome.clone(),
                    output,
                    output_encoding,
                    output_len: done.output_len,
                    output_key: invocation.output_key.clone().filter(|_| stored),
                    raw_output,
                    vm_exits: done.exits,
                    bytes_in: done.bytes_in,
                    bytes_out: done.bytes_out,
                    requests: done.requests,
                    timings_ms: Timings {
                        queue: ms(queue),
                        snapshot: ms(snapshot),
                        restore: ms(restore),
                        next_served: t(timings.next_served_us),
                        function: t(timings.function_us),
                        durable: t(timings.durable_us),
                        output_store: t(timings.output_store_us),
                        total: ms(t0.elapsed()),
                    },
                })
            }
            Err(CallFailure::Timeout(limit)) => {
                log::warn!(
                    "vm {}: invocation {request_id} timed out after {limit:?}; stopping the VM",
                    vm.id
                );
                self.release(name, vm, false, "timeout").await;
                observe("timeout", None);
                Err(NodeError::Timeout(limit).into())
            }
            Err(CallFailure::Crashed(why)) => {
                log::warn!("vm {}: invocation {request_id}: {why}", vm.id);
                self.release(name, vm, false, "crash").await;
                observe("crash", None);
                Err(NodeError::Crashed(why).into())
            }
            Err(CallFailure::Net(failure)) => {
                // A refusal (an input object that does not exist, a failing store) leaves
                // the guest's server ready for the next one; a broken exchange does not.
                let keep = failure.keeps_vm();
                if !keep {
                    log::warn!("vm {}: invocation {request_id}: {failure}", vm.id);
                }
                self.release(name, vm, keep, "failed").await;
                observe("failed", None);
                Err(match failure {
                    NetFailure::BadRequest(why) => NodeError::BadRequest(why),
                    NetFailure::InputMissing(why) => NodeError::ObjectNotFound(why),
                    NetFailure::Store(why) => NodeError::Store(why),
                    NetFailure::Broken(why) => {
                        NodeError::Crashed(format!("its invocation server failed: {why}"))
                    }
                }
                .into())
            }
            Err(CallFailure::Backend(why)) => {
                // A refused invocation (an input object that does not exist, say) leaves the
                // VM parked in NEXT: keep it if the backend says so.
                let parked = self
                    .inner
                    .backend
                    .parked(&vm.id, Duration::from_millis(200))
                    .await
                    .is_ok();
                let vm_id = vm.id.clone();
                self.release(name, vm, parked, "failed").await;
                if !parked && start == Start::Warm && why.is_connection() {
                    return Err(Attempt::Retry(format!(
                        "vm {vm_id}: the backend lost it ({why})"
                    )));
                }
                observe("failed", None);
                Err(NodeError::from_backend(&why).into())
            }
        }
    }

    /// Writes the working set the VM's restore recorded (its first invocation is over) and
    /// reopens the function's snapshot with it, on the blocking pool.
    async fn write_working_set(&self, name: &str, vm: FunctionVm) -> FunctionVm {
        let node = self.clone();
        let name = name.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            node.write_working_set_blocking(&name, &vm);
            let _ = tx.send(vm);
        });
        rx.await.expect("the working-set task hands the VM back")
    }

    fn write_working_set_blocking(&self, name: &str, vm: &FunctionVm) {
        let Some(faults) = vm.faults() else { return };
        let Ok(f) = self.function(name) else { return };
        match faults.write_working_set() {
            Ok(report) => {
                log::info!(
                    "function {name}: working set recorded ({} pages) for prefetch restores",
                    report.data_pages
                );
                if let Err(e) = self.reload_snapshot(f) {
                    log::warn!("function {name}: cannot reopen the snapshot: {e:#}");
                }
            }
            Err(e) => log::warn!("function {name}: recording the working set failed: {e}"),
        }
    }

    /// Starts VMs of `name` until `count` are parked (within the caps); returns how many
    /// it started.
    pub async fn warm(&self, name: &str, count: usize) -> Result<usize, NodeError> {
        self.function(name)?;
        self.prepare_async(name)
            .await
            .map_err(|e| NodeError::Unavailable(format!("{e:#}")))?;
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4);
        let failed = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let node = self.clone();
            let name = name.to_owned();
            let failed = Arc::clone(&failed);
            tasks.spawn(async move { node.warm_some(&name, count, &failed).await });
        }
        let mut started = 0;
        let mut failure = None;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(n)) => started += n,
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => {
                    failure = failure.or(Some(NodeError::Unavailable(format!(
                        "a warming task failed: {e}"
                    ))));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(started),
        }
    }

    /// One warming worker: starts VMs while places remain and no worker failed.
    async fn warm_some(
        &self,
        name: &str,
        count: usize,
        failed: &AtomicBool,
    ) -> Result<usize, NodeError> {
        let scheduler = &self.inner.scheduler;
        let mut started = 0;
        while !failed.load(Ordering::Acquire) {
            match scheduler.reserve_warm(name, count) {
                Ok(true) => {}
                Ok(false) => break,
                Err(why) => {
                    failed.store(true, Ordering::Release);
                    return Err(NodeError::TooManyRequests(why));
                }
            }
            let vm = match self.start_vm(name, None).await {
                Ok(mut vm) => match self.ready_and_primed(name, &mut vm).await {
                    Ok(()) => Ok(vm),
                    Err(e) => {
                        let id = vm.id.clone();
                        self.stop_vms(
                            vec![Victim {
                                function: name.to_owned(),
                                vm,
                                reason: "failed",
                            }],
                            true,
                        );
                        Err(anyhow::anyhow!("vm {id} is not ready: {e:#}"))
                    }
                },
                Err(e) => Err(e),
            };
            match vm {
                Ok(vm) => {
                    scheduler.warmed(name, Some(vm));
                    started += 1;
                }
                Err(e) => {
                    scheduler.warmed(name, None);
                    failed.store(true, Ordering::Release);
                    return Err(NodeError::Unavailable(format!("{e:#}")));
                }
            }
        }
        Ok(started)
    }

    /// Waits until a VM parked ahead of demand is in `NEXT`, then runs the function's
    /// `warm_input` through it, if it has one, so that its first real invocation finds the
    /// guest's pages mapped (see the registry's documentation).
    async fn ready_and_primed(&self, name: &str, vm: &mut FunctionVm) -> Result<()> {
        vm.ready(&self.inner.backend, PARK_TIMEOUT).await?;
        let f = self.function(name)?;
        let Some(input) = &f.spec.file.warm_input else {
            return Ok(());
        };
        let call = Call {
            input: Input::Inline(Bytes::from(input.clone().into_bytes())),
            output_key: None,
            request_id: format!("{}-warm-up", vm.id),
            timeout: f.spec.timeout(),
            return_output: false,
        };
        let done = vm.call(&self.inner.backend, &call).await.map_err(|why| {
            let why = match why {
                CallFailure::Timeout(limit) => format!("it timed out after {limit:?}"),
                CallFailure::Crashed(why) => why,
                CallFailure::Net(failure) => failure.to_string(),
                CallFailure::Backend(why) => why.to_string(),
            };
            anyhow::anyhow!("the warm_input invocation failed: {why}")
        })?;
        if !done.is_success() {
            bail!(
                "the warm_input invocation ended with an error: {}",
                String::from_utf8_lossy(&done.output)
            );
        }
        // The warm-up is not one of the VM's invocations (a working set is recorded from
        // the first real one).
        vm.invocations = vm.invocations.saturating_sub(1);
        log::debug!(
            "vm {}: warmed up in {:.3} ms, {} exits",
            vm.id,
            done.timings.total_us as f64 / 1e3,
            done.exits
        );
        Ok(())
    }

    /// Stops every idle VM and refuses further invocations (for shutdown); resolves once
    /// the idle VMs are stopped. Busy VMs stop as their invocations end.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        // Every VM goes: the shared control connection's closing detaches them all, without
        // a `detach` for each.
        self.inner.control.close();
        let victims = self.inner.scheduler.close();
        let stopped = tokio::task::spawn_blocking(move || {
            victims
                .into_iter()
                .map(|Victim { function, vm, .. }| {
                    vm.stop();
                    function
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for function in stopped {
            self.inner.metrics.vm_stopped(&function, "shutdown");
        }
        self.close_network();
    }
}

/// A VM acquired for an invocation, until the invocation's code takes it back
/// ([`take`](Self::take)) to release it. Dropped still holding it — a panic unwinding the
/// invocation's task — the VM is discarded: the scheduler is told it is unhealthy (never
/// parked again) and it is stopped, its backend session dropped, on a task of its own.
struct Held<'a> {
    node: &'a Node,
    function: &'a str,
    vm: Option<FunctionVm>,
}

impl Held<'_> {
    fn vm(&mut self) -> &mut FunctionVm {
        self.vm.as_mut().expect("held until taken")
    }

    fn take(mut self) -> FunctionVm {
        self.vm.take().expect("held until taken")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(vm) = self.vm.take() else {
            return;
        };
        log::error!(
            "vm {}: discarded: the node panicked while handling its invocation",
            vm.id
        );
        if let Some(vm) = self.node.inner.scheduler.release(self.function, vm, false) {
            let victim = Victim {
                function: self.function.to_owned(),
                vm,
                reason: "panic",
            };
            let node = self.node.clone();
            tokio::spawn(async move { node.retire(vec![victim], true).await });
        }
    }
}

/// How a function's snapshot is booted.
enum Boot {
    /// With the nexus-io device, attached to the backend.
    Nexus,
    /// With a net device on a tap of `plane`, and these boot arguments (the clock aside).
    Net {
        /// The node's network.
        plane: Arc<NetPlane>,
        /// The guest's boot arguments.
        args: Vec<String>,
    },
}

/// How an attempt at an invocation ended, when it produced no result.
enum Attempt {
    /// For good.
    Failed(NodeError),
    /// The warm VM had lost its backend session: try another.
    Retry(String),
}

impl From<NodeError> for Attempt {
    fn from(e: NodeError) -> Self {
        Attempt::Failed(e)
    }
}

/// A result as JSON text: itself if it is UTF-8, else base64.
fn output_text(output: Bytes) -> (String, &'static str) {
    match String::from_utf8(output.into()) {
        Ok(text) => (text, "utf8"),
        Err(e) => (nexus_ring::control::base64(e.as_bytes()), "base64"),
    }
}

/// The file beside a function's snapshot that says what it was taken of.
const SNAPSHOT_IDENTITY: &str = "function.id";

/// What a function's snapshot depends on: the guest's bytes, the memory layout and the
/// device state's format — and for a net function its boot arguments (network, port, store
/// and credentials; only their checksum is written).
fn snapshot_identity(elf: &[u8], spec: &FunctionSpec, boot: &Boot) -> String {
    let guest = format!(
        "guest-crc32={:08x} guest-len={} memory-mib={}",
        crc32fast::hash(elf),
        elf.len(),
        spec.file.memory_mib,
    );
    match boot {
        Boot::Nexus => format!(
            "{guest} window-mib={} nexus-io-state={}\n",
            spec.file.window_mib,
            nexus_io::NexusIoState::STATE_VERSION
        ),
        Boot::Net { args, .. } => format!(
            "{guest} io=net args-crc32={:08x} nexus-net-state={}\n",
            crc32fast::hash(args.join("\n").as_bytes()),
            nexus_net::NexusNetState::STATE_VERSION
        ),
    }
}

/// Stops VMs idle for longer than their function's keep-alive (and those whose guest
/// ended), once a second, until the node is dropped or shut down.
async fn reaper(node: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = node.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let node = Node { inner };
        // A panic here would end the reaper, and with it every function's keep-alive for the
        // life of the process: it is caught and counted, and the next tick goes on (VMs the
        // tick had taken are stopped as they are dropped).
        let reaped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let expired = node.inner.scheduler.reap(Instant::now());
            if let Some(v) = expired
                .iter()
                .find(|v| panics::test_hook(panics::Site::Background, &v.function))
            {
                panic!(
                    "test hook NEXUS_TEST_PANIC: a panic in the reaper, reaping vm {}",
                    v.vm.id
                );
            }
            node.stop_vms(expired, false);
        }));
        if let Err(payload) = reaped {
            log::error!(
                "the reaper panicked ({}); it goes on at its next tick",
                panics::message(&*payload)
            );
            panics::counted(panics::Site::Background);
        }
    }
}

/// How resets put guest RAM back: the written pages overwritten in place (default), or
/// dropped with `NEXUS_RESET_RAM=dirty`, or the whole range dropped with
/// `NEXUS_RESET_RAM=whole`, in the daemon's environment (to measure the difference).
fn ram_reset() -> nexus_snapshot::RamReset {
    static HOW: std::sync::OnceLock<nexus_snapshot::RamReset> = std::sync::OnceLock::new();
    *HOW.get_or_init(|| match std::env::var("NEXUS_RESET_RAM").as_deref() {
        Ok("whole") => nexus_snapshot::RamReset::Whole,
        Ok("dirty") => nexus_snapshot::RamReset::Dirty,
        _ => nexus_snapshot::RamReset::Copy,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
