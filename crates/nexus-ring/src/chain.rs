// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Requests as descriptor chains: the guest's layout and the device/backend's decoder.

use core::fmt;

use crate::error::{Error, Field, Result};
use crate::header::{RequestHeader, ResponseHeader};
use crate::limits::{MAX_META_LEN, MAX_PAYLOAD_LEN, MAX_PAYLOAD_SEGMENTS};
use crate::op::{Command, Op};
use crate::status::Status;
use crate::window::{IoWindow, SegmentList, SegmentRef};
use crate::{PROTOCOL_VERSION, REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE};

/// The most descriptors a valid request chain has: header, key, meta, the request payload
/// segments, the response head and the response payload buffers.
pub const MAX_CHAIN_LEN: usize = 4 + 2 * MAX_PAYLOAD_SEGMENTS;

/// Split virtqueue descriptor flag: the chain goes on at the descriptor's `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Split virtqueue descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Split virtqueue descriptor flag: the buffer is an indirect descriptor table. Nexus devices
/// do not offer `VIRTIO_F_INDIRECT_DESC`.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// One descriptor of a chain, as the protocol sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChainDescriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`) rather than device-readable.
    pub writable: bool,
}

impl ChainDescriptor {
    /// A device-readable descriptor for `segment`.
    pub const fn readable(segment: SegmentRef) -> Self {
        Self {
            addr: segment.addr,
            len: segment.len,
            writable: false,
        }
    }

    /// A device-writable descriptor for `segment`.
    pub const fn writable(segment: SegmentRef) -> Self {
        Self {
            addr: segment.addr,
            len: segment.len,
            writable: true,
        }
    }

    /// The buffer of this descriptor.
    pub const fn segment(&self) -> SegmentRef {
        SegmentRef::new(self.addr, self.len)
    }
}

/// Checks the device-writable part of a chain for `op`: the response head's length and the
/// response payload buffers.
fn check_response(op: Op, head_len: u32, buffers: usize, capacity: u32) -> Result<()> {
    let rules = op.rules();
    let header = RESPONSE_HEADER_SIZE as u64;
    let min = header.saturating_add(rules.response_meta_min.into());
    let max = header.saturating_add(MAX_META_LEN.into());
    let len = u64::from(head_len);
    if len < min || len > max {
        return Err(Error::LengthOutOfRange {
            field: Field::ResponseHeader,
            len,
            min,
            max,
        });
    }
    if !rules.response_payload && buffers != 0 {
        return Err(Error::UnexpectedSegment(Field::ResponsePayload));
    }
    if capacity > MAX_PAYLOAD_LEN {
        return Err(Error::LengthOutOfRange {
            field: Field::ResponsePayload,
            len: capacity.into(),
            min: 0,
            max: MAX_PAYLOAD_LEN.into(),
        });
    }
    Ok(())
}

/// Total length of a guest's segment list, checked as the decoder will: at most
/// [`MAX_PAYLOAD_SEGMENTS`] non-empty segments whose lengths add up without overflow.
fn stream_len(segments: &[SegmentRef], field: Field) -> Result<u32> {
    if segments.len() > MAX_PAYLOAD_SEGMENTS {
        return Err(Error::TooManySegments {
            field,
            max: MAX_PAYLOAD_SEGMENTS as u64,
        });
    }
    segments.iter().try_fold(0u32, |total, segment| {
        if segment.len == 0 {
            return Err(Error::EmptySegment { addr: segment.addr });
        }
        total
            .checked_add(segment.len)
            .ok_or(Error::LengthOutOfRange {
                field,
                len: u64::from(total).saturating_add(segment.len.into()),
                min: 0,
                max: u32::MAX.into(),
            })
    })
}

/// The guest's description of one request: where each part lies in the window.
///
/// [`header`](Self::header) computes the request header's lengths from the segments and checks
/// the layout as the decoder will; [`descriptors`](Self::descriptors) yields the chain to put
/// on the request queue, in protocol order.
#[derive(Clone, Copy, Debug)]
pub struct RequestLayout<'a> {
    /// Guest-physical address of the [`REQUEST_HEADER_SIZE`]-byte request header.
    pub header: u64,
    /// The key segment, if the op has one.
    pub key: Option<SegmentRef>,
    /// The meta segment, if the op has one.
    pub meta: Option<SegmentRef>,
    /// The request payload segments.
    pub payload: &'a [SegmentRef],
    /// The response head: response header followed by the response meta area.
    pub response_head: SegmentRef,
    /// The response payload buffers.
    pub response_payload: &'a [SegmentRef],
}

impl<'a> RequestLayout<'a> {
    /// The request header for this layout, checked against every rule the decoder applies
    /// except the window bounds.
    pub fn header(&self, id: u64, command: Command) -> Result<RequestHeader> {
        let len_of = |segment: Option<SegmentRef>| match segment {
            Some(s) if s.len == 0 => Err(Error::EmptySegment { addr: s.addr }),
            Some(s) => Ok(s.len),
            None => Ok(0),
        };
        let payload_len = stream_len(self.payload, Field::Payload)?;
        let response_len = stream_len(self.response_payload, Field::ResponsePayload)?;
        let header = RequestHeader {
            id,
            command,
            key_len: len_of(self.key)?,
            meta_len: len_of(self.meta)?,
            payload_len,
        };
        header.validate()?;
        check_response(
            header.op(),
            self.response_head.len,
            self.response_payload.len(),
            response_len,
        )?;
        Ok(header)
    }

    /// The descriptors of the chain, in protocol order: header, key, meta, payload (all
    /// device-readable), then the response head and the response payload buffers
    /// (device-writable).
    pub fn descriptors(&self) -> impl Iterator<Item = ChainDescriptor> + 'a {
        let header = SegmentRef::new(self.header, REQUEST_HEADER_SIZE as u32);
        core::iter::once(header)
            .chain(self.key)
            .chain(self.meta)
            .chain(self.payload.iter().copied())
            .map(ChainDescriptor::readable)
            .chain(core::iter::once(ChainDescriptor::writable(
                self.response_head,
            )))
            .chain(
                self.response_payload
                    .iter()
                    .copied()
                    .map(ChainDescriptor::writable),
            )
    }
}

/// Where the backend writes its answer to a request; every segment is inside the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseTarget {
    /// The first device-writable descriptor: [`RESPONSE_HEADER_SIZE`] bytes of response
    /// header, then the meta area.
    pub head: SegmentRef,
    /// The response payload buffers.
    pub payload: SegmentList,
}

impl ResponseTarget {
    /// Where the response header goes: the first [`RESPONSE_HEADER_SIZE`] bytes of the head.
    pub fn header(&self) -> SegmentRef {
        SegmentRef::new(self.head.addr, RESPONSE_HEADER_SIZE as u32)
    }

    /// The meta area: the rest of the head, if any.
    pub fn meta(&self) -> Option<SegmentRef> {
        let capacity = self.meta_capacity();
        if capacity == 0 {
            return None;
        }
        self.head.sub(RESPONSE_HEADER_SIZE as u32, capacity)
    }

    /// Bytes available in the meta area.
    pub fn meta_capacity(&self) -> u32 {
        self.head.len.saturating_sub(RESPONSE_HEADER_SIZE as u32)
    }

    /// Bytes available in the payload buffers.
    pub fn payload_capacity(&self) -> u32 {
        self.payload.total_len()
    }

    /// The backend's check of its own answer before writing it: valid, and no more bytes
    /// claimed than the guest offered.
    pub fn check(&self, response: &ResponseHeader) -> Result<()> {
        response.validate()?;
        response.check_reply(response.id, self.meta_capacity(), self.payload_capacity())
    }
}

/// A decoded, validated request. The backend reads the key, meta and payload bytes from its
/// own mapping of the window (see [`IoWindow::offsets`]), copying small segments once before
/// interpreting them: the guest can change window bytes at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// The request header.
    pub header: RequestHeader,
    /// The key segment (`header.key_len` bytes), if any.
    pub key: Option<SegmentRef>,
    /// The meta segment (`header.meta_len` bytes), if any.
    pub meta: Option<SegmentRef>,
    /// The payload segments (`header.payload_len` bytes in all).
    pub payload: SegmentList,
    /// Where the response goes.
    pub response: ResponseTarget,
}

impl Request {
    /// The op.
    pub const fn op(&self) -> Op {
        self.header.op()
    }

    /// The request id.
    pub const fn id(&self) -> u64 {
        self.header.id
    }

    /// The op and its arguments.
    pub const fn command(&self) -> Command {
        self.header.command
    }
}

/// A refused chain: why, and how to tell the guest if that is possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why the chain was refused.
    pub error: Error,
    /// The request id, if the header descriptor was readable and its magic right.
    pub id: Option<u64>,
    /// The response head, if the chain has a well-formed one inside the window.
    pub response: Option<SegmentRef>,
}

impl Rejection {
    /// The response header to write at [`response`](Self::response):
    /// [`Status::UnsupportedVersion`] (detail: our version) for a version mismatch,
    /// [`Status::InvalidRequest`] otherwise. `None` if there is nowhere to write it.
    pub fn response_header(&self) -> Option<ResponseHeader> {
        self.response?;
        let id = self.id.unwrap_or(0);
        Some(match self.error {
            Error::UnsupportedVersion(_) => ResponseHeader {
                detail: PROTOCOL_VERSION.into(),
                ..ResponseHeader::new(id, Status::UnsupportedVersion)
            },
            _ => ResponseHeader::new(id, Status::InvalidRequest),
        })
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "request {id} refused: {}", self.error),
            None => write!(f, "request refused: {}", self.error),
        }
    }
}

impl core::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The descriptors of a chain, gathered without allocation before any is trusted.
pub(crate) struct Collected {
    descriptors: [ChainDescriptor; MAX_CHAIN_LEN],
    len: usize,
    pub(crate) error: Option<Error>,
}

impl Collected {
    pub(crate) const fn new() -> Self {
        Collected {
            descriptors: [ChainDescriptor {
                addr: 0,
                len: 0,
                writable: false,
            }; MAX_CHAIN_LEN],
            len: 0,
            error: None,
        }
    }

    /// Gathers up to [`MAX_CHAIN_LEN`] descriptors in place (no large value is moved).
    pub(crate) fn gather<I: IntoIterator<Item = ChainDescriptor>>(&mut self, descriptors: I) {
        let collected = self;
        let mut seen_writable = false;
        for descriptor in descriptors {
            if descriptor.writable {
                seen_writable = true;
            } else if seen_writable {
                collected.error = Some(Error::ReadableAfterWritable);
                break;
            }
            match collected.descriptors.get_mut(collected.len) {
                Some(slot) => *slot = descriptor,
                None => {
                    collected.error = Some(Error::ChainTooLong {
                        max: MAX_CHAIN_LEN as u64,
                    });
                    break;
                }
            }
            collected.len = collected.len.saturating_add(1);
        }
    }

    fn as_slice(&self) -> &[ChainDescriptor] {
        self.descriptors.get(..self.len).unwrap_or(&[])
    }
}

/// Decodes request chains for one VM, checking every descriptor against its [`IoWindow`].
///
/// The rules, in order: every descriptor is non-empty and inside the window; device-readable
/// descriptors come first; the first is the request header, exactly
/// [`REQUEST_HEADER_SIZE`] bytes, and it is the only one read; then come exactly the key,
/// meta and payload segments the header announces; the first device-writable descriptor is
/// the response head, sized for the op; further device-writable descriptors are response
/// payload buffers, where the op allows them. Limits are in [`crate::limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decoder {
    window: IoWindow,
}

impl Decoder {
    /// A decoder for the VM whose I/O window is `window`.
    pub const fn new(window: IoWindow) -> Self {
        Self { window }
    }

    /// The window this decoder checks against.
    pub const fn window(&self) -> IoWindow {
        self.window
    }

    /// Decodes a chain. `read_header` copies the bytes of the (already window-checked)
    /// header segment out of guest memory; it is called at most once.
    pub fn decode<I, F>(
        &self,
        descriptors: I,
        read_header: F,
    ) -> core::result::Result<Request, Rejection>
    where
        I: IntoIterator<Item = ChainDescriptor>,
        F: FnOnce(SegmentRef, &mut [u8; REQUEST_HEADER_SIZE]) -> Result<()>,
    {
        let mut collected = Collected::new();
        collected.gather(descriptors);
        self.finish(&collected, read_header)
    }

    /// Decodes a chain whose header is read from `image`, a copy of the window's bytes
    /// (`image[0]` is the byte at the window base). For tests, tools and fuzzing.
    pub fn decode_image<I>(
        &self,
        descriptors: I,
        image: &[u8],
    ) -> core::result::Result<Request, Rejection>
    where
        I: IntoIterator<Item = ChainDescriptor>,
    {
        let window = self.window;
        self.decode(descriptors, |segment, out| {
            let bytes = window
                .offsets(segment)
                .ok()
                .and_then(|range| image.get(range))
                .ok_or(Error::GuestMemory { addr: segment.addr })?;
            match bytes.split_first_chunk::<REQUEST_HEADER_SIZE>() {
                Some((head, _)) => {
                    out.copy_from_slice(head);
                    Ok(())
                }
                None => Err(Error::GuestMemory { addr: segment.addr }),
            }
        })
    }

    /// The response head of a chain, if it has a well-formed one inside the window.
    fn response_head(&self, writable: &[ChainDescriptor]) -> Option<SegmentRef> {
        let head = writable.first()?;
        let segment = self.window.check(head.addr, head.len).ok()?;
        let min = RESPONSE_HEADER_SIZE as u32;
        let max = min.saturating_add(MAX_META_LEN);
        (min..=max).contains(&segment.len).then_some(segment)
    }

    pub(crate) fn finish<F>(
        &self,
        collected: &Collected,
        read_header: F,
    ) -> core::result::Result<Request, Rejection>
    where
        F: FnOnce(SegmentRef, &mut [u8; REQUEST_HEADER_SIZE]) -> Result<()>,
    {
        let descriptors = collected.as_slice();
        let split = descriptors
            .iter()
            .position(|d| d.writable)
            .unwrap_or(descriptors.len());
        let (readable, writable) = descriptors
            .split_at_checked(split)
            .unwrap_or((descriptors, &[]));
        let mut rejection = Rejection {
            error: Error::MissingSegment(Field::RequestHeader),
            id: None,
            response: self.response_head(writable),
        };

        // 1. Every descriptor inside the window, before a single byte is read.
        for descriptor in descriptors {
            if let Err(error) = self.window.check(descriptor.addr, descriptor.len) {
                rejection.error = error;
                return Err(rejection);
            }
        }

        // 2. The header: the first descriptor, device-readable, exact size; read once.
        let Some((header_desc, rest)) = readable.split_first() else {
            return Err(rejection);
        };
        if header_desc.len as usize != REQUEST_HEADER_SIZE {
            rejection.error = Error::SegmentLengthMismatch {
                field: Field::RequestHeader,
                declared: REQUEST_HEADER_SIZE as u64,
                actual: header_desc.len.into(),
            };
            return Err(rejection);
        }
        let mut bytes = [0u8; REQUEST_HEADER_SIZE];
        if let Err(error) = read_header(header_desc.segment(), &mut bytes) {
            rejection.error = error;
            return Err(rejection);
        }
        rejection.id = RequestHeader::peek_id(&bytes);
        if let Some(error) = collected.error {
            rejection.error = error;
            return Err(rejection);
        }
        let header = match RequestHeader::decode(&bytes) {
            Ok(header) => header,
            Err(error) => {
                rejection.error = error;
                return Err(rejection);
            }
        };

        let mut request = Request {
            header,
            key: None,
            meta: None,
            payload: SegmentList::new(),
            response: ResponseTarget {
                head: SegmentRef::default(),
                payload: SegmentList::new(),
            },
        };
        match Self::segments(&mut request, rest, writable) {
            Ok(()) => Ok(request),
            Err(error) => {
                rejection.error = error;
                Err(rejection)
            }
        }
    }

    /// Matches the segments after the header against the header's lengths and op rules,
    /// filling in `request`.
    fn segments(
        request: &mut Request,
        mut rest: &[ChainDescriptor],
        writable: &[ChainDescriptor],
    ) -> Result<()> {
        let header = request.header;
        let mut take = |declared: u32, field: Field| -> Result<Option<SegmentRef>> {
            if declared == 0 {
                return Ok(None);
            }
            let (first, tail) = rest.split_first().ok_or(Error::MissingSegment(field))?;
            rest = tail;
            if first.len != declared {
                return Err(Error::SegmentLengthMismatch {
                    field,
                    declared: declared.into(),
                    actual: first.len.into(),
                });
            }
            Ok(Some(first.segment()))
        };
        request.key = take(header.key_len, Field::Key)?;
        request.meta = take(header.meta_len, Field::Meta)?;

        for descriptor in rest {
            request
                .payload
                .push_as(descriptor.segment(), Field::Payload)?;
        }
        let payload = &request.payload;
        match (header.payload_len, payload.len()) {
            (0, 0) => {}
            (0, _) => return Err(Error::UnexpectedSegment(Field::Payload)),
            (_, 0) => return Err(Error::MissingSegment(Field::Payload)),
            (declared, _) if declared != payload.total_len() => {
                return Err(Error::SegmentLengthMismatch {
                    field: Field::Payload,
                    declared: declared.into(),
                    actual: payload.total_len().into(),
                });
            }
            _ => {}
        }

        let (head, buffers) = writable
            .split_first()
            .ok_or(Error::MissingSegment(Field::ResponseHeader))?;
        request.response.head = head.segment();
        for descriptor in buffers {
            request
                .response
                .payload
                .push_as(descriptor.segment(), Field::ResponsePayload)?;
        }
        let response = &request.response.payload;
        check_response(header.op(), head.len, response.len(), response.total_len())
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::limits::{MAX_KEY_LEN, MAX_TOKEN_LEN};
    use crate::mock::{MOCK_WINDOW_BASE, MockWindow, RequestSpec};
    use crate::op::HttpMethod;

    extern crate std;

    fn put_spec() -> RequestSpec<'static> {
        RequestSpec {
            id: 99,
            command: Command::Put { write_behind: true },
            key: b"out/k",
            meta: b"",
            payload: &[b"hello ", b"world"],
            response_meta: 16,
            response_payload: &[],
        }
    }

    fn build(spec: &RequestSpec<'_>) -> (MockWindow, Vec<ChainDescriptor>) {
        let mut window = MockWindow::new(0x1_0000).unwrap();
        let chain = spec.build(&mut window).unwrap();
        (window, chain)
    }

    fn decode(
        window: &MockWindow,
        chain: &[ChainDescriptor],
    ) -> core::result::Result<Request, Rejection> {
        Decoder::new(window.window()).decode_image(chain.iter().copied(), window.bytes())
    }

    fn error(window: &MockWindow, chain: &[ChainDescriptor]) -> Error {
        decode(window, chain).unwrap_err().error
    }

    #[test]
    fn decodes_a_put() {
        let (window, chain) = build(&put_spec());
        let request = decode(&window, &chain).unwrap();
        assert_eq!(request.id(), 99);
        assert_eq!(request.command(), Command::Put { write_behind: true });
        assert_eq!(window.read(request.key.unwrap()).unwrap(), b"out/k");
        assert_eq!(request.meta, None);
        assert_eq!(request.payload.len(), 2);
        assert_eq!(request.payload.total_len(), 11);
        let mut payload = Vec::new();
        for segment in request.payload.cover(0, 11).unwrap() {
            payload.extend_from_slice(window.read(segment).unwrap());
        }
        assert_eq!(payload, b"hello world");
        assert_eq!(request.response.meta_capacity(), 16);
        assert_eq!(request.response.payload_capacity(), 0);
        assert_eq!(request.response.header().len, 40);
        assert_eq!(request.response.meta().unwrap().len, 16);
        let ok = ResponseHeader {
            meta_len: 16,
            ..ResponseHeader::new(99, Status::Ok)
        };
        assert!(request.response.check(&ok).is_ok());
        let too_much = ResponseHeader { meta_len: 17, ..ok };
        assert!(request.response.check(&too_much).is_err());
    }

    #[test]
    fn descriptor_rules() {
        let (window, chain) = build(&put_spec());
        let base = MOCK_WINDOW_BASE;

        // Every descriptor inside the window and non-empty.
        let mut c = chain.clone();
        c[1].addr = base - 1;
        assert_eq!(
            error(&window, &c),
            Error::OutsideWindow {
                addr: base - 1,
                len: 5
            }
        );
        let mut c = chain.clone();
        c[4].addr = base + 0x1_0000 - 8;
        c[4].len = 56;
        assert!(matches!(error(&window, &c), Error::OutsideWindow { .. }));
        let mut c = chain.clone();
        c[2].addr = u64::MAX - 2;
        assert!(matches!(error(&window, &c), Error::OutsideWindow { .. }));
        let mut c = chain.clone();
        c[3].len = 0;
        assert!(matches!(error(&window, &c), Error::EmptySegment { .. }));

        // Ordering and presence.
        let mut c = chain.clone();
        c.swap(3, 4);
        assert_eq!(error(&window, &c), Error::ReadableAfterWritable);
        assert_eq!(
            error(&window, &chain[..4]),
            Error::MissingSegment(Field::ResponseHeader)
        );
        assert_eq!(
            error(&window, &chain[4..]),
            Error::MissingSegment(Field::RequestHeader)
        );
        let mut c = chain.clone();
        c[0].len = 47;
        assert!(matches!(
            error(&window, &c),
            Error::SegmentLengthMismatch {
                field: Field::RequestHeader,
                ..
            }
        ));

        // Lengths as declared.
        let mut c = chain.clone();
        c[1].len = 4;
        assert!(matches!(
            error(&window, &c),
            Error::SegmentLengthMismatch {
                field: Field::Key,
                ..
            }
        ));
        let mut c = chain.clone();
        c.remove(3);
        assert!(matches!(
            error(&window, &c),
            Error::SegmentLengthMismatch {
                field: Field::Payload,
                ..
            }
        ));
        let mut c = chain.clone();
        c.insert(3, c[2]);
        assert!(matches!(
            error(&window, &c),
            Error::SegmentLengthMismatch {
                field: Field::Payload,
                ..
            }
        ));

        // PUT answers have no payload buffers.
        let mut c = chain.clone();
        c.push(ChainDescriptor::writable(SegmentRef::new(
            base + 0x8000,
            16,
        )));
        assert_eq!(
            error(&window, &c),
            Error::UnexpectedSegment(Field::ResponsePayload)
        );
        let mut c = chain.clone();
        c[4].len = 39;
        assert!(matches!(
            error(&window, &c),
            Error::LengthOutOfRange {
                field: Field::ResponseHeader,
                ..
            }
        ));
    }

    #[test]
    fn chain_length_and_segment_limits() {
        let (window, chain) = build(&RequestSpec {
            id: 5,
            command: Command::Get {
                offset: 0,
                max_len: 0,
            },
            key: b"k",
            meta: b"",
            payload: &[],
            response_meta: 0,
            response_payload: &[64; MAX_PAYLOAD_SEGMENTS],
        });
        assert!(decode(&window, &chain).is_ok());
        let mut c = chain.clone();
        c.push(*c.last().unwrap());
        assert_eq!(
            error(&window, &c),
            Error::TooManySegments {
                field: Field::ResponsePayload,
                max: MAX_PAYLOAD_SEGMENTS as u64
            }
        );
        let mut c = chain.clone();
        c.extend(core::iter::repeat_n(*chain.last().unwrap(), MAX_CHAIN_LEN));
        let rejection = decode(&window, &c).unwrap_err();
        assert_eq!(
            rejection.error,
            Error::ChainTooLong {
                max: MAX_CHAIN_LEN as u64
            }
        );
        assert_eq!(rejection.id, Some(5));
        assert_eq!(rejection.response, Some(chain[2].segment()));
    }

    #[test]
    fn op_minimum_meta_capacities() {
        for (command, min) in [
            (
                Command::Next { timeout_ms: 0 },
                crate::records::INVOCATION_CONTEXT_MAX_LEN,
            ),
            (Command::Head, crate::records::OBJECT_INFO_MAX_LEN),
            (Command::List { max_entries: 0 }, MAX_TOKEN_LEN),
            (Command::Flush { timeout_ms: 0 }, MAX_KEY_LEN),
        ] {
            let key: &[u8] = if command.op().rules().key_min > 0 {
                b"k"
            } else {
                b""
            };
            let spec = RequestSpec {
                id: 1,
                command,
                key,
                meta: b"",
                payload: &[],
                response_meta: min,
                response_payload: &[],
            };
            let (window, chain) = build(&spec);
            assert!(decode(&window, &chain).is_ok(), "{command:?}");
            let mut c = chain.clone();
            c.last_mut().unwrap().len -= 1;
            assert!(
                matches!(
                    error(&window, &c),
                    Error::LengthOutOfRange {
                        field: Field::ResponseHeader,
                        ..
                    }
                ),
                "{command:?}"
            );
            let mut small = MockWindow::new(0x1_0000).unwrap();
            let short = RequestSpec {
                response_meta: min - 1,
                ..spec
            };
            assert!(short.build(&mut small).is_err());
        }
    }

    #[test]
    fn rejections_say_how_to_answer() {
        let spec = RequestSpec {
            id: 42,
            command: Command::Http {
                method: HttpMethod::Get,
                timeout_ms: 0,
            },
            key: b"http://x/",
            meta: b"",
            payload: &[],
            response_meta: 100,
            response_payload: &[512],
        };
        let (mut window, chain) = build(&spec);
        let header_at = chain[0].segment();
        let mut bytes = window.read(header_at).unwrap().to_vec();
        bytes[4] = 9; // a future version
        window.write(header_at, &bytes).unwrap();
        let rejection = decode(&window, &chain).unwrap_err();
        assert_eq!(rejection.error, Error::UnsupportedVersion(9));
        assert_eq!(rejection.id, Some(42));
        assert_eq!(rejection.response, Some(chain[2].segment()));
        let reply = rejection.response_header().unwrap();
        assert_eq!(reply.status, Status::UnsupportedVersion);
        assert_eq!(reply.detail, 1);
        assert_eq!(reply.id, 42);

        bytes[0] = 0; // not a nexus-ring header at all
        window.write(header_at, &bytes).unwrap();
        let rejection = decode(&window, &chain).unwrap_err();
        assert_eq!(rejection.id, None);
        assert_eq!(
            rejection.response_header().unwrap().status,
            Status::InvalidRequest
        );

        // Without a usable response head there is nothing to answer.
        let rejection = decode(&window, &chain[..2]).unwrap_err();
        assert_eq!(rejection.response, None);
        assert_eq!(rejection.response_header(), None);
    }

    #[test]
    fn layout_checks_before_the_guest_sends() {
        let seg = SegmentRef::new(MOCK_WINDOW_BASE, 8);
        let layout = RequestLayout {
            header: MOCK_WINDOW_BASE,
            key: None,
            meta: None,
            payload: &[seg],
            response_head: SegmentRef::new(MOCK_WINDOW_BASE, 40),
            response_payload: &[],
        };
        assert!(matches!(
            layout.header(1, Command::Head),
            Err(Error::LengthOutOfRange {
                field: Field::Key,
                ..
            })
        ));
        assert!(
            layout
                .header(
                    1,
                    Command::Log {
                        level: crate::LogLevel::Info
                    }
                )
                .is_ok()
        );
        let empty = RequestLayout {
            key: Some(SegmentRef::new(MOCK_WINDOW_BASE, 0)),
            ..layout
        };
        assert!(matches!(
            empty.header(1, Command::Head),
            Err(Error::EmptySegment { .. })
        ));
        assert_eq!(layout.descriptors().count(), 3);
    }

    #[test]
    fn header_read_failure_is_a_rejection() {
        let (window, chain) = build(&put_spec());
        let rejection = Decoder::new(window.window())
            .decode(chain.iter().copied(), |s, _| {
                Err(Error::GuestMemory { addr: s.addr })
            })
            .unwrap_err();
        assert!(matches!(rejection.error, Error::GuestMemory { .. }));
        assert!(std::format!("{rejection}").contains("could not be read"));
    }
}
