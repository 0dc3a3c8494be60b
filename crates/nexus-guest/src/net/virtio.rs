// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Nexus virtio-net device's contract, driver side: identification, feature bits, the
//! config space with its WAIT register, and `virtio_net_hdr_v1`.
//!
//! The generic virtio-mmio registers (`MagicValue` … `QueueNotify`, `Status`) are those of
//! [`crate::mmio::regs`]; only what differs from nexus-io is here.

/// `DeviceID` of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// `VendorID` of the Nexus device (`"NXUS"`): the WAIT register exists.
pub const VENDOR_ID_NEXUS: u32 = 0x5355_584E;

/// Queue 0: receive.
pub const RX_QUEUE: u16 = 0;
/// Queue 1: transmit.
pub const TX_QUEUE: u16 = 1;

/// Feature bits of virtio-net that this driver knows.
pub mod features {
    /// `VIRTIO_NET_F_CSUM`: the device completes partial checksums of transmitted packets.
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`: received packets may carry partial or validated checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_MTU`: the config space's `mtu` is valid.
    pub const MTU: u64 = 1 << 3;
    /// `VIRTIO_NET_F_MAC`: the config space's `mac` is valid.
    pub const MAC: u64 = 1 << 5;
    /// `VIRTIO_NET_F_STATUS`: the config space's `status` is valid.
    pub const STATUS: u64 = 1 << 16;
    /// `VIRTIO_F_VERSION_1` (required).
    pub const VERSION_1: u64 = 1 << 32;
    /// Everything the driver accepts when offered.
    pub const ACCEPTED: u64 = CSUM | GUEST_CSUM | MTU | MAC | STATUS | VERSION_1;
}

/// Register offsets of the config space (at `0x100`), read with aligned 32-bit accesses.
pub mod config {
    /// `mac[0..4]`.
    pub const MAC_LOW: u32 = 0x100;
    /// `mac[4..6]` (low half) and `status` (high half).
    pub const MAC_HIGH_STATUS: u32 = 0x104;
    /// `max_virtqueue_pairs` (low half) and `mtu` (high half).
    pub const PAIRS_MTU: u32 = 0x108;
    /// The WAIT register (Nexus extension, config offset 0x40).
    pub const WAIT: u32 = 0x140;
    /// `status` bit 0: the link is up.
    pub const STATUS_LINK_UP: u16 = 1;
}

/// What a WAIT read returns when the device is not live or needs a reset.
pub const WAIT_RESET: u32 = 0xFFFF_FFFF;

/// Size of `virtio_net_hdr_v1`.
pub const HEADER_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: complete the checksum at `csum_start + csum_offset`.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the device validated the checksums.
pub const HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;

/// Ethernet header length.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// The MTU the driver's buffers are sized for by default (and the contract's).
pub const DEFAULT_MTU: u16 = 1500;
/// The largest MTU the driver accepts (jumbo frames).
pub const MAX_MTU: u16 = 9000;

/// `virtio_net_hdr_v1`, little endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` (always none here).
    pub gso_type: u8,
    /// Header length for GSO (0).
    pub hdr_len: u16,
    /// GSO segment size (0).
    pub gso_size: u16,
    /// Where checksumming starts (with `NEEDS_CSUM`).
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes (with `NEEDS_CSUM`).
    pub csum_offset: u16,
    /// Buffers of the packet (RX: 1; TX: 0).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Parses the first [`HEADER_LEN`] bytes; `None` if shorter.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let header = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 1,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes, [1, 0, 2, 1, 4, 3, 34, 0, 16, 0, 1, 0]);
        assert_eq!(NetHeader::parse(&bytes), Some(header));
        assert_eq!(NetHeader::parse(&bytes[..11]), None);
    }
}
