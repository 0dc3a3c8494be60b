// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test utilities (feature `test-utils`): a `Vec`-backed I/O window, a request builder, the
//! seedable fuzz input format, sample requests for every op, and the fuzz oracles.
//!
//! With feature `virtio` too: a whole split virtqueue as bytes (`QueueImage`), sample queues
//! and a guest memory that counts accesses (`CountingMemory`).
//!
//! The fuzz targets in `fuzz/` are thin wrappers around [`fuzz_raw`], `fuzz_chain` and
//! `fuzz_queue` (feature `virtio`), so the same checks also run in this crate's tests over the
//! seed corpus.

// Test scaffolding: a panic here is a fuzzing finding, not a decoder path.
#![allow(clippy::panic, clippy::arithmetic_side_effects)]

#[cfg(feature = "virtio")]
mod queue;

use alloc::vec::Vec;

use crate::chain::{ChainDescriptor, Decoder, Rejection, Request, RequestLayout};
use crate::error::{Error, Result};
use crate::header::{RequestHeader, ResponseHeader};
use crate::op::{Command, HttpMethod, LogLevel, Outcome};
use crate::records::{EntryList, Header, HeaderList, InvocationContext, List, ObjectEntry};
use crate::status::Status;
use crate::window::{IoWindow, SegmentRef};
use crate::{REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE};

/// Guest-physical base of every mock window: above the mock virtqueue, which sits at 0.
pub const MOCK_WINDOW_BASE: u64 = 0x1_0000;
#[cfg(feature = "virtio")]
pub use queue::{
    CountingMemory, QueueImage, TableEntry, fuzz_queue, sample_queues, virtio_queue_chain,
};

pub use crate::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// A `Vec`-backed I/O window with a bump allocator, standing in for guest memory.
#[derive(Clone, Debug)]
pub struct MockWindow {
    window: IoWindow,
    bytes: Vec<u8>,
    next: usize,
}

impl MockWindow {
    /// A zeroed window of `size` bytes at [`MOCK_WINDOW_BASE`].
    pub fn new(size: u32) -> Result<Self> {
        Ok(Self {
            window: IoWindow::new(MOCK_WINDOW_BASE, size.into())?,
            bytes: alloc::vec![0; size as usize],
            next: 0,
        })
    }

    /// The window's range.
    pub fn window(&self) -> IoWindow {
        self.window
    }

    /// The window's bytes (`bytes()[0]` is at the window base).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Reserves `len` bytes, 8-byte aligned. `None` when the window is full or `len` is 0.
    pub fn alloc(&mut self, len: u32) -> Option<SegmentRef> {
        let start = self.next.checked_add(7)? & !7;
        let end = start.checked_add(len as usize)?;
        if len == 0 || end > self.bytes.len() {
            return None;
        }
        self.next = end;
        Some(SegmentRef::new(
            self.window.base().checked_add(start as u64)?,
            len,
        ))
    }

    /// Reserves room for `data` and copies it there.
    pub fn place(&mut self, data: &[u8]) -> Option<SegmentRef> {
        let segment = self.alloc(u32::try_from(data.len()).ok()?)?;
        self.write(segment, data).ok()?;
        Some(segment)
    }

    /// The bytes of `segment`.
    pub fn read(&self, segment: SegmentRef) -> Result<&[u8]> {
        let range = self.window.offsets(segment)?;
        self.bytes
            .get(range)
            .ok_or(Error::GuestMemory { addr: segment.addr })
    }

    /// Copies `data` to the start of `segment`.
    pub fn write(&mut self, segment: SegmentRef, data: &[u8]) -> Result<()> {
        let range = self.window.offsets(segment)?;
        let bytes = self
            .bytes
            .get_mut(range)
            .and_then(|b| b.get_mut(..data.len()))
            .ok_or(Error::GuestMemory { addr: segment.addr })?;
        bytes.copy_from_slice(data);
        Ok(())
    }
}

/// A request to lay out in a [`MockWindow`], as a guest driver would.
#[derive(Clone, Copy, Debug)]
pub struct RequestSpec<'a> {
    /// Request id.
    pub id: u64,
    /// Op and arguments.
    pub command: Command,
    /// Key bytes (empty: no key segment).
    pub key: &'a [u8],
    /// Meta bytes (empty: no meta segment).
    pub meta: &'a [u8],
    /// Payload, one segment per slice.
    pub payload: &'a [&'a [u8]],
    /// Capacity of the response meta area.
    pub response_meta: u32,
    /// Lengths of the response payload buffers.
    pub response_payload: &'a [u32],
}

impl RequestSpec<'_> {
    /// Places every part in `window`, writes the header, and returns the chain.
    pub fn build(&self, window: &mut MockWindow) -> Result<Vec<ChainDescriptor>> {
        let full = Error::BufferTooSmall {
            field: crate::Field::Payload,
            needed: 0,
            got: window.bytes.len() as u64,
        };
        let header_at = window.alloc(REQUEST_HEADER_SIZE as u32).ok_or(full)?;
        let place = |w: &mut MockWindow, data: &[u8]| match data.is_empty() {
            true => Ok(None),
            false => w.place(data).map(Some).ok_or(full),
        };
        let key = place(window, self.key)?;
        let meta = place(window, self.meta)?;
        let mut payload = Vec::new();
        for part in self.payload {
            payload.push(window.place(part).ok_or(full)?);
        }
        let head_len = (RESPONSE_HEADER_SIZE as u32).saturating_add(self.response_meta);
        let response_head = window.alloc(head_len).ok_or(full)?;
        let mut response_payload = Vec::new();
        for len in self.response_payload {
            response_payload.push(window.alloc(*len).ok_or(full)?);
        }
        let layout = RequestLayout {
            header: header_at.addr,
            key,
            meta,
            payload: &payload,
            response_head,
            response_payload: &response_payload,
        };
        let header = layout.header(self.id, self.command)?;
        window.write(header_at, &header.to_bytes()?)?;
        Ok(layout.descriptors().collect())
    }
}

/// One descriptor of a [`ChainImage`], with raw virtio flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockDescriptor {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Virtio flags: [`VIRTQ_DESC_F_WRITE`], [`VIRTQ_DESC_F_INDIRECT`] (NEXT is managed by the
    /// chain builder).
    pub flags: u16,
}

/// A descriptor chain plus the window it points into: the input of the `decode_chain` fuzz
/// target and of [`fuzz_chain`].
///
/// Byte format (all little-endian): `u8` descriptor count `n`; `n` × 16 bytes
/// `{ u64 addr, u32 len, u16 flags, u16 reserved }`; then the window image, whose first byte
/// is at [`MOCK_WINDOW_BASE`]. An empty image means no window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainImage {
    /// The chain, head first.
    pub descriptors: Vec<MockDescriptor>,
    /// The window's bytes.
    pub image: Vec<u8>,
}

impl ChainImage {
    /// The largest window image accepted, to keep fuzzing memory bounded.
    pub const MAX_IMAGE_LEN: usize = 1 << 20;
    /// Size of one encoded descriptor.
    pub const DESCRIPTOR_SIZE: usize = 16;

    /// The chain `descriptors` over `window`, whose image is cut after the last allocated
    /// byte (so seeds stay small).
    pub fn new(descriptors: &[ChainDescriptor], window: &MockWindow) -> Self {
        Self {
            descriptors: descriptors
                .iter()
                .map(|d| MockDescriptor {
                    addr: d.addr,
                    len: d.len,
                    flags: if d.writable { VIRTQ_DESC_F_WRITE } else { 0 },
                })
                .collect(),
            image: window
                .bytes
                .get(..window.next)
                .unwrap_or(&window.bytes)
                .to_vec(),
        }
    }

    /// The window the image stands for, if the image is not empty.
    pub fn window(&self) -> Option<IoWindow> {
        IoWindow::new(MOCK_WINDOW_BASE, self.image.len() as u64).ok()
    }

    /// The descriptors as the protocol sees them.
    pub fn chain_descriptors(&self) -> impl Iterator<Item = ChainDescriptor> + '_ {
        self.descriptors.iter().map(|d| ChainDescriptor {
            addr: d.addr,
            len: d.len,
            writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
        })
    }

    /// Whether any descriptor asks for an indirect table (meaningful only through virtio).
    pub fn has_indirect(&self) -> bool {
        self.descriptors
            .iter()
            .any(|d| d.flags & VIRTQ_DESC_F_INDIRECT != 0)
    }

    /// The encoded input.
    pub fn to_bytes(&self) -> Vec<u8> {
        let count = self.descriptors.len().min(u8::MAX.into());
        let mut out = Vec::with_capacity(1 + count * Self::DESCRIPTOR_SIZE + self.image.len());
        out.push(count as u8);
        for d in self.descriptors.iter().take(count) {
            out.extend_from_slice(&d.addr.to_le_bytes());
            out.extend_from_slice(&d.len.to_le_bytes());
            out.extend_from_slice(&d.flags.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out.extend_from_slice(&self.image);
        out
    }

    /// Parses an input; `None` if it is shorter than its descriptor table says.
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        let (&count, mut rest) = data.split_first()?;
        let mut descriptors = Vec::with_capacity(count.into());
        for _ in 0..count {
            let (d, tail) = rest.split_first_chunk::<16>()?;
            rest = tail;
            let (addr, d) = d.split_first_chunk::<8>()?;
            let (len, d) = d.split_first_chunk::<4>()?;
            let (flags, _) = d.split_first_chunk::<2>()?;
            descriptors.push(MockDescriptor {
                addr: u64::from_le_bytes(*addr),
                len: u32::from_le_bytes(*len),
                flags: u16::from_le_bytes(*flags),
            });
        }
        let image = rest.get(..rest.len().min(Self::MAX_IMAGE_LEN))?.to_vec();
        Some(Self { descriptors, image })
    }

    /// Decodes with [`Decoder::decode_image`] (no virtio queue involved).
    pub fn decode(&self) -> Option<core::result::Result<Request, Rejection>> {
        let decoder = Decoder::new(self.window()?);
        Some(decoder.decode_image(self.chain_descriptors(), &self.image))
    }

    /// Builds the chain in a mock split virtqueue in guest memory (`virtio_queue::mock`) and
    /// decodes it with [`Decoder::decode_chain`], as the device does. `None` if the window is
    /// empty, the chain is empty or the queue could not be built.
    #[cfg(feature = "virtio")]
    pub fn decode_virtio(&self) -> Option<core::result::Result<Request, Rejection>> {
        use virtio_queue::desc::{RawDescriptor, split::Descriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

        /// Room after the window, so that descriptors just past it hit mapped memory and are
        /// refused by the window check rather than by the memory.
        const SLACK: usize = 0x1000;
        const QUEUE_SIZE: u16 = 256;

        let window = self.window()?;
        if self.descriptors.is_empty() {
            return None;
        }
        let size = (MOCK_WINDOW_BASE as usize)
            .checked_add(self.image.len())?
            .checked_add(SLACK)?;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).ok()?;
        memory
            .write_slice(&self.image, GuestAddress(MOCK_WINDOW_BASE))
            .ok()?;
        let queue = MockSplitQueue::new(&memory, QUEUE_SIZE);
        let raw: Vec<RawDescriptor> = self
            .descriptors
            .iter()
            .take(usize::from(QUEUE_SIZE) - 1)
            .map(|d| RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, 0)))
            .collect();
        let chain = queue.build_desc_chain(&raw).ok()?;
        Some(Decoder::new(window).decode_chain(chain))
    }
}

/// Every [`ChainDescriptor`] of `request`, in chain order (for round-trip comparisons).
pub fn request_descriptors(request: &Request, header_at: u64) -> Vec<ChainDescriptor> {
    RequestLayout {
        header: header_at,
        key: request.key,
        meta: request.meta,
        payload: request.payload.as_slice(),
        response_head: request.response.head,
        response_payload: request.response.payload.as_slice(),
    }
    .descriptors()
    .collect()
}

/// A valid request chain for every op (several for some), each in its own 64 KiB window.
pub fn sample_requests() -> Vec<(&'static str, ChainImage)> {
    let headers = HeaderList::encode_to_vec(&[
        Header {
            name: "content-type",
            value: b"application/json",
        },
        Header {
            name: "x-trace",
            value: b"abc123",
        },
    ])
    .unwrap_or_default();
    let specs: [(&str, RequestSpec<'_>); 17] = [
        (
            "next",
            RequestSpec {
                id: 1,
                command: Command::Next { timeout_ms: 0 },
                key: b"",
                meta: b"",
                payload: &[],
                response_meta: crate::records::INVOCATION_CONTEXT_MAX_LEN,
                response_payload: &[4096],
            },
        ),
        (
            "complete",
            RequestSpec {
                id: 2,
                command: Command::Complete {
                    invocation: 77,
                    outcome: Outcome::Success,
                    stored: false,
                },
                key: b"",
                meta: b"",
                payload: &[b"{\"ok\":true}"],
                response_meta: 0,
                response_payload: &[],
            },
        ),
        (
            "complete_stored",
            RequestSpec {
                id: 17,
                command: Command::Complete {
                    invocation: 79,
                    outcome: Outcome::Success,
                    stored: true,
                },
                key: b"",
                meta: b"",
                payload: &[b"{\"stored\":true}"],
                response_meta: 0,
                response_payload: &[],
            },
        ),
        (
            "complete_error",
            RequestSpec {
                id: 3,
                command: Command::Complete {
                    invocation: 78,
                    outcome: Outcome::Error,
                    stored: false,
                },
                key: b"",
                meta: b"",
                payload: &[b"{\"error\":\"boom\"}"],
                response_meta: 128,
                response_payload: &[],
            },
        ),
        (
            "get",
            RequestSpec {
                id: 4,
                command: Command::Get {
                    offset: 0,
                    max_len: 0,
                },
                key: b"inputs/photo.jpg",
                meta: b"",
                payload: &[],
                response_meta: 0,
                response_payload: &[4096],
            },
        ),
        (
            "get_range",
            RequestSpec {
                id: 5,
                command: Command::Get {
                    offset: 1 << 20,
                    max_len: 12288,
                },
                key: b"inputs/video.mp4",
                meta: b"",
                payload: &[],
                response_meta: 256,
                response_payload: &[4096, 4096, 4096],
            },
        ),
        (
            "put",
            RequestSpec {
                id: 6,
                command: Command::Put {
                    write_behind: false,
                },
                key: b"outputs/result.json",
                meta: b"",
                payload: &[b"{\"answer\":42}"],
                response_meta: 0,
                response_payload: &[],
            },
        ),
        (
            "put_write_behind",
            RequestSpec {
                id: 7,
                command: Command::Put { write_behind: true },
                key: b"outputs/thumb.png",
                meta: b"",
                payload: &[&[0x89, b'P', b'N', b'G'], &[0u8; 100]],
                response_meta: 64,
                response_payload: &[],
            },
        ),
        (
            "head",
            RequestSpec {
                id: 8,
                command: Command::Head,
                key: b"inputs/photo.jpg",
                meta: b"",
                payload: &[],
                response_meta: crate::records::OBJECT_INFO_MAX_LEN,
                response_payload: &[],
            },
        ),
        (
            "delete",
            RequestSpec {
                id: 9,
                command: Command::Delete,
                key: b"tmp/scratch",
                meta: b"",
                payload: &[],
                response_meta: 0,
                response_payload: &[],
            },
        ),
        (
            "list",
            RequestSpec {
                id: 10,
                command: Command::List { max_entries: 100 },
                key: b"outputs/",
                meta: b"token-1",
                payload: &[],
                response_meta: crate::limits::MAX_TOKEN_LEN,
                response_payload: &[8192],
            },
        ),
        (
            "list_all",
            RequestSpec {
                id: 11,
                command: Command::List { max_entries: 0 },
                key: b"",
                meta: b"",
                payload: &[],
                response_meta: crate::limits::MAX_TOKEN_LEN,
                response_payload: &[4096],
            },
        ),
        (
            "invoke",
            RequestSpec {
                id: 12,
                command: Command::Invoke {
                    timeout_ms: 5000,
                    asynchronous: false,
                },
                key: b"resize-image",
                meta: b"",
                payload: &[b"{\"width\":128}"],
                response_meta: 64,
                response_payload: &[4096],
            },
        ),
        (
            "http",
            RequestSpec {
                id: 13,
                command: Command::Http {
                    method: HttpMethod::Post,
                    timeout_ms: 1000,
                },
                key: b"https://api.example.com/v1/items",
                meta: &headers,
                payload: &[b"{\"name\":\"x\"}"],
                response_meta: 1024,
                response_payload: &[4096],
            },
        ),
        (
            "flush",
            RequestSpec {
                id: 14,
                command: Command::Flush { timeout_ms: 30_000 },
                key: b"",
                meta: b"",
                payload: &[],
                response_meta: crate::limits::MAX_KEY_LEN,
                response_payload: &[],
            },
        ),
        (
            "log",
            RequestSpec {
                id: 15,
                command: Command::Log {
                    level: LogLevel::Info,
                },
                key: b"",
                meta: b"",
                payload: &[b"processing 3 items\n"],
                response_meta: 0,
                response_payload: &[],
            },
        ),
        (
            "invoke_async",
            RequestSpec {
                id: 16,
                command: Command::Invoke {
                    timeout_ms: 0,
                    asynchronous: true,
                },
                key: b"send-mail",
                meta: b"",
                payload: &[b"to=a@example.com"],
                response_meta: 0,
                response_payload: &[],
            },
        ),
    ];
    specs
        .iter()
        .filter_map(|(name, spec)| {
            let mut window = MockWindow::new(0x1_0000).ok()?;
            let descriptors = spec.build(&mut window).ok()?;
            Some((*name, ChainImage::new(&descriptors, &window)))
        })
        .collect()
}

/// Selector byte of a [`fuzz_raw`] input: which decoder the rest goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RawKind {
    /// [`RequestHeader::decode`].
    RequestHeader = 0,
    /// [`ResponseHeader::decode`].
    ResponseHeader = 1,
    /// [`InvocationContext::decode`].
    InvocationContext = 2,
    /// [`ObjectEntry::decode`].
    ObjectEntry = 3,
    /// [`EntryList::decode`].
    EntryList = 4,
    /// [`HeaderList::decode`].
    HeaderList = 5,
    /// [`ChainImage::from_bytes`] then [`ChainImage::decode`].
    ChainImage = 6,
}

impl RawKind {
    /// Every kind.
    pub const ALL: [RawKind; 7] = [
        RawKind::RequestHeader,
        RawKind::ResponseHeader,
        RawKind::InvocationContext,
        RawKind::ObjectEntry,
        RawKind::EntryList,
        RawKind::HeaderList,
        RawKind::ChainImage,
    ];

    fn from_byte(b: u8) -> RawKind {
        RawKind::ALL
            .get(usize::from(b) % RawKind::ALL.len())
            .copied()
            .unwrap_or(RawKind::RequestHeader)
    }
}

/// Valid encodings of every record kind, as `(name, selector-prefixed input)` for
/// [`fuzz_raw`]. Chain images come from [`sample_requests`].
pub fn sample_records() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |name, kind: RawKind, bytes: Result<Vec<u8>>| {
        if let Ok(bytes) = bytes {
            let mut input = alloc::vec![kind as u8];
            input.extend_from_slice(&bytes);
            out.push((name, input));
        }
    };
    let request = RequestHeader {
        id: 42,
        command: Command::Get {
            offset: 4096,
            max_len: 8192,
        },
        key_len: 11,
        meta_len: 0,
        payload_len: 0,
    };
    push(
        "request_header",
        RawKind::RequestHeader,
        request.to_bytes().map(|b| b.to_vec()),
    );
    let response = ResponseHeader {
        meta_len: 0,
        payload_len: 4096,
        total: 1 << 20,
        ..ResponseHeader::new(42, Status::Ok)
    };
    push(
        "response_header",
        RawKind::ResponseHeader,
        response.to_bytes().map(|b| b.to_vec()),
    );
    let failed = ResponseHeader {
        meta_len: 19,
        detail: 1,
        ..ResponseHeader::new(43, Status::UploadFailed)
    };
    push(
        "response_upload_failed",
        RawKind::ResponseHeader,
        failed.to_bytes().map(|b| b.to_vec()),
    );
    let context = InvocationContext {
        invocation: 77,
        deadline_ms: 1_800_000_000_000,
        async_durability: true,
        function: "resize-image",
        request_id: "8f14e45f-ceea-467f-a8f9-1b2c3d4e5f60",
        output_key: None,
    };
    push(
        "invocation_context",
        RawKind::InvocationContext,
        context.to_vec(),
    );
    let keyed = InvocationContext {
        output_key: Some("outputs/photo-thumb.jpg"),
        ..context
    };
    push(
        "invocation_context_output_key",
        RawKind::InvocationContext,
        keyed.to_vec(),
    );
    let entry = ObjectEntry {
        size: 1234,
        last_modified_ms: 1_700_000_000_000,
        key: "",
        etag: "\"d41d8cd98f00b204e9800998ecf8427e\"",
    };
    push("object_info", RawKind::ObjectEntry, entry.to_vec());
    let entries = [
        ObjectEntry {
            key: "outputs/a.json",
            ..entry
        },
        ObjectEntry {
            key: "outputs/b.json",
            size: 0,
            etag: "",
            ..entry
        },
    ];
    push(
        "entry_list",
        RawKind::EntryList,
        EntryList::encode_to_vec(&entries),
    );
    push(
        "entry_list_empty",
        RawKind::EntryList,
        EntryList::encode_to_vec(&[]),
    );
    let headers = [
        Header {
            name: "content-type",
            value: b"text/plain",
        },
        Header {
            name: "x-empty",
            value: b"",
        },
    ];
    push(
        "header_list",
        RawKind::HeaderList,
        HeaderList::encode_to_vec(&headers),
    );
    out
}

/// The `decode_raw` fuzz oracle: feeds `data[1..]` to the decoder `data[0]` selects. Every
/// accepted input must re-encode to exactly the same bytes; a panic is a finding.
pub fn fuzz_raw(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match RawKind::from_byte(selector) {
        RawKind::RequestHeader => {
            if let Ok(header) = RequestHeader::decode(bytes) {
                assert_eq!(header.to_bytes().ok().as_ref().map(|b| &b[..]), Some(bytes));
            }
        }
        RawKind::ResponseHeader => {
            if let Ok(header) = ResponseHeader::decode(bytes) {
                assert_eq!(header.to_bytes().ok().as_ref().map(|b| &b[..]), Some(bytes));
            }
        }
        RawKind::InvocationContext => {
            if let Ok(context) = InvocationContext::decode(bytes) {
                assert_eq!(context.to_vec().ok().as_deref(), Some(bytes));
            }
        }
        RawKind::ObjectEntry => {
            if let Ok(entry) = ObjectEntry::decode(bytes) {
                assert_eq!(entry.to_vec().ok().as_deref(), Some(bytes));
            }
        }
        RawKind::EntryList => check_list::<ObjectEntry<'_>>(bytes),
        RawKind::HeaderList => check_list::<Header<'_>>(bytes),
        RawKind::ChainImage => {
            if let Some(image) = ChainImage::from_bytes(bytes) {
                if let Some(Ok(request)) = image.decode() {
                    check_request(&image, &request);
                }
            }
        }
    }
}

fn check_list<'a, T>(bytes: &'a [u8])
where
    T: crate::records::ListItem<'a> + core::fmt::Debug + 'a,
{
    if let Ok(list) = List::<T>::decode(bytes) {
        let items: Vec<T> = list.iter().collect();
        assert_eq!(items.len() as u64, u64::from(list.len()));
        assert_eq!(
            List::<T>::encode_to_vec(&items).ok().as_deref(),
            Some(bytes)
        );
    }
}

/// Invariants of an accepted request: every segment inside the window, lengths as declared,
/// the header re-encodes to the bytes in the window, and the chain re-lays out identically.
fn check_request(image: &ChainImage, request: &Request) {
    let Some(window) = image.window() else {
        panic!("a request was decoded without a window");
    };
    let mut all = Vec::new();
    all.extend(request.key);
    all.extend(request.meta);
    all.extend(request.payload.iter().copied());
    all.push(request.response.head);
    all.extend(request.response.payload.iter().copied());
    for segment in &all {
        assert!(segment.len > 0);
        assert!(window.contains(segment.addr, segment.len.into()));
    }
    assert_eq!(request.key.map_or(0, |k| k.len), request.header.key_len);
    assert_eq!(request.meta.map_or(0, |m| m.len), request.header.meta_len);
    assert_eq!(request.payload.total_len(), request.header.payload_len);
    assert!(request.response.meta_capacity() >= request.op().rules().response_meta_min);
    let Some(head) = image.descriptors.first() else {
        panic!("a request was decoded from an empty chain");
    };
    let header_at = SegmentRef::new(head.addr, REQUEST_HEADER_SIZE as u32);
    let stored = window
        .offsets(header_at)
        .ok()
        .and_then(|range| image.image.get(range));
    assert_eq!(
        request.header.to_bytes().ok().as_ref().map(|b| &b[..]),
        stored
    );
    let expected: Vec<ChainDescriptor> = image.chain_descriptors().collect();
    assert_eq!(request_descriptors(request, head.addr), expected);
}

/// The `decode_chain` fuzz oracle: decodes `image` through a mock virtqueue, as the device
/// does, and checks the result against [`ChainImage::decode`] and the request invariants.
#[cfg(feature = "virtio")]
pub fn fuzz_chain(image: &ChainImage) {
    let Some(through_queue) = image.decode_virtio() else {
        return;
    };
    if let Ok(request) = &through_queue {
        // Indirect tables are resolved by the virtqueue, so the flat view differs.
        if !image.has_indirect() {
            check_request(image, request);
        }
    }
    // Whatever the flat decoder accepts, the device accepts identically. (The converse
    // does not hold: the virtqueue ends a chain whose lengths add up past 4 GiB early.)
    if !image.has_indirect() {
        if let Some(Ok(flat)) = image.decode() {
            assert_eq!(through_queue.ok(), Some(flat));
        }
    }
}
