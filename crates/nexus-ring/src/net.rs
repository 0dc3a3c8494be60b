// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The contract of the Nexus virtio-net device, the in-guest networking baseline's: identity,
//! place, feature bits, queues, the configuration space with its WAIT register, and the
//! `virtio_net_hdr_v1` before every frame. `docs/nexus-net.md` is the prose.
//!
//! The device in the VMM (`nexus-net`) and the guest driver (`nexus-guest`, feature `net`)
//! both take these from here. The registers around the configuration space are
//! virtio-mmio's ([`crate::mmio`]).

/// The virtio device ID of a network device.
pub const DEVICE_ID: u32 = 1;
/// The vendor ID, "NXUS": a driver that sees it knows the WAIT register exists.
pub use crate::device::VENDOR_ID;
/// The device's slot in the VM's MMIO hole: the second (nexus-io has the first,
/// [`device::MMIO_SLOT`](crate::device::MMIO_SLOT)).
pub const MMIO_SLOT: u64 = 1;

/// Queue 0: receive.
pub const RX_QUEUE: u16 = 0;
/// Queue 1: transmit.
pub const TX_QUEUE: u16 = 1;
/// Largest queue, in entries (`QueueNumMax` of both queues).
pub const QUEUE_SIZE_MAX: u16 = 256;

/// `VIRTIO_F_VERSION_1` (bit 32): required.
pub use crate::mmio::VIRTIO_F_VERSION_1;
/// `VIRTIO_NET_F_CSUM` (bit 0): the driver may send frames with a partial checksum.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_GUEST_CSUM` (bit 1): the driver takes frames with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// `VIRTIO_NET_F_MTU` (bit 3): the configuration space holds the MTU.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC` (bit 5): the configuration space holds the MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS` (bit 16): the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// The features the device offers: nothing else (no segmentation offload, no mergeable
/// buffers, no control queue, no multiqueue, no `EVENT_IDX`, no indirect descriptors).
pub const DEVICE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS;

/// The MTU (`mtu` in the configuration space).
pub const MTU: u16 = 1500;
/// Length of an Ethernet header (frames carry no FCS).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// `status` bit 0: the link is up (always).
pub const LINK_UP: u16 = 1;

/// Offsets in the configuration space (register offset
/// [`regs::CONFIG`](crate::mmio::regs::CONFIG) plus these), little endian. A driver reads
/// them with aligned 32-bit accesses of the words that hold them.
pub mod config {
    /// `mac` (6 bytes).
    pub const MAC: u32 = 0x00;
    /// `status` (u16): [`LINK_UP`](super::LINK_UP).
    pub const STATUS: u32 = 0x06;
    /// `max_virtqueue_pairs` (u16): 1.
    pub const MAX_VIRTQUEUE_PAIRS: u32 = 0x08;
    /// `mtu` (u16): [`MTU`](super::MTU).
    pub const MTU: u32 = 0x0A;
    /// `WAIT` (u32, read only): the Nexus extension (see [`wait_value`](super::wait_value)).
    pub const WAIT: u32 = 0x40;
    /// Size of the configuration space.
    pub const SIZE: u32 = 0x44;
}

/// What a WAIT read returns when the device is not live or needs a reset.
pub const WAIT_NOT_LIVE: u32 = 0xFFFF_FFFF;

/// The WAIT value for these used indices: `rx_used | tx_used << 16`.
///
/// Both indices at `0xFFFF` give [`WAIT_NOT_LIVE`]'s value; a driver that reads it while it
/// knows the device live tells the two apart by `Status` (`DEVICE_NEEDS_RESET`).
pub const fn wait_value(rx_used: u16, tx_used: u16) -> u32 {
    (rx_used as u32) | (tx_used as u32).wrapping_shl(16)
}

/// Offset, from the start of the receive queue's used ring, of the driver's **WAIT timeout
/// hint**: the `u16` slot after the ring's elements (`avail_event`, unused since
/// `VIRTIO_F_EVENT_IDX` is not negotiated), little endian. Before a WAIT read the driver may
/// write there how long, in milliseconds, its stack can sleep before a timer is due
/// (`1..=0xFFFF`); the read then blocks at most that long, and never longer than the device's
/// own timeout. `0` (what a driver that knows nothing of it leaves) means no hint: the
/// device's timeout alone. The slot is a convention between this driver and this device, like
/// the `used_event` slot the WAIT register reads.
pub const fn wait_hint_offset(queue_size: u16) -> u64 {
    // At most 4 + 8 × 65,535: no overflow in a u64.
    (queue_size as u64).wrapping_mul(8).wrapping_add(4)
}

/// The wait a WAIT read allows, in milliseconds, for a driver's `hint` (see
/// [`wait_hint_offset`]) and the device's own timeout: the shorter of the two, and the
/// device's timeout when there is no hint (`0`).
pub const fn wait_allowed_ms(hint: u16, device_timeout_ms: u64) -> u64 {
    if hint == 0 || hint as u64 > device_timeout_ms {
        device_timeout_ms
    } else {
        hint as u64
    }
}

/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`), before every frame both ways.
pub const HEADER_LEN: usize = 12;
/// Offset of the header's `flags`.
pub const HDR_FLAGS_OFFSET: usize = 0;
/// Offset of the header's `num_buffers`.
pub const HDR_NUM_BUFFERS_OFFSET: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is still to be done and
/// goes at `csum_start + csum_offset`.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID` (receive only): the checksums were checked.
pub const HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const HDR_GSO_NONE: u8 = 0;

/// `virtio_net_hdr_v1`, decoded (little endian on the wire).
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
    /// Buffers of the packet (receive: 1; transmit: 0).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes `bytes`.
    pub fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Self {
        let [flags, gso_type, h0, h1, s0, s1, c0, c1, o0, o1, n0, n1] = *bytes;
        NetHeader {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([h0, h1]),
            gso_size: u16::from_le_bytes([s0, s1]),
            csum_start: u16::from_le_bytes([c0, c1]),
            csum_offset: u16::from_le_bytes([o0, o1]),
            num_buffers: u16::from_le_bytes([n0, n1]),
        }
    }

    /// Decodes the first [`HEADER_LEN`] bytes of `bytes`; `None` if it is shorter.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        bytes.first_chunk().map(Self::from_bytes)
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [h0, h1] = self.hdr_len.to_le_bytes();
        let [s0, s1] = self.gso_size.to_le_bytes();
        let [c0, c1] = self.csum_start.to_le_bytes();
        let [o0, o1] = self.csum_offset.to_le_bytes();
        let [n0, n1] = self.num_buffers.to_le_bytes();
        [
            self.flags,
            self.gso_type,
            h0,
            h1,
            s0,
            s1,
            c0,
            c1,
            o0,
            o1,
            n0,
            n1,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{BLOCK_SIZE, regs};

    #[test]
    fn the_header_round_trips_little_endian() {
        let header = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: HDR_GSO_NONE,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 1,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes, [1, 0, 2, 1, 4, 3, 34, 0, 16, 0, 1, 0]);
        assert_eq!(bytes[HDR_FLAGS_OFFSET], header.flags);
        assert_eq!(bytes[HDR_NUM_BUFFERS_OFFSET], 1);
        assert_eq!(NetHeader::from_bytes(&bytes), header);
        assert_eq!(
            NetHeader::parse(&[bytes.as_slice(), &[9]].concat()),
            Some(header)
        );
        assert_eq!(NetHeader::parse(&bytes[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn the_wait_value_packs_both_used_indices() {
        assert_eq!(wait_value(0, 0), 0);
        assert_eq!(wait_value(0x1234, 0xABCD), 0xABCD_1234);
        assert_eq!(wait_value(1, 0), 1);
        assert_eq!(wait_value(0, 1), 0x1_0000);
        // The one collision the contract has: see `wait_value`'s docs.
        assert_eq!(wait_value(0xFFFF, 0xFFFF), WAIT_NOT_LIVE);
        // The hint sits after a used ring's flags, idx and elements.
        assert_eq!(wait_hint_offset(256), 4 + 8 * 256);
        assert_eq!(wait_allowed_ms(0, 10_000), 10_000);
        assert_eq!(wait_allowed_ms(25, 10_000), 25);
        assert_eq!(wait_allowed_ms(0xFFFF, 10_000), 10_000);
        assert_eq!(wait_allowed_ms(0xFFFF, 100_000), 0xFFFF);
    }

    #[test]
    fn the_contract_s_values() {
        assert_eq!(
            DEVICE_FEATURES,
            (1 << 32) | (1 << 16) | (1 << 5) | (1 << 3) | 0b11
        );
        assert_eq!(ETHERNET_HEADER_LEN + usize::from(MTU), 1514);
        assert!(QUEUE_SIZE_MAX.is_power_of_two());
        assert_eq!(config::WAIT + 4, config::SIZE);
        const { assert!(config::MTU + 2 <= config::WAIT) };
        const { assert!(regs::CONFIG + config::SIZE <= BLOCK_SIZE) };
        assert_ne!(MMIO_SLOT, crate::device::MMIO_SLOT);
    }
}
