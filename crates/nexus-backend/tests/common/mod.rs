// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test harness: the backend as a real process, its control socket, and a guest + VMM
//! stand-in that acts as the vhost-user frontend with a memfd-backed I/O window and drives a
//! split virtqueue in it, building requests with nexus-ring.

#![allow(dead_code)]

pub mod hostile;

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use nexus_ring::{
    ChainDescriptor, Command, REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE, RequestLayout,
    ResponseHeader, SegmentRef,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Guest-physical base of the test windows (the micro-guest ABI's).
pub const WINDOW_BASE: u64 = 0xC000_0000;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Buffers start here (window offset).
const HEAP: u64 = 0x4000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// How long to wait for anything.
pub const WAIT: Duration = Duration::from_secs(20);

/// The backend binary, running.
pub struct BackendProcess {
    child: Child,
    pub control: PathBuf,
    log: PathBuf,
}

impl BackendProcess {
    /// Starts `nexus-backend --listen <dir>/control.sock` with `args` and `env`.
    pub fn start(dir: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        Self::start_at(dir.join("control.sock"), dir.join("backend.log"), args, env)
    }

    /// Starts `nexus-backend --listen <control>` with `args` and `env`, its log at `log`.
    pub fn start_at(
        control: PathBuf,
        log: PathBuf,
        args: &[String],
        env: &[(&str, String)],
    ) -> Self {
        let mut process = Process::new(env!("CARGO_BIN_EXE_nexus-backend"));
        process
            .arg("--listen")
            .arg(&control)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        for (name, value) in env {
            process.env(name, value);
        }
        let child = process.spawn().expect("start nexus-backend");
        let backend = Self {
            child,
            control,
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&backend.control).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "backend did not start:\n{}",
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// The backend's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The backend's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's open descriptors now.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// The process's threads now.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// The process's mappings of memfds named `name` now (`/proc/<pid>/maps`).
    pub fn memfd_mappings(&self, name: &str) -> usize {
        let needle = format!("/memfd:{name} ");
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&needle) || line.ends_with(&format!("/memfd:{name}")))
            .count()
    }

    /// The process's user + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the backend's /proc stat");
        // The fields after the command name, which ends with the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf(3) reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks as f64 / hz
    }

    /// Lines in the backend's log so far.
    pub fn log_lines(&self) -> usize {
        self.log().lines().count()
    }

    /// A control connection.
    pub fn connect(&self) -> Control {
        Control::connect(&self.control)
    }

    /// SIGKILL: the backend dies at once, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < WAIT,
                "backend did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("NEXUS_TEST_LOG").is_some() {
            eprintln!("--- backend log ---\n{}", self.log());
        }
    }
}

/// A control connection (JSON lines; the attach reply carries the VM's connection).
pub struct Control {
    stream: UnixStream,
    buffer: Vec<u8>,
    files: VecDeque<File>,
    /// Event lines received so far (`{"event":…}`), in order.
    pub events: Vec<serde_json::Value>,
}

impl Control {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            stream,
            buffer: Vec::new(),
            files: VecDeque::new(),
            events: Vec::new(),
        }
    }

    /// The next line from the backend (events included).
    pub fn next_line(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad line {:?}: {e}", String::from_utf8_lossy(&line))
                });
            }
            let mut chunk = [0u8; 65536];
            let (n, file) = self.stream.recv_with_fd(&mut chunk).expect("control read");
            assert!(n > 0, "the backend closed the control connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            self.files.extend(file);
        }
    }

    /// Sends one line, returns the reply (event lines met on the way are kept in `events`).
    pub fn send(&mut self, line: &str) -> serde_json::Value {
        self.files.clear();
        (&self.stream).write_all(line.as_bytes()).unwrap();
        (&self.stream).write_all(b"\n").unwrap();
        loop {
            let reply = self.next_line();
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            return reply;
        }
    }

    /// Writes `bytes` as they are (a request line and what follows it).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        (&self.stream).write_all(bytes).unwrap();
    }

    /// The next `n` raw bytes (what follows a reply line with a binary result).
    pub fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buffer.len() < n {
            let mut chunk = [0u8; 65536];
            let (got, file) = self.stream.recv_with_fd(&mut chunk).expect("control read");
            assert!(got > 0, "the backend closed the control connection");
            self.buffer.extend_from_slice(&chunk[..got]);
            self.files.extend(file);
        }
        self.buffer.drain(..n).collect()
    }

    /// Whether the backend closed the connection (nothing more to read).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1];
        matches!(self.stream.recv_with_fd(&mut chunk), Ok((0, _)))
    }

    /// Waits for an event line, up to [`WAIT`].
    pub fn next_event(&mut self) -> serde_json::Value {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        let reply = self.next_line();
        assert!(
            reply.get("event").is_some(),
            "expected an event, got {reply}"
        );
        reply
    }

    /// Attaches `vm` to `tenant`; the VM's vhost-user connection (passed with the reply).
    pub fn attach(&mut self, vm: &str, tenant: &str) -> UnixStream {
        let reply = self.send(&format!(
            r#"{{"op":"attach","vm":"{vm}","tenant":"{tenant}"}}"#
        ));
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["connection"], "fd", "{reply}");
        let file = self
            .files
            .pop_front()
            .expect("a connection with the attach reply");
        UnixStream::from(std::os::fd::OwnedFd::from(file))
    }
}

/// One request, as the guest lays it out.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub command: Command,
    pub key: &'a [u8],
    pub meta: &'a [u8],
    /// Payload segments, in order.
    pub payload: &'a [&'a [u8]],
    /// Meta capacity of the response head.
    pub response_meta: u32,
    /// Sizes of the response payload buffers.
    pub response_payload: &'a [u32],
}

impl<'a> Call<'a> {
    pub fn new(command: Command) -> Self {
        Self {
            command,
            key: b"",
            meta: b"",
            payload: &[],
            response_meta: 0,
            response_payload: &[],
        }
    }
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = key;
        self
    }
    pub fn meta(mut self, meta: &'a [u8]) -> Self {
        self.meta = meta;
        self
    }
    pub fn payload(mut self, payload: &'a [&'a [u8]]) -> Self {
        self.payload = payload;
        self
    }
    pub fn response_meta(mut self, n: u32) -> Self {
        self.response_meta = n;
        self
    }
    pub fn buffers(mut self, sizes: &'a [u32]) -> Self {
        self.response_payload = sizes;
        self
    }
}

/// A checked answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub header: ResponseHeader,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
    pub used_len: u32,
}

impl Answer {
    pub fn meta_text(&self) -> String {
        String::from_utf8_lossy(&self.meta).into_owned()
    }
}

/// A request on the queue.
pub struct Pending {
    head: u16,
    id: u64,
    response_head: SegmentRef,
    response_payload: Vec<SegmentRef>,
}

/// The guest and its VMM: an I/O window shared with the backend over vhost-user, and a
/// split virtqueue driver inside it.
pub struct GuestVm {
    pub mem: GuestMemoryMmap,
    frontend: Frontend,
    kick: EventFd,
    call: EventFd,
    size: u64,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    done: HashMap<u16, u32>,
    heap: u64,
    outstanding: usize,
    next_id: u64,
}

impl GuestVm {
    /// Sets up a VM with a `size`-byte window on `connection` (from an attach).
    pub fn connect(connection: UnixStream, size: u64) -> Self {
        Self::connect_window(connection, memfd(size), 0, size)
    }

    /// Sets up a VM whose window is `size` bytes of `file` at `offset` (the memory table's
    /// `mmap_offset`), on `connection`.
    pub fn connect_window(connection: UnixStream, file: File, offset: u64, size: u64) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(WINDOW_BASE),
            size as usize,
            Some(FileOffset::new(file, offset)),
        )])
        .unwrap();

        let mut frontend = handshake(connection);
        let region = mem.find_region(GuestAddress(WINDOW_BASE)).unwrap();
        let host = |offset: u64| {
            mem.get_host_address(GuestAddress(WINDOW_BASE + offset))
                .unwrap() as u64
        };
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        assert_eq!(info.mmap_offset, offset);
        frontend.set_mem_table(&[info]).unwrap();
        frontend.set_vring_num(0, QUEUE_SIZE).unwrap();
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host(DESC_TABLE),
                    used_ring_addr: host(USED_RING),
                    avail_ring_addr: host(AVAIL_RING),
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(0, 0).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        frontend.set_vring_call(0, &call).unwrap();
        frontend.set_vring_kick(0, &kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
        Self {
            mem,
            frontend,
            kick,
            call,
            size,
            next_avail: 0,
            last_used: 0,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
            done: HashMap::new(),
            heap: HEAP,
            outstanding: 0,
            next_id: 1,
        }
    }

    /// The end of the window (first address after it).
    pub fn window_end(&self) -> u64 {
        WINDOW_BASE + self.size
    }

    /// Allocates `len` bytes in the window (64-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.heap;
        self.heap = (at + len.max(1) + 63) & !63;
        assert!(self.heap <= self.size, "test window exhausted");
        WINDOW_BASE + at
    }

    /// Writes window bytes at `addr`.
    pub fn write_window(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Allocates and fills a segment.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> SegmentRef {
        let at = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        SegmentRef::new(at, bytes.len() as u32)
    }

    /// Reads window bytes.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    /// Rings the doorbell.
    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// Writes descriptor `index` of the table as given (no checks: for hostile tests).
    pub fn write_descriptor(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(WINDOW_BASE + DESC_TABLE + u64::from(index) * 16);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Makes `heads` available after what was submitted so far, then sets the available
    /// index `extra` further still, and kicks (no checks: for hostile tests).
    pub fn publish_raw(&mut self, heads: &[u16], extra: u16) {
        for (i, head) in heads.iter().enumerate() {
            let slot = u64::from(self.next_avail.wrapping_add(i as u16) % QUEUE_SIZE);
            self.mem
                .write_obj(*head, GuestAddress(WINDOW_BASE + AVAIL_RING + 4 + 2 * slot))
                .unwrap();
        }
        fence(Ordering::SeqCst);
        let idx = self
            .next_avail
            .wrapping_add(heads.len() as u16)
            .wrapping_add(extra);
        self.mem
            .write_obj(idx, GuestAddress(WINDOW_BASE + AVAIL_RING + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        self.kick.write(1).unwrap();
    }

    /// The device reset of a guest whose queue broke: the ring is stopped
    /// (`GET_VRING_BASE`), emptied and started again from index 0.
    pub fn reset_ring(&mut self) {
        self.frontend.get_vring_base(0).unwrap();
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(WINDOW_BASE))
            .unwrap();
        self.start_ring();
        self.next_avail = 0;
        self.last_used = 0;
        self.free = (0..QUEUE_SIZE).rev().collect();
        self.chains.clear();
        self.done.clear();
        self.outstanding = 0;
        self.heap = HEAP;
    }

    fn start_ring(&mut self) {
        let host = |mem: &GuestMemoryMmap, offset: u64| {
            mem.get_host_address(GuestAddress(WINDOW_BASE + offset))
                .unwrap() as u64
        };
        let frontend = &mut self.frontend;
        frontend.set_vring_num(0, QUEUE_SIZE).unwrap();
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host(&self.mem, DESC_TABLE),
                    used_ring_addr: host(&self.mem, USED_RING),
                    avail_ring_addr: host(&self.mem, AVAIL_RING),
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(0, 0).unwrap();
        frontend.set_vring_call(0, &self.call).unwrap();
        frontend.set_vring_kick(0, &self.kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
    }

    /// Puts a raw chain on the queue and kicks; returns its head.
    pub fn submit_raw(&mut self, chain: &[ChainDescriptor]) -> u16 {
        assert!(!chain.is_empty() && chain.len() <= self.free.len());
        let indexes: Vec<u16> = (0..chain.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, (descriptor, index)) in chain.iter().zip(&indexes).enumerate() {
            let mut flags = if descriptor.writable { F_WRITE } else { 0 };
            let next = match indexes.get(i + 1) {
                Some(next) => {
                    flags |= F_NEXT;
                    *next
                }
                None => 0,
            };
            let at = GuestAddress(WINDOW_BASE + DESC_TABLE + u64::from(*index) * 16);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&descriptor.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&descriptor.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, at).unwrap();
        }
        let head = indexes[0];
        self.chains.insert(head, indexes);
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(WINDOW_BASE + AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(WINDOW_BASE + AVAIL_RING + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        self.kick.write(1).unwrap();
        self.outstanding += 1;
        head
    }

    /// Waits until chain `head` is used; returns its used length.
    pub fn wait_raw(&mut self, head: u16) -> u32 {
        let start = Instant::now();
        loop {
            fence(Ordering::SeqCst);
            let used: u16 = self
                .mem
                .read_obj(GuestAddress(WINDOW_BASE + USED_RING + 2))
                .unwrap();
            while self.last_used != used {
                let slot = u64::from(self.last_used % QUEUE_SIZE);
                let at = WINDOW_BASE + USED_RING + 4 + 8 * slot;
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                let id = id as u16;
                let indexes = self
                    .chains
                    .remove(&id)
                    .expect("used a chain we did not submit");
                self.free.extend(indexes);
                self.done.insert(id, len);
                self.outstanding -= 1;
                self.last_used = self.last_used.wrapping_add(1);
            }
            if let Some(len) = self.done.remove(&head) {
                return len;
            }
            assert!(start.elapsed() < WAIT, "chain {head} was never used");
            let mut poll = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one valid descriptor for at most 100 ms.
            unsafe { libc::poll(&mut poll, 1, 100) };
            let _ = self.call.read();
        }
    }

    /// Lays out `call` in the window and submits it.
    pub fn submit(&mut self, call: &Call<'_>) -> Pending {
        if self.outstanding == 0 {
            // Nothing in flight: reuse the window from the start.
            self.heap = HEAP;
        }
        let id = self.next_id;
        self.next_id += 1;
        let header = self.alloc(REQUEST_HEADER_SIZE as u64);
        let key = (!call.key.is_empty()).then(|| self.put_bytes(call.key));
        let meta = (!call.meta.is_empty()).then(|| self.put_bytes(call.meta));
        let payload: Vec<SegmentRef> = call.payload.iter().map(|p| self.put_bytes(p)).collect();
        let head_len = RESPONSE_HEADER_SIZE as u32 + call.response_meta;
        let response_head = SegmentRef::new(self.alloc(head_len.into()), head_len);
        let response_payload: Vec<SegmentRef> = call
            .response_payload
            .iter()
            .map(|&len| SegmentRef::new(self.alloc(len.into()), len))
            .collect();
        let layout = RequestLayout {
            header,
            key,
            meta,
            payload: &payload,
            response_head,
            response_payload: &response_payload,
        };
        let bytes = layout.header(id, call.command).unwrap().to_bytes().unwrap();
        self.mem.write_slice(&bytes, GuestAddress(header)).unwrap();
        // Poison the response head so a missing answer shows.
        self.mem
            .write_slice(
                &[0xEE; RESPONSE_HEADER_SIZE],
                GuestAddress(response_head.addr),
            )
            .unwrap();
        let chain: Vec<ChainDescriptor> = layout.descriptors().collect();
        let head = self.submit_raw(&chain);
        Pending {
            head,
            id,
            response_head,
            response_payload,
        }
    }

    /// Waits for a submitted request and checks its answer as a guest must (protocol §4.2).
    pub fn wait(&mut self, pending: Pending) -> Answer {
        let used_len = self.wait_raw(pending.head);
        let raw = self.read(pending.response_head.addr, RESPONSE_HEADER_SIZE);
        let header = ResponseHeader::decode(&raw)
            .unwrap_or_else(|e| panic!("bad response header {raw:02x?}: {e}"));
        let capacity: u32 = pending.response_payload.iter().map(|s| s.len).sum();
        header
            .check_reply(
                pending.id,
                pending.response_head.len - RESPONSE_HEADER_SIZE as u32,
                capacity,
            )
            .unwrap();
        assert_eq!(used_len, header.used_len().unwrap(), "used length");
        let meta = self.read(
            pending.response_head.addr + RESPONSE_HEADER_SIZE as u64,
            header.meta_len as usize,
        );
        let mut payload = Vec::new();
        let mut left = header.payload_len as usize;
        for segment in &pending.response_payload {
            let take = left.min(segment.len as usize);
            payload.extend(self.read(segment.addr, take));
            left -= take;
        }
        Answer {
            header,
            meta,
            payload,
            used_len,
        }
    }

    /// Submits `call` and waits for its answer.
    /// Whether the backend closed the VM's connection.
    pub fn frontend_closed(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.frontend.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, borrowed for the call; the descriptor is the frontend's.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n == 1 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
    }

    pub fn call(&mut self, call: &Call<'_>) -> Answer {
        let pending = self.submit(call);
        self.wait(pending)
    }

    /// The vhost-user frontend (for GET_VRING_BASE and the like).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
}

/// A fresh memfd named `nexus-window`, `size` bytes long.
pub fn memfd(size: u64) -> File {
    let name = CString::new("nexus-window").unwrap();
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// The vhost-user handshake up to the memory table: owner, features, `REPLY_ACK` (acks are
/// asked for only with `Frontend::set_hdr_flags(NEED_REPLY)`).
pub fn handshake(connection: UnixStream) -> Frontend {
    let mut frontend = Frontend::from_stream(connection, 1);
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    assert_eq!(features, nexus_backend::FEATURES);
    frontend.set_features(features).unwrap();
    let protocol = frontend.get_protocol_features().unwrap();
    frontend
        .set_protocol_features(protocol & VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    frontend
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// Serves `root` as an S3 endpoint on 127.0.0.1 (a real S3-compatible server, s3s-fs) that
/// accepts the credentials `access`/`secret`: the runtime running it and the port.
pub fn start_s3(root: &Path, access: &str, secret: &str) -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let filesystem = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(filesystem);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access, secret));
    let service = builder.build();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    (runtime, port)
}
