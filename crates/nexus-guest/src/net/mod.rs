// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The in-guest network fabric (feature `net`): the baseline Nexus is measured against.
//!
//! Nexus moves a function's I/O out of its VM into a shared backend. The baseline it
//! replaces is the function VM that carries its own fabric, as functions in
//! Firecracker-based platforms do: a virtio-net driver, a TCP/IP stack, an HTTP/1.1 client
//! and S3 request signing, reaching a real S3 server over a tap. This module is that
//! fabric, tuned as a competent engineer would tune it — never handicapped:
//!
//! - [`VirtioNet`] ([`driver`]): the Nexus virtio-net device, driver side — negotiation
//!   (`VERSION_1`, `MAC`, `MTU`, `STATUS`, and checksum offload both ways when offered),
//!   receive and transmit split virtqueues in the guest's heap, receive buffers kept posted,
//!   batched doorbells, completions through the WAIT register, reset on `0xFFFF_FFFF`.
//! - [`NetStack`]/[`Net`] ([`stack`]): smoltcp over the driver, polled from an
//!   executor-free loop (poll, then sleep in WAIT); Nagle off, 256 KiB windows, checksums as
//!   negotiated, a random seed from `RDRAND`/`RDTSC`, and after a snapshot restore a new
//!   seed and address from the VM generation record ([`NetStack::watch_generation`],
//!   [`NetStack::reseed`]).
//! - [`http`]: an HTTP/1.1 client with keep-alive and a one-request-at-a-time server for
//!   invocations, over any [`Transport`].
//! - [`s3`]: an S3 client (SigV4, path style), which is an [`ObjectIo`](crate::io::ObjectIo)
//!   like the nexus-io client.
//! - [`config`]: the boot arguments.
//!
//! **Credentials reach the guest in its boot arguments** (`s3.access_key`, `s3.secret_key`):
//! that is the baseline's world, in which the fabric — and its secrets — live in every
//! function VM. **TLS is off**: the S3 endpoint is plain HTTP on the platform's network.
//!
//! ```ignore
//! // In a micro-guest (features `rt` and `net`):
//! let (net, config) = nexus_guest::rt::net()?;
//! let mut s3 = nexus_guest::net::S3Client::over(&net, config.s3.expect("s3.* arguments"));
//! let mut server = nexus_guest::net::HttpServer::new(&net, config.http_port)?;
//! loop {
//!     let request = server.next_request(None)?;
//!     let input = s3.get(core::str::from_utf8(&request.body).unwrap_or(""))?;
//!     server.respond(200, "application/octet-stream", &input)?;
//! }
//! ```

pub mod config;
mod dma;
pub mod driver;
pub mod entropy;
mod error;
pub mod http;
pub mod link;
pub mod s3;
pub mod stack;
pub mod transport;
pub mod virtio;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod tests;

pub use config::{BootConfig, NetConfig, positional_args};
pub use driver::{NetDeviceInfo, NetDriverConfig, NetStats, VirtioNet};
pub use error::{NetError, Result};
pub use http::{HttpClient, HttpServer, ServerRequest};
pub use link::{Clock, Link, TscClock};
pub use s3::{PayloadSigning, S3Client, S3Config};
pub use stack::{Net, NetStack, StackConnector, TcpConnection, TcpListener};
pub use transport::{Connector, Transport};

use alloc::boxed::Box;

use crate::boot::BootInfo;
use crate::generation::BootGeneration;
use crate::mmio::MmioRegisters;

/// The stack of a micro-guest: the driver over the device of the boot-info block, the
/// address and the rest from its arguments.
pub type GuestNet = Net<VirtioNet<MmioRegisters>>;

/// Brings up the device of `boot` (identity mapped) and the stack over it, configured by
/// the boot arguments; returns the stack and the parsed arguments. The stack watches the VM
/// generation record of `boot`, if it has one: a restored VM reseeds and takes its new
/// address by itself ([`NetStack::watch_generation`]).
///
/// # Safety
///
/// `boot` must describe this VM's real virtio-net register block, identity mapped (a
/// micro-guest's boot-info block from the VMM), and nothing else in the program may use the
/// device while the stack lives. [`rt::net`](crate::rt::net) is the safe way in a
/// micro-guest.
pub unsafe fn from_boot_info(boot: &BootInfo) -> Result<(GuestNet, BootConfig)> {
    let config = BootConfig::from_args(boot.args())?;
    let device = boot.net_device().ok_or(NetError::NoDevice)?;
    // SAFETY: the caller guarantees the range is the device's register block, identity
    // mapped, and ours alone.
    let regs = unsafe { MmioRegisters::identity(device.start, device.end - device.start) }
        .ok_or(NetError::BadMapping { addr: device.start })?;
    let seed = entropy::hardware_seed(config.net.seed.unwrap_or(0));
    let mut driver_config = NetDriverConfig::default();
    // A locally administered MAC from the seed, should the device offer none.
    let bytes = seed.to_le_bytes();
    driver_config.fallback_mac = [0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]];
    let driver = VirtioNet::new(regs, driver_config)?;
    let clock = TscClock::new(
        config.net.tsc_khz.unwrap_or(TscClock::DEFAULT_KHZ),
        config.net.unix_time_ms,
    );
    let mut stack = NetStack::new(driver, config.net.clone(), Box::new(clock), seed);
    // SAFETY: the caller guarantees `boot` is this VM's block, identity mapped, so its
    // generation record is this VM's readable RAM.
    if let Some(source) = unsafe { BootGeneration::from_boot_info(boot) } {
        stack.watch_generation(Box::new(source));
    }
    Ok((Net::new(stack), config))
}
