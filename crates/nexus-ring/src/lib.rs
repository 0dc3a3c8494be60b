// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Nexus shared-ring protocol.
//!
//! Every byte that crosses between a function's VM and the shared backend is a nexus-ring
//! message carried in the nexus-io device's request virtqueue (queue 0). A request is one
//! descriptor chain:
//!
//! ```text
//! device-readable:  [request header (48 B)] [key]? [meta]? [payload segment]*
//! device-writable:  [response header (40 B) + response meta area] [response payload buffer]*
//! ```
//!
//! Headers are fixed-size little-endian layouts with explicit offsets ([`RequestHeader`],
//! [`ResponseHeader`]). Payloads are never inline in a header: they are segments of the chain,
//! described by guest-physical addresses and lengths that the [`Decoder`] checks against the
//! VM's [`IoWindow`] before a single byte is read. The variable-length records that travel in
//! meta areas and payloads (invocation context, object entries, HTTP header lists) have their
//! own exact encoders and decoders in [`records`].
//!
//! The crate is `#![no_std]`, has no `unsafe`, and no panicking path in its decoders (indexing,
//! unchecked arithmetic, `unwrap` and `expect` are denied outside tests). It serves all three
//! parties:
//!
//! - the **guest driver** lays out a request with [`RequestLayout`], writes its header with
//!   [`RequestHeader::encode`] and checks the reply with [`ResponseHeader::check_reply`];
//! - the **device** and the **backend** decode chains with [`Decoder`] (and, with the `virtio`
//!   feature, pop them from the virtqueue with every ring field checked, see `queue`, or take
//!   a `virtio_queue::DescriptorChain`), then answer through the validated
//!   [`ResponseTarget`];
//! - the **fuzzer** runs that same decoder (feature `test-utils` has the mock window and the
//!   fuzz input format).
//!
//! The format is specified byte by byte in `docs/protocol.md` of the Nexus repository.
//!
//! Beside the ring protocol, the crate is the one home of the other contracts between the
//! guest and the host (dependency-free, available without any feature):
//!
//! - [`mmio`]: the virtio-mmio register map (offsets, magic, version, status bits), used by
//!   the VMM's transport and the guest drivers;
//! - [`device`]: the nexus-io device (ID, feature bits, configuration space, WAIT values);
//! - [`net`]: the virtio-net device of the in-guest networking baseline (ID, feature bits,
//!   configuration space with its WAIT register, `virtio_net_hdr_v1`);
//! - [`generation`]: the VM generation record a VMM writes into a restored micro-guest's
//!   memory (its generation, a fresh seed, a new address).
//!
//! # Example
//!
//! ```
//! use nexus_ring::{Command, Decoder, IoWindow, RequestLayout, SegmentRef, REQUEST_HEADER_SIZE};
//!
//! # fn main() -> Result<(), nexus_ring::Error> {
//! // The VM's I/O window: 64 KiB at guest-physical 0xC000_0000; `mem` is our view of it.
//! let window = IoWindow::new(0xC000_0000, 0x1_0000)?;
//! let mut mem = vec![0u8; 0x1_0000];
//!
//! // Guest: GET bytes 0.. of "in/data.bin" into one 4 KiB buffer.
//! let key = b"in/data.bin";
//! mem[0x100..0x100 + key.len()].copy_from_slice(key);
//! let layout = RequestLayout {
//!     header: 0xC000_0000,
//!     key: Some(SegmentRef::new(0xC000_0100, key.len() as u32)),
//!     meta: None,
//!     payload: &[],
//!     response_head: SegmentRef::new(0xC000_0200, 64),
//!     response_payload: &[SegmentRef::new(0xC000_1000, 4096)],
//! };
//! let header = layout.header(7, Command::Get { offset: 0, max_len: 0 })?;
//! header.encode(&mut mem[..REQUEST_HEADER_SIZE])?;
//!
//! // Backend: decode the chain against the window, then read the key from its own mapping.
//! let request = Decoder::new(window)
//!     .decode_image(layout.descriptors(), &mem)
//!     .map_err(|rejection| rejection.error)?;
//! assert_eq!(request.id(), 7);
//! let key_at = window.offsets(request.key.unwrap())?;
//! assert_eq!(&mem[key_at], key);
//! assert_eq!(request.response.payload.total_len(), 4096);
//! # Ok(())
//! # }
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod chain;
#[cfg(feature = "control")]
pub mod control;
pub mod device;
mod error;
pub mod generation;
mod header;
pub mod limits;
pub mod mmio;
pub mod net;
mod op;
pub mod records;
mod status;
mod window;
mod wire;

#[cfg(feature = "virtio")]
pub mod queue;
#[cfg(feature = "virtio")]
mod virtio;

#[cfg(feature = "test-utils")]
pub mod mock;

pub use chain::{
    ChainDescriptor, Decoder, MAX_CHAIN_LEN, Rejection, Request, RequestLayout, ResponseTarget,
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
pub use error::{Error, Field, Result};
pub use header::{RequestHeader, ResponseHeader};
pub use op::{Command, HttpMethod, LogLevel, Op, OpRules, Outcome, flags};
#[cfg(feature = "virtio")]
pub use queue::{CheckedChain, RingFault};
pub use status::Status;
pub use window::{Cover, IoWindow, SegmentList, SegmentRef};

/// Magic of a request header: the bytes `b"NXRQ"` read as a little-endian `u32`.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"NXRQ");
/// Magic of a response header: the bytes `b"NXRS"` read as a little-endian `u32`.
pub const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"NXRS");
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of an encoded [`RequestHeader`] in bytes; the header descriptor has exactly this length.
pub const REQUEST_HEADER_SIZE: usize = 48;
/// Size of an encoded [`ResponseHeader`] in bytes; the response head descriptor is at least this
/// long, and the bytes after it form the response meta area.
pub const RESPONSE_HEADER_SIZE: usize = 40;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
