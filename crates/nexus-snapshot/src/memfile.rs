//! The memory file: a header page, guest RAM and the window at page-aligned offsets with a
//! hole wherever a page is not stored (zero, or never touched by the guest), and a bitmap of
//! the stored pages (the explicit page list). A page that is not stored reads as zero.
//!
//! ```text
//! 0          4096                         bitmap offset          file size
//! ┌──────────┬──────────┬─────────┬───────┬────────────────────┐
//! │ header   │ low RAM  │high RAM │window │ non-zero page bits │
//! │ (1 page) │ (holes where pages are zero)│  u64 LE words      │
//! └──────────┴──────────┴─────────┴───────┴────────────────────┘
//! ```
//!
//! Page `n` of the page list is the page at file offset `4096 × (n + 1)`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nexus_kvm::VmMemory;
use nexus_kvm::memory::GuestRegionMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use zerocopy::IntoBytes;

use crate::codec::{Decoder, Encoder};
use crate::file_identity::FileIdentity;
use crate::state::{MemoryLayout, MemoryRegion, RegionKind, SnapshotState};
use crate::{Error, FORMAT_VERSION, PAGE_SIZE, Result};

/// The memory file's magic bytes.
pub const MEMORY_MAGIC: [u8; 8] = *b"NXSMEMRY";
const WORDS_PER_PAGE: usize = PAGE_SIZE as usize / 8;
/// Pages scanned per read while saving.
const SCAN_CHUNK_PAGES: usize = 256;

/// One bit per page of the page list: set when the page is stored in the file (it was
/// non-zero, or touched by the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    pub(crate) fn new(pages: u64) -> Self {
        PageBitmap {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    pub(crate) fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    pub(crate) fn set(&mut self, page: u64) {
        self.words[(page / 64) as usize] |= 1 << (page % 64);
    }

    pub(crate) fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The bitmap as stored: u64 words, little endian.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8], pages: u64) -> Option<Self> {
        if bytes.len() as u64 != pages.div_ceil(64) * 8 {
            return None;
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        // Bits past the last page must be clear.
        if pages % 64 != 0 && words.last().is_some_and(|w| w >> (pages % 64) != 0) {
            return None;
        }
        Some(PageBitmap { words, pages })
    }

    /// Runs `(first page, page count)` of set bits inside `[first, first + count)`.
    pub(crate) fn runs(&self, first: u64, count: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut start = None;
        for p in first..first + count {
            match (self.get(p), start) {
                (true, None) => start = Some(p),
                (false, Some(s)) => {
                    runs.push((s, p - s));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, first + count - s));
        }
        runs
    }
}

/// Moves the file written at `tmp` to `path` atomically. When a file is already at `path`,
/// the two are exchanged (`renameat2(RENAME_EXCHANGE)`) and the old one, now at `tmp`, is
/// removed: renaming over an existing file would make ext4 start writing the new file's
/// blocks out at once (`auto_da_alloc`), which cost a replacing save of a 64 MiB guest
/// about 25 ms more than a save to new files.
pub(crate) fn move_into_place(tmp: &Path, path: &Path) -> Result<()> {
    match crate::sys::exchange(tmp, path) {
        Ok(()) => std::fs::remove_file(tmp).map_err(|e| Error::io("remove the replaced", tmp, e)),
        // Nothing at `path` yet (ENOENT), or a file system without RENAME_EXCHANGE.
        Err(_) => std::fs::rename(tmp, path).map_err(|e| Error::io("rename into place", path, e)),
    }
}

/// `path` with `.tmp` appended: files are written there and renamed into place.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn header_bytes(layout: &MemoryLayout, id: u64) -> Vec<u8> {
    let mut e = Encoder::default();
    e.bytes(&MEMORY_MAGIC);
    e.u32(FORMAT_VERSION);
    e.u32(PAGE_SIZE as u32);
    e.u64(id);
    e.u64(layout.file_size);
    e.u64(layout.bitmap_offset());
    e.u64(layout.bitmap_len());
    e.u64(layout.nonzero_pages);
    e.u32(layout.page_list_crc);
    e.u32(layout.regions.len() as u32);
    for r in &layout.regions {
        e.u64(r.guest_addr);
        e.u64(r.size);
        e.u64(r.file_offset);
        e.u32(match r.kind {
            RegionKind::Ram => 1,
            RegionKind::Window => 2,
        });
        e.u32(0);
    }
    let crc = crc32fast::hash(&e.buf);
    e.u32(crc);
    e.buf
}

/// The guest memory region at `r.guest_addr`, which must be `r.size` bytes long.
pub(crate) fn guest_region<'a>(
    memory: &'a VmMemory,
    r: &MemoryRegion,
) -> Result<&'a GuestRegionMmap> {
    memory
        .guest()
        .find_region(GuestAddress(r.guest_addr))
        .filter(|region| region.start_addr().0 == r.guest_addr && region.len() == r.size)
        .ok_or(Error::GuestMemory {
            addr: r.guest_addr,
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(r.guest_addr)),
        })
}

/// Writes `memory` to a sparse memory file at `path` (through a temporary file renamed into
/// place). Returns the layout with the page count and page-list checksum filled in, the
/// number of bytes of page data written, and the number of pages read to find the non-zero
/// ones.
///
/// Anonymous RAM is written from what the guest actually touched: the pages that exist
/// (present or swapped, not the shared zero page), found with `PAGEMAP_SCAN` on
/// `/proc/self/pagemap`, are written straight from guest memory, one `pwrite` per run of
/// consecutive pages; nothing is read or written for the others, which read as zero. Such a
/// page is stored even when the guest wrote zeros to it. File-backed regions (the window, RAM
/// of a lazy restore), RAM registered with userfaultfd by a restore (whose missing pages are
/// the snapshot's, not zero), and every region on kernels without `PAGEMAP_SCAN` are read
/// whole instead, and only their non-zero pages stored.
pub(crate) fn write(path: &Path, id: u64, memory: &VmMemory) -> Result<(MemoryLayout, u64, u64)> {
    let mut layout = MemoryLayout::for_config(memory.config());
    let tmp = temp_path(path);
    let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.set_len(layout.file_size)
        .map_err(|e| Error::io("size", &tmp, e))?;
    let mut bitmap = PageBitmap::new(layout.data_pages());
    let mut pagemap = None;
    let mut written = 0u64;
    let mut scanned = 0u64;
    for r in &layout.regions {
        let region = guest_region(memory, r)?;
        let host = region.as_ptr() as u64;
        let anonymous = region.file_offset().is_none() && !crate::uffd::is_registered(host, r.size);
        let runs = if anonymous {
            written_runs(&mut pagemap, host, r.size)
        } else {
            None
        };
        written += match runs {
            Some(runs) => write_runs(&file, &tmp, r, region, host, &runs, &mut bitmap)?,
            None => {
                scanned += r.pages();
                write_scanned(&file, &tmp, r, region, &mut bitmap)?
            }
        };
    }
    let bitmap_bytes = bitmap.to_bytes();
    layout.nonzero_pages = bitmap.count();
    layout.page_list_crc = crc32fast::hash(&bitmap_bytes);
    file.write_all_at(&bitmap_bytes, layout.bitmap_offset())
        .map_err(|e| Error::io("write", &tmp, e))?;
    file.write_all_at(&header_bytes(&layout, id), 0)
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(file);
    move_into_place(&tmp, path)?;
    Ok((layout, written, scanned))
}

/// The runs of written pages of the anonymous mapping `[host, host + len)`, or `None` when
/// the kernel cannot tell (no `PAGEMAP_SCAN`): then the region is scanned.
fn written_runs(pagemap: &mut Option<File>, host: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    if pagemap.is_none() {
        *pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| log::debug!("Cannot open /proc/self/pagemap ({e}); scanning RAM"))
            .ok();
    }
    crate::sys::written_runs(pagemap.as_ref()?, host, len)
        .map_err(|e| log::debug!("PAGEMAP_SCAN failed ({e}); scanning RAM"))
        .ok()
}

/// Writes the runs `(host address, length)` of region `r` (mapped at `host`) straight from
/// guest memory, one `pwrite` each, and marks their pages stored. Returns the bytes written.
fn write_runs(
    file: &File,
    tmp: &Path,
    r: &MemoryRegion,
    region: &GuestRegionMmap,
    host: u64,
    runs: &[(u64, u64)],
    bitmap: &mut PageBitmap,
) -> Result<u64> {
    let mut written = 0;
    for &(start, len) in runs {
        let offset = start - host;
        let slice = region
            .get_slice(MemoryRegionAddress(offset), len as usize)
            .map_err(|source| Error::GuestMemory {
                addr: r.guest_addr + offset,
                source,
            })?;
        crate::sys::pwrite_all(file, &slice, r.file_offset + offset)
            .map_err(|e| Error::io("write", tmp, e))?;
        let first = r.first_page() + offset / PAGE_SIZE;
        for page in first..first + len / PAGE_SIZE {
            bitmap.set(page);
        }
        written += len;
    }
    Ok(written)
}

/// Reads region `r` whole and writes its non-zero pages, one `pwrite` per run of them, and
/// marks them stored. Returns the bytes written.
fn write_scanned(
    file: &File,
    tmp: &Path,
    r: &MemoryRegion,
    region: &GuestRegionMmap,
    bitmap: &mut PageBitmap,
) -> Result<u64> {
    let mut words = vec![0u64; SCAN_CHUNK_PAGES * WORDS_PER_PAGE];
    let mut written = 0u64;
    let mut done = 0u64;
    while done < r.size {
        let len = (r.size - done).min(words.len() as u64 * 8) as usize;
        let buf = &mut words.as_mut_bytes()[..len];
        region
            .read_slice(buf, MemoryRegionAddress(done))
            .map_err(|source| Error::GuestMemory {
                addr: r.guest_addr + done,
                source,
            })?;
        let pages = len / PAGE_SIZE as usize;
        let nonzero = |i: usize| {
            words[i * WORDS_PER_PAGE..(i + 1) * WORDS_PER_PAGE]
                .iter()
                .fold(0, |a, w| a | w)
                != 0
        };
        // Write runs of non-zero pages with one pwrite each.
        let mut i = 0;
        while i < pages {
            if !nonzero(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && nonzero(i) {
                bitmap.set(r.first_page() + done / PAGE_SIZE + i as u64);
                i += 1;
            }
            let bytes = &words.as_bytes()[start * PAGE_SIZE as usize..i * PAGE_SIZE as usize];
            let at = r.file_offset + done + start as u64 * PAGE_SIZE;
            file.write_all_at(bytes, at)
                .map_err(|e| Error::io("write", tmp, e))?;
            written += bytes.len() as u64;
        }
        done += len as u64;
    }
    Ok(written)
}

/// An opened, validated memory file.
#[derive(Debug)]
pub(crate) struct MemoryFile {
    pub(crate) path: PathBuf,
    /// Shared by every lazily restored VM's mapping (one descriptor for them all).
    pub(crate) file: std::sync::Arc<File>,
    pub(crate) bitmap: PageBitmap,
    /// The file as it was opened (`fstat` of `file`).
    identity: FileIdentity,
}

impl MemoryFile {
    /// Opens the memory file at `path` and checks that it is the one `state` describes: size,
    /// header (magic, version, checksum), snapshot id, regions, and the page list's checksum.
    pub(crate) fn open(path: &Path, state: &SnapshotState) -> Result<Self> {
        let layout = &state.memory;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let identity = FileIdentity::of_file(&file, path)?;
        let size = identity.size;
        let mut header = vec![0u8; PAGE_SIZE as usize];
        let got = read_up_to(&file, &mut header, 0).map_err(|e| Error::io("read", path, e))?;
        if got >= 8 && header[..8] != MEMORY_MAGIC {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                kind: "snapshot memory file",
            });
        }
        if got < header.len() {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: layout.file_size,
                found: size,
            });
        }
        let mut d = Decoder::new(&header, "the memory file header");
        let field = |r: crate::codec::DecodeResult<u64>| r.map_err(|e| Error::malformed(path, e.0));
        d.take(8).map_err(|e| Error::malformed(path, e.0))?;
        let version = field(d.u32().map(u64::from))? as u32;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        // The header's CRC covers 64 + 32 × regions bytes; the region count is at 60.
        let count = u32::from_le_bytes(header[60..64].try_into().expect("4 bytes")) as usize;
        if count > 3 {
            return Err(Error::malformed(
                path,
                format!("{count} regions (at most 3)"),
            ));
        }
        let covered = 64 + 32 * count;
        let stored = u32::from_le_bytes(header[covered..covered + 4].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&header[..covered]);
        if stored != computed {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                what: "the memory file header's",
                expected: stored,
                found: computed,
            });
        }
        let expected = header_bytes(layout, state.id);
        let id = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        if id != state.id {
            return Err(Error::mismatch(
                path,
                format!(
                    "it belongs to snapshot {id:#018x}, the state file to snapshot {:#018x}",
                    state.id
                ),
            ));
        }
        if size != layout.file_size {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: layout.file_size,
                found: size,
            });
        }
        if header[..expected.len()] != expected[..] {
            return Err(Error::mismatch(
                path,
                "its layout (regions, page count or page-list checksum) differs",
            ));
        }
        let mut bits = vec![0u8; layout.bitmap_len() as usize];
        file.read_exact_at(&mut bits, layout.bitmap_offset())
            .map_err(|e| Error::io("read the page list of", path, e))?;
        let crc = crc32fast::hash(&bits);
        if crc != layout.page_list_crc {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                what: "the page list's",
                expected: layout.page_list_crc,
                found: crc,
            });
        }
        let bitmap = PageBitmap::from_bytes(&bits, layout.data_pages())
            .ok_or_else(|| Error::malformed(path, "the page list has bits past the last page"))?;
        if bitmap.count() != layout.nonzero_pages {
            return Err(Error::malformed(
                path,
                format!(
                    "the page list has {} pages; the header says {}",
                    bitmap.count(),
                    layout.nonzero_pages
                ),
            ));
        }
        Ok(MemoryFile {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(file),
            bitmap,
            identity,
        })
    }

    /// Fails with [`Error::FileChanged`] if the file changed since it was opened: truncated
    /// or written to (`fstat` of the open descriptor, the one every restore maps or reads),
    /// or replaced or removed (`stat` of the path).
    pub(crate) fn check(&self) -> Result<()> {
        self.identity.check_file(&self.file, &self.path)?;
        self.identity.check_path(&self.path)
    }

    /// The error for a failed read of the file: [`Error::FileChanged`] if it changed (a read
    /// past a new end), else the read's own error.
    pub(crate) fn read_error(&self, op: &'static str, e: std::io::Error) -> Error {
        match self.identity.check_file(&self.file, &self.path) {
            Err(changed @ Error::FileChanged { .. }) => changed,
            _ => Error::io(op, &self.path, e),
        }
    }

    /// Reads the non-zero pages of `r` into `dst` (fresh, zeroed memory), one `pread` per run
    /// of consecutive pages. Returns the bytes read.
    pub(crate) fn fill(&self, r: &MemoryRegion, dst: &GuestRegionMmap) -> Result<u64> {
        let mut read = 0;
        for (page, count) in self.bitmap.runs(r.first_page(), r.pages()) {
            let offset_in_region = (page - r.first_page()) * PAGE_SIZE;
            let len = count * PAGE_SIZE;
            let slice = dst
                .get_slice(MemoryRegionAddress(offset_in_region), len as usize)
                .map_err(|e| Error::GuestMemory {
                    addr: r.guest_addr + offset_in_region,
                    source: e,
                })?;
            crate::sys::pread_exact(&self.file, &slice, r.file_offset + offset_in_region)
                .map_err(|e| self.read_error("read", e))?;
            read += len;
        }
        Ok(read)
    }
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer at end of file).
pub(crate) fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_runs_and_bytes() {
        let mut b = PageBitmap::new(130);
        for p in [0, 1, 2, 10, 63, 64, 129] {
            b.set(p);
        }
        assert_eq!(b.count(), 7);
        assert_eq!(b.runs(0, 130), vec![(0, 3), (10, 1), (63, 2), (129, 1)]);
        assert_eq!(b.runs(1, 10), vec![(1, 2), (10, 1)]);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 24);
        assert_eq!(PageBitmap::from_bytes(&bytes, 130).unwrap(), b);
        assert!(PageBitmap::from_bytes(&bytes[..16], 130).is_none());
        let mut extra = bytes.clone();
        extra[23] |= 0x80;
        assert!(PageBitmap::from_bytes(&extra, 130).is_none());
        assert!(!b.get(130) && b.get(129));
    }
}
