// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The nexus-io device contract: identity, feature bits, queues, the configuration space and
//! the values of its WAIT register (`docs/nexus-io.md`).
//!
//! The guest driver (`nexus-guest`), the device model in the VMM (`nexus-io`) and the shared
//! backend (`nexus-backend`) all take these from here, so the three cannot drift apart.

/// The device ID, "NX" (not assigned by the virtio specification).
pub const DEVICE_ID: u32 = 0x4E58;
/// The vendor ID, "NXUS".
pub const VENDOR_ID: u32 = 0x5355_584E;

/// `VIRTIO_F_VERSION_1` (bit 32): required.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit 0: the WAIT register exists (always offered).
pub const NEXUS_F_WAIT: u64 = 1 << 0;
/// Feature bit 1: the backend accepts write-behind `PUT`s.
pub const NEXUS_F_WRITE_BEHIND: u64 = 1 << 1;
/// The features the device offers a driver.
pub const DEVICE_FEATURES: u64 = VIRTIO_F_VERSION_1 | NEXUS_F_WAIT | NEXUS_F_WRITE_BEHIND;

/// Number of queues: queue 0, the request queue.
pub const NUM_QUEUES: u32 = 1;
/// Largest request queue, in entries.
pub const QUEUE_SIZE_MAX: u16 = 256;

/// Offsets in the configuration space (register offset `0x100` plus these), little endian.
pub mod config {
    /// `window_base` (u64): guest-physical base of the I/O window.
    pub const WINDOW_BASE: u32 = 0x00;
    /// `window_size` (u64).
    pub const WINDOW_SIZE: u32 = 0x08;
    /// `max_payload` (u32): largest payload of one request.
    pub const MAX_PAYLOAD: u32 = 0x10;
    /// `num_queues` (u32).
    pub const NUM_QUEUES: u32 = 0x14;
    /// `queue_size_max` (u32).
    pub const QUEUE_SIZE_MAX: u32 = 0x18;
    /// `backend_state` (u32): 1 while the device is connected to the backend.
    pub const BACKEND_STATE: u32 = 0x1C;
    /// `WAIT` (u32, read): see [`wait`](super::wait).
    pub const WAIT: u32 = 0x20;
    /// Size of the configuration space.
    pub const SIZE: u32 = 0x24;
}

/// What a read of the WAIT register returns besides the used ring's `idx` (a `u16`).
pub mod wait {
    /// The device has no backend connection: every request in flight is lost; reset the
    /// device and set it up again.
    pub const BACKEND_UNAVAILABLE: u32 = 0xFFFF_FFFF;
    /// The backend stopped serving the request queue because the driver broke a ring rule
    /// (the device's status has `DEVICE_NEEDS_RESET`): every request in flight is lost;
    /// reset the device and set it up again.
    pub const NEEDS_RESET: u32 = 0xFFFF_FFFE;
}
