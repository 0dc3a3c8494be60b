// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fixed-size request and response headers.

use crate::error::{Error, Field, Result};
use crate::limits::{MAX_META_LEN, MAX_PAYLOAD_LEN};
use crate::op::{Command, Op};
use crate::status::Status;
use crate::wire::{WireReader, WireWriter, check_len, check_room};
use crate::{
    PROTOCOL_VERSION, REQUEST_HEADER_SIZE, REQUEST_MAGIC, RESPONSE_HEADER_SIZE, RESPONSE_MAGIC,
};

/// Checks magic and version, the two fields whose offsets never change across versions.
fn check_magic_version(r: &mut WireReader<'_>, field: Field, magic: u32) -> Result<()> {
    let found = r.u32()?;
    if found != magic {
        return Err(Error::BadMagic { field, found });
    }
    let version = r.u16()?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    Ok(())
}

/// Checks that `bytes` is exactly `size` long.
fn check_exact(field: Field, bytes: &[u8], size: usize) -> Result<()> {
    match bytes.len() {
        len if len < size => Err(Error::Truncated {
            field,
            needed: size as u64,
            got: len as u64,
        }),
        len if len > size => Err(Error::TrailingBytes {
            field,
            extra: len.saturating_sub(size) as u64,
        }),
        _ => Ok(()),
    }
}

/// The request header: the first device-readable descriptor of a chain, exactly
/// [`REQUEST_HEADER_SIZE`] bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic [`REQUEST_MAGIC`] (`"NXRQ"`) |
/// | 4 | 2 | version ([`PROTOCOL_VERSION`]) |
/// | 6 | 2 | op code ([`Op`]) |
/// | 8 | 8 | request id, echoed in the response |
/// | 16 | 4 | flags ([`crate::flags`]) |
/// | 20 | 4 | key length |
/// | 24 | 4 | meta length |
/// | 28 | 4 | payload length |
/// | 32 | 8 | `arg0` |
/// | 40 | 8 | `arg1` |
///
/// `op`, `flags`, `arg0` and `arg1` together are the [`Command`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Request id, chosen by the guest and echoed in the response.
    pub id: u64,
    /// The op and its arguments.
    pub command: Command,
    /// Length of the key segment (0: none).
    pub key_len: u32,
    /// Length of the meta segment (0: none).
    pub meta_len: u32,
    /// Total length of the payload segments (0: none).
    pub payload_len: u32,
}

impl RequestHeader {
    /// The op of this request.
    pub const fn op(&self) -> Op {
        self.command.op()
    }

    /// Checks the command (flags and arguments the op defines, in a combination it allows)
    /// and the lengths against the op's rules and the protocol limits.
    pub fn validate(&self) -> Result<()> {
        let (flags, arg0, arg1) = self.command.raw();
        Command::from_raw(self.op(), flags, arg0, arg1)?;
        let rules = self.op().rules();
        // An absent key is length 0: allowed only if the op's minimum is 0.
        check_len(
            Field::Key,
            self.key_len.into(),
            rules.key_min.into(),
            rules.key_max.into(),
        )?;
        check_len(Field::Meta, self.meta_len.into(), 0, rules.meta_max.into())?;
        check_len(
            Field::Payload,
            self.payload_len.into(),
            rules.payload_min.into(),
            rules.payload_max.into(),
        )
    }

    /// Writes the header into the first [`REQUEST_HEADER_SIZE`] bytes of `out`, after
    /// [validating](Self::validate) it. Returns the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        self.validate()?;
        check_room(Field::RequestHeader, out, REQUEST_HEADER_SIZE)?;
        let (flags, arg0, arg1) = self.command.raw();
        let mut w = WireWriter::new(out, Field::RequestHeader);
        w.u32(REQUEST_MAGIC)?;
        w.u16(PROTOCOL_VERSION)?;
        w.u16(self.op().code())?;
        w.u64(self.id)?;
        w.u32(flags)?;
        w.u32(self.key_len)?;
        w.u32(self.meta_len)?;
        w.u32(self.payload_len)?;
        w.u64(arg0)?;
        w.u64(arg1)?;
        Ok(w.written())
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> Result<[u8; REQUEST_HEADER_SIZE]> {
        let mut out = [0u8; REQUEST_HEADER_SIZE];
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes and validates a header. `bytes` must be exactly [`REQUEST_HEADER_SIZE`] long.
    ///
    /// Any accepted input re-encodes to the same bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        check_exact(Field::RequestHeader, bytes, REQUEST_HEADER_SIZE)?;
        let mut r = WireReader::new(bytes, Field::RequestHeader);
        check_magic_version(&mut r, Field::RequestHeader, REQUEST_MAGIC)?;
        let code = r.u16()?;
        let op = Op::from_code(code).ok_or(Error::UnknownOp(code))?;
        let id = r.u64()?;
        let flags = r.u32()?;
        let key_len = r.u32()?;
        let meta_len = r.u32()?;
        let payload_len = r.u32()?;
        let arg0 = r.u64()?;
        let arg1 = r.u64()?;
        r.finish()?;
        let header = RequestHeader {
            id,
            command: Command::from_raw(op, flags, arg0, arg1)?,
            key_len,
            meta_len,
            payload_len,
        };
        header.validate()?;
        Ok(header)
    }

    /// The request id of a header whose magic is right, whatever its version or validity.
    ///
    /// Offsets 0..16 (magic, version, op, id) are the same in every protocol version, so a
    /// backend can answer a request it refuses, e.g. with [`Status::UnsupportedVersion`].
    pub fn peek_id(bytes: &[u8]) -> Option<u64> {
        let mut r = WireReader::new(bytes, Field::RequestHeader);
        if r.u32().ok()? != REQUEST_MAGIC {
            return None;
        }
        r.u16().ok()?;
        r.u16().ok()?;
        r.u64().ok()
    }

    /// The protocol version of a header whose magic is right.
    pub fn peek_version(bytes: &[u8]) -> Option<u16> {
        let mut r = WireReader::new(bytes, Field::RequestHeader);
        if r.u32().ok()? != REQUEST_MAGIC {
            return None;
        }
        r.u16().ok()
    }
}

/// The response header: the first [`RESPONSE_HEADER_SIZE`] bytes of the first device-writable
/// descriptor. The rest of that descriptor is the response meta area.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic [`RESPONSE_MAGIC`] (`"NXRS"`) |
/// | 4 | 2 | version ([`PROTOCOL_VERSION`]) |
/// | 6 | 2 | status code ([`Status`]) |
/// | 8 | 8 | request id (echo) |
/// | 16 | 4 | meta length: bytes written in the meta area |
/// | 20 | 4 | payload length: bytes written in the payload buffers |
/// | 24 | 8 | `total` (op-specific size) |
/// | 32 | 8 | `detail` (op-specific value) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseHeader {
    /// The id of the request answered.
    pub id: u64,
    /// The outcome.
    pub status: Status,
    /// Bytes written to the response meta area, from its start.
    pub meta_len: u32,
    /// Bytes written to the response payload buffers, from the start of the first.
    pub payload_len: u32,
    /// Op-specific size: GET the object size, NEXT the input size, INVOKE/HTTP the full
    /// result or body size; for TOO_LARGE the payload capacity needed.
    pub total: u64,
    /// Op-specific value: HTTP the status code, INVOKE the [`Outcome`](crate::Outcome) code;
    /// for TOO_LARGE the meta capacity needed, for UPLOAD_FAILED the failed upload count, for
    /// UNSUPPORTED_VERSION the backend's version.
    pub detail: u64,
}

impl ResponseHeader {
    /// A response to request `id` with `status` and every length and value zero.
    pub const fn new(id: u64, status: Status) -> Self {
        Self {
            id,
            status,
            meta_len: 0,
            payload_len: 0,
            total: 0,
            detail: 0,
        }
    }

    /// Checks the lengths against the protocol limits; an error status carries no payload.
    pub fn validate(&self) -> Result<()> {
        check_len(
            Field::ResponseMeta,
            self.meta_len.into(),
            0,
            MAX_META_LEN.into(),
        )?;
        check_len(
            Field::ResponsePayload,
            self.payload_len.into(),
            0,
            MAX_PAYLOAD_LEN.into(),
        )?;
        if !self.status.is_ok() && self.payload_len != 0 {
            return Err(Error::ErrorWithPayload(self.status.code()));
        }
        Ok(())
    }

    /// Writes the header into the first [`RESPONSE_HEADER_SIZE`] bytes of `out`, after
    /// [validating](Self::validate) it. Returns the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        self.validate()?;
        check_room(Field::ResponseHeader, out, RESPONSE_HEADER_SIZE)?;
        let mut w = WireWriter::new(out, Field::ResponseHeader);
        w.u32(RESPONSE_MAGIC)?;
        w.u16(PROTOCOL_VERSION)?;
        w.u16(self.status.code())?;
        w.u64(self.id)?;
        w.u32(self.meta_len)?;
        w.u32(self.payload_len)?;
        w.u64(self.total)?;
        w.u64(self.detail)?;
        Ok(w.written())
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> Result<[u8; RESPONSE_HEADER_SIZE]> {
        let mut out = [0u8; RESPONSE_HEADER_SIZE];
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes and validates a header. `bytes` must be exactly [`RESPONSE_HEADER_SIZE`] long.
    ///
    /// Any accepted input re-encodes to the same bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        check_exact(Field::ResponseHeader, bytes, RESPONSE_HEADER_SIZE)?;
        let mut r = WireReader::new(bytes, Field::ResponseHeader);
        check_magic_version(&mut r, Field::ResponseHeader, RESPONSE_MAGIC)?;
        let code = r.u16()?;
        let status = Status::from_code(code).ok_or(Error::UnknownStatus(code))?;
        let header = ResponseHeader {
            status,
            id: r.u64()?,
            meta_len: r.u32()?,
            payload_len: r.u32()?,
            total: r.u64()?,
            detail: r.u64()?,
        };
        r.finish()?;
        header.validate()?;
        Ok(header)
    }

    /// The guest's check of a reply: it answers request `expected_id` and claims no more
    /// bytes than the request offered (`meta_capacity`, `payload_capacity`).
    pub fn check_reply(
        &self,
        expected_id: u64,
        meta_capacity: u32,
        payload_capacity: u32,
    ) -> Result<()> {
        if self.id != expected_id {
            return Err(Error::IdMismatch {
                expected: expected_id,
                found: self.id,
            });
        }
        check_len(
            Field::ResponseMeta,
            self.meta_len.into(),
            0,
            meta_capacity.into(),
        )?;
        check_len(
            Field::ResponsePayload,
            self.payload_len.into(),
            0,
            payload_capacity.into(),
        )
    }

    /// The virtio used length of this response: header, meta and payload bytes written.
    pub fn used_len(&self) -> Result<u32> {
        (RESPONSE_HEADER_SIZE as u32)
            .checked_add(self.meta_len)
            .and_then(|n| n.checked_add(self.payload_len))
            .ok_or(Error::LengthOutOfRange {
                field: Field::ResponsePayload,
                len: u64::from(self.payload_len),
                min: 0,
                max: u64::from(MAX_PAYLOAD_LEN),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{HttpMethod, Outcome};

    fn get() -> RequestHeader {
        RequestHeader {
            id: 7,
            command: Command::Get {
                offset: 0,
                max_len: 0,
            },
            key_len: 11,
            meta_len: 0,
            payload_len: 0,
        }
    }

    /// The worked example of `docs/protocol.md`.
    #[test]
    fn request_header_golden_bytes() {
        let bytes = get().to_bytes().unwrap();
        let expected: [u8; 48] = [
            0x4E, 0x58, 0x52, 0x51, 0x01, 0x00, 0x03, 0x00, // magic "NXRQ", version 1, op GET
            0x07, 0, 0, 0, 0, 0, 0, 0, // id 7
            0, 0, 0, 0, 0x0B, 0, 0, 0, // flags 0, key_len 11
            0, 0, 0, 0, 0, 0, 0, 0, // meta_len 0, payload_len 0
            0, 0, 0, 0, 0, 0, 0, 0, // arg0: offset 0
            0, 0, 0, 0, 0, 0, 0, 0, // arg1: max_len 0
        ];
        assert_eq!(bytes, expected);
        assert_eq!(RequestHeader::decode(&bytes).unwrap(), get());
        assert_eq!(RequestHeader::peek_id(&bytes), Some(7));
        assert_eq!(RequestHeader::peek_version(&bytes), Some(1));
    }

    #[test]
    fn response_header_golden_bytes() {
        let header = ResponseHeader {
            payload_len: 4096,
            total: 10_000,
            ..ResponseHeader::new(7, Status::Ok)
        };
        let bytes = header.to_bytes().unwrap();
        let expected: [u8; 40] = [
            0x4E, 0x58, 0x52, 0x53, 0x01, 0x00, 0x00, 0x00, // magic "NXRS", version 1, OK
            0x07, 0, 0, 0, 0, 0, 0, 0, // id 7
            0, 0, 0, 0, 0x00, 0x10, 0, 0, // meta_len 0, payload_len 4096
            0x10, 0x27, 0, 0, 0, 0, 0, 0, // total 10000
            0, 0, 0, 0, 0, 0, 0, 0, // detail 0
        ];
        assert_eq!(bytes, expected);
        assert_eq!(ResponseHeader::decode(&bytes).unwrap(), header);
        assert_eq!(header.used_len().unwrap(), 40 + 4096);
    }

    #[test]
    fn request_header_refusals() {
        let good = get().to_bytes().unwrap();
        let mut b = good;
        b[0] ^= 1;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::BadMagic { .. })
        ));
        assert_eq!(RequestHeader::peek_id(&b), None);
        let mut b = good;
        b[4] = 2;
        assert_eq!(RequestHeader::decode(&b), Err(Error::UnsupportedVersion(2)));
        assert_eq!(RequestHeader::peek_id(&b), Some(7));
        let mut b = good;
        b[6] = 0;
        assert_eq!(RequestHeader::decode(&b), Err(Error::UnknownOp(0)));
        b[6] = 12;
        assert_eq!(RequestHeader::decode(&b), Err(Error::UnknownOp(12)));
        let mut b = good;
        b[16] = 1; // GET defines no flags
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::InvalidFlags { op: Op::Get, .. })
        ));
        let mut b = good;
        b[20] = 0; // GET needs a key
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::LengthOutOfRange {
                field: Field::Key,
                ..
            })
        ));
        let mut b = good;
        b[28] = 1; // GET has no payload
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::LengthOutOfRange {
                field: Field::Payload,
                ..
            })
        ));
        assert!(matches!(
            RequestHeader::decode(&good[..47]),
            Err(Error::Truncated { .. })
        ));
        let mut long = [0u8; 49];
        long[..48].copy_from_slice(&good);
        assert!(matches!(
            RequestHeader::decode(&long),
            Err(Error::TrailingBytes { .. })
        ));
    }

    #[test]
    fn arguments_are_canonical() {
        let mut header = RequestHeader {
            id: 1,
            command: Command::Http {
                method: HttpMethod::Get,
                timeout_ms: 0,
            },
            key_len: 20,
            meta_len: 0,
            payload_len: 0,
        };
        let mut b = header.to_bytes().unwrap();
        b[32] = 8; // no method 8
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::InvalidArgument { index: 0, .. })
        ));
        header.command = Command::Delete;
        let mut b = header.to_bytes().unwrap();
        b[40] = 1; // DELETE does not use arg1
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::InvalidArgument { index: 1, .. })
        ));
        b[40] = 0;
        b[32] = 1; // nor arg0
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::InvalidArgument { index: 0, .. })
        ));
        header.command = Command::Complete {
            invocation: 9,
            outcome: Outcome::Error,
            stored: false,
        };
        header.key_len = 0;
        let b = header.to_bytes().unwrap();
        assert_eq!(b[16], 1);
        assert_eq!(RequestHeader::decode(&b).unwrap(), header);
        // A result stored at the output key: flag bit 1, a success's only.
        header.command = Command::Complete {
            invocation: 9,
            outcome: Outcome::Success,
            stored: true,
        };
        let mut b = header.to_bytes().unwrap();
        assert_eq!(b[16], 2);
        assert_eq!(RequestHeader::decode(&b).unwrap(), header);
        b[16] = 3;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(Error::InvalidFlags {
                op: Op::Complete,
                flags: 3
            })
        ));
        header.command = Command::Complete {
            invocation: 9,
            outcome: Outcome::Error,
            stored: true,
        };
        assert!(matches!(
            header.to_bytes(),
            Err(Error::InvalidFlags {
                op: Op::Complete,
                flags: 3
            })
        ));
    }

    #[test]
    fn encoder_refuses_invalid_headers() {
        let mut header = get();
        header.key_len = crate::limits::MAX_KEY_LEN + 1;
        assert!(header.to_bytes().is_err());
        let mut out = [0u8; 47];
        assert!(matches!(
            get().encode(&mut out),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn response_refusals_and_reply_check() {
        let header = ResponseHeader {
            meta_len: 10,
            payload_len: 100,
            ..ResponseHeader::new(3, Status::Ok)
        };
        assert_eq!(
            header.check_reply(4, 10, 100),
            Err(Error::IdMismatch {
                expected: 4,
                found: 3
            })
        );
        assert!(header.check_reply(3, 10, 100).is_ok());
        assert!(header.check_reply(3, 9, 100).is_err());
        assert!(header.check_reply(3, 10, 99).is_err());
        let error = ResponseHeader {
            payload_len: 1,
            ..ResponseHeader::new(3, Status::NotFound)
        };
        assert_eq!(error.to_bytes(), Err(Error::ErrorWithPayload(1)));
        let mut b = header.to_bytes().unwrap();
        b[6] = 11;
        assert_eq!(ResponseHeader::decode(&b), Err(Error::UnknownStatus(11)));
    }
}
