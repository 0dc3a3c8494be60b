// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The 12-byte `virtio_net_hdr_v1` before every frame (its layout is the contract's,
//! `nexus_ring::net`, re-exported here), and what the device lets through.
//!
//! On transmit the device reads the guest's header once into its own memory, checks it
//! against the negotiated features ([`check_tx`]) and hands the kernel that copy: a guest
//! rewriting the header in the meantime changes nothing. Only the frame's bytes go from guest
//! memory to the kernel directly.

pub use nexus_ring::net::{
    HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_FLAGS_OFFSET, HDR_GSO_NONE, HDR_NUM_BUFFERS_OFFSET,
    HEADER_LEN, NetHeader,
};

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
pub fn check_tx(header: NetHeader, csum: bool) -> Result<[u8; HEADER_LEN], TxHeaderError> {
    if header.flags & !HDR_F_NEEDS_CSUM != 0 {
        return Err(TxHeaderError::Flags(header.flags));
    }
    if header.flags & HDR_F_NEEDS_CSUM != 0 && !csum {
        return Err(TxHeaderError::ChecksumNotNegotiated);
    }
    if header.gso_type != HDR_GSO_NONE {
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
    fn transmit_headers_follow_the_negotiated_features() {
        let plain = NetHeader::default();
        assert_eq!(check_tx(plain, false), Ok([0; HEADER_LEN]));
        let partial = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
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
            flags: HDR_F_DATA_VALID,
            ..plain
        };
        assert_eq!(check_tx(valid, true), Err(TxHeaderError::Flags(2)));
    }
}
