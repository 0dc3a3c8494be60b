// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The network fabric's one error type.

use alloc::string::String;

/// Why the virtio-net driver, the TCP/IP stack, the HTTP layer or the boot arguments of the
/// network failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The VM has no virtio-net device (boot-info `net_device_base` is 0).
    #[error("The VM has no virtio-net device")]
    NoDevice,
    /// The device's register block cannot be used (null, misaligned or not addressable).
    #[error("Invalid virtio-net register block at {addr:#x}")]
    BadMapping {
        /// Its address.
        addr: u64,
    },
    /// The register block is not the Nexus virtio-net device.
    #[error(
        "Not the Nexus virtio-net device: magic {magic:#x}, version {version}, device id {device_id}, vendor {vendor_id:#x}"
    )]
    NotNetDevice {
        /// `MagicValue` (must be `nexus_ring::mmio::MAGIC`).
        magic: u32,
        /// `Version` (must be 2).
        version: u32,
        /// `DeviceID` (must be 1).
        device_id: u32,
        /// `VendorID` (must be `nexus_ring::net::VENDOR_ID`: the WAIT register is a Nexus
        /// extension).
        vendor_id: u32,
    },
    /// `VIRTIO_F_VERSION_1` not offered, or the device refused `FEATURES_OK`.
    #[error("virtio-net feature negotiation failed (device offers {offered:#x})")]
    FeatureNegotiation {
        /// The feature bits the device offered.
        offered: u64,
    },
    /// A queue cannot be set up (absent, or already live).
    #[error("virtio-net queue {queue} is unavailable (QueueNumMax {max}, QueueReady {ready})")]
    QueueUnavailable {
        /// 0 (receive) or 1 (transmit).
        queue: u16,
        /// `QueueNumMax`.
        max: u32,
        /// `QueueReady`.
        ready: u32,
    },
    /// The device reports an MTU the driver's buffers are not made for.
    #[error("virtio-net MTU {mtu} is outside 68..={max}")]
    BadMtu {
        /// The `mtu` of the config space.
        mtu: u16,
        /// The largest the driver supports.
        max: u16,
    },
    /// The device set `DEVICE_NEEDS_RESET` (or `FAILED`) while being set up.
    #[error("The virtio-net device needs a reset (status {status:#x})")]
    DeviceNeedsReset {
        /// The `Status` register.
        status: u32,
    },
    /// The WAIT register read `0xFFFF_FFFF` (the device is not live or needs a reset) or the
    /// device broke the virtqueue protocol: the driver reset it, frames in flight were lost
    /// (TCP retransmits them), and it is set up again on the next use.
    #[error("The virtio-net device was reset: {0}")]
    DeviceReset(&'static str),
    /// A boot argument of the network is missing.
    #[error("Missing boot argument {0}")]
    MissingArgument(&'static str),
    /// A boot argument of the network cannot be parsed.
    #[error("Invalid boot argument {key}={value:?}")]
    BadArgument {
        /// Its key.
        key: String,
        /// Its value.
        value: String,
    },
    /// A TCP connection could not be opened (unroutable address, no free port…).
    #[error("Cannot connect: {0}")]
    Connect(&'static str),
    /// A TCP listener could not be opened.
    #[error("Cannot listen on port {0}")]
    Listen(u16),
    /// The peer refused or reset the connection.
    #[error("Connection reset by the peer")]
    ConnectionReset,
    /// The connection closed before the exchange was complete.
    #[error("Connection closed: {0}")]
    ConnectionClosed(&'static str),
    /// An operation took longer than its timeout.
    #[error("Timed out: {0}")]
    Timeout(&'static str),
    /// The connection belongs to the stack as it was before a reseed (a snapshot restore):
    /// it is gone.
    #[error("The connection was dropped by a reseed of the stack")]
    Stale,
    /// The peer sent something that is not HTTP/1.1 as this client or server speaks it.
    #[error("HTTP protocol error: {0}")]
    Http(&'static str),
    /// A response or request head is larger than the limit.
    #[error("HTTP head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// A body is larger than the buffer or limit given for it.
    #[error("HTTP body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Its length (as far as known).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A transport outside the stack failed (host tests over `std` sockets).
    #[error("Transport error: {0}")]
    Transport(String),
}

/// The result type of the network fabric.
pub type Result<T> = core::result::Result<T, NetError>;
