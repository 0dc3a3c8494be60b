// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The variable-length records carried in meta areas and payloads.
//!
//! | record | where |
//! |---|---|
//! | [`InvocationContext`] | NEXT response meta area |
//! | [`ObjectEntry`] | HEAD response meta area (key empty) |
//! | [`EntryList`] | LIST response payload |
//! | [`HeaderList`] | HTTP request meta segment, HTTP response meta area |
//!
//! Every record is little-endian with explicit offsets. Decoders take the exact bytes of a
//! record (a record never has trailing bytes) and check every length against the limits;
//! every accepted input re-encodes to the same bytes. Lists are validated whole when decoded,
//! so iterating over them cannot fail.

use core::marker::PhantomData;

use crate::error::{Error, Field, Result};
use crate::limits::{
    MAX_ETAG_LEN, MAX_FUNCTION_NAME_LEN, MAX_HEADERS, MAX_KEY_LEN, MAX_LIST_ENTRIES, MAX_META_LEN,
    MAX_REQUEST_ID_LEN,
};
use crate::wire::{WireReader, WireWriter, check_len, check_room};

/// Size of the fixed part of an [`InvocationContext`].
pub const INVOCATION_CONTEXT_FIXED_SIZE: u32 = 24;
/// Largest encoded [`InvocationContext`] without an output key: the least meta capacity a
/// NEXT request offers.
pub const INVOCATION_CONTEXT_MAX_LEN: u32 =
    INVOCATION_CONTEXT_FIXED_SIZE + MAX_FUNCTION_NAME_LEN + MAX_REQUEST_ID_LEN;
/// Largest encoded [`InvocationContext`] with an output key. A NEXT request whose response
/// head offers at least this much meta capacity says that its guest understands
/// [`CONTEXT_OUTPUT_KEY`]: only then does the backend put the output key in the context.
pub const INVOCATION_CONTEXT_WITH_KEY_MAX_LEN: u32 = INVOCATION_CONTEXT_MAX_LEN + 2 + MAX_KEY_LEN;
/// Size of the fixed part of an [`ObjectEntry`].
pub const OBJECT_ENTRY_FIXED_SIZE: u32 = 20;
/// Largest HEAD answer (an [`ObjectEntry`] with an empty key): the least meta capacity a HEAD
/// request offers.
pub const OBJECT_INFO_MAX_LEN: u32 = OBJECT_ENTRY_FIXED_SIZE + MAX_ETAG_LEN;
/// Size of a list's count prefix.
pub const LIST_PREFIX_SIZE: u32 = 4;
/// Size of the fixed part of a [`Header`].
pub const HEADER_FIXED_SIZE: u32 = 4;

/// Invocation context flag: the caller asked for asynchronous durability (the invocation may
/// be reported complete before its write-behind uploads are durable).
pub const CONTEXT_ASYNC_DURABILITY: u32 = 1 << 0;
/// Invocation context flag: the context ends with an output key (a `u16` length, then the
/// key), where the caller wants the result stored.
pub const CONTEXT_OUTPUT_KEY: u32 = 1 << 1;
/// Every flag an invocation context may carry.
const CONTEXT_FLAGS: u32 = CONTEXT_ASYNC_DURABILITY | CONTEXT_OUTPUT_KEY;

/// Checks that `bytes` is UTF-8, naming `field` if not.
pub fn utf8(bytes: &[u8], field: Field) -> Result<&str> {
    core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8(field))
}

fn len16(field: Field, len: usize, min: u32, max: u32) -> Result<u16> {
    check_len(field, len as u64, min.into(), max.into())?;
    u16::try_from(len).map_err(|_| Error::LengthOutOfRange {
        field,
        len: len as u64,
        min: min.into(),
        max: u16::MAX.into(),
    })
}

fn read_str<'a>(r: &mut WireReader<'a>, len: u16, field: Field) -> Result<&'a str> {
    utf8(r.bytes(len.into())?, field)
}

/// The context of one invocation: what NEXT writes into the response meta area.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | invocation number (echo it in COMPLETE `arg0`) |
/// | 8 | 8 | deadline, Unix time in milliseconds (0: none) |
/// | 16 | 4 | flags ([`CONTEXT_ASYNC_DURABILITY`], [`CONTEXT_OUTPUT_KEY`]) |
/// | 20 | 2 | function name length (1..=[`MAX_FUNCTION_NAME_LEN`]) |
/// | 22 | 2 | request id length (0..=[`MAX_REQUEST_ID_LEN`]) |
/// | 24 | … | function name (UTF-8), then request id (UTF-8) |
/// | … | 2 | with [`CONTEXT_OUTPUT_KEY`] only: output key length (1..=[`MAX_KEY_LEN`]) |
/// | … | … | with [`CONTEXT_OUTPUT_KEY`] only: output key (UTF-8) |
///
/// A context without an output key is byte for byte what it was before the key existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvocationContext<'a> {
    /// The backend's number for this invocation.
    pub invocation: u64,
    /// When the invocation must be complete, in Unix milliseconds; 0 for no deadline.
    pub deadline_ms: u64,
    /// The caller asked for asynchronous durability.
    pub async_durability: bool,
    /// The function being invoked.
    pub function: &'a str,
    /// The platform's id for the request (for logs and tracing); may be empty.
    pub request_id: &'a str,
    /// Where the caller wants the result stored, if anywhere. A guest that stores it there
    /// itself says so in COMPLETE ([`COMPLETE_STORED`](crate::op::flags::COMPLETE_STORED)).
    pub output_key: Option<&'a str>,
}

impl<'a> InvocationContext<'a> {
    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        let key = self.output_key.map_or(0, |key| key.len().saturating_add(2));
        (INVOCATION_CONTEXT_FIXED_SIZE as usize)
            .saturating_add(self.function.len())
            .saturating_add(self.request_id.len())
            .saturating_add(key)
    }

    /// Writes the record to the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let field = Field::InvocationContext;
        let function_len = len16(
            Field::FunctionName,
            self.function.len(),
            1,
            MAX_FUNCTION_NAME_LEN,
        )?;
        let request_id_len = len16(
            Field::RequestId,
            self.request_id.len(),
            0,
            MAX_REQUEST_ID_LEN,
        )?;
        let output_key_len = self
            .output_key
            .map(|key| len16(Field::ObjectKey, key.len(), 1, MAX_KEY_LEN))
            .transpose()?;
        check_room(field, out, self.encoded_len())?;
        let mut flags = 0;
        if self.async_durability {
            flags |= CONTEXT_ASYNC_DURABILITY;
        }
        if self.output_key.is_some() {
            flags |= CONTEXT_OUTPUT_KEY;
        }
        let mut w = WireWriter::new(out, field);
        w.u64(self.invocation)?;
        w.u64(self.deadline_ms)?;
        w.u32(flags)?;
        w.u16(function_len)?;
        w.u16(request_id_len)?;
        w.put(self.function.as_bytes())?;
        w.put(self.request_id.as_bytes())?;
        if let (Some(key), Some(len)) = (self.output_key, output_key_len) {
            w.u16(len)?;
            w.put(key.as_bytes())?;
        }
        Ok(w.written())
    }

    /// Decodes a record that fills `bytes` exactly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        let field = Field::InvocationContext;
        let mut r = WireReader::new(bytes, field);
        let invocation = r.u64()?;
        let deadline_ms = r.u64()?;
        let flags = r.u32()?;
        if flags & !CONTEXT_FLAGS != 0 {
            return Err(Error::UndefinedFlags { field, flags });
        }
        let function_len = r.u16()?;
        let request_id_len = r.u16()?;
        check_len(
            Field::FunctionName,
            function_len.into(),
            1,
            MAX_FUNCTION_NAME_LEN.into(),
        )?;
        check_len(
            Field::RequestId,
            request_id_len.into(),
            0,
            MAX_REQUEST_ID_LEN.into(),
        )?;
        let function = read_str(&mut r, function_len, Field::FunctionName)?;
        let request_id = read_str(&mut r, request_id_len, Field::RequestId)?;
        let output_key = if flags & CONTEXT_OUTPUT_KEY != 0 {
            let len = r.u16()?;
            check_len(Field::ObjectKey, len.into(), 1, MAX_KEY_LEN.into())?;
            Some(read_str(&mut r, len, Field::ObjectKey)?)
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            invocation,
            deadline_ms,
            async_durability: flags & CONTEXT_ASYNC_DURABILITY != 0,
            function,
            request_id,
            output_key,
        })
    }

    /// The encoded record.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>> {
        let mut out = alloc::vec![0u8; self.encoded_len()];
        self.encode(&mut out)?;
        Ok(out)
    }
}

/// An item of a count-prefixed list ([`EntryList`], [`HeaderList`]). Sealed.
pub trait ListItem<'a>: Sealed<'a> {
    /// The list, named in errors.
    const LIST: Field;
    /// The most items a list may hold.
    const MAX_COUNT: u32;
    /// The most bytes a list may take, prefix included.
    const MAX_BYTES: u64;
    /// Encoded size in bytes.
    fn encoded_len(&self) -> usize;
}

mod sealed {
    use crate::error::Result;
    use crate::wire::{WireReader, WireWriter};

    /// The codec half of [`ListItem`](super::ListItem), private to this crate.
    pub trait Sealed<'a>: Sized {
        fn write(&self, w: &mut WireWriter<'_>) -> Result<()>;
        fn read(r: &mut WireReader<'a>) -> Result<Self>;
    }
}

use sealed::Sealed;

/// An object's metadata: one LIST entry, or (with an empty key) the HEAD answer.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | object size in bytes |
/// | 8 | 8 | last modification, Unix time in milliseconds (0: unknown) |
/// | 16 | 2 | key length (0..=[`MAX_KEY_LEN`]) |
/// | 18 | 2 | entity tag length (0..=[`MAX_ETAG_LEN`]) |
/// | 20 | … | key (UTF-8), then entity tag (UTF-8) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectEntry<'a> {
    /// Object size in bytes.
    pub size: u64,
    /// Last modification in Unix milliseconds; 0 if unknown.
    pub last_modified_ms: u64,
    /// The object key; empty in a HEAD answer.
    pub key: &'a str,
    /// The entity tag; may be empty.
    pub etag: &'a str,
}

impl<'a> ObjectEntry<'a> {
    /// Writes the record to the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(Field::ObjectEntry, out, ListItem::encoded_len(self))?;
        let mut w = WireWriter::new(out, Field::ObjectEntry);
        self.write(&mut w)?;
        Ok(w.written())
    }

    /// Decodes a record that fills `bytes` exactly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        let mut r = WireReader::new(bytes, Field::ObjectEntry);
        let entry = Self::read(&mut r)?;
        r.finish()?;
        Ok(entry)
    }

    /// The encoded record.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>> {
        let mut out = alloc::vec![0u8; ListItem::encoded_len(self)];
        self.encode(&mut out)?;
        Ok(out)
    }
}

impl<'a> ListItem<'a> for ObjectEntry<'a> {
    const LIST: Field = Field::EntryList;
    const MAX_COUNT: u32 = MAX_LIST_ENTRIES;
    const MAX_BYTES: u64 = u32::MAX as u64;

    fn encoded_len(&self) -> usize {
        (OBJECT_ENTRY_FIXED_SIZE as usize)
            .saturating_add(self.key.len())
            .saturating_add(self.etag.len())
    }
}

impl<'a> Sealed<'a> for ObjectEntry<'a> {
    fn write(&self, w: &mut WireWriter<'_>) -> Result<()> {
        let key_len = len16(Field::ObjectKey, self.key.len(), 0, MAX_KEY_LEN)?;
        let etag_len = len16(Field::Etag, self.etag.len(), 0, MAX_ETAG_LEN)?;
        w.u64(self.size)?;
        w.u64(self.last_modified_ms)?;
        w.u16(key_len)?;
        w.u16(etag_len)?;
        w.put(self.key.as_bytes())?;
        w.put(self.etag.as_bytes())
    }

    fn read(r: &mut WireReader<'a>) -> Result<Self> {
        let size = r.u64()?;
        let last_modified_ms = r.u64()?;
        let key_len = r.u16()?;
        let etag_len = r.u16()?;
        check_len(Field::ObjectKey, key_len.into(), 0, MAX_KEY_LEN.into())?;
        check_len(Field::Etag, etag_len.into(), 0, MAX_ETAG_LEN.into())?;
        Ok(Self {
            size,
            last_modified_ms,
            key: read_str(r, key_len, Field::ObjectKey)?,
            etag: read_str(r, etag_len, Field::Etag)?,
        })
    }
}

/// One HTTP header of a [`HeaderList`].
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | name length (≥ 1) |
/// | 2 | 2 | value length |
/// | 4 | … | name (RFC 9110 token characters), then value (no NUL, CR or LF) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header<'a> {
    /// Header name: one or more RFC 9110 `tchar`s.
    pub name: &'a str,
    /// Header value: any bytes except NUL, CR and LF.
    pub value: &'a [u8],
}

/// Whether `b` is an RFC 9110 `tchar`.
const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

impl Header<'_> {
    fn check(name: &[u8], value: &[u8]) -> Result<()> {
        if !name.iter().all(|&b| is_tchar(b)) {
            return Err(Error::InvalidHeader(Field::HeaderName));
        }
        if value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err(Error::InvalidHeader(Field::HeaderValue));
        }
        Ok(())
    }
}

impl<'a> ListItem<'a> for Header<'a> {
    const LIST: Field = Field::HeaderList;
    const MAX_COUNT: u32 = MAX_HEADERS;
    const MAX_BYTES: u64 = MAX_META_LEN as u64;

    fn encoded_len(&self) -> usize {
        (HEADER_FIXED_SIZE as usize)
            .saturating_add(self.name.len())
            .saturating_add(self.value.len())
    }
}

impl<'a> Sealed<'a> for Header<'a> {
    fn write(&self, w: &mut WireWriter<'_>) -> Result<()> {
        let name_len = len16(Field::HeaderName, self.name.len(), 1, u16::MAX.into())?;
        let value_len = len16(Field::HeaderValue, self.value.len(), 0, u16::MAX.into())?;
        Self::check(self.name.as_bytes(), self.value)?;
        w.u16(name_len)?;
        w.u16(value_len)?;
        w.put(self.name.as_bytes())?;
        w.put(self.value)
    }

    fn read(r: &mut WireReader<'a>) -> Result<Self> {
        let name_len = r.u16()?;
        let value_len = r.u16()?;
        check_len(Field::HeaderName, name_len.into(), 1, u16::MAX.into())?;
        let name = r.bytes(name_len.into())?;
        let value = r.bytes(value_len.into())?;
        Self::check(name, value)?;
        Ok(Self {
            name: utf8(name, Field::HeaderName)?,
            value,
        })
    }
}

/// A count-prefixed list of records: `u32` count at offset 0, then the records back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct List<'a, T> {
    count: u32,
    items: &'a [u8],
    _item: PhantomData<T>,
}

/// The LIST response payload: a list of [`ObjectEntry`], at most [`MAX_LIST_ENTRIES`].
pub type EntryList<'a> = List<'a, ObjectEntry<'a>>;
/// An HTTP header list: a list of [`Header`], at most [`MAX_HEADERS`], at most
/// [`MAX_META_LEN`] bytes.
pub type HeaderList<'a> = List<'a, Header<'a>>;

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// Decodes and validates a whole list that fills `bytes` exactly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        check_len(
            T::LIST,
            bytes.len() as u64,
            LIST_PREFIX_SIZE.into(),
            T::MAX_BYTES,
        )?;
        let mut r = WireReader::new(bytes, T::LIST);
        let count = r.u32()?;
        if count > T::MAX_COUNT {
            return Err(Error::TooManyEntries {
                field: T::LIST,
                count: count.into(),
                max: T::MAX_COUNT.into(),
            });
        }
        let items = r.remaining();
        for _ in 0..count {
            T::read(&mut r)?;
        }
        r.finish()?;
        Ok(Self {
            count,
            items,
            _item: PhantomData,
        })
    }

    /// A writer that fills `out` with a list, item by item, without allocating.
    pub fn writer(out: &mut [u8]) -> ListWriter<'_, T> {
        ListWriter::new(out)
    }

    /// Number of items.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items, in order.
    pub fn iter(&self) -> ListIter<'a, T> {
        ListIter {
            reader: WireReader::new(self.items, T::LIST),
            left: self.count,
            _item: PhantomData,
        }
    }

    /// The encoded list of `items`.
    #[cfg(feature = "alloc")]
    pub fn encode_to_vec<'i, I>(items: I) -> Result<alloc::vec::Vec<u8>>
    where
        I: IntoIterator<Item = &'i T>,
        T: 'i,
    {
        let items: alloc::vec::Vec<&T> = items.into_iter().collect();
        let len = items.iter().fold(LIST_PREFIX_SIZE as usize, |n, item| {
            n.saturating_add(item.encoded_len())
        });
        let mut out = alloc::vec![0u8; len];
        let mut writer = ListWriter::new(&mut out);
        for item in items {
            writer.push(item)?;
        }
        let written = writer.finish()?;
        out.truncate(written);
        Ok(out)
    }
}

impl<'a, T: ListItem<'a>> IntoIterator for &List<'a, T> {
    type Item = T;
    type IntoIter = ListIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a decoded [`List`].
#[derive(Debug)]
pub struct ListIter<'a, T> {
    reader: WireReader<'a>,
    left: u32,
    _item: PhantomData<T>,
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.left = self.left.checked_sub(1)?;
        // The list was validated whole by `List::decode`, so this cannot fail.
        T::read(&mut self.reader).ok()
    }
}

/// Writes a count-prefixed list into a buffer, item by item, without allocating.
#[derive(Debug)]
pub struct ListWriter<'b, T> {
    out: &'b mut [u8],
    pos: usize,
    count: u32,
    _item: PhantomData<T>,
}

impl<'b, 'a, T: ListItem<'a>> ListWriter<'b, T> {
    /// A writer filling `out` from its start. (A buffer shorter than the count prefix fails
    /// on the first [`push`](Self::push) or on [`finish`](Self::finish).)
    pub fn new(out: &'b mut [u8]) -> Self {
        Self {
            out,
            pos: LIST_PREFIX_SIZE as usize,
            count: 0,
            _item: PhantomData,
        }
    }

    /// Appends an item. Fails, writing nothing, if it does not fit or the list is full.
    pub fn push(&mut self, item: &T) -> Result<()> {
        if self.count >= T::MAX_COUNT {
            return Err(Error::TooManyEntries {
                field: T::LIST,
                count: u64::from(self.count).saturating_add(1),
                max: T::MAX_COUNT.into(),
            });
        }
        let end = self.pos.saturating_add(item.encoded_len());
        check_len(T::LIST, end as u64, 0, T::MAX_BYTES)?;
        let out = self.out.get_mut(self.pos..).unwrap_or(&mut []);
        check_room(T::LIST, out, item.encoded_len())?;
        let mut w = WireWriter::new(out, T::LIST);
        item.write(&mut w)?;
        self.pos = self.pos.saturating_add(w.written());
        self.count = self.count.saturating_add(1);
        Ok(())
    }

    /// Items written so far.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the list takes so far, prefix included.
    pub const fn len(&self) -> usize {
        self.pos
    }

    /// Always false: the prefix is always there.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes the count prefix; returns the list's length in bytes.
    pub fn finish(self) -> Result<usize> {
        WireWriter::new(self.out, T::LIST).u32(self.count)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    #[test]
    fn invocation_context_round_trip_and_golden() {
        let context = InvocationContext {
            invocation: 5,
            deadline_ms: 0x0102,
            async_durability: true,
            function: "f",
            request_id: "r1",
            output_key: None,
        };
        let bytes = context.to_vec().unwrap();
        let expected: [u8; 27] = [
            5, 0, 0, 0, 0, 0, 0, 0, // invocation
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // deadline
            1, 0, 0, 0, // flags: async durability
            1, 0, 2, 0, // name length 1, request id length 2
            b'f', b'r', b'1',
        ];
        assert_eq!(bytes, expected);
        assert_eq!(InvocationContext::decode(&bytes).unwrap(), context);
        assert!(InvocationContext::decode(&bytes[..26]).is_err());
        let mut flags = bytes.clone();
        flags[16] = 4;
        assert_eq!(
            InvocationContext::decode(&flags),
            Err(Error::UndefinedFlags {
                field: Field::InvocationContext,
                flags: 4
            })
        );
        // The output-key flag without the key: the record is too short.
        flags[16] = 2;
        assert!(InvocationContext::decode(&flags).is_err());
        let mut utf = bytes.clone();
        utf[24] = 0xFF;
        assert_eq!(
            InvocationContext::decode(&utf),
            Err(Error::InvalidUtf8(Field::FunctionName))
        );
        let nameless = InvocationContext {
            function: "",
            ..context
        };
        assert!(nameless.to_vec().is_err());
        let mut small = [0u8; 26];
        assert!(matches!(
            context.encode(&mut small),
            Err(Error::BufferTooSmall { .. })
        ));
        assert_eq!(
            INVOCATION_CONTEXT_MAX_LEN,
            24 + MAX_FUNCTION_NAME_LEN + MAX_REQUEST_ID_LEN
        );
    }

    #[test]
    fn invocation_context_with_an_output_key() {
        let context = InvocationContext {
            invocation: 7,
            deadline_ms: 0,
            async_durability: false,
            function: "f",
            request_id: "",
            output_key: Some("out/a"),
        };
        let bytes = context.to_vec().unwrap();
        let expected: [u8; 32] = [
            7, 0, 0, 0, 0, 0, 0, 0, // invocation
            0, 0, 0, 0, 0, 0, 0, 0, // deadline
            2, 0, 0, 0, // flags: output key
            1, 0, 0, 0,    // name length 1, request id length 0
            b'f', // name
            5, 0, // output key length
            b'o', b'u', b't', b'/', b'a',
        ];
        assert_eq!(bytes, expected);
        assert_eq!(context.encoded_len(), 32);
        assert_eq!(InvocationContext::decode(&bytes).unwrap(), context);
        for cut in 0..bytes.len() {
            assert!(
                InvocationContext::decode(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(InvocationContext::decode(&extra).is_err());
        // Both flags.
        let both = InvocationContext {
            async_durability: true,
            ..context
        };
        let bytes = both.to_vec().unwrap();
        assert_eq!(bytes[16], 3);
        assert_eq!(InvocationContext::decode(&bytes).unwrap(), both);
        // A key is 1..=1024 bytes, UTF-8.
        let empty = InvocationContext {
            output_key: Some(""),
            ..context
        };
        assert!(empty.to_vec().is_err());
        let long = "k".repeat(MAX_KEY_LEN as usize + 1);
        let long = InvocationContext {
            output_key: Some(&long),
            ..context
        };
        assert!(long.to_vec().is_err());
        let mut zero_len = context.to_vec().unwrap();
        zero_len.truncate(25);
        zero_len.extend_from_slice(&[0, 0]);
        assert!(matches!(
            InvocationContext::decode(&zero_len),
            Err(Error::LengthOutOfRange {
                field: Field::ObjectKey,
                ..
            })
        ));
        let mut bad = context.to_vec().unwrap();
        bad[27] = 0xFF;
        assert_eq!(
            InvocationContext::decode(&bad),
            Err(Error::InvalidUtf8(Field::ObjectKey))
        );
        // The largest context with a key is what the constant says.
        let name = "n".repeat(MAX_FUNCTION_NAME_LEN as usize);
        let id = "i".repeat(MAX_REQUEST_ID_LEN as usize);
        let key = "k".repeat(MAX_KEY_LEN as usize);
        let largest = InvocationContext {
            function: &name,
            request_id: &id,
            output_key: Some(&key),
            ..context
        };
        assert_eq!(
            largest.to_vec().unwrap().len(),
            INVOCATION_CONTEXT_WITH_KEY_MAX_LEN as usize
        );
        assert_eq!(INVOCATION_CONTEXT_WITH_KEY_MAX_LEN, 1562);
    }

    #[test]
    fn entry_list_round_trip() {
        let entries = [
            ObjectEntry {
                size: 1,
                last_modified_ms: 2,
                key: "a",
                etag: "e",
            },
            ObjectEntry {
                size: 3,
                last_modified_ms: 4,
                key: "bb",
                etag: "",
            },
        ];
        let bytes = EntryList::encode_to_vec(&entries).unwrap();
        assert_eq!(bytes.len(), 4 + 22 + 22);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        let list = EntryList::decode(&bytes).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().eq(entries));
        // Every truncation fails: the count prefix pins the length.
        for cut in 0..bytes.len() {
            assert!(EntryList::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            EntryList::decode(&extra),
            Err(Error::TrailingBytes { .. })
        ));
        let mut many = bytes.clone();
        many[..4].copy_from_slice(&(MAX_LIST_ENTRIES + 1).to_le_bytes());
        assert!(matches!(
            EntryList::decode(&many),
            Err(Error::TooManyEntries { .. })
        ));
    }

    #[test]
    fn list_writer_stops_when_full() {
        let entry = ObjectEntry {
            size: 0,
            last_modified_ms: 0,
            key: "0123456789",
            etag: "",
        };
        let mut out = [0u8; 4 + 30 + 29];
        let mut writer = EntryList::writer(&mut out);
        writer.push(&entry).unwrap();
        assert!(matches!(
            writer.push(&entry),
            Err(Error::BufferTooSmall { .. })
        ));
        assert_eq!(writer.count(), 1);
        let len = writer.finish().unwrap();
        assert_eq!(len, 34);
        assert_eq!(EntryList::decode(&out[..len]).unwrap().len(), 1);
    }

    #[test]
    fn header_list_refuses_injection() {
        let good = [Header {
            name: "x-a",
            value: b"1",
        }];
        let bytes = HeaderList::encode_to_vec(&good).unwrap();
        assert!(HeaderList::decode(&bytes).unwrap().iter().eq(good));
        for value in [&b"a\r\nx: y"[..], b"a\nb", b"a\0"] {
            let bad = [Header { name: "x-a", value }];
            assert_eq!(
                HeaderList::encode_to_vec(&bad),
                Err(Error::InvalidHeader(Field::HeaderValue))
            );
        }
        for name in ["", "a b", "a:b", "é"] {
            let bad = [Header { name, value: b"" }];
            assert!(HeaderList::encode_to_vec(&bad).is_err(), "{name:?}");
        }
        let mut raw = bytes.clone();
        raw[11] = b'\n';
        assert_eq!(
            HeaderList::decode(&raw),
            Err(Error::InvalidHeader(Field::HeaderValue))
        );
        let too_many: Vec<Header<'_>> = (0..=MAX_HEADERS)
            .map(|_| Header {
                name: "a",
                value: b"",
            })
            .collect();
        assert!(matches!(
            HeaderList::encode_to_vec(&too_many),
            Err(Error::TooManyEntries { .. })
        ));
        let big = std::vec![b'v'; u16::MAX as usize];
        let huge: Vec<Header<'_>> = (0..2)
            .map(|_| Header {
                name: "a",
                value: &big,
            })
            .collect();
        assert!(matches!(
            HeaderList::encode_to_vec(&huge),
            Err(Error::LengthOutOfRange { .. })
        ));
    }

    #[test]
    fn object_info_fits_the_head_minimum() {
        let etag = std::string::String::from_utf8(std::vec![b'e'; MAX_ETAG_LEN as usize]).unwrap();
        let info = ObjectEntry {
            size: 1,
            last_modified_ms: 1,
            key: "",
            etag: &etag,
        };
        assert_eq!(info.to_vec().unwrap().len() as u32, OBJECT_INFO_MAX_LEN);
    }
}
