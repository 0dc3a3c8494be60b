// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device state for snapshots.
//!
//! The state holds what the guest can observe: the transport's registers and queue
//! configuration, the negotiated features, where the device is in each queue
//! (`next_avail`, `next_used`) and the MAC. The tap is not state: a restored device takes a
//! new one from the caller and, if it was live, **resumes at once without a guest reset**:
//! it serves the queues from the saved positions, takes the chains the guest made available
//! meanwhile and reads the frames waiting on the new tap.
//!
//! Save a device that does not move: [`NexusNet::pause`] it (and stop its vCPUs) before
//! saving guest memory and this state. Between turns the device holds no chain (every chain
//! it pops goes back to the used ring, or back to the available ring, in the same turn), so
//! `next_avail == next_used` at rest.
//!
//! [`NexusNetState::to_bytes`] is the device's section of a snapshot, named `"nexus-net"` (its
//! [`Persist`] implementation: [`Persist::SECTION`]), format version
//! [`NexusNetState::STATE_VERSION`]: little-endian fields in the order of the structs, a
//! queue configuration as `max_size u16, size u16, ready u8, desc u64, avail u64, used u64`,
//! an optional value as a `0`/`1` byte before it, the transport's queues behind their `u32`
//! count.

use nexus_kvm::persist::Persist;
use nexus_kvm::virtio_mmio::{MmioTransport, MmioTransportState, QueueConfig};

use crate::device::{NexusNet, NexusNetConfig};
use crate::event_handler::QueuePosition;
use crate::tap::Tap;
use crate::{Error, GuestMemoryMmap, NexusNetTransport, Result};

/// A live queue: its configuration and where the device is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedQueue {
    /// The configuration the driver wrote.
    pub config: QueueConfig,
    /// Where the device is.
    pub position: QueuePosition,
}

/// The device's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexusNetDeviceState {
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The receive and transmit queues, if the device was live.
    pub queues: Option<[SavedQueue; 2]>,
    /// The guest's MAC.
    pub mac: [u8; 6],
}

/// The state of a nexus-net device and its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexusNetState {
    /// The transport's registers and queues.
    pub transport: MmioTransportState,
    /// The device's own state.
    pub device: NexusNetDeviceState,
}

/// Appends little-endian fields.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn queue(&mut self, q: &QueueConfig) {
        self.u16(q.max_size);
        self.u16(q.size);
        self.u8(u8::from(q.ready));
        self.u64(q.desc_table);
        self.u64(q.avail_ring);
        self.u64(q.used_ring);
    }
}

/// Reads little-endian fields; `None` once the bytes run out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn queue(&mut self) -> Option<QueueConfig> {
        Some(QueueConfig {
            max_size: self.u16()?,
            size: self.u16()?,
            ready: self.bool()?,
            desc_table: self.u64()?,
            avail_ring: self.u64()?,
            used_ring: self.u64()?,
        })
    }
    fn saved_queue(&mut self) -> Option<SavedQueue> {
        Some(SavedQueue {
            config: self.queue()?,
            position: QueuePosition {
                next_avail: self.u16()?,
                next_used: self.u16()?,
            },
        })
    }
}

impl NexusNetState {
    /// Version of the format [`to_bytes`](Self::to_bytes) writes.
    pub const STATE_VERSION: u32 = 1;

    /// The state as the device's snapshot section (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(160));
        let t = &self.transport;
        w.u32(t.status);
        w.u32(t.device_features_sel);
        w.u32(t.driver_features_sel);
        w.u64(t.driver_features);
        w.u32(t.queue_sel);
        w.u32(t.queues.len() as u32);
        for q in &t.queues {
            w.queue(q);
        }
        let d = &self.device;
        w.u64(d.acked_features);
        match &d.queues {
            Some(queues) => {
                w.u8(1);
                for q in queues {
                    w.queue(&q.config);
                    w.u16(q.position.next_avail);
                    w.u16(q.position.next_used);
                }
            }
            None => w.u8(0),
        }
        w.0.extend_from_slice(&d.mac);
        w.0
    }

    /// Parses a section written by [`to_bytes`](Self::to_bytes) in format `version`.
    pub fn from_bytes(version: u32, bytes: &[u8]) -> Result<Self> {
        if version != Self::STATE_VERSION {
            return Err(Error::StateFormat("an unsupported version"));
        }
        let mut r = Reader(bytes);
        let state = (|| {
            let status = r.u32()?;
            let device_features_sel = r.u32()?;
            let driver_features_sel = r.u32()?;
            let driver_features = r.u64()?;
            let queue_sel = r.u32()?;
            let count = r.u32()?;
            if count > 16 {
                return None;
            }
            let queues = (0..count).map(|_| r.queue()).collect::<Option<Vec<_>>>()?;
            let transport = MmioTransportState {
                status,
                device_features_sel,
                driver_features_sel,
                driver_features,
                queue_sel,
                queues,
            };
            let acked_features = r.u64()?;
            let queues = if r.bool()? {
                Some([r.saved_queue()?, r.saved_queue()?])
            } else {
                None
            };
            let device = NexusNetDeviceState {
                acked_features,
                queues,
                mac: r.take()?,
            };
            Some(NexusNetState { transport, device })
        })()
        .ok_or(Error::StateFormat("truncated or malformed"))?;
        if !r.0.is_empty() {
            return Err(Error::StateFormat("followed by trailing bytes"));
        }
        Ok(state)
    }

    /// Captures the state of `transport` (pause the device first: see the module docs).
    pub fn save(transport: &NexusNetTransport) -> Self {
        let device = transport.device();
        let queues = device
            .queues()
            .zip(device.positions())
            .map(|(configs, positions)| {
                [0, 1].map(|i| SavedQueue {
                    config: configs[i],
                    position: positions[i],
                })
            });
        NexusNetState {
            transport: transport.state(),
            device: NexusNetDeviceState {
                acked_features: device.acked_features(),
                queues,
                mac: device.mac(),
            },
        }
    }

    /// Rebuilds the device and its transport in this state over a new `tap` and guest RAM
    /// `memory` (the restored VM's, [`guest_ram`](crate::guest_ram)). A device that was live
    /// serves its queues at once, from the saved positions (see the module docs).
    pub fn restore(&self, tap: Tap, memory: GuestMemoryMmap) -> Result<NexusNetTransport> {
        let saved = &self.device;
        let mut device = NexusNet::new(NexusNetConfig {
            tap,
            mac: saved.mac,
            memory,
        })?;
        if let Some(queues) = &saved.queues {
            device.set_live(
                saved.acked_features,
                queues.map(|q| q.config),
                queues.map(|q| q.position),
            )?;
        }
        MmioTransport::from_state(device, &self.transport).map_err(Error::State)
    }
}

/// The device's snapshot section: [`NexusNetState::to_bytes`] under the name `"nexus-net"`.
/// Restoring gives the state; [`NexusNetState::restore`] then rebuilds the device on a new tap.
impl Persist for NexusNetState {
    const SECTION: &'static str = "nexus-net";
    const STATE_VERSION: u32 = NexusNetState::STATE_VERSION;
    type RestoreArgs = ();
    type Error = Error;

    fn save_state(&self) -> Vec<u8> {
        self.to_bytes()
    }

    fn restore_state((): (), version: u32, bytes: &[u8]) -> Result<Self> {
        Self::from_bytes(version, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(base: u64) -> QueueConfig {
        QueueConfig {
            max_size: 256,
            size: 128,
            ready: true,
            desc_table: base,
            avail_ring: base + 0x1000,
            used_ring: base + 0x2000,
        }
    }

    fn live_state() -> NexusNetState {
        let (rx, tx) = (queue(0x10_0000), queue(0x1_0000_0000));
        NexusNetState {
            transport: MmioTransportState {
                status: 0b1111,
                device_features_sel: 1,
                driver_features_sel: 0,
                driver_features: (1 << 32) | 0b11,
                queue_sel: 1,
                queues: vec![rx, tx],
            },
            device: NexusNetDeviceState {
                acked_features: (1 << 32) | 0b11,
                queues: Some([
                    SavedQueue {
                        config: rx,
                        position: QueuePosition {
                            next_avail: 65535,
                            next_used: 65535,
                        },
                    },
                    SavedQueue {
                        config: tx,
                        position: QueuePosition {
                            next_avail: 7,
                            next_used: 7,
                        },
                    },
                ]),
                mac: [2, 0, 0, 0xab, 0xcd, 0xef],
            },
        }
    }

    #[test]
    fn state_round_trips_through_its_bytes() {
        let live = live_state();
        let mut idle = live.clone();
        idle.device.queues = None;
        idle.transport.status = 0;
        for state in [live, idle] {
            let bytes = state.to_bytes();
            assert_eq!(
                NexusNetState::from_bytes(NexusNetState::STATE_VERSION, &bytes).unwrap(),
                state
            );
            assert!(NexusNetState::from_bytes(2, &bytes).is_err());
            for cut in 0..bytes.len() {
                assert!(
                    NexusNetState::from_bytes(1, &bytes[..cut]).is_err(),
                    "{cut} bytes"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(NexusNetState::from_bytes(1, &longer).is_err());
            // The snapshot section: the same bytes, under the device's name.
            assert_eq!(
                (<NexusNetState as Persist>::SECTION, state.save_state()),
                ("nexus-net", bytes.clone())
            );
            assert_eq!(NexusNetState::restore_state((), 1, &bytes).unwrap(), state);
        }
        // A flag byte other than 0 or 1 is refused.
        let mut bytes = live_state().to_bytes();
        let flag = 4 * 3 + 8 + 4 + 4 + 2 * 29 + 8;
        assert_eq!(bytes[flag], 1);
        bytes[flag] = 2;
        assert!(NexusNetState::from_bytes(1, &bytes).is_err());
    }
}
