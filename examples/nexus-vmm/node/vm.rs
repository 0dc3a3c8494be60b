//! One function VM's life: the snapshot it is restored from, the restore (with the
//! prefetch hint sent before it starts), invocations with a wall-clock limit, and its end.
//!
//! A [`FunctionVm`] is either kind: a nexus-io VM (this module: its invocations go through
//! the backend) or a net VM ([`super::netvm`]: its invocations are HTTP requests to the
//! guest's own server). The vCPU, its watch, the limits and the figures are the same.
//!
//! Shared by the node daemon and by `nexus-vmm snapshot` / `nexus-vmm invoke`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use nexus_io::{ControlClient, NexusIoConfig, NexusIoState, NexusIoTransport};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::pool::VcpuPool;
use nexus_kvm::serial::Console;
use nexus_kvm::stats::StatsFd;
use nexus_kvm::{VcpuConfig, VcpuHandle, VcpuStop};
use nexus_ring::control::InvokeTimings;
use nexus_snapshot::{
    DeviceState, FaultServer, RamReport, RamReset, RestoreMode, RestoreOptions, RestoreStats,
    SaveReport, Snapshot, SnapshotFiles, WindowImage, WindowReport,
};

use super::backend::{BackendClient, BackendError, InvokeInput, InvokeRequest, Invoked};

/// A console sink that sends each line the guest prints to the log (`guest` target, debug
/// level), prefixed with the VM's ID. Lines are cut at 1 KiB. It may also watch for a line
/// ([`GuestLog::watching`]).
#[derive(Debug)]
pub struct GuestLog {
    vm: String,
    line: Vec<u8>,
    /// A line prefix to watch for, and where to send the first line that has it.
    watch: Option<(String, std::sync::mpsc::Sender<String>)>,
}

impl GuestLog {
    /// A sink for VM `vm`.
    pub fn new(vm: &str) -> Self {
        GuestLog {
            vm: vm.to_owned(),
            line: Vec::new(),
            watch: None,
        }
    }

    /// A sink for VM `vm` that also sends the first line starting with `prefix` (as the
    /// guest printed it, without its newline) to the receiver it returns.
    pub fn watching(vm: &str, prefix: &str) -> (Self, std::sync::mpsc::Receiver<String>) {
        let (tell, seen) = std::sync::mpsc::channel();
        let mut log = Self::new(vm);
        log.watch = Some((prefix.to_owned(), tell));
        (log, seen)
    }
}

impl Write for GuestLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.flush()?;
            } else if self.line.len() < 1024 {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            let line = String::from_utf8_lossy(&self.line);
            log::debug!(target: "guest", "{}: {line}", self.vm);
            let watched = self
                .watch
                .take_if(|(prefix, _)| line.starts_with(prefix.as_str()));
            if let Some((_, tell)) = watched {
                let _ = tell.send(line.into_owned());
            }
            self.line.clear();
        }
        Ok(())
    }
}

/// What [`take_snapshot`] did.
#[derive(Debug)]
pub struct SnapshotTaken {
    /// The save's report.
    pub report: SaveReport,
    /// From the vCPU's start to its `NEXT` being parked in the backend.
    pub parked_after: Duration,
}

/// How a function VM is set up.
#[derive(Debug, Clone)]
pub struct FunctionVmConfig {
    /// The backend's control socket.
    pub backend: PathBuf,
    /// The tenant on the backend.
    pub tenant: String,
    /// Guest RAM and window.
    pub memory: MemoryConfig,
}

/// Boots micro-guest `elf` in its runtime loop (no arguments) with a nexus-io device
/// attached to the backend as `vm_id`, waits (at most `park_timeout`) until its `NEXT` is
/// parked, stops it and writes the snapshot into `out`. The VM is gone afterwards (its
/// device's control connection closes, which detaches it).
pub fn take_snapshot(
    elf: &[u8],
    config: &FunctionVmConfig,
    vm_id: &str,
    out: &Path,
    console: Console,
    park_timeout: Duration,
    parked: &dyn Fn(&str, Duration) -> Result<()>,
) -> Result<SnapshotTaken> {
    let micro = MicroVm::new(
        elf,
        MicroVmConfig {
            memory: config.memory,
            args: vec![],
            device: Some(nexus_io::device_info()),
            net_device: None,
            console,
        },
    )?;
    let serial = micro.serial().clone();
    let window = micro
        .vm()
        .memory()
        .window()
        .cloned()
        .context("a function VM needs an I/O window")?;
    let device = nexus_io::NexusIo::new(NexusIoConfig {
        control_socket: config.backend.clone(),
        vm_id: vm_id.to_owned(),
        tenant: config.tenant.clone(),
        window,
        irq: None,
    })?;
    let attached = nexus_io::attach(micro.vm(), device)?;
    let (vm, vcpu, _) = micro.into_parts();
    let start = Instant::now();
    let handle = vcpu.spawn(format!("{vm_id}-vcpu"))?;

    // Wait for the function to park in NEXT (the device attaches on the guest's DRIVER_OK).
    let deadline = Instant::now() + park_timeout;
    loop {
        if handle.is_finished() {
            let (_, result) = handle.join()?;
            bail!(
                "The function stopped before it parked in NEXT: {}",
                describe_stop(&result)
            );
        }
        match parked(vm_id, Duration::from_millis(200)) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e).context("The function did not park in NEXT"),
        }
    }
    let parked_after = start.elapsed();
    let (mut vcpu, result) = handle.stop()?;
    match result {
        Ok(VcpuStop::Stopped) => {}
        other => bail!("The vCPU did not stop cleanly: {}", describe_stop(&other)),
    }
    let devices = {
        let serial = serial.lock().unwrap_or_else(|p| p.into_inner());
        let transport = attached.transport.lock().unwrap_or_else(|p| p.into_inner());
        vec![
            DeviceState::save(&*serial),
            DeviceState::save(&NexusIoState::save(&transport)),
        ]
    };
    save_parked(&vm, &mut vcpu, &devices, out, parked_after)
}

/// Writes the snapshot of a function VM stopped where it waits for invocations (either kind)
/// into `out`, created if need be.
pub(super) fn save_parked(
    vm: &nexus_kvm::Vm,
    vcpu: &mut nexus_kvm::Vcpu,
    devices: &[DeviceState],
    out: &Path,
    parked_after: Duration,
) -> Result<SnapshotTaken> {
    std::fs::create_dir_all(out).with_context(|| format!("Cannot create {}", out.display()))?;
    let files = SnapshotFiles::in_dir(out);
    let report = nexus_snapshot::save(vm, std::slice::from_mut(vcpu), devices, &files)?;
    Ok(SnapshotTaken {
        report,
        parked_after,
    })
}

/// A VM restored from a function's snapshot, its device reconnected, its vCPU not started.
#[derive(Debug)]
pub struct Restored {
    /// The VM.
    pub vm: nexus_kvm::Vm,
    /// Its one vCPU, ready to run.
    pub vcpu: nexus_kvm::Vcpu,
    /// The userfaultfd page server (uffd and prefetch modes).
    pub faults: Option<FaultServer>,
    /// Whether this restore records the working set (prefetch mode, none recorded yet).
    pub recording: bool,
    /// The snapshot engine's figures.
    pub stats: RestoreStats,
    /// Attach and hint, before the restore began.
    pub hinted: Duration,
    /// From the start to the device's reconnection.
    pub total: Duration,
    /// A net VM's network (none for a nexus-io VM).
    pub net: Option<super::netvm::NetRestored>,
    /// A nexus-io VM's device, as its bus holds it (none for a net VM).
    pub device: Option<Arc<Mutex<NexusIoTransport>>>,
}

/// Where a restored VM goes on the backend.
#[derive(Debug, Clone, Copy)]
pub struct RestoreTarget<'a> {
    /// The backend's control socket.
    pub backend: &'a Path,
    /// The VM's tenant.
    pub tenant: &'a str,
    /// The VM's ID.
    pub vm_id: &'a str,
    /// The object to prefetch while the VM is restored.
    pub hint: Option<&'a str>,
    /// A control connection shared with other VMs, rather than one of the VM's own.
    pub shared: Option<&'a nexus_io::SharedControl>,
}

/// How a restore in `mode` runs, and whether it records the working set: `Prefetch` needs a
/// recorded working set, so without one it restores with userfaultfd and records it (for the
/// next prefetch restore).
pub(super) fn restore_mode(mode: RestoreMode, has_working_set: bool) -> (RestoreMode, bool) {
    match mode {
        RestoreMode::Prefetch if !has_working_set => (RestoreMode::Uffd, true),
        mode => (mode, false),
    }
}

/// A micro-guest restored from `snapshot` in `mode` (a prefetch restore without a working
/// set yet records one: the flag says so), checked to have its one vCPU, its console and
/// legacy devices attached; its own devices' state is the caller's to restore.
pub(super) fn restore_micro(
    snapshot: &Snapshot,
    mode: RestoreMode,
    console: Console,
) -> Result<(nexus_snapshot::RestoredVm, bool)> {
    let (mode, recording) = restore_mode(mode, snapshot.has_working_set());
    let restored = snapshot.restore(&RestoreOptions {
        mode,
        record_working_set: recording,
        vcpu: VcpuConfig { strict_io: true },
    })?;
    if restored.vcpus.len() != 1 {
        bail!(
            "The snapshot has {} vCPUs; micro-guests have 1",
            restored.vcpus.len()
        );
    }
    nexus_snapshot::devices::attach_micro_devices(&restored.vm, &restored.devices, console)?;
    Ok((restored, recording))
}

/// Restores VM `vm_id` from `snapshot` in `mode` (`Prefetch` records the working set if the
/// snapshot has none yet, see [`Restored::recording`]): attaches it on the backend and sends the prefetch
/// `hint` first (the backend fetches the input while guest memory comes back), restores,
/// reconnects the nexus-io device on that same attachment (the backend re-pops the parked
/// `NEXT`: the guest notices nothing). `wait_timeout` sets the device's WAIT timeout.
pub fn restore(
    snapshot: &Snapshot,
    mode: RestoreMode,
    target: &RestoreTarget<'_>,
    console: Console,
    wait_timeout: Option<Duration>,
) -> Result<Restored> {
    let RestoreTarget {
        backend,
        tenant,
        vm_id,
        shared,
        ..
    } = *target;
    let t0 = Instant::now();
    let mut control = match shared {
        Some(shared) => shared.client()?,
        None => ControlClient::connect(backend, Duration::from_secs(10))?,
    };
    let socket = control.attach(vm_id, tenant)?;
    // On a shared connection, nothing detaches a VM that is not restored: this does.
    let mut on_failure = shared.map(|_| control.clone());
    let restored = restore_attached(
        snapshot,
        mode,
        target,
        console,
        wait_timeout,
        t0,
        control,
        socket,
    );
    if let (Err(_), Some(control)) = (&restored, on_failure.as_mut()) {
        if let Err(e) = control.detach(vm_id) {
            log::debug!("vm {vm_id}: detach after a failed restore: {e}");
        }
    }
    restored
}

/// [`restore`] once the VM is attached on `control` (its vhost-user connection `socket`).
#[allow(clippy::too_many_arguments)]
fn restore_attached(
    snapshot: &Snapshot,
    mode: RestoreMode,
    target: &RestoreTarget<'_>,
    console: Console,
    wait_timeout: Option<Duration>,
    t0: Instant,
    mut control: ControlClient,
    socket: std::os::unix::net::UnixStream,
) -> Result<Restored> {
    let RestoreTarget {
        backend,
        tenant,
        vm_id,
        hint,
        shared,
    } = *target;
    if let Some(key) = hint {
        control.hint(vm_id, key)?;
    }
    let hinted = t0.elapsed();
    let (restored, recording) = restore_micro(snapshot, mode, console)?;
    let nexus_snapshot::RestoredVm {
        vm,
        mut vcpus,
        devices,
        faults,
        stats,
    } = restored;
    let state: NexusIoState = DeviceState::restore_from(&devices, ())?;
    let window = vm
        .memory()
        .window()
        .cloned()
        .context("the snapshot has no I/O window")?;
    let mut transport = state.restore(NexusIoConfig {
        control_socket: backend.to_owned(),
        vm_id: vm_id.to_owned(),
        tenant: tenant.to_owned(),
        window,
        irq: None,
    })?;
    if let Some(timeout) = wait_timeout {
        transport.device_mut().set_wait_timeout(timeout);
    }
    if let Some(shared) = shared {
        transport.device_mut().share_control(shared.clone());
    }
    transport
        .device_mut()
        .resume(Some((control, socket)))
        .context("Cannot reconnect the restored nexus-io device")?;
    let attached = if super::panics::hooks_vm(vm_id) {
        // The test-only hook (`super::panics`): the transport behind a wrapper that panics.
        attach_probed(&vm, vm_id, transport)?
    } else {
        nexus_io::attach_transport(&vm, transport)?
    };
    Ok(Restored {
        vm,
        vcpu: vcpus.remove(0),
        faults,
        recording,
        stats,
        hinted,
        total: t0.elapsed(),
        net: None,
        device: Some(attached.transport),
    })
}

/// [`nexus_io::attach_transport`] for a micro-VM (no interrupt controller: the device's
/// `WAIT` it is), with the transport on the bus behind the test-only
/// [`Probe`](super::panics::Probe) of VM `vm_id`.
fn attach_probed(
    vm: &nexus_kvm::Vm,
    vm_id: &str,
    mut transport: NexusIoTransport,
) -> Result<nexus_io::AttachedDevice> {
    if vm.has_irqchip() {
        bail!("the test hook's probe is for micro-VMs (no interrupt controller)");
    }
    let info = nexus_io::device_info();
    transport
        .device_mut()
        .set_interrupt_mode(nexus_io::InterruptMode::Wait);
    let doorbell = kvm_ioctls::IoEventAddress::Mmio(
        info.base + u64::from(nexus_ring::mmio::regs::QUEUE_NOTIFY),
    );
    vm.register_ioeventfd(transport.device().kick_eventfd(), doorbell, None)?;
    let transport = Arc::new(Mutex::new(transport));
    let probe = super::panics::probe(vm_id, Arc::clone(&transport));
    vm.add_device(
        nexus_kvm::BusKind::Mmio,
        Arc::new(Mutex::new(probe)),
        info.base,
        info.size,
    )?;
    Ok(nexus_io::AttachedDevice { transport, info })
}

/// The input of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An object key of the function's tenant.
    Key(String),
    /// Inline bytes (any bytes).
    Inline(Bytes),
}

impl Input {
    /// The input as the node's backend client sends it.
    pub fn to_control(&self) -> InvokeInput {
        match self {
            Input::Key(k) => InvokeInput::Key(k.clone()),
            Input::Inline(bytes) => InvokeInput::Bytes(bytes.clone()),
        }
    }
}

/// One invocation for a VM.
#[derive(Debug, Clone)]
pub struct Call {
    /// The input.
    pub input: Input,
    /// Store the result at this key (durably, before the answer).
    pub output_key: Option<String>,
    /// The request id in the invocation context.
    pub request_id: String,
    /// The wall-clock limit.
    pub timeout: Duration,
    /// Whether a result stored at `output_key` is sent back too (a successful result that
    /// is stored is not, by default: it would cross the control socket for nothing).
    pub return_output: bool,
}

/// Why an invocation did not produce a result.
#[derive(Debug)]
pub enum CallFailure {
    /// The function ran past its timeout (the VM is not reused).
    Timeout(Duration),
    /// The guest crashed (or its vCPU stopped) during the invocation (the VM is not reused).
    Crashed(String),
    /// The backend refused or failed the invocation (a missing input object, say).
    Backend(BackendError),
    /// A net function's guest refused or failed the invocation.
    Net(super::netvm::NetFailure),
}

/// What an invocation produced, whichever kind of VM ran it.
#[derive(Debug)]
pub struct CallDone {
    /// `success` or `error` (the function's own verdict).
    pub outcome: String,
    /// The result (or the error document); empty if it was only stored.
    pub output: Bytes,
    /// The result's length in bytes.
    pub output_len: u64,
    /// Payload bytes into the guest: written into the window (nexus-io), or carried by
    /// frames to the guest (net: its input, GETs, the request).
    pub bytes_in: u64,
    /// Payload bytes out of the guest: read from the window, or carried by its frames.
    pub bytes_out: u64,
    /// Ring requests the backend served (0 for a net VM).
    pub requests: u64,
    /// Where the time went (a net VM: `next_served` is getting a connection to the guest,
    /// `function` the HTTP exchange).
    pub timings: InvokeTimings,
    /// KVM exits of the vCPU during the invocation (0 if the statistics are unavailable).
    pub exits: u64,
}

impl CallDone {
    /// What the backend answered for a nexus-io VM.
    fn from_backend(invoked: Invoked) -> Self {
        let outcome = invoked.outcome().to_owned();
        let Invoked { reply, output } = invoked;
        CallDone {
            outcome,
            output,
            output_len: reply.output_len.unwrap_or(0),
            bytes_in: reply.bytes_in.unwrap_or(0),
            bytes_out: reply.bytes_out.unwrap_or(0),
            requests: reply.requests.unwrap_or(0),
            timings: reply.timings.unwrap_or_default(),
            exits: 0,
        }
    }

    /// Whether the function succeeded.
    pub fn is_success(&self) -> bool {
        self.outcome == "success"
    }
}

/// How a VM's guest is reached.
#[derive(Debug)]
enum VmIo {
    /// Through the backend (nexus-io).
    Nexus,
    /// Over HTTP to its own server (net).
    Net(super::netvm::NetChannel),
}

/// A running function VM: its vCPU on a pool or a thread of its own, parked in `NEXT` when
/// idle.
#[derive(Debug)]
pub struct FunctionVm {
    /// The VM's ID on the backend.
    pub id: String,
    /// When it last finished an invocation (or was started).
    pub last_used: Instant,
    /// Invocations it served.
    pub invocations: u64,
    /// How long its restore took (attach and hint included).
    pub restore_time: Duration,
    /// How long the function's snapshot took to create, if this VM's start had to wait
    /// for it (the function's first cold start).
    pub snapshot_time: Duration,
    /// Whether its restore is recording the working set (written after its first invocation).
    pub recording: bool,
    /// The vCPU's thread. It holds all that a parked VM keeps: the vCPU descriptor (which
    /// keeps the KVM VM alive), guest memory, and the devices on its buses (the nexus-io
    /// device's kick and call eventfds and backend connections). The VM's own descriptor is
    /// closed once the vCPU runs, and the vCPU statistics are opened only around an
    /// invocation: a parked VM costs as few descriptors as it can.
    vcpu: Option<VcpuHandle>,
    /// The pool the vCPU runs on, if not on a thread of its own.
    pool: Option<VcpuPool>,
    /// How the vCPU's run ended, once it has (set by the vCPU thread as it ends).
    ended: tokio::sync::watch::Receiver<Option<String>>,
    faults: Option<FaultServer>,
    /// What a reset to the snapshot needs (`isolation = "reset"` only).
    reset: Option<Resettable>,
    // Dropped after the vCPU (see Drop): a net VM's address goes back to the pool once its
    // tap (a device on the vCPU's bus) is closed.
    io: VmIo,
}

/// What a VM reset to its snapshot after every invocation keeps: the VM (its descriptor, to
/// set the vCPU state again; guest RAM and the window), its device, and the snapshot.
#[derive(Debug)]
struct Resettable {
    vm: nexus_kvm::Vm,
    device: Arc<Mutex<NexusIoTransport>>,
    snapshot: Arc<Snapshot>,
    window: Arc<WindowImage>,
}

/// Where a VM reset to its snapshot goes back to: the snapshot it was restored from (a lazy
/// restore) and that snapshot's window image.
#[derive(Debug, Clone)]
pub struct ResetSource {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// Its window, read once ([`WindowImage::read`]).
    pub window: Arc<WindowImage>,
}

/// What [`FunctionVm::reset`] did and how long each part took.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResetReport {
    /// Stopping the vCPU (interrupting its `WAIT`).
    pub vcpu_stop: Duration,
    /// Stopping the request queue on the backend (`GET_VRING_BASE`).
    pub queue_stop: Duration,
    /// Dropping the RAM pages the guest wrote.
    pub ram: Duration,
    /// Pages scanned and dropped.
    pub ram_pages: RamReport,
    /// Rewriting the window.
    pub window: Duration,
    /// Window pages resident and rewritten.
    pub window_pages: WindowReport,
    /// Setting the vCPU's state again.
    pub vcpu_state: Duration,
    /// Waiting for the caller's `before_restart` (the backend's reset, sent meanwhile).
    pub waited: Duration,
    /// Starting the request queue again (the backend re-pops the snapshot's `NEXT`).
    pub queue_start: Duration,
    /// Starting the vCPU thread again.
    pub vcpu_start: Duration,
    /// All of it.
    pub total: Duration,
}

impl FunctionVm {
    /// Starts the vCPU of a restored VM.
    pub fn start(id: &str, restored: Restored) -> Result<Self> {
        Self::start_with(id, restored, None, None)
    }

    /// Starts the vCPU of a restored VM that, with `reset`, can be reset to its snapshot
    /// between invocations ([`reset`](Self::reset); it must be a nexus-io VM of a lazy
    /// restore from `reset.snapshot`). With `pool`, the vCPU runs on it (parked, it holds no
    /// thread); otherwise on a thread of its own.
    pub fn start_with(
        id: &str,
        restored: Restored,
        reset: Option<ResetSource>,
        pool: Option<&VcpuPool>,
    ) -> Result<Self> {
        let Restored {
            vm,
            vcpu,
            faults,
            recording,
            total,
            net,
            device,
            ..
        } = restored;
        let io = match net {
            Some(net) => VmIo::Net(super::netvm::NetChannel::new(id, net)),
            None => VmIo::Nexus,
        };
        let (handle, ended) = spawn_vcpu(id, vcpu, pool)?;
        let reset = match reset {
            Some(ResetSource { snapshot, window }) => {
                let device = device.context("only a nexus-io VM can be reset")?;
                Some(Resettable {
                    vm,
                    device,
                    snapshot,
                    window,
                })
            }
            None => {
                // Nothing needs the VM's descriptor any more: its devices are on the buses
                // (their ioeventfds registered), and the vCPU keeps the KVM VM, guest memory
                // and the devices alive. Closing it saves a descriptor per VM.
                drop(vm);
                None
            }
        };
        let now = Instant::now();
        Ok(FunctionVm {
            id: id.to_owned(),
            last_used: now,
            invocations: 0,
            restore_time: total,
            snapshot_time: Duration::ZERO,
            recording,
            vcpu: Some(handle),
            pool: pool.cloned(),
            ended,
            faults,
            reset,
            io,
        })
    }

    /// Whether it is reset to its snapshot after every invocation.
    pub fn resets(&self) -> bool {
        self.reset.is_some()
    }

    /// Puts the VM back into its snapshot's state, in place (blocking; the backend's
    /// `reset` for it is the caller's): stops the vCPU (its `WAIT` in `NEXT` interrupted),
    /// stops the request queue on the backend (which cancels the parked `NEXT`), drops the
    /// RAM pages the guest wrote back to the snapshot's, rewrites the window pages that
    /// differ from the snapshot's, sets the snapshot's vCPU state, starts the queue again
    /// from the snapshot's ring (the backend pops the snapshot's `NEXT` and parks it) and
    /// starts the vCPU again. On an error the VM is not fit for use: stop it.
    ///
    /// `before_restart` runs just before the queue starts again, and its error fails the
    /// reset: the caller's work that must be done by then (the backend's own reset for the
    /// VM, which can run meanwhile).
    pub fn reset(
        &mut self,
        ram: RamReset,
        before_restart: impl FnOnce() -> Result<()>,
    ) -> Result<ResetReport> {
        let t0 = Instant::now();
        let mut report = ResetReport::default();
        let r = self.reset.as_ref().context("the VM is not resettable")?;
        let handle = self.vcpu.take().context("the vCPU is not running")?;
        let (mut vcpu, result) = handle.stop()?;
        match result {
            Ok(VcpuStop::Stopped) => {}
            other => bail!("the vCPU did not stop cleanly: {}", describe_stop(&other)),
        }
        report.vcpu_stop = t0.elapsed();
        let mut transport = r.device.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        transport.device_mut().stop_queue();
        report.queue_stop = t.elapsed();
        let t = Instant::now();
        for region in r.vm.memory().ram_regions() {
            let done = nexus_snapshot::reset_ram(region, ram)?;
            report.ram_pages.scanned_pages += done.scanned_pages;
            report.ram_pages.dropped_pages += done.dropped_pages;
            report.ram_pages.calls += done.calls;
        }
        report.ram = t.elapsed();
        let t = Instant::now();
        let window = r.vm.memory().window().context("the VM has no window")?;
        report.window_pages = r.window.restore_into(window)?;
        report.window = t.elapsed();
        let t = Instant::now();
        let state = r
            .snapshot
            .state()
            .vcpus
            .first()
            .context("the snapshot has no vCPU")?;
        nexus_snapshot::reset_vcpu(state, r.vm.fd(), &mut vcpu)?;
        report.vcpu_state = t.elapsed();
        let t = Instant::now();
        before_restart()?;
        report.waited = t.elapsed();
        let t = Instant::now();
        transport
            .device_mut()
            .resume(None)
            .context("Cannot start the request queue again")?;
        drop(transport);
        report.queue_start = t.elapsed();
        let t = Instant::now();
        // The stop above left the vCPU's stop flag set: the new run must not end at once.
        vcpu.stop_flag()
            .store(false, std::sync::atomic::Ordering::Release);
        let (handle, ended) = spawn_vcpu(&self.id, vcpu, self.pool.as_ref())?;
        self.vcpu = Some(handle);
        self.ended = ended;
        report.vcpu_start = t.elapsed();
        report.total = t0.elapsed();
        Ok(report)
    }

    /// Whether it is a net VM.
    pub fn is_net(&self) -> bool {
        matches!(self.io, VmIo::Net(_))
    }

    /// The store reconnects a net VM's guest reported since the last call (0 for a nexus-io
    /// VM).
    pub fn take_store_reconnects(&mut self) -> u64 {
        match &mut self.io {
            VmIo::Net(channel) => channel.take_store_reconnects(),
            VmIo::Nexus => 0,
        }
    }

    /// Resolves once the VM can take an invocation (at most `timeout`): parked in `NEXT` on
    /// the backend (nexus-io), or its server answering `GET /ready` (net).
    pub async fn ready(&mut self, backend: &BackendClient, timeout: Duration) -> Result<()> {
        match &mut self.io {
            VmIo::Nexus => Ok(backend.parked(&self.id, timeout).await?),
            VmIo::Net(channel) => match tokio::time::timeout(timeout, channel.ready()).await {
                Ok(ready) => Ok(ready.map_err(|e| anyhow::anyhow!("{e}"))?),
                Err(_) => bail!(
                    "its server did not answer GET /ready within {} ms",
                    timeout.as_millis()
                ),
            },
        }
    }

    /// Whether the vCPU still runs (a guest that crashed or exited while parked is dead).
    pub fn is_alive(&self) -> bool {
        self.ended.borrow().is_none()
    }

    /// The vCPU's statistics, opened for the time of one invocation (a parked VM holds no
    /// statistics descriptor). `None` if they are unavailable.
    fn stats(&self) -> Option<StatsFd> {
        self.vcpu.as_ref().and_then(|h| h.stats().ok())
    }

    /// The userfaultfd page server, if the VM has one.
    pub fn faults(&self) -> Option<&FaultServer> {
        self.faults.as_ref()
    }

    /// Runs one invocation — through the backend, or over HTTP to a net VM's guest — within
    /// the call's wall-clock limit, and notices at once if the guest ends meanwhile. Nothing
    /// here blocks a thread.
    pub async fn call(
        &mut self,
        backend: &BackendClient,
        call: &Call,
    ) -> Result<CallDone, CallFailure> {
        // One statistics file for the invocation: its exits are the counter's difference.
        let stats = self.stats();
        let exits_before = exits(stats.as_ref());
        let mut ended = self.ended.clone();
        let id = &self.id;
        super::panics::arm(id).await;
        let exchange = async {
            match &mut self.io {
                VmIo::Nexus => {
                    let request = InvokeRequest {
                        vm: id.clone(),
                        input: call.input.to_control(),
                        output: call.output_key.clone(),
                        request_id: call.request_id.clone(),
                        return_output: call.return_output,
                    };
                    let invoked = backend.invoke(request).await;
                    invoked
                        .map(CallDone::from_backend)
                        .map_err(CallFailure::Backend)
                }
                VmIo::Net(channel) => channel.invoke(call).await,
            }
        };
        let mut done = tokio::select! {
            done = exchange => done?,
            why = ended.wait_for(Option::is_some) => {
                let why = match why {
                    Ok(why) => why.clone().unwrap_or_default(),
                    Err(_) => "the vCPU is gone".into(),
                };
                return Err(CallFailure::Crashed(why));
            }
            () = tokio::time::sleep(call.timeout) => return Err(CallFailure::Timeout(call.timeout)),
        };
        self.invocations += 1;
        self.last_used = Instant::now();
        done.exits = exits(stats.as_ref()).saturating_sub(exits_before);
        Ok(done)
    }

    /// Stops the vCPU (at once, even in the middle of an invocation) and releases the VM.
    /// Blocks until the vCPU thread has ended.
    pub fn stop(mut self) {
        self.stop_vcpu();
    }

    fn stop_vcpu(&mut self) {
        if let Some(Err(e)) = self.vcpu.take().map(VcpuHandle::stop) {
            log::warn!("vm {}: stopping the vCPU failed: {e}", self.id);
        }
    }
}

impl Drop for FunctionVm {
    fn drop(&mut self) {
        self.stop_vcpu();
    }
}

impl super::scheduler::PooledVm for FunctionVm {
    fn last_used(&self) -> Instant {
        self.last_used
    }

    fn is_alive(&self) -> bool {
        FunctionVm::is_alive(self)
    }
}

/// Runs `vcpu` on `pool`, or on a thread of its own; the receiver learns how its run ended.
fn spawn_vcpu(
    id: &str,
    vcpu: nexus_kvm::Vcpu,
    pool: Option<&VcpuPool>,
) -> Result<(VcpuHandle, tokio::sync::watch::Receiver<Option<String>>)> {
    let (tell, ended) = tokio::sync::watch::channel(None);
    let vm = id.to_owned();
    let on_exit = move |result: &nexus_kvm::Result<VcpuStop>| {
        if let Err(nexus_kvm::Error::RunPanicked(message)) = result {
            // The pool (or the vCPU's thread) caught it and goes on; the invocation in
            // flight fails as a crash and the VM, no longer alive, is discarded.
            super::panics::counted(super::panics::Site::Vcpu);
            log::error!("vm {vm}: its vCPU's run panicked: {message}; the VM is discarded");
        }
        tell.send_replace(Some(describe_stop(result)));
    };
    let handle = match pool {
        Some(pool) => pool.spawn(vcpu, on_exit)?,
        None => vcpu.spawn_with_exit(format!("{id}-vcpu"), on_exit)?,
    };
    Ok((handle, ended))
}

/// The `exits` counter of `stats` (0 if there is none).
fn exits(stats: Option<&StatsFd>) -> u64 {
    stats
        .and_then(|s| s.read("exits").ok().flatten())
        .unwrap_or(0)
}

/// How a vCPU run ended, in words.
pub fn describe_stop(result: &nexus_kvm::Result<VcpuStop>) -> String {
    match result {
        Ok(VcpuStop::Exit(code)) => format!("the guest exited with code {code}"),
        Ok(VcpuStop::Stopped) => "the vCPU was stopped".into(),
        Ok(other) => format!("the vCPU stopped: {other:?}"),
        Err(nexus_kvm::Error::GuestCrash(report)) => format!("the guest crashed: {report}"),
        Err(e) => format!("the vCPU failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_records_the_working_set_when_there_is_none() {
        use RestoreMode::{Eager, Lazy, Prefetch, Uffd};
        assert_eq!(restore_mode(Prefetch, false), (Uffd, true));
        assert_eq!(restore_mode(Prefetch, true), (Prefetch, false));
        for mode in [Eager, Lazy, Uffd] {
            for recorded in [false, true] {
                assert_eq!(restore_mode(mode, recorded), (mode, false));
            }
        }
    }
}
