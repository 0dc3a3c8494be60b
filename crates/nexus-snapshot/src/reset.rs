// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Resetting a VM restored from a snapshot back to that snapshot **in place**, between two
//! invocations (per-invocation isolation), without building a new VM:
//!
//! - **guest RAM** ([`reset_ram`]): a [`Lazy`](crate::RestoreMode::Lazy) restore maps RAM
//!   `MAP_PRIVATE` from the memory file, so every page the guest wrote is a private anonymous
//!   copy, found in `/proc/self/pagemap` (present or swapped, and not file-backed).
//!   [`RamReset::Copy`] (the default) overwrites those copies with the file's bytes in place:
//!   the guest's mappings of them stay, so the next run touches them without a page fault — on
//!   a shadow-paging host such as PVM each fault is a VM exit of tens of microseconds — at
//!   the price of keeping them private. [`RamReset::Dirty`] drops them (`MADV_DONTNEED`): the
//!   next access reads the file's page again. [`RamReset::Whole`] drops the
//!   whole range in one call, which also unmaps the pages that were only read (they fault
//!   again on their next access). Anonymous RAM (eager, uffd and prefetch restores) cannot be
//!   reset this way: [`reset_ram`] refuses it.
//! - **the I/O window** ([`WindowImage`]): a shared memfd the backend maps too, so it has no
//!   copy-on-write to undo. The snapshot's window image (its non-zero pages) is read once;
//!   a reset compares every page allocated in the window's memfd (`SEEK_DATA`) with the image and
//!   rewrites those that differ (zero where the image has no page).
//! - **the vCPU** ([`reset_vcpu`]): any access KVM is still completing is finished, then the
//!   snapshot's [`VcpuState`] is applied again.
//!
//! Devices are the caller's: their state lives outside this crate.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use kvm_ioctls::VmFd;
use nexus_kvm::memory::GuestRegionMmap;
use nexus_kvm::{Vcpu, WindowRegion};
use vm_memory::{Bytes, GuestMemoryRegion, MemoryRegionAddress};

use crate::{PAGE_SIZE, RegionKind, Snapshot, VcpuState};

/// Errors of an in-place reset.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// A RAM region is not a private mapping of the memory file (not a lazy restore).
    #[error(
        "guest RAM at {guest_addr:#x} is not mapped from the snapshot's memory file: \
         only a lazy restore can be reset in place"
    )]
    NotFileBacked {
        /// The region's guest-physical base.
        guest_addr: u64,
    },
    /// `/proc/self/pagemap` could not be read.
    #[error("Cannot read /proc/self/pagemap")]
    Pagemap(#[source] std::io::Error),
    /// `madvise` or `mincore` failed.
    #[error("{op} failed")]
    Mm {
        /// The call.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The memory file could not be read.
    #[error("Cannot read {}", path.display())]
    Read {
        /// The memory file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot has no window, or the window given is not its size.
    #[error("the window ({found} bytes) is not the snapshot's ({expected} bytes)")]
    WindowSize {
        /// The snapshot's window size (0: none).
        expected: u64,
        /// The window given.
        found: u64,
    },
    /// The guest memory could not be accessed.
    #[error("Cannot access guest memory: {0}")]
    Memory(String),
    /// Completing the vCPU's pending access failed.
    #[error("Cannot complete the vCPU's pending access")]
    Vcpu(#[source] nexus_kvm::Error),
    /// Applying the vCPU state failed.
    #[error("Cannot apply the snapshot's vCPU state")]
    VcpuState(#[source] crate::Error),
}

/// How [`reset_ram`] puts guest RAM back to the memory file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamReset {
    /// The pages the guest wrote (found in `/proc/self/pagemap`) are overwritten in place
    /// with the memory file's bytes: the guest's mappings stay, so the next run touches them
    /// without a fault (on a shadow-paging host each such fault is an exit). The written
    /// pages stay private to the VM (their memory is not given back).
    #[default]
    Copy,
    /// The pages the guest wrote are dropped (`MADV_DONTNEED`): their memory goes back, and
    /// the next access to each faults the file's page in again.
    Dirty,
    /// The whole range, in one `madvise` (read pages fault again too).
    Whole,
}

/// What [`reset_ram`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamReport {
    /// Pages looked at.
    pub scanned_pages: u64,
    /// Written pages put back to the file's — dropped, or overwritten ([`RamReset::Copy`]);
    /// [`RamReset::Whole`]: the pages of the range.
    pub dropped_pages: u64,
    /// `madvise` or `pread` calls made (one per run of consecutive written pages).
    pub calls: u64,
}

impl RamReport {
    fn add(&mut self, other: RamReport) {
        self.scanned_pages += other.scanned_pages;
        self.dropped_pages += other.dropped_pages;
        self.calls += other.calls;
    }
}

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

fn pagemap() -> Result<&'static File, ResetError> {
    static PAGEMAP: OnceLock<File> = OnceLock::new();
    if let Some(file) = PAGEMAP.get() {
        return Ok(file);
    }
    let file = File::open("/proc/self/pagemap").map_err(ResetError::Pagemap)?;
    Ok(PAGEMAP.get_or_init(|| file))
}

fn madvise(addr: u64, len: u64, advice: libc::c_int) -> Result<(), ResetError> {
    // SAFETY: the range lies in a mapping of guest RAM this process owns; MADV_DONTNEED on a
    // private file mapping only drops this process's private copies (the next access reads
    // the file again), which is what a reset means. No Rust reference points into guest RAM
    // across this call (it is only accessed through volatile slices and by the guest).
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    if rc != 0 {
        return Err(ResetError::Mm {
            op: "madvise",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Overwrites `len` bytes of guest RAM at host address `addr` with the memory file's bytes
/// at `offset` into the region's part of the file.
fn copy_from_file(
    file: &vm_memory::FileOffset,
    offset: u64,
    addr: u64,
    len: u64,
) -> Result<(), ResetError> {
    let at = file.start() + offset;
    // SAFETY: the range lies in this process's mapping of the region (the caller found it in
    // the region, page by page) and stays mapped during the call; the VM's vCPU is stopped, so
    // nothing else writes it meanwhile, and no other Rust reference points into guest RAM (it
    // is only accessed through volatile slices and by the guest). Any byte values are valid.
    let target = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
    file.file()
        .read_exact_at(target, at)
        .map_err(|source| ResetError::Mm {
            op: "pread of the memory file",
            source,
        })
}

/// Puts what the guest wrote to one RAM region since the restore back to the memory file's
/// bytes, as `how` says. The region must be a lazy restore's (a private mapping of the memory
/// file) and its vCPU stopped.
pub fn reset_ram(region: &GuestRegionMmap, how: RamReset) -> Result<RamReport, ResetError> {
    if region.file_offset().is_none() {
        return Err(ResetError::NotFileBacked {
            guest_addr: region.start_addr().0,
        });
    }
    let host = region.as_ptr() as u64;
    let len = region.len();
    let pages = len / PAGE_SIZE;
    if how == RamReset::Whole {
        madvise(host, len, libc::MADV_DONTNEED)?;
        return Ok(RamReport {
            scanned_pages: pages,
            dropped_pages: pages,
            calls: 1,
        });
    }
    let pagemap = pagemap()?;
    let mut report = RamReport {
        scanned_pages: pages,
        ..RamReport::default()
    };
    // Entries in chunks of 4096 pages (32 KiB).
    const CHUNK: u64 = 4096;
    let mut entries = vec![0u8; (CHUNK * 8) as usize];
    let mut run: Option<(u64, u64)> = None; // (first page, count)
    let file = region.file_offset().expect("checked above");
    let flush = |run: &mut Option<(u64, u64)>, report: &mut RamReport| {
        if let Some((first, count)) = run.take() {
            let at = host + first * PAGE_SIZE;
            let bytes = count * PAGE_SIZE;
            if how == RamReset::Copy {
                copy_from_file(file, first * PAGE_SIZE, at, bytes)?;
            } else {
                madvise(at, bytes, libc::MADV_DONTNEED)?;
            }
            report.add(RamReport {
                scanned_pages: 0,
                dropped_pages: count,
                calls: 1,
            });
        }
        Ok::<(), ResetError>(())
    };
    let mut first = 0;
    while first < pages {
        let n = CHUNK.min(pages - first);
        let buf = &mut entries[..(n * 8) as usize];
        pagemap
            .read_exact_at(buf, (host / PAGE_SIZE + first) * 8)
            .map_err(ResetError::Pagemap)?;
        for (i, entry) in buf.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            let page = first + i as u64;
            let written = entry & (PM_PRESENT | PM_SWAPPED) != 0 && entry & PM_FILE == 0;
            if written {
                match &mut run {
                    Some((start, count)) if *start + *count == page => *count += 1,
                    _ => {
                        flush(&mut run, &mut report)?;
                        run = Some((page, 1));
                    }
                }
            }
        }
        first += n;
    }
    flush(&mut run, &mut report)?;
    Ok(report)
}

/// The I/O window as the snapshot has it: its non-zero pages, read once from the memory file.
#[derive(Debug)]
pub struct WindowImage {
    size: u64,
    /// (page index in the window, its bytes), by index.
    pages: Vec<(u64, Box<[u8]>)>,
}

/// What [`WindowImage::restore_into`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowReport {
    /// Window pages resident (allocated in the memfd) before the reset.
    pub resident_pages: u64,
    /// Pages rewritten because they differed from the snapshot's.
    pub rewritten_pages: u64,
}

impl WindowImage {
    /// Reads the window image of `snapshot` (fails if it has no window).
    pub fn read(snapshot: &Snapshot) -> Result<Self, ResetError> {
        let region = snapshot
            .state()
            .memory
            .regions
            .iter()
            .find(|r| r.kind == RegionKind::Window)
            .copied()
            .ok_or(ResetError::WindowSize {
                expected: 0,
                found: 0,
            })?;
        let path = snapshot.files().memory.clone();
        let read_err = |source| ResetError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(read_err)?;
        let mut pages = Vec::new();
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut offset = 0;
        while offset < region.size {
            let n = CHUNK.min(region.size - offset);
            let buf = &mut buf[..n as usize];
            file.read_exact_at(buf, region.file_offset + offset)
                .map_err(read_err)?;
            for (i, page) in buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    pages.push((offset / PAGE_SIZE + i as u64, Box::from(page)));
                }
            }
            offset += n;
        }
        Ok(WindowImage {
            size: region.size,
            pages,
        })
    }

    /// The window's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The number of non-zero pages in the image.
    pub fn nonzero_pages(&self) -> usize {
        self.pages.len()
    }

    /// Brings `window` back to the image: every page resident in it that differs from the
    /// image's (zero where the image has none) is rewritten, and every image page that is not
    /// resident is written. Neither the guest nor the backend may touch the window meanwhile.
    pub fn restore_into(&self, window: &WindowRegion) -> Result<WindowReport, ResetError> {
        if window.size() != self.size {
            return Err(ResetError::WindowSize {
                expected: self.size,
                found: window.size(),
            });
        }
        let region = window.region();
        let allocated = allocated_pages(window)?;
        let mut report = WindowReport::default();
        let zero = vec![0u8; PAGE_SIZE as usize];
        let mut current = vec![0u8; PAGE_SIZE as usize];
        let mem_err = |e: vm_memory::GuestMemoryError| ResetError::Memory(e.to_string());
        // Allocated pages (compared, rewritten if they differ) and image pages that are not
        // allocated (written), in page order.
        let mut image = self.pages.iter().peekable();
        let mut allocated = allocated.into_iter().peekable();
        loop {
            let (page, expected, is_allocated): (u64, &[u8], bool) =
                match (allocated.peek().copied(), image.peek()) {
                    (None, None) => break,
                    (Some(a), Some((p, bytes))) if a == *p => {
                        allocated.next();
                        image.next();
                        (a, &bytes[..], true)
                    }
                    (Some(a), Some((p, _))) if a < *p => {
                        allocated.next();
                        (a, &zero, true)
                    }
                    (Some(a), None) => {
                        allocated.next();
                        (a, &zero, true)
                    }
                    (_, Some((p, bytes))) => {
                        let page = *p;
                        image.next();
                        (page, &bytes[..], false)
                    }
                };
            let addr = MemoryRegionAddress(page * PAGE_SIZE);
            if is_allocated {
                report.resident_pages += 1;
                region.read_slice(&mut current, addr).map_err(mem_err)?;
                if current == expected {
                    continue;
                }
            }
            region.write_slice(expected, addr).map_err(mem_err)?;
            report.rewritten_pages += 1;
        }
        Ok(report)
    }
}

/// The pages of `window` allocated in its memfd (window-relative indices, in order), found
/// with `SEEK_DATA`/`SEEK_HOLE` over the window's range of the memfd (a page never allocated
/// reads as zero). This moves the memfd's file position, which nothing uses: the window is
/// only ever mapped.
fn allocated_pages(window: &WindowRegion) -> Result<Vec<u64>, ResetError> {
    use std::os::fd::AsRawFd;
    let fd = window.memfd().as_raw_fd();
    let start = window.memfd_offset() as i64;
    let end = start + window.size() as i64;
    let seek = |offset: i64, whence: libc::c_int| -> Result<Option<i64>, ResetError> {
        // SAFETY: lseek on a descriptor the window owns, alive while `window` is; it only
        // reads the file's page index (and sets the file position).
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(Some(at));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(ResetError::Mm {
            op: "lseek",
            source: e,
        })
    };
    let mut pages = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)?.filter(|&d| d < end) else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let page = PAGE_SIZE as i64;
        let first = (data - start) / page;
        let last = (hole - start + page - 1) / page;
        pages.extend(first as u64..last as u64);
        at = hole;
    }
    Ok(pages)
}

/// Puts a stopped vCPU of VM `vm` back into the snapshot's `state`: an access KVM is still
/// completing (the `WAIT` read the vCPU was stopped in) is finished first, so that it does
/// not land on the restored registers. The CPUID and TSC frequency are not set again: the
/// vCPU was created from the same snapshot and has them already (and KVM refuses a CPUID
/// change once a vCPU ran).
pub fn reset_vcpu(state: &VcpuState, vm: &VmFd, vcpu: &mut Vcpu) -> Result<(), ResetError> {
    vcpu.complete_pending_io().map_err(ResetError::Vcpu)?;
    let fd = vcpu.fd();
    let kvm = |op| move |e| ResetError::VcpuState(crate::Error::kvm(op)(e));
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    // Setting the control registers makes a shadow-paging host (PVM) drop the guest's page
    // tables: only when they changed (a micro-guest at CPL 3 cannot change them).
    if fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))? != state.sregs {
        fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    }
    if let Some(fpu) = &state.fpu {
        fd.set_fpu(fpu).map_err(kvm("KVM_SET_FPU"))?;
    }
    if let Some(xsave) = &state.xsave {
        crate::sys::set_xsave(vm, fd, xsave).map_err(kvm("KVM_SET_XSAVE"))?;
    }
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    }
    if let Some(dr) = &state.debug_regs {
        fd.set_debug_regs(dr).map_err(kvm("KVM_SET_DEBUGREGS"))?;
    }
    if let Some(lapic) = &state.lapic {
        fd.set_lapic(lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    }
    if !state.msrs.is_empty() {
        let msrs = kvm_bindings::Msrs::from_entries(&state.msrs).map_err(|_| {
            ResetError::VcpuState(crate::Error::Kvm {
                op: "KVM_SET_MSRS (too many entries)",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set < state.msrs.len() {
            return Err(ResetError::VcpuState(crate::Error::MsrRefused {
                vcpu: state.id,
                index: state.msrs[set].index,
            }));
        }
    }
    if let Some(events) = &state.events {
        fd.set_vcpu_events(events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestAddress};

    use super::*;

    const PAGES: u64 = 8;

    /// A region mapped `MAP_PRIVATE` from a file whose page `i` is filled with byte `i`,
    /// starting one page into the file (as a region after another one would).
    fn region() -> (GuestRegionMmap, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for page in 0..=PAGES {
            let byte = u8::try_from(page).unwrap().wrapping_sub(1);
            file.write_all(&[byte; PAGE_SIZE as usize]).unwrap();
        }
        let mapping = MmapRegionBuilder::new((PAGES * PAGE_SIZE) as usize)
            .with_file_offset(FileOffset::from_arc(
                Arc::new(file.reopen().unwrap()),
                PAGE_SIZE,
            ))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE)
            .build()
            .unwrap();
        (
            GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap(),
            file,
        )
    }

    fn page_byte(region: &GuestRegionMmap, page: u64) -> u8 {
        region
            .read_obj(MemoryRegionAddress(page * PAGE_SIZE + 7))
            .unwrap()
    }

    /// Whether the page is a private copy (written), from /proc/self/pagemap.
    fn private(region: &GuestRegionMmap, page: u64) -> bool {
        let mut entry = [0u8; 8];
        let host = region.as_ptr() as u64 + page * PAGE_SIZE;
        pagemap()
            .unwrap()
            .read_exact_at(&mut entry, host / PAGE_SIZE * 8)
            .unwrap();
        let entry = u64::from_le_bytes(entry);
        entry & PM_PRESENT != 0 && entry & PM_FILE == 0
    }

    #[test]
    fn every_mode_gives_the_files_bytes_back_and_copy_keeps_the_pages_mapped() {
        for how in [RamReset::Copy, RamReset::Dirty, RamReset::Whole] {
            let (region, _file) = region();
            // Read every page, write pages 2, 3 and 6.
            for page in 0..PAGES {
                assert_eq!(page_byte(&region, page), page as u8);
            }
            for page in [2, 3, 6] {
                region
                    .write_obj(0xeeu8, MemoryRegionAddress(page * PAGE_SIZE + 7))
                    .unwrap();
                assert!(private(&region, page));
            }
            let report = reset_ram(&region, how).unwrap();
            for page in 0..PAGES {
                assert_eq!(page_byte(&region, page), page as u8, "{how:?}, page {page}");
            }
            assert_eq!(report.scanned_pages, PAGES, "{how:?}");
            match how {
                RamReset::Copy => {
                    assert_eq!((report.dropped_pages, report.calls), (3, 2));
                    // Read back above, yet still the private copies: nothing was unmapped.
                    assert!([2, 3, 6].iter().all(|&p| private(&region, p)));
                }
                RamReset::Dirty => {
                    assert_eq!((report.dropped_pages, report.calls), (3, 2));
                    assert!([2, 3, 6].iter().all(|&p| !private(&region, p)));
                }
                RamReset::Whole => assert_eq!(report.dropped_pages, PAGES),
            }
        }
    }
}
