//! Micro-guests: static `no_std` ELF executables started directly in 64-bit mode at CPL 3.
//!
//! `docs/micro-guest-abi.md` is the contract: memory layout, CPU state at entry, the boot-info
//! block, the VM generation record, and the ports. [`load`] places an image and builds the
//! boot structures (with generation 0); [`setup_vcpu`] sets the registers; [`MicroVm`] does
//! both, adds the console and the micro-guest ports, and runs the guest. After a restore from
//! a snapshot, [`write_generation`] tells the guest it is a new VM.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::bus::{BusAction, BusDevice};
use crate::elf::ElfImage;
use crate::layout::{
    ARGS_ADDR, ARGS_END, BOOT_INFO_ADDR, BOOT_STRUCTS_END, CONSOLE_WRITE_MAX, CONSOLE_WRITE_PORT,
    EXIT_PORT, GDT_ADDR, GENERATION_OFFSET, IMAGE_BASE, MMIO_END, MMIO_START, PAGE_SIZE,
    SERIAL_PORT, SERIAL_PORT_LEN, STACK_SIZE,
};
use crate::memory::{GuestMemoryMmap, MemoryConfig};
use crate::serial::{Console, SerialDevice, SerialIrq};
use crate::vcpu::{ExitCounters, Vcpu, VcpuConfig, VcpuStop};
use crate::vm::{BusKind, Vm, VmConfig};
use crate::x86::{self, PageTables};
use crate::{Error, Result};

/// `b"NEXUSBI1"` as a little-endian u64.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"NEXUSBI1");
/// Version of the boot-info block.
pub const BOOT_INFO_VERSION: u32 = 1;
/// Size of the boot-info block (version 1).
pub const BOOT_INFO_SIZE: u32 = 128;
/// Offset of the memory map inside the boot-info page.
const MEM_MAP_OFFSET: u64 = 0x100;
/// Offset of the `generation_offset` field in the boot-info block.
const GENERATION_OFFSET_FIELD: u64 = 116;

/// The VM generation record (`nexus_ring::generation`): what [`write_generation`] tells a
/// restored guest.
pub use nexus_ring::generation::Generation;

// The record sits between the boot-info block and the memory map.
const _: () = {
    assert!(GENERATION_OFFSET >= BOOT_INFO_SIZE as u64);
    assert!(GENERATION_OFFSET + nexus_ring::generation::RECORD_SIZE as u64 <= MEM_MAP_OFFSET);
    assert!(GENERATION_OFFSET % 8 == 0);
};
/// Most memory-map entries the boot-info page holds.
const MEM_MAP_MAX: usize = 16;
/// Memory-map kinds.
pub mod mem_kind {
    /// RAM.
    pub const RAM: u32 = 1;
    /// Reserved.
    pub const RESERVED: u32 = 2;
    /// The I/O window.
    pub const WINDOW: u32 = 3;
    /// MMIO.
    pub const MMIO: u32 = 4;
}

/// Errors of loading a micro-guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The file is not a usable ELF.
    #[error("Invalid micro-guest executable")]
    Elf(#[from] crate::elf::Error),
    /// The guest needs more than the low RAM region.
    #[error("Micro-guests use at most 3 GiB of RAM; {0:#x} bytes were asked for")]
    RamTooLarge(u64),
    /// A segment lies below the image base, over the page tables or boot structures.
    #[error(
        "Segment {index} at {addr:#x}+{size:#x} overlaps the boot structures and page tables \
         below {limit:#x}"
    )]
    OverlapsBootStructures {
        /// Program header index.
        index: usize,
        /// Segment address.
        addr: u64,
        /// Segment size.
        size: u64,
        /// Lowest address an image may use.
        limit: u64,
    },
    /// A segment lies outside RAM (beyond the end of RAM, or in the window or MMIO hole).
    #[error(
        "Segment {index} at {addr:#x}+{size:#x} lies outside guest RAM (which ends at {ram_end:#x})"
    )]
    OutsideRam {
        /// Program header index.
        index: usize,
        /// Segment address.
        addr: u64,
        /// Segment size.
        size: u64,
        /// End of RAM.
        ram_end: u64,
    },
    /// A segment overlaps the I/O window.
    #[error("Segment {index} at {addr:#x}+{size:#x} overlaps the I/O window")]
    OverlapsWindow {
        /// Program header index.
        index: usize,
        /// Segment address.
        addr: u64,
        /// Segment size.
        size: u64,
    },
    /// A segment overlaps the stack at the top of RAM.
    #[error("Segment {index} at {addr:#x}+{size:#x} overlaps the stack ({stack_bottom:#x}..)")]
    OverlapsStack {
        /// Program header index.
        index: usize,
        /// Segment address.
        addr: u64,
        /// Segment size.
        size: u64,
        /// Bottom of the stack.
        stack_bottom: u64,
    },
    /// Two segments overlap.
    #[error("Segments {0} and {1} overlap")]
    SegmentsOverlap(usize, usize),
    /// The arguments do not fit the argument area.
    #[error("The guest arguments take {needed} bytes; the argument area holds {available}")]
    ArgumentsTooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// No room for a heap.
    #[error(
        "No room left for a heap: the image ends at {image_end:#x}, the stack starts at {stack_bottom:#x}"
    )]
    NoHeap {
        /// End of the image.
        image_end: u64,
        /// Bottom of the stack.
        stack_bottom: u64,
    },
    /// Writing to guest memory failed (a bug: every range was checked).
    #[error("Cannot write the {0} to guest memory")]
    Memory(&'static str),
}

/// Where the loader put things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedGuest {
    /// Entry point.
    pub entry: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// Boot-info block address (the guest's RDI).
    pub boot_info: u64,
    /// One past the image's last byte.
    pub image_end: u64,
    /// Heap start.
    pub heap_base: u64,
    /// Heap size.
    pub heap_size: u64,
    /// CR3.
    pub cr3: u64,
}

/// A device a micro-guest is told about in its boot-info: the nexus-io device
/// (`device_base`, `device_size`) or the virtio-net device (`net_device_base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// MMIO base.
    pub base: u64,
    /// Register block size.
    pub size: u64,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> std::result::Result<(), LoadError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|_| LoadError::Memory(what))
}

/// Loads the micro-guest `elf` into `mem` (sized by `config`), writes the boot structures,
/// and returns where everything is. The boot-info names `device` (the nexus-io device) and
/// no virtio-net device; [`load_with_net_device`] names both.
pub fn load(
    mem: &GuestMemoryMmap,
    config: MemoryConfig,
    elf: &[u8],
    args: &[String],
    device: Option<DeviceInfo>,
) -> std::result::Result<LoadedGuest, LoadError> {
    load_with_net_device(mem, config, elf, args, device, None)
}

/// [`load`], with the boot-info also naming a virtio-net device (`net_device_base`, offset
/// 120; 0 for none).
pub fn load_with_net_device(
    mem: &GuestMemoryMmap,
    config: MemoryConfig,
    elf: &[u8],
    args: &[String],
    device: Option<DeviceInfo>,
    net_device: Option<DeviceInfo>,
) -> std::result::Result<LoadedGuest, LoadError> {
    let image = ElfImage::parse(elf)?;
    if config.ram_size > config.low_ram_size() {
        return Err(LoadError::RamTooLarge(config.ram_size));
    }
    let ram_end = config.low_ram_size();
    let stack_top = ram_end;
    let stack_bottom = stack_top - STACK_SIZE.min(ram_end / 4);
    let window = (config.window_size > 0).then(|| {
        (
            crate::layout::WINDOW_START,
            crate::layout::WINDOW_START + config.window_size,
        )
    });
    for (index, seg) in image.segments.iter().enumerate() {
        let (addr, size, end) = (seg.addr, seg.mem_size, seg.end());
        if addr < IMAGE_BASE {
            return Err(LoadError::OverlapsBootStructures {
                index,
                addr,
                size,
                limit: IMAGE_BASE,
            });
        }
        if let Some((wb, we)) = window {
            if addr < we && end > wb {
                return Err(LoadError::OverlapsWindow { index, addr, size });
            }
        }
        if end > ram_end {
            return Err(LoadError::OutsideRam {
                index,
                addr,
                size,
                ram_end,
            });
        }
        if end > stack_bottom {
            return Err(LoadError::OverlapsStack {
                index,
                addr,
                size,
                stack_bottom,
            });
        }
        for (other, o) in image.segments.iter().enumerate().take(index) {
            if addr < o.end() && end > o.addr {
                return Err(LoadError::SegmentsOverlap(other, index));
            }
        }
    }
    for seg in &image.segments {
        let bytes = image.segment_bytes(elf, seg);
        mem.write_slice(bytes, GuestAddress(seg.addr))
            .map_err(|_| LoadError::Memory("image"))?;
        // Zero .bss ourselves: memory may be reused (restores, pools).
        let zeroes = vec![0u8; (seg.mem_size - seg.file_size) as usize];
        mem.write_slice(&zeroes, GuestAddress(seg.addr + seg.file_size))
            .map_err(|_| LoadError::Memory("image"))?;
    }
    let image_end = image
        .segments
        .iter()
        .map(|s| s.end())
        .max()
        .unwrap_or(IMAGE_BASE);
    let heap_base = image_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    if heap_base >= stack_bottom {
        return Err(LoadError::NoHeap {
            image_end,
            stack_bottom,
        });
    }
    let heap_size = stack_bottom - heap_base;

    // Arguments: the argv array, then the bytes.
    let argv_size = 16 * args.len() as u64;
    let bytes_size: u64 = args.iter().map(|a| a.len() as u64).sum();
    let available = ARGS_END - ARGS_ADDR;
    if argv_size + bytes_size > available {
        return Err(LoadError::ArgumentsTooLarge {
            needed: argv_size + bytes_size,
            available,
        });
    }
    let mut cursor = ARGS_ADDR + argv_size;
    for (i, arg) in args.iter().enumerate() {
        let entry = ARGS_ADDR + 16 * i as u64;
        write(mem, cursor, entry, "arguments")?;
        write(mem, arg.len() as u64, entry + 8, "arguments")?;
        mem.write_slice(arg.as_bytes(), GuestAddress(cursor))
            .map_err(|_| LoadError::Memory("arguments"))?;
        cursor += arg.len() as u64;
    }

    // Memory map.
    let mut map: Vec<(u64, u64, u32)> = vec![(0, ram_end, mem_kind::RAM)];
    if let Some((wb, we)) = window {
        map.push((wb, we - wb, mem_kind::WINDOW));
    }
    map.push((MMIO_START, MMIO_END - MMIO_START, mem_kind::MMIO));
    debug_assert!(map.len() <= MEM_MAP_MAX);
    let map_addr = BOOT_INFO_ADDR + MEM_MAP_OFFSET;
    for (i, (base, size, kind)) in map.iter().enumerate() {
        let at = map_addr + 24 * i as u64;
        write(mem, *base, at, "memory map")?;
        write(mem, *size, at + 8, "memory map")?;
        write(mem, *kind, at + 16, "memory map")?;
        write(mem, 0u32, at + 20, "memory map")?;
    }

    // Boot-info block.
    let device = device.unwrap_or_default();
    let (wbase, wsize) = window.map(|(b, e)| (b, e - b)).unwrap_or((0, 0));
    let fields: [(u64, u64); 14] = [
        (0, BOOT_INFO_MAGIC),
        (16, config.ram_size),
        (24, heap_base),
        (32, heap_size),
        (40, stack_top),
        (48, wbase),
        (56, wsize),
        (64, device.base),
        (72, device.size),
        (80, args.len() as u64),
        (88, ARGS_ADDR),
        (96, map_addr),
        (104, map.len() as u64),
        (120, net_device.map_or(0, |d| d.base)),
    ];
    for (off, val) in fields {
        write(mem, val, BOOT_INFO_ADDR + off, "boot info")?;
    }
    write(mem, BOOT_INFO_VERSION, BOOT_INFO_ADDR + 8, "boot info")?;
    write(mem, BOOT_INFO_SIZE, BOOT_INFO_ADDR + 12, "boot info")?;
    write(mem, SERIAL_PORT, BOOT_INFO_ADDR + 112, "boot info")?;
    write(mem, EXIT_PORT, BOOT_INFO_ADDR + 114, "boot info")?;
    write_generation(mem, &Generation::BOOT)?;

    // GDT and page tables.
    x86::write_gdt(mem).map_err(|_| LoadError::Memory("GDT"))?;
    let mut tables = PageTables::new(true);
    tables
        .map(0, ram_end)
        .map_err(|_| LoadError::Memory("page tables"))?;
    if let Some((wb, we)) = window {
        tables
            .map(wb, we - wb)
            .map_err(|_| LoadError::Memory("page tables"))?;
    }
    tables
        .map(MMIO_START, MMIO_END - MMIO_START)
        .map_err(|_| LoadError::Memory("page tables"))?
        .unmap_page_zero();
    let cr3 = tables
        .write(mem)
        .map_err(|_| LoadError::Memory("page tables"))?;

    // Stack: a zero "return address" at the top.
    let rsp = stack_top - 8;
    write(mem, 0u64, rsp, "stack")?;
    const { assert!(GDT_ADDR < BOOT_STRUCTS_END) };
    Ok(LoadedGuest {
        entry: image.entry,
        rsp,
        boot_info: BOOT_INFO_ADDR,
        image_end,
        heap_base,
        heap_size,
        cr3,
    })
}

/// Writes the VM generation record `generation` into a micro-guest's boot-info page (at
/// [`GENERATION_OFFSET`] from the block, whose `generation_offset` field it also sets): after
/// a restore from a snapshot and before the vCPU runs, with a new `generation` and a fresh
/// `seed` ([`fresh_seed`]), and the guest's new address if it gets one. The guest reads it at
/// every turn of its loop; no exit, no device (`docs/micro-guest-abi.md`). [`load`] writes
/// [`Generation::BOOT`].
pub fn write_generation(
    mem: &GuestMemoryMmap,
    generation: &Generation,
) -> std::result::Result<(), LoadError> {
    mem.write_slice(
        &generation.encode(),
        GuestAddress(BOOT_INFO_ADDR + GENERATION_OFFSET),
    )
    .map_err(|_| LoadError::Memory("generation record"))?;
    // GENERATION_OFFSET is 0x80: it fits the u32 field.
    write(
        mem,
        GENERATION_OFFSET as u32,
        BOOT_INFO_ADDR + GENERATION_OFFSET_FIELD,
        "boot info",
    )
}

/// The VM generation record in a micro-guest's memory, if there is a valid one (what the
/// guest would read).
pub fn read_generation(mem: &GuestMemoryMmap) -> Option<Generation> {
    let offset = mem
        .read_obj::<u32>(GuestAddress(BOOT_INFO_ADDR + GENERATION_OFFSET_FIELD))
        .ok()?;
    let mut bytes = [0u8; nexus_ring::generation::RECORD_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(BOOT_INFO_ADDR + u64::from(offset)))
        .ok()?;
    Generation::decode(&bytes).ok()
}

/// Eight random bytes from the kernel (`getrandom(2)`): a restored VM's [`Generation::seed`].
pub fn fresh_seed() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid
        // and writable for that long.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += n as usize;
    }
    Ok(u64::from_le_bytes(bytes))
}

/// Sets a vCPU's registers for entry into a loaded micro-guest (64-bit, CPL 3, IOPL 3).
pub fn setup_vcpu(fd: &VcpuFd, guest: &LoadedGuest) -> Result<()> {
    let mut sregs = fd.get_sregs().map_err(Error::VcpuSetup)?;
    x86::long_mode_sregs(&mut sregs, guest.cr3, true);
    fd.set_sregs(&sregs).map_err(Error::VcpuSetup)?;
    let regs = kvm_regs {
        rip: guest.entry,
        rsp: guest.rsp,
        rdi: guest.boot_info,
        rflags: x86::RFLAGS_IOPL3,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(Error::VcpuSetup)?;
    let mut fpu = fd.get_fpu().map_err(Error::VcpuSetup)?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    fd.set_fpu(&fpu).map_err(Error::VcpuSetup)
}

/// The micro-guest ports: exit (`0xF4`) and console write (`0xF5`).
#[derive(Debug)]
pub struct MicroGuestPorts {
    memory: GuestMemoryMmap,
    console: Console,
}

impl MicroGuestPorts {
    /// Ports reading console strings from `memory` and writing them to `console`.
    pub fn new(memory: GuestMemoryMmap, console: Console) -> Self {
        MicroGuestPorts { memory, console }
    }

    fn console_write(&self, record: u64) {
        let read = |addr: u64| self.memory.read_obj::<u64>(GuestAddress(addr));
        let (Ok(addr), Ok(len)) = (read(record), read(record.wrapping_add(8))) else {
            log::warn!("Console write with an unreadable record at {record:#x}");
            return;
        };
        if len > CONSOLE_WRITE_MAX {
            log::warn!("Console write of {len} bytes refused (at most {CONSOLE_WRITE_MAX})");
            return;
        }
        let mut buf = vec![0u8; len as usize];
        if self
            .memory
            .read_slice(&mut buf, GuestAddress(addr))
            .is_err()
        {
            log::warn!("Console write from unreadable memory at {addr:#x}+{len:#x}");
            return;
        }
        if let Err(e) = self.console.write_all(&buf) {
            log::warn!("Console output failed: {e}");
        }
    }
}

impl BusDevice for MicroGuestPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(v);
        match offset {
            0 => BusAction::Exit(value),
            1 => {
                self.console_write(u64::from(value));
                BusAction::Continue
            }
            _ => BusAction::Continue,
        }
    }
}

/// A ready-to-run micro-guest VM: one vCPU, the serial console, and the micro-guest ports.
#[derive(Debug)]
pub struct MicroVm {
    vm: Vm,
    vcpu: Vcpu,
    loaded: LoadedGuest,
    serial: Arc<Mutex<SerialDevice>>,
}

/// How to build a [`MicroVm`].
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// RAM and window sizes.
    pub memory: MemoryConfig,
    /// The guest's arguments.
    pub args: Vec<String>,
    /// The device the boot-info names (the nexus-io device), if any.
    pub device: Option<DeviceInfo>,
    /// The virtio-net device the boot-info names (`net_device_base`), if any: the in-guest
    /// networking baseline (crate `nexus-net`).
    pub net_device: Option<DeviceInfo>,
    /// Where the console goes.
    pub console: Console,
}

impl MicroVm {
    /// Creates the VM, loads `elf`, and prepares the vCPU.
    pub fn new(elf: &[u8], config: MicroVmConfig) -> Result<Self> {
        let mut vm = Vm::new(VmConfig {
            memory: config.memory,
            irqchip: false,
        })?;
        let loaded = load_with_net_device(
            vm.memory().guest(),
            config.memory,
            elf,
            &config.args,
            config.device,
            config.net_device,
        )?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            config.console.clone(),
            SerialIrq::default(),
        )));
        vm.add_device(
            BusKind::Pio,
            Arc::clone(&serial) as _,
            u64::from(SERIAL_PORT),
            u64::from(SERIAL_PORT_LEN),
        )?;
        let ports = MicroGuestPorts::new(vm.memory().guest().clone(), config.console);
        debug_assert_eq!(CONSOLE_WRITE_PORT, EXIT_PORT + 1);
        vm.add_device(
            BusKind::Pio,
            Arc::new(Mutex::new(ports)),
            u64::from(EXIT_PORT),
            2,
        )?;
        let vcpu = vm.create_vcpu(VcpuConfig { strict_io: true })?;
        setup_vcpu(vcpu.fd(), &loaded)?;
        Ok(MicroVm {
            vm,
            vcpu,
            loaded,
            serial,
        })
    }

    /// The serial console device (for example to save its state in a snapshot).
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// The VM, to add devices before running.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The vCPU.
    pub fn vcpu(&self) -> &Vcpu {
        &self.vcpu
    }

    /// Where the loader put things.
    pub fn loaded(&self) -> &LoadedGuest {
        &self.loaded
    }

    /// Runs the guest on the current thread until it exits; returns its exit code.
    ///
    /// A crash or an access no device claims is an error naming the cause and the RIP.
    pub fn run(&mut self) -> Result<u32> {
        match self.vcpu.run()? {
            VcpuStop::Exit(code) => Ok(code),
            VcpuStop::Stopped => Err(Error::Stopped),
            VcpuStop::Halted => Err(Error::Halted),
        }
    }

    /// User-space exits so far.
    pub fn exit_counters(&self) -> ExitCounters {
        self.vcpu.exit_counters()
    }

    /// Splits into the VM and its vCPU (to run the vCPU on its own thread).
    pub fn into_parts(self) -> (Vm, Vcpu, LoadedGuest) {
        (self.vm, self.vcpu, self.loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::tiny_elf;
    use crate::layout::{STACK_SIZE, WINDOW_START};

    fn mem(config: MemoryConfig) -> GuestMemoryMmap {
        crate::memory::VmMemory::new(config)
            .unwrap()
            .guest()
            .clone()
    }

    const CFG: MemoryConfig = MemoryConfig {
        ram_size: 16 << 20,
        window_size: 1 << 20,
    };

    #[test]
    fn writes_boot_info_args_and_image() {
        let m = mem(CFG);
        let elf = tiny_elf(0x20_0000, &[0xeb, 0xfe], 0x1000);
        let args = vec!["a".to_string(), "héllo".to_string()];
        let dev = DeviceInfo {
            base: MMIO_START,
            size: 0x1000,
        };
        let g = load(&m, CFG, &elf, &args, Some(dev)).unwrap();
        assert_eq!(g.entry, 0x20_0000);
        assert_eq!(g.rsp, (16 << 20) - 8);
        assert_eq!(g.heap_base, 0x20_2000);
        assert_eq!(g.heap_base + g.heap_size, (16 << 20) - STACK_SIZE);
        let r64 = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r64(BOOT_INFO_ADDR), BOOT_INFO_MAGIC);
        assert_eq!(r64(BOOT_INFO_ADDR + 48), WINDOW_START);
        assert_eq!(r64(BOOT_INFO_ADDR + 56), 1 << 20);
        assert_eq!(r64(BOOT_INFO_ADDR + 64), MMIO_START);
        assert_eq!(r64(BOOT_INFO_ADDR + 80), 2);
        let argv = r64(BOOT_INFO_ADDR + 88);
        let (p, l) = (r64(argv + 16), r64(argv + 24));
        let mut s = vec![0u8; l as usize];
        m.read_slice(&mut s, GuestAddress(p)).unwrap();
        assert_eq!(s, "héllo".as_bytes());
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x20_0000)).unwrap(), 0xfeeb);
        assert_eq!(r64(BOOT_INFO_ADDR + 104), 3);
        assert_eq!(r64(BOOT_INFO_ADDR + 120), 0, "no virtio-net device");
        // Generation 0, right after the block.
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(BOOT_INFO_ADDR + 116))
                .unwrap(),
            0x80
        );
        assert_eq!(read_generation(&m), Some(Generation::BOOT));
    }

    #[test]
    fn a_restored_vm_gets_its_new_generation_in_memory() {
        let m = mem(CFG);
        let elf = tiny_elf(0x20_0000, &[0xeb, 0xfe], 0x1000);
        load(&m, CFG, &elf, &["arg".to_string()], None).unwrap();
        let before_map: Vec<u64> = (0..3 * 3)
            .map(|i| {
                m.read_obj::<u64>(GuestAddress(BOOT_INFO_ADDR + MEM_MAP_OFFSET + 8 * i))
                    .unwrap()
            })
            .collect();
        let generation = Generation {
            generation: 7,
            seed: fresh_seed().unwrap(),
            address: Some((std::net::Ipv4Addr::new(10, 200, 0, 9), 16)),
            gateway: Some(std::net::Ipv4Addr::new(10, 200, 0, 1)),
        };
        write_generation(&m, &generation).unwrap();
        assert_eq!(read_generation(&m), Some(generation));
        // The bytes at 0x2080 are the record, little endian, as the ABI says.
        let mut raw = [0u8; 48];
        m.read_slice(&mut raw, GuestAddress(0x2080)).unwrap();
        assert_eq!(&raw[..8], b"NEXUSGEN");
        assert_eq!(raw[16..24], 7u64.to_le_bytes());
        assert_eq!(raw[32..36], 0x0AC8_0009u32.to_le_bytes());
        assert_eq!(raw[40], 16);
        // Nothing else of the boot-info page moved: the block and the memory map.
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(BOOT_INFO_ADDR)).unwrap(),
            BOOT_INFO_MAGIC
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(BOOT_INFO_ADDR + 80))
                .unwrap(),
            1
        );
        let after_map: Vec<u64> = (0..3 * 3)
            .map(|i| {
                m.read_obj::<u64>(GuestAddress(BOOT_INFO_ADDR + MEM_MAP_OFFSET + 8 * i))
                    .unwrap()
            })
            .collect();
        assert_eq!(before_map, after_map);
        // Seeds differ from call to call.
        assert_ne!(fresh_seed().unwrap(), fresh_seed().unwrap());
        // A page without a record reads as none.
        m.write_slice(&[0u8; 48], GuestAddress(0x2080)).unwrap();
        assert_eq!(read_generation(&m), None);
    }

    #[test]
    fn names_the_net_device_at_offset_120() {
        let m = mem(CFG);
        let elf = tiny_elf(0x20_0000, &[0xeb, 0xfe], 0x1000);
        let io = DeviceInfo {
            base: MMIO_START,
            size: 0x1000,
        };
        let net = DeviceInfo {
            base: MMIO_START + 0x1000,
            size: 0x1000,
        };
        load_with_net_device(&m, CFG, &elf, &[], Some(io), Some(net)).unwrap();
        let r64 = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r64(BOOT_INFO_ADDR + 64), MMIO_START);
        assert_eq!(r64(BOOT_INFO_ADDR + 120), MMIO_START + 0x1000);
        // The block stays version 1, 128 bytes.
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(BOOT_INFO_ADDR + 8)).unwrap(),
            1
        );
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(BOOT_INFO_ADDR + 12))
                .unwrap(),
            128
        );
        // Only the net device: the nexus-io fields stay 0.
        load_with_net_device(&m, CFG, &elf, &[], None, Some(net)).unwrap();
        assert_eq!(r64(BOOT_INFO_ADDR + 64), 0);
        assert_eq!(r64(BOOT_INFO_ADDR + 120), MMIO_START + 0x1000);
    }

    #[test]
    fn refuses_bad_placements() {
        let m = mem(CFG);
        let cases: Vec<(u64, u64, &str)> = vec![
            (0x9000, 0, "page tables"),
            (IMAGE_BASE - 0x1000, 0, "below image base"),
            (15 << 20, 0, "stack"),
            (16 << 20, 0, "outside RAM"),
            (WINDOW_START, 0, "window"),
            (0x20_0000, 64 << 20, "bss past RAM"),
        ];
        for (addr, bss, what) in cases {
            let elf = tiny_elf(addr, &[0xf4], bss);
            let err = load(&m, CFG, &elf, &[], None).unwrap_err();
            match what {
                "page tables" | "below image base" => {
                    assert!(
                        matches!(err, LoadError::OverlapsBootStructures { .. }),
                        "{what}: {err}"
                    )
                }
                "stack" => assert!(matches!(err, LoadError::OverlapsStack { .. }), "{err}"),
                "window" => assert!(matches!(err, LoadError::OverlapsWindow { .. }), "{err}"),
                _ => assert!(matches!(err, LoadError::OutsideRam { .. }), "{what}: {err}"),
            }
        }
        let elf = tiny_elf(0x20_0000, &[0xf4], 0);
        let big = vec!["x".repeat(0x7000)];
        assert!(matches!(
            load(&m, CFG, &elf, &big, None),
            Err(LoadError::ArgumentsTooLarge { .. })
        ));
        assert!(matches!(
            load(&m, CFG, b"\x7fELF", &[], None),
            Err(LoadError::Elf(_))
        ));
    }
}
