// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A whole split virtqueue as bytes (features `test-utils` and `virtio`): the input of the
//! `ring_queue` fuzz target, of the queue property tests and of [`fuzz_queue`], the oracle
//! they share.

// Test scaffolding over images this module lays out itself: an out-of-range index here is a
// bug in the scaffolding, and a panic in the oracle is a finding.
#![allow(clippy::indexing_slicing)]

use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryResult, Permissions,
};

use super::{MOCK_WINDOW_BASE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::chain::{ChainDescriptor, Decoder, MAX_CHAIN_LEN};
use crate::queue::{CheckedChain, RingFault, enable_notification_checked, pending, pop_checked};
use crate::window::IoWindow;

/// One entry of a descriptor table, as the driver writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableEntry {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// Virtio flags ([`VIRTQ_DESC_F_NEXT`], [`VIRTQ_DESC_F_WRITE`], [`VIRTQ_DESC_F_INDIRECT`],
    /// anything else).
    pub flags: u16,
    /// The next descriptor, if `flags` has [`VIRTQ_DESC_F_NEXT`].
    pub next: u16,
}

impl TableEntry {
    /// The entry for `descriptor`, linking on to `next` if it is `Some`.
    pub fn new(descriptor: ChainDescriptor, next: Option<u16>) -> Self {
        let write = if descriptor.writable {
            VIRTQ_DESC_F_WRITE
        } else {
            0
        };
        Self {
            addr: descriptor.addr,
            len: descriptor.len,
            flags: write | if next.is_some() { VIRTQ_DESC_F_NEXT } else { 0 },
            next: next.unwrap_or(0),
        }
    }

    /// The descriptor as the protocol sees it.
    pub fn descriptor(&self) -> ChainDescriptor {
        ChainDescriptor {
            addr: self.addr,
            len: self.len,
            writable: self.flags & VIRTQ_DESC_F_WRITE != 0,
        }
    }

    fn links_on(&self) -> bool {
        self.flags & VIRTQ_DESC_F_NEXT != 0
    }

    fn indirect(&self) -> bool {
        self.flags & VIRTQ_DESC_F_INDIRECT != 0
    }
}

/// A split virtqueue in a small guest memory: the device's state (`size`, `next_avail`), the
/// driver's rings and table, how much of it is mapped, and an I/O window for the buffers.
///
/// Memory layout: the available ring at [`QueueImage::AVAIL_RING`], the used ring after it
/// (4-byte aligned), the descriptor table after that (16-byte aligned), the window at
/// [`MOCK_WINDOW_BASE`]. Guest memory is one region from 0 that ends after the window, or
/// after `mapped` bytes if `mapped` is not 0: cutting it short makes the end of the table
/// unreadable first, then the used ring, then the available ring.
///
/// Byte format (all little-endian; every byte string is an image, missing bytes are zero):
/// `u8` log2 of the size (mod 9: sizes 1 to 256); `u8` chain limit; `u16` next_avail; `u16`
/// available index; `u16` mapped; `size` × `u16` available ring entries; `size` × 16-byte
/// descriptors `{ u64 addr, u32 len, u16 flags, u16 next }`; the rest is the window's bytes
/// (at most [`QueueImage::MAX_WINDOW_LEN`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueImage {
    /// Queue size: a power of two from 1 to 256.
    pub size: u16,
    /// The chain limit passed to [`pop_checked`].
    pub limit: u8,
    /// The device's next available index.
    pub next_avail: u16,
    /// The available index the driver wrote.
    pub avail_idx: u16,
    /// Bytes of guest memory mapped from 0, or 0 for all of it.
    pub mapped: u16,
    /// The available ring's entries (`size` of them).
    pub ring: Vec<u16>,
    /// The descriptor table (`size` entries).
    pub table: Vec<TableEntry>,
    /// The window's bytes, at [`MOCK_WINDOW_BASE`]. Empty: no window.
    pub window: Vec<u8>,
}

impl QueueImage {
    /// The largest queue an image describes.
    pub const MAX_SIZE: u16 = 256;
    /// The largest window image accepted, to keep fuzzing memory bounded.
    pub const MAX_WINDOW_LEN: usize = 1 << 16;
    /// Guest-physical address of the available ring.
    pub const AVAIL_RING: u64 = 0x100;
    const HEADER_LEN: usize = 8;

    /// An empty queue of `size` (a power of two up to [`Self::MAX_SIZE`]) with no window,
    /// every chain limit at [`MAX_CHAIN_LEN`].
    pub fn new(size: u16) -> Self {
        Self {
            size,
            limit: MAX_CHAIN_LEN as u8,
            next_avail: 0,
            avail_idx: 0,
            mapped: 0,
            ring: alloc::vec![0; size.into()],
            table: alloc::vec![TableEntry::default(); size.into()],
            window: Vec::new(),
        }
    }

    /// Writes `descriptors` into the table at `indices` (one each, linked in that order) and
    /// makes the chain available, as a driver does. Panics if the lengths differ or an index
    /// is outside the table.
    pub fn push_chain(&mut self, indices: &[u16], descriptors: &[ChainDescriptor]) {
        assert_eq!(indices.len(), descriptors.len());
        for (i, (&index, &descriptor)) in indices.iter().zip(descriptors).enumerate() {
            let next = indices.get(i + 1).copied();
            self.table[usize::from(index)] = TableEntry::new(descriptor, next);
        }
        let slot = usize::from(self.avail_idx % self.size);
        self.ring[slot] = indices.first().copied().unwrap_or(0);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Guest-physical address of the available ring.
    pub fn avail_ring(&self) -> u64 {
        Self::AVAIL_RING
    }

    /// Guest-physical address of the used ring.
    pub fn used_ring(&self) -> u64 {
        // After flags, idx, the entries and used_event; 4-byte aligned.
        (self.avail_ring() + 6 + 2 * u64::from(self.size) + 3) & !3
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        // After flags, idx, the elements and avail_event; 16-byte aligned.
        (self.used_ring() + 6 + 8 * u64::from(self.size) + 15) & !15
    }

    /// Guest-physical address of table entry `index`.
    pub fn descriptor_addr(&self, index: u16) -> u64 {
        self.desc_table() + 16 * u64::from(index)
    }

    /// The window, if the image has one.
    pub fn io_window(&self) -> Option<IoWindow> {
        IoWindow::new(MOCK_WINDOW_BASE, self.window.len() as u64).ok()
    }

    /// Bytes of guest memory from 0.
    pub fn memory_len(&self) -> u64 {
        let all = MOCK_WINDOW_BASE + self.window.len() as u64;
        match self.mapped {
            0 => all,
            mapped => all.min(mapped.into()),
        }
    }

    /// Whether `len` bytes at `addr` lie in guest memory.
    pub fn readable(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len)
            .is_some_and(|end| end <= self.memory_len())
    }

    /// The ring entry for available position `position`.
    pub fn ring_entry(&self, position: u16) -> u16 {
        self.ring[usize::from(position % self.size)]
    }

    /// Table entry `index` (which must be inside the table).
    pub fn entry(&self, index: u16) -> TableEntry {
        self.table[usize::from(index)]
    }

    /// The guest memory and a ready queue over it, as the device sees them. `None` if the
    /// size is not a power of two up to [`Self::MAX_SIZE`] or the memory cannot be mapped.
    pub fn build(&self) -> Option<(GuestMemoryMmap<()>, Queue)> {
        if !self.size.is_power_of_two() || self.size > Self::MAX_SIZE {
            return None;
        }
        let mut bytes = alloc::vec![0u8; usize::try_from(MOCK_WINDOW_BASE).ok()?];
        for (i, entry) in self.table.iter().take(self.size.into()).enumerate() {
            let at = self.desc_table() as usize + 16 * i;
            bytes[at..at + 8].copy_from_slice(&entry.addr.to_le_bytes());
            bytes[at + 8..at + 12].copy_from_slice(&entry.len.to_le_bytes());
            bytes[at + 12..at + 14].copy_from_slice(&entry.flags.to_le_bytes());
            bytes[at + 14..at + 16].copy_from_slice(&entry.next.to_le_bytes());
        }
        let avail = self.avail_ring() as usize;
        bytes[avail + 2..avail + 4].copy_from_slice(&self.avail_idx.to_le_bytes());
        for (i, head) in self.ring.iter().take(self.size.into()).enumerate() {
            let at = avail + 4 + 2 * i;
            bytes[at..at + 2].copy_from_slice(&head.to_le_bytes());
        }
        bytes.extend_from_slice(&self.window);
        bytes.truncate(usize::try_from(self.memory_len()).ok()?);

        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes.len())]).ok()?;
        memory.write_slice(&bytes, GuestAddress(0)).ok()?;
        Some((memory, self.queue(self.next_avail)?))
    }

    /// A ready queue of this image's layout whose device state is at `next_avail`.
    pub fn queue(&self, next_avail: u16) -> Option<Queue> {
        let mut queue = Queue::new(self.size).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table()))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring()))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring()))
            .ok()?;
        queue.set_ready(true);
        queue.set_next_avail(next_avail);
        Some(queue)
    }

    /// The encoded image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(self.size.trailing_zeros() as u8);
        out.push(self.limit);
        out.extend_from_slice(&self.next_avail.to_le_bytes());
        out.extend_from_slice(&self.avail_idx.to_le_bytes());
        out.extend_from_slice(&self.mapped.to_le_bytes());
        for i in 0..self.size {
            let head = self.ring.get(usize::from(i)).copied().unwrap_or(0);
            out.extend_from_slice(&head.to_le_bytes());
        }
        for i in 0..self.size {
            let entry = self.table.get(usize::from(i)).copied().unwrap_or_default();
            out.extend_from_slice(&entry.addr.to_le_bytes());
            out.extend_from_slice(&entry.len.to_le_bytes());
            out.extend_from_slice(&entry.flags.to_le_bytes());
            out.extend_from_slice(&entry.next.to_le_bytes());
        }
        out.extend_from_slice(&self.window);
        out
    }

    /// Parses an image. Every byte string is one; missing bytes read as zero.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut at = 0usize;
        let mut take = |n: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            for (i, byte) in out.iter_mut().take(n).enumerate() {
                *byte = data.get(at + i).copied().unwrap_or(0);
            }
            at += n;
            out
        };
        let u16_at = |b: [u8; 8]| u16::from_le_bytes([b[0], b[1]]);
        let header = take(Self::HEADER_LEN);
        let size = 1u16 << (header[0] % 9);
        let mut image = Self::new(size);
        image.limit = header[1];
        image.next_avail = u16::from_le_bytes([header[2], header[3]]);
        image.avail_idx = u16::from_le_bytes([header[4], header[5]]);
        image.mapped = u16::from_le_bytes([header[6], header[7]]);
        for head in &mut image.ring {
            *head = u16_at(take(2));
        }
        for entry in &mut image.table {
            let first = take(8);
            let second = take(8);
            *entry = TableEntry {
                addr: u64::from_le_bytes(first),
                len: u32::from_le_bytes([second[0], second[1], second[2], second[3]]),
                flags: u16::from_le_bytes([second[4], second[5]]),
                next: u16::from_le_bytes([second[6], second[7]]),
            };
        }
        let start = Self::HEADER_LEN + usize::from(size) * 18;
        let window = data.get(start..).unwrap_or(&[]);
        image.window = window[..window.len().min(Self::MAX_WINDOW_LEN)].to_vec();
        image
    }

    /// The table indices the chain at `head` visits while it stays well formed, at most
    /// `steps` of them: it stops after a descriptor that ends the chain, is indirect, or links
    /// outside the table or back into the chain.
    fn walk(&self, head: u16, steps: usize) -> Vec<u16> {
        let mut indices = Vec::new();
        let mut index = head;
        while indices.len() < steps && index < self.size && !indices.contains(&index) {
            indices.push(index);
            let entry = self.entry(index);
            if entry.indirect() || !entry.links_on() {
                break;
            }
            index = entry.next;
        }
        indices
    }

    /// Checks a chain [`pop_checked`] returned for available position `position` against
    /// the image: the head from the ring, then the table walked from it, every descriptor in
    /// the table, none indirect, none twice, `NEXT` on all but the last, at most `limit`.
    pub fn check_chain(&self, position: u16, chain: &CheckedChain, limit: usize) {
        let head = self.ring_entry(position);
        assert_eq!(chain.head(), head);
        assert!(head < self.size);
        let descriptors = chain.descriptors();
        assert!(!descriptors.is_empty() && descriptors.len() <= limit);
        let indices = self.walk(head, limit);
        assert_eq!(indices.len(), descriptors.len());
        for (i, (&index, descriptor)) in indices.iter().zip(descriptors).enumerate() {
            let entry = self.entry(index);
            assert!(self.readable(self.descriptor_addr(index), 16));
            assert_eq!(entry.descriptor(), *descriptor);
            assert!(!entry.indirect());
            assert_eq!(entry.links_on(), i + 1 < descriptors.len());
        }
    }

    /// Checks that `fault`, returned by [`pop_checked`] at available position `position`
    /// with `limit`, is true of the image.
    pub fn check_fault(&self, position: u16, fault: &RingFault, limit: usize) {
        let ahead = self.avail_idx.wrapping_sub(position);
        let chain = |head: u16| {
            assert_eq!(head, self.ring_entry(position));
            self.walk(head, limit)
        };
        match *fault {
            RingFault::AvailIndexAhead { avail, next, size } => {
                assert_eq!((avail, next, size), (self.avail_idx, position, self.size));
                assert!(ahead > self.size);
            }
            RingFault::HeadOutOfRange { head, size } => {
                assert_eq!((head, size), (self.ring_entry(position), self.size));
                assert!(head >= size);
            }
            RingFault::NextOutOfRange {
                head,
                index,
                next,
                size,
            } => {
                assert!(chain(head).contains(&index));
                let entry = self.entry(index);
                assert!(entry.links_on() && !entry.indirect());
                assert_eq!((entry.next, size), (next, self.size));
                assert!(next >= size);
            }
            RingFault::IndirectDescriptor { head, index } => {
                assert!(chain(head).contains(&index));
                assert!(self.entry(index).indirect());
            }
            RingFault::DescriptorLoop { head, index } => {
                let indices = chain(head);
                let at = indices.iter().position(|&i| i == index);
                let Some(at) = at else {
                    panic!("loop fault at {index}, off the chain {indices:?}");
                };
                assert_eq!(at + 1, indices.len());
                assert!(indices.contains(&self.entry(index).next));
            }
            RingFault::ChainTooLong {
                head,
                limit: reported,
            } => {
                assert_eq!(reported, limit);
                let indices = chain(head);
                assert_eq!(indices.len(), limit);
                if let Some(&last) = indices.last() {
                    let entry = self.entry(last);
                    assert!(entry.links_on() && !entry.indirect());
                    assert!(entry.next < self.size && !indices.contains(&entry.next));
                }
            }
            RingFault::Unreadable { what, addr } => {
                let width = match what {
                    "available index" => {
                        assert_eq!(addr, self.avail_ring() + 2);
                        2
                    }
                    "available ring entry" => {
                        let slot = u64::from(position % self.size);
                        assert_eq!(addr, self.avail_ring() + 4 + 2 * slot);
                        2
                    }
                    "descriptor" => {
                        let offset = addr - self.desc_table();
                        assert_eq!(offset % 16, 0);
                        let index = u16::try_from(offset / 16).unwrap_or(u16::MAX);
                        assert!(chain(self.ring_entry(position)).contains(&index));
                        16
                    }
                    other => panic!("unexpected unreadable {other}"),
                };
                assert!(!self.readable(addr, width), "{fault}");
            }
            ref other => panic!("pop_checked returned {other}"),
        }
    }
}

/// Queue images for the seed corpus of the `ring_queue` fuzz target and the tests: well-formed
/// queues (one holding a real request over its window) and one image for every fault.
pub fn sample_queues() -> Vec<(&'static str, QueueImage)> {
    let readable = |addr: u64, len: u32| ChainDescriptor {
        addr,
        len,
        writable: false,
    };
    let writable = |addr: u64, len: u32| ChainDescriptor {
        addr,
        len,
        writable: true,
    };
    let base = MOCK_WINDOW_BASE;
    let pair = [readable(base, 48), writable(base + 0x100, 64)];
    let four = [
        readable(base, 48),
        readable(base + 0x40, 16),
        writable(base + 0x100, 64),
        writable(base + 0x200, 512),
    ];
    let mut out = Vec::new();

    let mut two_chains = QueueImage::new(8);
    two_chains.push_chain(&[0, 3], &pair);
    two_chains.push_chain(&[5], &pair[1..]);
    out.push(("two_chains", two_chains));

    if let Some((_, get)) = super::sample_requests()
        .into_iter()
        .find(|(n, _)| *n == "get")
    {
        let descriptors: Vec<ChainDescriptor> = get.chain_descriptors().collect();
        let indices = [3, 9, 4, 12, 0, 1, 2, 5];
        let mut request = QueueImage::new(16);
        request.push_chain(&indices[..descriptors.len()], &descriptors);
        request.window = get.image;
        out.push(("request_get", request));
    }

    let mut full = QueueImage::new(4);
    full.next_avail = u16::MAX - 1;
    full.avail_idx = full.next_avail;
    for index in 0..4 {
        full.push_chain(&[index], &pair[..1]);
    }
    out.push(("full_ring_wrapping", full));

    let mut ahead = QueueImage::new(16);
    ahead.push_chain(&[0, 1], &pair);
    ahead.avail_idx = 300;
    out.push(("avail_index_ahead", ahead));

    let mut head = QueueImage::new(8);
    head.push_chain(&[0, 1], &pair);
    head.ring[0] = 8;
    out.push(("head_out_of_range", head));

    let mut next = QueueImage::new(8);
    next.push_chain(&[1, 2], &pair);
    next.table[2].flags |= VIRTQ_DESC_F_NEXT;
    next.table[2].next = 40;
    out.push(("next_out_of_range", next));

    let mut indirect = QueueImage::new(8);
    indirect.push_chain(&[0, 1], &pair);
    indirect.table[1].flags |= VIRTQ_DESC_F_INDIRECT;
    out.push(("indirect", indirect));

    let mut looping = QueueImage::new(8);
    looping.push_chain(&[0, 1, 2], &four[..3]);
    looping.table[2].flags |= VIRTQ_DESC_F_NEXT;
    looping.table[2].next = 1;
    out.push(("descriptor_loop", looping));

    let mut long = QueueImage::new(8);
    long.push_chain(&[7, 6, 5, 4], &four);
    long.limit = 3;
    out.push(("chain_too_long", long));

    let mut unmapped = QueueImage::new(16);
    unmapped.push_chain(&[13, 15], &pair);
    unmapped.mapped = (unmapped.descriptor_addr(15) + 8) as u16;
    out.push(("unreadable_descriptor", unmapped));
    out
}

/// A [`GuestMemory`] that counts accesses (each read or write of guest memory asks for its
/// slices exactly once).
pub struct CountingMemory<'a, M: ?Sized> {
    inner: &'a M,
    accesses: Cell<usize>,
}

impl<'a, M: GuestMemory + ?Sized> CountingMemory<'a, M> {
    /// Counts the accesses to `inner`.
    pub fn new(inner: &'a M) -> Self {
        Self {
            inner,
            accesses: Cell::new(0),
        }
    }

    /// Accesses so far.
    pub fn accesses(&self) -> usize {
        self.accesses.get()
    }
}

impl<M: ?Sized> fmt::Debug for CountingMemory<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingMemory")
            .field("accesses", &self.accesses.get())
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemory + ?Sized> GuestMemory for CountingMemory<'_, M> {
    type PhysicalMemory = M::PhysicalMemory;
    type Bitmap = M::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'b, BS<'b, Self::Bitmap>>> {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.get_slices(addr, count, access)
    }
}

/// The descriptors virtio-queue's own iterator yields for the chain at available position
/// `position`, or `None` if it yields no chain there.
pub fn virtio_queue_chain(
    image: &QueueImage,
    memory: &GuestMemoryMmap<()>,
    position: u16,
) -> Option<Vec<ChainDescriptor>> {
    let mut queue = image.queue(position)?;
    let chain = queue.iter(memory).ok()?.next()?;
    Some(
        chain
            .map(|d| ChainDescriptor {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            })
            .collect(),
    )
}

/// The `ring_queue` fuzz oracle: pops from the image's queue with [`pop_checked`] until it is
/// empty or faults, and checks that
///
/// - nothing panics, and each pop reads at most `limit + 2` times (available index, ring
///   entry, one read per descriptor);
/// - every chain is the image's table walked from the ring's head, within every rule
///   ([`QueueImage::check_chain`]), advances `next_avail` by one, is what virtio-queue's
///   own iterator yields (when its total length fits in 32 bits, as virtio-queue requires),
///   and decodes as the flat decoder decodes it;
/// - every fault is true of the image ([`QueueImage::check_fault`]), leaves `next_avail` where
///   it was, and is reported again, identically, by the next pop;
/// - an empty queue says so through [`pending`] and [`enable_notification_checked`] too.
pub fn fuzz_queue(image: &QueueImage) {
    let Some((memory, mut queue)) = image.build() else {
        return;
    };
    let counted = CountingMemory::new(&memory);
    let limit = usize::from(image.limit);
    let bound = limit.min(MAX_CHAIN_LEN);
    let decoder = image.io_window().map(Decoder::new);
    let window_mapped = image.memory_len() == MOCK_WINDOW_BASE + image.window.len() as u64;
    for _ in 0..=image.size {
        let position = queue.next_avail();
        let before = counted.accesses();
        let popped = pop_checked(&mut queue, &counted, limit);
        let reads = counted.accesses() - before;
        assert!(reads <= bound + 2, "{reads} reads for one pop");
        match popped {
            Ok(Some(chain)) => {
                assert_eq!(queue.next_avail(), position.wrapping_add(1));
                image.check_chain(position, &chain, bound);
                let total: u64 = chain.descriptors().iter().map(|d| u64::from(d.len)).sum();
                if total <= u32::MAX.into() {
                    assert_eq!(
                        virtio_queue_chain(image, &memory, position).as_deref(),
                        Some(chain.descriptors())
                    );
                }
                if let Some(decoder) = decoder {
                    let checked = decoder.decode_checked(&chain, &memory);
                    if window_mapped {
                        let flat = decoder
                            .decode_image(chain.descriptors().iter().copied(), &image.window);
                        assert_eq!(checked, flat);
                    }
                }
            }
            Ok(None) => {
                assert_eq!(queue.next_avail(), position);
                assert_eq!(image.avail_idx, position);
                assert_eq!(pending(&queue, &memory), Ok(0));
                let used = image.used_ring();
                let expected = if image.readable(used, 2) {
                    Ok(false)
                } else {
                    Err(RingFault::Unwritable {
                        what: "used ring flags",
                        addr: used,
                    })
                };
                assert_eq!(enable_notification_checked(&mut queue, &memory), expected);
                return;
            }
            Err(fault) => {
                assert_eq!(queue.next_avail(), position);
                image.check_fault(position, &fault, bound);
                // A fault of the available index is one for every caller; any other leaves
                // chains pending.
                let of_index = matches!(
                    fault,
                    RingFault::AvailIndexAhead { .. }
                        | RingFault::Unreadable {
                            what: "available index",
                            ..
                        }
                );
                if of_index {
                    assert_eq!(pending(&queue, &memory), Err(fault.clone()));
                    assert_eq!(
                        enable_notification_checked(&mut queue, &memory),
                        Err(fault.clone())
                    );
                } else {
                    assert_eq!(
                        pending(&queue, &memory),
                        Ok(image.avail_idx.wrapping_sub(position))
                    );
                    if image.readable(image.used_ring(), 2) {
                        assert_eq!(enable_notification_checked(&mut queue, &memory), Ok(true));
                    }
                }
                let again = pop_checked(&mut queue, &counted, limit);
                assert_eq!(again, Err(fault));
                assert_eq!(queue.next_avail(), position);
                return;
            }
        }
    }
    panic!("more chains popped than a queue of {} holds", image.size);
}
