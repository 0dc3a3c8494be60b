// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VM generation record: how a guest learns that it was restored from a snapshot.
//!
//! VMs restored from one snapshot share its memory — random generators, address, open
//! connections. After every restore, before the vCPU runs, the VMM writes a new generation
//! into a record in the boot-info page (`docs/micro-guest-abi.md`, layout in
//! [`nexus_ring::generation`]): a generation number different from the snapshot's, fresh
//! random bytes, and optionally a new address and gateway. The guest reads it — a memory
//! read, no exit — wherever it loops; when the number changed, it is a new VM. The network
//! stack does so at every poll ([`NetStack::watch_generation`](crate::net::NetStack), feature
//! `net`).
//!
//! [`GenerationSource`] is what a reader needs; [`BootGeneration`] reads the record of a
//! micro-guest's boot-info page.

pub use nexus_ring::generation::{Generation, GenerationError, RECORD_SIZE};

use crate::boot::BootInfo;

/// Where the current VM generation is read from.
pub trait GenerationSource {
    /// The record as it is now, or `None` if there is no valid one.
    fn read(&self) -> Option<Generation>;
}

/// The record in a micro-guest's boot-info page, read with volatile loads (the VMM rewrites
/// it while the vCPU is stopped: to the program it changes between two instructions).
#[derive(Debug, Clone, Copy)]
pub struct BootGeneration {
    addr: usize,
}

impl BootGeneration {
    /// The record `boot` names, if it names one ([`BootInfo::generation_record`]).
    ///
    /// # Safety
    ///
    /// `boot` must be the block the VMM handed this micro-guest (at its identity-mapped
    /// address), so that its record lies in readable guest RAM for the program's life.
    pub unsafe fn from_boot_info(boot: &BootInfo) -> Option<Self> {
        let addr = usize::try_from(boot.generation_record()?).ok()?;
        Some(Self { addr })
    }
}

impl GenerationSource for BootGeneration {
    fn read(&self) -> Option<Generation> {
        let mut bytes = [0u8; RECORD_SIZE];
        let base = core::ptr::with_exposed_provenance::<u8>(self.addr);
        for (index, byte) in bytes.iter_mut().enumerate() {
            // SAFETY: `from_boot_info`'s caller guaranteed the record readable: `addr` is
            // the boot-info page's record (checked to lie within that page), identity mapped
            // RAM for the program's life; `index < RECORD_SIZE`.
            *byte = unsafe { core::ptr::read_volatile(base.add(index)) };
        }
        Generation::decode(&bytes).ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::Cell;

    /// A record the test rewrites, as the VMM would after a restore (the `net` feature's
    /// tests use it).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    #[derive(Debug, Clone, Default)]
    pub(crate) struct FakeGeneration(pub Rc<Cell<Option<Generation>>>);

    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    impl FakeGeneration {
        pub(crate) fn new(record: Generation) -> Self {
            Self(Rc::new(Cell::new(Some(record))))
        }

        pub(crate) fn set(&self, record: Generation) {
            self.0.set(Some(record));
        }
    }

    impl GenerationSource for FakeGeneration {
        fn read(&self) -> Option<Generation> {
            self.0.get()
        }
    }

    #[test]
    fn the_boot_record_is_read_from_memory_as_the_vmm_left_it() {
        let mut page = alloc::vec![0u8; 8192];
        let start = page.as_ptr().addr();
        let record_at = start.next_multiple_of(4096) + 0x80;
        let record = Generation {
            generation: 5,
            seed: 77,
            address: Some((core::net::Ipv4Addr::new(10, 1, 2, 3), 8)),
            gateway: None,
        };
        let offset = record_at - start;
        let source = |page: &[u8]| BootGeneration {
            addr: page.as_ptr().expose_provenance() + offset,
        };
        page[offset..offset + RECORD_SIZE].copy_from_slice(&record.encode());
        assert_eq!(source(&page).read(), Some(record));
        // The VMM rewrites it: the next read sees the new one.
        let next = Generation {
            generation: 6,
            ..record
        };
        page[offset..offset + RECORD_SIZE].copy_from_slice(&next.encode());
        assert_eq!(source(&page).read(), Some(next));
        page[offset] = 0;
        assert_eq!(source(&page).read(), None, "no valid record");
    }
}
