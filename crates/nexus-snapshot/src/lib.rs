//! Snapshot and restore of Nexus VMs.
//!
//! A snapshot of a paused VM is two files (plus, optionally, a third):
//!
//! - the **state file**: a versioned, CRC32-checksummed record stream holding every vCPU's
//!   registers (general, special, FPU, XSAVE, XCRs, debug registers, MSRs, LAPIC, events,
//!   MP state, CPUID), the VM-wide KVM state (clock, PIC/IOAPIC, PIT), the memory layout, and
//!   one opaque section per device, produced by the device's own [`Persist`] implementation;
//! - the **memory file**: guest RAM and the I/O window as a sparse file — only the pages the
//!   guest touched are written, at their offsets, so a barely touched guest costs a few blocks
//!   of disk — with a header and an explicit, checksummed page list;
//! - the **working-set file**: the pages a recording restore saw the guest fault, stored
//!   contiguously so that a later [`RestoreMode::Prefetch`] restore reads them in one
//!   sequential read (REAP's record-and-prefetch) — in the background, while the guest
//!   already runs.
//!
//! `docs/snapshot-format.md` in the workspace documents the three formats byte by byte.
//!
//! Saving ([`save()`]) reads nothing it does not store: the pages of anonymous RAM that exist
//! (present or swapped out, not the shared zero page) are found with `PAGEMAP_SCAN` on
//! `/proc/self/pagemap` and written straight from guest memory, one `pwrite` per run; the
//! other regions (the window, RAM mapped from a file or registered with userfaultfd by a
//! restore, everything on kernels before Linux 6.7) are read whole and their non-zero pages
//! written ([`SaveReport::pages_scanned`]). Files replacing older ones are exchanged with them
//! atomically.
//!
//! Restoring ([`Snapshot::restore`]) validates everything first — header, version, checksum,
//! and that the memory (and working-set) file belongs to the state file — and only then
//! builds a new [`nexus_kvm::Vm`] over memory prepared as the [`RestoreMode`] says:
//!
//! | mode | RAM | untouched pages |
//! |---|---|---|
//! | [`Eager`](RestoreMode::Eager) | fresh anonymous memory, non-zero pages read in | — |
//! | [`Lazy`](RestoreMode::Lazy) | the memory file mapped `MAP_PRIVATE` (copy-on-write) | read from the page cache shared by every VM restored from the file |
//! | [`Uffd`](RestoreMode::Uffd) | anonymous memory registered with userfaultfd | served on first touch by a handler thread (`UFFDIO_COPY` / `UFFDIO_ZEROPAGE`) |
//! | [`Prefetch`](RestoreMode::Prefetch) | as `Uffd`; a background thread installs the recorded working set while the guest runs | as `Uffd`, until the background thread has installed them |
//!
//! A prefetch restore never waits for the working set: the pages the vCPUs need first (found
//! from their saved registers and page tables, [`RestoreStats::first_pages`]) are installed
//! before the VM is returned, the vCPUs can start at once, a background thread installs the
//! working set in page order (`UFFDIO_COPY` from the memory file, in spans that fill gaps of up
//! to [`MAX_GAP_PAGES`] pages, at most [`MAX_BATCH_PAGES`] at a time), and the fault handler
//! serves whatever the guest touches before the thread gets there. Both only fill missing pages —
//! the kernel refuses to overwrite a present one — so every page is installed once and no
//! write of the guest is undone. [`FaultServer::prefetch`] reports progress
//! ([`PrefetchReport`]); [`FaultServer::wait_prefetch`] waits for the end, which comes early
//! when the VM is dropped.
//!
//! The I/O window is always restored eagerly into a new memfd, so that it can again be shared
//! with the backend.
//!
//! A [`Snapshot`] is meant to be opened once and restored from many times. [`Snapshot::open`]
//! records the identity of its state and memory files (device, inode, size, modification
//! time), and every restore checks it again ([`Snapshot::check_files`]): a file truncated,
//! rewritten, replaced or removed since is refused with [`Error::FileChanged`] rather than
//! mapped. A state file larger than the format's bounds allow ([`limits`]) is refused from
//! its size, before it is read ([`Error::StateFileTooLarge`]).
//!
//! # Example
//!
//! ```no_run
//! use nexus_kvm::serial::Console;
//! use nexus_kvm::VcpuConfig;
//! use nexus_snapshot::{RestoreMode, RestoreOptions, Snapshot, SnapshotFiles};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let files = SnapshotFiles::in_dir("/var/lib/nexus/fn-42");
//! let snapshot = Snapshot::open(&files)?;
//! let mut restored = snapshot.restore(&RestoreOptions {
//!     mode: RestoreMode::Lazy,
//!     vcpu: VcpuConfig { strict_io: true },
//!     ..RestoreOptions::default()
//! })?;
//! nexus_snapshot::devices::attach_micro_devices(
//!     &restored.vm,
//!     &restored.devices,
//!     Console::new(std::io::stdout()),
//! )?;
//! let stop = restored.vcpus[0].run()?;
//! println!("guest stopped: {stop:?}");
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

// The integration tests' guests, for the unit tests that need a running VM.
#[cfg(test)]
extern crate self as nexus_snapshot;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_guests;

mod codec;
pub mod devices;
mod file_identity;
mod first_pages;
pub mod limits;
mod memfile;
mod persist;
mod prefetch;
mod reset;
mod restore;
mod save;
mod state;
mod sys;
mod uffd;
mod vcpu;
mod vm_state;
mod working_set;

use std::path::{Path, PathBuf};

pub use file_identity::FileChange;
pub use persist::{DeviceState, Persist};
pub use prefetch::{MAX_BATCH_PAGES, MAX_GAP_PAGES, PrefetchReport, PrefetchState};
pub use reset::{
    RamReport, RamReset, ResetError, WindowImage, WindowReport, reset_ram, reset_vcpu,
};
pub use restore::{
    FaultServer, FaultStats, RestoreMode, RestoreOptions, RestoreStats, RestoredVm, Snapshot,
    WorkingSetReport,
};
pub use save::{SaveReport, save};
pub use state::{MemoryLayout, MemoryRegion, RegionKind, SnapshotState};
pub use vcpu::VcpuState;
pub use vm_state::{IrqchipState, VmState};

/// Version of the state, memory and working-set file formats this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The size of a guest page in every file of a snapshot.
pub const PAGE_SIZE: u64 = 4096;

/// Where a snapshot's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The state file (vCPUs, VM, devices, memory layout).
    pub state: PathBuf,
    /// The sparse memory file.
    pub memory: PathBuf,
    /// The working-set file written by a recording restore and read by prefetch restores.
    pub working_set: PathBuf,
}

impl SnapshotFiles {
    /// The files `vm.state`, `vm.mem` and `vm.ws` inside `dir`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        SnapshotFiles {
            state: dir.join("vm.state"),
            memory: dir.join("vm.mem"),
            working_set: dir.join("vm.ws"),
        }
    }
}

/// Errors of this crate. Every error about a file names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("Cannot {op} {}", path.display())]
    Io {
        /// What was being done ("read", "write", "create", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not start with the expected magic bytes.
    #[error("{} is not a {kind} (bad magic)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What it should have been.
        kind: &'static str,
    },
    /// A file was written by another version of the format.
    #[error("{} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A file is shorter (or longer) than its header says.
    #[error("{} is truncated or overlong: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The size its header implies.
        expected: u64,
        /// Its actual size.
        found: u64,
    },
    /// The state file is larger than the format allows ([`limits::MAX_STATE_FILE_SIZE`]); it
    /// was refused from its size, without reading it.
    #[error("{} is {size} bytes; a state file is at most {max} bytes", path.display())]
    StateFileTooLarge {
        /// The state file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest state file the format allows.
        max: u64,
    },
    /// A snapshot file changed after [`Snapshot::open`] recorded it (truncated, replaced,
    /// removed or written to): restoring from it is refused. Open the snapshot again to
    /// restore from the files as they are now.
    #[error("{} changed after the snapshot was opened: {change}", path.display())]
    FileChanged {
        /// The state or memory file.
        path: PathBuf,
        /// What changed.
        change: FileChange,
    },
    /// Saving would exceed a bound of the format ([`limits`]).
    #[error("A snapshot holds at most {max} {what}; this one has {found}")]
    LimitExceeded {
        /// What is counted or measured ("vCPUs", "device sections", …).
        what: &'static str,
        /// How many there are.
        found: u64,
        /// The bound.
        max: u64,
    },
    /// A checksum does not match: the file is corrupted.
    #[error("{} is corrupted: {what} checksum is {found:#010x}, expected {expected:#010x}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which checksum.
        what: &'static str,
        /// The checksum stored in the file.
        expected: u32,
        /// The checksum of the bytes read.
        found: u32,
    },
    /// A file is well-checksummed but its contents make no sense.
    #[error("{} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A memory or working-set file does not belong to the state file it is used with.
    #[error("{} does not match the snapshot's state file: {reason}", path.display())]
    Mismatch {
        /// The memory or working-set file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A KVM ioctl failed while saving or restoring.
    #[error("KVM refused {op}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the MSRs.
    #[error("KVM refused to restore MSR {index:#x} of vCPU {vcpu}")]
    MsrRefused {
        /// The vCPU.
        vcpu: u64,
        /// The first MSR not set.
        index: u32,
    },
    /// The VM or a vCPU could not be built.
    #[error("Cannot build the restored VM")]
    Vm(#[source] nexus_kvm::Error),
    /// The memory layout was refused.
    #[error("Cannot assemble the restored guest memory")]
    Memory(#[source] nexus_kvm::memory::Error),
    /// Guest memory could not be mapped.
    #[error("Cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    /// Guest memory could not be accessed.
    #[error("Cannot access guest memory at {addr:#x}")]
    GuestMemory {
        /// Guest-physical address.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A userfaultfd operation failed.
    #[error("userfaultfd {op} failed")]
    Userfaultfd {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The fault-handling thread could not be started.
    #[error("Cannot start the userfaultfd handler thread")]
    Thread(#[source] std::io::Error),
    /// The VM to save has no vCPU, or vCPU ids are not 0, 1, 2, …
    #[error("A snapshot needs vCPUs numbered 0, 1, 2, …; got {0:?}")]
    VcpuIds(Vec<u64>),
    /// A device section is missing from the snapshot.
    #[error("The snapshot has no state for device {0:?}")]
    MissingDevice(String),
    /// Two device sections have the same name.
    #[error("Two devices are named {0:?}; device names must be unique")]
    DuplicateDevice(String),
    /// A device refused its saved state.
    #[error("Cannot restore device {name:?}")]
    Device {
        /// The device section's name.
        name: String,
        /// The device's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A device could not be placed on a bus.
    #[error("Cannot place device {name:?} on the bus")]
    Bus {
        /// The device.
        name: String,
        /// The cause.
        #[source]
        source: nexus_kvm::bus::Error,
    },
    /// Recording a working set needs a userfaultfd restore.
    #[error("Recording a working set needs RestoreMode::Uffd, not {0:?}")]
    RecordNeedsUffd(RestoreMode),
    /// The restore was not a recording one.
    #[error("This restore did not record a working set")]
    NotRecording,
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(path: &Path, reason: impl Into<String>) -> Self {
        Error::Mismatch {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Error::Kvm { op, source }
    }
}
