// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Checked popping from a split virtqueue (feature `virtio`).
//!
//! Every field of a split virtqueue that the guest writes is bounded here before the device
//! acts on it: the available index, the head index in each available ring entry, and each
//! descriptor's flags and `next` link. A guest that breaks a rule gets a [`RingFault`] naming
//! what it wrote, and nothing of the queue's state moves, so the same call reports the same
//! fault again at the cost of a few reads. The caller logs the fault once and stops serving
//! the queue until the driver resets the device (see `docs/protocol.md`, "Queue-level
//! checks").
//!
//! The layer sits beside `virtio_queue::Queue`, which keeps the queue's configuration (size,
//! ring addresses, `next_avail`, notification suppression) and fills the used ring. Only
//! popping goes through here:
//!
//! - [`pop_checked`] reads the available index (`Acquire`), checks that it is at most a queue
//!   size ahead of `next_avail`, reads the head from the available ring, walks the
//!   descriptor table itself, and only then advances `next_avail`. It returns the
//!   descriptors it read as a [`CheckedChain`]: the table is read once, so a guest rewriting
//!   it afterwards cannot change what was checked.
//! - [`pending`] tells how many chains are available, or the fault.
//! - [`enable_notification_checked`] re-enables notifications at the end of a drain and says
//!   whether more chains arrived, refusing a broken available index instead of reporting
//!   "more available" for ever.
//! - [`Decoder::decode_checked`] decodes a request from a checked chain.
//!
//! Neither `VIRTIO_F_INDIRECT_DESC` nor `VIRTIO_F_RING_EVENT_IDX` is offered by Nexus
//! devices: an indirect descriptor is a fault, and notification suppression is the
//! `VRING_USED_F_NO_NOTIFY` flag only (with EVENT_IDX negotiated anyway,
//! [`enable_notification_checked`] still works through virtio-queue, but the layer is not
//! tested that way).
//!
//! A drain loop (the backend's is the same over `vring.get_mut().get_queue_mut()` of a
//! `vhost_user_backend::VringRwLock`, locking per pop):
//!
//! ```
//! use nexus_ring::queue::{RingFault, enable_notification_checked, pop_checked};
//! use nexus_ring::MAX_CHAIN_LEN;
//! use virtio_queue::desc::{RawDescriptor, split::Descriptor};
//! use virtio_queue::mock::MockSplitQueue;
//! use virtio_queue::{Queue, QueueT};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)])?;
//! // The driver's side: a queue of 16 with one chain of two descriptors on it.
//! let ring = MockSplitQueue::new(&memory, 16);
//! let mut queue: Queue = ring.create_queue()?;
//! ring.add_desc_chains(
//!     &[
//!         RawDescriptor::from(Descriptor::new(0x8000, 48, 1, 1)), // NEXT
//!         RawDescriptor::from(Descriptor::new(0x9000, 64, 2, 0)), // WRITE
//!     ],
//!     0,
//! )?;
//!
//! // The device's side.
//! let mut served = Vec::new();
//! loop {
//!     queue.disable_notification(&memory)?;
//!     loop {
//!         match pop_checked(&mut queue, &memory, MAX_CHAIN_LEN) {
//!             Ok(Some(chain)) => {
//!                 served.push(chain.descriptors().len());
//!                 queue.add_used(&memory, chain.head(), 0)?;
//!             }
//!             Ok(None) => break,
//!             // Log once and stop serving the queue until the driver resets the device.
//!             Err(fault) => return Err(fault.into()),
//!         }
//!     }
//!     if !enable_notification_checked(&mut queue, &memory)? {
//!         break;
//!     }
//! }
//! assert_eq!(served, [2]);
//!
//! // A driver claiming 300 chains in a queue of 16 is refused, not served for ever.
//! ring.avail().idx().store(u16::to_le(301));
//! let fault = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN).unwrap_err();
//! assert_eq!(fault, RingFault::AvailIndexAhead { avail: 301, next: 1, size: 16 });
//! assert_eq!(
//!     fault.to_string(),
//!     "available index 301 is 300 ahead of 1 in a queue of 16"
//! );
//! # Ok(())
//! # }
//! ```

use core::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::chain::{
    ChainDescriptor, Decoder, MAX_CHAIN_LEN, Rejection, Request, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::error::Error;

/// Size of one descriptor in the table: `addr` (u64), `len` (u32), `flags` (u16), `next`
/// (u16), little-endian.
pub const DESCRIPTOR_SIZE: u64 = 16;
/// Offset of the available index in the available ring (after `flags`).
const AVAIL_IDX_OFFSET: u64 = 2;
/// Offset of the first entry of the available ring (after `flags` and `idx`).
const AVAIL_RING_OFFSET: u64 = 4;
/// Size of one available ring entry.
const AVAIL_ENTRY_SIZE: u64 = 2;

/// A rule of the split virtqueue that the guest broke, or a queue that cannot be used.
///
/// Every variant but [`QueueNotReady`](Self::QueueNotReady) is the driver's doing: the queue
/// stays broken until the driver resets the device. Messages name the values the guest wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingFault {
    /// The available index is more than a queue size ahead of the device's `next_avail`: the
    /// driver claims more chains than the ring holds.
    #[error(
        "available index {avail} is {ahead} ahead of {next} in a queue of {size}",
        ahead = avail.wrapping_sub(*next)
    )]
    AvailIndexAhead {
        /// The available index the driver wrote.
        avail: u16,
        /// The device's next available index.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// An available ring entry names a head descriptor past the end of the table.
    #[error("available ring names head descriptor {head} in a table of {size}")]
    HeadOutOfRange {
        /// The head index the driver wrote.
        head: u16,
        /// The queue size (number of descriptors in the table).
        size: u16,
    },
    /// A descriptor links to a `next` past the end of the table.
    #[error(
        "descriptor {index} of the chain at head {head} links to descriptor {next} in a table \
         of {size}"
    )]
    NextOutOfRange {
        /// Head of the chain.
        head: u16,
        /// The descriptor whose link is wrong.
        index: u16,
        /// The `next` the driver wrote.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor has `VIRTQ_DESC_F_INDIRECT` set; the device does not offer
    /// `VIRTIO_F_INDIRECT_DESC`.
    #[error(
        "descriptor {index} of the chain at head {head} is indirect, which the device does not \
         offer"
    )]
    IndirectDescriptor {
        /// Head of the chain.
        head: u16,
        /// The indirect descriptor.
        index: u16,
    },
    /// The chain goes on past `limit` descriptors.
    #[error("the chain at head {head} has more than {limit} descriptors")]
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// The most descriptors a chain may have.
        limit: usize,
    },
    /// A descriptor's `next` link points back to a descriptor already in the same chain.
    #[error("descriptor {index} of the chain at head {head} links back into its own chain")]
    DescriptorLoop {
        /// Head of the chain.
        head: u16,
        /// The descriptor whose link closes the loop.
        index: u16,
    },
    /// A ring field or descriptor lies where guest memory cannot be read (outside the mapped
    /// memory, or at an address that overflows).
    #[error("the {what} at {addr:#x} cannot be read from guest memory")]
    Unreadable {
        /// What was being read: `"available index"`, `"available ring entry"` or
        /// `"descriptor"`.
        what: &'static str,
        /// Guest-physical address of the read (the ring's base if the address overflows).
        addr: u64,
    },
    /// A ring field the device writes to lies where guest memory cannot be written.
    #[error("the {what} at {addr:#x} cannot be written in guest memory")]
    Unwritable {
        /// What was being written: `"used ring flags"` (or `"used ring avail_event"` with
        /// EVENT_IDX).
        what: &'static str,
        /// Guest-physical address of the write (the ring's base if the address overflows).
        addr: u64,
    },
    /// The queue is not ready (never set up, or reset): there is nothing to pop. Not a guest
    /// fault.
    #[error("the queue is not ready")]
    QueueNotReady,
}

/// A chain popped by [`pop_checked`]: its head index and the descriptors as they were read,
/// each inside the table, none indirect, none twice, at most the limit in number.
///
/// The descriptors live in a fixed array of [`MAX_CHAIN_LEN`]: popping allocates nothing.
/// Return the chain to the used ring with `Queue::add_used(mem, chain.head(), len)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedChain {
    head: u16,
    descriptors: [ChainDescriptor; MAX_CHAIN_LEN],
    len: usize,
}

impl CheckedChain {
    const fn new(head: u16) -> Self {
        Self {
            head,
            descriptors: [ChainDescriptor {
                addr: 0,
                len: 0,
                writable: false,
            }; MAX_CHAIN_LEN],
            len: 0,
        }
    }

    /// The index of the chain's head descriptor, for the used ring.
    pub const fn head(&self) -> u16 {
        self.head
    }

    /// The descriptors in chain order (at least one).
    pub fn descriptors(&self) -> &[ChainDescriptor] {
        self.descriptors.get(..self.len).unwrap_or(&[])
    }
}

/// A descriptor as the table holds it.
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDescriptor {
    fn from_le_bytes(bytes: &[u8; DESCRIPTOR_SIZE as usize]) -> Self {
        let (addr, rest) = bytes.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (len, rest) = rest.split_first_chunk::<4>().unwrap_or((&[0; 4], &[]));
        let (flags, rest) = rest.split_first_chunk::<2>().unwrap_or((&[0; 2], &[]));
        let next = rest.first_chunk::<2>().unwrap_or(&[0; 2]);
        Self {
            addr: u64::from_le_bytes(*addr),
            len: u32::from_le_bytes(*len),
            flags: u16::from_le_bytes(*flags),
            next: u16::from_le_bytes(*next),
        }
    }
}

/// `base + offset`, or [`RingFault::Unreadable`] at `base` if that overflows.
fn address(base: u64, offset: u64, what: &'static str) -> Result<u64, RingFault> {
    base.checked_add(offset)
        .ok_or(RingFault::Unreadable { what, addr: base })
}

/// The queue's size, if it can be popped from at all. Mirrors virtio-queue's own check (an
/// available ring at 0 is a queue that was reset).
fn usable_size(queue: &Queue) -> Result<u16, RingFault> {
    if !queue.ready() || queue.avail_ring() == 0 || queue.size() == 0 {
        return Err(RingFault::QueueNotReady);
    }
    Ok(queue.size())
}

/// Chains available past `next_avail`, checked against the queue size; and the size.
fn available<M: GuestMemory + ?Sized>(queue: &Queue, mem: &M) -> Result<(u16, u16), RingFault> {
    let size = usable_size(queue)?;
    let what = "available index";
    let addr = address(queue.avail_ring(), AVAIL_IDX_OFFSET, what)?;
    let avail = mem
        .load::<u16>(GuestAddress(addr), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(|_| RingFault::Unreadable { what, addr })?;
    let next = queue.next_avail();
    let ahead = avail.wrapping_sub(next);
    if ahead > size {
        return Err(RingFault::AvailIndexAhead { avail, next, size });
    }
    Ok((ahead, size))
}

/// The head index in the available ring entry for position `position`, checked.
fn read_head<M: GuestMemory + ?Sized>(
    queue: &Queue,
    mem: &M,
    position: u16,
    size: u16,
) -> Result<u16, RingFault> {
    let what = "available ring entry";
    let slot = position.checked_rem(size).unwrap_or(0);
    let offset = AVAIL_RING_OFFSET.saturating_add(u64::from(slot).saturating_mul(AVAIL_ENTRY_SIZE));
    let addr = address(queue.avail_ring(), offset, what)?;
    let head = mem
        .load::<u16>(GuestAddress(addr), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(|_| RingFault::Unreadable { what, addr })?;
    if head >= size {
        return Err(RingFault::HeadOutOfRange { head, size });
    }
    Ok(head)
}

/// Descriptor `index` of the table, read once.
fn read_descriptor<M: GuestMemory + ?Sized>(
    queue: &Queue,
    mem: &M,
    index: u16,
) -> Result<RawDescriptor, RingFault> {
    let what = "descriptor";
    let offset = u64::from(index).saturating_mul(DESCRIPTOR_SIZE);
    let addr = address(queue.desc_table(), offset, what)?;
    let mut bytes = [0u8; DESCRIPTOR_SIZE as usize];
    mem.read_slice(&mut bytes, GuestAddress(addr))
        .map_err(|_| RingFault::Unreadable { what, addr })?;
    Ok(RawDescriptor::from_le_bytes(&bytes))
}

/// Walks the chain at `head` (already known to be in the table), reading at most `limit`
/// descriptors.
fn walk<M: GuestMemory + ?Sized>(
    queue: &Queue,
    mem: &M,
    head: u16,
    size: u16,
    limit: usize,
) -> Result<CheckedChain, RingFault> {
    let mut chain = CheckedChain::new(head);
    // The table indices of the chain so far, to refuse a link back into it.
    let mut visited = [0u16; MAX_CHAIN_LEN];
    let mut index = head;
    loop {
        // The chain links on past its last allowed descriptor (`limit` ≤ MAX_CHAIN_LEN, so
        // the slots run out only with it).
        let (true, Some(slot), Some(seen)) = (
            chain.len < limit,
            chain.descriptors.get_mut(chain.len),
            visited.get_mut(chain.len),
        ) else {
            return Err(RingFault::ChainTooLong { head, limit });
        };
        let raw = read_descriptor(queue, mem, index)?;
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(RingFault::IndirectDescriptor { head, index });
        }
        *slot = ChainDescriptor {
            addr: raw.addr,
            len: raw.len,
            writable: raw.flags & VIRTQ_DESC_F_WRITE != 0,
        };
        *seen = index;
        chain.len = chain.len.saturating_add(1);
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        let next = raw.next;
        if next >= size {
            return Err(RingFault::NextOutOfRange {
                head,
                index,
                next,
                size,
            });
        }
        if visited.get(..chain.len).unwrap_or(&[]).contains(&next) {
            return Err(RingFault::DescriptorLoop { head, index });
        }
        index = next;
    }
}

/// Pops the next available chain, checking every ring field the guest wrote.
///
/// Reads the available index (`Acquire`) and refuses one more than the queue size ahead of
/// `next_avail`; reads the head from the available ring and refuses one outside the table;
/// walks the descriptor table from the head, refusing indirect descriptors, links outside the
/// table, links back into the chain and chains of more than `limit` descriptors (`limit` is
/// capped at [`MAX_CHAIN_LEN`]; the walk reads at most `limit` descriptors). Only when all of
/// that holds does `next_avail` advance by one.
///
/// Returns `Ok(None)` when no chain is available. On `Err` nothing has moved: the next call
/// reports the same fault while guest memory stays as it is.
///
/// `mem` is any [`GuestMemory`], for example the backend's window memory
/// (`&*Arc<GuestMemoryMmap>`); `queue` can be the one inside a
/// `vhost_user_backend::VringRwLock` (`vring.get_mut().get_queue_mut()`).
pub fn pop_checked<M: GuestMemory + ?Sized>(
    queue: &mut Queue,
    mem: &M,
    limit: usize,
) -> Result<Option<CheckedChain>, RingFault> {
    let (ahead, size) = available(queue, mem)?;
    if ahead == 0 {
        return Ok(None);
    }
    let next = queue.next_avail();
    let head = read_head(queue, mem, next, size)?;
    let chain = walk(queue, mem, head, size, limit.min(MAX_CHAIN_LEN))?;
    queue.set_next_avail(next.wrapping_add(1));
    Ok(Some(chain))
}

/// How many chains are available past `next_avail` (at most the queue size), or the fault if
/// the available index is more than a queue size ahead.
///
/// Only the available index is checked: a chain counted here may still be refused by
/// [`pop_checked`].
pub fn pending<M: GuestMemory + ?Sized>(queue: &Queue, mem: &M) -> Result<u16, RingFault> {
    available(queue, mem).map(|(ahead, _)| ahead)
}

/// Re-enables notifications from the driver and tells whether chains arrived meanwhile, for
/// the end of a drain loop (`Ok(true)`: drain again).
///
/// This is virtio-queue's `enable_notification` (clear `VRING_USED_F_NO_NOTIFY`, full fence,
/// read the available index) followed by the check of [`pending`]: an available index more
/// than a queue size ahead is [`RingFault::AvailIndexAhead`], never an endless "more
/// available".
pub fn enable_notification_checked<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
) -> Result<bool, RingFault> {
    usable_size(queue)?;
    if queue.enable_notification(mem).is_err() {
        // Either the write of the suppression field or the read of the available index
        // failed; the read tells which.
        available(queue, mem)?;
        return Err(notification_fault(queue));
    }
    Ok(pending(queue, mem)? != 0)
}

/// The fault for a used ring field that `enable_notification` could not write.
fn notification_fault(queue: &Queue) -> RingFault {
    let used = queue.used_ring();
    if queue.event_idx_enabled() {
        // `avail_event` follows the used ring's flags, idx and `size` elements of 8 bytes.
        let offset = u64::from(queue.size()).saturating_mul(8).saturating_add(4);
        RingFault::Unwritable {
            what: "used ring avail_event",
            addr: used.checked_add(offset).unwrap_or(used),
        }
    } else {
        RingFault::Unwritable {
            what: "used ring flags",
            addr: used,
        }
    }
}

impl Decoder {
    /// Decodes a request from a chain popped by [`pop_checked`].
    ///
    /// The descriptors are the ones the pop read and checked; the table is not read again.
    /// Only the request header is read from `mem`, after every descriptor has been checked
    /// against the window, exactly as [`decode`](Self::decode) does.
    pub fn decode_checked<M: GuestMemory + ?Sized>(
        &self,
        chain: &CheckedChain,
        mem: &M,
    ) -> core::result::Result<Request, Rejection> {
        self.decode(chain.descriptors().iter().copied(), |segment, out| {
            mem.read_slice(out, GuestAddress(segment.addr))
                .map_err(|_| Error::GuestMemory { addr: segment.addr })
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec::Vec;

    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::mock::{
        CountingMemory, MOCK_WINDOW_BASE, QueueImage, fuzz_queue, sample_queues, sample_requests,
        virtio_queue_chain,
    };

    fn readable(addr: u64, len: u32) -> ChainDescriptor {
        ChainDescriptor {
            addr,
            len,
            writable: false,
        }
    }

    fn writable(addr: u64, len: u32) -> ChainDescriptor {
        ChainDescriptor {
            addr,
            len,
            writable: true,
        }
    }

    fn pair() -> [ChainDescriptor; 2] {
        [readable(0x1_0000, 48), writable(0x1_0100, 64)]
    }

    fn build(image: &QueueImage) -> (GuestMemoryMmap<()>, Queue) {
        image.build().unwrap()
    }

    /// Pops once, expecting `fault`; checks that nothing moved and that the next pop says the
    /// same, then runs the fuzz oracle over the image.
    fn assert_fault(image: &QueueImage, fault: RingFault) {
        let (memory, mut queue) = build(image);
        let limit = usize::from(image.limit);
        assert_eq!(pop_checked(&mut queue, &memory, limit), Err(fault.clone()));
        assert_eq!(queue.next_avail(), image.next_avail);
        assert_eq!(pop_checked(&mut queue, &memory, limit), Err(fault));
        assert_eq!(queue.next_avail(), image.next_avail);
        fuzz_queue(image);
    }

    #[test]
    fn well_formed_chains_pop_in_order_as_virtio_queue_yields_them() {
        let mut image = QueueImage::new(8);
        let [header, head] = pair();
        let three = [header, head, writable(0x1_1000, 4096)];
        image.push_chain(&[0, 3], &[header, head]);
        image.push_chain(&[5], &[head]);
        image.push_chain(&[7, 1, 2], &three);
        let (memory, mut queue) = build(&image);
        assert_eq!(pending(&queue, &memory), Ok(3));

        let expected: [(u16, &[ChainDescriptor]); 3] =
            [(0, &[header, head]), (5, &[head]), (7, &three)];
        for (position, (head_index, descriptors)) in expected.into_iter().enumerate() {
            let position = position as u16;
            let chain = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
                .unwrap()
                .unwrap();
            assert_eq!(chain.head(), head_index);
            assert_eq!(chain.descriptors(), descriptors);
            assert_eq!(
                virtio_queue_chain(&image, &memory, position).as_deref(),
                Some(descriptors)
            );
            assert_eq!(queue.next_avail(), position + 1);
        }
        assert_eq!(pop_checked(&mut queue, &memory, MAX_CHAIN_LEN), Ok(None));
        assert_eq!(pending(&queue, &memory), Ok(0));
        assert_eq!(queue.next_avail(), 3);
        fuzz_queue(&image);
    }

    #[test]
    fn an_empty_queue_pops_nothing() {
        let image = QueueImage::new(16);
        let (memory, mut queue) = build(&image);
        assert_eq!(pop_checked(&mut queue, &memory, MAX_CHAIN_LEN), Ok(None));
        assert_eq!(pending(&queue, &memory), Ok(0));
        assert_eq!(enable_notification_checked(&mut queue, &memory), Ok(false));
    }

    #[test]
    fn a_full_ring_across_the_index_wrap_is_served() {
        let mut image = QueueImage::new(4);
        image.next_avail = u16::MAX - 1;
        image.avail_idx = image.next_avail;
        for index in [2, 0, 3, 1] {
            image.push_chain(&[index], &pair()[..1]);
        }
        assert_eq!(image.avail_idx, 2);
        let (memory, mut queue) = build(&image);
        assert_eq!(pending(&queue, &memory), Ok(4));
        let heads: Vec<u16> =
            core::iter::from_fn(|| pop_checked(&mut queue, &memory, MAX_CHAIN_LEN).unwrap())
                .map(|chain| chain.head())
                .collect();
        assert_eq!(heads, [2, 0, 3, 1]);
        assert_eq!(queue.next_avail(), 2);
        fuzz_queue(&image);
    }

    #[test]
    fn an_available_index_too_far_ahead_is_a_stable_fault() {
        let mut image = QueueImage::new(16);
        image.push_chain(&[0, 1], &pair());
        image.avail_idx = 300;
        let fault = RingFault::AvailIndexAhead {
            avail: 300,
            next: 0,
            size: 16,
        };
        assert_eq!(
            fault.to_string(),
            "available index 300 is 300 ahead of 0 in a queue of 16"
        );
        assert_fault(&image, fault.clone());

        // The drain loop's other calls say the same, instead of "more available" for ever.
        let (memory, mut queue) = build(&image);
        assert_eq!(pending(&queue, &memory), Err(fault.clone()));
        assert_eq!(
            enable_notification_checked(&mut queue, &memory),
            Err(fault.clone())
        );
        // Each refusal costs one read of guest memory, however often it is repeated.
        let counted = CountingMemory::new(&memory);
        for _ in 0..100 {
            assert_eq!(
                pop_checked(&mut queue, &counted, MAX_CHAIN_LEN),
                Err(fault.clone())
            );
        }
        assert_eq!(counted.accesses(), 100);
        assert_eq!(queue.next_avail(), 0);

        // Behind next_avail is as far ahead as it gets, wrapping.
        image.avail_idx = u16::MAX;
        assert_fault(
            &image,
            RingFault::AvailIndexAhead {
                avail: u16::MAX,
                next: 0,
                size: 16,
            },
        );
        // Exactly a queue size ahead is a full ring, not a fault.
        image.avail_idx = 16;
        let (memory, queue) = build(&image);
        assert_eq!(pending(&queue, &memory), Ok(16));
    }

    #[test]
    fn a_head_outside_the_table_is_refused() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[0, 1], &pair());
        image.ring[0] = 8;
        let fault = RingFault::HeadOutOfRange { head: 8, size: 8 };
        assert_eq!(
            fault.to_string(),
            "available ring names head descriptor 8 in a table of 8"
        );
        assert_fault(&image, fault);
        image.ring[0] = u16::MAX;
        assert_fault(
            &image,
            RingFault::HeadOutOfRange {
                head: u16::MAX,
                size: 8,
            },
        );
    }

    #[test]
    fn a_link_outside_the_table_is_refused() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[1, 2], &pair());
        image.table[2].flags |= VIRTQ_DESC_F_NEXT;
        image.table[2].next = 40;
        let fault = RingFault::NextOutOfRange {
            head: 1,
            index: 2,
            next: 40,
            size: 8,
        };
        assert_eq!(
            fault.to_string(),
            "descriptor 2 of the chain at head 1 links to descriptor 40 in a table of 8"
        );
        assert_fault(&image, fault);
    }

    #[test]
    fn indirect_descriptors_are_refused_anywhere_in_the_chain() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[4, 6], &pair());
        image.table[6].flags |= VIRTQ_DESC_F_INDIRECT;
        let fault = RingFault::IndirectDescriptor { head: 4, index: 6 };
        assert_eq!(
            fault.to_string(),
            "descriptor 6 of the chain at head 4 is indirect, which the device does not offer"
        );
        assert_fault(&image, fault);
        image.table[6].flags &= !VIRTQ_DESC_F_INDIRECT;
        image.table[4].flags |= VIRTQ_DESC_F_INDIRECT;
        assert_fault(&image, RingFault::IndirectDescriptor { head: 4, index: 4 });
    }

    #[test]
    fn a_chain_that_links_back_into_itself_is_refused() {
        let [header, head] = pair();
        let mut image = QueueImage::new(8);
        image.push_chain(&[0, 1, 2], &[header, head, head]);
        image.table[2].flags |= VIRTQ_DESC_F_NEXT;
        image.table[2].next = 1;
        let fault = RingFault::DescriptorLoop { head: 0, index: 2 };
        assert_eq!(
            fault.to_string(),
            "descriptor 2 of the chain at head 0 links back into its own chain"
        );
        assert_fault(&image, fault);
        // A descriptor linking to itself.
        image.table[0].next = 0;
        assert_fault(&image, RingFault::DescriptorLoop { head: 0, index: 0 });
    }

    #[test]
    fn chains_longer_than_the_limit_are_refused_after_limit_reads() {
        let mut image = QueueImage::new(64);
        let indices: Vec<u16> = (0..=MAX_CHAIN_LEN as u16).rev().collect();
        let descriptors: Vec<ChainDescriptor> = indices
            .iter()
            .map(|&i| readable(0x1_0000 + 64 * u64::from(i), 64))
            .collect();
        image.push_chain(&indices, &descriptors);
        let head = MAX_CHAIN_LEN as u16;
        // Over the protocol's own maximum: refused whatever limit is asked for.
        for limit in [MAX_CHAIN_LEN, MAX_CHAIN_LEN + 1, usize::MAX] {
            image.limit = limit.min(255) as u8;
            let (memory, mut queue) = build(&image);
            let counted = CountingMemory::new(&memory);
            assert_eq!(
                pop_checked(&mut queue, &counted, limit),
                Err(RingFault::ChainTooLong {
                    head,
                    limit: MAX_CHAIN_LEN
                })
            );
            assert_eq!(counted.accesses(), MAX_CHAIN_LEN + 2);
        }
        image.limit = 3;
        let fault = RingFault::ChainTooLong { head, limit: 3 };
        assert_eq!(
            fault.to_string(),
            "the chain at head 36 has more than 3 descriptors"
        );
        assert_fault(&image, fault);

        // A chain of exactly the limit is served.
        let mut exact = QueueImage::new(64);
        exact.push_chain(&indices[1..], &descriptors[1..]);
        let (memory, mut queue) = build(&exact);
        let chain = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(chain.descriptors(), &descriptors[1..]);
        exact.limit = 0;
        assert_fault(&exact, RingFault::ChainTooLong { head: 35, limit: 0 });
    }

    #[test]
    fn rings_and_tables_outside_guest_memory_are_refused() {
        let mut image = QueueImage::new(16);
        image.push_chain(&[13, 15], &pair());
        // The end of the table is cut off.
        image.mapped = (image.descriptor_addr(15) + 8) as u16;
        let addr = image.descriptor_addr(15);
        let fault = RingFault::Unreadable {
            what: "descriptor",
            addr,
        };
        assert_eq!(
            fault.to_string(),
            std::format!("the descriptor at {addr:#x} cannot be read from guest memory")
        );
        assert_fault(&image, fault);
        // Then the used ring: popping works, re-enabling notifications cannot.
        image.mapped = image.used_ring() as u16;
        let (memory, mut queue) = build(&image);
        assert!(matches!(
            pop_checked(&mut queue, &memory, MAX_CHAIN_LEN),
            Err(RingFault::Unreadable {
                what: "descriptor",
                ..
            })
        ));
        assert_eq!(
            enable_notification_checked(&mut queue, &memory),
            Err(RingFault::Unwritable {
                what: "used ring flags",
                addr: image.used_ring()
            })
        );
        // Then the ring entries, then the available index.
        image.mapped = (image.avail_ring() + 4) as u16;
        assert_fault(
            &image,
            RingFault::Unreadable {
                what: "available ring entry",
                addr: image.avail_ring() + 4,
            },
        );
        image.mapped = (image.avail_ring() + 3) as u16;
        assert_fault(
            &image,
            RingFault::Unreadable {
                what: "available index",
                addr: image.avail_ring() + 2,
            },
        );
    }

    #[test]
    fn a_descriptor_table_at_the_top_of_the_address_space_is_unreadable() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[3], &pair()[..1]);
        let (memory, mut queue) = build(&image);
        let top: u64 = !0xf;
        queue.try_set_desc_table_address(GuestAddress(top)).unwrap();
        assert_eq!(
            pop_checked(&mut queue, &memory, MAX_CHAIN_LEN),
            Err(RingFault::Unreadable {
                what: "descriptor",
                addr: top
            })
        );
    }

    #[test]
    fn a_queue_not_ready_pops_nothing() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[3], &pair()[..1]);
        let (memory, mut queue) = build(&image);
        queue.set_ready(false);
        assert_eq!(
            pop_checked(&mut queue, &memory, MAX_CHAIN_LEN),
            Err(RingFault::QueueNotReady)
        );
        assert_eq!(pending(&queue, &memory), Err(RingFault::QueueNotReady));
        assert_eq!(
            enable_notification_checked(&mut queue, &memory),
            Err(RingFault::QueueNotReady)
        );
    }

    #[test]
    fn enabling_notifications_reports_chains_that_arrived() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[3], &pair()[..1]);
        let (memory, mut queue) = build(&image);
        queue.disable_notification(&memory).unwrap();
        let flags: u16 = memory.read_obj(GuestAddress(image.used_ring())).unwrap();
        assert_ne!(flags, 0);
        assert_eq!(enable_notification_checked(&mut queue, &memory), Ok(true));
        let flags: u16 = memory.read_obj(GuestAddress(image.used_ring())).unwrap();
        assert_eq!(flags, 0);
        assert!(
            pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
                .unwrap()
                .is_some()
        );
        assert_eq!(enable_notification_checked(&mut queue, &memory), Ok(false));
    }

    #[test]
    fn the_chain_is_what_was_checked_even_if_the_guest_rewrites_the_table() {
        let mut image = QueueImage::new(8);
        image.push_chain(&[0, 1], &pair());
        let (memory, mut queue) = build(&image);
        let chain = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
            .unwrap()
            .unwrap();
        // The guest now turns descriptor 1 into an indirect one pointing elsewhere.
        let at = image.descriptor_addr(1);
        memory.write_obj(0xdead_0000u64, GuestAddress(at)).unwrap();
        memory
            .write_obj(VIRTQ_DESC_F_INDIRECT, GuestAddress(at + 12))
            .unwrap();
        assert_eq!(chain.descriptors(), &pair());
    }

    #[test]
    fn checked_and_virtio_queue_decoding_agree_on_samples() {
        for (name, sample) in sample_requests() {
            let mut image = QueueImage::new(64);
            let descriptors: Vec<ChainDescriptor> = sample.chain_descriptors().collect();
            let indices: Vec<u16> = (0..descriptors.len() as u16).map(|i| 63 - 2 * i).collect();
            image.push_chain(&indices, &descriptors);
            image.window = sample.image.clone();
            let (memory, mut queue) = build(&image);
            let chain = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
                .unwrap()
                .unwrap();
            let decoder = Decoder::new(image.io_window().unwrap());
            let checked = decoder.decode_checked(&chain, &memory).unwrap();
            assert_eq!(Some(Ok(checked)), sample.decode_virtio(), "{name}");
            fuzz_queue(&image);
        }
    }

    #[test]
    fn decode_checked_refuses_a_header_outside_guest_memory() {
        let (_, sample) = sample_requests().swap_remove(3); // get
        let mut image = QueueImage::new(8);
        let descriptors: Vec<ChainDescriptor> = sample.chain_descriptors().collect();
        let indices: Vec<u16> = (0..descriptors.len() as u16).collect();
        image.push_chain(&indices, &descriptors);
        image.window = sample.image.clone();
        image.mapped = u16::MAX; // the rings, not the window
        let (memory, mut queue) = build(&image);
        let chain = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN)
            .unwrap()
            .unwrap();
        let decoder = Decoder::new(image.io_window().unwrap());
        let rejection = decoder.decode_checked(&chain, &memory).unwrap_err();
        assert_eq!(
            rejection.error,
            Error::GuestMemory {
                addr: MOCK_WINDOW_BASE
            }
        );
    }

    #[test]
    fn every_sample_queue_passes_the_oracle() {
        let samples = sample_queues();
        assert!(samples.len() >= 10);
        for (name, image) in samples {
            assert_eq!(QueueImage::from_bytes(&image.to_bytes()), image, "{name}");
            fuzz_queue(&image);
        }
    }
}
