//! The node daemon: a function registry, a warm pool of parked VMs per function, cold
//! starts from each function's snapshot with the input prefetched during the restore, a
//! wall-clock limit per invocation, and metrics. [`http`] puts it behind an HTTP API.
//!
//! Every VM runs in this process, its vCPU on a thread of its own; the shared backend is
//! reached only through its control socket, so it may be a separate process or embedded.

pub mod http;
pub mod metrics;
pub mod registry;
pub mod vm;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::serial::Console;
use nexus_snapshot::{Snapshot, SnapshotFiles};
use serde::Serialize;

use metrics::{Gauges, Metrics, Observation, Start};
use registry::FunctionSpec;
use vm::{Call, CallDone, CallFailure, ControlPool, FunctionVm, FunctionVmConfig, GuestLog, Input};

/// Which parked VM takes the next invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pick {
    /// The most recently used: few VMs stay hot, the others time out (the default).
    Mru,
    /// The least recently used: invocations spread over every parked VM.
    Lru,
}

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
}

/// Why the node did not run an invocation; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such function (404).
    #[error("no function is named `{0}`")]
    NotFound(String),
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
    /// The backend failed the invocation (502): an input object that does not exist, say.
    #[error("the backend could not run the invocation: {0}")]
    Backend(String),
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
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// I/O window, MiB.
    pub window_mib: u64,
    /// The backend tenant.
    pub tenant: String,
    /// Restore mode of cold starts.
    pub restore: registry::RestoreSetting,
    /// Limits.
    pub limits: registry::Limits,
    /// Whether its snapshot exists.
    pub snapshot: bool,
    /// VMs now.
    pub vms: VmCounts,
    /// Invocations so far.
    pub invocations: u64,
}

/// VMs of a function by state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VmCounts {
    /// Parked, waiting for an invocation.
    pub idle: usize,
    /// Running an invocation.
    pub busy: usize,
    /// Being restored.
    pub starting: usize,
}

/// A registered function and its snapshot.
#[derive(Debug)]
struct Function {
    spec: FunctionSpec,
    /// Held while the snapshot is created, so that it is created once.
    snapshot: Mutex<Option<Arc<Snapshot>>>,
}

#[derive(Debug, Default)]
struct Pool {
    idle: VecDeque<FunctionVm>,
    busy: usize,
    starting: usize,
}

impl Pool {
    fn vms(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }
}

#[derive(Debug, Default)]
struct Pools {
    by_function: BTreeMap<String, Pool>,
    total: usize,
    waiting: usize,
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    functions: BTreeMap<String, Function>,
    pools: Mutex<Pools>,
    changed: Condvar,
    metrics: Metrics,
    control: ControlPool,
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
    /// A node serving `functions` through the backend of `config`; starts the idle reaper.
    pub fn new(config: NodeConfig, functions: BTreeMap<String, FunctionSpec>) -> Result<Self> {
        std::fs::create_dir_all(&config.snapshot_dir).with_context(|| {
            format!(
                "Cannot create the snapshot directory {}",
                config.snapshot_dir.display()
            )
        })?;
        let mut pools = Pools::default();
        for name in functions.keys() {
            pools.by_function.insert(name.clone(), Pool::default());
        }
        let inner = Arc::new(Inner {
            control: ControlPool::new(&config.backend),
            config,
            functions: functions
                .into_iter()
                .map(|(name, spec)| {
                    (
                        name,
                        Function {
                            spec,
                            snapshot: Mutex::new(None),
                        },
                    )
                })
                .collect(),
            pools: Mutex::new(pools),
            changed: Condvar::new(),
            metrics: Metrics::default(),
            next_vm: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("nexus-reaper".into())
            .spawn(move || reaper(weak))
            .context("Cannot start the idle reaper")?;
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

    fn function(&self, name: &str) -> Result<&Function, NodeError> {
        self.inner
            .functions
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_owned()))
    }

    fn pools(&self) -> MutexGuard<'_, Pools> {
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One function's figures.
    pub fn function_info(&self, name: &str) -> Result<FunctionInfo, NodeError> {
        let f = self.function(name)?;
        let vms = self.vm_counts(name);
        let file = &f.spec.file;
        Ok(FunctionInfo {
            name: name.to_owned(),
            guest: file.guest.clone(),
            memory_mib: file.memory_mib,
            window_mib: file.window_mib,
            tenant: file.tenant.clone(),
            restore: file.restore,
            limits: file.limits.clone(),
            snapshot: lock(&f.snapshot).is_some(),
            vms,
            invocations: self.inner.metrics.invocations_of(name),
        })
    }

    fn vm_counts(&self, name: &str) -> VmCounts {
        self.pools()
            .by_function
            .get(name)
            .map(|p| VmCounts {
                idle: p.idle.len(),
                busy: p.busy,
                starting: p.starting,
            })
            .unwrap_or_default()
    }

    /// VMs on the node now.
    pub fn vm_total(&self) -> usize {
        self.pools().total
    }

    /// The gauges of a scrape (asks the backend for its figures).
    pub fn gauges(&self) -> Gauges {
        let (vms, queue_depth) = {
            let pools = self.pools();
            let vms = pools
                .by_function
                .iter()
                .map(|(f, p)| (f.clone(), p.idle.len(), p.busy, p.starting))
                .collect();
            (vms, pools.waiting)
        };
        let (vmm_rss, vmm_cpu) = metrics::self_usage();
        let backend = self.backend_stats().ok();
        Gauges {
            vms,
            queue_depth,
            vmm_rss,
            vmm_cpu,
            backend,
        }
    }

    /// The backend's figures (also a health check of the backend).
    pub fn backend_stats(&self) -> Result<nexus_io::BackendStats> {
        self.inner.control.with(|c| c.stats())
    }

    /// Creates the snapshot of function `name` now if it has none.
    pub fn prepare(&self, name: &str) -> Result<Arc<Snapshot>> {
        let f = self.function(name)?;
        self.snapshot_of(f)
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
        // A snapshot a previous run left in the state directory is reused if it was taken of
        // the same guest with the same memory layout (and still opens: it is checksummed).
        let identity = snapshot_identity(&elf, spec);
        let identity_path = dir.join(SNAPSHOT_IDENTITY);
        if std::fs::read_to_string(&identity_path).is_ok_and(|text| text == identity) {
            match Snapshot::open(&SnapshotFiles::in_dir(&dir)) {
                Ok(snapshot) => {
                    log::info!(
                        "function {}: reusing the snapshot in {}",
                        spec.name,
                        dir.display()
                    );
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
        let vm_id = self.vm_id(&spec.name, "snapshot");
        let taken = vm::take_snapshot(
            &elf,
            &self.vm_config(spec),
            &vm_id,
            &dir,
            Console::new(GuestLog::new(&vm_id)),
            PARK_TIMEOUT,
        )
        .with_context(|| format!("Cannot snapshot function `{}`", spec.name))?;
        self.inner.metrics.vm_started(&spec.name, "boot");
        log::info!(
            "function {}: snapshot taken in {} (parked after {:.1} ms, {} pages, saved in {:.1} ms)",
            spec.name,
            dir.display(),
            taken.parked_after.as_secs_f64() * 1e3,
            taken.report.nonzero_pages,
            taken.report.total.as_secs_f64() * 1e3
        );
        let snapshot = Arc::new(Snapshot::open(&SnapshotFiles::in_dir(&dir))?);
        if let Err(e) = std::fs::write(&identity_path, identity) {
            log::warn!(
                "function {}: cannot record the snapshot's identity: {e}",
                spec.name
            );
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
            memory: MemoryConfig {
                ram_size: spec.file.memory_mib << 20,
                window_size: spec.file.window_mib << 20,
            },
        }
    }

    fn vm_id(&self, function: &str, kind: &str) -> String {
        let n = self.inner.next_vm.fetch_add(1, Ordering::Relaxed);
        format!("{function}-{kind}-{}-{n}", std::process::id())
    }

    /// Restores a new VM of `f` (the caller reserved its place in the pools).
    fn start_vm(&self, f: &Function, hint: Option<&str>) -> Result<FunctionVm> {
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
        let restored = vm::restore(
            &snapshot,
            spec.file.restore.into(),
            &vm::RestoreTarget {
                backend: &self.inner.config.backend,
                tenant: &spec.file.tenant,
                vm_id: &id,
                hint,
            },
            Console::new(GuestLog::new(&id)),
            Some(self.inner.config.wait_timeout),
        )
        .with_context(|| format!("Cannot restore a VM of `{}`", spec.name))?;
        log::debug!(
            "vm {id}: restored in {:.2} ms ({:?}, hint {:.2} ms)",
            restored.total.as_secs_f64() * 1e3,
            restored.stats.mode,
            restored.hinted.as_secs_f64() * 1e3
        );
        let mut vm = FunctionVm::start(&id, restored)?;
        vm.snapshot_time = snapshot_time;
        self.inner.metrics.vm_started(&spec.name, "restore");
        Ok(vm)
    }

    /// Gets a VM of `f` for one invocation: a parked one, else a new one if the caps allow
    /// (evicting an idle VM of another function when only the node's cap is in the way),
    /// else waits in the queue.
    fn acquire(&self, f: &Function, hint: Option<&str>) -> Result<(FunctionVm, Start), NodeError> {
        let name = &f.spec.name;
        let config = &self.inner.config;
        let deadline = Instant::now() + config.queue_timeout;
        let mut queued = false;
        let mut pools = self.pools();
        let unqueue = |pools: &mut Pools, queued: &mut bool| {
            if std::mem::take(queued) {
                pools.waiting -= 1;
            }
        };
        loop {
            let pools_ref = &mut *pools;
            let pool = pools_ref
                .by_function
                .get_mut(name)
                .expect("every function has a pool");
            let taken = match config.pick {
                Pick::Mru => pool.idle.pop_back(),
                Pick::Lru => pool.idle.pop_front(),
            };
            if let Some(vm) = taken.as_ref().filter(|vm| !vm.is_alive()) {
                // Its guest ended while parked (a lost backend makes the runtime loop give
                // up, for one): drop it and look again.
                log::warn!("vm {}: found dead in the pool, dropping it", vm.id);
                pools_ref.total -= 1;
                let dead = taken.expect("checked");
                drop(pools);
                dead.stop();
                self.inner.metrics.vm_stopped(name, "dead");
                self.inner.changed.notify_all();
                pools = self.pools();
                continue;
            }
            if let Some(vm) = taken {
                pool.busy += 1;
                unqueue(pools_ref, &mut queued);
                return Ok((vm, Start::Warm));
            }
            if pool.vms() < f.spec.file.limits.max_vms {
                if pools_ref.total < config.max_vms {
                    pool.starting += 1;
                    pools_ref.total += 1;
                    unqueue(pools_ref, &mut queued);
                    drop(pools);
                    let started = self.start_vm(f, hint);
                    let mut pools = self.pools();
                    let pool = pools.by_function.get_mut(name).expect("pool");
                    pool.starting -= 1;
                    return match started {
                        Ok(vm) => {
                            pool.busy += 1;
                            Ok((vm, Start::Cold))
                        }
                        Err(e) => {
                            pools.total -= 1;
                            self.inner.changed.notify_all();
                            Err(NodeError::Unavailable(format!("{e:#}")))
                        }
                    };
                }
                if let Some((victim_function, victim)) = evict_idle(pools_ref) {
                    drop(pools);
                    victim.stop();
                    self.inner.metrics.vm_stopped(&victim_function, "evicted");
                    pools = self.pools();
                    continue;
                }
            }
            if !queued {
                if pools_ref.waiting >= config.max_queue {
                    return Err(NodeError::TooManyRequests(format!(
                        "{} invocations are waiting for a VM already (the node's --max-queue)",
                        pools_ref.waiting
                    )));
                }
                pools_ref.waiting += 1;
                queued = true;
            }
            let now = Instant::now();
            if now >= deadline {
                unqueue(pools_ref, &mut queued);
                return Err(NodeError::Unavailable(format!(
                    "no VM of `{name}` became free within {} ms (max_vms {} for the function, \
                     {} for the node)",
                    config.queue_timeout.as_millis(),
                    f.spec.file.limits.max_vms,
                    config.max_vms
                )));
            }
            pools = self
                .inner
                .changed
                .wait_timeout(pools, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Returns a VM after an invocation: parked again if it is healthy, else stopped.
    fn release(&self, function: &str, vm: FunctionVm, healthy: bool, reason: &'static str) {
        let stopped = {
            let mut pools = self.pools();
            let pools = &mut *pools;
            let pool = pools.by_function.get_mut(function).expect("pool");
            pool.busy -= 1;
            if healthy && !self.inner.closing.load(Ordering::Acquire) {
                pool.idle.push_back(vm);
                None
            } else {
                pools.total -= 1;
                Some(vm)
            }
        };
        self.inner.changed.notify_all();
        if let Some(vm) = stopped {
            // Detach first: the backend fails the invocation still pending on the VM.
            if let Err(e) = self.inner.control.with(|c| c.detach(&vm.id)) {
                log::debug!("vm {}: detach: {e:#}", vm.id);
            }
            vm.stop();
            self.inner.metrics.vm_stopped(function, reason);
        }
    }

    /// Runs one invocation of function `name`.
    pub fn invoke(
        &self,
        name: &str,
        invocation: Invocation,
    ) -> Result<InvocationResult, NodeError> {
        self.attempt(name, invocation, Instant::now(), true)
    }

    /// One attempt at an invocation; `retry` allows a second one on another VM when a
    /// parked VM turns out to have lost its backend session (the backend restarted, say).
    fn attempt(
        &self,
        name: &str,
        invocation: Invocation,
        t0: Instant,
        retry: bool,
    ) -> Result<InvocationResult, NodeError> {
        let f = self.function(name)?;
        if invocation.output_key.as_deref() == Some("") {
            return Err(NodeError::BadRequest("output_key is empty".into()));
        }
        let hint = match &invocation.input {
            Input::Key(key) => Some(key.as_str()),
            Input::Inline(_) => None,
        };
        let (mut vm, start) = self.acquire(f, hint)?;
        let acquired = t0.elapsed();
        let (snapshot, restore) = if start == Start::Cold {
            (vm.snapshot_time, vm.restore_time)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let request_id = if invocation.request_id.is_empty() {
            format!("{}-{}", vm.id, vm.invocations + 1)
        } else {
            invocation.request_id.clone()
        };
        let call = Call {
            input: invocation.input.clone(),
            output_key: invocation.output_key.clone(),
            request_id: request_id.clone(),
            timeout: f.spec.timeout(),
        };
        let result = vm.call(&self.inner.control, &call);
        let observe = |outcome: &'static str, done: Option<&CallDone>| {
            self.inner.metrics.invocation(&Observation {
                function: name,
                outcome,
                start,
                latency: t0.elapsed(),
                start_latency: acquired,
                exits: done.map_or(0, |d| d.exits),
                bytes_in: done.map_or(0, |d| d.reply.bytes_in),
                bytes_out: done.map_or(0, |d| d.reply.bytes_out),
            });
        };
        match result {
            Ok(done) => {
                if vm.recording && vm.invocations == 1 {
                    self.write_working_set(f, &vm);
                }
                let success = done.reply.outcome == "success";
                observe(if success { "success" } else { "error" }, Some(&done));
                let vm_id = vm.id.clone();
                self.release(name, vm, true, "");
                let reply = done.reply;
                let t = |key: &str| reply.timings.get(key).copied().unwrap_or(0) as f64 / 1e3;
                let stored = invocation.output_key.is_some() && success;
                let queue = acquired.saturating_sub(restore).saturating_sub(snapshot);
                Ok(InvocationResult {
                    function: name.to_owned(),
                    request_id,
                    start: start.as_str(),
                    vm: vm_id,
                    outcome: reply.outcome.clone(),
                    output: (!stored).then(|| reply.output.clone()),
                    output_encoding: reply.output_encoding.clone(),
                    output_len: reply.output_len,
                    output_key: invocation.output_key.filter(|_| stored),
                    vm_exits: done.exits,
                    bytes_in: reply.bytes_in,
                    bytes_out: reply.bytes_out,
                    requests: reply.requests,
                    timings_ms: Timings {
                        queue: ms(queue),
                        snapshot: ms(snapshot),
                        restore: ms(restore),
                        next_served: t("next_served_us"),
                        function: t("function_us"),
                        durable: t("durable_us"),
                        output_store: t("output_store_us"),
                        total: ms(t0.elapsed()),
                    },
                })
            }
            Err(CallFailure::Timeout(limit)) => {
                log::warn!(
                    "vm {}: invocation {request_id} timed out after {limit:?}; stopping the VM",
                    vm.id
                );
                self.release(name, vm, false, "timeout");
                observe("timeout", None);
                Err(NodeError::Timeout(limit))
            }
            Err(CallFailure::Crashed(why)) => {
                log::warn!("vm {}: invocation {request_id}: {why}", vm.id);
                self.release(name, vm, false, "crash");
                observe("crash", None);
                Err(NodeError::Crashed(why))
            }
            Err(CallFailure::Backend(why)) => {
                // A refused invocation (an input object that does not exist, say) leaves the
                // VM parked in NEXT: keep it if the backend says so.
                let parked = self
                    .inner
                    .control
                    .with(|c| c.parked(&vm.id, Duration::from_millis(200)))
                    .is_ok();
                let vm_id = vm.id.clone();
                self.release(name, vm, parked, "failed");
                if !parked && start == Start::Warm && retry {
                    log::warn!("vm {vm_id}: the backend lost it ({why}); retrying on another VM");
                    return self.attempt(name, invocation, t0, false);
                }
                observe("failed", None);
                Err(NodeError::Backend(why))
            }
        }
    }

    fn write_working_set(&self, f: &Function, vm: &FunctionVm) {
        let Some(faults) = vm.faults() else { return };
        match faults.write_working_set() {
            Ok(report) => {
                log::info!(
                    "function {}: working set recorded ({} pages) for prefetch restores",
                    f.spec.name,
                    report.data_pages
                );
                if let Err(e) = self.reload_snapshot(f) {
                    log::warn!(
                        "function {}: cannot reopen the snapshot: {e:#}",
                        f.spec.name
                    );
                }
            }
            Err(e) => log::warn!(
                "function {}: recording the working set failed: {e}",
                f.spec.name
            ),
        }
    }

    /// Starts VMs of `name` until `count` are parked (within the caps); returns how many
    /// it started.
    pub fn warm(&self, name: &str, count: usize) -> Result<usize, NodeError> {
        let f = self.function(name)?;
        self.snapshot_of(f)
            .map_err(|e| NodeError::Unavailable(format!("{e:#}")))?;
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4);
        let started = AtomicU64::new(0);
        let failure: Mutex<Option<NodeError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        if lock(&failure).is_some() {
                            return;
                        }
                        // Reserve a place, or stop.
                        {
                            let mut pools = self.pools();
                            let pools = &mut *pools;
                            let pool = pools.by_function.get_mut(name).expect("pool");
                            if pool.idle.len() + pool.starting >= count {
                                return;
                            }
                            if pool.vms() >= f.spec.file.limits.max_vms
                                || pools.total >= self.inner.config.max_vms
                            {
                                let pool_vms = pool.vms();
                                let total = pools.total;
                                *lock(&failure) = Some(NodeError::TooManyRequests(format!(
                                    "cannot park {count} VMs of `{name}`: {pool_vms} VMs of it \
                                     (max_vms {}), {total} on the node (--max-vms {})",
                                    f.spec.file.limits.max_vms, self.inner.config.max_vms
                                )));
                                return;
                            }
                            pool.starting += 1;
                            pools.total += 1;
                        }
                        let vm = self.start_vm(f, None).and_then(|vm| {
                            self.inner
                                .control
                                .with(|c| c.parked(&vm.id, PARK_TIMEOUT))
                                .map(|()| vm)
                        });
                        let mut pools = self.pools();
                        let pools = &mut *pools;
                        let pool = pools.by_function.get_mut(name).expect("pool");
                        pool.starting -= 1;
                        match vm {
                            Ok(vm) => {
                                pool.idle.push_back(vm);
                                started.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                pools.total -= 1;
                                *lock(&failure) = Some(NodeError::Unavailable(format!("{e:#}")));
                            }
                        }
                        self.inner.changed.notify_all();
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(started.into_inner() as usize),
        }
    }

    /// Stops every idle VM and refuses to park more (for shutdown).
    pub fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let vms: Vec<(String, FunctionVm)> = {
            let mut pools = self.pools();
            let pools = &mut *pools;
            let mut all = Vec::new();
            for (f, pool) in pools.by_function.iter_mut() {
                all.extend(pool.idle.drain(..).map(|vm| (f.clone(), vm)));
            }
            pools.total -= all.len();
            all
        };
        for (f, vm) in vms {
            vm.stop();
            self.inner.metrics.vm_stopped(&f, "shutdown");
        }
    }
}

/// The file beside a function's snapshot that says what it was taken of.
const SNAPSHOT_IDENTITY: &str = "function.id";

/// What a function's snapshot depends on: the guest's bytes, the memory layout and the
/// nexus-io device state's format.
fn snapshot_identity(elf: &[u8], spec: &FunctionSpec) -> String {
    format!(
        "guest-crc32={:08x} guest-len={} memory-mib={} window-mib={} nexus-io-state={}\n",
        crc32fast::hash(elf),
        elf.len(),
        spec.file.memory_mib,
        spec.file.window_mib,
        nexus_io::NexusIoState::STATE_VERSION
    )
}

/// Takes the least recently used idle VM of any function.
fn evict_idle(pools: &mut Pools) -> Option<(String, FunctionVm)> {
    let (function, _) = pools
        .by_function
        .iter()
        .filter_map(|(f, p)| p.idle.front().map(|vm| (f.clone(), vm.last_used)))
        .min_by_key(|(_, used)| *used)?;
    let vm = pools.by_function.get_mut(&function)?.idle.pop_front()?;
    pools.total -= 1;
    Some((function, vm))
}

/// Stops VMs idle for longer than their function's keep-alive, once a second.
fn reaper(node: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(inner) = node.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let expired: Vec<(String, FunctionVm, &'static str)> = {
            let mut pools = inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            let pools = &mut *pools;
            let mut expired = Vec::new();
            for (name, pool) in pools.by_function.iter_mut() {
                let keep = inner.functions[name].spec.keep_alive();
                // Oldest first: VMs are parked in the order they finished.
                while pool
                    .idle
                    .front()
                    .is_some_and(|vm| now.saturating_duration_since(vm.last_used) > keep)
                {
                    expired.extend(pool.idle.pop_front().map(|vm| (name.clone(), vm, "idle")));
                }
                // And any whose guest ended while parked.
                if pool.idle.iter().any(|vm| !vm.is_alive()) {
                    let (alive, dead): (VecDeque<_>, VecDeque<_>) =
                        pool.idle.drain(..).partition(FunctionVm::is_alive);
                    pool.idle = alive;
                    expired.extend(dead.into_iter().map(|vm| (name.clone(), vm, "dead")));
                }
            }
            pools.total -= expired.len();
            expired
        };
        if !expired.is_empty() {
            inner.changed.notify_all();
        }
        for (f, vm, reason) in expired {
            log::debug!("vm {}: stopping it ({reason})", vm.id);
            vm.stop();
            inner.metrics.vm_stopped(&f, reason);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
