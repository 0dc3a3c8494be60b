// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests of the wire format:
//!
//! - every valid message round-trips (headers, records, whole descriptor chains, through the
//!   flat decoder and through a virtqueue);
//! - every truncation of a valid message is an error, never a panic;
//! - every mutation is either an error or decodes to a message that re-encodes to exactly the
//!   mutated bytes (the encoding is canonical), never a panic;
//! - lengths that overflow or point outside the window are rejected.

use nexus_ring::limits::{MAX_ETAG_LEN, MAX_PAYLOAD_SEGMENTS};
use nexus_ring::mock::{self, ChainImage, MockWindow, RawKind, RequestSpec};
use nexus_ring::records::{EntryList, Header, HeaderList, InvocationContext, ObjectEntry};
use nexus_ring::{
    ChainDescriptor, Command, Decoder, Error, HttpMethod, IoWindow, LogLevel, Outcome,
    REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE, Request, RequestHeader, ResponseHeader, Status,
};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u64>().prop_map(|timeout_ms| Command::Next { timeout_ms }),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(invocation, failed, stored)| {
            Command::Complete {
                invocation,
                outcome: if failed {
                    Outcome::Error
                } else {
                    Outcome::Success
                },
                // Only a success's result is stored at the output key.
                stored: stored && !failed,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(offset, max_len)| Command::Get { offset, max_len }),
        any::<bool>().prop_map(|write_behind| Command::Put { write_behind }),
        Just(Command::Head),
        Just(Command::Delete),
        (0..=nexus_ring::limits::MAX_LIST_ENTRIES)
            .prop_map(|max_entries| Command::List { max_entries }),
        (any::<u64>(), any::<bool>()).prop_map(|(timeout_ms, asynchronous)| Command::Invoke {
            timeout_ms,
            asynchronous
        }),
        (prop::sample::select(&HttpMethod::ALL[..]), any::<u64>())
            .prop_map(|(method, timeout_ms)| Command::Http { method, timeout_ms }),
        any::<u64>().prop_map(|timeout_ms| Command::Flush { timeout_ms }),
        prop::sample::select(&LogLevel::ALL[..]).prop_map(|level| Command::Log { level }),
    ]
}

fn request_header() -> impl Strategy<Value = RequestHeader> {
    (command(), any::<u64>())
        .prop_flat_map(|(command, id)| {
            let r = command.op().rules();
            (
                Just(command),
                Just(id),
                r.key_min..=r.key_max,
                0..=r.meta_max,
                r.payload_min..=r.payload_max,
            )
        })
        .prop_map(
            |(command, id, key_len, meta_len, payload_len)| RequestHeader {
                id,
                command,
                key_len,
                meta_len,
                payload_len,
            },
        )
}

fn response_header() -> impl Strategy<Value = ResponseHeader> {
    (
        any::<u64>(),
        prop::sample::select(&Status::ALL[..]),
        0..=nexus_ring::limits::MAX_META_LEN,
        0..=nexus_ring::limits::MAX_PAYLOAD_LEN,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, status, meta_len, payload_len, total, detail)| ResponseHeader {
                id,
                status,
                meta_len,
                payload_len: if status.is_ok() { payload_len } else { 0 },
                total,
                detail,
            },
        )
}

/// A request as a guest would send it, with small random contents.
#[derive(Clone, Debug)]
struct Spec {
    id: u64,
    command: Command,
    key: Vec<u8>,
    meta: Vec<u8>,
    payload: Vec<Vec<u8>>,
    response_meta: u32,
    response_payload: Vec<u32>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (command(), any::<u64>())
        .prop_flat_map(|(command, id)| {
            let r = command.op().rules();
            let payload_segments = if r.payload_max == 0 {
                0..=0
            } else {
                (r.payload_min.min(1) as usize)..=MAX_PAYLOAD_SEGMENTS
            };
            let response_segments = if r.response_payload {
                0..=MAX_PAYLOAD_SEGMENTS
            } else {
                0..=0
            };
            (
                Just(command),
                Just(id),
                prop::collection::vec(
                    any::<u8>(),
                    r.key_min as usize..=r.key_max.min(300) as usize,
                ),
                prop::collection::vec(any::<u8>(), 0..=r.meta_max.min(200) as usize),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), payload_segments),
                r.response_meta_min..=r.response_meta_min + 64,
                prop::collection::vec(1u32..=4096, response_segments),
            )
        })
        .prop_map(
            |(command, id, key, meta, payload, response_meta, response_payload)| Spec {
                id,
                command,
                key,
                meta,
                payload,
                response_meta,
                response_payload,
            },
        )
}

/// Lays `spec` out in a fresh 256 KiB mock window.
fn build(spec: &Spec) -> (MockWindow, Vec<ChainDescriptor>) {
    let payload: Vec<&[u8]> = spec.payload.iter().map(Vec::as_slice).collect();
    let request = RequestSpec {
        id: spec.id,
        command: spec.command,
        key: &spec.key,
        meta: &spec.meta,
        payload: &payload,
        response_meta: spec.response_meta,
        response_payload: &spec.response_payload,
    };
    let mut window = MockWindow::new(0x4_0000).expect("window");
    let chain = request.build(&mut window).expect("valid spec");
    (window, chain)
}

fn decode(
    window: &MockWindow,
    chain: &[ChainDescriptor],
) -> Result<Request, nexus_ring::Rejection> {
    Decoder::new(window.window()).decode_image(chain.iter().copied(), window.bytes())
}

/// Runs the fuzz oracle on a chain: no panic, and any accepted request satisfies every
/// invariant (segments in the window, lengths as declared, canonical header).
fn oracle(window: &MockWindow, chain: &[ChainDescriptor]) {
    let mut input = vec![RawKind::ChainImage as u8];
    input.extend(ChainImage::new(chain, window).to_bytes());
    mock::fuzz_raw(&input);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_header_round_trips(header in request_header()) {
        let bytes = header.to_bytes().unwrap();
        prop_assert_eq!(RequestHeader::decode(&bytes), Ok(header));
        prop_assert_eq!(RequestHeader::peek_id(&bytes), Some(header.id));
    }

    #[test]
    fn request_header_truncations_fail(header in request_header(), cut in 0..REQUEST_HEADER_SIZE) {
        let bytes = header.to_bytes().unwrap();
        prop_assert!(
            matches!(RequestHeader::decode(&bytes[..cut]), Err(Error::Truncated { .. })),
            "a truncated header must be refused as truncated"
        );
    }

    #[test]
    fn request_header_mutations_are_canonical(
        header in request_header(),
        index in 0..REQUEST_HEADER_SIZE,
        xor in 1u8..,
    ) {
        let mut bytes = header.to_bytes().unwrap();
        bytes[index] ^= xor;
        if let Ok(decoded) = RequestHeader::decode(&bytes) {
            prop_assert!(index >= 6, "magic and version bytes are never accepted mutated");
            prop_assert_eq!(decoded.to_bytes().unwrap(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_canonical(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        for kind in RawKind::ALL {
            let mut input = vec![kind as u8];
            input.extend_from_slice(&bytes);
            mock::fuzz_raw(&input);
        }
    }

    #[test]
    fn response_header_round_trips(header in response_header()) {
        let bytes = header.to_bytes().unwrap();
        prop_assert_eq!(ResponseHeader::decode(&bytes), Ok(header));
        for cut in 0..RESPONSE_HEADER_SIZE {
            prop_assert!(ResponseHeader::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn response_header_mutations_are_canonical(
        header in response_header(),
        index in 0..RESPONSE_HEADER_SIZE,
        xor in 1u8..,
    ) {
        let mut bytes = header.to_bytes().unwrap();
        bytes[index] ^= xor;
        if let Ok(decoded) = ResponseHeader::decode(&bytes) {
            prop_assert!(index >= 6);
            prop_assert_eq!(decoded.to_bytes().unwrap(), bytes);
        }
    }

    #[test]
    fn records_round_trip_and_refuse_truncation(
        invocation in any::<u64>(),
        deadline_ms in any::<u64>(),
        async_durability in any::<bool>(),
        function in "[a-z0-9-]{1,64}",
        request_id in "[ -~]{0,64}",
        output_key in prop::option::of("[a-zA-Z0-9/._é-]{1,40}"),
        keys in prop::collection::vec("[a-zA-Z0-9/._é-]{0,40}", 0..8),
        etag in prop::string::string_regex(&format!("[ -~]{{0,{MAX_ETAG_LEN}}}")).unwrap(),
        headers in prop::collection::vec(("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}", "[ -~\t]{0,40}"), 0..8),
    ) {
        let context = InvocationContext {
            invocation, deadline_ms, async_durability,
            function: &function, request_id: &request_id,
            output_key: output_key.as_deref(),
        };
        let bytes = context.to_vec().unwrap();
        prop_assert_eq!(InvocationContext::decode(&bytes), Ok(context));
        for cut in 0..bytes.len() {
            prop_assert!(InvocationContext::decode(&bytes[..cut]).is_err());
        }

        let entries: Vec<ObjectEntry<'_>> = keys
            .iter()
            .map(|key| ObjectEntry { size: invocation, last_modified_ms: deadline_ms, key, etag: &etag })
            .collect();
        let bytes = EntryList::encode_to_vec(&entries).unwrap();
        let list = EntryList::decode(&bytes).unwrap();
        prop_assert!(list.iter().eq(entries.iter().copied()));
        for cut in 0..bytes.len() {
            prop_assert!(EntryList::decode(&bytes[..cut]).is_err());
        }

        let headers: Vec<Header<'_>> = headers
            .iter()
            .map(|(name, value)| Header { name, value: value.as_bytes() })
            .collect();
        let bytes = HeaderList::encode_to_vec(&headers).unwrap();
        prop_assert!(HeaderList::decode(&bytes).unwrap().iter().eq(headers.iter().copied()));
        for cut in 0..bytes.len() {
            prop_assert!(HeaderList::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn record_mutations_are_canonical(
        function in "[a-z]{1,16}",
        key in "[a-z/]{0,16}",
        index in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let context = InvocationContext {
            invocation: 1, deadline_ms: 2, async_durability: false,
            function: &function, request_id: "id",
            output_key: None,
        };
        let keyed = InvocationContext { output_key: Some("out/k"), ..context };
        let entry = ObjectEntry { size: 3, last_modified_ms: 4, key: &key, etag: "t" };
        let header = Header { name: "n", value: key.as_bytes() };
        let inputs = [
            (RawKind::InvocationContext, context.to_vec().unwrap()),
            (RawKind::InvocationContext, keyed.to_vec().unwrap()),
            (RawKind::ObjectEntry, entry.to_vec().unwrap()),
            (RawKind::EntryList, EntryList::encode_to_vec(&[entry, entry]).unwrap()),
            (RawKind::HeaderList, HeaderList::encode_to_vec(&[header]).unwrap()),
        ];
        for (kind, mut bytes) in inputs {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
            let mut input = vec![kind as u8];
            input.extend(bytes);
            // Panics (inside the oracle) if a mutated record decodes but re-encodes differently.
            mock::fuzz_raw(&input);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn chains_round_trip(spec in spec()) {
        let (window, chain) = build(&spec);
        let request = decode(&window, &chain).unwrap();
        prop_assert_eq!(request.id(), spec.id);
        prop_assert_eq!(request.command(), spec.command);
        prop_assert_eq!(request.key.map(|k| window.read(k).unwrap().to_vec()).unwrap_or_default(), spec.key.clone());
        prop_assert_eq!(request.meta.map(|m| window.read(m).unwrap().to_vec()).unwrap_or_default(), spec.meta.clone());
        let payload: Vec<Vec<u8>> = request.payload.iter().map(|s| window.read(*s).unwrap().to_vec()).collect();
        prop_assert_eq!(payload, spec.payload.clone());
        prop_assert_eq!(request.response.meta_capacity(), spec.response_meta);
        let buffers: Vec<u32> = request.response.payload.iter().map(|s| s.len).collect();
        prop_assert_eq!(buffers, spec.response_payload.clone());
        prop_assert_eq!(mock::request_descriptors(&request, chain[0].addr), chain.clone());
        oracle(&window, &chain);
    }

    #[test]
    fn chains_round_trip_through_a_virtqueue(spec in spec()) {
        let (window, chain) = build(&spec);
        let image = ChainImage::new(&chain, &window);
        let queued = image.decode_virtio().unwrap();
        prop_assert_eq!(queued, decode(&window, &chain));
        prop_assert!(image.decode_virtio().unwrap().is_ok());
        mock::fuzz_chain(&image);
    }

    #[test]
    fn chain_truncations_fail(spec in spec(), cut in any::<prop::sample::Index>()) {
        let (window, chain) = build(&spec);
        let head = chain.iter().position(|d| d.writable).unwrap();
        let cut = cut.index(chain.len());
        let result = decode(&window, &chain[..cut]);
        if cut <= head {
            prop_assert!(result.is_err(), "cut at {} of {}", cut, chain.len());
        } else {
            // Dropping response payload buffers leaves a valid request with fewer buffers.
            let request = result.unwrap();
            prop_assert_eq!(request.response.payload.len(), cut - head - 1);
        }
    }

    #[test]
    fn readable_descriptors_cannot_be_dropped_or_shortened(
        spec in spec(),
        which in any::<prop::sample::Index>(),
        shorten in any::<prop::sample::Index>(),
    ) {
        let (window, chain) = build(&spec);
        let readable = chain.iter().filter(|d| !d.writable).count();
        let i = which.index(readable);
        let mut dropped = chain.clone();
        dropped.remove(i);
        prop_assert!(decode(&window, &dropped).is_err());
        let mut short = chain.clone();
        short[i].len -= 1 + shorten.index(short[i].len as usize) as u32;
        prop_assert!(decode(&window, &short).is_err());
    }

    #[test]
    fn descriptor_mutations_never_panic(
        spec in spec(),
        which in any::<prop::sample::Index>(),
        field in 0..4u8,
        value in any::<u64>(),
    ) {
        let (window, mut chain) = build(&spec);
        let i = which.index(chain.len());
        match field {
            0 => chain[i].addr = value,
            1 => chain[i].len = value as u32,
            2 => chain[i].writable = !chain[i].writable,
            _ => chain[i].addr = chain[i].addr.wrapping_add(value % 0x100).wrapping_sub(0x80),
        }
        oracle(&window, &chain);
    }

    #[test]
    fn header_byte_mutations_in_the_window_never_panic(
        spec in spec(),
        index in 0..REQUEST_HEADER_SIZE,
        xor in 1u8..,
    ) {
        let (mut window, chain) = build(&spec);
        let at = chain[0].segment();
        let mut bytes = window.read(at).unwrap().to_vec();
        bytes[index] ^= xor;
        window.write(at, &bytes).unwrap();
        oracle(&window, &chain);
    }

    #[test]
    fn descriptors_outside_the_window_are_refused(
        spec in spec(),
        which in any::<prop::sample::Index>(),
        how in 0..4u8,
        k in 1u64..0x1000,
    ) {
        let (window, mut chain) = build(&spec);
        let w = window.window();
        let i = which.index(chain.len());
        let len = u64::from(chain[i].len);
        let end = w.base() + w.size();
        chain[i].addr = match how {
            0 => w.base().saturating_sub(k),             // below the window
            1 => end - len + k,                          // across its end
            2 => end + k,                                // past it
            _ => u64::MAX - (k % len.max(1)),            // address + length overflows
        };
        let rejection = decode(&window, &chain).unwrap_err();
        prop_assert_eq!(rejection.error, Error::OutsideWindow { addr: chain[i].addr, len });
    }

    #[test]
    fn window_containment_matches_wide_arithmetic(
        base in any::<u64>(),
        size in 1u64..,
        addr in any::<u64>(),
        len in any::<u64>(),
    ) {
        if let Ok(window) = IoWindow::new(base, size) {
            let expected = u128::from(addr) >= u128::from(base)
                && u128::from(addr) + u128::from(len) <= u128::from(base) + u128::from(size);
            prop_assert_eq!(window.contains(addr, len), expected);
        } else {
            prop_assert!(u128::from(base) + u128::from(size) > u128::from(u64::MAX));
        }
    }
}
