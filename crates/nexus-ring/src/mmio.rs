// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-mmio register map (version 2, "modern"; virtio 1.x §4.2.2): register offsets,
//! the identification values, the `Status` and `InterruptStatus` bits.
//!
//! The transport in the VMM (`nexus_kvm::virtio_mmio`), the guest drivers (`nexus-guest`'s
//! nexus-io and virtio-net drivers) and their test fakes all take these from here. Offsets
//! are bytes from the start of a device's register block, `u32` because the block is
//! [`BLOCK_SIZE`] bytes long; a VMM that sees 64-bit bus offsets converts once.
//!
//! Registers below [`regs::CONFIG`] are 32 bits wide and accessed 32 bits at a time; the
//! device-specific configuration space starts at [`regs::CONFIG`] (the nexus-io device's is
//! [`crate::device::config`], the virtio-net device's [`crate::net::config`]).

/// `MagicValue`: the bytes `"virt"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"virt");
/// `Version` of the modern (non-legacy) virtio-mmio interface.
pub const VERSION: u32 = 2;
/// Size of one device's register block (its slot in the VM's MMIO hole).
pub const BLOCK_SIZE: u32 = 0x1000;
/// Feature bit 32: the device and driver follow virtio 1.x (required by this transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Register offsets inside a device's register block.
pub mod regs {
    /// `MagicValue` (R): [`MAGIC`](super::MAGIC).
    pub const MAGIC_VALUE: u32 = 0x000;
    /// `Version` (R): [`VERSION`](super::VERSION).
    pub const VERSION: u32 = 0x004;
    /// `DeviceID` (R).
    pub const DEVICE_ID: u32 = 0x008;
    /// `VendorID` (R).
    pub const VENDOR_ID: u32 = 0x00C;
    /// `DeviceFeatures` (R): the 32-bit word selected by `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES: u32 = 0x010;
    /// `DeviceFeaturesSel` (W).
    pub const DEVICE_FEATURES_SEL: u32 = 0x014;
    /// `DriverFeatures` (W): the 32-bit word selected by `DriverFeaturesSel`.
    pub const DRIVER_FEATURES: u32 = 0x020;
    /// `DriverFeaturesSel` (W).
    pub const DRIVER_FEATURES_SEL: u32 = 0x024;
    /// `QueueSel` (W).
    pub const QUEUE_SEL: u32 = 0x030;
    /// `QueueNumMax` (R).
    pub const QUEUE_NUM_MAX: u32 = 0x034;
    /// `QueueNum` (W).
    pub const QUEUE_NUM: u32 = 0x038;
    /// `QueueReady` (RW).
    pub const QUEUE_READY: u32 = 0x044;
    /// `QueueNotify` (W): the doorbell (an ioeventfd inside KVM for the Nexus devices).
    pub const QUEUE_NOTIFY: u32 = 0x050;
    /// `InterruptStatus` (R): [`interrupt`](super::interrupt) bits.
    pub const INTERRUPT_STATUS: u32 = 0x060;
    /// `InterruptACK` (W).
    pub const INTERRUPT_ACK: u32 = 0x064;
    /// `Status` (RW): [`status`](super::status) bits.
    pub const STATUS: u32 = 0x070;
    /// `QueueDescLow`: the descriptor table.
    pub const QUEUE_DESC_LOW: u32 = 0x080;
    /// `QueueDescHigh`.
    pub const QUEUE_DESC_HIGH: u32 = 0x084;
    /// `QueueDriverLow`: the driver (available) area.
    pub const QUEUE_DRIVER_LOW: u32 = 0x090;
    /// `QueueDriverHigh`.
    pub const QUEUE_DRIVER_HIGH: u32 = 0x094;
    /// `QueueDeviceLow`: the device (used) area.
    pub const QUEUE_DEVICE_LOW: u32 = 0x0A0;
    /// `QueueDeviceHigh`.
    pub const QUEUE_DEVICE_HIGH: u32 = 0x0A4;
    /// `SHMSel` (W): shared memory regions (the Nexus devices have none).
    pub const SHM_SEL: u32 = 0x0AC;
    /// `SHMLenLow` (R).
    pub const SHM_LEN_LOW: u32 = 0x0B0;
    /// `SHMLenHigh` (R).
    pub const SHM_LEN_HIGH: u32 = 0x0B4;
    /// `SHMBaseLow` (R).
    pub const SHM_BASE_LOW: u32 = 0x0B8;
    /// `SHMBaseHigh` (R).
    pub const SHM_BASE_HIGH: u32 = 0x0BC;
    /// `ConfigGeneration` (R).
    pub const CONFIG_GENERATION: u32 = 0x0FC;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u32 = 0x100;
}

/// Bits of the `Status` register.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Bits of the `InterruptStatus` register.
pub mod interrupt {
    /// A used buffer notification.
    pub const VRING: u32 = 1;
    /// A configuration change notification.
    pub const CONFIG: u32 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_map_is_the_specification_s() {
        assert_eq!(MAGIC, 0x7472_6976);
        assert_eq!(VERSION, 2);
        assert_eq!(VIRTIO_F_VERSION_1, 1 << 32);
        let offsets = [
            regs::MAGIC_VALUE,
            regs::VERSION,
            regs::DEVICE_ID,
            regs::VENDOR_ID,
            regs::DEVICE_FEATURES,
            regs::DEVICE_FEATURES_SEL,
            regs::DRIVER_FEATURES,
            regs::DRIVER_FEATURES_SEL,
            regs::QUEUE_SEL,
            regs::QUEUE_NUM_MAX,
            regs::QUEUE_NUM,
            regs::QUEUE_READY,
            regs::QUEUE_NOTIFY,
            regs::INTERRUPT_STATUS,
            regs::INTERRUPT_ACK,
            regs::STATUS,
            regs::QUEUE_DESC_LOW,
            regs::QUEUE_DESC_HIGH,
            regs::QUEUE_DRIVER_LOW,
            regs::QUEUE_DRIVER_HIGH,
            regs::QUEUE_DEVICE_LOW,
            regs::QUEUE_DEVICE_HIGH,
            regs::SHM_SEL,
            regs::SHM_LEN_LOW,
            regs::SHM_LEN_HIGH,
            regs::SHM_BASE_LOW,
            regs::SHM_BASE_HIGH,
            regs::CONFIG_GENERATION,
        ];
        assert_eq!(
            offsets,
            [
                0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60,
                0x64, 0x70, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xac, 0xb0, 0xb4, 0xb8, 0xbc, 0xfc
            ]
        );
        for pair in offsets.windows(2) {
            assert!(pair[0] < pair[1] && pair[0] % 4 == 0, "{pair:x?}");
        }
        const { assert!(regs::CONFIG_GENERATION < regs::CONFIG && regs::CONFIG < BLOCK_SIZE) };
        let bits = [
            status::ACKNOWLEDGE,
            status::DRIVER,
            status::DRIVER_OK,
            status::FEATURES_OK,
            status::DEVICE_NEEDS_RESET,
            status::FAILED,
        ];
        assert_eq!(bits, [1, 2, 4, 8, 64, 128]);
        assert_eq!((interrupt::VRING, interrupt::CONFIG), (1, 2));
    }
}
