// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Per-device counters.
//!
//! The event loop counts as it goes; anyone holding the device's [`NetStats`] (an `Arc`, so
//! reading them never waits for the device's lock, which a sleeping WAIT read holds) takes a
//! [`NetCounters`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// The device's counters, updated by the event loop.
#[derive(Debug, Default)]
pub struct NetStats {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_no_buffer: AtomicU64,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
    ring_faults: AtomicU64,
}

/// A snapshot of a device's counters. Bytes are frame bytes (Ethernet header and payload,
/// without the virtio-net header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames the guest sent that went out on the tap.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Times frames were waiting on the tap and the guest had no receive buffer: the device
    /// stopped reading the tap until the guest added one. Those frames wait in the tap's
    /// kernel queue, which drops what overflows it (its `tx_dropped`, as `ip -s link` shows).
    pub rx_no_buffer: u64,
    /// Frames read from the tap and dropped: larger than the guest's receive chain, or a read
    /// error.
    pub rx_dropped: u64,
    /// Frames the guest sent that were dropped: a header the negotiated features do not
    /// allow, a frame shorter than an Ethernet header or longer than 1514 bytes, or a write
    /// the tap refused.
    pub tx_dropped: u64,
    /// Times the guest broke a ring rule (the device then needs a reset).
    pub ring_faults: u64,
}

impl NetStats {
    /// The counters now.
    pub fn snapshot(&self) -> NetCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            rx_no_buffer: get(&self.rx_no_buffer),
            rx_dropped: get(&self.rx_dropped),
            tx_dropped: get(&self.tx_dropped),
            ring_faults: get(&self.ring_faults),
        }
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn rx_stalled(&self) {
        self.rx_no_buffer.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rx_dropped(&self) {
        self.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tx_dropped(&self) {
        self.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ring_fault(&self) {
        self.ring_faults.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_has_what_was_counted() {
        let stats = NetStats::default();
        stats.received(60);
        stats.received(1514);
        stats.sent(42);
        stats.rx_stalled();
        stats.rx_dropped();
        stats.tx_dropped();
        stats.tx_dropped();
        stats.ring_fault();
        assert_eq!(
            stats.snapshot(),
            NetCounters {
                rx_frames: 2,
                rx_bytes: 1574,
                tx_frames: 1,
                tx_bytes: 42,
                rx_no_buffer: 1,
                rx_dropped: 1,
                tx_dropped: 2,
                ring_faults: 1,
            }
        );
    }
}
