//! KVM's binary statistics (`KVM_GET_STATS_FD`) for a vCPU or a VM.
//!
//! kvm-ioctls has no wrapper for this interface; the one ioctl lives in [`StatsFd::open`]. The
//! file it returns is read with `pread`: a header, then descriptors naming each counter, then
//! the counters. On the PVM host the `exits` counter counts every VM exit, including
//! ioeventfd doorbells that never reach user space.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use vmm_sys_util::ioctl::ioctl;

mod ioctls {
    #![allow(missing_docs)]
    use vmm_sys_util::ioctl_io_nr;

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

const HEADER_SIZE: usize = 24;
const DESC_SIZE: usize = 16;
const STATS_TYPE_MASK: u32 = 0xf;
const STATS_TYPE_HIST_LINEAR: u32 = 3;
const STATS_TYPE_HIST_LOG: u32 = 4;

/// Errors of reading statistics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ioctl failed (kernel without binary stats).
    #[error("KVM_GET_STATS_FD failed")]
    Open(#[source] io::Error),
    /// The stats file could not be read.
    #[error("Cannot read the KVM statistics file")]
    Read(#[source] io::Error),
    /// The file's layout made no sense.
    #[error("Malformed KVM statistics: {0}")]
    Malformed(&'static str),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone)]
struct Descriptor {
    name: String,
    offset: u64,
    size: u32,
}

/// An open statistics file with its descriptors parsed.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    data_offset: u64,
    descriptors: Vec<Descriptor>,
}

/// A snapshot of counters by name (histograms are skipped).
pub type Counters = BTreeMap<String, u64>;

impl StatsFd {
    /// Opens the statistics of a vCPU or VM file descriptor.
    pub fn open(fd: &impl AsRawFd) -> Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file descriptor or -1;
        // `fd` is a valid KVM vCPU or VM descriptor borrowed for the call.
        let ret = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
        if ret < 0 {
            return Err(Error::Open(io::Error::last_os_error()));
        }
        // SAFETY: `ret` is a new descriptor returned by the kernel and owned by nothing else.
        let file = unsafe { File::from_raw_fd(ret) };
        Self::from_file(file)
    }

    /// Parses a statistics file (exposed for tests of the parser).
    pub fn from_file(file: File) -> Result<Self> {
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(Error::Read)?;
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let name_size = u32_at(&header, 4) as usize;
        let num_desc = u32_at(&header, 8) as usize;
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size == 0 || name_size > 4096 || num_desc > 65536 {
            return Err(Error::Malformed("implausible descriptor sizes"));
        }
        let stride = DESC_SIZE + name_size;
        let mut table = vec![0u8; stride * num_desc];
        file.read_exact_at(&mut table, desc_offset)
            .map_err(Error::Read)?;
        let mut descriptors = Vec::with_capacity(num_desc);
        for raw in table.chunks_exact(stride) {
            let flags = u32_at(raw, 0);
            let size = u32::from(u16::from_le_bytes([raw[6], raw[7]]));
            let offset = u64::from(u32_at(raw, 8));
            let name_bytes = &raw[DESC_SIZE..];
            let len = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(&name_bytes[..len]).into_owned();
            let kind = flags & STATS_TYPE_MASK;
            if kind == STATS_TYPE_HIST_LINEAR || kind == STATS_TYPE_HIST_LOG {
                continue;
            }
            descriptors.push(Descriptor { name, offset, size });
        }
        Ok(StatsFd {
            file,
            data_offset,
            descriptors,
        })
    }

    /// Names of the counters available.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.descriptors.iter().map(|d| d.name.as_str())
    }

    /// Reads one counter by name.
    pub fn read(&self, name: &str) -> Result<Option<u64>> {
        let Some(desc) = self.descriptors.iter().find(|d| d.name == name) else {
            return Ok(None);
        };
        let mut buf = [0u8; 8];
        self.file
            .read_exact_at(&mut buf, self.data_offset + desc.offset)
            .map_err(Error::Read)?;
        Ok(Some(u64::from_le_bytes(buf)))
    }

    /// Reads every single-valued counter.
    pub fn read_all(&self) -> Result<Counters> {
        let end = self
            .descriptors
            .iter()
            .map(|d| d.offset + 8 * u64::from(d.size.max(1)))
            .max()
            .unwrap_or(0);
        let mut data = vec![0u8; end as usize];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(Error::Read)?;
        let mut out = Counters::new();
        for d in &self.descriptors {
            let o = d.offset as usize;
            out.insert(
                d.name.clone(),
                u64::from_le_bytes(data[o..o + 8].try_into().unwrap()),
            );
        }
        Ok(out)
    }

    /// The raw descriptor, for callers that need it.
    pub fn as_raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn synthetic_stats() -> File {
        // header | 2 descriptors (name_size 16) | data
        let name_size = 16u32;
        let desc_offset = HEADER_SIZE as u32;
        let data_offset = desc_offset + 2 * (DESC_SIZE as u32 + name_size);
        let mut bytes = Vec::new();
        for v in [0u32, name_size, 2, 0, desc_offset, data_offset] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for (i, name) in ["exits", "halt_exits"].iter().enumerate() {
            bytes.extend_from_slice(&0u32.to_le_bytes()); // flags: cumulative
            bytes.extend_from_slice(&0i16.to_le_bytes()); // exponent
            bytes.extend_from_slice(&1u16.to_le_bytes()); // size
            bytes.extend_from_slice(&(8 * i as u32).to_le_bytes()); // offset
            bytes.extend_from_slice(&0u32.to_le_bytes()); // bucket size
            let mut n = [0u8; 16];
            n[..name.len()].copy_from_slice(name.as_bytes());
            bytes.extend_from_slice(&n);
        }
        bytes.extend_from_slice(&42u64.to_le_bytes());
        bytes.extend_from_slice(&7u64.to_le_bytes());
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        f
    }

    #[test]
    fn parses_descriptors_and_values() {
        let stats = StatsFd::from_file(synthetic_stats()).unwrap();
        assert_eq!(stats.names().collect::<Vec<_>>(), ["exits", "halt_exits"]);
        assert_eq!(stats.read("exits").unwrap(), Some(42));
        assert_eq!(stats.read("nope").unwrap(), None);
        let all = stats.read_all().unwrap();
        assert_eq!(all["halt_exits"], 7);
    }

    #[test]
    fn refuses_garbage() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[0xffu8; 24]).unwrap();
        assert!(StatsFd::from_file(f).is_err());
        let f = tempfile::tempfile().unwrap();
        assert!(StatsFd::from_file(f).is_err());
    }
}
