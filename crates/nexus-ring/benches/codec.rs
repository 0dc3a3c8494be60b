// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Cost of the protocol per message: the guest lays out and encodes a request, the backend
//! decodes and validates its chain. Payload bytes are never touched by the protocol (they
//! stay in the window); `copy` variants add a 4 KiB copy in and out for scale.
//!
//! ```text
//! cargo bench -p nexus-ring --bench codec
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nexus_ring::mock::{ChainImage, MOCK_WINDOW_BASE, MockWindow};
use nexus_ring::{
    Command, Decoder, REQUEST_HEADER_SIZE, RequestLayout, ResponseHeader, SegmentRef, Status,
};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct Fixture {
    window: MockWindow,
    header: SegmentRef,
    key: SegmentRef,
    payload: Vec<SegmentRef>,
    head: SegmentRef,
    buffers: Vec<SegmentRef>,
    command: Command,
}

impl Fixture {
    fn get() -> Self {
        let mut window = MockWindow::new(0x4_0000).unwrap();
        let header = window.alloc(REQUEST_HEADER_SIZE as u32).unwrap();
        let key = window.place(b"inputs/2026/11/photo-000123.jpg").unwrap();
        let head = window.alloc(40 + 256).unwrap();
        let buffers = vec![window.alloc(4096).unwrap()];
        Self {
            window,
            header,
            key,
            payload: Vec::new(),
            head,
            buffers,
            command: Command::Get {
                offset: 0,
                max_len: 0,
            },
        }
    }

    fn put_4k() -> Self {
        let mut window = MockWindow::new(0x4_0000).unwrap();
        let header = window.alloc(REQUEST_HEADER_SIZE as u32).unwrap();
        let key = window.place(b"outputs/2026/11/thumb-000123.png").unwrap();
        let payload = vec![window.place(&[0xA5; 4096]).unwrap()];
        let head = window.alloc(40 + 256).unwrap();
        Self {
            window,
            header,
            key,
            payload,
            head,
            buffers: Vec::new(),
            command: Command::Put { write_behind: true },
        }
    }

    fn layout(&self) -> RequestLayout<'_> {
        RequestLayout {
            header: self.header.addr,
            key: Some(self.key),
            meta: None,
            payload: &self.payload,
            response_head: self.head,
            response_payload: &self.buffers,
        }
    }

    /// Guest: header from the layout, encoded into the window. Backend: decode the chain.
    fn round(&mut self, id: u64) -> nexus_ring::Request {
        let mut bytes = [0u8; REQUEST_HEADER_SIZE];
        let layout = RequestLayout {
            header: self.header.addr,
            key: Some(self.key),
            meta: None,
            payload: &self.payload,
            response_head: self.head,
            response_payload: &self.buffers,
        };
        layout
            .header(id, self.command)
            .unwrap()
            .encode(&mut bytes)
            .unwrap();
        let descriptors = layout.descriptors();
        self.window.write(self.header, &bytes).unwrap();
        Decoder::new(self.window.window())
            .decode_image(descriptors, self.window.bytes())
            .unwrap()
    }
}

fn encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_decode");
    let mut get = Fixture::get();
    group.bench_function("get", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            let request = get.round(black_box(id));
            black_box(&request);
        })
    });
    let mut put = Fixture::put_4k();
    group.bench_function("put_4k", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            let request = put.round(black_box(id));
            black_box(&request);
        })
    });
    let mut put = Fixture::put_4k();
    let data = vec![0x5Au8; 4096];
    let mut sink = vec![0u8; 4096];
    group.bench_function("put_4k_with_copies", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            // Guest copies its data into the window; backend copies it out (e.g. write-behind).
            let at = put.payload[0];
            put.window.write(at, black_box(&data)).unwrap();
            let request = put.round(id);
            let mut offset = 0;
            for piece in request.payload.cover(0, 4096).unwrap() {
                let bytes = put.window.read(piece).unwrap();
                sink[offset..offset + bytes.len()].copy_from_slice(bytes);
                offset += bytes.len();
            }
            black_box(&sink);
        })
    });
    group.bench_function("response_header", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            let header = ResponseHeader {
                payload_len: 4096,
                total: 1 << 20,
                ..ResponseHeader::new(black_box(id), Status::Ok)
            };
            let bytes = header.to_bytes().unwrap();
            let decoded = ResponseHeader::decode(black_box(&bytes)).unwrap();
            decoded.check_reply(id, 256, 4096).unwrap();
            black_box(decoded)
        })
    });
    group.finish();
}

/// The device's path: the chain is read from a split virtqueue in guest memory.
fn decode_virtqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_virtqueue");
    for (name, fixture) in [("get", Fixture::get()), ("put_4k", Fixture::put_4k())] {
        let mut fixture = fixture;
        fixture.round(1);
        let descriptors: Vec<_> = fixture.layout().descriptors().collect();
        let image = ChainImage::new(&descriptors, &fixture.window);
        let window = image.window().unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            MOCK_WINDOW_BASE as usize + image.image.len(),
        )])
        .unwrap();
        memory
            .write_slice(&image.image, GuestAddress(MOCK_WINDOW_BASE))
            .unwrap();
        let queue = MockSplitQueue::new(&memory, 256);
        let raw: Vec<RawDescriptor> = image
            .descriptors
            .iter()
            .map(|d| RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, 0)))
            .collect();
        let chain = queue.build_desc_chain(&raw).unwrap();
        let decoder = Decoder::new(window);
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = decoder.decode_chain(black_box(chain.clone())).unwrap();
                black_box(&request);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode_decode, decode_virtqueue);
criterion_main!(benches);
