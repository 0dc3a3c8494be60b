//! The crate's unsafe code, kept small: `KVM_SET_XSAVE`, `pread` into guest memory, and the
//! userfaultfd system call and ioctls (raw, through libc).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_xsave;
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;

/// `KVM_SET_XSAVE` with a 4096-byte area, refused (`E2BIG`) when KVM says the vCPU's XSAVE
/// state is larger (dynamically enabled features such as AMX), since KVM would then read
/// past the structure.
pub(crate) fn set_xsave(
    vm: &VmFd,
    fd: &VcpuFd,
    xsave: &kvm_xsave,
) -> std::result::Result<(), kvm_ioctls::Error> {
    let needed = vm.check_extension_int(Cap::Xsave2);
    if needed > std::mem::size_of::<kvm_xsave>() as i32 {
        return Err(kvm_ioctls::Error::new(libc::E2BIG));
    }
    // SAFETY: `xsave` is a whole 4096-byte `kvm_xsave`, and KVM_CAP_XSAVE2 just told us that
    // KVM reads no more than that (it reports 0 when unsupported, which means 4096 too).
    unsafe { fd.set_xsave(xsave) }
}

/// Reads exactly `dst.len()` bytes at `offset` of `file` into `dst` (guest memory).
pub(crate) fn pread_exact<B: BitmapSlice>(
    file: &File,
    dst: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let guard = dst.ptr_guard_mut();
    let base = guard.as_ptr();
    let len = dst.len();
    let mut done = 0usize;
    while done < len {
        // SAFETY: `base + done .. base + len` lies inside `dst`, which the guard keeps valid
        // for writes; the kernel writes at most `len - done` bytes there. Guest memory is only
        // ever accessed volatilely, so no Rust reference to these bytes exists.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                base.add(done).cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends before offset {}", offset + len as u64),
            ));
        }
        done += n as usize;
    }
    Ok(())
}

const UFFD_API: u64 = 0xaa;
/// Report munmap of registered ranges, so the handler knows when to stop.
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_COPY_BIT: u64 = 1 << 3;
const UFFDIO_ZEROPAGE_BIT: u64 = 1 << 4;
// _IOWR/_IOR(0xAA, nr, size) from linux/userfaultfd.h.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;

/// A page fault on a registered range.
pub(crate) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// A registered range was unmapped.
pub(crate) const UFFD_EVENT_UNMAP: u8 = 0x16;
/// Size of one `struct uffd_msg`.
pub(crate) const UFFD_MSG_SIZE: usize = 32;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// A userfaultfd, blocking, with `UFFD_FEATURE_EVENT_UNMAP`.
///
/// Its ranges are only ever registered over guest memory, which Rust code accesses only
/// volatilely; the kernel refuses `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` outside registered ranges
/// and never overwrites a page that is already present. That is what makes [`copy`] and
/// [`zero`] safe to call.
///
/// [`copy`]: Userfaultfd::copy
/// [`zero`]: Userfaultfd::zero
#[derive(Debug)]
pub(crate) struct Userfaultfd {
    file: File,
}

fn ioctl<T>(file: &File, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the request whose argument type is `T` (the structures above
    // mirror linux/userfaultfd.h); the kernel reads and writes only that structure.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Userfaultfd {
    /// Opens a userfaultfd and negotiates the API.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: the system call takes only flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_EVENT_UNMAP,
            ioctls: 0,
        };
        ioctl(&file, UFFDIO_API, &mut api)?;
        Ok(Userfaultfd { file })
    }

    /// Registers `[start, start + len)` (guest memory) for missing-page faults.
    pub(crate) fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&self.file, UFFDIO_REGISTER, &mut reg)?;
        let needed = UFFDIO_COPY_BIT | UFFDIO_ZEROPAGE_BIT;
        if reg.ioctls & needed != needed {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the range does not support UFFDIO_COPY and UFFDIO_ZEROPAGE",
            ));
        }
        Ok(())
    }

    /// Fills the missing pages `[dst, dst + src.len())` with `src` and wakes the threads
    /// waiting on them. `EEXIST` means a page was already there.
    pub(crate) fn copy<B: BitmapSlice>(
        &self,
        dst: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        let guard = src.ptr_guard();
        let mut op = UffdioCopy {
            dst,
            src: guard.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        loop {
            match ioctl(&self.file, UFFDIO_COPY, &mut op) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && op.copy > 0 => {
                    // Partly copied: go on with the rest.
                    let n = op.copy as u64;
                    op = UffdioCopy {
                        dst: op.dst + n,
                        src: op.src + n,
                        len: op.len - n,
                        mode: 0,
                        copy: 0,
                    };
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                other => return other,
            }
        }
    }

    /// Maps zero pages at the missing pages `[dst, dst + len)` and wakes their waiters.
    pub(crate) fn zero(&self, dst: u64, len: u64) -> io::Result<()> {
        let mut op = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        loop {
            match ioctl(&self.file, UFFDIO_ZEROPAGE, &mut op) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    let n = op.zeropage.max(0) as u64;
                    op = UffdioZeropage {
                        range: UffdioRange {
                            start: op.range.start + n,
                            len: op.range.len - n,
                        },
                        mode: 0,
                        zeropage: 0,
                    };
                }
                other => return other,
            }
        }
    }

    /// Wakes the threads waiting on `[start, start + len)`.
    pub(crate) fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        ioctl(&self.file, UFFDIO_WAKE, &mut range)
    }

    /// Blocks for the next events; returns how many bytes of `struct uffd_msg` were read.
    pub(crate) fn read_events(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.file).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}
