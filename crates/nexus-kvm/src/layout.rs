//! The guest-physical memory layout of a Nexus VM.
//!
//! ```text
//! 0x0000_0000 ─┬─ low RAM ─────────────── boot structures, image, heap, stack
//!              │
//! 0xC000_0000 ─┼─ I/O window ──────────── memfd-backed, shared with the backend (≤ 512 MiB)
//! 0xE000_0000 ─┼─ MMIO hole ───────────── virtio-mmio devices, 4 KiB each
//! 0xFEC0_0000 ─┼─ (IOAPIC, LAPIC: never used for RAM)
//! 0x1_0000_0000┴─ high RAM ────────────── the part of RAM beyond 3 GiB, if any
//! ```
//!
//! The first 64 KiB of low RAM hold the structures the loaders build; for micro-guests
//! `docs/micro-guest-abi.md` documents every address.

use vm_memory::GuestAddress;

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large (2 MiB) page.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// Guest-physical address where RAM starts.
pub const RAM_START: u64 = 0;
/// End of the low RAM region (exclusive): RAM beyond it continues at [`HIGH_RAM_START`].
pub const LOW_RAM_END: u64 = 0xC000_0000;
/// Where RAM beyond [`LOW_RAM_END`] continues.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Guest-physical base of the I/O window.
pub const WINDOW_START: u64 = 0xC000_0000;
/// Largest I/O window.
pub const WINDOW_MAX_SIZE: u64 = 0x2000_0000;

/// Start of the MMIO hole for devices.
pub const MMIO_START: u64 = 0xE000_0000;
/// End of the MMIO hole (exclusive).
pub const MMIO_END: u64 = 0xFEC0_0000;
/// Size of one virtio-mmio device's register block (`nexus_ring::mmio::BLOCK_SIZE`): the
/// size of a slot in the MMIO hole.
pub const MMIO_DEVICE_SIZE: u64 = nexus_ring::mmio::BLOCK_SIZE as u64;

/// GDT (and TSS) page.
pub const GDT_ADDR: u64 = 0x1000;
/// Boot-info block for micro-guests; `hvm_start_info` for PVH; `boot_params` for bzImage.
pub const BOOT_INFO_ADDR: u64 = 0x2000;
/// Offset of a micro-guest's VM generation record from [`BOOT_INFO_ADDR`]: right after the
/// 128-byte boot-info block, before the memory map (`nexus_ring::generation`; the boot-info
/// field `generation_offset` holds this value).
pub const GENERATION_OFFSET: u64 = 0x80;
/// Argument area for micro-guests (argv array and bytes); the kernel command line for Linux.
pub const ARGS_ADDR: u64 = 0x3000;
/// End of the argument area (exclusive).
pub const ARGS_END: u64 = 0x9000;
/// Level-4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xA000;
/// First of the four page directories that map the low 4 GiB.
pub const PD_ADDR: u64 = 0xB000;
/// Page table for the first 2 MiB (4 KiB pages, page 0 not present).
pub const PT_ADDR: u64 = 0xF000;
/// End of the boot structures (exclusive): nothing may be loaded below it.
pub const BOOT_STRUCTS_END: u64 = 0x1_0000;

/// Lowest address a micro-guest image may use.
pub const IMAGE_BASE: u64 = 0x10_0000;
/// Stack size given to micro-guests.
pub const STACK_SIZE: u64 = 0x10_0000;

/// Port of the 8250 console (COM1).
pub const SERIAL_PORT: u16 = 0x3F8;
/// Number of ports of the 8250.
pub const SERIAL_PORT_LEN: u16 = 8;
/// Exit port: a 32-bit write ends the guest with that exit code.
pub const EXIT_PORT: u16 = 0xF4;
/// Console-write port: a 32-bit write of the address of a `{ addr: u64, len: u64 }` record
/// prints that many bytes (at most [`CONSOLE_WRITE_MAX`]) with a single exit.
pub const CONSOLE_WRITE_PORT: u16 = 0xF5;
/// Largest string one console write may print.
pub const CONSOLE_WRITE_MAX: u64 = 0x1_0000;

/// Smallest guest RAM accepted.
pub const MIN_RAM_SIZE: u64 = 4 * 0x10_0000;

/// The MMIO base of the `index`th device in the MMIO hole.
pub const fn mmio_device_base(index: u64) -> GuestAddress {
    GuestAddress(MMIO_START + index * MMIO_DEVICE_SIZE)
}
