// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device model: identity, features, configuration space, the WAIT register, activation
//! and reset. The contract with the guest driver is `docs/nexus-net.md`; its constants are
//! defined once, in `nexus_ring::net`, and re-exported here.

use std::sync::Arc;
use std::time::Duration;

use log::debug;
use nexus_kvm::virtio_mmio::{QueueConfig, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::event_handler::{NetIo, QueuePosition};
use crate::stats::NetStats;
use crate::tap::Tap;
use crate::{Error, GuestMemoryMmap, Result};

pub use nexus_ring::net::{
    DEVICE_FEATURES, DEVICE_ID, ETHERNET_HEADER_LEN, LINK_UP, MTU, QUEUE_SIZE_MAX, RX_QUEUE,
    TX_QUEUE, VENDOR_ID, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, WAIT_NOT_LIVE, config, wait_value,
};

/// Most descriptors in a chain.
pub const MAX_CHAIN_LEN: usize = 16;
/// Shortest frame the device sends: an Ethernet header.
pub const MIN_FRAME_LEN: usize = ETHERNET_HEADER_LEN;
/// Longest frame (Ethernet header and MTU; no FCS).
pub const MAX_FRAME_LEN: usize = ETHERNET_HEADER_LEN + MTU as usize;

/// Longest a WAIT read blocks by default (see [`NexusNet::set_wait_timeout`]).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(100);

/// The queues' names, for messages.
const QUEUE_NAMES: [&str; 2] = ["receive", "transmit"];

/// How to build a [`NexusNet`].
#[derive(Debug)]
pub struct NexusNetConfig {
    /// The tap the device's frames go through (made by the caller, in the namespace it
    /// chose).
    pub tap: Tap,
    /// The guest's MAC (config space).
    pub mac: [u8; 6],
    /// Guest RAM: the queues and buffers must lie in it. [`guest_ram`](crate::guest_ram)
    /// gives a VM's.
    pub memory: GuestMemoryMmap,
}

/// The virtio-net device, VMM side. Put it behind a
/// [`MmioTransport`](nexus_kvm::virtio_mmio::MmioTransport) (or use
/// [`attach`](crate::attach)).
#[derive(Debug)]
pub struct NexusNet {
    mac: [u8; 6],
    io: Arc<NetIo>,
    acked_features: u64,
    /// Both queues while live (the WAIT register reads their used rings).
    rings: Option<[QueueConfig; 2]>,
    wait_timeout: Duration,
}

impl NexusNet {
    /// A device over `config.tap`, not live yet.
    pub fn new(config: NexusNetConfig) -> Result<Self> {
        Ok(NexusNet {
            mac: config.mac,
            io: Arc::new(NetIo::new(config.tap, config.memory)?),
            acked_features: 0,
            rings: None,
            wait_timeout: WAIT_TIMEOUT,
        })
    }

    /// The doorbell: register it as an ioeventfd on `QueueNotify` (any value: one doorbell
    /// for both queues).
    pub fn kick_eventfd(&self) -> &EventFd {
        self.io.kick()
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        self.io.tap()
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Guest RAM as the device sees it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.io.memory()
    }

    /// The device's counters (shared: read them without the device's lock).
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(self.io.stats())
    }

    /// The features the driver accepted (0 while not live).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The receive and transmit queues, while live.
    pub fn queues(&self) -> Option<&[QueueConfig; 2]> {
        self.rings.as_ref()
    }

    /// Where the device is in each queue, while live.
    pub fn positions(&self) -> Option<[QueuePosition; 2]> {
        self.io.positions()
    }

    /// Whether the event loop serves the queues (live, not paused, not broken).
    pub fn is_served(&self) -> bool {
        self.io.is_served()
    }

    /// Sets how long one WAIT read may block before the guest gets the unchanged indices back
    /// (and reads again). Stopping the vCPU ends a WAIT at once whatever the timeout.
    pub fn set_wait_timeout(&mut self, timeout: Duration) {
        self.wait_timeout = timeout.max(Duration::from_millis(1));
    }

    /// Stops serving the queues, keeping their state: once this returns the device touches
    /// guest memory no more (frames wait in the tap's queue). For a snapshot: pause, save the
    /// memory and [`NexusNetState`](crate::NexusNetState), then resume (or drop).
    pub fn pause(&mut self) {
        self.io.pause();
    }

    /// Serves the queues again after [`pause`](Self::pause) (a device not live or broken has
    /// nothing to serve).
    pub fn resume(&mut self) -> Result<()> {
        self.io.resume()
    }

    /// Checks that `queue`'s rings lie in guest RAM.
    fn check_rings(&self, index: usize, queue: &QueueConfig) -> Result<()> {
        for (area, addr, len) in queue.areas() {
            let inside = usize::try_from(len).is_ok_and(|len| {
                GuestMemoryBackend::check_range(self.io.memory(), GuestAddress(addr), len)
            });
            if !inside {
                return Err(Error::RingOutsideMemory {
                    queue: QUEUE_NAMES[index],
                    area,
                    addr,
                    len,
                });
            }
        }
        Ok(())
    }

    /// Makes the device live with `features` and `rings` at `positions` and starts serving
    /// (activation, and the restore of a live device).
    pub(crate) fn set_live(
        &mut self,
        features: u64,
        rings: [QueueConfig; 2],
        positions: [QueuePosition; 2],
    ) -> Result<()> {
        for (index, queue) in rings.iter().enumerate() {
            if !queue.ready {
                return Err(Error::QueueNotReady(QUEUE_NAMES[index]));
            }
            self.check_rings(index, queue)?;
        }
        self.io.start(features, &rings, positions)?;
        self.acked_features = features;
        self.rings = Some(rings);
        Ok(())
    }

    fn config_bytes(&self) -> [u8; config::SIZE as usize] {
        let mut b = [0u8; config::SIZE as usize];
        let mut put = |offset: u32, bytes: &[u8]| {
            let at = offset as usize;
            b[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(config::MAC, &self.mac);
        put(config::STATUS, &LINK_UP.to_le_bytes());
        put(config::MAX_VIRTQUEUE_PAIRS, &1u16.to_le_bytes());
        put(config::MTU, &MTU.to_le_bytes());
        b
    }
}

impl VirtioDevice for NexusNet {
    type Error = Error;

    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn vendor_id(&self) -> u32 {
        VENDOR_ID
    }

    fn device_features(&self) -> u64 {
        DEVICE_FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE_MAX, QUEUE_SIZE_MAX]
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if offset == u64::from(config::WAIT) && data.len() == 4 {
            let value = match &self.rings {
                Some(rings) => self.io.wait(rings, self.wait_timeout),
                None => WAIT_NOT_LIVE,
            };
            data.copy_from_slice(&value.to_le_bytes());
            return;
        }
        let bytes = self.config_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "nexus-net: {}-byte write to read-only config offset {offset:#x} ignored",
            data.len()
        );
    }

    fn validate_queue(&mut self, index: usize, queue: &QueueConfig) -> Result<()> {
        self.check_rings(index, queue)
    }

    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<()> {
        let rings =
            [RX_QUEUE, TX_QUEUE].map(|i| queues.get(usize::from(i)).copied().unwrap_or_default());
        self.set_live(features, rings, [QueuePosition::default(); 2])
    }

    fn reset(&mut self) {
        self.io.stop();
        self.rings = None;
        self.acked_features = 0;
    }

    fn queue_notify(&mut self, _value: u32) {
        // Only reached when no ioeventfd caught the write: ring the doorbell as KVM would.
        if let Err(e) = self.io.kick().write(1) {
            log::warn!("nexus-net: cannot ring the doorbell: {e}");
        }
    }

    fn needs_reset(&self) -> bool {
        self.io.needs_reset()
    }
}

impl Drop for NexusNet {
    fn drop(&mut self) {
        // The event loop holds the I/O side while it serves it.
        self.io.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_an_ethernet_header_and_at_most_the_mtu() {
        assert_eq!((MIN_FRAME_LEN, MAX_FRAME_LEN), (14, 1514));
    }
}
