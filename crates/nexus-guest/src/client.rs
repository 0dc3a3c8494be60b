//! [`Nexus`]: the function-facing client of the nexus-io device.
//!
//! Every call is one request of the nexus-ring protocol (`docs/protocol.md`), laid out in the
//! I/O window: a *control block* (request header, key, request meta, response head) allocated
//! for the call, the payload segment (a [`WindowBuf`]) and the response payload buffer (a
//! [`WindowBuf`] that becomes the result, zero copy). The response is checked with
//! `nexus-ring` — magic, version, known status, the id echoed, lengths within what was
//! offered — before anything of it is used; a non-`OK` status becomes the matching
//! [`Error`] variant with the backend's message.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use nexus_ring::limits::{MAX_KEY_LEN, MAX_LOG_LEN, MAX_META_LEN, MAX_PAYLOAD_LEN, MAX_TOKEN_LEN};
use nexus_ring::records::{
    EntryList, Header, HeaderList, INVOCATION_CONTEXT_WITH_KEY_MAX_LEN, InvocationContext,
    OBJECT_INFO_MAX_LEN, ObjectEntry,
};
use nexus_ring::{
    ChainDescriptor, Command, HttpMethod, LogLevel, Outcome, REQUEST_HEADER_SIZE,
    RESPONSE_HEADER_SIZE, RequestLayout, ResponseHeader, SegmentRef,
};

use crate::device::NexusIo;
use crate::error::{Error, Result};
use crate::mmio::{MmioRegisters, Registers};
use crate::virtqueue::RING_AREA;
use crate::window::{SharedWindow, WindowAllocator, WindowBuf, WindowMapping};

/// A NEXT, offering room for an invocation context with an output key.
fn next_call<'a>(timeout_ms: u64) -> Call<'a> {
    Call::new(Command::Next { timeout_ms }).meta_capacity(INVOCATION_CONTEXT_WITH_KEY_MAX_LEN)
}

/// How far a buffer held while a NEXT is posted may push the NEXT's input buffer before
/// [`Nexus::shifts_next_input`] says it moves it.
const INPUT_SHIFT_TOLERANCE: usize = 0x1_0000;

/// The response payload buffer a LIST offers first (retried with what TOO_LARGE asks for).
const LIST_BUFFER: usize = 0x1_0000;

/// The meta capacity every request offers at least: room for the backend's error message,
/// and for the object key of `UPLOAD_FAILED` (the protocol allows any op a meta area; the
/// backend writes only `meta_len` bytes of it).
const MESSAGE_CAPACITY: u32 = MAX_KEY_LEN;

/// An object's metadata: from `head` (with an empty key) or a `list` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object key (empty in a `head` answer).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, Unix milliseconds (0: unknown).
    pub last_modified_ms: u64,
    /// The entity tag (may be empty).
    pub etag: String,
}

impl ObjectInfo {
    fn from_entry(entry: &ObjectEntry<'_>) -> Self {
        Self {
            key: String::from(entry.key),
            size: entry.size,
            last_modified_ms: entry.last_modified_ms,
            etag: String::from(entry.etag),
        }
    }
}

/// One page of a `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The entries, full keys in ascending byte order.
    pub entries: Vec<ObjectInfo>,
    /// The token for the next page; `None` on the last page.
    pub next_token: Option<Vec<u8>>,
}

/// The result of a synchronous `invoke`.
#[derive(Debug)]
pub struct InvokeResult {
    /// Whether the callee succeeded (`output` is its result) or failed (its error document).
    pub outcome: Outcome,
    /// The callee's result or error document, in the window; truncated if shorter than
    /// `total`.
    pub output: WindowBuf,
    /// The full size of the result.
    pub total: u64,
}

/// The response to an `http` request.
#[derive(Debug)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, in the window; truncated if shorter than `total`.
    pub body: WindowBuf,
    /// The body's full length.
    pub total: u64,
}

/// An invocation, from `next_invocation` — or, on the network path (feature `net`), from an
/// HTTP request: `B` is the buffer the input arrived in, a [`WindowBuf`] here, a `Vec<u8>`
/// there (`io::ObjectIo::Buf`).
#[derive(Debug)]
pub struct Invocation<B = WindowBuf> {
    /// The backend's number for it: pass it to `complete`.
    pub number: u64,
    /// When it must be complete, Unix milliseconds (0: no deadline).
    pub deadline_ms: u64,
    /// The caller accepts completion before write-behind uploads are durable.
    pub async_durability: bool,
    /// The function invoked.
    pub function: String,
    /// The platform's request id (for logs), may be empty.
    pub request_id: String,
    /// Where the caller wants the result stored, if anywhere: store it there (a write-behind
    /// PUT of the buffer holding it) and complete with [`Completion::stored`] set — or leave
    /// it to the backend. The function runtime ([`function`](mod@crate::function)) does the former.
    pub output_key: Option<String>,
    /// The input: on the nexus-io path already in the window (prefetched by the backend).
    pub input: B,
}

/// How an invocation ended, as COMPLETE reports it.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The invocation's number, from its context.
    pub number: u64,
    /// Success (`result` is the result) or error (`result` is an error document).
    pub outcome: Outcome,
    /// The result or the error document, in the window; `None` for an empty one.
    pub result: Option<&'a WindowBuf>,
    /// The result is already stored at the invocation's output key, by a PUT this guest made
    /// before (COMPLETE flag `STORED`): the backend does not store it again. Only with a
    /// success, and only for an invocation whose context carried an output key.
    pub stored: bool,
}

impl<'a> Completion<'a> {
    /// A success with `result`, not stored by the guest.
    pub fn success(number: u64, result: &'a WindowBuf) -> Self {
        Self {
            number,
            outcome: Outcome::Success,
            result: Some(result),
            stored: false,
        }
    }

    /// A failure with its error document.
    pub fn error(number: u64, document: &'a WindowBuf) -> Self {
        Self {
            number,
            outcome: Outcome::Error,
            result: Some(document),
            stored: false,
        }
    }

    fn call(&self) -> Call<'a> {
        // Answered as soon as the result is copied (or not even that).
        let call = Call::new(Command::Complete {
            invocation: self.number,
            outcome: self.outcome,
            stored: self.stored,
        })
        .quick(true);
        match self.result {
            Some(result) => call.payload(result),
            None => call,
        }
    }
}

/// Where a call's response payload goes.
enum Response<'a> {
    /// The op takes no response buffers.
    None,
    /// The first `usize` bytes of this buffer (its length is set to what arrives).
    Into(&'a mut WindowBuf, usize),
    /// A new buffer of this many bytes, allocated after the control block.
    Alloc(usize),
    /// The largest buffer the window has, up to the payload limit.
    Largest,
}

/// One request to make.
struct Call<'a> {
    command: Command,
    key: &'a [u8],
    meta: &'a [u8],
    payload: Option<&'a WindowBuf>,
    meta_capacity: u32,
    /// The backend answers at once: poll for the answer a little longer before WAIT.
    quick: bool,
}

impl<'a> Call<'a> {
    fn new(command: Command) -> Self {
        Self {
            command,
            key: &[],
            meta: &[],
            payload: None,
            meta_capacity: MESSAGE_CAPACITY,
            quick: false,
        }
    }

    fn quick(mut self, quick: bool) -> Self {
        self.quick = quick;
        self
    }

    fn key(mut self, key: &'a [u8]) -> Self {
        self.key = key;
        self
    }

    fn meta(mut self, meta: &'a [u8]) -> Self {
        self.meta = meta;
        self
    }

    fn payload(mut self, payload: &'a WindowBuf) -> Self {
        self.payload = Some(payload);
        self
    }

    fn meta_capacity(mut self, capacity: u32) -> Self {
        self.meta_capacity = capacity.max(MESSAGE_CAPACITY);
        self
    }
}

/// A checked response.
struct Reply {
    header: ResponseHeader,
    meta: Vec<u8>,
    /// The response buffer of [`Response::Alloc`] and [`Response::Largest`], its length set
    /// to the payload received.
    payload: Option<WindowBuf>,
}

impl Reply {
    /// The reply if its status is `OK`, else the matching error.
    fn ok(self) -> Result<Self> {
        let h = &self.header;
        match Error::from_status(h.status, &self.meta, h.total, h.detail) {
            Some(error) => Err(error),
            None => Ok(self),
        }
    }
}

/// A request laid out in the window, ready to submit: what must live until it completes.
struct Prepared<'a> {
    id: u64,
    /// Header, key, meta and response head.
    control: WindowBuf,
    /// Where the response head starts in `control`.
    head_at: usize,
    meta_capacity: u32,
    /// Bytes of response payload buffer offered.
    payload_capacity: u32,
    /// The response buffer of [`Response::Alloc`] and [`Response::Largest`].
    allocated: Option<WindowBuf>,
    /// The caller's response buffer ([`Response::Into`]).
    into: Option<&'a mut WindowBuf>,
    chain: Vec<ChainDescriptor>,
}

impl Prepared<'_> {
    /// Checks the response to the request (`used`: its used length, or why it failed) — not
    /// its status.
    fn finish(&mut self, used: Result<u32>) -> Result<Reply> {
        let used_len = used?;
        if used_len < RESPONSE_HEADER_SIZE as u32 {
            return Err(Error::Refused { used_len });
        }
        let head_len = RESPONSE_HEADER_SIZE + self.meta_capacity as usize;
        let head = &self.control[self.head_at..self.head_at + head_len];
        let (header_bytes, meta_area) = head.split_at(RESPONSE_HEADER_SIZE);
        let response = ResponseHeader::decode(header_bytes).map_err(Error::Protocol)?;
        response
            .check_reply(self.id, self.meta_capacity, self.payload_capacity)
            .map_err(Error::Protocol)?;
        let meta = meta_area[..response.meta_len as usize].to_vec();
        let target = match self.into.as_deref_mut() {
            Some(buf) => Some(buf),
            None => self.allocated.as_mut(),
        };
        if let Some(buf) = target {
            buf.set_len(response.payload_len as usize);
        }
        Ok(Reply {
            header: response,
            meta,
            payload: self.allocated.take(),
        })
    }
}

const fn align8(value: usize) -> usize {
    (value + 7) & !7
}

/// The nexus-io client: object storage, invocations, HTTP and logs through the shared
/// backend, with every payload in the I/O window.
///
/// Calls block until the backend answers (polling briefly, then sleeping in the WAIT
/// register). Buffers returned ([`WindowBuf`]) are views of the window: reading them copies
/// nothing, and dropping them frees their window memory.
#[derive(Debug)]
pub struct Nexus<R> {
    device: NexusIo<R>,
    window: Rc<SharedWindow>,
    next_id: u64,
    /// Write-behind PUTs acknowledged since the last FLUSH that answered `OK`.
    unflushed: u64,
}

impl Nexus<MmioRegisters> {
    /// The client of a micro-guest's device: registers and window identity mapped at the
    /// addresses of the boot-info block.
    ///
    /// # Safety
    ///
    /// `boot` must describe this VM's real nexus-io register block and I/O window, identity
    /// mapped (a micro-guest's boot-info block from the VMM), and nothing else in the program
    /// may use the device or the window while the client and its buffers live.
    /// [`rt::nexus`](crate::rt::nexus) is the safe way in a micro-guest.
    pub unsafe fn from_boot_info(boot: &crate::BootInfo) -> Result<Self> {
        let device = boot.device().ok_or(Error::NoDevice)?;
        let window = boot.window().ok_or(Error::NoWindow)?;
        let device_size = device.end - device.start;
        // SAFETY: the caller guarantees that the boot info's device range is the register
        // block, identity mapped, and ours alone.
        let regs = unsafe { MmioRegisters::identity(device.start, device_size) }.ok_or(
            Error::BadMapping {
                what: "register",
                addr: device.start,
                size: device_size,
            },
        )?;
        // SAFETY: likewise for the window.
        let mapping = unsafe { WindowMapping::identity(window.start, window.end - window.start) }?;
        Self::new(regs, mapping)
    }
}

impl<R: Registers> Nexus<R> {
    /// Brings up the device behind `regs`, with its queue and every buffer in `window`.
    pub fn new(regs: R, window: WindowMapping) -> Result<Self> {
        let window = SharedWindow::new(window, RING_AREA);
        let device = NexusIo::new(regs, Rc::clone(&window))?;
        Ok(Self {
            device,
            window,
            next_id: 1,
            unflushed: 0,
        })
    }

    /// The device driver (config, features, counters).
    pub fn device(&self) -> &NexusIo<R> {
        &self.device
    }

    /// The device driver, mutable (poll tuning).
    pub fn device_mut(&mut self) -> &mut NexusIo<R> {
        &mut self.device
    }

    /// The window's buffer allocator, as it stands (a copy: statistics).
    pub fn window_allocator(&self) -> WindowAllocator {
        self.window.allocator()
    }

    /// The window's guest-physical range `(base, size)`.
    pub fn window_range(&self) -> (u64, u64) {
        (
            self.window.mapping.base(),
            self.window.mapping.size() as u64,
        )
    }

    /// The largest payload one request may carry (the device's `max_payload`, at most the
    /// protocol's 64 MiB).
    pub fn max_payload(&self) -> usize {
        self.device.config().max_payload.min(MAX_PAYLOAD_LEN) as usize
    }

    /// A window buffer of at least `len` bytes (its length 0): fill it in place and send it
    /// with [`put_buf`](Self::put_buf).
    pub fn alloc(&self, len: usize) -> Result<WindowBuf> {
        self.window.alloc(len)
    }

    /// Whether holding `held` while a NEXT is posted would put the next input more than
    /// 64 KiB away from where it goes without `held` (a NEXT's input buffer is the largest free
    /// block of the window). An input that lands elsewhere touches window pages the previous
    /// inputs did not, and first touches of guest memory cost VM exits (shadow or nested page
    /// faults): with a large result still held, or one that splits the free space, report it
    /// with [`complete_with`](Self::complete_with), free it, then post the NEXT, rather than
    /// [`complete_and_next`](Self::complete_and_next).
    pub fn shifts_next_input(&self, held: &WindowBuf) -> bool {
        let allocator = self.window.allocator();
        let with = allocator.largest_free_offset();
        let mut without = allocator;
        without.free(held.window_offset(), held.capacity());
        match (with, without.largest_free_offset()) {
            (Some(with), Some(without)) => with.abs_diff(without) > INPUT_SHIFT_TOLERANCE,
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// A window buffer holding a copy of `data`.
    pub fn copy_to_window(&self, data: &[u8]) -> Result<WindowBuf> {
        let mut buf = self.window.alloc(data.len())?;
        buf.extend_from_slice(data)?;
        Ok(buf)
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Makes one request and checks the response (not its status).
    fn call(&mut self, call: Call<'_>, response: Response<'_>) -> Result<Reply> {
        let spins = if call.quick {
            self.device.quick_poll_spins()
        } else {
            self.device.poll_spins()
        };
        let mut prepared = self.prepare(call, response)?;
        // SAFETY: the chain's writable descriptors are the control block's response head and
        // the response buffer, both window buffers `prepared` holds, with no reference into
        // them alive until the request completes or fails.
        let used = unsafe { self.device.submit(&prepared.chain) }
            .and_then(|ticket| self.device.wait_polling(ticket, spins));
        prepared.finish(used)
    }

    /// Lays out a request in the window: its control block (header, key, meta, response
    /// head), the response buffer, and the descriptor chain, ready to submit.
    fn prepare<'a>(&mut self, call: Call<'_>, response: Response<'a>) -> Result<Prepared<'a>> {
        let max_payload = self.max_payload();
        if let Some(payload) = call.payload {
            if payload.len() > max_payload {
                return Err(Error::PayloadTooLarge {
                    len: payload.len() as u64,
                    max: max_payload as u64,
                });
            }
        }
        if call.meta_capacity > MAX_META_LEN
            || call.key.len() > u32::MAX as usize
            || call.meta.len() > u32::MAX as usize
        {
            return Err(Error::Encode(nexus_ring::Error::LengthOutOfRange {
                field: nexus_ring::Field::ResponseMeta,
                len: call.meta_capacity.into(),
                min: 0,
                max: MAX_META_LEN.into(),
            }));
        }
        // The control block: header | key | meta | response head (header + meta area).
        let key_at = REQUEST_HEADER_SIZE;
        let meta_at = align8(key_at + call.key.len());
        let head_at = align8(meta_at + call.meta.len());
        let head_len = RESPONSE_HEADER_SIZE + call.meta_capacity as usize;
        let mut control = self.window.alloc(head_at + head_len)?;
        control.set_len(head_at + head_len);
        control[key_at..key_at + call.key.len()].copy_from_slice(call.key);
        control[meta_at..meta_at + call.meta.len()].copy_from_slice(call.meta);
        control[head_at..head_at + RESPONSE_HEADER_SIZE].fill(0);

        let (allocated, into) = match response {
            Response::None => (None, None),
            Response::Into(buf, len) => {
                let len = len.min(buf.capacity()).min(max_payload);
                (None, Some((buf, len)))
            }
            Response::Alloc(len) => (Some(self.window.alloc(len.min(max_payload))?), None),
            Response::Largest => (Some(self.window.alloc_largest(max_payload)?), None),
        };
        let response_segment = match (&allocated, &into) {
            (Some(buf), _) => buf.sub_segment(0, buf.capacity().min(max_payload)),
            (_, Some((buf, len))) => buf.sub_segment(0, *len),
            _ => None,
        };
        let response_payload: Vec<SegmentRef> = response_segment.into_iter().collect();
        let payload: Vec<SegmentRef> = call
            .payload
            .and_then(WindowBuf::data_segment)
            .into_iter()
            .collect();
        let layout = RequestLayout {
            header: control.gpa(),
            key: control.sub_segment(key_at, call.key.len()),
            meta: control.sub_segment(meta_at, call.meta.len()),
            payload: &payload,
            response_head: control
                .sub_segment(head_at, head_len)
                .unwrap_or(SegmentRef::new(control.gpa(), 0)),
            response_payload: &response_payload,
        };
        let id = self.next_id();
        let header = layout.header(id, call.command).map_err(Error::Encode)?;
        header
            .encode(&mut control[..REQUEST_HEADER_SIZE])
            .map_err(Error::Encode)?;
        let chain = layout.descriptors().collect();
        Ok(Prepared {
            id,
            control,
            head_at,
            meta_capacity: call.meta_capacity,
            payload_capacity: response_segment.map_or(0, |s| s.len),
            allocated,
            into: into.map(|(buf, _)| buf),
            chain,
        })
    }

    /// Reads a whole object, zero copy: the backend writes it straight into the window buffer
    /// returned. [`Error::ObjectTooLarge`] if it does not fit the largest buffer the window
    /// (and the device's payload limit) allows: read it with [`get_range`](Self::get_range).
    pub fn get(&mut self, key: &str) -> Result<WindowBuf> {
        let reply = self
            .call(
                Call::new(Command::Get {
                    offset: 0,
                    max_len: 0,
                })
                .key(key.as_bytes()),
                Response::Largest,
            )?
            .ok()?;
        let total = reply.header.total;
        let mut buf = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
        if total > buf.len() as u64 {
            return Err(Error::ObjectTooLarge {
                size: total,
                capacity: buf.capacity() as u64,
            });
        }
        buf.shrink_to_fit();
        Ok(buf)
    }

    /// Reads at most `len` bytes of an object from byte `offset`, zero copy. The buffer is
    /// shorter when the object ends first (empty at or past its end).
    pub fn get_range(&mut self, key: &str, offset: u64, len: usize) -> Result<WindowBuf> {
        if len > self.max_payload() {
            return Err(Error::PayloadTooLarge {
                len: len as u64,
                max: self.max_payload() as u64,
            });
        }
        let reply = self
            .call(
                Call::new(Command::Get {
                    offset,
                    max_len: len as u64,
                })
                .key(key.as_bytes()),
                Response::Alloc(len.max(1)),
            )?
            .ok()?;
        let mut buf = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
        buf.truncate(len);
        buf.shrink_to_fit();
        Ok(buf)
    }

    /// Reads bytes of an object from `offset` into `buf` (up to its capacity), reusing a
    /// buffer across reads; returns the object's size. `buf.len()` is the number of bytes
    /// read.
    pub fn get_into(&mut self, key: &str, offset: u64, buf: &mut WindowBuf) -> Result<u64> {
        let capacity = buf.capacity();
        let reply = self
            .call(
                Call::new(Command::Get { offset, max_len: 0 }).key(key.as_bytes()),
                Response::Into(buf, capacity),
            )?
            .ok()?;
        Ok(reply.header.total)
    }

    /// Writes an object: copies `data` into a window buffer, then sends it (synchronous: the
    /// object is durable when this returns).
    pub fn put(&mut self, key: &str, data: &[u8]) -> Result<()> {
        let buf = self.copy_to_window(data)?;
        self.put_buf(key, &buf)
    }

    /// Writes an object from a window buffer the function filled in place (zero copy).
    pub fn put_buf(&mut self, key: &str, buf: &WindowBuf) -> Result<()> {
        self.put_impl(key, buf, false)
    }

    /// Writes an object write-behind: the backend copies the payload out and answers at once,
    /// uploading later ([`flush`](Self::flush) waits for durability). Synchronous if the
    /// device did not offer `NEXUS_F_WRITE_BEHIND`.
    pub fn put_behind(&mut self, key: &str, data: &[u8]) -> Result<()> {
        let buf = self.copy_to_window(data)?;
        self.put_buf_behind(key, &buf)
    }

    /// [`put_behind`](Self::put_behind) from a window buffer (zero copy).
    pub fn put_buf_behind(&mut self, key: &str, buf: &WindowBuf) -> Result<()> {
        let write_behind = self.device.write_behind();
        self.put_impl(key, buf, write_behind)
    }

    fn put_impl(&mut self, key: &str, buf: &WindowBuf, write_behind: bool) -> Result<()> {
        self.call(
            Call::new(Command::Put { write_behind })
                .key(key.as_bytes())
                .payload(buf)
                .quick(write_behind),
            Response::None,
        )?
        .ok()?;
        if write_behind {
            self.unflushed += 1;
        }
        Ok(())
    }

    /// Write-behind PUTs acknowledged since the last FLUSH that answered `OK` (whose
    /// durability nobody has waited for yet).
    pub fn unflushed_write_behind(&self) -> u64 {
        self.unflushed
    }

    /// An object's metadata (its `key` is empty).
    pub fn head(&mut self, key: &str) -> Result<ObjectInfo> {
        let reply = self
            .call(
                Call::new(Command::Head)
                    .key(key.as_bytes())
                    .meta_capacity(OBJECT_INFO_MAX_LEN),
                Response::None,
            )?
            .ok()?;
        let entry = ObjectEntry::decode(&reply.meta).map_err(Error::Protocol)?;
        Ok(ObjectInfo::from_entry(&entry))
    }

    /// Deletes an object (`Ok` also when it did not exist).
    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.call(
            Call::new(Command::Delete).key(key.as_bytes()),
            Response::None,
        )?
        .ok()?;
        Ok(())
    }

    /// One page of the objects under `prefix` (empty: all the function may see), starting
    /// after `token` (the previous page's `next_token`; `None` for the first page).
    pub fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<ListPage> {
        let token = token.unwrap_or_default();
        let mut capacity = LIST_BUFFER;
        loop {
            let reply = self
                .call(
                    Call::new(Command::List { max_entries: 0 })
                        .key(prefix.as_bytes())
                        .meta(token)
                        .meta_capacity(MAX_TOKEN_LEN),
                    Response::Alloc(capacity),
                )?
                .ok();
            let reply = match reply {
                Err(Error::TooLarge { needed, .. })
                    if needed > capacity as u64 && needed <= self.max_payload() as u64 =>
                {
                    capacity = needed as usize;
                    continue;
                }
                other => other?,
            };
            let buf = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
            let list = EntryList::decode(&buf).map_err(Error::Protocol)?;
            let entries = list.iter().map(|e| ObjectInfo::from_entry(&e)).collect();
            let next_token = (!reply.meta.is_empty()).then_some(reply.meta);
            return Ok(ListPage {
                entries,
                next_token,
            });
        }
    }

    /// Invokes another function with `payload` and waits for its result.
    pub fn invoke(&mut self, function: &str, payload: &[u8]) -> Result<InvokeResult> {
        let input = self.copy_to_window(payload)?;
        let reply = self
            .call(
                Call::new(Command::Invoke {
                    timeout_ms: 0,
                    asynchronous: false,
                })
                .key(function.as_bytes())
                .payload(&input),
                Response::Largest,
            )?
            .ok()?;
        let outcome = Outcome::from_code(reply.header.detail)
            .ok_or(Error::UnexpectedReply("unknown INVOKE outcome"))?;
        let mut output = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
        output.shrink_to_fit();
        Ok(InvokeResult {
            outcome,
            output,
            total: reply.header.total,
        })
    }

    /// Invokes another function without waiting for its result (`Ok` once accepted).
    pub fn invoke_async(&mut self, function: &str, payload: &[u8]) -> Result<()> {
        let input = self.copy_to_window(payload)?;
        self.call(
            Call::new(Command::Invoke {
                timeout_ms: 0,
                asynchronous: true,
            })
            .key(function.as_bytes())
            .payload(&input),
            Response::None,
        )?
        .ok()?;
        Ok(())
    }

    /// An HTTP request through the backend's shared client. `headers` are (name, value)
    /// pairs; the backend sets `Host`, `Content-Length`, `Transfer-Encoding` and `Connection`.
    pub fn http(
        &mut self,
        method: HttpMethod,
        url: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<HttpResponse> {
        let meta = if headers.is_empty() {
            Vec::new()
        } else {
            let len = headers.iter().fold(4usize, |n, (name, value)| {
                n.saturating_add(4 + name.len() + value.len())
            });
            if len > MAX_META_LEN as usize {
                return Err(Error::Encode(nexus_ring::Error::LengthOutOfRange {
                    field: nexus_ring::Field::HeaderList,
                    len: len as u64,
                    min: 0,
                    max: MAX_META_LEN.into(),
                }));
            }
            let mut out = vec![0u8; len];
            let mut writer = HeaderList::writer(&mut out);
            for (name, value) in headers {
                writer
                    .push(&Header { name, value })
                    .map_err(Error::Encode)?;
            }
            let written = writer.finish().map_err(Error::Encode)?;
            out.truncate(written);
            out
        };
        let input = self.copy_to_window(body)?;
        let mut call = Call::new(Command::Http {
            method,
            timeout_ms: 0,
        })
        .key(url.as_bytes())
        .meta(&meta)
        // Room for any header list: a retry after TOO_LARGE would repeat the request.
        .meta_capacity(MAX_META_LEN);
        if !body.is_empty() {
            call = call.payload(&input);
        }
        let reply = self.call(call, Response::Largest)?.ok()?;
        let headers = if reply.meta.is_empty() {
            Vec::new()
        } else {
            HeaderList::decode(&reply.meta)
                .map_err(Error::Protocol)?
                .iter()
                .map(|h| (String::from(h.name), h.value.to_vec()))
                .collect()
        };
        let status = u16::try_from(reply.header.detail)
            .map_err(|_| Error::UnexpectedReply("HTTP status out of range"))?;
        let mut body = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
        body.shrink_to_fit();
        Ok(HttpResponse {
            status,
            headers,
            body,
            total: reply.header.total,
        })
    }

    /// Waits until every write-behind PUT issued so far is durable.
    /// [`Error::UploadFailed`] names the first that failed for good.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_timeout(0)
    }

    /// [`flush`](Self::flush) with a timeout in milliseconds (0: none);
    /// [`Error::Timeout`] if the uploads are not all durable in time.
    pub fn flush_timeout(&mut self, timeout_ms: u64) -> Result<()> {
        let before = self.unflushed;
        self.call(
            Call::new(Command::Flush { timeout_ms }).meta_capacity(MAX_KEY_LEN),
            Response::None,
        )?
        .ok()?;
        self.unflushed -= before;
        Ok(())
    }

    /// Sends log text (lines separated by `\n`) to the host, attributed to the current
    /// invocation. Cut to 64 KiB at a character boundary; empty text sends nothing. The
    /// backend rate-limits LOG per VM: over the limit the text is dropped and
    /// [`Error::Throttled`] returned.
    pub fn log(&mut self, level: LogLevel, text: &str) -> Result<()> {
        let mut end = text.len().min(MAX_LOG_LEN as usize);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            return Ok(());
        }
        let buf = self.copy_to_window(&text.as_bytes()[..end])?;
        self.call(
            Call::new(Command::Log { level }).payload(&buf),
            Response::None,
        )?
        .ok()?;
        Ok(())
    }

    /// Waits (as long as it takes) for the next invocation; its input arrives in the window.
    pub fn next_invocation(&mut self) -> Result<Invocation> {
        self.next_invocation_timeout(0)
    }

    /// [`next_invocation`](Self::next_invocation) with a timeout in milliseconds (0: none);
    /// [`Error::Timeout`] if none arrived.
    pub fn next_invocation_timeout(&mut self, timeout_ms: u64) -> Result<Invocation> {
        let reply = self.call(next_call(timeout_ms), Response::Largest)?;
        Self::invocation(reply)
    }

    /// The invocation a NEXT reply delivered.
    fn invocation(reply: Reply) -> Result<Invocation> {
        let reply = reply.ok()?;
        let context = InvocationContext::decode(&reply.meta).map_err(Error::Protocol)?;
        let mut input = reply.payload.ok_or(Error::UnexpectedReply("no buffer"))?;
        input.shrink_to_fit();
        Ok(Invocation {
            number: context.invocation,
            deadline_ms: context.deadline_ms,
            async_durability: context.async_durability,
            function: String::from(context.function),
            request_id: String::from(context.request_id),
            output_key: context.output_key.map(String::from),
            input,
        })
    }

    /// Reports the result of invocation `number`: `Ok(result)` or `Err(error document)`.
    pub fn complete(
        &mut self,
        number: u64,
        result: core::result::Result<&[u8], &[u8]>,
    ) -> Result<()> {
        let (outcome, bytes) = match result {
            Ok(bytes) => (Outcome::Success, bytes),
            Err(bytes) => (Outcome::Error, bytes),
        };
        let buf = self.copy_to_window(bytes)?;
        self.complete_buf(number, outcome, &buf)
    }

    /// [`complete`](Self::complete) with the result already in a window buffer (zero copy).
    pub fn complete_buf(
        &mut self,
        number: u64,
        outcome: Outcome,
        result: &WindowBuf,
    ) -> Result<()> {
        self.complete_with(&Completion {
            number,
            outcome,
            result: Some(result),
            stored: false,
        })
    }

    /// Reports how an invocation ended (COMPLETE), and waits for the answer.
    pub fn complete_with(&mut self, completion: &Completion<'_>) -> Result<()> {
        self.call(completion.call(), Response::None)?.ok()?;
        Ok(())
    }

    /// Reports how an invocation ended and waits for the next one: COMPLETE and NEXT made
    /// available together under **one** doorbell, and both answers awaited with **one** WAIT
    /// read ([`NexusIo::wait_all`]: the device sleeps through the COMPLETE's answer and
    /// returns with the NEXT's). A warm invocation then costs the guest two exits: this
    /// doorbell and that WAIT read.
    ///
    /// Returns the COMPLETE's outcome and the next invocation. The NEXT's input buffer is the
    /// largest the window has *beside* `completion.result`, which is still held: a next input
    /// that does not fit it fails with [`Error::TooLarge`] and stays queued, and a plain
    /// [`next_invocation`](Self::next_invocation) then has the whole window.
    pub fn complete_and_next(
        &mut self,
        completion: &Completion<'_>,
    ) -> (Result<()>, Result<Invocation>) {
        let mut complete = match self.prepare(completion.call(), Response::None) {
            Ok(prepared) => prepared,
            Err(error) => return (Err(error), self.next_invocation()),
        };
        let mut next = match self.prepare(next_call(0), Response::Largest) {
            Ok(prepared) => prepared,
            Err(error) => {
                // SAFETY: as in `call`: `complete` holds the chain's writable buffers.
                let used = unsafe { self.device.request(&complete.chain) };
                let done = complete.finish(used).and_then(Reply::ok).map(drop);
                return (done, Err(error));
            }
        };
        // SAFETY: the writable descriptors of both chains are window buffers held by
        // `complete` and `next`, with no reference into them alive until both requests have
        // completed or failed: both are waited for below, whatever happens to the first.
        let tickets = unsafe { self.device.submit_all([&complete.chain, &next.chain]) };
        let (done, delivered) = match tickets {
            Ok(tickets) => {
                // No polling: the COMPLETE's answer comes at once, the NEXT's when the next
                // invocation does, and one WAIT read sleeps through the first and returns
                // with the second.
                let [done, delivered] = self.device.wait_all(tickets, 0);
                (done, delivered)
            }
            Err(error) => (Err(error.clone()), Err(error)),
        };
        let done = complete.finish(done).and_then(Reply::ok).map(drop);
        let delivered = next.finish(delivered).and_then(Self::invocation);
        (done, delivered)
    }

    /// Submits a chain exactly as given — no checks, no layout — waits for it and returns
    /// its used length. For testing the device's and backend's validation (hostile guests);
    /// the response, if any, is wherever the chain's response head says.
    ///
    /// # Safety
    ///
    /// Every device-writable descriptor that lies inside the window must point into window
    /// buffers the caller holds, with no reference into them alive until this returns. (The
    /// device can reach nothing outside the window.)
    pub unsafe fn request_raw(&mut self, chain: &[ChainDescriptor]) -> Result<u32> {
        // SAFETY: the caller's guarantee is `request`'s.
        unsafe { self.device.request(chain) }
    }

    /// A fresh request id (never 0), for hand-built requests.
    pub fn allocate_request_id(&mut self) -> u64 {
        self.next_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, Corrupt, FakeDevice, FakeInvocation, WINDOW_BASE};
    use nexus_ring::{Op, Status};
    use std::string::ToString;

    /// Every window byte is back with the allocator.
    fn assert_no_leak(nexus: &Nexus<FakeDevice>) {
        let allocator = nexus.window_allocator();
        assert_eq!(allocator.free_bytes(), allocator.capacity());
        assert_eq!(allocator.check(), 1);
        assert_eq!(nexus.device().free_descriptors(), 256);
    }

    fn last_request(fake: &FakeDevice) -> nexus_ring::Request {
        fake.state().seen.last().unwrap().decoded.unwrap()
    }

    #[test]
    fn get_is_zero_copy_into_the_window() {
        let (mut nexus, fake) = fake::nexus();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        fake.state()
            .backend
            .objects
            .insert("in/data.bin".to_string(), data.clone());
        let buf = nexus.get("in/data.bin").unwrap();
        assert_eq!(&buf[..], &data[..]);
        let request = last_request(&fake);
        assert_eq!(request.op(), Op::Get);
        assert_eq!(request.id(), 1);
        assert_eq!(
            request.command(),
            Command::Get {
                offset: 0,
                max_len: 0
            }
        );
        assert_eq!(fake.state().seen[0].key, b"in/data.bin");
        // The backend wrote straight into the buffer returned.
        assert_eq!(request.response.payload.as_slice()[0].addr, buf.gpa());
        // The largest buffer the device allows was offered (window 1 MiB: all of it but the
        // rings and the control block; max_payload 1 MiB).
        assert!(request.response.payload_capacity() > 1_000_000);
        assert_eq!(request.response.meta_capacity(), MESSAGE_CAPACITY);
        // Everything lies in the window, the header first.
        assert_eq!(request.header.key_len, 11);
        assert!(buf.gpa() >= WINDOW_BASE + RING_AREA as u64);
        // Shrunk to fit, and given back on drop.
        assert_eq!(buf.capacity(), 10_048);
        drop(buf);
        assert_no_leak(&nexus);
        assert_eq!(nexus.device().stats().wait_reads, 0);
    }

    #[test]
    fn get_errors_and_large_objects() {
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| s.max_payload = 4096);
        assert_eq!(
            nexus.get("nope").unwrap_err(),
            Error::NotFound("no object nope".to_string())
        );
        fake.state()
            .backend
            .objects
            .insert("big".to_string(), vec![7; 10_000]);
        assert_eq!(
            nexus.get("big").unwrap_err(),
            Error::ObjectTooLarge {
                size: 10_000,
                capacity: 4096
            }
        );
        // In pieces.
        let part = nexus.get_range("big", 9_000, 4096).unwrap();
        assert_eq!(part.len(), 1000);
        assert_eq!(
            last_request(&fake).command(),
            Command::Get {
                offset: 9000,
                max_len: 4096
            }
        );
        assert_eq!(nexus.get_range("big", 20_000, 10).unwrap().len(), 0);
        assert!(matches!(
            nexus.get_range("big", 0, 4097),
            Err(Error::PayloadTooLarge { .. })
        ));
        let mut buf = nexus.alloc(3000).unwrap();
        let mut read = 0u64;
        loop {
            let size = nexus.get_into("big", read, &mut buf).unwrap();
            assert_eq!(size, 10_000);
            assert!(buf.iter().all(|&b| b == 7));
            read += buf.len() as u64;
            if read >= size {
                break;
            }
        }
        assert_eq!(read, 10_000);
        drop((part, buf));
        assert_no_leak(&nexus);
    }

    #[test]
    fn put_put_buf_and_write_behind() {
        let (mut nexus, fake) = fake::nexus();
        nexus.put("out/a", b"hello").unwrap();
        assert_eq!(fake.state().backend.objects["out/a"], b"hello");
        assert_eq!(
            last_request(&fake).command(),
            Command::Put {
                write_behind: false
            }
        );

        let mut buf = nexus.alloc(100).unwrap();
        buf.full_mut()[..4].copy_from_slice(b"abcd");
        buf.set_len(4);
        nexus.put_buf("out/b", &buf).unwrap();
        let request = last_request(&fake);
        assert_eq!(request.payload.as_slice(), [SegmentRef::new(buf.gpa(), 4)]);
        assert_eq!(fake.state().backend.objects["out/b"], b"abcd");

        nexus.put_behind("out/c", b"later").unwrap();
        assert_eq!(
            last_request(&fake).command(),
            Command::Put { write_behind: true }
        );
        assert_eq!(fake.state().backend.write_behind_puts, ["out/c"]);

        // An empty object has no payload segment.
        nexus.put("out/empty", b"").unwrap();
        let request = last_request(&fake);
        assert!(request.payload.is_empty());
        assert_eq!(fake.state().backend.objects["out/empty"], b"");

        fake.state().backend.fail_uploads = Some("out/d".to_string());
        assert_eq!(
            nexus.put("out/d", b"x").unwrap_err(),
            Error::UploadFailed {
                key: "out/d".to_string(),
                failed: 1
            }
        );
        drop(buf);
        assert_no_leak(&nexus);
    }

    #[test]
    fn write_behind_puts_are_polled_for_longer() {
        // The fake answers on WAIT reads only: every request polls its budget, then reads.
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| s.process_on_notify = false);
        nexus.device_mut().set_poll_spins(3);
        nexus.device_mut().set_quick_poll_spins(100);
        nexus.put_behind("k", b"v").unwrap();
        assert_eq!(nexus.device().stats().spins, 100);
        nexus.put("k", b"w").unwrap();
        assert_eq!(nexus.device().stats().spins, 103);
        assert_eq!(fake.state().wait_reads, 2);
        assert_eq!(fake.state().backend.objects["k"], b"w");
    }

    #[test]
    fn write_behind_falls_back_to_synchronous() {
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| {
            s.offered =
                crate::mmio::features::VIRTIO_F_VERSION_1 | crate::mmio::features::NEXUS_F_WAIT;
        });
        nexus.put_behind("k", b"v").unwrap();
        assert_eq!(
            last_request(&fake).command(),
            Command::Put {
                write_behind: false
            }
        );
    }

    #[test]
    fn payload_limits_and_encoding_errors_send_nothing() {
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| s.max_payload = 1000);
        assert_eq!(
            nexus.put("k", &[0; 1001]).unwrap_err(),
            Error::PayloadTooLarge {
                len: 1001,
                max: 1000
            }
        );
        let long = "k".repeat(1025);
        assert!(matches!(nexus.put(&long, b"v"), Err(Error::Encode(_))));
        assert!(matches!(nexus.get(""), Err(Error::Encode(_))));
        assert_eq!(fake.state().notifies, 0);
        assert_no_leak(&nexus);
    }

    #[test]
    fn head_delete_and_list_pages() {
        let (mut nexus, fake) = fake::nexus();
        {
            let mut s = fake.state();
            s.backend.page_size = 2;
            for key in ["a/1", "a/2", "a/3", "b/1"] {
                s.backend
                    .objects
                    .insert(key.to_string(), key.as_bytes().to_vec());
            }
        }
        let info = nexus.head("a/2").unwrap();
        assert_eq!(
            info,
            ObjectInfo {
                key: String::new(),
                size: 3,
                last_modified_ms: 1_700_000_000_000,
                etag: "\"e1\"".to_string()
            }
        );
        assert_eq!(
            last_request(&fake).response.meta_capacity(),
            OBJECT_INFO_MAX_LEN.max(MESSAGE_CAPACITY)
        );
        assert!(matches!(nexus.head("zzz"), Err(Error::NotFound(_))));

        let page = nexus.list("a/", None).unwrap();
        let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        assert_eq!(page.entries[0].size, 3);
        let token = page.next_token.unwrap();
        assert_eq!(last_request(&fake).response.meta_capacity(), MAX_TOKEN_LEN);
        let page = nexus.list("a/", Some(&token)).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].key, "a/3");
        assert_eq!(page.next_token, None);
        assert_eq!(fake.state().seen.last().unwrap().meta, token);

        nexus.delete("a/1").unwrap();
        nexus.delete("a/1").unwrap();
        assert!(!fake.state().backend.objects.contains_key("a/1"));
        let all = nexus.list("", None).unwrap();
        assert_eq!(all.entries.len(), 2);
        assert_no_leak(&nexus);
    }

    #[test]
    fn invoke_http_flush_and_log() {
        let (mut nexus, fake) = fake::nexus();
        let result = nexus.invoke("upper", b"shout").unwrap();
        assert_eq!(result.outcome, Outcome::Success);
        assert_eq!(&result.output[..], b"SHOUT");
        assert_eq!(result.total, 5);
        assert_eq!(fake.state().seen.last().unwrap().key, b"upper");
        drop(result);
        nexus.invoke_async("upper", b"x").unwrap();
        assert_eq!(
            last_request(&fake).command(),
            Command::Invoke {
                timeout_ms: 0,
                asynchronous: true
            }
        );
        assert!(matches!(
            nexus.invoke("missing", b""),
            Err(Error::NotFound(_))
        ));

        let response = nexus
            .http(
                HttpMethod::Post,
                "https://example.com/x",
                &[("x-a", b"1"), ("accept", b"*/*")],
                b"body!",
            )
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            &response.body[..],
            b"POST https://example.com/x headers=2 body=body!"
        );
        assert_eq!(
            response.headers,
            [("content-type".to_string(), b"text/plain".to_vec())]
        );
        assert!(matches!(
            nexus.http(HttpMethod::Get, "https://e/", &[("bad name", b"")], b""),
            Err(Error::Encode(_))
        ));
        drop(response);

        nexus.flush().unwrap();
        fake.state().backend.fail_uploads = Some("out/x".to_string());
        assert_eq!(
            nexus.flush().unwrap_err(),
            Error::UploadFailed {
                key: "out/x".to_string(),
                failed: 2
            }
        );
        nexus.log(LogLevel::Warn, "careful\nnow").unwrap();
        nexus.log(LogLevel::Info, "").unwrap();
        assert_eq!(fake.state().backend.logs, [(1, "careful\nnow".to_string())]);
        assert_no_leak(&nexus);
    }

    #[test]
    fn runtime_loop_next_and_complete() {
        let (mut nexus, fake) = fake::nexus();
        fake.state().backend.invocations.push_back(FakeInvocation {
            number: 17,
            function: "wordcount".to_string(),
            request_id: "req-1".to_string(),
            output_key: None,
            input: b"one two three".to_vec(),
        });
        let invocation = nexus.next_invocation().unwrap();
        assert_eq!(invocation.number, 17);
        assert_eq!(invocation.deadline_ms, 42);
        assert_eq!(invocation.function, "wordcount");
        assert_eq!(invocation.request_id, "req-1");
        assert_eq!(invocation.output_key, None);
        assert_eq!(&invocation.input[..], b"one two three");
        // Room for a context with an output key.
        assert_eq!(
            last_request(&fake).response.meta_capacity(),
            INVOCATION_CONTEXT_WITH_KEY_MAX_LEN
        );
        nexus.complete(invocation.number, Ok(b"3\n")).unwrap();
        nexus.complete(18, Err(b"{\"error\":1}")).unwrap();
        assert_eq!(
            fake.state().backend.completed,
            [
                (17, Outcome::Success, b"3\n".to_vec()),
                (18, Outcome::Error, b"{\"error\":1}".to_vec())
            ]
        );
        // No invocation: the fake answers TIMEOUT.
        assert!(matches!(
            nexus.next_invocation_timeout(5),
            Err(Error::Timeout(_))
        ));
        // An input larger than any buffer: TOO_LARGE, with the size needed.
        fake.state().backend.invocations.push_back(FakeInvocation {
            number: 19,
            function: "f".to_string(),
            request_id: String::new(),
            output_key: None,
            input: vec![1; 2 << 20],
        });
        assert!(matches!(
            nexus.next_invocation(),
            Err(Error::TooLarge { needed, .. }) if needed == 2 << 20
        ));
        drop(invocation);
        assert_no_leak(&nexus);
    }

    fn queue(fake: &FakeDevice, number: u64, output_key: Option<&str>, input: &[u8]) {
        fake.state().backend.invocations.push_back(FakeInvocation {
            number,
            function: "f".to_string(),
            request_id: String::new(),
            output_key: output_key.map(str::to_string),
            input: input.to_vec(),
        });
    }

    #[test]
    fn complete_and_next_share_one_doorbell() {
        let (mut nexus, fake) = fake::nexus();
        queue(&fake, 1, Some("out/1"), b"first");
        queue(&fake, 2, None, b"second");
        let first = nexus.next_invocation().unwrap();
        assert_eq!(first.output_key.as_deref(), Some("out/1"));
        nexus.put_buf_behind("out/1", &first.input).unwrap();
        assert_eq!(nexus.unflushed_write_behind(), 1);
        let notifies = fake.state().notifies;
        let seen = fake.state().seen.len();
        let completion = Completion {
            stored: true,
            ..Completion::success(first.number, &first.input)
        };
        let (done, next) = nexus.complete_and_next(&completion);
        done.unwrap();
        let second = next.unwrap();
        assert_eq!((second.number, &second.input[..]), (2, &b"second"[..]));
        assert_eq!(second.output_key, None);
        // Both requests, one doorbell, no WAIT read (the fake answers on the doorbell).
        let s = fake.state();
        assert_eq!(s.notifies, notifies + 1);
        assert_eq!(s.seen.len(), seen + 2);
        assert_eq!(
            s.seen[seen].decoded.as_ref().unwrap().command(),
            Command::Complete {
                invocation: 1,
                outcome: Outcome::Success,
                stored: true
            }
        );
        assert_eq!(s.seen[seen + 1].decoded.as_ref().unwrap().op(), Op::Next);
        assert_eq!(s.wait_reads, 0);
        assert_eq!(s.backend.stored, [1]);
        assert_eq!(s.backend.objects["out/1"], b"first");
        assert_eq!(
            s.backend.completed,
            [(1, Outcome::Success, b"first".to_vec())]
        );
        drop(s);

        // No next invocation: COMPLETE succeeds, NEXT times out (the fake does not park).
        let completion = Completion::error(second.number, &second.input);
        let (done, next) = nexus.complete_and_next(&completion);
        done.unwrap();
        assert!(matches!(next, Err(Error::Timeout(_))));
        // A STORED error is refused before anything is sent.
        let completion = Completion {
            stored: true,
            ..Completion::error(3, &second.input)
        };
        let sent = fake.state().seen.len();
        let (done, next) = nexus.complete_and_next(&completion);
        assert!(matches!(done, Err(Error::Encode(_))));
        assert!(matches!(next, Err(Error::Timeout(_))));
        assert_eq!(fake.state().seen.len(), sent + 1, "the NEXT alone");
        nexus.flush().unwrap();
        assert_eq!(nexus.unflushed_write_behind(), 0);
        drop((first, second));
        assert_no_leak(&nexus);
    }

    #[test]
    fn complete_and_next_wait_once_for_both_answers() {
        // The fake serves chains on WAIT reads: the first read answers both.
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| s.process_on_notify = false);
        nexus.device_mut().set_poll_spins(0);
        queue(&fake, 5, None, b"in");
        queue(&fake, 6, None, b"next");
        let first = nexus.next_invocation().unwrap();
        let (reads, consumed) = {
            let s = fake.state();
            (s.wait_reads, s.used_idx)
        };
        let spins = nexus.device().stats().spins;
        let (done, next) = nexus.complete_and_next(&Completion::success(5, &first.input));
        done.unwrap();
        assert_eq!(next.unwrap().number, 6);
        // One WAIT read, without polling first, told to sleep through the first answer.
        assert_eq!(fake.state().wait_reads, reads + 1);
        assert_eq!(nexus.device().stats().spins, spins);
        assert_eq!(
            fake.state().used_event_at_wait.last().copied(),
            Some(consumed.wrapping_add(1))
        );
        // Lost backend: both fail, and the next request sets the device up again.
        {
            let mut s = fake.state();
            s.connected = false;
            s.backend_present = false;
        }
        let (done, next) = nexus.complete_and_next(&Completion::success(6, &first.input));
        assert!(matches!(done, Err(Error::BackendUnavailable(_))));
        assert!(matches!(next, Err(Error::BackendUnavailable(_))));
        fake.state().backend_present = true;
        queue(&fake, 7, None, b"again");
        assert_eq!(nexus.next_invocation().unwrap().number, 7);
        drop(first);
        assert_no_leak(&nexus);
    }

    #[test]
    fn bad_responses_are_protocol_errors() {
        let (mut nexus, fake) = fake::nexus();
        fake.state()
            .backend
            .objects
            .insert("k".to_string(), b"v".to_vec());
        for (corrupt, expect) in [
            (Corrupt::WrongId, "id"),
            (Corrupt::BadMagic, "magic"),
            (Corrupt::MetaBeyondCapacity, "meta"),
            (Corrupt::PayloadBeyondCapacity, "payload"),
            (Corrupt::UsedLenZero, "refused"),
        ] {
            fake.state().corrupt = Some(corrupt);
            let error = nexus.get("k").unwrap_err();
            match (expect, &error) {
                ("id", Error::Protocol(nexus_ring::Error::IdMismatch { .. }))
                | ("magic", Error::Protocol(nexus_ring::Error::BadMagic { .. }))
                | ("meta", Error::Protocol(nexus_ring::Error::LengthOutOfRange { .. }))
                | ("payload", Error::Protocol(nexus_ring::Error::LengthOutOfRange { .. }))
                | ("refused", Error::Refused { used_len: 0 }) => {}
                _ => panic!("{corrupt:?}: unexpected {error:?}"),
            }
            // The next request is fine.
            assert_eq!(&nexus.get("k").unwrap()[..], b"v");
        }
        assert_no_leak(&nexus);
    }

    #[test]
    fn backend_loss_fails_the_call_and_the_next_one_recovers() {
        let (mut nexus, fake) = fake::nexus();
        fake.state()
            .backend
            .objects
            .insert("k".to_string(), b"v".to_vec());
        {
            let mut s = fake.state();
            s.connected = false;
            s.backend_present = false;
        }
        assert!(matches!(nexus.get("k"), Err(Error::BackendUnavailable(_))));
        assert!(!nexus.device().is_ready());
        assert!(matches!(
            nexus.put("k", b"w"),
            Err(Error::BackendUnavailable(_))
        ));
        fake.state().backend_present = true;
        assert_eq!(&nexus.get("k").unwrap()[..], b"v");
        assert_eq!(nexus.device().stats().setups, 3);
        assert_no_leak(&nexus);
    }

    #[test]
    fn request_ids_increase_and_headers_are_exact() {
        let (mut nexus, fake) = fake::nexus();
        nexus.delete("a").unwrap();
        nexus.delete("b").unwrap();
        let ids: Vec<u64> = fake
            .state()
            .seen
            .iter()
            .map(|s| s.decoded.as_ref().unwrap().id())
            .collect();
        assert_eq!(ids, [1, 2]);
        // The header bytes in the window re-decode to the same header (the fake decoded them
        // with nexus-ring's Decoder); check the raw bytes of the second.
        let seen = fake.state().seen[1].clone();
        let header = fake.state().mem.segment(seen.descriptors[0].segment());
        assert_eq!(&header[..8], &[0x4E, 0x58, 0x52, 0x51, 1, 0, 6, 0]);
        assert_eq!(u64::from_le_bytes(header[8..16].try_into().unwrap()), 2);
        assert_eq!(seen.descriptors.len(), 3);
        assert!(seen.descriptors[2].writable);
        assert_eq!(seen.used_len, 40);
    }

    #[test]
    fn raw_requests_reach_the_decoder_unchecked() {
        let (mut nexus, fake) = fake::nexus();
        let mut head = nexus.alloc(64).unwrap();
        let mut header = nexus.alloc(48).unwrap();
        header.set_len(48);
        header.fill(0xAA); // bad magic
        let chain = [
            ChainDescriptor::readable(header.data_segment().unwrap()),
            ChainDescriptor::writable(SegmentRef::new(head.gpa(), 40)),
        ];
        // SAFETY: the writable descriptor is `head`'s, not referenced during the call.
        let used = unsafe { nexus.request_raw(&chain) }.unwrap();
        assert_eq!(used, 40);
        head.set_len(40);
        let response = ResponseHeader::decode(&head).unwrap();
        assert_eq!(response.status, Status::InvalidRequest);
        assert_eq!(response.id, 0);
        // Outside the window, with nowhere to answer: used length 0.
        let chain = [
            ChainDescriptor::readable(SegmentRef::new(0x10_0000, 48)),
            ChainDescriptor::writable(SegmentRef::new(0x20_0000, 40)),
        ];
        // SAFETY: no writable descriptor inside the window.
        assert_eq!(unsafe { nexus.request_raw(&chain) }.unwrap(), 0);
        assert!(fake.state().seen.iter().all(|s| s.decoded.is_err()));
        drop((head, header));
        assert_no_leak(&nexus);
    }
}
