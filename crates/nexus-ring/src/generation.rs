// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VM generation record: who a VM restored from a snapshot is now.
//!
//! VMs restored from one snapshot share its memory: the guest's random generator (TCP
//! initial sequence numbers, ephemeral ports), its address, its open connections. The VMM
//! tells a restored guest that it is a new VM through this record in guest memory, written
//! after the restore and before the vCPU runs — no device and no exit: the guest reads
//! memory, as with a VM generation ID. A boot writes generation 0; every restore writes a new,
//! different generation, fresh random bytes in `seed`, and optionally a new IPv4 address and
//! gateway. A guest that sees the generation change reseeds its generators, re-addresses its
//! interface and drops the connections that belonged to the snapshotted VM.
//!
//! Where the record is belongs to the micro-guest ABI (`docs/micro-guest-abi.md`: the
//! boot-info block's `generation_offset` at offset 116); this module is its layout, used by
//! the VMM (`nexus_kvm::micro::write_generation`) and the guest (`nexus-guest`).
//!
//! [`RECORD_SIZE`] (48) bytes, little endian:
//!
//! | offset | type | field | meaning |
//! |---|---|---|---|
//! | 0 | u64 | `magic` | [`MAGIC`]: the bytes `b"NEXUSGEN"` |
//! | 8 | u32 | `version` | [`VERSION`] (1) |
//! | 12 | u32 | `size` | [`RECORD_SIZE`] |
//! | 16 | u64 | `generation` | 0 at boot; a new, different value at every restore |
//! | 24 | u64 | `seed` | fresh random bytes of the VMM at every restore (0 at boot) |
//! | 32 | u32 | `ipv4` | the guest's new address as a number (`10.0.0.2` is `0x0A00_0002`); 0: keep the boot arguments' |
//! | 36 | u32 | `gateway` | the new default gateway, likewise; 0: keep the boot arguments' |
//! | 40 | u8 | `prefix` | the new address's prefix length (1–32); ignored when `ipv4` is 0 |
//! | 41 | 7 bytes | reserved | 0 |

use core::net::Ipv4Addr;

/// The record's magic: `b"NEXUSGEN"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NEXUSGEN");
/// The record's format version.
pub const VERSION: u32 = 1;
/// Size of the record in bytes.
pub const RECORD_SIZE: usize = 48;
/// Offset of `generation` in the record: a guest may read this `u64` alone, at every turn of
/// its loop, and the whole record only when it changed.
pub const GENERATION_OFFSET: usize = 16;

/// A VM generation, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generation {
    /// 0 at boot; different after every restore.
    pub generation: u64,
    /// Random bytes of the VMM, fresh at every restore, for the guest to mix into its
    /// generators.
    pub seed: u64,
    /// The guest's new address and prefix length; `None` (`ipv4` 0): keep the boot
    /// arguments' address.
    pub address: Option<(Ipv4Addr, u8)>,
    /// The new default gateway; `None` (0): keep the boot arguments' gateway.
    pub gateway: Option<Ipv4Addr>,
}

/// Why [`Generation::decode`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GenerationError {
    /// Fewer than [`RECORD_SIZE`] bytes.
    #[error("the generation record ends early: {0} bytes, {RECORD_SIZE} needed")]
    Truncated(usize),
    /// The magic is not [`MAGIC`] (no record was written there).
    #[error("the generation record's magic is {0:#018x}, not NEXUSGEN")]
    BadMagic(u64),
    /// A version this crate does not know.
    #[error("the generation record's version {0} is not supported")]
    UnsupportedVersion(u32),
    /// The `size` field is not [`RECORD_SIZE`].
    #[error("the generation record says it is {0} bytes, not {RECORD_SIZE}")]
    BadSize(u32),
    /// An address with a prefix length outside 1–32.
    #[error("the generation record's prefix length {0} is not within 1-32")]
    BadPrefix(u8),
}

/// Takes the next `N` bytes of `rest`.
fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    match rest.split_first_chunk::<N>() {
        Some((head, tail)) => {
            *rest = tail;
            *head
        }
        // `decode` checked the length first; an empty read is never reached.
        None => [0; N],
    }
}

/// Writes `bytes` at the start of `rest` and moves past them.
fn put<const N: usize>(rest: &mut &mut [u8], bytes: [u8; N]) {
    if let Some((head, tail)) = core::mem::take(rest).split_first_chunk_mut::<N>() {
        *head = bytes;
        *rest = tail;
    }
}

/// An address as the record holds it (0 for none).
fn address_bits(address: Option<Ipv4Addr>) -> u32 {
    address.map_or(0, u32::from)
}

impl Generation {
    /// The record a boot writes: generation 0, no seed, the boot arguments' address.
    pub const BOOT: Generation = Generation {
        generation: 0,
        seed: 0,
        address: None,
        gateway: None,
    };

    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        let mut rest: &mut [u8] = &mut out;
        put(&mut rest, MAGIC.to_le_bytes());
        put(&mut rest, VERSION.to_le_bytes());
        // RECORD_SIZE is 48: it fits a u32.
        put(&mut rest, (RECORD_SIZE as u32).to_le_bytes());
        put(&mut rest, self.generation.to_le_bytes());
        put(&mut rest, self.seed.to_le_bytes());
        put(
            &mut rest,
            address_bits(self.address.map(|(a, _)| a)).to_le_bytes(),
        );
        put(&mut rest, address_bits(self.gateway).to_le_bytes());
        put(&mut rest, [self.address.map_or(0, |(_, prefix)| prefix)]);
        out
    }

    /// Decodes a record (its first [`RECORD_SIZE`] bytes; more are ignored).
    pub fn decode(bytes: &[u8]) -> Result<Self, GenerationError> {
        if bytes.len() < RECORD_SIZE {
            return Err(GenerationError::Truncated(bytes.len()));
        }
        let mut rest = bytes;
        let magic = u64::from_le_bytes(take(&mut rest));
        if magic != MAGIC {
            return Err(GenerationError::BadMagic(magic));
        }
        let version = u32::from_le_bytes(take(&mut rest));
        if version != VERSION {
            return Err(GenerationError::UnsupportedVersion(version));
        }
        let size = u32::from_le_bytes(take(&mut rest));
        if usize::try_from(size).ok() != Some(RECORD_SIZE) {
            return Err(GenerationError::BadSize(size));
        }
        let generation = u64::from_le_bytes(take(&mut rest));
        let seed = u64::from_le_bytes(take(&mut rest));
        let ipv4 = u32::from_le_bytes(take(&mut rest));
        let gateway = u32::from_le_bytes(take(&mut rest));
        let [prefix] = take::<1>(&mut rest);
        let address = match ipv4 {
            0 => None,
            _ if prefix == 0 || prefix > 32 => return Err(GenerationError::BadPrefix(prefix)),
            bits => Some((Ipv4Addr::from(bits), prefix)),
        };
        Ok(Generation {
            generation,
            seed,
            address,
            gateway: (gateway != 0).then(|| Ipv4Addr::from(gateway)),
        })
    }

    /// The `generation` field of an encoded record, without checking the rest (a guest's
    /// cheap check at every turn of its loop); `None` if `bytes` is too short.
    pub fn peek_generation(bytes: &[u8]) -> Option<u64> {
        let field = bytes.get(GENERATION_OFFSET..)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_at_the_documented_offsets() {
        let record = Generation {
            generation: 0x0102_0304_0506_0708,
            seed: 0x1122_3344_5566_7788,
            address: Some((Ipv4Addr::new(10, 200, 0, 5), 16)),
            gateway: Some(Ipv4Addr::new(10, 200, 0, 1)),
        };
        let bytes = record.encode();
        assert_eq!(&bytes[0..8], b"NEXUSGEN");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 48u32.to_le_bytes());
        assert_eq!(bytes[16..24], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[24..32], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bytes[32..36], 0x0AC8_0005u32.to_le_bytes());
        assert_eq!(bytes[36..40], 0x0AC8_0001u32.to_le_bytes());
        assert_eq!(bytes[40], 16);
        assert!(bytes[41..].iter().all(|&b| b == 0));
        assert_eq!(Generation::decode(&bytes), Ok(record));
        assert_eq!(Generation::peek_generation(&bytes), Some(record.generation));

        let boot = Generation::BOOT.encode();
        assert_eq!(Generation::decode(&boot), Ok(Generation::BOOT));
        // Longer input: the tail is not the record's.
        let mut longer = boot.to_vec();
        longer.extend_from_slice(&[0xFF; 8]);
        assert_eq!(Generation::decode(&longer), Ok(Generation::BOOT));
    }

    #[test]
    fn bad_records_are_refused_naming_the_field() {
        let good = Generation {
            generation: 3,
            seed: 9,
            address: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
            gateway: None,
        }
        .encode();
        assert_eq!(
            Generation::decode(&good[..47]),
            Err(GenerationError::Truncated(47))
        );
        assert_eq!(Generation::peek_generation(&good[..23]), None);
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            Generation::decode(&bad),
            Err(GenerationError::BadMagic(_))
        ));
        let mut bad = good;
        bad[8] = 2;
        assert_eq!(
            Generation::decode(&bad),
            Err(GenerationError::UnsupportedVersion(2))
        );
        let mut bad = good;
        bad[12] = 40;
        assert_eq!(Generation::decode(&bad), Err(GenerationError::BadSize(40)));
        for prefix in [0u8, 33] {
            let mut bad = good;
            bad[40] = prefix;
            assert_eq!(
                Generation::decode(&bad),
                Err(GenerationError::BadPrefix(prefix))
            );
        }
        // Without an address, the prefix is not looked at.
        let mut no_address = good;
        no_address[32..36].fill(0);
        no_address[40] = 0;
        assert_eq!(Generation::decode(&no_address).unwrap().address, None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_to_a_record_that_round_trips_or_are_refused(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            patch in proptest::bool::ANY,
        ) {
            let mut bytes = bytes;
            if patch && bytes.len() >= 16 {
                // Often a valid header, so that the fields behind it are exercised.
                bytes[..16].copy_from_slice(&Generation::BOOT.encode()[..16]);
            }
            if let Ok(record) = Generation::decode(&bytes) {
                proptest::prop_assert_eq!(Generation::decode(&record.encode()), Ok(record));
                proptest::prop_assert_eq!(
                    Generation::peek_generation(&bytes),
                    Some(record.generation)
                );
            }
        }
    }
}
