// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device state for snapshots.
//!
//! The state holds what the guest can observe: the transport's registers and queue
//! configuration, the negotiated features, the live request queue, and the configuration
//! fields. The backend connection is not state: a restored device starts **disconnected**,
//! so the guest's next WAIT reads `BACKEND_UNAVAILABLE`, and its driver recovers as from a
//! backend loss (fails what was in flight, resets, sets the device up again — and the
//! device reconnects on that `DRIVER_OK`).

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

impl NexusIoState {
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
    /// be the saved one). The device is not connected to the backend (see the module docs).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{BACKEND_UNAVAILABLE, config};
    use nexus_kvm::BusDevice;
    use nexus_kvm::memory::IoWindow;
    use nexus_kvm::virtio_mmio::{VIRTIO_F_VERSION_1, regs, status};

    fn config(window: &IoWindow) -> NexusIoConfig {
        NexusIoConfig {
            control_socket: "/nonexistent/nexus-backend.sock".into(),
            vm_id: "vm-1".into(),
            tenant: "t".into(),
            window: window.clone(),
            irq: Some(5),
        }
    }

    fn r(t: &mut NexusIoTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut NexusIoTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn state_round_trips() {
        let window = IoWindow::new(1 << 20).unwrap();
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
        let mut u = state.restore(config(&window)).unwrap();
        assert_eq!(NexusIoState::save(&u), state);
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
        let other = IoWindow::new(2 << 20).unwrap();
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
