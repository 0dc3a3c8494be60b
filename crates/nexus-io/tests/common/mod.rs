// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small vhost-user backend speaking the control socket protocol, and a guest driver that
//! drives the device through its registers, for the device tests.
//!
//! The backend echoes: for each chain it reads a `u32` token from the first readable
//! descriptor and writes `token + 1000` to the first writable one. It completes at once, or
//! holds completions until the test releases them.
//!
//! Like the real backend (`nexus-backend`'s `NexusDevice`), the echo backend keeps two rules
//! of `vhost-user-backend` without which a test loses kicks now and then:
//! - `handle_event` never fails: the library ends the vring worker thread for good on an
//!   error, and every later kick goes unanswered. A kick that epoll reported just before a
//!   reset's `GET_VRING_BASE` stopped the queue is handled after it, on a queue that is not
//!   ready: that is no error.
//! - The backend has an exit event, and a session ends by joining its daemon thread: dropping
//!   the daemon then ends its vring worker. Without one the worker of a dead session lives on,
//!   still polling the device's kick eventfd (which the device keeps across sessions), and
//!   takes the kicks meant for the next session's backend.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nexus_io::NexusIoTransport;
use nexus_kvm::BusDevice;
use nexus_kvm::virtio_mmio::{VIRTIO_F_VERSION_1, regs, status};
use std::os::fd::AsRawFd;
use vhost::vhost_user::Listener;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{
    ShutdownHandle, VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Polls `cond` until it holds or 5 s pass.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// What the backend saw.
#[derive(Default)]
pub struct Recorder {
    /// `(vm, tenant)` of every attach.
    pub attaches: Mutex<Vec<(String, String)>>,
    /// Every memory table: `(guest base, size)` of each region.
    pub memory_tables: Mutex<Vec<Vec<(u64, u64)>>>,
    /// Kick events handled.
    pub kicks: AtomicUsize,
    /// Chains popped and not yet completed: `(head, used length)`.
    pub pending: Mutex<Vec<(u16, u32)>>,
    /// Complete chains as soon as they are popped.
    pub auto_complete: AtomicBool,
    vring: Mutex<Option<VringRwLock>>,
}

impl Recorder {
    /// Completes the chain popped first and signals the call eventfd.
    pub fn complete_one(&self) {
        let (head, len) = self.pending.lock().unwrap().remove(0);
        let vring = self.vring.lock().unwrap().clone().expect("a kick came");
        vring.add_used(head, len).unwrap();
        vring.signal_used_queue().unwrap();
    }

    /// Completes every pending chain and signals the call eventfd.
    pub fn complete_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        let vring = self.vring.lock().unwrap().clone().expect("a kick came");
        for (head, len) in pending {
            vring.add_used(head, len).unwrap();
        }
        vring.signal_used_queue().unwrap();
    }
}

struct EchoBackend {
    recorder: Arc<Recorder>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl VhostUserBackendMut for EchoBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES | nexus_io::NEXUS_F_WAIT
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some(new_event_consumer_and_notifier(EventFlag::NONBLOCK).expect("an exit eventfd"))
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        let table = mem
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        self.recorder.memory_tables.lock().unwrap().push(table);
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        assert_eq!(device_event, 0);
        let vring = &vrings[0];
        self.recorder.kicks.fetch_add(1, Ordering::SeqCst);
        *self.recorder.vring.lock().unwrap() = Some(vring.clone());
        let mem = self.mem.as_ref().expect("a memory table").memory();
        // Never fail (see the module docs): a queue stopped under a late kick has nothing.
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(chains) => chains.collect(),
            Err(e) => {
                log::debug!("echo backend: kick on a stopped queue ignored: {e}");
                return Ok(());
            }
        };
        let mut done = Vec::new();
        for chain in chains {
            let head = chain.head_index();
            let descriptors: Vec<_> = chain.collect();
            let request = descriptors.iter().find(|d| !d.is_write_only()).unwrap();
            let response = descriptors.iter().find(|d| d.is_write_only()).unwrap();
            let token: u32 = mem.read_obj(request.addr()).unwrap();
            mem.write_obj(token + 1000, response.addr()).unwrap();
            done.push((head, 4));
        }
        if self.recorder.auto_complete.load(Ordering::SeqCst) {
            for (head, len) in done {
                vring.add_used(head, len).unwrap();
            }
            if let Err(e) = vring.signal_used_queue() {
                log::warn!("echo backend: cannot signal the call eventfd: {e}");
            }
        } else {
            self.recorder.pending.lock().unwrap().extend(done);
        }
        Ok(())
    }
}

/// A kick handled after `GET_VRING_BASE` stopped the queue (epoll reported it just before)
/// is no error: an error would end the vring worker, and the next session's kicks with it.
#[test]
fn the_echo_backend_takes_a_kick_on_a_stopped_queue() {
    let memory = GuestMemoryAtomic::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap(),
    );
    let vring = VringRwLock::new(memory.clone(), 256).unwrap();
    assert!(!vring.get_ref().get_queue().ready());
    let recorder = Arc::new(Recorder::default());
    recorder.auto_complete.store(true, Ordering::SeqCst);
    let mut backend = EchoBackend {
        recorder: Arc::clone(&recorder),
        mem: Some(memory),
    };
    backend
        .handle_event(0, EventSet::IN, &[vring], 0)
        .expect("a kick on a stopped queue is no error");
    assert_eq!(recorder.kicks.load(Ordering::SeqCst), 1);
}

/// One VM's vhost-user daemon, served by a thread of its own.
struct Session {
    /// The per-VM socket, to wake a thread still waiting for the frontend.
    path: PathBuf,
    /// Set when the session ends; read under `connection`'s lock.
    stopping: AtomicBool,
    /// `None` until the frontend connected.
    connection: Mutex<Option<ShutdownHandle>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    /// Serves `daemon` on `listener` in a thread of its own.
    fn start(
        path: PathBuf,
        mut listener: Listener,
        mut daemon: VhostUserDaemon<Arc<Mutex<EchoBackend>>>,
    ) -> Arc<Self> {
        let session = Arc::new(Session {
            path,
            stopping: AtomicBool::new(false),
            connection: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let serving = Arc::clone(&session);
        let thread = thread::spawn(move || {
            if daemon.start(&mut listener).is_err() {
                return;
            }
            {
                let mut connection = serving.connection.lock().unwrap();
                *connection = daemon.shutdown_handle();
                if serving.stopping.load(Ordering::SeqCst) {
                    daemon.request_shutdown();
                }
            }
            let _ = daemon.wait();
            // Dropping the daemon sends the exit event to its vring worker and joins it.
            drop(daemon);
        });
        *session.thread.lock().unwrap() = Some(thread);
        session
    }

    /// Ends the connection (or the wait for one) and returns once the daemon thread and its
    /// vring worker are gone, so that nothing of this session reads the kick eventfd any
    /// more.
    fn end(&self) {
        {
            let connection = self.connection.lock().unwrap();
            self.stopping.store(true, Ordering::SeqCst);
            // Still waiting for the connection to start: it will see `stopping`.
            if let Some(handle) = connection.as_ref() {
                handle.shutdown();
            }
        }
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            thread
                .join()
                .expect("the vhost-user daemon thread panicked");
        }
    }
}

struct Inner {
    dir: PathBuf,
    recorder: Arc<Recorder>,
    stopped: AtomicBool,
    next_socket: AtomicUsize,
    controls: Mutex<Vec<UnixStream>>,
    /// The VM sessions by VM id.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// A backend serving the control socket at `control_path`.
pub struct TestBackend {
    control_path: PathBuf,
    inner: Arc<Inner>,
    accept: Option<thread::JoinHandle<()>>,
}

impl TestBackend {
    /// Listens on `control_path`, putting per-VM sockets beside it.
    pub fn start(control_path: &Path, auto_complete: bool) -> Self {
        let _ = std::fs::remove_file(control_path);
        let listener = UnixListener::bind(control_path).unwrap();
        let recorder = Arc::new(Recorder::default());
        recorder
            .auto_complete
            .store(auto_complete, Ordering::SeqCst);
        let inner = Arc::new(Inner {
            dir: control_path.parent().unwrap().to_owned(),
            recorder,
            stopped: AtomicBool::new(false),
            next_socket: AtomicUsize::new(0),
            controls: Mutex::default(),
            sessions: Mutex::default(),
        });
        let accept_inner = Arc::clone(&inner);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_inner.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let stream = stream.unwrap();
                accept_inner
                    .controls
                    .lock()
                    .unwrap()
                    .push(stream.try_clone().unwrap());
                let inner = Arc::clone(&accept_inner);
                thread::spawn(move || serve_control(stream, &inner));
            }
        });
        TestBackend {
            control_path: control_path.to_owned(),
            inner,
            accept: Some(accept),
        }
    }

    /// What the backend saw.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.inner.recorder
    }

    /// Goes away as a crashed backend would: every connection closes, nothing listens.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.inner.stopped.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.control_path);
        accept.join().unwrap();
        let _ = std::fs::remove_file(&self.control_path);
        // The sessions first, each to its end: a control thread that saw its connection
        // close would detach them without anyone waiting for it.
        let sessions: Vec<_> = self.inner.sessions.lock().unwrap().drain().collect();
        for (_, session) in sessions {
            session.end();
        }
        for stream in self.inner.controls.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_control(stream: UnixStream, inner: &Arc<Inner>) {
    let mut writer = stream.try_clone().unwrap();
    let mut mine = Vec::new();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let (reply, connection) = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(request) => handle_request(&request, inner, &mut mine),
            Err(e) => (
                serde_json::json!({"ok": false, "error": format!("malformed line: {e}")}),
                None,
            ),
        };
        let line = format!("{reply}\n");
        let sent = match connection {
            // The VM's connection goes with the reply, as the real backend hands it over.
            Some(connection) => writer
                .send_with_fd(line.as_bytes(), connection.as_raw_fd())
                .map(|n| {
                    assert_eq!(n, line.len(), "a short reply write");
                })
                .map_err(std::io::Error::from),
            None => writer.write_all(line.as_bytes()),
        };
        if sent.is_err() {
            break;
        }
    }
    // The VMM went away: so do its VMs.
    for vm in mine {
        detach(inner, &vm);
    }
}

fn detach(inner: &Inner, vm: &str) -> bool {
    let session = inner.sessions.lock().unwrap().remove(vm);
    let Some(session) = session else {
        return false;
    };
    session.end();
    true
}

fn handle_request(
    request: &serde_json::Value,
    inner: &Arc<Inner>,
    mine: &mut Vec<String>,
) -> (serde_json::Value, Option<UnixStream>) {
    let vm = request["vm"].as_str().unwrap_or_default().to_owned();
    match request["op"].as_str() {
        Some("attach") => {
            let tenant = request["tenant"].as_str().unwrap_or_default().to_owned();
            if inner.sessions.lock().unwrap().contains_key(&vm) {
                let error = format!("VM {vm} is already attached");
                return (serde_json::json!({"ok": false, "error": error}), None);
            }
            let n = inner.next_socket.fetch_add(1, Ordering::SeqCst);
            let path = inner.dir.join(format!("vm-{vm}-{n}.sock"));
            let listener = Listener::new(&path, true).unwrap();
            let recorder = Arc::clone(&inner.recorder);
            recorder.attaches.lock().unwrap().push((vm.clone(), tenant));
            let backend = Arc::new(Mutex::new(EchoBackend {
                recorder,
                mem: None,
            }));
            let daemon = VhostUserDaemon::new(
                "echo-backend".into(),
                backend,
                GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            )
            .unwrap();
            let session = Session::start(path.clone(), listener, daemon);
            // The daemon serves one connection: ours, handed to the VMM with the reply. The
            // socket file goes at once, so nobody else can connect.
            let connection = UnixStream::connect(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            inner.sessions.lock().unwrap().insert(vm.clone(), session);
            mine.push(vm);
            (
                serde_json::json!({"ok": true, "connection": "fd"}),
                Some(connection),
            )
        }
        Some("detach") => {
            if detach(inner, &vm) {
                mine.retain(|v| *v != vm);
                (serde_json::json!({"ok": true}), None)
            } else {
                let error = format!("VM {vm} is not attached");
                (serde_json::json!({"ok": false, "error": error}), None)
            }
        }
        Some("hint") => (serde_json::json!({"ok": true}), None),
        _ => (
            serde_json::json!({"ok": false, "error": "unknown op"}),
            None,
        ),
    }
}

/// Ring layout in the window: descriptor table, driver area, device area, then buffers.
pub const DESC: u64 = 0x0;
/// Driver area offset.
pub const AVAIL: u64 = 0x1000;
/// Device area offset.
pub const USED: u64 = 0x2000;
/// Buffers offset: request at `+ head * 0x100`, response 0x80 further.
pub const BUFFERS: u64 = 0x1_0000;

/// A guest driver working the device's registers and the rings in the window.
pub struct Driver {
    pub transport: Arc<Mutex<NexusIoTransport>>,
    pub mem: GuestMemoryMmap,
    pub base: u64,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    submitted: u16,
    last_used: u16,
}

impl Driver {
    pub fn new(transport: Arc<Mutex<NexusIoTransport>>, mem: GuestMemoryMmap, base: u64) -> Self {
        Driver {
            transport,
            mem,
            base,
            size: 16,
            desc: base + DESC,
            avail: base + AVAIL,
            used: base + USED,
            submitted: 0,
            last_used: 0,
        }
    }

    pub fn read(&self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.transport.lock().unwrap().read(offset.into(), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write(&self, offset: u32, value: u32) {
        self.transport
            .lock()
            .unwrap()
            .write(offset.into(), &value.to_le_bytes());
    }

    pub fn config(&self, offset: u32) -> u32 {
        self.read(regs::CONFIG + offset)
    }

    pub fn config64(&self, offset: u32) -> u64 {
        let mut b = [0u8; 8];
        self.transport
            .lock()
            .unwrap()
            .read((regs::CONFIG + offset).into(), &mut b);
        u64::from_le_bytes(b)
    }

    pub fn status(&self) -> u32 {
        self.read(regs::STATUS)
    }

    /// Resets the device and sets it up up to (not including) `QueueReady`.
    pub fn negotiate(&mut self) {
        self.write(regs::STATUS, 0);
        let zero = vec![0u8; (USED + 0x1000) as usize];
        self.mem
            .write_slice(&zero, GuestAddress(self.base))
            .unwrap();
        self.submitted = 0;
        self.last_used = 0;
        self.write(regs::STATUS, status::ACKNOWLEDGE);
        self.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read(regs::DEVICE_FEATURES);
        self.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read(regs::DEVICE_FEATURES);
        assert_eq!(
            (u64::from(high) << 32) | u64::from(low),
            nexus_io::DEVICE_FEATURES
        );
        self.write(regs::DRIVER_FEATURES_SEL, 0);
        self.write(regs::DRIVER_FEATURES, nexus_io::NEXUS_F_WAIT as u32);
        self.write(regs::DRIVER_FEATURES_SEL, 1);
        self.write(regs::DRIVER_FEATURES, 1);
        self.write(regs::STATUS, 0b1011);
        assert_eq!(self.status(), 0b1011);
        self.write(regs::QUEUE_SEL, 0);
        assert_eq!(self.read(regs::QUEUE_NUM_MAX), 256);
        self.write(regs::QUEUE_NUM, u32::from(self.size));
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, self.desc),
            (regs::QUEUE_DRIVER_LOW, self.avail),
            (regs::QUEUE_DEVICE_LOW, self.used),
        ] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
    }

    /// The whole set-up; returns the status after `DRIVER_OK`.
    pub fn init(&mut self) -> u32 {
        self.negotiate();
        self.write(regs::QUEUE_READY, 1);
        assert_eq!(self.read(regs::QUEUE_READY), 1);
        self.write(regs::STATUS, 0b1111);
        self.status()
    }

    /// Makes a two-descriptor chain carrying `token` available; returns its head.
    pub fn submit(&mut self, token: u32) -> u16 {
        let head = (self.submitted % (self.size / 2)) * 2;
        let request = self.base + BUFFERS + u64::from(head) * 0x100;
        let response = request + 0x80;
        self.mem.write_obj(token, GuestAddress(request)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(response)).unwrap();
        let desc = |i: u16, addr: u64, flags: u16, next: u16| {
            let at = GuestAddress(self.desc + u64::from(i) * 16);
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(4u32, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
        };
        desc(head, request, 1, head + 1); // NEXT
        desc(head + 1, response, 2, 0); // WRITE
        let slot = self.avail + 4 + 2 * u64::from(self.submitted % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.submitted = self.submitted.wrapping_add(1);
        self.mem
            .store(
                self.submitted,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        head
    }

    /// The response token of the chain at `head`.
    pub fn response(&self, head: u16) -> u32 {
        let at = self.base + BUFFERS + u64::from(head) * 0x100 + 0x80;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The doorbell as KVM delivers it with the ioeventfd: a signal on the kick eventfd.
    pub fn kick_eventfd(&self) -> EventFd {
        self.transport
            .lock()
            .unwrap()
            .device()
            .kick_eventfd()
            .try_clone()
            .unwrap()
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Records that completions up to `idx` are consumed (`used_event`).
    pub fn set_used_event(&mut self, idx: u16) {
        self.last_used = idx;
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem
            .store(idx, GuestAddress(at), Ordering::Release)
            .unwrap();
    }

    /// Completions consumed so far.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// One WAIT read, timed.
    pub fn wait(&self) -> (u32, Duration) {
        let start = Instant::now();
        let value = self.config(nexus_io::device::config::WAIT);
        (value, start.elapsed())
    }

    /// Reads WAIT until it reports a used index past `used_event` (or the backend is
    /// unavailable); returns that value and the longest single read.
    pub fn wait_for_completion(&self) -> (u32, Duration) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut longest = Duration::ZERO;
        loop {
            let (value, took) = self.wait();
            longest = longest.max(took);
            if value != u32::from(self.last_used) {
                return (value, longest);
            }
            assert!(Instant::now() < deadline, "no completion within 5 s");
        }
    }
}
