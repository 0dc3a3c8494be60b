//! A strict parser for the static x86-64 ELF executables micro-guests are built as.
//!
//! It reads only the ELF header and program headers, checks every offset and length with
//! checked arithmetic, and never panics on any input.

/// Errors of parsing an ELF file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Shorter than an ELF header, or a table runs past the end of the file.
    #[error("The ELF file is truncated: {0}")]
    Truncated(&'static str),
    /// Not an ELF file.
    #[error("Not an ELF file (bad magic)")]
    BadMagic,
    /// Not 64-bit little endian.
    #[error("Not a 64-bit little-endian ELF file")]
    NotElf64Le,
    /// Not x86-64.
    #[error("The ELF file is for machine {0}, not x86-64 (62)")]
    WrongMachine(u16),
    /// Not a static executable.
    #[error("The ELF file has type {0}; a static executable (ET_EXEC, 2) is required")]
    NotExecutable(u16),
    /// Program header entry size other than 56.
    #[error("Unexpected program header entry size {0}")]
    BadPhentsize(u16),
    /// A segment whose file size exceeds its memory size, or whose range overflows.
    #[error("Segment {index} is malformed: {why}")]
    BadSegment {
        /// Index of the program header.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// An interpreter is requested (dynamically linked).
    #[error("The ELF file is dynamically linked (has PT_INTERP)")]
    Dynamic,
    /// No loadable segment.
    #[error("The ELF file has no loadable segment")]
    NoSegments,
    /// The entry point is not inside an executable segment.
    #[error("The entry point {0:#x} is not inside an executable segment")]
    EntryOutsideCode(u64),
}

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const MAX_PHDRS: usize = 256;

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Load address (identity mapped: virtual == physical).
    pub addr: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Bytes in memory (the rest is zeroed).
    pub mem_size: u64,
    /// Executable.
    pub executable: bool,
}

impl Segment {
    /// One past the last byte in memory.
    pub fn end(&self) -> u64 {
        self.addr + self.mem_size
    }
}

/// A parsed executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// Entry point.
    pub entry: u64,
    /// Loadable segments, in file order.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl ElfImage {
    /// Parses `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let hdr = bytes
            .get(..EHDR_SIZE)
            .ok_or(Error::Truncated("no complete ELF header"))?;
        if hdr[..4] != [0x7f, b'E', b'L', b'F'] {
            return Err(Error::BadMagic);
        }
        if hdr[4] != 2 || hdr[5] != 1 {
            return Err(Error::NotElf64Le);
        }
        let e_type = u16_at(hdr, 16);
        let machine = u16_at(hdr, 18);
        if machine != 62 {
            return Err(Error::WrongMachine(machine));
        }
        if e_type != 2 {
            return Err(Error::NotExecutable(e_type));
        }
        let entry = u64_at(hdr, 24);
        let phoff = u64_at(hdr, 32);
        let phentsize = u16_at(hdr, 54);
        let phnum = usize::from(u16_at(hdr, 56));
        if phentsize as usize != PHDR_SIZE {
            return Err(Error::BadPhentsize(phentsize));
        }
        if phnum > MAX_PHDRS {
            return Err(Error::Truncated("implausible program header count"));
        }
        let table_len = phnum * PHDR_SIZE;
        let start = usize::try_from(phoff).map_err(|_| Error::Truncated("program headers"))?;
        let table = start
            .checked_add(table_len)
            .and_then(|end| bytes.get(start..end))
            .ok_or(Error::Truncated(
                "program headers run past the end of the file",
            ))?;
        let mut segments = Vec::new();
        for (index, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let p_type = u32_at(ph, 0);
            if p_type == PT_INTERP {
                return Err(Error::Dynamic);
            }
            if p_type != PT_LOAD {
                continue;
            }
            let flags = u32_at(ph, 4);
            let offset = u64_at(ph, 8);
            let addr = u64_at(ph, 16);
            let file_size = u64_at(ph, 32);
            let mem_size = u64_at(ph, 40);
            if file_size > mem_size {
                return Err(Error::BadSegment {
                    index,
                    why: "file size exceeds memory size",
                });
            }
            if addr.checked_add(mem_size).is_none() {
                return Err(Error::BadSegment {
                    index,
                    why: "address range overflows",
                });
            }
            let file_end = offset.checked_add(file_size).ok_or(Error::BadSegment {
                index,
                why: "file range overflows",
            })?;
            if file_end > bytes.len() as u64 {
                return Err(Error::Truncated(
                    "a segment's bytes run past the end of the file",
                ));
            }
            if mem_size == 0 {
                continue;
            }
            segments.push(Segment {
                addr,
                offset,
                file_size,
                mem_size,
                executable: flags & PF_X != 0,
            });
        }
        if segments.is_empty() {
            return Err(Error::NoSegments);
        }
        if !segments
            .iter()
            .any(|s| s.executable && entry >= s.addr && entry < s.end())
        {
            return Err(Error::EntryOutsideCode(entry));
        }
        Ok(ElfImage { entry, segments })
    }

    /// The file bytes of `segment` (validated by [`ElfImage::parse`]).
    pub fn segment_bytes<'a>(&self, bytes: &'a [u8], segment: &Segment) -> &'a [u8] {
        &bytes[segment.offset as usize..(segment.offset + segment.file_size) as usize]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal static executable: one RX segment at `addr` holding `code`.
    pub(crate) fn tiny_elf(addr: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE + PHDR_SIZE];
        b[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&addr.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = EHDR_SIZE;
        let off = (EHDR_SIZE + PHDR_SIZE) as u64;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        b[ph + 16..ph + 24].copy_from_slice(&addr.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&addr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        b.extend_from_slice(code);
        b
    }

    #[test]
    fn parses_a_valid_image() {
        let elf = tiny_elf(0x10_0000, &[0x90, 0xf4], 0x100);
        let img = ElfImage::parse(&elf).unwrap();
        assert_eq!(img.entry, 0x10_0000);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].mem_size, 0x102);
        assert_eq!(img.segment_bytes(&elf, &img.segments[0]), &[0x90, 0xf4]);
    }

    #[test]
    fn refuses_bad_files() {
        let good = tiny_elf(0x10_0000, &[0x90], 0);
        assert_eq!(
            ElfImage::parse(&good[..10]),
            Err(Error::Truncated("no complete ELF header"))
        );
        let mut m = good.clone();
        m[0] = 0;
        assert_eq!(ElfImage::parse(&m), Err(Error::BadMagic));
        let mut m = good.clone();
        m[4] = 1;
        assert_eq!(ElfImage::parse(&m), Err(Error::NotElf64Le));
        let mut m = good.clone();
        m[18] = 183; // aarch64
        assert_eq!(ElfImage::parse(&m), Err(Error::WrongMachine(183)));
        let mut m = good.clone();
        m[16] = 3; // ET_DYN
        assert_eq!(ElfImage::parse(&m), Err(Error::NotExecutable(3)));
        let mut m = good.clone();
        m[24] = 0x80; // entry outside the segment
        assert!(matches!(
            ElfImage::parse(&m),
            Err(Error::EntryOutsideCode(_))
        ));
        // Truncated segment bytes.
        assert!(matches!(
            ElfImage::parse(&good[..good.len() - 1]),
            Err(Error::Truncated(_))
        ));
        // Program headers past the end.
        let mut m = good.clone();
        m[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(ElfImage::parse(&m), Err(Error::Truncated(_))));
    }

    #[test]
    fn never_panics_on_mutations() {
        let good = tiny_elf(0x10_0000, &[0x90; 32], 16);
        for i in 0..good.len() {
            for v in [0u8, 0xff, 0x7f, 0x80] {
                let mut m = good.clone();
                m[i] = v;
                let _ = ElfImage::parse(&m);
            }
            let _ = ElfImage::parse(&good[..i]);
        }
    }
}
