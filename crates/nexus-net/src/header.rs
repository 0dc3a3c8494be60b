// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The 12-byte `virtio_net_hdr_v1` before every frame, and what the device lets through.
//!
//! On transmit the device reads the guest's header once into its own memory, checks it
//! against the negotiated features ([`check_tx`]) and hands the kernel that copy: a guest
//! rewriting the header in the meantime changes nothing. Only the frame's bytes go from guest
//! memory to the kernel directly.

/// Bytes of the header (`virtio_net_hdr_v1`, with `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `flags`.
pub const FLAGS_OFFSET: usize = 0;
/// Offset of `num_buffers`.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is still to be done and
/// goes at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID` (receive only): the checksum was checked.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;

/// A virtio-net header, decoded (little endian on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHeader {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
    /// `num_buffers`.
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes `bytes`.
    pub fn from_bytes(bytes: &[u8; NET_HDR_LEN]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        NetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Why a transmit header was refused (the frame is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxHeaderError {
    /// Segmentation offload, which the device does not offer.
    #[error("gso_type {0} without a GSO feature")]
    Gso(u8),
    /// `NEEDS_CSUM` without `VIRTIO_NET_F_CSUM` negotiated.
    #[error("NEEDS_CSUM without VIRTIO_NET_F_CSUM")]
    ChecksumNotNegotiated,
    /// Flags a driver must not set on transmit.
    #[error("flags {0:#x} on transmit")]
    Flags(u8),
}

/// Checks a transmit header against the negotiated features (`csum`: `VIRTIO_NET_F_CSUM`);
/// returns the header to hand the kernel (`num_buffers`, unused on transmit, zeroed).
pub fn check_tx(header: NetHeader, csum: bool) -> Result<[u8; NET_HDR_LEN], TxHeaderError> {
    if header.flags & !F_NEEDS_CSUM != 0 {
        return Err(TxHeaderError::Flags(header.flags));
    }
    if header.flags & F_NEEDS_CSUM != 0 && !csum {
        return Err(TxHeaderError::ChecksumNotNegotiated);
    }
    if header.gso_type != GSO_NONE {
        return Err(TxHeaderError::Gso(header.gso_type));
    }
    Ok(NetHeader {
        num_buffers: 0,
        ..header
    }
    .to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_little_endian() {
        let header = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: 0,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 34,
            csum_offset: 6,
            num_buffers: 1,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes, [1, 0, 2, 1, 4, 3, 34, 0, 6, 0, 1, 0]);
        assert_eq!(NetHeader::from_bytes(&bytes), header);
    }

    #[test]
    fn transmit_headers_follow_the_negotiated_features() {
        let plain = NetHeader::default();
        assert_eq!(check_tx(plain, false), Ok([0; NET_HDR_LEN]));
        let partial = NetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            num_buffers: 7,
            ..plain
        };
        assert_eq!(
            check_tx(partial, false),
            Err(TxHeaderError::ChecksumNotNegotiated)
        );
        let passed = NetHeader::from_bytes(&check_tx(partial, true).unwrap());
        assert_eq!(
            passed,
            NetHeader {
                num_buffers: 0,
                ..partial
            }
        );
        let gso = NetHeader {
            gso_type: 1,
            ..plain
        };
        assert_eq!(check_tx(gso, true), Err(TxHeaderError::Gso(1)));
        let valid = NetHeader {
            flags: F_DATA_VALID,
            ..plain
        };
        assert_eq!(check_tx(valid, true), Err(TxHeaderError::Flags(2)));
    }
}
