// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests of the checked virtqueue layer (`nexus_ring::queue`):
//!
//! - arbitrary ring and table bytes never panic, every pop reads guest memory at most
//!   `limit + 2` times, chains are the table walked from the ring within every rule, and
//!   every fault is true of the image and stable (the `fuzz_queue` oracle);
//! - queues with mostly plausible, sometimes broken, fields (the same oracle, where the faults
//!   are);
//! - well-formed chains come out in ring order, exactly as virtio-queue's own iterator yields
//!   them.

use nexus_ring::mock::{QueueImage, TableEntry, fuzz_queue, virtio_queue_chain};
use nexus_ring::queue::{pending, pop_checked};
use nexus_ring::{
    ChainDescriptor, MAX_CHAIN_LEN, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use proptest::prelude::*;
use virtio_queue::QueueT;

/// An index into a table of `size`: mostly inside, sometimes anywhere.
fn index(size: u16) -> impl Strategy<Value = u16> {
    prop_oneof![9 => 0..size, 1 => any::<u16>()]
}

/// A table entry: flags mostly among NEXT, WRITE and INDIRECT, links mostly in the table.
fn entry(size: u16) -> impl Strategy<Value = TableEntry> {
    let flags = prop_oneof![
        8 => prop::sample::select(vec![
            0,
            VIRTQ_DESC_F_NEXT,
            VIRTQ_DESC_F_WRITE,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
        ]),
        1 => Just(VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT),
        1 => any::<u16>(),
    ];
    (any::<u64>(), any::<u32>(), flags, index(size)).prop_map(|(addr, len, flags, next)| {
        TableEntry {
            addr,
            len,
            flags,
            next,
        }
    })
}

/// A queue of up to 32 entries whose fields are mostly plausible.
fn queue_image() -> impl Strategy<Value = QueueImage> {
    (0u32..=5)
        .prop_flat_map(|log2| {
            let size = 1u16 << log2;
            (
                Just(size),
                prop_oneof![3 => 0u8..=40, 1 => Just(MAX_CHAIN_LEN as u8)],
                any::<u16>(),
                prop_oneof![9 => 0..=size, 1 => any::<u16>()],
                prop_oneof![4 => Just(0u16), 1 => 0u16..=0x1000],
                prop::collection::vec(index(size), usize::from(size)),
                prop::collection::vec(entry(size), usize::from(size)),
            )
        })
        .prop_map(|(size, limit, next_avail, ahead, mapped, ring, table)| {
            let mut image = QueueImage::new(size);
            image.limit = limit;
            image.next_avail = next_avail;
            image.avail_idx = next_avail.wrapping_add(ahead);
            image.mapped = mapped;
            image.ring = ring;
            image.table = table;
            image
        })
}

/// Well-formed chains: a queue, and the chains laid over a shuffled table (each index used
/// once), as `(indices, descriptors)`.
fn well_formed() -> impl Strategy<Value = (QueueImage, Vec<Vec<u16>>, Vec<ChainDescriptor>)> {
    (1u32..=6)
        .prop_flat_map(|log2| {
            let size = 1u16 << log2;
            let descriptor =
                (any::<u64>(), 0u32..1 << 20, any::<bool>()).prop_map(|(addr, len, writable)| {
                    ChainDescriptor {
                        addr,
                        len,
                        writable,
                    }
                });
            (
                Just(size),
                any::<u16>(),
                Just((0..size).collect::<Vec<u16>>()).prop_shuffle(),
                prop::collection::vec(1..=MAX_CHAIN_LEN, 1..=usize::from(size)),
                prop::collection::vec(descriptor, usize::from(size)),
            )
        })
        .prop_map(|(size, start, shuffled, lengths, descriptors)| {
            let mut image = QueueImage::new(size);
            image.next_avail = start;
            image.avail_idx = start;
            let mut chains = Vec::new();
            let mut rest = &shuffled[..];
            for len in lengths {
                if rest.is_empty() {
                    break;
                }
                let (chain, tail) = rest.split_at(len.min(rest.len()));
                chains.push(chain.to_vec());
                rest = tail;
            }
            (image, chains, descriptors)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_queue_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        fuzz_queue(&QueueImage::from_bytes(&bytes));
    }

    #[test]
    fn plausible_queues_keep_every_rule(image in queue_image()) {
        fuzz_queue(&image);
    }

    #[test]
    fn well_formed_chains_are_what_virtio_queue_yields(
        (mut image, chains, descriptors) in well_formed()
    ) {
        for chain in &chains {
            let of_chain: Vec<ChainDescriptor> =
                chain.iter().map(|&i| descriptors[usize::from(i)]).collect();
            image.push_chain(chain, &of_chain);
        }
        let (memory, mut queue) = image.build().unwrap();
        prop_assert_eq!(usize::from(pending(&queue, &memory).unwrap()), chains.len());
        for chain in &chains {
            let position = queue.next_avail();
            let popped = pop_checked(&mut queue, &memory, MAX_CHAIN_LEN).unwrap().unwrap();
            prop_assert_eq!(popped.head(), chain[0]);
            let expected: Vec<ChainDescriptor> =
                chain.iter().map(|&i| descriptors[usize::from(i)]).collect();
            prop_assert_eq!(popped.descriptors(), &expected[..]);
            let theirs = virtio_queue_chain(&image, &memory, position);
            prop_assert_eq!(theirs.as_deref(), Some(popped.descriptors()));
        }
        prop_assert_eq!(pop_checked(&mut queue, &memory, MAX_CHAIN_LEN), Ok(None));
        prop_assert_eq!(queue.next_avail(), image.avail_idx);
        fuzz_queue(&image);
    }
}
