//! vCPUs and their run loop.
//!
//! A [`Vcpu`] runs on the thread that calls [`Vcpu::run`] (or on a thread of its own through
//! [`Vcpu::spawn`]). Port and MMIO exits are dispatched to the VM's buses; everything else
//! that ends the guest becomes a [`VcpuStop`] or a typed [`Error`](crate::Error).
//!
//! Stopping from another thread: [`VcpuHandle::stop`] raises a flag and interrupts `KVM_RUN`
//! with a real-time signal (whose handler does nothing), repeating the signal until the vCPU
//! thread has seen the flag, so a signal that lands just before `KVM_RUN` is never lost.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::bus::{Bus, BusAction};
use crate::memory::GuestMemoryMmap;
use crate::park::{self, ParkRequest};
use crate::stats::{self, StatsFd};
use crate::{Error, Result};

/// Offset from `SIGRTMIN` of the signal that kicks a vCPU out of `KVM_RUN`.
pub const KICK_SIGNAL_OFFSET: i32 = 0;

/// How a vCPU treats exits no device claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuConfig {
    /// Fail on an access to a port or MMIO address no device holds (micro-guests); when
    /// false such reads return all ones and writes are dropped (Linux probes many ports).
    pub strict_io: bool,
}

/// Why a vCPU stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked to exit with this code.
    Exit(u32),
    /// Another thread asked the vCPU to stop.
    Stopped,
    /// The guest halted with interrupts off and nothing can wake it.
    Halted,
}

/// The kind of access an unclaimed exit was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// `in` from a port.
    PortRead,
    /// `out` to a port.
    PortWrite,
    /// Load from an MMIO address.
    MmioRead,
    /// Store to an MMIO address.
    MmioWrite,
}

impl std::fmt::Display for AccessKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessKind::PortRead => "port read",
            AccessKind::PortWrite => "port write",
            AccessKind::MmioRead => "MMIO read",
            AccessKind::MmioWrite => "MMIO write",
        })
    }
}

/// What ended a guest abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashCause {
    /// A triple fault (micro-guests have no IDT, so any exception ends here).
    TripleFault,
    /// KVM could not enter the guest; the hardware reason code.
    FailEntry(u64),
    /// KVM reported an internal error (for example an instruction it cannot emulate).
    InternalError,
    /// An exit the VMM does not handle.
    UnhandledExit(&'static str),
}

impl std::fmt::Display for CrashCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashCause::TripleFault => f.write_str("triple fault"),
            CrashCause::FailEntry(r) => write!(f, "VM entry failed (reason {r:#x})"),
            CrashCause::InternalError => f.write_str("KVM internal error"),
            CrashCause::UnhandledExit(what) => write!(f, "unhandled exit ({what})"),
        }
    }
}

/// The guest's state when it crashed.
#[derive(Debug, Clone, Copy)]
pub struct CrashReport {
    /// What happened.
    pub cause: CrashCause,
    /// General-purpose registers (RIP among them).
    pub regs: kvm_regs,
    /// Control registers: CR2 holds the last page-fault address.
    pub cr2: u64,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.regs;
        write!(
            f,
            "{} at RIP {:#x} (RSP {:#x}, CR2 {:#x}, RAX {:#x}, RDI {:#x})",
            self.cause, r.rip, r.rsp, self.cr2, r.rax, r.rdi
        )
    }
}

/// Exits seen in user space, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// `in` exits.
    pub port_read: u64,
    /// `out` exits.
    pub port_write: u64,
    /// MMIO load exits.
    pub mmio_read: u64,
    /// MMIO store exits.
    pub mmio_write: u64,
    /// `KVM_RUN` returns interrupted by a signal.
    pub interrupted: u64,
    /// Anything else.
    pub other: u64,
}

impl ExitCounters {
    /// All user-space exits.
    pub fn total(&self) -> u64 {
        self.port_read
            + self.port_write
            + self.mmio_read
            + self.mmio_write
            + self.interrupted
            + self.other
    }
}

enum Outcome {
    Continue,
    Stop(VcpuStop),
    Unclaimed(AccessKind, u64),
    Crash(CrashCause),
    /// A device parked the access ([`crate::park`]): the MMIO read is still pending.
    Park(ParkRequest, PendingRead),
}

/// An MMIO read a parked vCPU still owes the guest: KVM completes it, with the bytes in the
/// vCPU's `kvm_run` page, on the next `KVM_RUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingRead {
    addr: u64,
    len: usize,
}

/// How a run that may park ended.
#[derive(Debug)]
pub(crate) enum Run {
    /// As [`Vcpu::run`] would have ended.
    Stop(VcpuStop),
    /// Parked on a device's request, with the read it owes.
    Parked(ParkRequest, PendingRead),
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    id: u64,
    fd: VcpuFd,
    memory: GuestMemoryMmap,
    pio: Arc<RwLock<Bus>>,
    mmio: Arc<RwLock<Bus>>,
    config: VcpuConfig,
    stop: Arc<AtomicBool>,
    counters: ExitCounters,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler) {
            log::error!("Cannot install the vCPU kick signal handler: {e}");
        }
    });
}

impl Vcpu {
    pub(crate) fn new(
        id: u64,
        fd: VcpuFd,
        memory: GuestMemoryMmap,
        pio: Arc<RwLock<Bus>>,
        mmio: Arc<RwLock<Bus>>,
        config: VcpuConfig,
    ) -> Self {
        install_kick_handler();
        Vcpu {
            id,
            fd,
            memory,
            pio,
            mmio,
            config,
            stop: Arc::new(AtomicBool::new(false)),
            counters: ExitCounters::default(),
        }
    }

    /// The vCPU index.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The KVM vCPU descriptor, for register set-up and snapshots.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Guest memory as this vCPU sees it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// User-space exits so far.
    pub fn exit_counters(&self) -> ExitCounters {
        self.counters
    }

    /// Opens KVM's binary statistics for this vCPU (counts every exit, including those that
    /// never reach user space).
    pub fn stats(&self) -> stats::Result<StatsFd> {
        StatsFd::open(&self.fd)
    }

    /// A flag that, once set, makes [`Vcpu::run`] return [`VcpuStop::Stopped`].
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Lets KVM finish the port or MMIO access the last exit reported (`KVM_RUN` with
    /// `immediate_exit` set, which completes it and returns at once without running the guest),
    /// so that the registers show the guest after that instruction. Call it before saving a
    /// stopped vCPU's state: otherwise a restored guest would repeat the access.
    pub fn complete_pending_io(&mut self) -> Result<()> {
        self.fd.set_kvm_immediate_exit(1);
        let result = self.fd.run().map(|_| ()).map_err(|e| e.errno());
        self.fd.set_kvm_immediate_exit(0);
        match result {
            Err(libc::EINTR) | Err(libc::EAGAIN) | Ok(()) => Ok(()),
            Err(errno) => Err(Error::Run(kvm_ioctls::Error::new(errno))),
        }
    }

    /// Runs the guest until it exits, halts, crashes, or is stopped.
    pub fn run(&mut self) -> Result<VcpuStop> {
        loop {
            let (mut request, pending) = match self.run_parkable()? {
                Run::Stop(stop) => return Ok(stop),
                Run::Parked(request, pending) => (request, pending),
            };
            // Only a pool worker's thread parks (`park::wait_mode`); on any other, wait here
            // for what the device asked for and repeat its read until it answers.
            loop {
                park::wait_blocking(&request);
                let _now = self
                    .stop
                    .load(Ordering::Acquire)
                    .then(|| park::ModeGuard::set(park::WaitMode::Now));
                match self.retry_read(pending) {
                    Some(again) => request = again,
                    None => break,
                }
            }
        }
    }

    /// Runs the guest until it exits, halts, crashes, is stopped, or a device parks it.
    pub(crate) fn run_parkable(&mut self) -> Result<Run> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(Run::Stop(VcpuStop::Stopped));
            }
            match self.run_once()? {
                Outcome::Continue => {}
                Outcome::Stop(stop) => return Ok(Run::Stop(stop)),
                Outcome::Park(request, pending) => return Ok(Run::Parked(request, pending)),
                Outcome::Unclaimed(kind, addr) => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(Error::UnexpectedExit { kind, addr, rip });
                }
                Outcome::Crash(cause) => {
                    return Err(Error::GuestCrash(Box::new(self.crash_report(cause))));
                }
            }
        }
    }

    /// Repeats the MMIO read a parked vCPU owes, writing the device's answer where KVM takes
    /// it on the next `KVM_RUN`; returns the device's new park request if it parks again.
    pub(crate) fn retry_read(&mut self, pending: PendingRead) -> Option<ParkRequest> {
        let bus = self.mmio.read().unwrap_or_else(|p| p.into_inner());
        let run = self.fd.get_kvm_run();
        // SAFETY: the vCPU's last exit was KVM_EXIT_MMIO (the read being repeated) and it has
        // not run since, so `mmio` is the member of the exit union KVM filled in; the kvm_run
        // page stays mapped for as long as the vCPU descriptor it belongs to.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = pending.len.min(mmio.data.len());
        // The read was claimed by a device the first time; buses do not change under a
        // running VM.
        bus.read(pending.addr, &mut mmio.data[..len]);
        park::take_request()
    }

    fn crash_report(&self, cause: CrashCause) -> CrashReport {
        let regs = self.fd.get_regs().unwrap_or_default();
        let cr2 = self.fd.get_sregs().map(|s: kvm_sregs| s.cr2).unwrap_or(0);
        CrashReport { cause, regs, cr2 }
    }

    fn run_once(&mut self) -> Result<Outcome> {
        let strict = self.config.strict_io;
        let counters = &mut self.counters;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                counters.interrupted += 1;
                self.fd.set_kvm_immediate_exit(0);
                return Ok(Outcome::Continue);
            }
            Err(e) => return Err(Error::Run(e)),
        };
        let outcome = match exit {
            VcpuExit::IoOut(port, data) => {
                counters.port_write += 1;
                let bus = self.pio.read().unwrap_or_else(|p| p.into_inner());
                match bus.write(u64::from(port), data) {
                    Some(BusAction::Continue) => Outcome::Continue,
                    Some(BusAction::Exit(code)) => Outcome::Stop(VcpuStop::Exit(code)),
                    None if strict => Outcome::Unclaimed(AccessKind::PortWrite, u64::from(port)),
                    None => Outcome::Continue,
                }
            }
            VcpuExit::IoIn(port, data) => {
                counters.port_read += 1;
                let bus = self.pio.read().unwrap_or_else(|p| p.into_inner());
                if bus.read(u64::from(port), data) {
                    Outcome::Continue
                } else if strict {
                    Outcome::Unclaimed(AccessKind::PortRead, u64::from(port))
                } else {
                    data.fill(0xff);
                    Outcome::Continue
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                counters.mmio_read += 1;
                let bus = self.mmio.read().unwrap_or_else(|p| p.into_inner());
                if bus.read(addr, data) {
                    match park::take_request() {
                        Some(request) => Outcome::Park(
                            request,
                            PendingRead {
                                addr,
                                len: data.len(),
                            },
                        ),
                        None => Outcome::Continue,
                    }
                } else if strict {
                    Outcome::Unclaimed(AccessKind::MmioRead, addr)
                } else {
                    data.fill(0xff);
                    Outcome::Continue
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                counters.mmio_write += 1;
                let bus = self.mmio.read().unwrap_or_else(|p| p.into_inner());
                match bus.write(addr, data) {
                    Some(BusAction::Continue) => Outcome::Continue,
                    Some(BusAction::Exit(code)) => Outcome::Stop(VcpuStop::Exit(code)),
                    None if strict => Outcome::Unclaimed(AccessKind::MmioWrite, addr),
                    None => Outcome::Continue,
                }
            }
            VcpuExit::Hlt => {
                counters.other += 1;
                Outcome::Stop(VcpuStop::Halted)
            }
            VcpuExit::Shutdown => {
                counters.other += 1;
                Outcome::Crash(CrashCause::TripleFault)
            }
            VcpuExit::FailEntry(reason, _) => {
                counters.other += 1;
                Outcome::Crash(CrashCause::FailEntry(reason))
            }
            VcpuExit::InternalError => {
                counters.other += 1;
                Outcome::Crash(CrashCause::InternalError)
            }
            VcpuExit::Intr => {
                counters.interrupted += 1;
                Outcome::Continue
            }
            other => {
                counters.other += 1;
                Outcome::Crash(CrashCause::UnhandledExit(exit_name(&other)))
            }
        };
        Ok(outcome)
    }

    /// Runs this vCPU on a thread of its own; the handle stops and joins it.
    pub fn spawn(self, name: String) -> Result<VcpuHandle> {
        self.spawn_with_exit(name, |_| {})
    }

    /// [`spawn`](Self::spawn), calling `on_exit` on the vCPU's thread with how its run
    /// ended, just before the thread ends (so that an event-driven caller learns of a guest
    /// that crashed or exited without polling the handle).
    pub fn spawn_with_exit(
        self,
        name: String,
        on_exit: impl FnOnce(&Result<VcpuStop>) + Send + 'static,
    ) -> Result<VcpuHandle> {
        let stop = self.stop_flag();
        let fd = Arc::new(Mutex::new(Some(self.fd.as_raw_fd())));
        let open = Arc::clone(&fd);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                crate::threads::thread_started(crate::threads::ThreadRole::Vcpu);
                let mut vcpu = self;
                // Declared after the vCPU, so dropped before it: on an unwind the handle
                // stops using the descriptor before the vCPU closes it.
                let _open = ForgetFd(open);
                let result = vcpu.run_catching();
                on_exit(&result);
                (vcpu, result)
            })
            .map_err(Error::Thread)?;
        Ok(VcpuHandle::new(stop, fd, Runner::Thread(thread)))
    }
}

impl Vcpu {
    /// [`run`](Self::run), with a panic under it (a device's exit handler) caught and
    /// returned as [`Error::RunPanicked`]: the panic ends this vCPU's run only, not its
    /// thread's owner nor the process. The panic's message has been printed by the panic
    /// hook already.
    pub(crate) fn run_catching(&mut self) -> Result<VcpuStop> {
        // AssertUnwindSafe: what a panic can leave half-changed is the vCPU's exit (KVM's
        // pending MMIO or port access) and the devices on its buses. The buses recover a
        // poisoned device lock (bus.rs), and the caller gets the error, not a result built
        // from that state: the VM is to be discarded, never resumed.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()))
            .unwrap_or_else(|payload| Err(Error::RunPanicked(panic_message(&*payload))))
    }
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Unknown => "unknown",
        VcpuExit::Exception => "exception",
        VcpuExit::Hypercall(_) => "hypercall",
        VcpuExit::Debug(_) => "debug",
        VcpuExit::IrqWindowOpen => "irq window open",
        VcpuExit::SystemEvent(..) => "system event",
        _ => "other",
    }
}

/// Forgets the vCPU descriptor a [`VcpuHandle`] may use, once the vCPU thread ends.
struct ForgetFd(Arc<Mutex<Option<RawFd>>>);

impl Drop for ForgetFd {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A running vCPU: on a thread of its own ([`Vcpu::spawn`]) or on a
/// [`VcpuPool`](crate::pool::VcpuPool).
#[derive(Debug)]
pub struct VcpuHandle {
    stop: Arc<AtomicBool>,
    /// The vCPU's descriptor while its run lasts (the thread or pool owns the vCPU).
    fd: Arc<Mutex<Option<RawFd>>>,
    runner: Option<Runner>,
}

/// What runs a [`VcpuHandle`]'s vCPU.
#[derive(Debug)]
pub(crate) enum Runner {
    /// A thread of its own.
    Thread(JoinHandle<(Vcpu, Result<VcpuStop>)>),
    /// A pool.
    Pool(crate::pool::Pooled),
}

impl VcpuHandle {
    pub(crate) fn new(
        stop: Arc<AtomicBool>,
        fd: Arc<Mutex<Option<RawFd>>>,
        runner: Runner,
    ) -> Self {
        VcpuHandle {
            stop,
            fd,
            runner: Some(runner),
        }
    }

    /// Opens KVM's binary statistics of the running vCPU, as [`Vcpu::stats`] does; fails
    /// with [`stats::Error::Open`] once the vCPU's run has ended.
    ///
    /// The statistics file is a descriptor of its own: a caller with many parked vCPUs can
    /// open it only around the work it measures (one `KVM_GET_STATS_FD` and two reads of the
    /// file's header and descriptors each time) instead of holding one per vCPU.
    pub fn stats(&self) -> stats::Result<StatsFd> {
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        match *fd {
            // Held locked: the run cannot end (and the descriptor close) meanwhile.
            Some(fd) => StatsFd::open(&fd),
            None => Err(stats::Error::Open(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the vCPU's run has ended",
            ))),
        }
    }

    /// Whether the vCPU's run has ended.
    pub fn is_finished(&self) -> bool {
        match &self.runner {
            None => true,
            Some(Runner::Thread(t)) => t.is_finished(),
            Some(Runner::Pool(p)) => p.is_finished(),
        }
    }

    /// Asks the vCPU to stop and waits for it; returns the vCPU and how its run ended.
    pub fn stop(mut self) -> Result<(Vcpu, Result<VcpuStop>)> {
        self.stop.store(true, Ordering::Release);
        match self.runner.take().expect("a handle is stopped once") {
            Runner::Thread(thread) => stop_thread(thread),
            Runner::Pool(pooled) => pooled.finish(true),
        }
    }

    /// Waits for the vCPU to end by itself.
    pub fn join(mut self) -> Result<(Vcpu, Result<VcpuStop>)> {
        match self.runner.take().expect("a handle is joined once") {
            Runner::Thread(thread) => thread.join().map_err(|_| Error::VcpuPanicked),
            Runner::Pool(pooled) => pooled.finish(false),
        }
    }
}

/// Kicks a vCPU thread whose stop flag is set until it ends, and joins it.
fn stop_thread(thread: JoinHandle<(Vcpu, Result<VcpuStop>)>) -> Result<(Vcpu, Result<VcpuStop>)> {
    while !thread.is_finished() {
        // Repeat: a signal delivered just before KVM_RUN would otherwise be lost.
        if let Err(e) = thread.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET) {
            if thread.is_finished() {
                break;
            }
            return Err(Error::Kick(e));
        }
        // A kicked vCPU usually ends within microseconds: look often, kick again after
        // 200 us.
        let kicked = std::time::Instant::now();
        while !thread.is_finished() && kicked.elapsed() < Duration::from_micros(200) {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    thread.join().map_err(|_| Error::VcpuPanicked)
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        let Some(runner) = self.runner.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        match runner {
            Runner::Thread(thread) => {
                while !thread.is_finished() {
                    if thread.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = thread.join();
            }
            Runner::Pool(pooled) => {
                let _ = pooled.finish(true);
            }
        }
    }
}
