// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VM generation record: who a restored net VM is now.
//!
//! VMs restored from one snapshot share its memory: the guest's random generator (TCP
//! initial sequence numbers, ephemeral ports), its address, its TCP state. Before a restored
//! VM's vCPU first runs, the node writes a record into guest memory that the guest reads at
//! every turn of its server loop (no device, no exit); when the generation changed, the guest
//! reseeds its stack, takes the address and gateway of the record, and drops its pooled
//! store connections (see the net functions' contract, section 3).
//!
//! **Interim layout.** `nexus-kvm` is to own the record's layout and writer (a function on
//! the micro-guest layout, beside the boot-info block it extends); until it does, [`write`]
//! is the one place that knows where the record is and how it looks — swap its body for the
//! `nexus-kvm` function when it lands. Here the record sits in the boot-info page right after
//! the 128-byte block, at guest-physical `BOOT_INFO_ADDR + 0x80`, and the block's `reserved`
//! u32 (offset 116) holds that offset (`0x80`). Little endian:
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | u32 | magic `b"NXGN"` |
//! | 4 | u32 | version 1 |
//! | 8 | u64 | `generation`: 0 at boot, a new non-zero value at every restore |
//! | 16 | u64 | `seed`: fresh random bytes of the VMM |
//! | 24 | u32 | `ipv4`: the guest's address (`u32::from(Ipv4Addr)`), 0 = keep the boot arguments' |
//! | 28 | u32 | `gateway`, same encoding |
//! | 32 | u8 | `prefix` length |
//! | 33 | 7 bytes | zero |
//! | 40 | u64 | `unix_time_ms`: the host's wall clock at the restore |
//!
//! `unix_time_ms` is beyond the contract's fields: a restored guest's TSC resumes where the
//! snapshot left it, so without it the guest's clock (and the date it signs S3 requests
//! with) lags by the snapshot's age, and S3 refuses requests more than 15 minutes off.

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use nexus_kvm::GuestMemoryMmap;
use nexus_kvm::layout::BOOT_INFO_ADDR;
use vm_memory::{Bytes, GuestAddress};

/// The record's offset from the boot-info block.
pub const RECORD_OFFSET: u64 = 0x80;
/// Where the boot-info block keeps [`RECORD_OFFSET`] (its `reserved` u32).
const BOOT_INFO_RESERVED: u64 = 116;
/// `b"NXGN"`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"NXGN");
/// The record's version.
pub const VERSION: u32 = 1;
/// The record's size in bytes.
pub const RECORD_SIZE: usize = 48;

/// What a restored VM is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// A new value at every restore (never 0, the boot's).
    pub generation: u64,
    /// Fresh entropy for the guest's generator.
    pub seed: u64,
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// The host's wall clock, milliseconds since the Unix epoch.
    pub unix_time_ms: u64,
}

impl Generation {
    /// A new generation for a VM at `address/prefix` behind `gateway`: random generation
    /// and seed, the clock now.
    pub fn fresh(address: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> std::io::Result<Self> {
        let mut random = [0u8; 16];
        rustix::rand::getrandom(&mut random[..], rustix::rand::GetRandomFlags::empty())?;
        let (generation, seed) = random.split_at(8);
        let generation = u64::from_le_bytes(generation.try_into().expect("8 bytes")).max(1);
        Ok(Generation {
            generation,
            seed: u64::from_le_bytes(seed.try_into().expect("8 bytes")),
            address,
            prefix,
            gateway,
            unix_time_ms: unix_time_ms(),
        })
    }

    /// The record's bytes.
    pub fn to_bytes(self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.seed.to_le_bytes());
        b[24..28].copy_from_slice(&u32::from(self.address).to_le_bytes());
        b[28..32].copy_from_slice(&u32::from(self.gateway).to_le_bytes());
        b[32] = self.prefix;
        b[40..48].copy_from_slice(&self.unix_time_ms.to_le_bytes());
        b
    }
}

/// The host's wall clock in milliseconds since the Unix epoch.
pub fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes `generation` into a restored micro-guest's memory (its vCPU not yet running).
pub fn write(
    memory: &GuestMemoryMmap,
    generation: &Generation,
) -> vm_memory::GuestMemoryResult<()> {
    memory.write_slice(
        &generation.to_bytes(),
        GuestAddress(BOOT_INFO_ADDR + RECORD_OFFSET),
    )?;
    memory.write_obj(
        RECORD_OFFSET as u32,
        GuestAddress(BOOT_INFO_ADDR + BOOT_INFO_RESERVED),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lands_after_the_boot_info_block_and_is_found_from_it() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory");
        let generation = Generation {
            generation: 0x1122_3344_5566_7788,
            seed: 42,
            address: Ipv4Addr::new(10, 200, 1, 7),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            unix_time_ms: 1_700_000_000_123,
        };
        write(&memory, &generation).unwrap();
        let offset: u32 = memory.read_obj(GuestAddress(BOOT_INFO_ADDR + 116)).unwrap();
        assert_eq!(u64::from(offset), RECORD_OFFSET);
        let mut record = [0u8; RECORD_SIZE];
        memory
            .read_slice(
                &mut record,
                GuestAddress(BOOT_INFO_ADDR + u64::from(offset)),
            )
            .unwrap();
        assert_eq!(&record[0..4], b"NXGN");
        assert_eq!(u32::from_le_bytes(record[4..8].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(record[8..16].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
        assert_eq!(
            u32::from_le_bytes(record[24..28].try_into().unwrap()),
            0x0ac8_0107
        );
        assert_eq!(
            u32::from_le_bytes(record[28..32].try_into().unwrap()),
            0x0ac8_0001
        );
        assert_eq!(record[32], 16);
        assert_eq!(
            u64::from_le_bytes(record[40..48].try_into().unwrap()),
            1_700_000_000_123
        );
        // The record ends before the memory map (boot-info page + 0x100).
        assert!(RECORD_OFFSET + RECORD_SIZE as u64 <= 0x100);
    }

    #[test]
    fn fresh_generations_differ_and_are_never_the_boots() {
        let a =
            Generation::fresh(Ipv4Addr::new(10, 0, 0, 5), 16, Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        let b =
            Generation::fresh(Ipv4Addr::new(10, 0, 0, 5), 16, Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert_ne!(a.generation, 0);
        assert_ne!((a.generation, a.seed), (b.generation, b.seed));
        assert!(a.unix_time_ms > 1_600_000_000_000);
    }
}
