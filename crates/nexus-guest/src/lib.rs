//! The Nexus guest driver.
//!
//! This crate runs **inside** a Nexus VM. Today it holds the runtime for *micro-guests*:
//! static, `no_std` x86-64 ELF programs that the VMM starts directly in 64-bit mode at CPL 3
//! (`docs/micro-guest-abi.md` in the Nexus repository is the contract). Later it will also
//! speak the `nexus-ring` protocol to the nexus-io device, in micro-guests and, through a
//! `linux` feature, in Linux guests.
//!
//! - [`boot`]: the boot-info block ([`BootInfo`]) — validated once, then safe accessors for
//!   the heap, the I/O window, the device, the arguments (as `&str`) and the memory map.
//! - [`heap`]: [`FreeListHeap`](heap::FreeListHeap), the first-fit coalescing allocator
//!   behind the runtime's global allocator.
//! - `rt` (feature `rt`, on by default, x86-64 only): console ([`print!`], [`println!`]),
//!   [`rt::exit`], port I/O, the global allocator and [`entry!`], which defines a guest
//!   binary's entry point, panic handler, allocator and C memory functions.
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

pub mod boot;
pub mod heap;
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub mod rt;
#[cfg(any(test, all(feature = "rt", target_arch = "x86_64")))]
mod sync;

pub use boot::{Args, BootInfo, BootInfoError, MemoryKind, MemoryMapEntry};
