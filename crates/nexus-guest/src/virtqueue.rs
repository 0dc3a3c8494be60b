//! The split virtqueue (virtio 1.x §2.7), driver side, with its rings in the I/O window.
//!
//! Layout from the start of the window (each area 64-byte aligned; [`RING_AREA`] bytes are
//! reserved whatever the queue size, so the buffer area starts at the same offset always):
//!
//! ```text
//! desc   16 × size   { addr: u64, len: u32, flags: u16, next: u16 }
//! avail   6 + 2 × size   { flags: u16, idx: u16, ring: [u16; size], used_event: u16 }
//! used    6 + 8 × size   { flags: u16, idx: u16, ring: [{ id: u32, len: u32 }; size], avail_event: u16 }
//! ```
//!
//! The driver's own state — the free-descriptor list, the chain of every request, the shadow
//! `avail.idx`, the used index consumed so far — lives in guest RAM: the backend can write the
//! window, so nothing read back from it is trusted beyond the used ring's `(id, len)` pairs,
//! which are checked against what is in flight.
//!
//! `used_event` (the `u16` after the avail ring) always holds the used index up to which
//! completions have been consumed: the device's WAIT register compares it with `used.idx`
//! (`docs/nexus-io.md`). `avail.flags` stays 0: `VIRTQ_AVAIL_F_NO_INTERRUPT` would allow the
//! backend not to signal its call eventfd, which is what wakes a WAIT read.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use nexus_ring::ChainDescriptor;

use crate::window::WindowMapping;

/// Largest queue the driver sets up (the device's limit too).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Bytes reserved at the start of the window for the rings of a queue of up to
/// [`MAX_QUEUE_SIZE`] entries.
pub const RING_AREA: usize = 0x2000;

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_USED_F_NO_NOTIFY`: in the used ring's flags, the device needs no doorbell.
pub const USED_F_NO_NOTIFY: u16 = 1;

const DESC_SIZE: usize = 16;
const USED_ELEM_SIZE: usize = 8;

const fn align64(value: usize) -> usize {
    (value + 63) & !63
}

/// Where the three areas of a queue of `size` entries lie, as window offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: usize,
    /// Driver area (avail ring).
    pub avail: usize,
    /// Device area (used ring).
    pub used: usize,
    /// One past the end of the used ring.
    pub end: usize,
}

impl RingLayout {
    /// The layout of a queue of `size` entries at the start of the window.
    pub const fn new(size: u16) -> Self {
        let n = size as usize;
        let desc = 0;
        let avail = align64(desc + DESC_SIZE * n);
        let used = align64(avail + 6 + 2 * n);
        let end = used + 6 + USED_ELEM_SIZE * n;
        Self {
            size,
            desc,
            avail,
            used,
            end,
        }
    }

    /// Offset of `used_event`, at the end of the avail ring.
    pub const fn used_event(&self) -> usize {
        self.avail + 4 + 2 * self.size as usize
    }
}

const _: () = assert!(RingLayout::new(MAX_QUEUE_SIZE).end <= RING_AREA);

/// A request's descriptors, from the head's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The descriptor is not the head of a chain in flight.
    Idle,
    /// A chain of `chain_len` descriptors, submitted as request `seq`.
    Pending { chain_len: u16, seq: u64 },
    /// The device returned it with `used_len`; not yet claimed.
    Done {
        chain_len: u16,
        seq: u64,
        used_len: u32,
    },
}

/// Why the queue refused a chain or gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Not enough free descriptors.
    Full {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// An empty chain.
    Empty,
    /// The device moved `used.idx` by more than the queue size.
    UsedIndexJump,
}

/// What [`SplitQueue::reap`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Used entries consumed.
    pub completed: u16,
    /// Of those, entries naming no chain in flight (ignored).
    pub spurious: u16,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    layout: RingLayout,
    /// `next[i]`: the descriptor after `i`, in its chain or in the free list.
    next: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// By head descriptor.
    slots: Vec<Slot>,
    /// Our `avail.idx`.
    avail_idx: u16,
    /// The used index up to which completions have been consumed (= `used_event`).
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two, at most [`MAX_QUEUE_SIZE`]); zeroes its
    /// rings in `window`.
    pub fn new(window: &WindowMapping, size: u16) -> Self {
        assert!(size.is_power_of_two() && size <= MAX_QUEUE_SIZE);
        let layout = RingLayout::new(size);
        window.zero(0, layout.end);
        Self {
            layout,
            next: (1..=size).collect(),
            free_head: 0,
            num_free: size,
            slots: vec![Slot::Idle; size.into()],
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The ring layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.num_free.into()
    }

    /// Chains in flight or completed but not yet claimed.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| **s != Slot::Idle).count()
    }

    /// The used index consumed so far (what `used_event` holds after a [`reap`](Self::reap)).
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Writes `used_event`: the used index the device's WAIT must see passed before it
    /// returns (`nexus_ring::device::wait`). [`reap`](Self::reap) sets it to the index
    /// consumed (wake at the next completion); `last_used() + n − 1` waits for `n` more.
    pub fn set_used_event(&self, window: &WindowMapping, used_event: u16) {
        window.store_u16(self.layout.used_event(), used_event, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Writes the chain into the descriptor table and makes it available; returns its head.
    /// The caller then notifies the device.
    pub fn add(
        &mut self,
        window: &WindowMapping,
        chain: &[ChainDescriptor],
        seq: u64,
    ) -> Result<u16, QueueError> {
        if chain.is_empty() {
            return Err(QueueError::Empty);
        }
        if chain.len() > self.num_free() {
            return Err(QueueError::Full {
                needed: chain.len(),
                free: self.num_free(),
            });
        }
        let head = self.free_head;
        let mut index = head;
        for (i, descriptor) in chain.iter().enumerate() {
            let last = i + 1 == chain.len();
            let next = self.next[usize::from(index)];
            let mut flags = if descriptor.writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let at = self.layout.desc + DESC_SIZE * usize::from(index);
            window.store_u64(at, descriptor.addr, Ordering::Relaxed);
            window.store_u32(at + 8, descriptor.len, Ordering::Relaxed);
            window.store_u16(at + 12, flags, Ordering::Relaxed);
            window.store_u16(at + 14, if last { 0 } else { next }, Ordering::Relaxed);
            if last {
                self.free_head = next;
            } else {
                index = next;
            }
        }
        // `chain.len() <= num_free <= size <= 256`.
        let chain_len = chain.len() as u16;
        self.num_free -= chain_len;
        self.slots[usize::from(head)] = Slot::Pending { chain_len, seq };
        let slot = self.layout.avail + 4 + 2 * usize::from(self.avail_idx % self.layout.size);
        window.store_u16(slot, head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry are visible before the new index.
        window.store_u16(self.layout.avail + 2, self.avail_idx, Ordering::Release);
        // The doorbell (an MMIO write) must not overtake the index store.
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// Consumes the used ring up to `used.idx`: marks those chains done and stores the new
    /// consumed index in `used_event`.
    pub fn reap(&mut self, window: &WindowMapping) -> Result<Reaped, QueueError> {
        self.reap_each(window, |_, _| {})
    }

    /// [`reap`](Self::reap), calling `completed(head, used_len)` for every chain found done,
    /// in the order the device used them (a network driver delivers frames in that order).
    /// Spurious entries are counted, not reported.
    pub fn reap_each(
        &mut self,
        window: &WindowMapping,
        mut completed: impl FnMut(u16, u32),
    ) -> Result<Reaped, QueueError> {
        let used_idx = window.load_u16(self.layout.used + 2, Ordering::Acquire);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(Reaped::default());
        }
        if pending > self.layout.size {
            return Err(QueueError::UsedIndexJump);
        }
        let mut reaped = Reaped::default();
        while self.last_used != used_idx {
            let at = self.layout.used
                + 4
                + USED_ELEM_SIZE * usize::from(self.last_used % self.layout.size);
            let id = window.load_u32(at, Ordering::Relaxed);
            let used_len = window.load_u32(at + 4, Ordering::Relaxed);
            self.last_used = self.last_used.wrapping_add(1);
            reaped.completed += 1;
            let slot = usize::try_from(id)
                .ok()
                .and_then(|id| self.slots.get_mut(id));
            match slot {
                Some(slot) => match *slot {
                    Slot::Pending { chain_len, seq } => {
                        *slot = Slot::Done {
                            chain_len,
                            seq,
                            used_len,
                        };
                        // `id` indexes `slots`, whose length is the queue size (a u16).
                        completed(id as u16, used_len);
                    }
                    _ => reaped.spurious += 1,
                },
                None => reaped.spurious += 1,
            }
        }
        // Tell the device (WAIT) how far we have consumed.
        window.store_u16(self.layout.used_event(), self.last_used, Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(reaped)
    }

    /// If request `seq` (head `head`) is done, frees its descriptors and returns its used
    /// length.
    pub fn take(&mut self, head: u16, seq: u64) -> Option<u32> {
        match *self.slots.get(usize::from(head))? {
            Slot::Done {
                chain_len,
                seq: done,
                used_len,
            } if done == seq => {
                self.slots[usize::from(head)] = Slot::Idle;
                let mut last = head;
                for _ in 1..chain_len {
                    last = self.next[usize::from(last)];
                }
                self.next[usize::from(last)] = self.free_head;
                self.free_head = head;
                self.num_free += chain_len;
                Some(used_len)
            }
            _ => None,
        }
    }

    /// Whether the device asks not to be notified (`VIRTQ_USED_F_NO_NOTIFY` in the used
    /// ring's flags). Read after making chains available (`add` ends with a full fence), as
    /// the virtio specification requires.
    pub fn notification_suppressed(&self, window: &WindowMapping) -> bool {
        window.load_u16(self.layout.used, Ordering::Acquire) & USED_F_NO_NOTIFY != 0
    }

    /// Whether request `seq` (head `head`) is still in flight (submitted, not yet claimed).
    pub fn is_pending(&self, head: u16, seq: u64) -> bool {
        matches!(
            self.slots.get(usize::from(head)),
            Some(Slot::Pending { seq: s, .. } | Slot::Done { seq: s, .. }) if *s == seq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::tests::HostMemory;

    const BASE: u64 = 0xC000_0000;

    fn window(memory: &HostMemory) -> WindowMapping {
        // SAFETY: `memory` outlives the mapping in every test; nothing else uses it.
        unsafe { WindowMapping::new(memory.ptr(), BASE, memory.size() as u64) }.unwrap()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> ChainDescriptor {
        ChainDescriptor {
            addr,
            len,
            writable,
        }
    }

    /// Reads the raw ring memory, as a device would.
    struct DeviceView<'a> {
        window: &'a WindowMapping,
        layout: RingLayout,
    }

    impl DeviceView<'_> {
        fn avail_idx(&self) -> u16 {
            self.window
                .load_u16(self.layout.avail + 2, Ordering::Acquire)
        }

        fn avail_entry(&self, i: u16) -> u16 {
            self.window.load_u16(
                self.layout.avail + 4 + 2 * usize::from(i % self.layout.size),
                Ordering::Relaxed,
            )
        }

        fn used_event(&self) -> u16 {
            self.window
                .load_u16(self.layout.used_event(), Ordering::Relaxed)
        }

        fn chain(&self, head: u16) -> Vec<(u64, u32, u16)> {
            let mut out = Vec::new();
            let mut i = head;
            loop {
                let at = self.layout.desc + 16 * usize::from(i);
                let lo = self.window.load_u32(at, Ordering::Relaxed) as u64;
                let hi = self.window.load_u32(at + 4, Ordering::Relaxed) as u64;
                let len = self.window.load_u32(at + 8, Ordering::Relaxed);
                let flags = self.window.load_u16(at + 12, Ordering::Relaxed);
                let next = self.window.load_u16(at + 14, Ordering::Relaxed);
                out.push((lo | hi << 32, len, flags));
                if flags & DESC_F_NEXT == 0 {
                    return out;
                }
                i = next;
            }
        }

        fn push_used(&self, used_idx: &mut u16, id: u32, len: u32) {
            let at = self.layout.used + 4 + 8 * usize::from(*used_idx % self.layout.size);
            self.window.store_u32(at, id, Ordering::Relaxed);
            self.window.store_u32(at + 4, len, Ordering::Relaxed);
            *used_idx = used_idx.wrapping_add(1);
            self.window
                .store_u16(self.layout.used + 2, *used_idx, Ordering::Release);
        }
    }

    #[test]
    fn layout_fits_and_is_aligned() {
        for size in [1u16, 2, 16, 64, 128, 256] {
            let l = RingLayout::new(size);
            assert_eq!(l.desc % 16, 0);
            assert_eq!(l.avail % 2, 0);
            assert_eq!(l.used % 4, 0);
            assert!(l.end <= RING_AREA);
            assert_eq!(l.used_event(), l.avail + 4 + 2 * size as usize);
        }
        let l = RingLayout::new(256);
        assert_eq!((l.desc, l.avail, l.used), (0, 4096, 4672));
    }

    #[test]
    fn chains_go_out_and_come_back_in_any_order() {
        let memory = HostMemory::new(RING_AREA);
        let w = window(&memory);
        let mut q = SplitQueue::new(&w, 8);
        let view = DeviceView {
            window: &w,
            layout: q.layout(),
        };
        let a = q
            .add(
                &w,
                &[desc(BASE + 0x100, 48, false), desc(BASE + 0x200, 40, true)],
                1,
            )
            .unwrap();
        let b = q
            .add(
                &w,
                &[
                    desc(BASE + 0x300, 48, false),
                    desc(BASE + 0x400, 5, false),
                    desc(BASE + 0x500, 64, true),
                ],
                2,
            )
            .unwrap();
        assert_eq!(q.num_free(), 3);
        assert_eq!(view.avail_idx(), 2);
        assert_eq!(view.avail_entry(0), a);
        assert_eq!(view.avail_entry(1), b);
        assert_eq!(
            view.chain(a),
            [
                (BASE + 0x100, 48, DESC_F_NEXT),
                (BASE + 0x200, 40, DESC_F_WRITE)
            ]
        );
        assert_eq!(
            view.chain(b),
            [
                (BASE + 0x300, 48, DESC_F_NEXT),
                (BASE + 0x400, 5, DESC_F_NEXT),
                (BASE + 0x500, 64, DESC_F_WRITE)
            ]
        );
        // Too long for what is left.
        assert_eq!(
            q.add(&w, &[desc(BASE, 1, false); 4], 3),
            Err(QueueError::Full { needed: 4, free: 3 })
        );
        assert_eq!(q.add(&w, &[], 3), Err(QueueError::Empty));

        // The device completes b, then a.
        let mut used_idx = 0;
        view.push_used(&mut used_idx, b.into(), 104);
        assert_eq!(q.reap(&w).unwrap().completed, 1);
        assert_eq!(view.used_event(), 1);
        assert_eq!(q.take(a, 1), None);
        assert!(q.is_pending(a, 1));
        assert_eq!(q.take(b, 1), None, "wrong sequence number");
        assert_eq!(q.take(b, 2), Some(104));
        assert_eq!(q.take(b, 2), None, "claimed once");
        assert_eq!(q.num_free(), 6);
        view.push_used(&mut used_idx, a.into(), 40);
        assert_eq!(q.reap(&w).unwrap().completed, 1);
        assert_eq!(view.used_event(), 2);
        assert_eq!(q.take(a, 1), Some(40));
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.in_flight(), 0);
        // Nothing new: nothing reaped, used_event unchanged.
        assert_eq!(q.reap(&w).unwrap(), Reaped::default());
        assert_eq!(view.used_event(), 2);
    }

    #[test]
    fn spurious_and_runaway_used_entries() {
        let memory = HostMemory::new(RING_AREA);
        let w = window(&memory);
        let mut q = SplitQueue::new(&w, 4);
        let view = DeviceView {
            window: &w,
            layout: q.layout(),
        };
        let head = q.add(&w, &[desc(BASE, 48, false)], 7).unwrap();
        let mut used_idx = 0;
        view.push_used(&mut used_idx, 3, 0); // not in flight
        view.push_used(&mut used_idx, 1000, 0); // not a descriptor
        view.push_used(&mut used_idx, head.into(), 0);
        view.push_used(&mut used_idx, head.into(), 0); // twice
        let reaped = q.reap(&w).unwrap();
        assert_eq!(
            reaped,
            Reaped {
                completed: 4,
                spurious: 3
            }
        );
        assert_eq!(q.take(head, 7), Some(0));
        assert_eq!(q.num_free(), 4);
        // used.idx jumps further than the queue could ever hold.
        w.store_u16(
            q.layout().used + 2,
            used_idx.wrapping_add(5),
            Ordering::Release,
        );
        assert_eq!(q.reap(&w), Err(QueueError::UsedIndexJump));
    }

    #[test]
    fn indices_wrap_around() {
        let memory = HostMemory::new(RING_AREA);
        let w = window(&memory);
        let mut q = SplitQueue::new(&w, 4);
        let view = DeviceView {
            window: &w,
            layout: q.layout(),
        };
        let mut used_idx = 0u16;
        for seq in 0..70_000u64 {
            let head = q
                .add(&w, &[desc(BASE, 48, false), desc(BASE + 64, 40, true)], seq)
                .unwrap();
            assert_eq!(view.avail_entry(view.avail_idx().wrapping_sub(1)), head);
            view.push_used(&mut used_idx, head.into(), 40);
            q.reap(&w).unwrap();
            assert_eq!(view.used_event(), used_idx);
            assert_eq!(q.take(head, seq), Some(40));
        }
        assert_eq!(view.avail_idx(), (70_000u32 % 65_536) as u16);
        assert_eq!(q.num_free(), 4);
    }
}
