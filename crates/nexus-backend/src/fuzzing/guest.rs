// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest's side: a window in plain memory holding a split virtqueue and one area per
//! request slot, requests laid out with nexus-ring's encoders and made available, answers
//! taken from the used ring and checked as the guest driver checks them.

use nexus_ring::{
    Command, RESPONSE_HEADER_SIZE, RequestLayout, ResponseHeader, SegmentRef, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest-physical base of the window.
pub(crate) const WINDOW_BASE: u64 = 0xC000_0000;
/// The queue's size.
pub(crate) const QUEUE_SIZE: u16 = 256;
pub(crate) const DESC_TABLE: u64 = WINDOW_BASE;
pub(crate) const AVAIL_RING: u64 = WINDOW_BASE + 0x1000;
pub(crate) const USED_RING: u64 = WINDOW_BASE + 0x2000;
/// Requests the guest can have outstanding at once.
pub(crate) const SLOTS: usize = 16;
/// Descriptors of each slot (a chain is at most 4 + 4 + 4 long here).
const SLOT_DESCRIPTORS: u16 = 16;
const SLOTS_BASE: u64 = WINDOW_BASE + 0x1_0000;
const SLOT_SIZE: u64 = 0x2_0000;
/// The window's size: rings, then the slots.
pub(crate) const WINDOW_SIZE: u64 = SLOTS_BASE - WINDOW_BASE + SLOT_SIZE * SLOTS as u64;

// Offsets inside a slot.
const HEADER_AT: u64 = 0;
const KEY_AT: u64 = 0x100;
const META_AT: u64 = 0x0C00;
const RESPONSE_HEAD_AT: u64 = 0x2000;
const RESPONSE_HEAD_ROOM: u32 = 0x2000;
const PAYLOAD_AT: u64 = 0x4000;
const RESPONSE_PAYLOAD_AT: u64 = 0xF000;
/// Room in a slot for request payload and for response payload (each segment or buffer
/// is followed by a gap of [`GAP`] bytes).
const PAYLOAD_ROOM: u64 = RESPONSE_PAYLOAD_AT - PAYLOAD_AT;
const RESPONSE_PAYLOAD_ROOM: u64 = SLOT_SIZE - RESPONSE_PAYLOAD_AT;
const GAP: u64 = 16;
/// What the guest leaves in the response areas, to see what the backend wrote.
pub(crate) const UNTOUCHED: u8 = 0xA5;

/// What the guest sends in one request.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) command: Command,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) meta: Option<&'a [u8]>,
    pub(crate) payload: &'a [u8],
    /// Payload segments (at least 1 when there is a payload).
    pub(crate) segments: usize,
    /// Response meta area capacity.
    pub(crate) meta_capacity: u32,
    /// Response payload capacity and its buffer count.
    pub(crate) capacity: u32,
    pub(crate) buffers: usize,
}

/// A request made available, as the guest remembers it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub(crate) slot: usize,
    pub(crate) id: u64,
    pub(crate) response_head: SegmentRef,
    pub(crate) response_payload: [SegmentRef; 4],
    pub(crate) buffers: usize,
    pub(crate) capacity: u32,
}

/// An answer as the guest reads it.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) header: ResponseHeader,
    pub(crate) meta: Vec<u8>,
    pub(crate) payload: Vec<u8>,
}

/// The guest's driver state.
#[derive(Debug)]
pub(crate) struct Guest {
    pub(crate) mem: GuestMemoryMmap,
    free: Vec<usize>,
    avail_idx: u16,
    used_idx: u16,
    next_id: u64,
}

/// `len` bytes cut into `count` non-empty pieces (fewer if `len` is smaller): their lengths.
fn split(len: usize, count: usize) -> Vec<usize> {
    let count = count.clamp(1, 4).min(len);
    if count == 0 {
        return Vec::new();
    }
    let base = len / count;
    (0..count)
        .map(|i| base + usize::from(i < len % count))
        .collect()
}

impl Guest {
    pub(crate) fn new() -> Self {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(WINDOW_BASE), WINDOW_SIZE as usize)])
                .expect("an anonymous mapping of a few MiB");
        Self {
            mem,
            free: (0..SLOTS).rev().collect(),
            avail_idx: 0,
            used_idx: 0,
            next_id: 1,
        }
    }

    /// Whether a slot is free for another request.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Lays out `request` in a free slot and makes it available; `None` if no slot is free or
    /// nexus-ring's encoder refuses the layout (the guest driver could not send it).
    pub(crate) fn submit(&mut self, request: &Outgoing<'_>) -> Option<Sent> {
        let slot = *self.free.last()?;
        let base = SLOTS_BASE + slot as u64 * SLOT_SIZE;
        let mut at = base + PAYLOAD_AT;
        let mut payload = Vec::new();
        let mut offset = 0;
        for len in split(request.payload.len(), request.segments) {
            let segment = SegmentRef::new(at, len as u32);
            self.write(at, &request.payload[offset..offset + len]);
            payload.push(segment);
            offset += len;
            at += len as u64 + GAP;
        }
        assert!(at - base - PAYLOAD_AT <= PAYLOAD_ROOM, "payload room");
        let mut response_payload = [SegmentRef::new(0, 0); 4];
        let mut at = base + RESPONSE_PAYLOAD_AT;
        let pieces = split(request.capacity as usize, request.buffers);
        for (i, len) in pieces.iter().enumerate() {
            response_payload[i] = SegmentRef::new(at, *len as u32);
            self.fill(at, *len);
            at += *len as u64 + GAP;
        }
        assert!(
            at - base - RESPONSE_PAYLOAD_AT <= RESPONSE_PAYLOAD_ROOM,
            "response room"
        );
        let key = request.key.map(|key| {
            self.write(base + KEY_AT, key);
            SegmentRef::new(base + KEY_AT, key.len() as u32)
        });
        let meta = request.meta.map(|meta| {
            self.write(base + META_AT, meta);
            SegmentRef::new(base + META_AT, meta.len() as u32)
        });
        assert!(request.meta_capacity + RESPONSE_HEADER_SIZE as u32 <= RESPONSE_HEAD_ROOM);
        let response_head = SegmentRef::new(
            base + RESPONSE_HEAD_AT,
            RESPONSE_HEADER_SIZE as u32 + request.meta_capacity,
        );
        self.fill(response_head.addr, response_head.len as usize);
        let layout = RequestLayout {
            header: base + HEADER_AT,
            key,
            meta,
            payload: &payload,
            response_head,
            response_payload: &response_payload[..pieces.len()],
        };
        let id = self.next_id;
        let header = layout.header(id, request.command).ok()?;
        self.next_id += 1;
        self.write(base + HEADER_AT, &header.to_bytes().ok()?);
        let head = slot as u16 * SLOT_DESCRIPTORS;
        let descriptors: Vec<_> = layout.descriptors().collect();
        assert!(descriptors.len() <= usize::from(SLOT_DESCRIPTORS));
        for (i, d) in (head..).zip(&descriptors) {
            let at = DESC_TABLE + u64::from(i) * 16;
            let last = usize::from(i - head) + 1 == descriptors.len();
            let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT }
                | if d.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            self.put(at, d.addr);
            self.put(at + 8, d.len);
            self.put(at + 12, flags);
            self.put(at + 14, if last { 0 } else { i + 1 });
        }
        let ring_at = AVAIL_RING + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.put(ring_at, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.put(AVAIL_RING + 2, self.avail_idx);
        self.free.pop();
        Some(Sent {
            slot,
            id,
            response_head,
            response_payload,
            buffers: pieces.len(),
            capacity: request.capacity,
        })
    }

    /// The used ring's new entries: (slot, used length).
    pub(crate) fn take_used(&mut self) -> Vec<(usize, u32)> {
        let idx: u16 = self.get(USED_RING + 2);
        let mut out = Vec::new();
        while self.used_idx != idx {
            let at = USED_RING + 4 + 8 * u64::from(self.used_idx % QUEUE_SIZE);
            let head: u32 = self.get(at);
            let len: u32 = self.get(at + 4);
            assert_eq!(
                head % u32::from(SLOT_DESCRIPTORS),
                0,
                "the used ring returned {head}, not the head of a chain"
            );
            let slot = (head / u32::from(SLOT_DESCRIPTORS)) as usize;
            assert!(
                slot < SLOTS && !self.free.contains(&slot),
                "the used ring returned chain {head}, which is not outstanding"
            );
            self.free.push(slot);
            out.push((slot, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }

    /// Reads the answer to `sent`, checked as the guest driver checks it: the header
    /// decodes, answers this request, claims no more than the request offered, and the used
    /// length is what it claims; nothing was written past what it claims.
    pub(crate) fn read_answer(&self, sent: &Sent, used: u32) -> Answer {
        let mut raw = [0u8; RESPONSE_HEADER_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(sent.response_head.addr))
            .expect("the response head is in the window");
        let header = ResponseHeader::decode(&raw)
            .unwrap_or_else(|e| panic!("request {}: bad response header: {e}", sent.id));
        let meta_capacity = sent.response_head.len - RESPONSE_HEADER_SIZE as u32;
        if let Err(e) = header.check_reply(sent.id, meta_capacity, sent.capacity) {
            panic!(
                "request {}: the guest refuses the answer {header:?}: {e}",
                sent.id
            );
        }
        assert_eq!(
            Ok(used),
            header.used_len(),
            "request {}: used length against {header:?}",
            sent.id
        );
        let meta = self.read(
            sent.response_head.addr + RESPONSE_HEADER_SIZE as u64,
            sent.response_head.len as usize - RESPONSE_HEADER_SIZE,
        );
        let mut payload = Vec::new();
        for buffer in &sent.response_payload[..sent.buffers] {
            payload.extend(self.read(buffer.addr, buffer.len as usize));
        }
        let meta_len = header.meta_len as usize;
        let payload_len = header.payload_len as usize;
        if header.status.is_ok() {
            assert!(
                meta[meta_len..].iter().all(|&b| b == UNTOUCHED),
                "request {}: meta bytes written past meta_len {meta_len}",
                sent.id
            );
            assert!(
                payload[payload_len..].iter().all(|&b| b == UNTOUCHED),
                "request {}: payload bytes written past payload_len {payload_len}",
                sent.id
            );
        }
        Answer {
            header,
            meta: meta[..meta_len].to_vec(),
            payload: payload[..payload_len].to_vec(),
        }
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("inside the window");
    }

    fn fill(&self, addr: u64, len: usize) {
        self.write(addr, &vec![UNTOUCHED; len]);
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("inside the window");
        out
    }

    fn put<T: vm_memory::ByteValued>(&self, addr: u64, value: T) {
        self.mem
            .write_obj(value, GuestAddress(addr))
            .expect("inside the window");
    }

    fn get<T: vm_memory::ByteValued>(&self, addr: u64) -> T {
        self.mem
            .read_obj(GuestAddress(addr))
            .expect("inside the window")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_non_empty_and_add_up() {
        assert_eq!(split(0, 3), Vec::<usize>::new());
        assert_eq!(split(2, 4), vec![1, 1]);
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(10, 9), vec![3, 3, 2, 2]);
    }
}
