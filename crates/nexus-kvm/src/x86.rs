//! x86-64 boot structures: the GDT, identity page tables, and the segment and control
//! register values for 64-bit entry at CPL 3 (micro-guests) or CPL 0 (Linux).

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GDT_ADDR, LARGE_PAGE_SIZE, PAGE_SIZE, PD_ADDR, PDPT_ADDR, PML4_ADDR, PT_ADDR};
use crate::memory::GuestMemoryMmap;

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
/// Selector of the user data segment (RPL 3).
pub const USER_DATA_SELECTOR: u16 = 0x18 | 3;
/// Selector of the 64-bit user code segment (RPL 3).
pub const USER_CODE_SELECTOR: u16 = 0x20 | 3;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x28;
/// Guest-physical address of the TSS (inside the GDT page).
pub const TSS_ADDR: u64 = GDT_ADDR + 0x80;
/// Offset of the I/O permission bitmap inside the TSS (right after the 104-byte TSS).
pub const TSS_IOMAP_OFFSET: u16 = 0x68;
/// Bytes of I/O permission bitmap: one bit per port for ports `0..0x400`, all allowed.
pub const TSS_IOMAP_SIZE: u32 = 0x80;
/// The TSS limit: the TSS, the I/O bitmap, and the bitmap's terminating byte.
pub const TSS_LIMIT: u32 = TSS_IOMAP_OFFSET as u32 + TSS_IOMAP_SIZE;

const GDT_ENTRIES: usize = 7;

/// CR0 bits.
pub mod cr0 {
    /// Protected mode.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Native FPU errors.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// FXSAVE/FXRSTOR and SSE.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
}

/// EFER bits.
pub mod efer {
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
}

/// RFLAGS with the reserved bit 1 and IOPL 3.
pub const RFLAGS_IOPL3: u64 = 0x2 | (3 << 12);

/// Errors of writing boot structures to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A boot structure could not be written.
    #[error("Cannot write the {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// A range to map lies beyond what the page tables cover.
    #[error("The range {base:#x}+{size:#x} lies beyond the 4 GiB the page tables cover")]
    Unmappable {
        /// Base address.
        base: u64,
        /// Size.
        size: u64,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The GDT Nexus builds: null, kernel code/data, user data/code, a 64-bit TSS (two slots).
pub fn gdt_table() -> [u64; GDT_ENTRIES] {
    let tss_base = TSS_ADDR;
    let tss_low = gdt_entry(0x008b, tss_base as u32, TSS_LIMIT);
    let tss_high = tss_base >> 32;
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // kernel code, 64-bit
        gdt_entry(0xc093, 0, 0xfffff), // kernel data
        gdt_entry(0xc0f3, 0, 0xfffff), // user data, DPL 3
        gdt_entry(0xa0fb, 0, 0xfffff), // user code, 64-bit, DPL 3
        tss_low,
        tss_high,
    ]
}

/// The `kvm_segment` a GDT entry describes, with `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT and the TSS at [`GDT_ADDR`].
///
/// The TSS carries an I/O permission bitmap that allows ports `0..0x400` to CPL 3: besides
/// IOPL 3, some KVM implementations (PVM among them) consult the bitmap for user-mode port
/// I/O. Ports beyond the bitmap fault.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, entry) in gdt_table().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| Error::Write("GDT", e))?;
    }
    let mut tss = [0u8; TSS_LIMIT as usize + 1];
    tss[0x66..0x68].copy_from_slice(&TSS_IOMAP_OFFSET.to_le_bytes());
    tss[TSS_LIMIT as usize] = 0xff;
    mem.write_slice(&tss, GuestAddress(TSS_ADDR))
        .map_err(|e| Error::Write("TSS", e))
}

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
const FOUR_GIB: u64 = 1 << 32;

/// Identity page tables over the low 4 GiB: which ranges are mapped, and for whom.
#[derive(Debug, Clone)]
pub struct PageTables {
    user: bool,
    ranges: Vec<(u64, u64)>,
    unmap_page_zero: bool,
}

impl PageTables {
    /// Tables whose pages are user-accessible (`user`) or supervisor-only.
    pub fn new(user: bool) -> Self {
        PageTables {
            user,
            ranges: Vec::new(),
            unmap_page_zero: false,
        }
    }

    /// Maps `[base, base + size)` (rounded out to 2 MiB pages).
    pub fn map(&mut self, base: u64, size: u64) -> Result<&mut Self> {
        let end = base.checked_add(size).filter(|end| *end <= FOUR_GIB);
        match end {
            Some(_) => {
                self.ranges.push((base, size));
                Ok(self)
            }
            None => Err(Error::Unmappable { base, size }),
        }
    }

    /// Leaves the page at address 0 unmapped so that null dereferences fault.
    pub fn unmap_page_zero(&mut self) -> &mut Self {
        self.unmap_page_zero = true;
        self
    }

    fn covers(&self, addr: u64) -> bool {
        self.ranges
            .iter()
            .any(|(b, s)| addr + LARGE_PAGE_SIZE > *b && addr < b + s)
    }

    /// Writes PML4, PDPT, four PDs and the first-2-MiB page table; returns the CR3 value.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<u64> {
        let flags = PTE_PRESENT | PTE_WRITABLE | if self.user { PTE_USER } else { 0 };
        let w = |what, val: u64, addr: u64| {
            mem.write_obj(val, GuestAddress(addr))
                .map_err(|e| Error::Write(what, e))
        };
        w("page tables", PDPT_ADDR | flags, PML4_ADDR)?;
        for i in 1..512u64 {
            w("page tables", 0, PML4_ADDR + i * 8)?;
        }
        for gib in 0..512u64 {
            let entry = if gib < 4 {
                (PD_ADDR + gib * PAGE_SIZE) | flags
            } else {
                0
            };
            w("page tables", entry, PDPT_ADDR + gib * 8)?;
        }
        let mut pds = vec![0u64; 4 * 512];
        for (i, pde) in pds.iter_mut().enumerate() {
            let addr = i as u64 * LARGE_PAGE_SIZE;
            if self.covers(addr) {
                *pde = addr | flags | PTE_LARGE;
            }
        }
        if self.unmap_page_zero && pds[0] != 0 {
            pds[0] = PT_ADDR | flags;
            for i in 0..512u64 {
                let pte = if i == 0 { 0 } else { (i * PAGE_SIZE) | flags };
                w("page tables", pte, PT_ADDR + i * 8)?;
            }
        }
        let bytes: Vec<u8> = pds.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(PD_ADDR))
            .map_err(|e| Error::Write("page tables", e))?;
        Ok(PML4_ADDR)
    }
}

/// Fills `sregs` for 64-bit mode with paging through `cr3`, at CPL 3 (`user`) or CPL 0.
pub fn long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64, user: bool) {
    let gdt = gdt_table();
    let (code_sel, data_sel) = if user {
        (USER_CODE_SELECTOR, USER_DATA_SELECTOR)
    } else {
        (KERNEL_CODE_SELECTOR, KERNEL_DATA_SELECTOR)
    };
    let code = segment_from_gdt(gdt[(code_sel >> 3) as usize], code_sel);
    let data = segment_from_gdt(gdt[(data_sel >> 3) as usize], data_sel);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    let mut tr = segment_from_gdt(gdt[(TSS_SELECTOR >> 3) as usize], TSS_SELECTOR);
    tr.base = TSS_ADDR;
    sregs.tr = tr;
    sregs.ldt = kvm_segment {
        type_: 2,
        present: 1,
        unusable: 0,
        limit: 0xffff,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    // No IDT: any exception escalates to a triple fault, which the VMM reports.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    sregs.cr3 = cr3;
    sregs.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT;
    sregs.efer = efer::LME | efer::LMA;
}

/// Fills `sregs` for 32-bit protected mode with flat segments and paging off (PVH entry).
pub fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: KERNEL_CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: KERNEL_DATA_SELECTOR,
        type_: 0x3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    let mut tr = segment_from_gdt(gdt_table()[(TSS_SELECTOR >> 3) as usize], TSS_SELECTOR);
    tr.base = TSS_ADDR;
    sregs.tr = tr;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.cr0 = cr0::PE | cr0::ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode_as_intended() {
        let gdt = gdt_table();
        let cs = segment_from_gdt(gdt[4], USER_CODE_SELECTOR);
        assert_eq!(
            (cs.dpl, cs.l, cs.db, cs.present, cs.s, cs.type_),
            (3, 1, 0, 1, 1, 0xb)
        );
        let ds = segment_from_gdt(gdt[3], USER_DATA_SELECTOR);
        assert_eq!((ds.dpl, ds.db, ds.type_, ds.limit), (3, 1, 3, 0xffff_ffff));
        let kcs = segment_from_gdt(gdt[1], KERNEL_CODE_SELECTOR);
        assert_eq!((kcs.dpl, kcs.l), (0, 1));
        let tss = segment_from_gdt(gdt[5], TSS_SELECTOR);
        assert_eq!(
            (tss.type_, tss.s, tss.present, tss.limit),
            (0xb, 0, 1, TSS_LIMIT)
        );
        assert_eq!(tss.base, TSS_ADDR);
    }

    #[test]
    fn page_tables_map_only_what_was_asked() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let mut pt = PageTables::new(true);
        pt.map(0, 4 << 20)
            .unwrap()
            .map(0xC000_0000, 1 << 20)
            .unwrap()
            .unmap_page_zero();
        assert_eq!(pt.write(&mem).unwrap(), PML4_ADDR);
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_ADDR) & !0xfff, PDPT_ADDR);
        assert_eq!(read(PDPT_ADDR + 3 * 8) & !0xfff, PD_ADDR + 3 * PAGE_SIZE);
        // First 2 MiB through the 4 KiB table, page 0 absent.
        assert_eq!(read(PD_ADDR) & !0xfff, PT_ADDR);
        assert_eq!(read(PT_ADDR), 0);
        assert_eq!(read(PT_ADDR + 8), 0x1000 | 0x7);
        // 2..4 MiB: one large user page.
        assert_eq!(read(PD_ADDR + 8), (2 << 20) | 0x87);
        // 4..6 MiB: not mapped.
        assert_eq!(read(PD_ADDR + 16), 0);
        // 3 GiB: the window, mapped.
        assert_eq!(read(PD_ADDR + 3 * PAGE_SIZE), 0xC000_0000 | 0x87);
        assert!(pt.map(FOUR_GIB - 4096, 8192).is_err());
    }
}
