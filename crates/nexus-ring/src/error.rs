// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The one error type of the crate.

use core::fmt;

use crate::op::Op;

/// A part of a message, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The request header (descriptor or bytes).
    RequestHeader,
    /// The key segment (object key, list prefix, function name or URL).
    Key,
    /// The request meta segment (list continuation token or HTTP header list).
    Meta,
    /// The request payload segments.
    Payload,
    /// The response header (the head of the first device-writable descriptor).
    ResponseHeader,
    /// The response meta area (the rest of the first device-writable descriptor).
    ResponseMeta,
    /// The response payload buffers.
    ResponsePayload,
    /// An invocation context record.
    InvocationContext,
    /// An object entry record.
    ObjectEntry,
    /// An object entry list.
    EntryList,
    /// An HTTP header list.
    HeaderList,
    /// A function name.
    FunctionName,
    /// An invocation's external request id.
    RequestId,
    /// An object key inside a record.
    ObjectKey,
    /// An entity tag.
    Etag,
    /// An HTTP header name.
    HeaderName,
    /// An HTTP header value.
    HeaderValue,
}

impl Field {
    /// A short lower-case name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Field::RequestHeader => "request header",
            Field::Key => "key",
            Field::Meta => "request meta",
            Field::Payload => "request payload",
            Field::ResponseHeader => "response header",
            Field::ResponseMeta => "response meta area",
            Field::ResponsePayload => "response payload",
            Field::InvocationContext => "invocation context",
            Field::ObjectEntry => "object entry",
            Field::EntryList => "entry list",
            Field::HeaderList => "header list",
            Field::FunctionName => "function name",
            Field::RequestId => "request id",
            Field::ObjectKey => "object key",
            Field::Etag => "entity tag",
            Field::HeaderName => "header name",
            Field::HeaderValue => "header value",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a message was refused, or could not be encoded.
///
/// Every decoding failure is one of these: the decoders never panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than the layout needs.
    #[error("{field} ends early: {needed} bytes needed, {got} present")]
    Truncated {
        /// What was being read.
        field: Field,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// Bytes left over after a record that must fill its buffer exactly.
    #[error("{field} has {extra} trailing bytes")]
    TrailingBytes {
        /// What was being read.
        field: Field,
        /// Bytes left over.
        extra: u64,
    },
    /// An output buffer is too small for the encoding.
    #[error("{field} needs {needed} bytes of buffer, {got} given")]
    BufferTooSmall {
        /// What was being written.
        field: Field,
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        got: u64,
    },
    /// The magic number is wrong.
    #[error("bad magic {found:#010x} in {field}")]
    BadMagic {
        /// Which header.
        field: Field,
        /// The value found.
        found: u32,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {0} is not supported (this side speaks version {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u16),
    /// The op code is unknown.
    #[error("unknown op code {0}")]
    UnknownOp(u16),
    /// The status code is unknown.
    #[error("unknown status code {0}")]
    UnknownStatus(u16),
    /// Flag bits that the op does not define are set.
    #[error("flags {flags:#x} are not valid for {op}")]
    InvalidFlags {
        /// The op.
        op: Op,
        /// The flags found.
        flags: u32,
    },
    /// A record's flags have bits set that the record does not define.
    #[error("flags {flags:#x} of the {field} are not defined")]
    UndefinedFlags {
        /// The record.
        field: Field,
        /// The flags found.
        flags: u32,
    },
    /// An op argument (`arg0` or `arg1`) has a value the op does not define.
    #[error("argument {index} = {value} is not valid for {op}")]
    InvalidArgument {
        /// The op.
        op: Op,
        /// 0 for `arg0`, 1 for `arg1`.
        index: u8,
        /// The value found.
        value: u64,
    },
    /// A length lies outside what the protocol allows for this field.
    #[error("{field} length {len} is outside {min}..={max}")]
    LengthOutOfRange {
        /// The field.
        field: Field,
        /// The length found.
        len: u64,
        /// Least allowed length.
        min: u64,
        /// Greatest allowed length.
        max: u64,
    },
    /// A list has more entries than the protocol allows.
    #[error("{field} has {count} entries, at most {max} allowed")]
    TooManyEntries {
        /// The list.
        field: Field,
        /// Entries declared.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The I/O window itself is empty or wraps around the address space.
    #[error("I/O window {base:#x}+{size:#x} is empty or wraps around")]
    InvalidWindow {
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// A descriptor points (partly) outside the VM's I/O window, or its end overflows.
    #[error("segment {addr:#x}+{len:#x} lies outside the I/O window")]
    OutsideWindow {
        /// Guest-physical address of the segment.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A descriptor has length zero.
    #[error("descriptor at {addr:#x} has length zero")]
    EmptySegment {
        /// Guest-physical address of the descriptor.
        addr: u64,
    },
    /// The chain holds more descriptors than any valid request needs.
    #[error("descriptor chain is longer than {max} descriptors")]
    ChainTooLong {
        /// The limit.
        max: u64,
    },
    /// The chain ends at a descriptor that still links to another: a link the virtqueue
    /// refused (out of the table, a loop, or more than 4 GiB in total).
    #[error("descriptor chain is broken: it ends at a descriptor that links on")]
    BrokenChain,
    /// A field has more segments than the protocol allows.
    #[error("{field} has more than {max} segments")]
    TooManySegments {
        /// The field.
        field: Field,
        /// The limit.
        max: u64,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A segment the header announces is missing from the chain.
    #[error("missing {0} segment")]
    MissingSegment(Field),
    /// A segment is present that the header or op does not allow.
    #[error("unexpected {0} segment")]
    UnexpectedSegment(Field),
    /// Segment lengths disagree with the length the header declares.
    #[error("{field} segments hold {actual} bytes, the header declares {declared}")]
    SegmentLengthMismatch {
        /// The field.
        field: Field,
        /// Length in the header.
        declared: u64,
        /// Length in the descriptors.
        actual: u64,
    },
    /// A response answers another request.
    #[error("response id {found} does not match request id {expected}")]
    IdMismatch {
        /// The request's id.
        expected: u64,
        /// The id in the response.
        found: u64,
    },
    /// An error response claims payload bytes.
    #[error("error status {0} with a non-empty payload")]
    ErrorWithPayload(u16),
    /// Text that must be UTF-8 is not.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(Field),
    /// An HTTP header name or value contains a forbidden byte.
    #[error("{0} contains a forbidden byte")]
    InvalidHeader(Field),
    /// Reading the request header from guest memory failed.
    #[error("guest memory at {addr:#x} could not be read")]
    GuestMemory {
        /// Guest-physical address of the read.
        addr: u64,
    },
}

/// The result type of this crate.
pub type Result<T> = core::result::Result<T, Error>;
