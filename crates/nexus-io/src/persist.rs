// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device state for snapshots.
//!
//! The state holds what the guest can observe: the transport's registers and queue
//! configuration, the negotiated features, the live request queue, and the configuration
//! fields. The backend connection is not state: a restored device starts disconnected, and
//! [`NexusIo::resume`] connects it at once with the ring's base at the used `idx`, so the
//! backend pops again the chains the guest is still waiting on (the parked `NEXT` of a VM
//! snapshotted in its runtime loop) and **the guest notices nothing**. Without `resume` the
//! guest's next WAIT reads `BACKEND_UNAVAILABLE` and its driver recovers as from a backend
//! loss (fails what was in flight, resets, sets the device up again).
//!
//! [`NexusIoState::to_bytes`] is the device's section of a snapshot, named `"nexus-io"` (its
//! [`Persist`] implementation: [`Persist::SECTION`]), format version
//! [`NexusIoState::STATE_VERSION`]: little-endian fields in the order of the structs,
//! a queue as `max_size u16, size u16, ready u8, desc u64, avail u64, used u64`, an optional
//! value as a `0`/`1` byte before it, the transport's queues behind their `u32` count.

use nexus_kvm::persist::Persist;
use nexus_kvm::virtio_mmio::{MmioTransport, MmioTransportState, QueueConfig};

use crate::device::{NexusIo, NexusIoConfig, QUEUE_SIZE_MAX};
use crate::{Error, NexusIoTransport, Result};

/// The device's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexusIoDeviceState {
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The request queue, if the device was live.
    pub active_queue: Option<QueueConfig>,
    /// `window_base`.
    pub window_base: u64,
    /// `window_size`.
    pub window_size: u64,
    /// `max_payload`.
    pub max_payload: u32,
    /// `queue_size_max`.
    pub queue_size_max: u16,
    /// The interrupt line.
    pub irq: Option<u32>,
}

/// The state of a nexus-io device and its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexusIoState {
    /// The transport's registers and queues.
    pub transport: MmioTransportState,
    /// The device's own state.
    pub device: NexusIoDeviceState,
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
}

impl NexusIoState {
    /// Version of the format [`to_bytes`](Self::to_bytes) writes.
    pub const STATE_VERSION: u32 = 1;

    /// The state as the device's snapshot section (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128));
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
        match &d.active_queue {
            Some(q) => {
                w.u8(1);
                w.queue(q);
            }
            None => w.u8(0),
        }
        w.u64(d.window_base);
        w.u64(d.window_size);
        w.u32(d.max_payload);
        w.u16(d.queue_size_max);
        match d.irq {
            Some(irq) => {
                w.u8(1);
                w.u32(irq);
            }
            None => w.u8(0),
        }
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
            let active_queue = if r.bool()? { Some(r.queue()?) } else { None };
            let device = NexusIoDeviceState {
                acked_features,
                active_queue,
                window_base: r.u64()?,
                window_size: r.u64()?,
                max_payload: r.u32()?,
                queue_size_max: r.u16()?,
                irq: if r.bool()? { Some(r.u32()?) } else { None },
            };
            Some(NexusIoState { transport, device })
        })()
        .ok_or(Error::StateFormat("truncated or malformed"))?;
        if !r.0.is_empty() {
            return Err(Error::StateFormat("followed by trailing bytes"));
        }
        Ok(state)
    }

    /// Captures the state of `transport`.
    pub fn save(transport: &NexusIoTransport) -> Self {
        let device = transport.device();
        NexusIoState {
            transport: transport.state(),
            device: NexusIoDeviceState {
                acked_features: device.acked_features(),
                active_queue: device.active_queue().copied(),
                window_base: device.window().base().0,
                window_size: device.window().size(),
                max_payload: device.max_payload(),
                queue_size_max: QUEUE_SIZE_MAX,
                irq: device.irq(),
            },
        }
    }

    /// Rebuilds the device and its transport in this state over `config` (whose window must
    /// be the saved one). The device is not connected to the backend until
    /// [`NexusIo::resume`] (see the module docs).
    pub fn restore(&self, config: NexusIoConfig) -> Result<NexusIoTransport> {
        let saved = &self.device;
        let (base, size) = (config.window.base().0, config.window.size());
        if (base, size) != (saved.window_base, saved.window_size) {
            return Err(Error::StateWindow {
                saved_base: saved.window_base,
                saved_size: saved.window_size,
                base,
                size,
            });
        }
        let mut device = NexusIo::new(config)?;
        if saved.max_payload != device.max_payload() || saved.queue_size_max != QUEUE_SIZE_MAX {
            return Err(Error::StateConfig);
        }
        device.set_active(saved.acked_features, saved.active_queue)?;
        MmioTransport::from_state(device, &self.transport).map_err(Error::State)
    }
}

/// The device's snapshot section: [`NexusIoState::to_bytes`] under the name `"nexus-io"`.
/// Restoring gives the state; [`NexusIoState::restore`] then rebuilds the device over the
/// restored window.
impl Persist for NexusIoState {
    const SECTION: &'static str = "nexus-io";
    const STATE_VERSION: u32 = NexusIoState::STATE_VERSION;
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
    use crate::device::{BACKEND_UNAVAILABLE, config};
    use nexus_kvm::BusDevice;
    use nexus_kvm::memory::WindowRegion;
    use nexus_kvm::virtio_mmio::{VIRTIO_F_VERSION_1, regs, status};

    fn config(window: &WindowRegion) -> NexusIoConfig {
        NexusIoConfig {
            control_socket: "/nonexistent/nexus-backend.sock".into(),
            vm_id: "vm-1".into(),
            tenant: "t".into(),
            window: window.clone(),
            irq: Some(5),
        }
    }

    fn r(t: &mut NexusIoTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut NexusIoTransport, offset: u32, value: u32) {
        t.write(offset.into(), &value.to_le_bytes());
    }

    #[test]
    fn state_round_trips() {
        let window = WindowRegion::new(1 << 20).unwrap();
        let base = window.base().0;
        let mut t = MmioTransport::new(NexusIo::new(config(&window)).unwrap());
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::DRIVER_FEATURES, 1);
        w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        w(
            &mut t,
            regs::DRIVER_FEATURES,
            (VIRTIO_F_VERSION_1 >> 32) as u32,
        );
        w(&mut t, regs::STATUS, 0b1011);
        w(&mut t, regs::QUEUE_NUM, 16);
        w(&mut t, regs::QUEUE_DESC_LOW, base as u32);
        w(&mut t, regs::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(&mut t, regs::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(&mut t, regs::QUEUE_READY, 1);
        // No backend listens: the device goes live, disconnected.
        w(&mut t, regs::STATUS, 0b1111);
        assert_eq!(r(&mut t, regs::STATUS), 0b1111);
        assert_eq!(r(&mut t, regs::CONFIG + config::WAIT), BACKEND_UNAVAILABLE);

        let state = NexusIoState::save(&t);
        assert_eq!(state.device.acked_features, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(state.device.active_queue.unwrap().size, 16);
        assert_eq!(state.device.max_payload, 1 << 20);
        let bytes = state.to_bytes();
        assert_eq!(
            NexusIoState::from_bytes(NexusIoState::STATE_VERSION, &bytes).unwrap(),
            state
        );
        // The snapshot section: the same bytes, under the device's name.
        assert_eq!(
            (<NexusIoState as Persist>::SECTION, state.save_state()),
            ("nexus-io", bytes.clone())
        );
        assert_eq!(
            NexusIoState::restore_state((), <NexusIoState as Persist>::STATE_VERSION, &bytes)
                .unwrap(),
            state
        );
        assert!(NexusIoState::from_bytes(2, &bytes).is_err());
        assert!(NexusIoState::from_bytes(1, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(NexusIoState::from_bytes(1, &longer).is_err());
        let mut u = state.restore(config(&window)).unwrap();
        assert_eq!(NexusIoState::save(&u), state);
        // Nothing listens: resuming says so and leaves the device disconnected.
        assert!(u.device_mut().resume(None).is_err());
        assert_eq!(r(&mut u, regs::CONFIG + config::WAIT), BACKEND_UNAVAILABLE);
        for offset in [
            regs::STATUS,
            regs::QUEUE_READY,
            regs::QUEUE_DRIVER_LOW,
            regs::CONFIG + config::WINDOW_BASE,
            regs::CONFIG + config::WINDOW_SIZE,
            regs::CONFIG + config::MAX_PAYLOAD,
            regs::CONFIG + config::BACKEND_STATE,
            regs::CONFIG + config::WAIT,
        ] {
            assert_eq!(r(&mut u, offset), r(&mut t, offset), "offset {offset:#x}");
        }

        // Another window is refused.
        let other = WindowRegion::new(2 << 20).unwrap();
        assert!(matches!(
            state.restore(config(&other)),
            Err(Error::StateWindow { .. })
        ));
        // So is a queue outside the window.
        let mut bad = state.clone();
        bad.device.active_queue.as_mut().unwrap().desc_table = 0x1000;
        assert!(matches!(
            bad.restore(config(&window)),
            Err(Error::RingOutsideWindow { .. })
        ));
    }
}
