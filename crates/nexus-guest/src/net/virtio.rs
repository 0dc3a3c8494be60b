// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What this driver chooses within the Nexus virtio-net device's contract.
//!
//! The contract itself — device and vendor IDs, feature bits, queues, the config space with
//! its WAIT register, `virtio_net_hdr_v1` — is `nexus_ring::net` (`docs/nexus-net.md`), shared
//! with the device (`nexus-net`); the register map is `nexus_ring::mmio`.

use nexus_ring::net::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};

/// Everything the driver accepts when offered (`VIRTIO_F_VERSION_1` is required).
pub const ACCEPTED_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS
    | VIRTIO_F_VERSION_1;

/// The largest MTU the driver accepts (jumbo frames); without `VIRTIO_NET_F_MTU` it uses the
/// contract's (`nexus_ring::net::MTU`).
pub const MAX_MTU: u16 = 9000;
