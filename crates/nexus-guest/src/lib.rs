//! The Nexus guest driver.
//!
//! This crate runs **inside** a Nexus VM. It is the driver of the nexus-io device — a
//! virtio-mmio device whose virtqueue and payload buffers live in the VM's I/O window, shared
//! with the host's backend — and the runtime for *micro-guests*: static, `no_std` x86-64 ELF
//! programs that the VMM starts directly in 64-bit mode at CPL 3 (`docs/micro-guest-abi.md`,
//! `docs/nexus-io.md` and `docs/protocol.md` in the Nexus repository are the contracts).
//!
//! - [`function`](mod@function): the function SDK — write a handler, and `function!` (feature
//!   `rt`) makes it a micro-guest that serves invocations (NEXT → handler → COMPLETE, error
//!   documents, the output key stored write-behind from the window, two VM exits per warm
//!   invocation), or runs once over stored objects. `docs/writing-functions.md` in the Nexus
//!   repository is the guide.
//! - [`Nexus`]: the client a function uses — `get`/`get_range` (zero copy into the window),
//!   `put`/`put_buf`/`put_behind`, `head`, `delete`, `list`, `invoke`, `http`, `flush`,
//!   `log`, and the runtime loop `next_invocation`/`complete`/`complete_and_next`. Errors are
//!   one [`Error`] enum mirroring the protocol's statuses plus the driver's own.
//! - [`device`]: [`NexusIo`](device::NexusIo), the virtio-mmio driver — negotiation, the
//!   split virtqueue ([`virtqueue`]) in the window, the doorbell, the bounded poll and the
//!   WAIT register, and the reset when the backend is gone.
//! - [`window`]: the window's mapping, its buffer allocator and [`WindowBuf`].
//! - [`mmio`]: the [`Registers`](mmio::Registers) trait (how the driver reaches the device)
//!   and [`MmioRegisters`](mmio::MmioRegisters), volatile access through a pointer — the
//!   identity-mapped address in a micro-guest, a `/dev/mem` mapping in a Linux process.
//!   `Registers` and [`WindowMapping`] are the whole transport seam: the doorbell is a
//!   `QueueNotify` write, the wait a `WAIT` read, and the window is wherever the mapping says
//!   (the `nexus-loopback` crate implements both in a host process, over the VMM's own
//!   device model).
//! - `linux` (feature `linux`, Linux only, with `std`): the Linux user-space driver —
//!   `linux::open()` reads `nexus.io=`/`nexus.window=` from `/proc/cmdline`, maps both from
//!   `/dev/mem`, and returns the [`Nexus`] client; one process of the guest owns the device
//!   at a time (an exclusive `flock`; the others get `linux::Error::Busy`), and a WAIT read
//!   stalls the whole vCPU. `docs/linux-guests.md` in the Nexus repository is the guide.
//!
//! - [`io`]: [`ObjectIo`](io::ObjectIo), the one I/O interface of functions, implemented by
//!   [`Nexus`] and — feature `net` — by the in-guest S3 client, so one function source
//!   builds for both paths.
//! - `net` (feature `net`): the in-guest network fabric Nexus is measured against — a
//!   virtio-net driver, smoltcp, an HTTP/1.1 client and server, and an S3 client with
//!   SigV4. Its credentials come in the boot arguments; TLS is off.
//!
//! - [`generation`]: the VM generation record the VMM rewrites after every restore from a
//!   snapshot, and [`GenerationSource`](generation::GenerationSource) to read it.
//! - [`boot`]: the boot-info block ([`BootInfo`]) — validated once, then safe accessors for
//!   the heap, the I/O window, the device, the arguments (as `&str`) and the memory map.
//! - [`heap`]: [`FreeListHeap`](heap::FreeListHeap), the first-fit coalescing allocator
//!   behind the runtime's global allocator.
//! - `rt` (feature `rt`, on by default, x86-64 only): console ([`print!`], [`println!`]),
//!   [`rt::exit`], port I/O, the global allocator, [`rt::nexus`] (the guest's client) and
//!   [`entry!`], which defines a guest binary's entry point, panic handler, allocator and C
//!   memory functions.
//! - `build` (feature `build`, for a guest package's build script, with `std`): the linker
//!   script and link arguments of micro-guests — `build.rs` is
//!   `nexus_guest::build::link_micro_guest();`.
//!
//! The library defines no lang items and no `#[no_mangle]` symbols, so it also builds and
//! links in ordinary `std` programs (its own tests, a workspace's `cargo test`); the
//! [`entry!`] macro adds them to the one binary that is the guest.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use nexus_guest::{BootInfo, println};
//!
//! nexus_guest::entry!(main);
//!
//! fn main(boot: &BootInfo) -> u32 {
//!     println!("Hello from a Nexus micro-guest!");
//!     for (i, arg) in boot.args().enumerate() {
//!         println!("arg[{i}] = {arg}");
//!     }
//!     0 // the VM's exit code
//! }
//! ```

#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;
// The build-script helpers (feature `build`) run on the host, and the Linux driver (feature
// `linux`) in a Linux process: both with `std`.
#[cfg(all(any(feature = "build", feature = "linux"), not(test)))]
extern crate std;

pub mod boot;
#[cfg(feature = "build")]
pub mod build;
mod client;
pub mod device;
mod error;
pub mod function;
pub mod generation;
pub mod heap;
pub mod io;
#[cfg(all(feature = "linux", target_os = "linux"))]
pub mod linux;
pub mod mmio;
#[cfg(feature = "net")]
pub mod net;
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub mod rt;
#[cfg(any(test, all(feature = "rt", target_arch = "x86_64")))]
mod sync;
pub mod virtqueue;
pub mod window;

pub use boot::{Args, BootInfo, BootInfoError, MemoryKind, MemoryMapEntry};
pub use client::{Completion, HttpResponse, Invocation, InvokeResult, ListPage, Nexus, ObjectInfo};
pub use error::{Error, Report, Result};
pub use window::{WindowBuf, WindowMapping};

/// The protocol crate, re-exported: [`LogLevel`], [`HttpMethod`], [`Outcome`] and the types
/// of hand-built requests.
pub use nexus_ring;
pub use nexus_ring::{HttpMethod, LogLevel, Outcome};

#[cfg(test)]
mod fake;
