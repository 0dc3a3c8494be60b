//! The working-set file: the pages a recording restore saw the guest touch, with the contents
//! of the non-zero ones stored contiguously so that a prefetch restore reads them all in one
//! sequential read — in the background, while the restored guest already runs.
//!
//! ```text
//! 0        64                      data offset (page aligned)          end
//! ┌────────┬───────────┬──────────┬──────┬────────────────────────────┐
//! │ header │ data page │ zero page│ zero │ D pages of data, in the    │
//! │        │ indices   │ indices  │ pad  │ order of the data indices  │
//! └────────┴───────────┴──────────┴──────┴────────────────────────────┘
//! ```

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::{Decoder, Encoder};
use crate::file_identity::FileIdentity;
use crate::memfile::{MemoryFile, temp_path};
use crate::state::{RegionKind, SnapshotState};
use crate::{Error, FORMAT_VERSION, PAGE_SIZE, Result};

/// The working-set file's magic bytes.
pub const WORKING_SET_MAGIC: [u8; 8] = *b"NXSWSETS";
const HEADER_SIZE: usize = 64;

/// A working set whose header and page indices were read and checked against the snapshot.
#[derive(Debug)]
pub(crate) struct WorkingSet {
    /// Page-list indices of the stored pages, ascending.
    pub(crate) data_pages: Vec<u64>,
    /// Page-list indices of recorded zero pages, ascending.
    pub(crate) zero_pages: Vec<u64>,
    /// Where the stored pages start: the bytes of header and page indices (read).
    pub(crate) data_offset: usize,
}

/// What writing a working-set file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSetReport {
    /// The file written.
    pub path: PathBuf,
    /// Non-zero pages stored.
    pub data_pages: u64,
    /// Zero pages listed.
    pub zero_pages: u64,
    /// Size of the file.
    pub file_size: u64,
}

fn data_offset(entries: u64) -> u64 {
    (HEADER_SIZE as u64 + 8 * entries).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Writes the working set `pages` (page-list indices of RAM pages, any order, duplicates
/// allowed) of the snapshot `state`/`memory` to `path`.
pub(crate) fn write(
    path: &Path,
    state: &SnapshotState,
    memory: &MemoryFile,
    mut pages: Vec<u64>,
) -> Result<WorkingSetReport> {
    pages.sort_unstable();
    pages.dedup();
    let (data, zero): (Vec<u64>, Vec<u64>) = pages.into_iter().partition(|&p| memory.bitmap.get(p));
    let offset = data_offset((data.len() + zero.len()) as u64);
    let mut body = Encoder::default();
    for p in data.iter().chain(&zero) {
        body.u64(*p);
    }
    body.buf.resize(offset as usize - HEADER_SIZE, 0);
    let data_start = body.buf.len();
    body.buf
        .resize(data_start + data.len() * PAGE_SIZE as usize, 0);
    // Copy the pages from the memory file, one read per run of consecutive pages.
    let mut i = 0;
    while i < data.len() {
        let mut j = i + 1;
        while j < data.len() && data[j] == data[j - 1] + 1 {
            j += 1;
        }
        let dst =
            &mut body.buf[data_start + i * PAGE_SIZE as usize..data_start + j * PAGE_SIZE as usize];
        memory
            .file
            .read_exact_at(dst, (data[i] + 1) * PAGE_SIZE)
            .map_err(|e| memory.read_error("read", e))?;
        i = j;
    }
    let mut header = Encoder::default();
    header.bytes(&WORKING_SET_MAGIC);
    header.u32(FORMAT_VERSION);
    header.u32(PAGE_SIZE as u32);
    header.u64(state.id);
    header.u64(data.len() as u64);
    header.u64(zero.len() as u64);
    header.u64(offset);
    header.u32(crc32fast::hash(&body.buf));
    header.u64(0);
    let crc = crc32fast::hash(&header.buf);
    header.u32(crc);
    debug_assert_eq!(header.buf.len(), HEADER_SIZE);

    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(&header.buf)
        .and_then(|()| file.write_all(&body.buf))
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(file);
    crate::memfile::move_into_place(&tmp, path)?;
    Ok(WorkingSetReport {
        path: path.to_path_buf(),
        data_pages: data.len() as u64,
        zero_pages: zero.len() as u64,
        file_size: (HEADER_SIZE + body.buf.len()) as u64,
    })
}

/// Validates the header and the page indices of the working-set file at `path` against the
/// snapshot: reads its first `64 + 8 × pages` bytes, not the stored pages.
pub(crate) fn read(path: &Path, state: &SnapshotState, memory: &MemoryFile) -> Result<WorkingSet> {
    let file = File::open(path).map_err(|e| Error::io("read", path, e))?;
    let identity = FileIdentity::of_file(&file, path)?;
    let found = identity.size;
    let mut header = [0u8; HEADER_SIZE];
    let got = crate::memfile::read_up_to(&file, &mut header, 0)
        .map_err(|e| Error::io("read", path, e))?;
    if got >= 8 && header[..8] != WORKING_SET_MAGIC {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            kind: "working-set file",
        });
    }
    if got < HEADER_SIZE {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            expected: HEADER_SIZE as u64,
            found,
        });
    }
    let malformed = |e: crate::codec::DecodeError| Error::malformed(path, e.0);
    let mut h = Decoder::new(&header, "the working-set header");
    h.take(8).map_err(malformed)?;
    let version = h.u32().map_err(malformed)?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let stored_header_crc = u32::from_le_bytes(header[60..64].try_into().expect("4 bytes"));
    let header_crc = crc32fast::hash(&header[..60]);
    if stored_header_crc != header_crc {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            what: "the working-set header's",
            expected: stored_header_crc,
            found: header_crc,
        });
    }
    let page_size = h.u32().map_err(malformed)?;
    let id = h.u64().map_err(malformed)?;
    let data_count = h.u64().map_err(malformed)?;
    let zero_count = h.u64().map_err(malformed)?;
    let offset = h.u64().map_err(malformed)?;
    let _body_crc = h.u32().map_err(malformed)?; // Of the stored pages, which are not read.
    if id != state.id {
        return Err(Error::mismatch(
            path,
            format!(
                "it belongs to snapshot {id:#018x}, the state file to snapshot {:#018x}",
                state.id
            ),
        ));
    }
    // Each listed page is a distinct page of RAM.
    let ram_pages: u64 = state
        .memory
        .regions
        .iter()
        .filter(|r| r.kind == RegionKind::Ram)
        .map(|r| r.pages())
        .sum();
    if u64::from(page_size) != PAGE_SIZE
        || data_count
            .checked_add(zero_count)
            .is_none_or(|n| n > ram_pages)
    {
        return Err(Error::malformed(path, "implausible header"));
    }
    let expected_offset = data_offset(data_count + zero_count);
    let expected = expected_offset + data_count * PAGE_SIZE;
    if offset != expected_offset || found != expected {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    // Only the header and the page indices are read: restores install the pages from the
    // memory file (the page cache every restore shares), so the stored copies are not read
    // and the body's checksum is not checked.
    let mut indices = vec![0u8; 8 * (data_count + zero_count) as usize];
    file.read_exact_at(&mut indices, HEADER_SIZE as u64)
        .map_err(|e| changed_or(&file, &identity, path, Error::io("read", path, e)))?;
    let mut d = Decoder::new(&indices, "the page indices");
    let mut list = |count: u64, stored: bool| -> Result<Vec<u64>> {
        let mut out: Vec<u64> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let p = d.u64().map_err(malformed)?;
            let ok = out.last().is_none_or(|&last| p > last)
                && state
                    .memory
                    .region_of_page(p)
                    .is_some_and(|r| r.kind == RegionKind::Ram)
                && memory.bitmap.get(p) == stored;
            if !ok {
                return Err(Error::mismatch(
                    path,
                    format!(
                        "page {p} is out of order, outside RAM, or not as the memory file has it"
                    ),
                ));
            }
            out.push(p);
        }
        Ok(out)
    };
    let data_pages = list(data_count, true)?;
    let zero_pages = list(zero_count, false)?;
    Ok(WorkingSet {
        data_pages,
        zero_pages,
        data_offset: offset as usize,
    })
}

/// [`Error::FileChanged`] if `file` is no longer as `identity` recorded it, else `error`.
fn changed_or(file: &File, identity: &FileIdentity, path: &Path, error: Error) -> Error {
    match identity.check_file(file, path) {
        Err(changed @ Error::FileChanged { .. }) => changed,
        _ => error,
    }
}
