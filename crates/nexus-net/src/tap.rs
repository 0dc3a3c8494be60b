// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The tap device: the only `unsafe` code of this crate.
//!
//! A [`Tap`] is `/dev/net/tun` opened as an Ethernet tap (`IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`), non-blocking, with a 12-byte `virtio_net_hdr_v1` (`TUNSETVNETHDRSZ`) before
//! every frame in both directions — the layout the guest uses, so frames move between the
//! kernel and guest memory with no conversion. The interface is created in the network
//! namespace of the calling thread: callers make namespaces, the device never touches the
//! host's own interfaces. It lives as long as the `Tap` (it is not persistent).
//!
//! Frames are read and written with one `readv`/`writev` over the guest memory they live in
//! ([`VolatileSlice`]s of guest memory): the kernel copies between its buffers and guest
//! memory directly, with no copy in between.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use rustix::event::{PollFd, PollFlags, Timespec};
use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::PtrGuardMut;

/// The clone device.
const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = 15;
/// Most memory segments one frame may be read into or written from (a chain of at most 16
/// descriptors, each possibly split where guest memory regions meet).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes of the virtio-net header before every frame (`TUNSETVNETHDRSZ`).
const VNET_HDR_SIZE: libc::c_int = 12;

/// Errors of opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not a valid interface name.
    #[error(
        "Invalid tap name {0:?}: it must be 1 to 15 bytes, not \".\" or \"..\", without NUL, '/', \
         ':' or white space"
    )]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("Cannot open {TUN_PATH}")]
    Open(#[source] io::Error),
    /// The kernel refused to create (or attach to) the tap.
    #[error("TUNSETIFF failed for tap {name:?}")]
    SetIff {
        /// The name asked for (empty: the kernel's choice).
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the 12-byte virtio-net header.
    #[error("TUNSETVNETHDRSZ ({VNET_HDR_SIZE}) failed")]
    VnetHeaderSize(#[source] io::Error),
    /// The kernel refused the offload flags.
    #[error("TUNSETOFFLOAD ({flags:#x}) failed")]
    Offload {
        /// The flags.
        flags: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name and the flags (the rest of the
/// union is padding here).
#[repr(C)]
struct IfReq {
    name: [u8; MAX_NAME_LEN + 1],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() == size_of::<libc::ifreq>());

/// An empty `iovec`, to fill.
const NO_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Whether the kernel would take `name` as an interface name (`dev_valid_name`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// What [`Tap::read_frame`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrame {
    /// A frame of this many bytes, its header included.
    Frame(usize),
    /// A frame longer than the buffers: cut short, lost.
    TooLarge,
}

/// A tap interface, open for frames with a virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates a tap named `name` (`None`: the kernel picks `tapN`; a `%d` in the name is
    /// replaced by the first free number) in the calling thread's network namespace,
    /// non-blocking, with the 12-byte virtio-net header and no offloads.
    ///
    /// Needs `CAP_NET_ADMIN` in that namespace. The interface is created down: bring it up
    /// (and give it addresses) with the usual tools.
    pub fn open(name: Option<&str>) -> Result<Self> {
        let mut request = IfReq {
            name: [0; MAX_NAME_LEN + 1],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        if let Some(name) = name {
            if !valid_name(name) {
                return Err(Error::InvalidName(name.to_owned()));
            }
            request.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(Error::Open)?;
        // SAFETY: `file` is an open descriptor of the tun clone device, and `request` is a
        // valid, exclusively borrowed `struct ifreq` (same size, name and flags at the
        // kernel's offsets) that lives until the call returns; the kernel reads it and writes
        // the interface's name back into it, nothing else.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if ret < 0 {
            return Err(Error::SetIff {
                name: name.unwrap_or_default().to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let len = request
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_NAME_LEN);
        let name = String::from_utf8_lossy(&request.name[..len]).into_owned();
        let size = VNET_HDR_SIZE;
        // SAFETY: `file` is the tap's descriptor; the kernel reads one `int` through the
        // pointer, which points at `size`, alive until the call returns.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(Error::VnetHeaderSize(io::Error::last_os_error()));
        }
        Ok(Tap { file, name })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the reader takes (`TUN_F_*`): with `TUN_F_CSUM` it may
    /// hand over frames whose checksum is still to be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`
    /// in the header); with 0 every frame comes fully checksummed.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: `file` is the tap's descriptor; `TUNSETOFFLOAD` takes its argument by value
        // and touches no memory of ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(Error::Offload {
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether a frame is waiting to be read (a poll that does not wait).
    pub fn has_frame(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.file, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero))?;
        Ok(fds[0].revents().contains(PollFlags::IN))
    }

    /// Reads one frame, with its virtio-net header, into `buffers` in order (one `readv`).
    /// `WouldBlock` when no frame is waiting.
    ///
    /// A frame longer than the buffers is cut short and lost ([`ReadFrame::TooLarge`]): the
    /// kernel reports at most the bytes it was given room for, so the read offers one byte
    /// more, of the device's own, to tell a frame that fills the buffers exactly from one that
    /// did not fit.
    pub fn read_frame<B: BitmapSlice>(
        &self,
        buffers: &[VolatileSlice<'_, B>],
    ) -> io::Result<ReadFrame> {
        let mut iovecs = [NO_IOVEC; MAX_SEGMENTS + 1];
        // The guards keep the memory mapped (where vm-memory maps on demand) until readv
        // returns.
        let mut guards: [Option<PtrGuardMut>; MAX_SEGMENTS] = [const { None }; MAX_SEGMENTS];
        let mut overflow = [0u8; 1];
        if buffers.len() > MAX_SEGMENTS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut capacity = 0usize;
        for ((buffer, iovec), guard) in buffers.iter().zip(&mut iovecs).zip(&mut guards) {
            let ptr = guard.insert(buffer.ptr_guard_mut()).as_ptr();
            *iovec = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: buffer.len(),
            };
            capacity += buffer.len();
        }
        iovecs[buffers.len()] = libc::iovec {
            iov_base: overflow.as_mut_ptr().cast(),
            iov_len: overflow.len(),
        };
        // SAFETY: the first `buffers.len()` iovecs each describe a slice of mapped guest
        // memory, writable, of that slice's length: `buffers` borrows the memory, so it stays
        // mapped until readv returns (and `guards` holds any on-demand mapping); the last one
        // is `overflow`, exclusively borrowed for the call. The kernel writes only inside
        // them. Guest memory is never referenced as a Rust slice, so the guest writing it at
        // the same time breaks no aliasing rule.
        let n = unsafe {
            libc::readv(
                self.file.as_raw_fd(),
                iovecs.as_ptr(),
                (buffers.len() + 1) as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut left = n.min(capacity);
        for buffer in buffers {
            let written = left.min(buffer.len());
            buffer.bitmap().mark_dirty(0, written);
            left -= written;
        }
        Ok(if n > capacity {
            ReadFrame::TooLarge
        } else {
            ReadFrame::Frame(n)
        })
    }

    /// Writes one frame: `header` (the virtio-net header, from the caller's memory) followed
    /// by `frame` (one `writev`). Returns the bytes written; `WouldBlock` when the kernel
    /// cannot take the frame now (wait for the tap to be writable).
    pub fn write_frame<B: BitmapSlice>(
        &self,
        header: &[u8],
        frame: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let mut iovecs = [NO_IOVEC; MAX_SEGMENTS + 1];
        let mut guards: [Option<PtrGuardMut>; MAX_SEGMENTS] = [const { None }; MAX_SEGMENTS];
        if frame.len() > MAX_SEGMENTS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        iovecs[0] = libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: header.len(),
        };
        for ((buffer, iovec), guard) in frame.iter().zip(&mut iovecs[1..]).zip(&mut guards) {
            let ptr = guard.insert(buffer.ptr_guard_mut()).as_ptr();
            *iovec = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: buffer.len(),
            };
        }
        // SAFETY: the first `frame.len() + 1` iovecs describe `header` (borrowed for the call)
        // and slices of mapped guest memory of their lengths, which `frame` borrows (and
        // `guards` keeps mapped) until writev returns. writev only reads through them.
        let n = unsafe {
            libc::writev(
                self.file.as_raw_fd(),
                iovecs.as_ptr(),
                (frame.len() + 1) as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_the_kernel_sees_them() {
        for good in ["t", "tap0", "nx-net-%d", "a23456789012345"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(Tap::open(Some(bad)), Err(Error::InvalidName(_))));
        }
    }
}
