//! Linux guests: an ELF `vmlinux` started through its PVH entry, or a bzImage started through
//! the 64-bit Linux boot protocol, each with an optional initramfs and a command line.
//!
//! [`load`] detects the kernel's format from the file (ELF magic: PVH; `HdrS` at offset
//! `0x202`: bzImage), loads it with linux-loader, places the initramfs and the command line,
//! and writes the boot structures where [`crate::layout`] reserves room for them:
//!
//! | address | what |
//! |---|---|
//! | [`GDT_ADDR`] | the GDT and TSS ([`x86::write_gdt`]) |
//! | [`BOOT_INFO_ADDR`] | `hvm_start_info` (PVH) or `boot_params`, the zero page (bzImage) |
//! | [`CMDLINE_ADDR`] | the command line, NUL-terminated |
//! | [`PVH_MEMMAP_ADDR`] | the PVH memory map |
//! | [`PVH_MODLIST_ADDR`] | the PVH module list (the initramfs) |
//! | [`BOOT_STACK_TOP`] | the initial stack pointer |
//! | [`PML4_ADDR`] | identity page tables over low RAM (bzImage only) |
//! | top of low RAM | the initramfs, page-aligned, as high as the kernel allows |
//!
//! [`setup_vcpu`] then sets the boot vCPU's registers: for PVH, 32-bit protected mode with
//! paging off and EBX holding the `hvm_start_info` address (the PVH boot ABI); for a bzImage,
//! 64-bit mode at CPL 0 on identity page tables, entering at the kernel's load address +
//! `0x200` with RSI holding the `boot_params` address (the 64-bit boot protocol).
//! [`add_serial`] wires COM1 with its interrupt.
//!
//! # Memory map
//!
//! Linux learns about guest memory from an e820 map, built by [`memory_map`] the way
//! Firecracker and vmm-reference build it: RAM below the EBDA (`0..0x9fc00`), RAM from 1 MiB
//! to the end of low RAM, RAM beyond 4 GiB if any, and **the I/O window as reserved** — so
//! Linux never allocates it, while `/dev/mem` may still map it (it is not RAM and no driver
//! claims it). The MMIO hole is left out of the map, a hole as on real hardware.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use linux_loader::cmdline::{self, Cmdline};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{self, BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::{
    ARGS_ADDR, ARGS_END, BOOT_INFO_ADDR, GDT_ADDR, HIGH_RAM_START, PAGE_SIZE, PML4_ADDR,
    SERIAL_PORT, SERIAL_PORT_LEN, WINDOW_START,
};
use crate::memory::{GuestMemoryMmap, MemoryConfig, VmMemory};
use crate::serial::{Console, SerialDevice, SerialIrq};
use crate::vm::{BusKind, Vm};
use crate::x86::{self, PageTables};

/// Start of the Extended BIOS Data Area: the first RAM entry ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of RAM above the real-mode and BIOS area; kernels must load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (the I/O window).
pub const E820_RESERVED: u32 = 2;

/// The kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = ARGS_ADDR;
/// Bytes reserved for the command line, NUL included.
pub const CMDLINE_AREA_SIZE: u64 = 0x2000;
/// The PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_ADDR: u64 = CMDLINE_ADDR + CMDLINE_AREA_SIZE;
/// The PVH module list (`hvm_modlist_entry` array; the initramfs is the first module).
pub const PVH_MODLIST_ADDR: u64 = PVH_MEMMAP_ADDR + PAGE_SIZE;
/// Initial stack pointer: the top of the argument area. Both entry paths switch to a stack
/// of their own within a few instructions.
pub const BOOT_STACK_TOP: u64 = ARGS_END;
/// Longest PVH command line, NUL included: x86's `COMMAND_LINE_SIZE`.
pub const PVH_CMDLINE_MAX: usize = 2048;
/// The serial console's interrupt (COM1's ISA IRQ).
pub const SERIAL_IRQ: u32 = 4;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `setup_header.header`: `"HdrS"`.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.type_of_loader`: undefined loader.
const LOADER_TYPE_OTHER: u8 = 0xff;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the `HdrS` magic in a bzImage.
const HDRS_OFFSET: u64 = 0x202;
/// Offset of the 64-bit entry point from the protected-mode kernel's start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `loadflags`: the protected-mode kernel loads at 1 MiB or above.
const LOADED_HIGH: u8 = 1;
/// `xloadflags`: the kernel has the 64-bit entry point at `0x200`.
const XLF_KERNEL_64: u16 = 1;
/// Oldest boot protocol with `xloadflags` (2.12).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Highest initramfs address for kernels whose header does not say (protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;
/// Most e820 entries the zero page holds.
const E820_MAX_ENTRIES: usize = 128;
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// The LAPIC's LINT0 and LINT1 registers and the delivery modes wired to them.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors of loading a Linux kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be opened.
    #[error("Cannot open the kernel {}", .path.display())]
    OpenKernel {
        /// The kernel file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel file could not be read.
    #[error("Cannot read the kernel {}", .path.display())]
    ReadKernel {
        /// The kernel file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel file is neither an ELF file nor a bzImage.
    #[error("The kernel {} is neither an ELF vmlinux nor a bzImage", .path.display())]
    UnknownFormat {
        /// The kernel file.
        path: PathBuf,
    },
    /// The ELF kernel's headers are malformed.
    #[error("The ELF kernel {} is malformed: {reason}", .path.display())]
    InvalidElf {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The ELF kernel has no PVH entry point.
    #[error(
        "The ELF kernel {} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with \
         CONFIG_PVH=y, or boot its bzImage",
        .path.display()
    )]
    NoPvhNote {
        /// The kernel file.
        path: PathBuf,
    },
    /// The bzImage cannot be booted through the 64-bit boot protocol.
    #[error("The bzImage {} cannot be booted: {reason}", .path.display())]
    UnsupportedBzImage {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The kernel does not fit the RAM it may use.
    #[error(
        "The kernel {} needs guest memory {start:#x}..{end:#x}, outside the RAM a kernel may \
         use ({min:#x}..{ram_end:#x})",
        .path.display(),
        min = HIMEM_START
    )]
    KernelDoesNotFit {
        /// The kernel file.
        path: PathBuf,
        /// First byte the kernel needs.
        start: u64,
        /// One past the last byte the kernel needs.
        end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// linux-loader refused the kernel.
    #[error("Cannot load the kernel {}", .path.display())]
    Loader {
        /// The kernel file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: loader::Error,
    },
    /// The initramfs file could not be opened.
    #[error("Cannot open the initramfs {}", .path.display())]
    OpenInitrd {
        /// The initramfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The initramfs could not be read into guest memory.
    #[error("Cannot read the initramfs {} into guest memory", .path.display())]
    ReadInitrd {
        /// The initramfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: GuestMemoryError,
    },
    /// The initramfs does not fit between the kernel and the highest address it may occupy.
    #[error(
        "The initramfs {} ({size} bytes) does not fit in guest RAM between the kernel's end \
         {kernel_end:#x} and {limit:#x}",
        .path.display()
    )]
    InitrdTooLarge {
        /// The initramfs file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest end address the initramfs may have.
        limit: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("The kernel command line is {len} bytes long; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The longest accepted, without the terminating NUL.
        max: usize,
    },
    /// The command line is not valid (for example, not printable ASCII).
    #[error("Invalid kernel command line")]
    InvalidCmdline(#[source] cmdline::Error),
    /// The command line could not be written.
    #[error("Cannot write the kernel command line to guest memory")]
    WriteCmdline(#[source] loader::Error),
    /// The boot parameters could not be written.
    #[error("Cannot write the boot parameters to guest memory")]
    BootParams(#[source] configurator::Error),
    /// Guest memory could not be written.
    #[error("Cannot write the {0} to guest memory")]
    Memory(&'static str, #[source] GuestMemoryError),
    /// The GDT or page tables could not be written.
    #[error("Cannot write the GDT or page tables")]
    BootStructures(#[from] x86::Error),
    /// The serial port's interrupt eventfd could not be created.
    #[error("Cannot create the serial port's interrupt eventfd")]
    SerialEventFd(#[source] io::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxConfig {
    /// An ELF `vmlinux` with a PVH note, or a bzImage.
    pub kernel: PathBuf,
    /// An initramfs (any format the kernel unpacks), if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (printable ASCII).
    pub cmdline: String,
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// An ELF `vmlinux` through its PVH entry: 32-bit protected mode, paging off.
    Pvh,
    /// A bzImage through the 64-bit Linux boot protocol.
    BzImage,
}

/// Where [`load`] put the kernel and its boot structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxEntry {
    /// How the kernel is entered.
    pub protocol: BootProtocol,
    /// Entry point (guest-physical).
    pub entry: u64,
    /// `hvm_start_info` (PVH) or `boot_params` (bzImage).
    pub boot_info: u64,
    /// CR3 of the identity page tables (bzImage); PVH starts with paging off.
    pub page_tables: Option<u64>,
    /// Initial stack pointer.
    pub stack: u64,
    /// Where the kernel was loaded.
    pub kernel_start: u64,
    /// One past the last byte the kernel needs (for a bzImage, including the room its
    /// decompressor uses).
    pub kernel_end: u64,
    /// The command line.
    pub cmdline: u64,
    /// The initramfs: (address, size).
    pub initrd: Option<(u64, u64)>,
}

/// One entry of the e820 map (or of the PVH memory map, which has the same meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First byte.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map a Linux guest with memory `config` is given (see the module docs).
pub fn memory_map(config: &MemoryConfig) -> Vec<MemoryMapEntry> {
    let low_end = config.low_ram_size();
    let mut map = vec![MemoryMapEntry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    if low_end > HIMEM_START {
        map.push(MemoryMapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if config.window_size > 0 {
        map.push(MemoryMapEntry {
            addr: WINDOW_START,
            size: config.window_size,
            kind: E820_RESERVED,
        });
    }
    for (addr, size) in config.ram_ranges() {
        if addr.0 >= HIGH_RAM_START {
            map.push(MemoryMapEntry {
                addr: addr.0,
                size,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The kernel as placed in guest memory.
struct LoadedKernel {
    entry: u64,
    start: u64,
    end: u64,
    header: Option<setup_header>,
}

/// Loads the kernel, initramfs and command line `config` names into `mem`, and writes the
/// boot structures for the kernel's boot protocol.
pub fn load(mem: &VmMemory, config: &LinuxConfig) -> Result<LinuxEntry> {
    let path = config.kernel.as_path();
    let mut kernel = File::open(path).map_err(|source| Error::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let protocol = detect(&kernel, path)?;
    let guest = mem.guest();
    let memory = mem.config();
    let low_end = memory.low_ram_size();
    clear(
        guest,
        BOOT_INFO_ADDR,
        ARGS_END - BOOT_INFO_ADDR,
        "boot structures",
    )?;
    let loaded = match protocol {
        BootProtocol::Pvh => load_elf(guest, &mut kernel, path, low_end)?,
        BootProtocol::BzImage => load_bzimage(guest, &mut kernel, path, low_end)?,
    };

    // The command line.
    let max = match &loaded.header {
        None => PVH_CMDLINE_MAX - 1,
        Some(hdr) if hdr.version >= 0x0206 => hdr.cmdline_size as usize,
        Some(_) => 255,
    }
    .min(CMDLINE_AREA_SIZE as usize - 1);
    let len = config.cmdline.trim().len();
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    let mut cmdline = Cmdline::new(max + 1).map_err(Error::InvalidCmdline)?;
    if !config.cmdline.trim().is_empty() {
        cmdline
            .insert_str(&config.cmdline)
            .map_err(Error::InvalidCmdline)?;
    }
    loader::load_cmdline(guest, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(Error::WriteCmdline)?;

    // The initramfs, as high as the kernel allows.
    let limit = match &loaded.header {
        None => low_end,
        Some(hdr) => {
            let max = if hdr.version >= 0x0203 {
                hdr.initrd_addr_max
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            low_end.min(u64::from(max) + 1)
        }
    };
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(guest, path, loaded.end, limit)?),
        None => None,
    };

    let map = memory_map(&memory);
    let page_tables = match loaded.header {
        None => {
            write_pvh_start_info(guest, &map, initrd)?;
            None
        }
        Some(hdr) => {
            write_boot_params(guest, hdr, &map, initrd)?;
            let mut tables = PageTables::new(false);
            tables.map(0, low_end)?;
            Some(tables.write(guest)?)
        }
    };
    x86::write_gdt(guest)?;
    Ok(LinuxEntry {
        protocol,
        entry: loaded.entry,
        boot_info: BOOT_INFO_ADDR,
        page_tables,
        stack: BOOT_STACK_TOP,
        kernel_start: loaded.start,
        kernel_end: loaded.end,
        cmdline: CMDLINE_ADDR,
        initrd,
    })
}

/// Reads exactly `buf.len()` bytes at `offset`; `Ok(false)` if the file is shorter.
fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(Error::ReadKernel {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn detect(file: &File, path: &Path) -> Result<BootProtocol> {
    let mut magic = [0u8; 4];
    if read_at(file, path, &mut magic, 0)? && magic == ELF_MAGIC {
        return Ok(BootProtocol::Pvh);
    }
    if read_at(file, path, &mut magic, HDRS_OFFSET)? && u32::from_le_bytes(magic) == HDRS_MAGIC {
        return Ok(BootProtocol::BzImage);
    }
    Err(Error::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// One `PT_LOAD` segment of an ELF kernel.
struct Segment {
    addr: u64,
    file_size: u64,
    mem_size: u64,
}

fn elf_segments(file: &File, path: &Path) -> Result<Vec<Segment>> {
    let invalid = |reason| Error::InvalidElf {
        path: path.to_path_buf(),
        reason,
    };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let mut ehdr = [0u8; 64];
    if !read_at(file, path, &mut ehdr, 0)? {
        return Err(invalid("it is shorter than an ELF header"));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(invalid("it is not a 64-bit little-endian ELF file"));
    }
    if u16_at(&ehdr, 18) != 62 {
        return Err(invalid("it is not an x86-64 ELF file"));
    }
    if u16_at(&ehdr, 54) != 56 {
        return Err(invalid("its program header entries are not 56 bytes"));
    }
    let mut table = vec![0u8; 56 * usize::from(u16_at(&ehdr, 56))];
    if !read_at(file, path, &mut table, u64_at(&ehdr, 32))? {
        return Err(invalid("its program headers run past the end of the file"));
    }
    let mut segments = Vec::new();
    for ph in table.chunks_exact(56) {
        if u32_at(ph, 0) != 1 {
            continue;
        }
        let (addr, file_size, mem_size) = (u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 40));
        if file_size > mem_size || addr.checked_add(mem_size).is_none() {
            return Err(invalid("a loadable segment is malformed"));
        }
        segments.push(Segment {
            addr,
            file_size,
            mem_size,
        });
    }
    if segments.is_empty() {
        return Err(invalid("it has no loadable segment"));
    }
    Ok(segments)
}

fn load_elf(
    guest: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    low_end: u64,
) -> Result<LoadedKernel> {
    let segments = elf_segments(file, path)?;
    let start = segments.iter().map(|s| s.addr).min().unwrap_or(0);
    let end = segments
        .iter()
        .map(|s| s.addr + s.mem_size)
        .max()
        .unwrap_or(0);
    if start < HIMEM_START || end > low_end {
        return Err(Error::KernelDoesNotFit {
            path: path.to_path_buf(),
            start,
            end,
            ram_end: low_end,
        });
    }
    let result =
        Elf::load(guest, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            Error::Loader {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => {
            return Err(Error::NoPvhNote {
                path: path.to_path_buf(),
            });
        }
    };
    // linux-loader neither zeroes .bss nor loads segments without file bytes: memory may be
    // reused, so zero them here.
    for s in &segments {
        clear(
            guest,
            s.addr + s.file_size,
            s.mem_size - s.file_size,
            "kernel's .bss",
        )?;
    }
    Ok(LoadedKernel {
        entry,
        start,
        end,
        header: None,
    })
}

fn load_bzimage(
    guest: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    low_end: u64,
) -> Result<LoadedKernel> {
    let unsupported = |reason| Error::UnsupportedBzImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut hdr = setup_header::default();
    if !read_at(file, path, hdr.as_mut_slice(), SETUP_HEADER_OFFSET)? {
        return Err(unsupported("its setup header is truncated"));
    }
    if hdr.version < MIN_BOOT_PROTOCOL {
        return Err(unsupported("its boot protocol is older than 2.12"));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(unsupported("it does not load at 1 MiB (no LOADED_HIGH)"));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            "it has no 64-bit entry point (no XLF_KERNEL_64)",
        ));
    }
    let file_len = file
        .metadata()
        .map_err(|source| Error::ReadKernel {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let payload = file_len
        .checked_sub((setup_sects + 1) * 512)
        .ok_or_else(|| unsupported("it is shorter than its setup sectors"))?;
    // The decompressor runs at the load address rounded up to the kernel's alignment, or at
    // its preferred address if higher, and needs `init_size` bytes there.
    let start = u64::from(hdr.code32_start);
    let align = u64::from(hdr.kernel_alignment).max(1);
    let run_base = if hdr.relocatable_kernel != 0 {
        start
            .div_ceil(align)
            .saturating_mul(align)
            .max(hdr.pref_address)
    } else {
        hdr.pref_address.max(start)
    };
    let end = (start + payload).max(run_base.saturating_add(u64::from(hdr.init_size)));
    if start < HIMEM_START || end > low_end {
        return Err(Error::KernelDoesNotFit {
            path: path.to_path_buf(),
            start,
            end,
            ram_end: low_end,
        });
    }
    let result =
        BzImage::load(guest, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            Error::Loader {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let header = result.setup_header.unwrap_or(hdr);
    let start = result.kernel_load.0;
    Ok(LoadedKernel {
        entry: start + ENTRY_64_OFFSET,
        start,
        end,
        header: Some(header),
    })
}

fn load_initrd(
    guest: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|source| Error::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| Error::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let floor = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let addr = limit
        .checked_sub(size)
        .map(|top| top / PAGE_SIZE * PAGE_SIZE)
        .filter(|addr| *addr >= floor)
        .ok_or_else(|| Error::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            kernel_end,
            limit,
        })?;
    guest
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| Error::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((addr, size))
}

/// Zeroes `[addr, addr + len)`.
fn clear(guest: &GuestMemoryMmap, addr: u64, len: u64, what: &'static str) -> Result<()> {
    const CHUNK: u64 = 0x1_0000;
    let zeroes = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        guest
            .write_slice(&zeroes[..n as usize], GuestAddress(addr + done))
            .map_err(|e| Error::Memory(what, e))?;
        done += n;
    }
    Ok(())
}

fn write_pvh_start_info(
    guest: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            PVH_MODLIST_ADDR
        } else {
            0
        },
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(BOOT_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, guest).map_err(Error::BootParams)
}

fn write_boot_params(
    guest: &GuestMemoryMmap,
    header: setup_header,
    map: &[MemoryMapEntry],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_OTHER;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    // Both below the 3 GiB end of low RAM, so they fit 32 bits.
    let (image, size) = initrd.unwrap_or((0, 0));
    params.hdr.ramdisk_image = image as u32;
    params.hdr.ramdisk_size = size as u32;
    debug_assert!(map.len() <= E820_MAX_ENTRIES);
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len().min(E820_MAX_ENTRIES) as u8;
    let params = BootParams::new(&params, GuestAddress(BOOT_INFO_ADDR));
    LinuxBootConfigurator::write_bootparams(&params, guest).map_err(Error::BootParams)
}

/// Sets the boot vCPU's registers for entry into a kernel [`load`] placed.
///
/// PVH: 32-bit protected mode, flat segments, paging off, EBX = `hvm_start_info`.
/// bzImage: 64-bit mode at CPL 0 on identity page tables, RSI = `boot_params`. Interrupts
/// are off in both. With an in-kernel LAPIC, LINT0 is wired as ExtINT and LINT1 as NMI, as
/// a BIOS leaves them, so the legacy PIC's interrupts reach the CPU.
pub fn setup_vcpu(fd: &VcpuFd, entry: &LinuxEntry) -> crate::Result<()> {
    use crate::Error::VcpuSetup;
    let mut sregs = fd.get_sregs().map_err(VcpuSetup)?;
    let mut regs = kvm_regs {
        rip: entry.entry,
        rsp: entry.stack,
        rbp: entry.stack,
        rflags: 0x2,
        ..Default::default()
    };
    match (entry.protocol, entry.page_tables) {
        (BootProtocol::BzImage, Some(cr3)) => {
            x86::long_mode_sregs(&mut sregs, cr3, false);
            regs.rsi = entry.boot_info;
        }
        _ => {
            x86::protected_mode_sregs(&mut sregs);
            regs.rbx = entry.boot_info;
        }
    }
    fd.set_sregs(&sregs).map_err(VcpuSetup)?;
    fd.set_regs(&regs).map_err(VcpuSetup)?;
    let mut fpu = fd.get_fpu().map_err(VcpuSetup)?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    fd.set_fpu(&fpu).map_err(VcpuSetup)?;
    set_lint(fd)
}

fn set_lint(fd: &VcpuFd) -> crate::Result<()> {
    // Without an in-kernel LAPIC (no irqchip) there is nothing to wire.
    let Ok(mut lapic) = fd.get_lapic() else {
        return Ok(());
    };
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let old = u32::from_le_bytes([
            bytes[0] as u8,
            bytes[1] as u8,
            bytes[2] as u8,
            bytes[3] as u8,
        ]);
        let new = (old & !0x700) | (mode << 8);
        for (dst, src) in bytes.iter_mut().zip(new.to_le_bytes()) {
            *dst = src as std::os::raw::c_char;
        }
    }
    fd.set_lapic(&lapic).map_err(crate::Error::VcpuSetup)
}

/// Places an 8250 UART at COM1 (port `0x3F8`) writing to `console` and raising IRQ 4
/// ([`SERIAL_IRQ`]) through an irqfd — the console Linux finds with `console=ttyS0`.
/// Needs the VM's in-kernel interrupt controllers. Returns the device, to feed it input.
pub fn add_serial(vm: &Vm, console: Console) -> crate::Result<Arc<Mutex<SerialDevice>>> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::SerialEventFd)?;
    vm.register_irqfd(&irq, SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(console, SerialIrq::new(irq))));
    vm.add_device(
        BusKind::Pio,
        serial.clone(),
        u64::from(SERIAL_PORT),
        u64::from(SERIAL_PORT_LEN),
    )?;
    Ok(serial)
}

const _: () = assert!(PVH_MODLIST_ADDR + PAGE_SIZE <= BOOT_STACK_TOP);
const _: () = assert!(GDT_ADDR < BOOT_INFO_ADDR && PML4_ADDR >= ARGS_END);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::layout::{LOW_RAM_END, MIN_RAM_SIZE};

    const MIB: u64 = 1 << 20;

    fn memory(ram_size: u64, window_size: u64) -> VmMemory {
        VmMemory::new(MemoryConfig {
            ram_size,
            window_size,
        })
        .unwrap()
    }

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn config(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> LinuxConfig {
        LinuxConfig {
            kernel: kernel.to_path_buf(),
            initrd: initrd.map(Path::to_path_buf),
            cmdline: cmdline.into(),
        }
    }

    /// A bzImage-shaped file: four setup sectors after the boot sector, a 2.15 setup header,
    /// and `payload` as the protected-mode kernel.
    fn bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
        let hdr = setup_header {
            setup_sects: 4,
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: HIMEM_START as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size,
            ..Default::default()
        };
        let mut image = vec![0u8; 5 * 512];
        let at = SETUP_HEADER_OFFSET as usize;
        image[at..at + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(payload);
        image
    }

    /// A vmlinux-shaped ELF: one segment of `code` at `addr` (plus `bss` zero bytes) and,
    /// if `pvh`, a PT_NOTE with a Xen PHYS32_ENTRY note pointing at `addr`.
    fn vmlinux(addr: u64, code: &[u8], bss: u64, pvh: bool) -> Vec<u8> {
        let phnum: u16 = 2;
        let mut b = vec![0u8; 64 + 56 * usize::from(phnum)];
        b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&addr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        let note_off = b.len() as u64;
        // A note that is not the PVH one, then the PVH one (or another dummy).
        let mut note = Vec::new();
        for (ty, desc) in [
            (6u32, *b"linu"),
            (if pvh { 18 } else { 7 }, (addr as u32).to_le_bytes()),
        ] {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&ty.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&desc);
        }
        let code_off = note_off + note.len() as u64;
        let ph =
            |b: &mut Vec<u8>, i: usize, ty: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
                let p = 64 + 56 * i;
                b[p..p + 4].copy_from_slice(&ty.to_le_bytes());
                b[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes());
                b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
                b[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
                b[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
                b[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
                b[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            };
        let len = code.len() as u64;
        ph(&mut b, 0, 1, code_off, addr, len, len + bss);
        ph(
            &mut b,
            1,
            4,
            note_off,
            0,
            note.len() as u64,
            note.len() as u64,
        );
        b.extend_from_slice(&note);
        b.extend_from_slice(code);
        b
    }

    #[test]
    fn memory_map_reserves_the_window() {
        let map = memory_map(&MemoryConfig {
            ram_size: 128 * MIB,
            window_size: 2 * MIB,
        });
        assert_eq!(
            map,
            vec![
                MemoryMapEntry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                MemoryMapEntry {
                    addr: HIMEM_START,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
                MemoryMapEntry {
                    addr: WINDOW_START,
                    size: 2 * MIB,
                    kind: E820_RESERVED
                },
            ]
        );
        let map = memory_map(&MemoryConfig {
            ram_size: MIN_RAM_SIZE,
            window_size: 0,
        });
        assert_eq!(map.len(), 2);
        assert!(map.iter().all(|e| e.kind == E820_RAM));
        // RAM beyond the low region continues above 4 GiB, after the window.
        let map = memory_map(&MemoryConfig {
            ram_size: LOW_RAM_END + 64 * MIB,
            window_size: MIB,
        });
        assert_eq!(
            map[1],
            MemoryMapEntry {
                addr: HIMEM_START,
                size: LOW_RAM_END - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[2].kind, E820_RESERVED);
        assert_eq!(
            map[3],
            MemoryMapEntry {
                addr: HIGH_RAM_START,
                size: 64 * MIB,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn bzimage_boot_params() {
        let payload: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let kernel = file(&bzimage(&payload, 0x40_0000));
        let initrd_bytes = vec![0x5a; 10_000];
        let initrd = file(&initrd_bytes);
        let mem = memory(64 * MIB, MIB);
        let cmdline = "console=ttyS0 panic=-1";
        let entry = load(&mem, &config(kernel.path(), Some(initrd.path()), cmdline)).unwrap();
        assert_eq!(entry.protocol, BootProtocol::BzImage);
        assert_eq!(entry.entry, HIMEM_START + 0x200);
        assert_eq!(entry.page_tables, Some(PML4_ADDR));
        assert_eq!(entry.kernel_start, HIMEM_START);
        assert_eq!(
            entry.kernel_end,
            0x100_0000 + 0x40_0000,
            "decompressor room counted"
        );

        let g = mem.guest();
        let params: boot_params = g.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(hdr.type_of_loader, LOADER_TYPE_OTHER);
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        let mut line = vec![0u8; cmdline.len() + 1];
        g.read_slice(&mut line, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&line[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(line[cmdline.len()], 0);

        // The initramfs: page-aligned, at the top of RAM.
        let (image, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
        assert_eq!(entry.initrd, Some((image, size)));
        assert_eq!(size, initrd_bytes.len() as u64);
        assert_eq!(image % PAGE_SIZE, 0);
        assert!(image + size <= 64 * MIB && image + size + PAGE_SIZE > 64 * MIB);
        let mut back = vec![0u8; initrd_bytes.len()];
        g.read_slice(&mut back, GuestAddress(image)).unwrap();
        assert_eq!(back, initrd_bytes);

        // The e820 map, with the window reserved.
        assert_eq!(params.e820_entries, 3);
        let e820: Vec<(u64, u64, u32)> = params.e820_table[..3]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            e820,
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, 63 * MIB, E820_RAM),
                (WINDOW_START, MIB, E820_RESERVED),
            ]
        );

        // The protected-mode kernel at 1 MiB, the page tables and the GDT.
        let mut back = vec![0u8; payload.len()];
        g.read_slice(&mut back, GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(back, payload);
        assert_ne!(g.read_obj::<u64>(GuestAddress(PML4_ADDR)).unwrap(), 0);
        assert_eq!(
            g.read_obj::<u64>(GuestAddress(GDT_ADDR + 8)).unwrap(),
            x86::gdt_table()[1]
        );
    }

    #[test]
    fn bzimage_initrd_stays_below_initrd_addr_max() {
        let mut image = bzimage(&[0xf4; 512], 0x10_0000);
        let at = SETUP_HEADER_OFFSET as usize + std::mem::offset_of!(setup_header, initrd_addr_max);
        image[at..at + 4].copy_from_slice(&(32 * MIB as u32 - 1).to_le_bytes());
        let kernel = file(&image);
        let initrd = file(&[1; 100]);
        let mem = memory(64 * MIB, 0);
        let entry = load(&mem, &config(kernel.path(), Some(initrd.path()), "")).unwrap();
        assert_eq!(entry.initrd, Some((32 * MIB - PAGE_SIZE, 100)));
    }

    #[test]
    fn pvh_start_info_memmap_and_module() {
        let addr = 0x100_0000;
        let kernel = file(&vmlinux(addr, &[0xf4; 64], 0x2000, true));
        let initrd = file(&[7; 5000]);
        let mem = memory(64 * MIB, 4 * MIB);
        // Dirty the .bss: the loader must zero it.
        mem.guest()
            .write_obj(0xdead_u64, GuestAddress(addr + 0x100))
            .unwrap();
        let entry = load(
            &mem,
            &config(kernel.path(), Some(initrd.path()), "console=ttyS0"),
        )
        .unwrap();
        assert_eq!(entry.protocol, BootProtocol::Pvh);
        assert_eq!(entry.entry, addr);
        assert_eq!(entry.page_tables, None);
        assert_eq!(
            (entry.kernel_start, entry.kernel_end),
            (addr, addr + 64 + 0x2000)
        );
        let g = mem.guest();
        assert_eq!(g.read_obj::<u64>(GuestAddress(addr + 0x100)).unwrap(), 0);

        let info: hvm_start_info = g.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_ADDR);
        assert_eq!(info.memmap_entries, 3);
        let window: hvm_memmap_table_entry =
            g.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 2 * 24)).unwrap();
        assert_eq!(
            (window.addr, window.size, window.type_),
            (WINDOW_START, 4 * MIB, E820_RESERVED)
        );
        let low: hvm_memmap_table_entry = g.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 24)).unwrap();
        assert_eq!(
            (low.addr, low.size, low.type_),
            (HIMEM_START, 63 * MIB, E820_RAM)
        );

        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST_ADDR));
        let module: hvm_modlist_entry = g.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!(Some((module.paddr, module.size)), entry.initrd);
        assert_eq!(module.size, 5000);
        assert_eq!(module.paddr, 64 * MIB - 2 * PAGE_SIZE);
        assert_eq!(
            g.read_obj::<u8>(GuestAddress(module.paddr + 4999)).unwrap(),
            7
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let mem = memory(16 * MIB, 0);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-vmlinux");
        let err = load(&mem, &config(&missing, None, "")).unwrap_err();
        assert!(matches!(err, Error::OpenKernel { .. }), "{err}");
        assert!(err.to_string().contains("no-such-vmlinux"), "{err}");

        let kernel = file(&vmlinux(0x20_0000, &[0xf4], 0, true));
        let missing = dir.path().join("no-such-initrd");
        let err = load(&mem, &config(kernel.path(), Some(&missing), "")).unwrap_err();
        assert!(matches!(err, Error::OpenInitrd { .. }), "{err}");
        assert!(err.to_string().contains("no-such-initrd"), "{err}");

        for junk in [&b""[..], b"MZ not a kernel", &[0u8; 4096]] {
            let junk = file(junk);
            let err = load(&mem, &config(junk.path(), None, "")).unwrap_err();
            assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
            assert!(
                err.to_string().contains(&*junk.path().to_string_lossy()),
                "{err}"
            );
        }
        let err = load(&mem, &config(dir.path(), None, "")).unwrap_err();
        assert!(
            matches!(err, Error::ReadKernel { .. }),
            "a directory: {err}"
        );

        let no_note = file(&vmlinux(0x20_0000, &[0xf4], 0, false));
        let err = load(&mem, &config(no_note.path(), None, "")).unwrap_err();
        assert!(matches!(err, Error::NoPvhNote { .. }), "{err}");

        let mut elf32 = vmlinux(0x20_0000, &[0xf4], 0, true);
        elf32[4] = 1;
        let elf32 = file(&elf32);
        let err = load(&mem, &config(elf32.path(), None, "")).unwrap_err();
        assert!(matches!(err, Error::InvalidElf { .. }), "{err}");

        for (addr, bss) in [(15 * MIB, 2 * MIB), (0x8000, 0)] {
            let big = file(&vmlinux(addr, &[0xf4], bss, true));
            let err = load(&mem, &config(big.path(), None, "")).unwrap_err();
            assert!(matches!(err, Error::KernelDoesNotFit { .. }), "{err}");
        }
        let big = file(&bzimage(&[0xf4; 512], 0x100_0000));
        let err = load(&mem, &config(big.path(), None, "")).unwrap_err();
        assert!(matches!(err, Error::KernelDoesNotFit { .. }), "{err}");

        let mut old = bzimage(&[0xf4; 512], 0x10_0000);
        old[0x206] = 0x0b; // protocol 2.11
        let old = file(&old);
        let err = load(&mem, &config(old.path(), None, "")).unwrap_err();
        assert!(matches!(err, Error::UnsupportedBzImage { .. }), "{err}");

        let huge = file(&vec![0; 15 * MIB as usize]);
        let err = load(&mem, &config(kernel.path(), Some(huge.path()), "")).unwrap_err();
        assert!(matches!(err, Error::InitrdTooLarge { .. }), "{err}");

        let long = "x".repeat(PVH_CMDLINE_MAX);
        let err = load(&mem, &config(kernel.path(), None, &long)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CmdlineTooLong {
                    len: 2048,
                    max: 2047
                }
            ),
            "{err}"
        );
        let bz = file(&bzimage(&[0xf4; 512], 0x10_0000));
        let err = load(&memory(64 * MIB, 0), &config(bz.path(), None, &long)).unwrap_err();
        assert!(
            matches!(err, Error::CmdlineTooLong { max: 2047, .. }),
            "{err}"
        );
        let entry = load(&mem, &config(kernel.path(), None, "root=/dev/vda\n")).unwrap();
        assert_eq!(
            entry.protocol,
            BootProtocol::Pvh,
            "surrounding whitespace is trimmed"
        );
        let err = load(&mem, &config(kernel.path(), None, "café")).unwrap_err();
        assert!(matches!(err, Error::InvalidCmdline(_)), "{err}");
    }
}
