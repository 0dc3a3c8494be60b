// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The nexus-io device contract: identity, place, feature bits, queues, the configuration
//! space and the values of its WAIT register. `docs/nexus-io.md` ("The device") is the prose.
//!
//! The guest driver (`nexus-guest`), the device model in the VMM (`nexus-io`) and the shared
//! backend (`nexus-backend`) all take these from here, so the three cannot drift apart. The
//! registers around the configuration space are virtio-mmio's ([`crate::mmio`]).

/// The device ID, "NX" (not assigned by the virtio specification).
pub const DEVICE_ID: u32 = 0x4E58;
/// The vendor ID of the Nexus devices, "NXUS" (the virtio-net device of [`crate::net`] has it
/// too: it marks the WAIT register).
pub const VENDOR_ID: u32 = 0x5355_584E;
/// The device's slot in the VM's MMIO hole (each slot is [`BLOCK_SIZE`](crate::mmio::BLOCK_SIZE)
/// bytes): the first.
pub const MMIO_SLOT: u64 = 0;

/// `VIRTIO_F_VERSION_1` (bit 32): required.
pub use crate::mmio::VIRTIO_F_VERSION_1;
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

/// Offsets in the configuration space (register offset
/// [`regs::CONFIG`](crate::mmio::regs::CONFIG) plus these), little endian.
pub mod config {
    /// `window_base` (u64): guest-physical base of the I/O window.
    pub const WINDOW_BASE: u32 = 0x00;
    /// `window_size` (u64).
    pub const WINDOW_SIZE: u32 = 0x08;
    /// `max_payload` (u32): largest payload of one request.
    pub const MAX_PAYLOAD: u32 = 0x10;
    /// `num_queues` (u32): [`NUM_QUEUES`](super::NUM_QUEUES).
    pub const NUM_QUEUES: u32 = 0x14;
    /// `queue_size_max` (u32): [`QUEUE_SIZE_MAX`](super::QUEUE_SIZE_MAX).
    pub const QUEUE_SIZE_MAX: u32 = 0x18;
    /// `backend_state` (u32): 1 while the device is connected to the backend.
    pub const BACKEND_STATE: u32 = 0x1C;
    /// `WAIT` (u32, read): see [`wait`](super::wait).
    pub const WAIT: u32 = 0x20;
    /// Size of the configuration space.
    pub const SIZE: u32 = 0x24;
}

/// The WAIT register: a read blocks in the VMM (one exit, no spinning in the guest) until
/// the used ring's `idx` has moved past the `used_event` field the driver wrote (the `u16`
/// after the available ring, as virtio's `VIRTIO_F_EVENT_IDX` places it), or until the VMM's
/// timeout; it returns the used `idx` then (or one of the values below). A driver that has
/// consumed the used ring up to index `c` and needs `n` more completions writes
/// `c + n − 1` (wrapping) in `used_event` first: `c` to wake at the first completion, `c + 1`
/// to sleep through one (a COMPLETE's answer, say) and wake with the second (the NEXT that
/// went out with it). See [`moved_past`].
pub mod wait {
    /// The device has no backend connection: every request in flight is lost; reset the
    /// device and set it up again.
    pub const BACKEND_UNAVAILABLE: u32 = 0xFFFF_FFFF;
    /// The backend stopped serving the request queue because the driver broke a ring rule
    /// (the device's status has `DEVICE_NEEDS_RESET`): every request in flight is lost;
    /// reset the device and set it up again.
    pub const NEEDS_RESET: u32 = 0xFFFF_FFFE;

    /// Whether used index `used` has moved past `used_event` (both wrapping `u16`s within a
    /// queue's reach: at most half the index space apart): a WAIT read returns when it has.
    pub const fn moved_past(used: u16, used_event: u16) -> bool {
        let ahead = used.wrapping_sub(used_event);
        ahead != 0 && ahead < 0x8000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{BLOCK_SIZE, regs};

    #[test]
    fn wait_returns_once_the_used_index_moved_past_used_event() {
        // The driver consumed up to 7 and waits for one completion (used_event 7)…
        assert!(!wait::moved_past(7, 7));
        assert!(wait::moved_past(8, 7));
        // …or for two (used_event 8): the first does not wake it.
        assert!(!wait::moved_past(8, 8));
        assert!(wait::moved_past(9, 8));
        // Across the wrap.
        assert!(wait::moved_past(0, u16::MAX));
        assert!(wait::moved_past(1, u16::MAX));
        assert!(!wait::moved_past(u16::MAX, 0));
    }

    #[test]
    fn the_contract_s_values() {
        assert_eq!(DEVICE_ID.to_be_bytes(), [0, 0, b'N', b'X']);
        assert_eq!(VENDOR_ID.to_le_bytes(), *b"NXUS");
        assert_eq!(DEVICE_FEATURES, (1 << 32) | 0b11);
        assert!(QUEUE_SIZE_MAX.is_power_of_two());
        // The fields follow each other, aligned to their size, inside the register block.
        let fields = [
            (config::WINDOW_BASE, 8),
            (config::WINDOW_SIZE, 8),
            (config::MAX_PAYLOAD, 4),
            (config::NUM_QUEUES, 4),
            (config::QUEUE_SIZE_MAX, 4),
            (config::BACKEND_STATE, 4),
            (config::WAIT, 4),
        ];
        let mut next = 0;
        for (offset, size) in fields {
            assert_eq!((offset, offset % size), (next, 0));
            next = offset + size;
        }
        assert_eq!(next, config::SIZE);
        const { assert!(regs::CONFIG + config::SIZE <= BLOCK_SIZE) };
        assert_ne!(wait::BACKEND_UNAVAILABLE, wait::NEEDS_RESET);
        assert!(wait::NEEDS_RESET > u32::from(u16::MAX));
    }
}
