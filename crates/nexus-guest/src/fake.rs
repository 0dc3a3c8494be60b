//! A fake nexus-io device for host tests: a virtio-mmio register block and a backend over the
//! same host memory as the driver's window.
//!
//! The fake decodes every chain with `nexus-ring`'s [`Decoder`] against the window — exactly
//! what the real backend does — and answers well-formed requests from a small in-memory
//! object store (GET, PUT, HEAD, DELETE, LIST), an echoing INVOKE and HTTP, FLUSH, LOG and a
//! queue of invocations for NEXT/COMPLETE. Refused chains get `INVALID_REQUEST` (or
//! `UNSUPPORTED_VERSION`) when they have a response head in the window, used length 0 when
//! not. Knobs select when chains are processed (on the doorbell, or on a WAIT read), simulate
//! WAIT timeouts, a lost backend, out-of-order completion and corrupt responses.

use std::alloc::{Layout, alloc_zeroed};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use nexus_ring::limits::MAX_LIST_ENTRIES;
use nexus_ring::records::{EntryList, HeaderList, InvocationContext, ObjectEntry};
use nexus_ring::{
    ChainDescriptor, Command, Decoder, IoWindow, Outcome, RESPONSE_HEADER_SIZE, Request,
    ResponseHeader, ResponseTarget, SegmentRef, Status,
};

use crate::client::Nexus;
use nexus_ring::device::{self as contract, config, wait};
use nexus_ring::mmio::{self, regs, status};

use crate::mmio::{Registers, features};
use crate::window::WindowMapping;

/// Guest-physical base of the fake window.
pub(crate) const WINDOW_BASE: u64 = 0xC000_0000;

/// Raw access to the window by guest-physical address, as the backend has it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mem {
    ptr: *mut u8,
    window: IoWindow,
}

impl Mem {
    pub(crate) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let range = self
            .window
            .offsets(SegmentRef::new(addr, len as u32))
            .expect("read inside the window");
        let mut out = vec![0u8; len];
        // SAFETY: inside the leaked host memory behind the window (checked above); the driver
        // holds no reference into chains in flight.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(range.start), out.as_mut_ptr(), len) };
        out
    }

    pub(crate) fn write(&self, addr: u64, data: &[u8]) {
        let range = self
            .window
            .offsets(SegmentRef::new(addr, data.len() as u32))
            .expect("write inside the window");
        // SAFETY: as for `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(range.start), data.len())
        };
    }

    fn u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.read(addr, 2).try_into().unwrap())
    }

    fn u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read(addr, 4).try_into().unwrap())
    }

    fn u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr, 8).try_into().unwrap())
    }

    pub(crate) fn segment(&self, segment: SegmentRef) -> Vec<u8> {
        self.read(segment.addr, segment.len as usize)
    }
}

/// A backend answer; the fake fills in the lengths.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: Status,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
    pub total: u64,
    pub detail: u64,
}

impl Answer {
    pub(crate) fn ok() -> Self {
        Self::status(Status::Ok, "")
    }

    pub(crate) fn status(status: Status, message: &str) -> Self {
        Self {
            status,
            meta: message.as_bytes().to_vec(),
            payload: Vec::new(),
            total: 0,
            detail: 0,
        }
    }
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub descriptors: Vec<ChainDescriptor>,
    pub decoded: Result<Request, nexus_ring::Error>,
    pub key: Vec<u8>,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
    pub used_len: u32,
}

/// How to spoil the next answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corrupt {
    WrongId,
    BadMagic,
    MetaBeyondCapacity,
    PayloadBeyondCapacity,
    UsedLenZero,
    UsedIndexJump,
}

/// The invocation the fake's NEXT hands out.
#[derive(Debug, Clone)]
pub(crate) struct FakeInvocation {
    pub number: u64,
    pub function: String,
    pub request_id: String,
    pub output_key: Option<String>,
    pub input: Vec<u8>,
}

/// The fake backend's state.
#[derive(Debug, Default)]
pub(crate) struct Backend {
    pub objects: BTreeMap<String, Vec<u8>>,
    pub write_behind_puts: Vec<String>,
    pub fail_uploads: Option<String>,
    pub logs: Vec<(u64, String)>,
    pub invocations: VecDeque<FakeInvocation>,
    pub completed: Vec<(u64, Outcome, Vec<u8>)>,
    /// Invocations completed with flag `STORED`.
    pub stored: Vec<u64>,
    /// Entries per LIST page.
    pub page_size: usize,
}

/// The fake device's state, shared with the test.
#[derive(Debug)]
pub(crate) struct FakeState {
    pub mem: Mem,
    pub magic: u32,
    pub device_id: u32,
    pub offered: u64,
    pub driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    pub refuse_features_ok: bool,
    pub status: u32,
    pub status_writes: Vec<u32>,
    queue_sel: u32,
    pub queue_num_max: u32,
    pub queue_num: u32,
    pub queue_ready: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub config_window: (u64, u64),
    pub max_payload: u32,
    /// Connected to the backend now.
    pub connected: bool,
    /// The backend stopped serving the queue: WAIT says `NEEDS_RESET` until a reset.
    pub broken: bool,
    /// Whether a `DRIVER_OK` (re)connects.
    pub backend_present: bool,
    /// Process chains on the doorbell (else on WAIT reads).
    pub process_on_notify: bool,
    /// WAIT reads that time out (return the unchanged index) before chains are processed.
    pub wait_timeouts: u32,
    /// Complete a batch of chains in reverse order.
    pub reverse: bool,
    pub corrupt: Option<Corrupt>,
    last_avail: u16,
    pub(crate) used_idx: u16,
    pub notifies: u32,
    pub wait_reads: u32,
    /// `used_event` as the device saw it at each WAIT read.
    pub used_event_at_wait: Vec<u16>,
    pub resets: u32,
    pub seen: Vec<Seen>,
    pub backend: Backend,
    pub unexpected: Vec<String>,
}

/// The fake device's register block; clones share the state.
#[derive(Debug, Clone)]
pub(crate) struct FakeDevice(pub Rc<RefCell<FakeState>>);

impl FakeDevice {
    /// A fake device with a window of `size` bytes (leaked host memory), and the mapping of
    /// that window for the driver.
    pub(crate) fn new(size: usize) -> (Self, WindowMapping) {
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size; leaked on purpose, so it outlives every driver and buffer.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        let window = IoWindow::new(WINDOW_BASE, size as u64).unwrap();
        // SAFETY: the leaked block is valid for `size` bytes forever; only the driver (through
        // this mapping) and the fake device (through raw copies, while chains are in flight
        // or on rings) touch it.
        let mapping = unsafe { WindowMapping::new(ptr, WINDOW_BASE, size as u64) }.unwrap();
        let state = FakeState {
            mem: Mem { ptr, window },
            magic: mmio::MAGIC,
            device_id: contract::DEVICE_ID,
            offered: features::VIRTIO_F_VERSION_1
                | features::NEXUS_F_WAIT
                | features::NEXUS_F_WRITE_BEHIND,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            refuse_features_ok: false,
            status: 0,
            status_writes: Vec::new(),
            queue_sel: 0,
            queue_num_max: 256,
            queue_num: 0,
            queue_ready: 0,
            desc: 0,
            avail: 0,
            used: 0,
            config_window: (WINDOW_BASE, size as u64),
            max_payload: 1 << 20,
            connected: false,
            broken: false,
            backend_present: true,
            process_on_notify: true,
            wait_timeouts: 0,
            reverse: false,
            corrupt: None,
            last_avail: 0,
            used_idx: 0,
            notifies: 0,
            wait_reads: 0,
            used_event_at_wait: Vec::new(),
            resets: 0,
            seen: Vec::new(),
            backend: Backend {
                page_size: 1000,
                ..Backend::default()
            },
            unexpected: Vec::new(),
        };
        (Self(Rc::new(RefCell::new(state))), mapping)
    }

    pub(crate) fn state(&self) -> std::cell::RefMut<'_, FakeState> {
        self.0.borrow_mut()
    }
}

/// A client over a fresh fake device with a 1 MiB window.
pub(crate) fn nexus() -> (Nexus<FakeDevice>, FakeDevice) {
    nexus_with(1 << 20, |_| {})
}

/// A client over a fresh fake device with a window of `size` bytes, `setup` applied first.
pub(crate) fn nexus_with(
    size: usize,
    setup: impl FnOnce(&mut FakeState),
) -> (Nexus<FakeDevice>, FakeDevice) {
    let (device, mapping) = FakeDevice::new(size);
    setup(&mut device.state());
    let nexus = Nexus::new(device.clone(), mapping).expect("device comes up");
    (nexus, device)
}

impl FakeState {
    fn queue_size(&self) -> u16 {
        self.queue_num as u16
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queue_num = 0;
        self.queue_ready = 0;
        self.desc = 0;
        self.avail = 0;
        self.used = 0;
        self.last_avail = 0;
        self.used_idx = 0;
        self.connected = false;
        self.broken = false;
        self.resets += 1;
    }

    fn used_event(&self) -> u16 {
        self.mem
            .u16(self.avail + 4 + 2 * u64::from(self.queue_size()))
    }

    fn write_status(&mut self, value: u32) {
        self.status_writes.push(value);
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = !self.refuse_features_ok
                && self.driver_features & features::VIRTIO_F_VERSION_1 != 0
                && self.driver_features & !self.offered == 0;
            if !ok {
                value &= !status::FEATURES_OK;
            }
        }
        if value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            self.connected = self.backend_present;
        }
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
    }

    fn queue_ready(&mut self, value: u32) {
        if value != 1 {
            self.queue_ready = 0;
            return;
        }
        let n = u64::from(self.queue_num);
        let window = self.mem.window;
        let inside = n > 0
            && n <= u64::from(self.queue_num_max)
            && window.contains(self.desc, 16 * n)
            && window.contains(self.avail, 6 + 2 * n)
            && window.contains(self.used, 6 + 8 * n);
        if inside {
            self.queue_ready = 1;
        } else {
            self.status |= status::DEVICE_NEEDS_RESET;
        }
    }

    /// The descriptors of the chain at `head`, as a device walks them (bounded).
    fn walk(&self, head: u16) -> Vec<ChainDescriptor> {
        let mut out = Vec::new();
        let mut index = head;
        for _ in 0..64 {
            if index >= self.queue_size() {
                break;
            }
            let at = self.desc + 16 * u64::from(index);
            let flags = self.mem.u16(at + 12);
            out.push(ChainDescriptor {
                addr: self.mem.u64(at),
                len: self.mem.u32(at + 8),
                writable: flags & 2 != 0,
            });
            if flags & 1 == 0 {
                break;
            }
            index = self.mem.u16(at + 14);
        }
        out
    }

    fn push_used(&mut self, id: u32, len: u32) {
        let n = u64::from(self.queue_size());
        let at = self.used + 4 + 8 * (u64::from(self.used_idx) % n);
        self.mem.write(at, &id.to_le_bytes());
        self.mem.write(at + 4, &len.to_le_bytes());
        self.used_idx = self.used_idx.wrapping_add(1);
        self.mem.write(self.used + 2, &self.used_idx.to_le_bytes());
    }

    /// Processes every available chain.
    fn process(&mut self) {
        if self.queue_ready != 1 {
            return;
        }
        let avail_idx = self.mem.u16(self.avail + 2);
        let mut done = Vec::new();
        while self.last_avail != avail_idx {
            let slot =
                self.avail + 4 + 2 * (u64::from(self.last_avail) % u64::from(self.queue_size()));
            let head = self.mem.u16(slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            let used_len = self.serve(head);
            done.push((u32::from(head), used_len));
        }
        if self.reverse {
            done.reverse();
        }
        for (head, used_len) in done {
            self.push_used(head, used_len);
        }
        if self.corrupt == Some(Corrupt::UsedIndexJump) {
            self.corrupt = None;
            self.used_idx = self.used_idx.wrapping_add(1000);
            self.mem.write(self.used + 2, &self.used_idx.to_le_bytes());
        }
    }

    /// Decodes and answers one chain; returns its used length.
    fn serve(&mut self, head: u16) -> u32 {
        let descriptors = self.walk(head);
        let mem = self.mem;
        let decoded = Decoder::new(mem.window).decode(descriptors.iter().copied(), |seg, out| {
            out.copy_from_slice(&mem.segment(seg));
            Ok(())
        });
        let mut seen = Seen {
            descriptors: descriptors.clone(),
            decoded: decoded.map_err(|r| r.error),
            key: Vec::new(),
            meta: Vec::new(),
            payload: Vec::new(),
            used_len: 0,
        };
        let used_len = match decoded {
            Ok(request) => {
                seen.key = request.key.map(|s| mem.segment(s)).unwrap_or_default();
                seen.meta = request.meta.map(|s| mem.segment(s)).unwrap_or_default();
                seen.payload = request
                    .payload
                    .iter()
                    .flat_map(|s| mem.segment(*s))
                    .collect();
                let answer = self.backend.answer(&request, &seen);
                self.write_answer(&request, answer)
            }
            Err(rejection) => match (rejection.response_header(), rejection.response) {
                (Some(header), Some(head)) => {
                    mem.write(head.addr, &header.to_bytes().unwrap());
                    RESPONSE_HEADER_SIZE as u32
                }
                _ => 0,
            },
        };
        seen.used_len = used_len;
        self.seen.push(seen);
        used_len
    }

    fn write_answer(&mut self, request: &Request, answer: Answer) -> u32 {
        let target: ResponseTarget = request.response;
        let mut meta = answer.meta;
        meta.truncate(target.meta_capacity() as usize);
        let mut payload = answer.payload;
        payload.truncate(target.payload_capacity() as usize);
        if answer.status != Status::Ok {
            payload.clear();
        }
        let mut header = ResponseHeader {
            id: request.id(),
            status: answer.status,
            meta_len: meta.len() as u32,
            payload_len: payload.len() as u32,
            total: answer.total,
            detail: answer.detail,
        };
        let mut pos = 0;
        for segment in target.payload.iter() {
            let n = (segment.len as usize).min(payload.len() - pos);
            if n == 0 {
                break;
            }
            self.mem.write(segment.addr, &payload[pos..pos + n]);
            pos += n;
        }
        if let Some(area) = target.meta() {
            if !meta.is_empty() {
                self.mem.write(area.addr, &meta);
            }
        }
        let mut used_len = header.used_len().unwrap();
        let mut bytes = header.to_bytes().unwrap();
        match self.corrupt.take() {
            Some(Corrupt::WrongId) => {
                header.id ^= 1;
                bytes = header.to_bytes().unwrap();
            }
            Some(Corrupt::BadMagic) => bytes[0] ^= 0xFF,
            Some(Corrupt::MetaBeyondCapacity) => {
                bytes[16..20].copy_from_slice(&(target.meta_capacity() + 1).to_le_bytes())
            }
            Some(Corrupt::PayloadBeyondCapacity) => {
                bytes[20..24].copy_from_slice(&(target.payload_capacity() + 1).to_le_bytes())
            }
            Some(Corrupt::UsedLenZero) => used_len = 0,
            other => self.corrupt = other,
        }
        self.mem.write(target.head.addr, &bytes);
        used_len
    }
}

impl Backend {
    fn answer(&mut self, request: &Request, seen: &Seen) -> Answer {
        let key = String::from_utf8(seen.key.clone()).unwrap_or_default();
        match request.command() {
            Command::Get { offset, max_len } => match self.objects.get(&key) {
                None => Answer::status(Status::NotFound, &std::format!("no object {key}")),
                Some(data) => {
                    let size = data.len() as u64;
                    let start = offset.min(size) as usize;
                    let mut end = data.len();
                    if max_len > 0 {
                        end = end.min(start.saturating_add(max_len as usize));
                    }
                    Answer {
                        payload: data[start..end].to_vec(),
                        total: size,
                        ..Answer::ok()
                    }
                }
            },
            Command::Put { write_behind } => {
                if self.fail_uploads.as_deref() == Some(key.as_str()) && !write_behind {
                    return Answer {
                        detail: 1,
                        ..Answer::status(Status::UploadFailed, &key)
                    };
                }
                if write_behind {
                    self.write_behind_puts.push(key.clone());
                }
                self.objects.insert(key, seen.payload.clone());
                Answer::ok()
            }
            Command::Head => match self.objects.get(&key) {
                None => Answer::status(Status::NotFound, "no such object"),
                Some(data) => Answer {
                    meta: ObjectEntry {
                        size: data.len() as u64,
                        last_modified_ms: 1_700_000_000_000,
                        key: "",
                        etag: "\"e1\"",
                    }
                    .to_vec()
                    .unwrap(),
                    total: data.len() as u64,
                    ..Answer::ok()
                },
            },
            Command::Delete => {
                self.objects.remove(&key);
                Answer::ok()
            }
            Command::List { max_entries } => {
                let after = String::from_utf8(seen.meta.clone()).unwrap();
                let limit = match max_entries {
                    0 => MAX_LIST_ENTRIES as usize,
                    n => n as usize,
                }
                .min(self.page_size);
                let keys: Vec<(&String, &Vec<u8>)> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&key) && (after.is_empty() || **k > after))
                    .collect();
                let capacity = request.response.payload_capacity() as usize;
                let entries: Vec<ObjectEntry<'_>> = keys
                    .iter()
                    .map(|(k, v)| ObjectEntry {
                        size: v.len() as u64,
                        last_modified_ms: 0,
                        key: k,
                        etag: "",
                    })
                    .collect();
                let mut out = vec![0u8; capacity];
                let mut writer = EntryList::writer(&mut out);
                let mut taken = 0;
                for entry in entries.iter().take(limit) {
                    if writer.push(entry).is_err() {
                        break;
                    }
                    taken += 1;
                }
                if taken == 0 && !entries.is_empty() {
                    return Answer {
                        total: 4 + 20 + entries[0].key.len() as u64,
                        ..Answer::status(Status::TooLarge, "a page needs more room")
                    };
                }
                let written = writer.finish().unwrap();
                out.truncate(written);
                let token = if taken < entries.len() {
                    entries[taken - 1].key.as_bytes().to_vec()
                } else {
                    Vec::new()
                };
                Answer {
                    meta: token,
                    payload: out,
                    ..Answer::ok()
                }
            }
            Command::Invoke { asynchronous, .. } => {
                if key == "missing" {
                    return Answer::status(Status::NotFound, "no such function");
                }
                if asynchronous {
                    return Answer::ok();
                }
                let output = seen.payload.to_ascii_uppercase();
                Answer {
                    total: output.len() as u64,
                    payload: output,
                    detail: Outcome::Success.code(),
                    ..Answer::ok()
                }
            }
            Command::Http { method, .. } => {
                let headers = if seen.meta.is_empty() {
                    0
                } else {
                    HeaderList::decode(&seen.meta).unwrap().len()
                };
                let body = std::format!(
                    "{} {} headers={} body={}",
                    method.as_str(),
                    key,
                    headers,
                    String::from_utf8_lossy(&seen.payload)
                );
                let response_headers = HeaderList::encode_to_vec(&[nexus_ring::records::Header {
                    name: "content-type",
                    value: b"text/plain",
                }])
                .unwrap();
                Answer {
                    meta: response_headers,
                    total: body.len() as u64,
                    payload: body.into_bytes(),
                    detail: 200,
                    ..Answer::ok()
                }
            }
            Command::Flush { .. } => match self.fail_uploads.take() {
                Some(key) => Answer {
                    detail: 2,
                    ..Answer::status(Status::UploadFailed, &key)
                },
                None => Answer::ok(),
            },
            Command::Log { level } => {
                self.logs.push((
                    level.code(),
                    String::from_utf8_lossy(&seen.payload).to_string(),
                ));
                Answer::ok()
            }
            Command::Next { .. } => match self.invocations.pop_front() {
                None => Answer::status(Status::Timeout, "no invocation"),
                Some(invocation) => {
                    let capacity = request.response.payload_capacity() as usize;
                    if invocation.input.len() > capacity {
                        let total = invocation.input.len() as u64;
                        self.invocations.push_front(invocation);
                        return Answer {
                            total,
                            ..Answer::status(Status::TooLarge, "input too large")
                        };
                    }
                    // As the backend does: the key only for a NEXT with room for it.
                    let room = request.response.meta_capacity()
                        >= nexus_ring::records::INVOCATION_CONTEXT_WITH_KEY_MAX_LEN;
                    let context = InvocationContext {
                        invocation: invocation.number,
                        deadline_ms: 42,
                        async_durability: false,
                        function: &invocation.function,
                        request_id: &invocation.request_id,
                        output_key: invocation.output_key.as_deref().filter(|_| room),
                    };
                    Answer {
                        meta: context.to_vec().unwrap(),
                        total: invocation.input.len() as u64,
                        payload: invocation.input,
                        ..Answer::ok()
                    }
                }
            },
            Command::Complete {
                invocation,
                outcome,
                stored,
            } => {
                self.completed
                    .push((invocation, outcome, seen.payload.clone()));
                if stored {
                    self.stored.push(invocation);
                }
                Answer::ok()
            }
        }
    }
}

impl FakeState {
    /// A read of field `offset` of the config space.
    fn read_config(&mut self, offset: u32) -> u32 {
        match offset {
            config::WINDOW_BASE => self.config_window.0 as u32,
            o if o == config::WINDOW_BASE + 4 => (self.config_window.0 >> 32) as u32,
            config::WINDOW_SIZE => self.config_window.1 as u32,
            o if o == config::WINDOW_SIZE + 4 => (self.config_window.1 >> 32) as u32,
            config::MAX_PAYLOAD => self.max_payload,
            config::NUM_QUEUES => contract::NUM_QUEUES,
            config::QUEUE_SIZE_MAX => u32::from(contract::QUEUE_SIZE_MAX),
            config::BACKEND_STATE => u32::from(self.connected),
            config::WAIT => {
                self.wait_reads += 1;
                let used_event = self.used_event();
                self.used_event_at_wait.push(used_event);
                if !self.connected {
                    return wait::BACKEND_UNAVAILABLE;
                }
                if self.broken {
                    return wait::NEEDS_RESET;
                }
                if self.wait_timeouts > 0 {
                    self.wait_timeouts -= 1;
                } else if !self.process_on_notify {
                    self.process();
                }
                u32::from(self.used_idx)
            }
            other => {
                self.unexpected.push(std::format!("read config {other:#x}"));
                0
            }
        }
    }
}

impl Registers for FakeDevice {
    fn read(&mut self, offset: u32) -> u32 {
        let mut s = self.state();
        match offset {
            regs::MAGIC_VALUE => s.magic,
            regs::VERSION => mmio::VERSION,
            regs::DEVICE_ID => s.device_id,
            regs::VENDOR_ID => contract::VENDOR_ID,
            regs::DEVICE_FEATURES => match s.device_features_sel {
                0 => s.offered as u32,
                1 => (s.offered >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => {
                if s.queue_sel == 0 {
                    s.queue_num_max
                } else {
                    0
                }
            }
            regs::QUEUE_READY => s.queue_ready,
            regs::STATUS => s.status,
            regs::CONFIG_GENERATION => 0,
            o if o >= regs::CONFIG => s.read_config(o - regs::CONFIG),
            other => {
                s.unexpected.push(std::format!("read {other:#x}"));
                0
            }
        }
    }

    fn write(&mut self, offset: u32, value: u32) {
        let mut s = self.state();
        match offset {
            regs::DEVICE_FEATURES_SEL => s.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => s.driver_features_sel = value,
            regs::DRIVER_FEATURES => {
                let shift = 32 * u64::from(s.driver_features_sel.min(1));
                s.driver_features =
                    (s.driver_features & !(0xFFFF_FFFF << shift)) | (u64::from(value) << shift);
            }
            regs::QUEUE_SEL => s.queue_sel = value,
            regs::QUEUE_NUM => s.queue_num = value,
            regs::QUEUE_READY => s.queue_ready(value),
            regs::QUEUE_NOTIFY => {
                s.notifies += 1;
                if s.process_on_notify && s.connected {
                    s.process();
                }
            }
            regs::STATUS => s.write_status(value),
            regs::QUEUE_DESC_LOW => s.desc = (s.desc & !0xFFFF_FFFF) | u64::from(value),
            o if o == regs::QUEUE_DESC_LOW + 4 => {
                s.desc = (s.desc & 0xFFFF_FFFF) | u64::from(value) << 32
            }
            regs::QUEUE_DRIVER_LOW => s.avail = (s.avail & !0xFFFF_FFFF) | u64::from(value),
            o if o == regs::QUEUE_DRIVER_LOW + 4 => {
                s.avail = (s.avail & 0xFFFF_FFFF) | u64::from(value) << 32
            }
            regs::QUEUE_DEVICE_LOW => s.used = (s.used & !0xFFFF_FFFF) | u64::from(value),
            o if o == regs::QUEUE_DEVICE_LOW + 4 => {
                s.used = (s.used & 0xFFFF_FFFF) | u64::from(value) << 32
            }
            other => s
                .unexpected
                .push(std::format!("write {other:#x} = {value:#x}")),
        }
    }
}
