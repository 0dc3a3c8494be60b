// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The pages the vCPUs of a snapshot need for their first instructions: for each vCPU, the
//! pages its instruction and stack pointers, descriptor tables, TSS and privilege-level-0
//! stack are on, and the page-table pages that translate them, found by walking the guest's
//! saved page tables (4-level long-mode paging; without paging, addresses are physical).
//!
//! A prefetch restore installs them before the VM is returned, so that the guest's first
//! instructions do not wait for the fault handler. The page tables are guest data: the walk
//! reads them from the memory file with bounds-checked reads, stops at the first entry that
//! is not present or not in RAM, and never follows more than four levels.

use std::os::unix::fs::FileExt;

use crate::PAGE_SIZE;
use crate::memfile::MemoryFile;
use crate::state::{MemoryLayout, RegionKind, SnapshotState};

const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
/// Bits 12..52 of a page-table entry or of CR3: the physical address of the next level.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The page-list index of the RAM page at guest-physical `gpa`.
fn ram_page(layout: &MemoryLayout, gpa: u64) -> Option<u64> {
    layout
        .regions
        .iter()
        .find(|r| r.kind == RegionKind::Ram && gpa >= r.guest_addr && gpa - r.guest_addr < r.size)
        .map(|r| r.first_page() + (gpa - r.guest_addr) / PAGE_SIZE)
}

/// The 8-byte entry at guest-physical `gpa` (zero if its page is not stored).
fn entry(layout: &MemoryLayout, memory: &MemoryFile, gpa: u64) -> Option<u64> {
    let page = ram_page(layout, gpa)?;
    if !memory.bitmap.get(page) {
        return Some(0);
    }
    let mut buf = [0u8; 8];
    let offset = (page + 1) * PAGE_SIZE + (gpa % PAGE_SIZE);
    memory.file.read_exact_at(&mut buf, offset).ok()?;
    Some(u64::from_le_bytes(buf))
}

/// Translates `va` through the page tables at `cr3`, pushing every page-table page read and
/// the final page onto `pages`. Returns the guest-physical address.
fn walk(
    layout: &MemoryLayout,
    memory: &MemoryFile,
    cr3: u64,
    va: u64,
    pages: &mut Vec<u64>,
) -> Option<u64> {
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4u32).rev() {
        pages.push(ram_page(layout, table)?);
        let index = (va >> (12 + 9 * level)) & 0x1ff;
        let e = entry(layout, memory, table + index * 8)?;
        if e & PRESENT == 0 {
            return None;
        }
        let base = e & ADDR_MASK;
        if level == 0 || (e & HUGE != 0 && level <= 2) {
            // A 4 KiB page, or a 2 MiB / 1 GiB one (bits below the level's size are the
            // offset, so the low bits of `base` must be cleared).
            let size = 1u64 << (12 + 9 * level);
            let gpa = (base & !(size - 1)) | (va & (size - 1));
            pages.push(ram_page(layout, gpa)?);
            return Some(gpa);
        }
        table = base;
    }
    None
}

/// The guest-physical address of `va` for a vCPU in `sregs`, pushing the pages read to
/// translate it and its own page onto `pages`.
fn translate(
    layout: &MemoryLayout,
    memory: &MemoryFile,
    sregs: &kvm_bindings::kvm_sregs,
    va: u64,
    pages: &mut Vec<u64>,
) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        pages.push(ram_page(layout, va)?);
        Some(va)
    } else if sregs.efer & EFER_LMA != 0 {
        walk(layout, memory, sregs.cr3, va, pages)
    } else {
        None
    }
}

/// The page-list indices of the pages the snapshot's vCPUs need first (deduplicated, in page
/// order): for each vCPU, the pages of its instruction pointer, stack pointer, GDT, IDT and
/// TSS, and of the stack its TSS names for privilege-level 0 (where events are delivered),
/// with the page tables that map them.
pub(crate) fn first_pages(state: &SnapshotState, memory: &MemoryFile) -> Vec<u64> {
    let layout = &state.memory;
    let mut pages = Vec::new();
    for v in &state.vcpus {
        let s = &v.sregs;
        let mut addresses = vec![v.regs.rip, v.regs.rsp, s.gdt.base, s.tr.base];
        if s.idt.limit > 0 {
            addresses.push(s.idt.base);
        }
        for va in addresses {
            translate(layout, memory, s, va, &mut pages);
        }
        // RSP0 is the 8 bytes at offset 4 of the 64-bit TSS; the stack grows down from it.
        let rsp0 = translate(layout, memory, s, s.tr.base + 4, &mut pages)
            .and_then(|gpa| entry_unaligned(layout, memory, gpa));
        if let Some(rsp0) = rsp0.filter(|&r| r >= 8) {
            translate(layout, memory, s, rsp0 - 8, &mut pages);
        }
    }
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// The 8 bytes at guest-physical `gpa`, inside one page (`None` if they straddle two).
fn entry_unaligned(layout: &MemoryLayout, memory: &MemoryFile, gpa: u64) -> Option<u64> {
    if gpa % PAGE_SIZE > PAGE_SIZE - 8 {
        return None;
    }
    entry(layout, memory, gpa)
}
