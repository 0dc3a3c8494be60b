//! The Linux user-space driver (feature `linux`, with `std`): a process of a Linux guest
//! reaches the nexus-io device through `/dev/mem`.
//!
//! [`open`] reads `/proc/cmdline` for `nexus.io=ADDR,SIZE` (the device's register block) and
//! `nexus.window=ADDR,SIZE` (the I/O window) — what `nexus-vmm run --kernel --backend`
//! appends ([`cmdline`]) —, takes the device ([`DeviceLock`]), maps both ranges from
//! `/dev/mem` (`O_SYNC`, `MAP_SHARED`: uncached, the device's and the backend's writes seen as
//! they happen) and builds a [`Nexus<MmioRegisters>`](crate::Nexus): the same driver and
//! client as a micro-guest's, over different mappings.
//!
//! # One process owns the device
//!
//! The driver keeps the queue's state — free descriptors, the window allocator, the avail
//! index — in the process's own memory, so two processes driving one device would overwrite
//! each other's requests. The rule: **the first process to open the device owns it until
//! it drops its client and every buffer (or exits); the others get [`Error::Busy`]**. The
//! owner holds an exclusive `flock(2)` on a lock file ([`DEFAULT_LOCK_PATH`]), which the
//! kernel releases when the process ends however it ends, so a crashed owner never blocks
//! the next one; the next owner resets the device, which cancels whatever the last one left
//! in flight. A process that forks keeps the lock in both (it is held by the open file), and
//! the lock file is opened `O_CLOEXEC`, so programs it executes do not hold it. Processes
//! that need the device in turn serialise on the lock; a process that serves the guest's
//! others (one per guest) is the way to share it.
//!
//! # A WAIT read stalls the vCPU
//!
//! The device has no interrupt here: the driver polls the used ring briefly, then reads the
//! WAIT register, and that read is a VM exit that sleeps **in the VMM** until the backend
//! answers (at most the device's WAIT timeout, 100 ms by default, then the driver reads
//! again). The whole vCPU waits meanwhile: the guest kernel cannot schedule another task on
//! it, nor take its timer interrupt. That is fine for a one-process function guest (one
//! vCPU, one function, nothing else to run); a guest that must keep working while its I/O is
//! in flight needs a kernel (UIO) driver taking the device's interrupt, which is not written
//! yet.
//!
//! # Kernel requirements
//!
//! `CONFIG_DEVMEM=y`. With `CONFIG_STRICT_DEVMEM` the kernel lets `/dev/mem` map only what
//! is not System RAM: the window is reserved in the e820 map and the register block is in the
//! MMIO hole, so both pass; `CONFIG_IO_STRICT_DEVMEM` refuses ranges a kernel driver claimed
//! (no kernel driver claims these). The repository's `docs/linux-guests.md` has the rest.

pub mod cmdline;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use alloc::rc::Rc;

use crate::Nexus;
use crate::mmio::MmioRegisters;
use crate::window::WindowMapping;

pub use cmdline::{CmdlineError, NexusParams, PhysRange};

/// Where [`open`] reads the kernel command line.
pub const CMDLINE_PATH: &str = "/proc/cmdline";
/// The physical memory device [`open`] maps.
pub const DEVMEM_PATH: &str = "/dev/mem";
/// The lock file whose exclusive `flock` makes a process the device's owner.
pub const DEFAULT_LOCK_PATH: &str = "/run/nexus-io.lock";

/// Errors of the Linux driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel command line could not be read.
    #[error("Cannot read the kernel command line {}", path.display())]
    ReadCmdline {
        /// Where it was read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel command line does not say where the device is.
    #[error("Cannot find the nexus-io device")]
    Cmdline(#[source] CmdlineError),
    /// The lock file could not be opened or locked.
    #[error("Cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process of this guest owns the device.
    #[error(
        "The nexus-io device is in use by another process (it holds the lock {})",
        path.display()
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// `/dev/mem` could not be opened.
    #[error("Cannot open {} (is CONFIG_DEVMEM on, and is this process privileged?)", path.display())]
    OpenDevMem {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A range is not page-aligned, so it cannot be mapped.
    #[error("The {what} range {addr:#x}+{size:#x} is not page-aligned")]
    Unaligned {
        /// `register` or `window`.
        what: &'static str,
        /// Its physical address.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// A range could not be mapped.
    #[error(
        "Cannot map the {what} range {addr:#x}+{size:#x} (CONFIG_STRICT_DEVMEM refuses System RAM)"
    )]
    Map {
        /// `register` or `window`.
        what: &'static str,
        /// Its physical address.
        addr: u64,
        /// Its size.
        size: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The driver refused the device or could not set it up.
    #[error("The nexus-io driver failed")]
    Driver(#[source] crate::Error),
}

/// Where [`open_with`] finds things (the defaults are [`open`]'s).
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// The kernel command line ([`CMDLINE_PATH`]).
    pub cmdline: PathBuf,
    /// Physical memory ([`DEVMEM_PATH`]).
    pub devmem: PathBuf,
    /// The lock file ([`DEFAULT_LOCK_PATH`]); created if missing (its directory must exist).
    pub lock: PathBuf,
}

impl Default for LinuxConfig {
    fn default() -> Self {
        Self {
            cmdline: CMDLINE_PATH.into(),
            devmem: DEVMEM_PATH.into(),
            lock: DEFAULT_LOCK_PATH.into(),
        }
    }
}

/// The owner's exclusive `flock(2)` on the lock file, released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct DeviceLock {
    file: File,
    path: PathBuf,
}

impl DeviceLock {
    /// Takes the lock at `path` without waiting: [`Error::Busy`] if another open file holds
    /// it (another process, or another `DeviceLock` of this one).
    pub fn try_acquire(path: &Path) -> Result<Self, Error> {
        let lock_error = |source| Error::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(lock_error)?;
        // SAFETY: flock(2) on a descriptor this function owns; it touches no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                Error::Busy {
                    path: path.to_path_buf(),
                }
            } else {
                lock_error(error)
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DeviceLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first says so explicitly.
        // SAFETY: as in `try_acquire`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A range of physical memory mapped from `/dev/mem`: the one type of this module with
/// `unsafe` inside besides the lock's `flock`. Unmapped when dropped.
#[derive(Debug)]
pub struct PhysMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl PhysMapping {
    /// Maps `range` of `devmem` shared, readable and writable. The range must be
    /// page-aligned (`what` names it in errors).
    pub fn map(devmem: &File, range: PhysRange, what: &'static str) -> Result<Self, Error> {
        // SAFETY: sysconf(3) reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096);
        let unaligned = Error::Unaligned {
            what,
            addr: range.addr,
            size: range.size,
        };
        if range.addr % page != 0 || range.size % page != 0 {
            return Err(unaligned);
        }
        let (Ok(len), Ok(offset)) = (
            usize::try_from(range.size),
            libc::off_t::try_from(range.addr),
        ) else {
            return Err(unaligned);
        };
        // SAFETY: a new shared mapping chosen by the kernel (no address hint), so it replaces
        // nothing of this process; the kernel checks the descriptor, offset and length.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                devmem.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Map {
                what,
                addr: range.addr,
                size: range.size,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Map {
            what,
            addr: range.addr,
            size: range.size,
            source: io::Error::other("mmap returned a null mapping"),
        })?;
        Ok(Self { ptr, len })
    }

    /// The mapping's first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: ranges are not).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for PhysMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once; whoever used it (the client and its
        // buffers) is gone, since they hold the owner that holds this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What keeps the device this process's: the mappings and the lock, held by the client's
/// window (and so by every buffer) and dropped with the last of them — the lock last.
#[derive(Debug)]
struct Owned {
    _registers: PhysMapping,
    _window: PhysMapping,
    _lock: DeviceLock,
}

/// The guest's nexus-io client, with the defaults of [`LinuxConfig`]: `/proc/cmdline`,
/// `/dev/mem`, [`DEFAULT_LOCK_PATH`]. See the [module](self) for the one-owner rule and the
/// WAIT stall.
pub fn open() -> Result<Nexus<MmioRegisters>, Error> {
    open_with(&LinuxConfig::default())
}

/// [`open`] with other paths (a test's, or a lock file elsewhere).
pub fn open_with(config: &LinuxConfig) -> Result<Nexus<MmioRegisters>, Error> {
    let text = std::fs::read_to_string(&config.cmdline).map_err(|source| Error::ReadCmdline {
        path: config.cmdline.clone(),
        source,
    })?;
    let params = cmdline::parse(&text).map_err(Error::Cmdline)?;
    let lock = DeviceLock::try_acquire(&config.lock)?;
    let devmem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC | libc::O_CLOEXEC)
        .open(&config.devmem)
        .map_err(|source| Error::OpenDevMem {
            path: config.devmem.clone(),
            source,
        })?;
    let registers = PhysMapping::map(&devmem, params.io, "register")?;
    let window = PhysMapping::map(&devmem, params.window, "window")?;
    // SAFETY: `registers` maps the register block the command line names, uncached
    // (`O_SYNC`), for its whole size; it stays mapped while the client lives (the client's
    // window holds `Owned`, which holds it), and the lock makes this client the only user of
    // the device in the guest.
    let regs = unsafe { MmioRegisters::new(registers.as_ptr(), registers.len()) }.ok_or(
        Error::Driver(crate::Error::BadMapping {
            what: "register",
            addr: params.io.addr,
            size: params.io.size,
        }),
    )?;
    // SAFETY: `window` maps the window the command line names, for its whole size, readable
    // and writable, and stays mapped as long as the mapping and every buffer of it (they
    // hold `Owned`); the lock makes this process its only user in the guest, and the device
    // and backend write it only as the protocol says.
    let mapping =
        unsafe { WindowMapping::new(window.as_ptr(), params.window.addr, params.window.size) }
            .map_err(Error::Driver)?
            .with_owner(Rc::new(Owned {
                _registers: registers,
                _window: window,
                _lock: lock,
            }));
    Nexus::new(regs, mapping).map_err(Error::Driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lock_wins_and_the_others_are_busy_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus-io.lock");
        let first = DeviceLock::try_acquire(&path).unwrap();
        // Another open file of the same lock, as another process's would be.
        match DeviceLock::try_acquire(&path) {
            Err(Error::Busy { path: busy }) => assert_eq!(busy, path),
            other => panic!("a second owner: {other:?}"),
        }
        let message = DeviceLock::try_acquire(&path).unwrap_err().to_string();
        assert!(message.contains("in use by another process"), "{message}");
        drop(first);
        let second = DeviceLock::try_acquire(&path).unwrap();
        assert_eq!(second.path(), path);
    }

    #[test]
    fn a_lock_in_a_missing_directory_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/nexus-io.lock");
        match DeviceLock::try_acquire(&path) {
            Err(Error::Lock { path: at, .. }) => assert_eq!(at, path),
            other => panic!("{other:?}"),
        }
    }

    /// A "physical memory" file with nothing at the register block: the whole path runs up
    /// to the driver, which finds no nexus-io device there.
    fn fake_guest(dir: &Path, cmdline: &str) -> LinuxConfig {
        let config = LinuxConfig {
            cmdline: dir.join("cmdline"),
            devmem: dir.join("mem"),
            lock: dir.join("nexus-io.lock"),
        };
        std::fs::write(&config.cmdline, cmdline).unwrap();
        let mem = File::create(&config.devmem).unwrap();
        mem.set_len(0x20_0000).unwrap();
        config
    }

    #[test]
    fn open_maps_the_command_lines_ranges_and_the_driver_checks_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let config = fake_guest(
            dir.path(),
            "console=ttyS0 nexus.io=0x1000,0x1000 nexus.window=0x100000,0x100000\n",
        );
        match open_with(&config) {
            Err(Error::Driver(crate::Error::NotNexusDevice { magic: 0, .. })) => {}
            other => panic!("{other:?}"),
        }
        // The lock went with the failed attempt.
        drop(DeviceLock::try_acquire(&config.lock).unwrap());
        // While another process holds it, opening is refused before anything is mapped.
        let held = DeviceLock::try_acquire(&config.lock).unwrap();
        assert!(matches!(open_with(&config), Err(Error::Busy { .. })));
        drop(held);
    }

    #[test]
    fn open_refuses_what_it_cannot_map() {
        let dir = tempfile::tempdir().unwrap();
        let config = fake_guest(
            dir.path(),
            "nexus.io=0x1004,0x1000 nexus.window=0x100000,0x100000",
        );
        assert!(matches!(
            open_with(&config),
            Err(Error::Unaligned {
                what: "register",
                ..
            })
        ));
        let config = fake_guest(dir.path(), "nexus.io=0x1000,0x1000");
        assert!(matches!(
            open_with(&config),
            Err(Error::Cmdline(CmdlineError::Missing("nexus.window")))
        ));
        let config = LinuxConfig {
            cmdline: dir.path().join("no-cmdline"),
            ..config
        };
        assert!(matches!(open_with(&config), Err(Error::ReadCmdline { .. })));
    }
}
