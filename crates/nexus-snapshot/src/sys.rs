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

    /// Fills the pages of `[dst, dst + src.len())` that are still missing with `src`,
    /// skipping (never overwriting) those already present, and wakes their waiters. `stop`
    /// is asked whenever the kernel says to retry (the address space is changing, e.g. the
    /// memory is being unmapped): returning true gives up with that error.
    pub(crate) fn copy_missing<B: BitmapSlice>(
        &self,
        dst: u64,
        src: &VolatileSlice<'_, B>,
        stop: &dyn Fn() -> bool,
    ) -> io::Result<Filled> {
        let guard = src.ptr_guard();
        let base = guard.as_ptr() as u64;
        fill_missing(dst, src.len() as u64, stop, |done, len| {
            let mut op = UffdioCopy {
                dst: dst + done,
                src: base + done,
                len,
                mode: 0,
                copy: 0,
            };
            (ioctl(&self.file, UFFDIO_COPY, &mut op), op.copy)
        })
    }

    /// Maps zero pages at the pages of `[dst, dst + len)` that are still missing, skipping
    /// those already present, as [`Userfaultfd::copy_missing`] does.
    pub(crate) fn zero_missing(
        &self,
        dst: u64,
        len: u64,
        stop: &dyn Fn() -> bool,
    ) -> io::Result<Filled> {
        fill_missing(dst, len, stop, |done, len| {
            let mut op = UffdioZeropage {
                range: UffdioRange {
                    start: dst + done,
                    len,
                },
                mode: 0,
                zeropage: 0,
            };
            (ioctl(&self.file, UFFDIO_ZEROPAGE, &mut op), op.zeropage)
        })
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

/// Pages a [`Userfaultfd::copy_missing`] or [`Userfaultfd::zero_missing`] installed, and
/// pages it found already present (served on demand first) and left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Filled {
    pub(crate) installed: u64,
    pub(crate) present: u64,
}

/// Drives `op(offset, len)` (one `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` of `[offset, len)` of the
/// range, returning the ioctl's result and the byte count or negative error it reported)
/// over `len` bytes. The kernel stops at the first page already present: when it installed
/// pages before it, it reports them with `EAGAIN`; when that page is the first, with
/// `EEXIST`, and the page is skipped.
fn fill_missing(
    dst: u64,
    len: u64,
    stop: &dyn Fn() -> bool,
    mut op: impl FnMut(u64, u64) -> (io::Result<()>, i64),
) -> io::Result<Filled> {
    let page = crate::PAGE_SIZE;
    let mut filled = Filled::default();
    let mut done = 0u64;
    while done < len {
        let (result, count) = op(done, len - done);
        let count = u64::try_from(count).unwrap_or(0).min(len - done);
        match result {
            Ok(()) => {
                filled.installed += (len - done) / page;
                done = len;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && count > 0 => {
                filled.installed += count / page;
                done += count;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                filled.installed += count / page;
                filled.present += 1;
                done += count + page;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if stop() {
                    return Err(e);
                }
                std::thread::yield_now();
            }
            Err(e) => {
                log::trace!("userfaultfd fill of {:#x} stopped: {e}", dst + done);
                return Err(e);
            }
        }
    }
    Ok(filled)
}

/// Writes all of `src` (guest memory) to `file` at `offset`.
pub(crate) fn pwrite_all<B: BitmapSlice>(
    file: &File,
    src: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let guard = src.ptr_guard();
    let base = guard.as_ptr();
    let len = src.len();
    let mut done = 0usize;
    while done < len {
        // SAFETY: `base + done .. base + len` lies inside `src`, which the guard keeps valid;
        // the kernel only reads those bytes.
        let n = unsafe {
            libc::pwrite(
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
                io::ErrorKind::WriteZero,
                "pwrite wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

// linux/fs.h: the PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Linux 6.7).
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// The runs `(start, len)` of pages of `[start, start + len)` (page-aligned anonymous memory
/// of this process) that exist — present in RAM or swapped out — other than the shared zero
/// page, from `PAGEMAP_SCAN` on `pagemap` (`/proc/self/pagemap`). Every other page of
/// anonymous memory reads as zero. Fails (`ENOTTY`, `EINVAL`) on kernels without
/// `PAGEMAP_SCAN`.
pub(crate) fn written_runs(pagemap: &File, start: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![PageRegion::default(); 512];
    let end = start + len;
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start: at,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            // Not the zero page, and present or swapped.
            category_inverted: PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_PFNZERO,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        };
        // SAFETY: `arg` is a `struct pm_scan_arg` (its size in `size`) whose `vec` points at
        // `vec_len` writable `struct page_region`s; the kernel writes only those and `arg`,
        // and only reads the page tables of `[start, end)`.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut _) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for r in &regions[..(n as usize).min(regions.len())] {
            match runs.last_mut() {
                Some((s, l)) if *s + *l == r.start => *l += r.end - r.start,
                _ => runs.push((r.start, r.end - r.start)),
            }
        }
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(runs)
}

/// Asks the kernel to read `[offset, offset + len)` of `file` into the page cache ahead
/// (`POSIX_FADV_WILLNEED`); only a hint, so a failure is ignored.
pub(crate) fn will_need(file: &File, offset: u64, len: u64) {
    // SAFETY: posix_fadvise takes a descriptor we own and plain integers; it touches no memory
    // of this process.
    let _ = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

/// Exchanges the files at `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`); both must
/// exist.
pub(crate) fn exchange(a: &std::path::Path, b: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both are NUL-terminated strings that outlive the call; the kernel only reads
    // them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
