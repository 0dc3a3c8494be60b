//! The state file: a header (magic, format version, body length), a body of records, and a
//! CRC32 of everything before it. `docs/snapshot-format.md` documents it byte by byte.
//!
//! ```text
//! 0        8        12       16                24             24+N      28+N
//! ┌────────┬────────┬────────┬─────────────────┬──────────────┬─────────┐
//! │ magic  │version │ flags  │ body length N   │ body records │ CRC32   │
//! │NXSSTATE│  u32   │ u32=0  │      u64        │              │ of 0..  │
//! └────────┴────────┴────────┴─────────────────┴──────────────┴─────────┘
//! ```

use std::fs::File;
use std::io::Read;
use std::path::Path;

use nexus_kvm::MemoryConfig;
use nexus_kvm::layout::WINDOW_START;

use crate::codec::{DecodeError, DecodeResult, Decoder, Encoder};
use crate::file_identity::FileIdentity;
use crate::limits::{
    MAX_CREATOR_LEN, MAX_DEVICE_NAME_LEN, MAX_DEVICE_STATE_LEN, MAX_DEVICES, MAX_REGIONS,
    MAX_STATE_FILE_SIZE, MAX_VCPUS,
};
use crate::persist::{DeviceState, check_unique};
use crate::vcpu::VcpuState;
use crate::vm_state::VmState;
use crate::{Error, FORMAT_VERSION, PAGE_SIZE, Result};

/// The state file's magic bytes.
pub const STATE_MAGIC: [u8; 8] = *b"NXSSTATE";
/// Size of the state file's header.
pub(crate) const STATE_HEADER_SIZE: usize = 24;

// Top-level record tags.
const META: u32 = 1;
const MEMORY: u32 = 2;
const VM: u32 = 3;
const VCPU: u32 = 4;
const DEVICE: u32 = 5;

/// What a region of guest memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM.
    Ram,
    /// The I/O window (memfd-backed, shared with the backend).
    Window,
}

impl RegionKind {
    fn code(self) -> u32 {
        match self {
            RegionKind::Ram => 1,
            RegionKind::Window => 2,
        }
    }
}

/// One region of guest memory and where its pages are in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical base address.
    pub guest_addr: u64,
    /// Size in bytes (a multiple of [`PAGE_SIZE`]).
    pub size: u64,
    /// Offset of its first page in the memory file (a multiple of [`PAGE_SIZE`]).
    pub file_offset: u64,
    /// RAM or window.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// Index of the region's first page in the memory file's page list.
    pub(crate) fn first_page(&self) -> u64 {
        self.file_offset / PAGE_SIZE - 1
    }

    /// Number of pages.
    pub(crate) fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }
}

/// The memory layout of a snapshot and the identity of its memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM and window sizes.
    pub config: MemoryConfig,
    /// The regions: RAM in address order, then the window if any.
    pub regions: Vec<MemoryRegion>,
    /// Size of the memory file in bytes.
    pub file_size: u64,
    /// Number of non-zero pages stored in the memory file.
    pub nonzero_pages: u64,
    /// CRC32 of the memory file's page list (its non-zero page bitmap).
    pub page_list_crc: u32,
}

impl MemoryLayout {
    /// The layout of a memory file for `config`: a header page, the RAM regions, the window,
    /// then the page bitmap. `nonzero_pages` and `page_list_crc` are filled in when written.
    pub(crate) fn for_config(config: MemoryConfig) -> Self {
        let mut regions = Vec::new();
        let mut offset = PAGE_SIZE;
        for (addr, size) in config.ram_ranges() {
            regions.push(MemoryRegion {
                guest_addr: addr.0,
                size,
                file_offset: offset,
                kind: RegionKind::Ram,
            });
            offset += size;
        }
        if config.window_size > 0 {
            regions.push(MemoryRegion {
                guest_addr: WINDOW_START,
                size: config.window_size,
                file_offset: offset,
                kind: RegionKind::Window,
            });
        }
        let mut layout = MemoryLayout {
            config,
            regions,
            file_size: 0,
            nonzero_pages: 0,
            page_list_crc: 0,
        };
        layout.file_size = layout.bitmap_offset() + layout.bitmap_len();
        layout
    }

    /// Number of guest pages in the memory file (RAM and window).
    pub fn data_pages(&self) -> u64 {
        self.regions.iter().map(MemoryRegion::pages).sum()
    }

    /// Offset of the page bitmap (just past the last region).
    pub(crate) fn bitmap_offset(&self) -> u64 {
        PAGE_SIZE + self.data_pages() * PAGE_SIZE
    }

    /// Length of the page bitmap in bytes (whole u64 words).
    pub(crate) fn bitmap_len(&self) -> u64 {
        self.data_pages().div_ceil(64) * 8
    }

    /// The region holding page `page` of the page list.
    pub(crate) fn region_of_page(&self, page: u64) -> Option<&MemoryRegion> {
        self.regions
            .iter()
            .find(|r| page >= r.first_page() && page < r.first_page() + r.pages())
    }

    /// Checks that the regions are exactly those `config` implies.
    fn check(&self) -> DecodeResult<()> {
        self.config
            .validate()
            .map_err(|e| DecodeError(format!("the memory configuration is invalid: {e}")))?;
        let expected = MemoryLayout::for_config(self.config);
        if expected.regions != self.regions {
            return Err(DecodeError(format!(
                "the memory regions {:?} do not match RAM {:#x} and window {:#x}",
                self.regions, self.config.ram_size, self.config.window_size
            )));
        }
        if expected.file_size != self.file_size {
            return Err(DecodeError(format!(
                "the memory file size {} does not match the layout ({})",
                self.file_size, expected.file_size
            )));
        }
        if self.nonzero_pages > self.data_pages() {
            return Err(DecodeError(format!(
                "{} non-zero pages in {} pages",
                self.nonzero_pages,
                self.data_pages()
            )));
        }
        Ok(())
    }

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.config.ram_size);
        e.u64(self.config.window_size);
        e.u32(PAGE_SIZE as u32);
        e.u32(self.regions.len() as u32);
        for r in &self.regions {
            e.u64(r.guest_addr);
            e.u64(r.size);
            e.u64(r.file_offset);
            e.u32(r.kind.code());
            e.u32(0);
        }
        e.u64(self.file_size);
        e.u64(self.nonzero_pages);
        e.u32(self.page_list_crc);
        e.u32(0);
    }

    fn decode(p: &[u8]) -> DecodeResult<Self> {
        let mut d = Decoder::new(p, "the MEMORY record");
        let config = MemoryConfig {
            ram_size: d.u64()?,
            window_size: d.u64()?,
        };
        let page_size = d.u32()?;
        if u64::from(page_size) != PAGE_SIZE {
            return Err(DecodeError(format!("page size {page_size} is not 4096")));
        }
        let count = d.u32()?;
        if count as usize > MAX_REGIONS {
            return Err(DecodeError(format!(
                "{count} memory regions (at most {MAX_REGIONS})"
            )));
        }
        let mut regions = Vec::new();
        for _ in 0..count {
            let guest_addr = d.u64()?;
            let size = d.u64()?;
            let file_offset = d.u64()?;
            let kind = match d.u32()? {
                1 => RegionKind::Ram,
                2 => RegionKind::Window,
                k => return Err(DecodeError(format!("unknown memory region kind {k}"))),
            };
            let _reserved = d.u32()?;
            regions.push(MemoryRegion {
                guest_addr,
                size,
                file_offset,
                kind,
            });
        }
        let layout = MemoryLayout {
            config,
            regions,
            file_size: d.u64()?,
            nonzero_pages: d.u64()?,
            page_list_crc: d.u32()?,
        };
        let _reserved = d.u32()?;
        d.finish()?;
        layout.check()?;
        Ok(layout)
    }
}

/// Everything a state file holds.
#[derive(Debug)]
pub struct SnapshotState {
    /// A random identifier, also written into the memory file's header, that ties the two
    /// (and any working-set file) together.
    pub id: u64,
    /// When the snapshot was taken (nanoseconds since the Unix epoch).
    pub created_unix_ns: u64,
    /// What wrote it (`nexus-snapshot <version>`).
    pub creator: String,
    /// The memory layout and the memory file's identity.
    pub memory: MemoryLayout,
    /// VM-wide KVM state.
    pub vm: VmState,
    /// The vCPUs, by index.
    pub vcpus: Vec<VcpuState>,
    /// The devices' sections.
    pub devices: Vec<DeviceState>,
}

impl SnapshotState {
    /// The whole state file: header, records, CRC32.
    pub(crate) fn to_file_bytes(&self) -> Vec<u8> {
        let mut body = Encoder::default();
        body.record(META, |e| {
            e.u64(self.id);
            e.u64(self.created_unix_ns);
            e.u16(self.creator.len() as u16);
            e.bytes(self.creator.as_bytes());
        });
        body.record(MEMORY, |e| self.memory.encode(e));
        body.record(VM, |e| self.vm.encode(e));
        for v in &self.vcpus {
            body.record(VCPU, |e| v.encode(e));
        }
        for d in &self.devices {
            body.record(DEVICE, |e| {
                e.u16(d.name.len() as u16);
                e.u16(0);
                e.u32(d.version);
                e.bytes(d.name.as_bytes());
                e.bytes(&d.data);
            });
        }
        let mut out = Vec::with_capacity(STATE_HEADER_SIZE + body.buf.len() + 4);
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body.buf.len() as u64).to_le_bytes());
        out.extend_from_slice(&body.buf);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and validates a state file's bytes; errors name `path`.
    pub(crate) fn from_file_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let found = bytes.len() as u64;
        let min = STATE_HEADER_SIZE as u64 + 4;
        if bytes.len() >= 8 && bytes[..8] != STATE_MAGIC {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                kind: "snapshot state file",
            });
        }
        if found < min {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: min,
                found,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let body_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let expected = body_len.saturating_add(min);
        if expected != found {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected,
                found,
            });
        }
        let (covered, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                what: "the state file's",
                expected: stored,
                found: computed,
            });
        }
        let flags = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if flags != 0 {
            return Err(Error::malformed(path, format!("unknown flags {flags:#x}")));
        }
        Self::decode_body(&covered[STATE_HEADER_SIZE..]).map_err(|e| Error::malformed(path, e.0))
    }

    fn decode_body(body: &[u8]) -> DecodeResult<Self> {
        let mut d = Decoder::new(body, "the state file's body");
        let mut expect = |want: u32, name: &str| -> DecodeResult<&[u8]> {
            let (tag, p) = d.record()?;
            if tag == want {
                Ok(p)
            } else {
                Err(DecodeError(format!(
                    "expected the {name} record (tag {want}), found tag {tag}"
                )))
            }
        };
        let meta = expect(META, "META")?;
        let memory = MemoryLayout::decode(expect(MEMORY, "MEMORY")?)?;
        let vm = VmState::decode(expect(VM, "VM")?)?;
        let mut m = Decoder::new(meta, "the META record");
        let id = m.u64()?;
        let created_unix_ns = m.u64()?;
        let len = m.u16()? as usize;
        if len > MAX_CREATOR_LEN {
            return Err(DecodeError(format!(
                "the creator is {len} bytes (at most {MAX_CREATOR_LEN})"
            )));
        }
        let creator = String::from_utf8(m.take(len)?.to_vec())
            .map_err(|_| DecodeError("the creator is not UTF-8".into()))?;
        m.finish()?;

        let mut vcpus = Vec::new();
        let mut devices = Vec::new();
        while !d.is_empty() {
            let (tag, p) = d.record()?;
            match tag {
                VCPU if devices.is_empty() => {
                    if vcpus.len() == MAX_VCPUS {
                        return Err(DecodeError(format!("more than {MAX_VCPUS} vCPUs")));
                    }
                    let v = VcpuState::decode(p)?;
                    if v.id != vcpus.len() as u64 {
                        return Err(DecodeError(format!(
                            "vCPU {} where vCPU {} was expected",
                            v.id,
                            vcpus.len()
                        )));
                    }
                    vcpus.push(v);
                }
                DEVICE => {
                    if devices.len() == MAX_DEVICES {
                        return Err(DecodeError(format!(
                            "more than {MAX_DEVICES} device sections"
                        )));
                    }
                    devices.push(decode_device(p)?);
                }
                other => {
                    return Err(DecodeError(format!(
                        "unexpected record (tag {other}) after the vCPUs and devices began"
                    )));
                }
            }
        }
        if vcpus.is_empty() {
            return Err(DecodeError("the snapshot has no vCPU".into()));
        }
        if vm.irqchip.is_some() != vcpus.iter().all(|v| v.lapic.is_some()) {
            return Err(DecodeError(
                "the VM's irqchip and the vCPUs' LAPICs disagree".into(),
            ));
        }
        check_unique(&devices).map_err(|e| DecodeError(e.to_string()))?;
        Ok(SnapshotState {
            id,
            created_unix_ns,
            creator,
            memory,
            vm,
            vcpus,
            devices,
        })
    }
}

/// A `DEVICE` record's payload.
fn decode_device(p: &[u8]) -> DecodeResult<DeviceState> {
    let mut r = Decoder::new(p, "a DEVICE record");
    let name_len = r.u16()? as usize;
    let _reserved = r.u16()?;
    let version = r.u32()?;
    if name_len > MAX_DEVICE_NAME_LEN {
        return Err(DecodeError(format!(
            "a device name is {name_len} bytes (at most {MAX_DEVICE_NAME_LEN})"
        )));
    }
    let name = String::from_utf8(r.take(name_len)?.to_vec())
        .map_err(|_| DecodeError("a device name is not UTF-8".into()))?;
    let data = r.rest();
    if data.len() > MAX_DEVICE_STATE_LEN {
        return Err(DecodeError(format!(
            "device {name:?} has {} bytes of state (at most {MAX_DEVICE_STATE_LEN})",
            data.len()
        )));
    }
    Ok(DeviceState {
        name,
        version,
        data: data.to_vec(),
    })
}

/// Reads the state file at `path` through one descriptor: its identity (`fstat`) first, and
/// its bytes only if its size is within [`MAX_STATE_FILE_SIZE`].
pub(crate) fn read_file(path: &Path) -> Result<(Vec<u8>, FileIdentity)> {
    let file = File::open(path).map_err(|e| Error::io("read", path, e))?;
    let identity = FileIdentity::of_file(&file, path)?;
    let too_large = |size| Error::StateFileTooLarge {
        path: path.to_path_buf(),
        size,
        max: MAX_STATE_FILE_SIZE,
    };
    if identity.size > MAX_STATE_FILE_SIZE {
        return Err(too_large(identity.size));
    }
    let mut bytes = Vec::with_capacity(identity.size as usize);
    // Never more than the bound, even if the file grows while it is read.
    (&file)
        .take(MAX_STATE_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_STATE_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok((bytes, identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::tests::sample;
    use std::path::PathBuf;

    fn state() -> SnapshotState {
        let mut memory = MemoryLayout::for_config(MemoryConfig {
            ram_size: 16 << 20,
            window_size: 1 << 20,
        });
        memory.nonzero_pages = 3;
        memory.page_list_crc = 0x1234;
        SnapshotState {
            id: 0xfeed,
            created_unix_ns: 1,
            creator: "test".into(),
            memory,
            vm: VmState::default(),
            vcpus: vec![sample(0), sample(1)],
            devices: vec![DeviceState {
                name: "serial".into(),
                version: 1,
                data: vec![1, 2, 3],
            }],
        }
    }

    /// A state file with every bound reached: the longest creator, three memory regions, a
    /// VM record with every sub-record, the most vCPUs with every sub-record and the longest
    /// lists, and the most devices with the longest names and states.
    fn largest_state() -> SnapshotState {
        use crate::limits::{MAX_CPUID_ENTRIES, MAX_MSRS};
        use crate::vm_state::IrqchipState;
        use kvm_bindings::{kvm_cpuid_entry2, kvm_irqchip, kvm_msr_entry};

        let mut s = state();
        s.creator = "c".repeat(MAX_CREATOR_LEN);
        s.memory = MemoryLayout::for_config(MemoryConfig {
            ram_size: 4 << 30,
            window_size: 1 << 20,
        });
        assert_eq!(s.memory.regions.len(), MAX_REGIONS);
        let chip = |chip_id| kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        s.vm = VmState {
            clock: Some(Default::default()),
            irqchip: Some(IrqchipState {
                pic_master: chip(0),
                pic_slave: chip(1),
                ioapic: chip(2),
                pit: Some(Default::default()),
            }),
        };
        s.vcpus = (0..MAX_VCPUS as u64)
            .map(|id| {
                let mut v = sample(id);
                v.debug_regs = Some(Default::default());
                v.lapic = Some(Default::default());
                v.msrs = vec![kvm_msr_entry::default(); MAX_MSRS];
                v.cpuid = vec![kvm_cpuid_entry2::default(); MAX_CPUID_ENTRIES];
                v
            })
            .collect();
        s.devices = (0..MAX_DEVICES)
            .map(|i| DeviceState {
                name: format!("{i:0width$}", width = MAX_DEVICE_NAME_LEN),
                version: 1,
                data: vec![0xa5; MAX_DEVICE_STATE_LEN],
            })
            .collect();
        s
    }

    #[test]
    fn the_largest_state_file_is_exactly_the_derived_bound() {
        let s = largest_state();
        let bytes = s.to_file_bytes();
        assert_eq!(bytes.len() as u64, MAX_STATE_FILE_SIZE);
        // The number the documentation gives.
        assert_eq!(MAX_STATE_FILE_SIZE, 9_602_165);
        let back = SnapshotState::from_file_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.vcpus.len(), MAX_VCPUS);
        assert_eq!(back.devices.len(), MAX_DEVICES);
    }

    #[test]
    fn counts_and_lengths_past_the_bounds_are_refused() {
        let p = PathBuf::from("/snap/vm.state");
        let refused = |s: SnapshotState, want: &str| {
            let err = SnapshotState::from_file_bytes(&s.to_file_bytes(), &p).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        };
        let mut s = state();
        s.creator = "c".repeat(MAX_CREATOR_LEN + 1);
        refused(s, "the creator is 256 bytes (at most 255)");
        let mut s = state();
        s.vcpus = (0..=MAX_VCPUS as u64).map(sample).collect();
        refused(s, "more than 256 vCPUs");
        let mut s = state();
        s.vcpus[0].msrs = vec![Default::default(); crate::limits::MAX_MSRS + 1];
        refused(s, "the MSRS record has 257 entries (at most 256)");
        let mut s = state();
        s.vcpus[1].cpuid = vec![Default::default(); crate::limits::MAX_CPUID_ENTRIES + 1];
        refused(s, "the CPUID record has 257 entries (at most 256)");
        let mut s = state();
        s.devices = (0..=MAX_DEVICES)
            .map(|i| DeviceState {
                name: format!("d{i}"),
                version: 1,
                data: vec![],
            })
            .collect();
        refused(s, "more than 64 device sections");
        let mut s = state();
        s.devices[0].name = "n".repeat(MAX_DEVICE_NAME_LEN + 1);
        refused(s, "a device name is 256 bytes (at most 255)");
        let mut s = state();
        s.devices[0].data = vec![0; MAX_DEVICE_STATE_LEN + 1];
        refused(
            s,
            "device \"serial\" has 65537 bytes of state (at most 65536)",
        );
    }

    /// Bytes this process has read through read(2) and friends so far.
    fn bytes_read_by_this_process() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    #[test]
    fn an_oversized_state_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.state");
        // A sparse 1 GiB file: reading it would read 1 GiB of zeros.
        let file = File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        let before = bytes_read_by_this_process();
        let err = read_file(&path).unwrap_err();
        let read = bytes_read_by_this_process() - before;
        assert!(
            matches!(err, Error::StateFileTooLarge { size, max, .. }
                if size == 1 << 30 && max == MAX_STATE_FILE_SIZE),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // Other tests of this process may read files meanwhile, but not a gigabyte.
        assert!(read < 256 << 20, "{read} bytes were read");

        // One byte over the bound is refused; at the bound the file is read (and then
        // refused for what it holds).
        file.set_len(MAX_STATE_FILE_SIZE + 1).unwrap();
        assert!(matches!(
            read_file(&path),
            Err(Error::StateFileTooLarge { .. })
        ));
        file.set_len(MAX_STATE_FILE_SIZE).unwrap();
        let (bytes, identity) = read_file(&path).unwrap();
        assert_eq!(bytes.len() as u64, MAX_STATE_FILE_SIZE);
        assert_eq!(identity.size, MAX_STATE_FILE_SIZE);
        assert!(matches!(
            SnapshotState::from_file_bytes(&bytes, &path),
            Err(Error::BadMagic { .. })
        ));

        // The largest valid state file opens.
        std::fs::write(&path, largest_state().to_file_bytes()).unwrap();
        let (bytes, _) = read_file(&path).unwrap();
        SnapshotState::from_file_bytes(&bytes, &path).unwrap();
    }

    #[test]
    fn layout_places_regions_after_a_header_page() {
        let l = MemoryLayout::for_config(MemoryConfig {
            ram_size: 16 << 20,
            window_size: 1 << 20,
        });
        assert_eq!(l.regions.len(), 2);
        assert_eq!(l.regions[0].file_offset, 4096);
        assert_eq!(l.regions[1].file_offset, 4096 + (16 << 20));
        assert_eq!(l.regions[1].kind, RegionKind::Window);
        assert_eq!(l.data_pages(), 17 * 256);
        assert_eq!(l.file_size, 4096 + (17 << 20) + 17 * 256 / 8);
        assert_eq!(l.region_of_page(4095).unwrap().kind, RegionKind::Ram);
        assert_eq!(l.region_of_page(4096).unwrap().kind, RegionKind::Window);
        assert!(l.region_of_page(17 * 256).is_none());
    }

    #[test]
    fn state_file_round_trips() {
        let s = state();
        let bytes = s.to_file_bytes();
        assert_eq!(&bytes[..8], b"NXSSTATE");
        let back = SnapshotState::from_file_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.id, s.id);
        assert_eq!(back.memory, s.memory);
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].regs, s.vcpus[1].regs);
        assert_eq!(back.devices, s.devices);
    }

    #[test]
    fn bad_state_files_are_refused_with_the_reason() {
        let p = PathBuf::from("/snap/vm.state");
        let good = state().to_file_bytes();
        let check = |bytes: &[u8], want: &str| {
            let err = SnapshotState::from_file_bytes(bytes, &p).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("/snap/vm.state"), "{msg}");
            assert!(msg.contains(want), "{msg} lacks {want}");
        };
        check(&good[..good.len() - 1], "truncated");
        check(&good[..10], "truncated");
        check(&[], "truncated");
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        check(&flipped, "corrupted");
        let mut version = good.clone();
        version[8] = 2;
        check(&version, "format version 2");
        let mut magic = good.clone();
        magic[0] = b'X';
        check(&magic, "bad magic");
        let mut longer = good.clone();
        longer.push(0);
        check(&longer, "truncated or overlong");

        // A well-checksummed file with a bad body.
        let mut s = state();
        s.vcpus.remove(0);
        check(&s.to_file_bytes(), "vCPU 1 where vCPU 0 was expected");
        let mut s = state();
        s.memory.regions[1].file_offset += 4096;
        check(&s.to_file_bytes(), "memory regions");
        let mut s = state();
        s.devices.push(s.devices[0].clone());
        check(&s.to_file_bytes(), "unique");
    }
}
