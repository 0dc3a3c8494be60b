//! Opening a snapshot (validating its files) and restoring VMs from it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nexus_kvm::memory::GuestRegionMmap;
use nexus_kvm::{Vcpu, VcpuConfig, Vm, VmMemory, WindowRegion};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, MmapRegion};

use crate::file_identity::FileIdentity;
use crate::memfile::MemoryFile;
use crate::persist::DeviceState;
use crate::prefetch::{PrefetchReport, PrefetchShared};
use crate::state::{MemoryRegion, RegionKind, SnapshotState};
use crate::sys::Userfaultfd;
use crate::uffd::{FaultShared, UffdRegion};
use crate::working_set;
use crate::{Error, PAGE_SIZE, Result, SnapshotFiles};

pub use crate::working_set::WorkingSetReport;

/// How guest RAM is brought back.
///
/// With feature `serde` it is (de)serialized by its lowercase name (`"eager"`, `"lazy"`,
/// `"uffd"`, `"prefetch"`); with feature `clap` it is a `clap::ValueEnum` with the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RestoreMode {
    /// Read every non-zero page into fresh anonymous memory before the VM runs.
    #[default]
    Eager,
    /// Map the memory file `MAP_PRIVATE`: pages are read from the page cache (shared by every
    /// VM restored from the same file) on first touch, and copied on first write.
    Lazy,
    /// Serve each page on first touch through userfaultfd (`UFFDIO_COPY` from the memory
    /// file, `UFFDIO_ZEROPAGE` for pages it does not store).
    Uffd,
    /// As [`RestoreMode::Uffd`], and a background thread installs the recorded working set
    /// (read in one sequential read, checksum checked first) while the VM already runs: the
    /// guest waits neither for the working set nor, once the thread is ahead of it, for
    /// pages of it. A page the guest touches before the thread reaches it is served on
    /// demand and then left alone by the thread. [`FaultServer::prefetch`] tells how far it
    /// got; [`FaultServer::wait_prefetch`] waits for it.
    Prefetch,
}

/// How to restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// How guest RAM is brought back.
    pub mode: RestoreMode,
    /// Record the pages the guest faults in, for [`FaultServer::write_working_set`]
    /// (needs [`RestoreMode::Uffd`]).
    pub record_working_set: bool,
    /// How the restored vCPUs treat unclaimed exits.
    pub vcpu: VcpuConfig,
}

/// Where a restore spent its time and what it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// The mode used.
    pub mode: RestoreMode,
    /// Preparing guest memory: mapping, reading (eager, window), registering with
    /// userfaultfd, reading the working set's page indices and starting its prefetch.
    pub memory: Duration,
    /// Creating the VM over that memory and restoring the interrupt controllers.
    pub vm: Duration,
    /// Creating the vCPUs, setting their state, and restoring the clock.
    pub vcpus: Duration,
    /// The whole restore (not counting [`Snapshot::open`]).
    pub total: Duration,
    /// Bytes read from the snapshot's files before the VM runs (eagerly read pages, the
    /// window, the working-set file's header and page indices).
    pub bytes_read: u64,
    /// Pages of the working set handed to the background prefetch
    /// ([`RestoreMode::Prefetch`]; [`FaultServer::prefetch`] tells how many it installed).
    pub prefetched_pages: u64,
    /// Pages installed before the VM runs because its vCPUs need them first — the pages of
    /// their instruction and stack pointers and the page tables that map them, found from
    /// their saved registers ([`RestoreMode::Prefetch`]; the gaps of up to
    /// [`crate::MAX_GAP_PAGES`] pages between them included).
    pub first_pages: u64,
}

/// Pages served by userfaultfd so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Page faults served (copied or zero).
    pub pages_faulted: u64,
    /// Of those, pages served with the zero page.
    pub zero_pages: u64,
    /// Bytes copied from the memory file.
    pub bytes_copied: u64,
}

/// A validated snapshot, ready to restore any number of VMs from, at the same time if
/// wanted (it is cheap to clone and `Send + Sync`).
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<SnapshotInner>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &format_args!("{:#018x}", self.inner.state.id))
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct SnapshotInner {
    pub(crate) files: SnapshotFiles,
    pub(crate) state: SnapshotState,
    pub(crate) memory: MemoryFile,
    /// The state file as it was read.
    state_identity: FileIdentity,
    /// The memory file mapped read-only, shared by the userfaultfd handlers.
    source: OnceLock<MmapRegion>,
    open_time: Duration,
}

impl SnapshotInner {
    /// Fails with [`Error::FileChanged`] if the memory file or the state file changed since
    /// the snapshot was opened.
    pub(crate) fn check_files(&self) -> Result<()> {
        self.memory.check()?;
        self.state_identity.check_path(&self.files.state)
    }

    /// The read-only mapping of the memory file, mapped on first use.
    pub(crate) fn source(&self) -> std::io::Result<&MmapRegion> {
        if let Some(s) = self.source.get() {
            return Ok(s);
        }
        let file = self.memory.file.try_clone()?;
        let region = MmapRegionBuilder::new(self.state.memory.file_size as usize)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // A racing thread may have mapped it first; then ours is dropped.
        let _ = self.source.set(region);
        Ok(self.source.get().expect("just set"))
    }
}

/// A restored VM, ready to run: start the vCPUs (after placing the devices on the VM's
/// buses) and the guest continues where it was saved.
#[derive(Debug)]
pub struct RestoredVm {
    /// The VM, over the restored memory.
    pub vm: Vm,
    /// Its vCPUs, by index, with their state set.
    pub vcpus: Vec<Vcpu>,
    /// The devices' saved sections, for the VMM to restore its devices from
    /// ([`DeviceState::restore`]).
    pub devices: Vec<DeviceState>,
    /// The userfaultfd page server ([`RestoreMode::Uffd`] and [`RestoreMode::Prefetch`]).
    pub faults: Option<FaultServer>,
    /// Where the restore spent its time.
    pub stats: RestoreStats,
}

impl RestoredVm {
    /// The device section named `name`.
    pub fn device(&self, name: &str) -> Result<&DeviceState> {
        DeviceState::find(&self.devices, name)
    }

    /// Pages served by userfaultfd so far (zero in the other modes).
    pub fn fault_stats(&self) -> FaultStats {
        self.faults
            .as_ref()
            .map(FaultServer::stats)
            .unwrap_or_default()
    }
}

/// The userfaultfd side of a restored VM: its counters and, when recording, the working set.
///
/// The handler thread serves faults until the VM's memory is unmapped, independently of
/// this handle.
#[derive(Clone)]
pub struct FaultServer {
    shared: Arc<FaultShared>,
    snapshot: Arc<SnapshotInner>,
    prefetch: Option<Arc<PrefetchShared>>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("stats", &self.stats())
            .field("recording", &self.shared.recorded.is_some())
            .field("finished", &self.is_finished())
            .field("prefetch", &self.prefetch())
            .finish()
    }
}

impl FaultServer {
    /// Pages served so far.
    pub fn stats(&self) -> FaultStats {
        let copied = self.shared.copied.load(Ordering::Relaxed);
        let zeroed = self.shared.zeroed.load(Ordering::Relaxed);
        FaultStats {
            pages_faulted: copied + zeroed,
            zero_pages: zeroed,
            bytes_copied: copied * PAGE_SIZE,
        }
    }

    /// Whether the handler thread has ended (the VM's memory is gone).
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// How far the background prefetch of a [`RestoreMode::Prefetch`] restore has got
    /// (`None` in the other modes).
    pub fn prefetch(&self) -> Option<PrefetchReport> {
        self.prefetch.as_ref().map(|p| p.report())
    }

    /// Waits until the background prefetch of a [`RestoreMode::Prefetch`] restore has ended
    /// — done, stopped because the VM was dropped, or given up on an error — and reports
    /// (`None` at once in the other modes). Waiting before the first `run` installs the
    /// whole working set before the guest's first instruction, as prefetch restores did
    /// before the prefetch moved to the background.
    pub fn wait_prefetch(&self) -> Option<PrefetchReport> {
        self.prefetch.as_ref().map(|p| p.wait())
    }

    /// Writes the pages recorded so far to the snapshot's working-set file (replacing any
    /// older one), for later [`RestoreMode::Prefetch`] restores. Refused with
    /// [`Error::FileChanged`] if the snapshot's files changed since it was opened.
    pub fn write_working_set(&self) -> Result<WorkingSetReport> {
        let recorded = self.shared.recorded.as_ref().ok_or(Error::NotRecording)?;
        let pages = recorded.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let inner = &self.snapshot;
        // The pages are copied from the memory file: it must still be the snapshot's.
        inner.check_files()?;
        let report =
            working_set::write(&inner.files.working_set, &inner.state, &inner.memory, pages)?;
        log::info!(
            "Working set of {} pages ({} zero) written to {}",
            report.data_pages + report.zero_pages,
            report.zero_pages,
            report.path.display()
        );
        Ok(report)
    }
}

fn anonymous_region(r: &MemoryRegion) -> Result<GuestRegionMmap> {
    GuestRegionMmap::from_range(GuestAddress(r.guest_addr), r.size as usize, None)
        .map_err(|e| Error::Memory(nexus_kvm::memory::Error::Mmap(e)))
}

impl Snapshot {
    /// Opens the snapshot `files` and validates the state file and the memory file (header,
    /// version, checksums, that the memory file is the state file's). Nothing is mapped yet.
    ///
    /// A state file larger than the format allows ([`crate::limits::MAX_STATE_FILE_SIZE`]) is
    /// refused from its size, unread ([`Error::StateFileTooLarge`]). The identity of both files
    /// (device, inode, size, modification time, from `fstat` of the opened descriptors) is
    /// recorded: every restore checks it again ([`Snapshot::check_files`]).
    pub fn open(files: &SnapshotFiles) -> Result<Self> {
        let start = Instant::now();
        let (bytes, state_identity) = crate::state::read_file(&files.state)?;
        let state = SnapshotState::from_file_bytes(&bytes, &files.state)?;
        drop(bytes);
        let memory = MemoryFile::open(&files.memory, &state)?;
        log::debug!(
            "Opened snapshot {:#018x}: {} vCPU(s), {} of {} pages stored",
            state.id,
            state.vcpus.len(),
            state.memory.nonzero_pages,
            state.memory.data_pages()
        );
        Ok(Snapshot {
            inner: Arc::new(SnapshotInner {
                files: files.clone(),
                state,
                memory,
                state_identity,
                source: OnceLock::new(),
                open_time: start.elapsed(),
            }),
        })
    }

    /// What the state file holds.
    pub fn state(&self) -> &SnapshotState {
        &self.inner.state
    }

    /// The snapshot's files.
    pub fn files(&self) -> &SnapshotFiles {
        &self.inner.files
    }

    /// How long [`Snapshot::open`] took (reading and validating the files).
    pub fn open_time(&self) -> Duration {
        self.inner.open_time
    }

    /// Fails with [`Error::FileChanged`], naming the file and the change, if the memory file
    /// or the state file is no longer the one [`Snapshot::open`] opened: truncated, extended
    /// or written to (`fstat` of the memory file's descriptor, which restores map and read),
    /// replaced or removed (`stat` of the paths). [`Snapshot::restore`] checks this before it
    /// maps or reads anything and again once guest memory is prepared.
    ///
    /// A change is final for this `Snapshot`: even when the file is put back as it was, its
    /// modification time (or inode) differs, so every later restore is refused too. Open the
    /// snapshot again ([`Snapshot::open`] validates the files as they are now) to restore
    /// from it.
    pub fn check_files(&self) -> Result<()> {
        self.inner.check_files()
    }

    /// Whether a working-set file for this snapshot exists (it is validated only when a
    /// [`RestoreMode::Prefetch`] restore reads it).
    pub fn has_working_set(&self) -> bool {
        self.inner.files.working_set.is_file()
    }

    /// Restores a VM. Every file is validated before the VM is built, so an error leaves
    /// nothing behind.
    ///
    /// A restore from files that changed since [`Snapshot::open`] is refused with
    /// [`Error::FileChanged`] ([`Snapshot::check_files`]), in every mode: it is checked before
    /// anything is mapped or read and again once guest memory is prepared, and a read that
    /// comes up short because the memory file shrank is reported the same way. A file changed
    /// after that (while the restored VM runs) is beyond what a restore can check.
    ///
    /// A [`RestoreMode::Prefetch`] restore checks the working-set file's header and page
    /// indices before the VM is built; the checksum of its pages is checked by the
    /// background prefetch before it installs anything, and a mismatch only ends the prefetch
    /// ([`crate::PrefetchState::Failed`]): the guest's pages are then all served on demand
    /// from the memory file.
    pub fn restore(&self, options: &RestoreOptions) -> Result<RestoredVm> {
        self.restore_with(options, None)
    }

    /// [`Snapshot::restore`]; with a `prefetch_gate`, the background prefetch waits for it
    /// before it starts (tests make the guest run first).
    pub(crate) fn restore_with(
        &self,
        options: &RestoreOptions,
        prefetch_gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Result<RestoredVm> {
        let start = Instant::now();
        let inner = &self.inner;
        let state = &inner.state;
        let mode = options.mode;
        if options.record_working_set && mode != RestoreMode::Uffd {
            return Err(Error::RecordNeedsUffd(mode));
        }
        inner.check_files()?;
        let working_set = match mode {
            RestoreMode::Prefetch => Some(working_set::read(
                &inner.files.working_set,
                state,
                &inner.memory,
            )?),
            _ => None,
        };
        let mut stats = RestoreStats {
            mode,
            ..Default::default()
        };
        let mut ram = Vec::new();
        let mut uffd_regions = Vec::new();
        let mut window = None;
        // Declared after the memory so that, on an error, it is closed before the memory is
        // unmapped: an unmap waits for its UFFD_EVENT_UNMAP to be read while the
        // userfaultfd is open and, until the handler thread starts, nobody reads it.
        let uffd = match mode {
            RestoreMode::Uffd | RestoreMode::Prefetch => {
                // Map the source now: the handler must not fail on its first fault.
                inner
                    .source()
                    .map_err(|e| Error::io("map", &inner.memory.path, e))?;
                Some(Arc::new(Userfaultfd::new().map_err(|source| {
                    Error::Userfaultfd { op: "open", source }
                })?))
            }
            _ => None,
        };

        for r in &state.memory.regions {
            match r.kind {
                RegionKind::Window => {
                    // In the process's window slabs, if it installed them.
                    let w = WindowRegion::allocate(r.size).map_err(Error::Memory)?;
                    stats.bytes_read += inner.memory.fill(r, w.region())?;
                    window = Some(w);
                }
                RegionKind::Ram => {
                    let region = match mode {
                        RestoreMode::Eager => {
                            let region = anonymous_region(r)?;
                            stats.bytes_read += inner.memory.fill(r, &region)?;
                            region
                        }
                        RestoreMode::Lazy => {
                            // The memory file's one descriptor, shared: a VM's private
                            // mapping needs none of its own.
                            let file = std::sync::Arc::clone(&inner.memory.file);
                            let mapping = MmapRegionBuilder::new(r.size as usize)
                                .with_file_offset(FileOffset::from_arc(file, r.file_offset))
                                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                                .build()
                                .map_err(Error::Mmap)?;
                            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                                .expect("the layout was validated")
                        }
                        RestoreMode::Uffd | RestoreMode::Prefetch => {
                            let region = anonymous_region(r)?;
                            let host = region.as_ptr() as u64;
                            uffd.as_ref()
                                .expect("opened for these modes")
                                .register(host, r.size)
                                .map_err(|source| Error::Userfaultfd {
                                    op: "register",
                                    source,
                                })?;
                            uffd_regions.push(UffdRegion {
                                host,
                                len: r.size,
                                first_page: r.first_page(),
                            });
                            region
                        }
                    };
                    ram.push(Arc::new(region));
                }
            }
        }
        // A change while memory was prepared: in particular a memory file truncated after the
        // first check but before a lazy mapping of it, which the guest would fault on.
        inner.check_files()?;
        let mut pending_prefetch = None;
        let mut faults = match uffd {
            Some(uffd) => {
                let shared = Arc::new(FaultShared {
                    recorded: options.record_working_set.then(|| Mutex::new(Vec::new())),
                    ..Default::default()
                });
                crate::uffd::spawn(
                    Arc::clone(&uffd),
                    uffd_regions.clone(),
                    Arc::clone(inner),
                    Arc::clone(&shared),
                )?;
                // The prefetch thread starts once the VM and its vCPUs are built: KVM takes the
                // address space's lock for writing while it builds them, and would wait for
                // each batch the thread installs.
                if let Some(ws) = working_set {
                    let first = crate::first_pages::first_pages(state, &inner.memory);
                    stats.first_pages =
                        crate::prefetch::install_now(&uffd, &uffd_regions, inner, &first)?;
                    stats.prefetched_pages = (ws.data_pages.len() + ws.zero_pages.len()) as u64;
                    stats.bytes_read += ws.data_offset as u64;
                    pending_prefetch = Some((uffd, uffd_regions, ws, Arc::clone(&shared)));
                }
                Some(FaultServer {
                    shared,
                    snapshot: Arc::clone(inner),
                    prefetch: None,
                })
            }
            None => None,
        };
        let memory =
            VmMemory::from_parts(state.memory.config, ram, window).map_err(Error::Memory)?;
        stats.memory = start.elapsed();

        let t = Instant::now();
        let mut vm = Vm::with_memory(memory, state.vm.irqchip.is_some()).map_err(Error::Vm)?;
        state.vm.apply_irqchip(vm.fd())?;
        stats.vm = t.elapsed();

        let t = Instant::now();
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for v in &state.vcpus {
            let vcpu = vm.create_vcpu(options.vcpu).map_err(Error::Vm)?;
            v.apply(vm.fd(), &vcpu)?;
            vcpus.push(vcpu);
        }
        state.vm.apply_clock(vm.fd())?;
        stats.vcpus = t.elapsed();
        if let (Some((uffd, regions, ws, shared)), Some(faults)) = (pending_prefetch, &mut faults) {
            faults.prefetch = Some(crate::prefetch::spawn(
                uffd,
                &regions,
                &ws,
                Arc::clone(inner),
                shared,
                prefetch_gate,
            )?);
        }
        stats.total = start.elapsed();
        log::debug!("Restored snapshot {:#018x} ({mode:?}): {stats:?}", state.id);
        Ok(RestoredVm {
            vm,
            vcpus,
            devices: state.devices.clone(),
            faults,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc;

    use nexus_kvm::VcpuStop;
    use nexus_kvm::serial::Console;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::PrefetchState;
    use crate::test_guests::*;

    const RAM: u64 = 64 << 20;
    const BUFFER_BYTES: u64 = 1 << 20;

    /// A counting guest stopped mid-computation, with a recorded working set; the exit code
    /// and buffer an eager restore runs to.
    fn recorded_counter(dir: &Path) -> (Snapshot, u32, Vec<u8>) {
        let elf = counter_elf(20_000_000, BUFFER_BYTES);
        let (files, _) = snapshot_counter(&elf, RAM, 0, Duration::from_millis(5), dir);
        let snapshot = Snapshot::open(&files).unwrap();
        let recording = restore_and_run(&snapshot, RestoreMode::Uffd, true);
        assert!(recording.recorded.is_some());
        let eager = restore_and_run(&snapshot, RestoreMode::Eager, false);
        let buffer = read_buffer(&eager.restored);
        (snapshot, eager.code, buffer)
    }

    fn read_buffer(restored: &RestoredVm) -> Vec<u8> {
        let mut buf = vec![0u8; BUFFER_BYTES as usize];
        restored
            .vm
            .memory()
            .guest()
            .read_slice(&mut buf, GuestAddress(BUFFER))
            .unwrap();
        buf
    }

    /// A prefetch restore whose background prefetch waits for the returned sender.
    fn gated_restore(snapshot: &Snapshot) -> (RestoredVm, mpsc::Sender<()>) {
        let (open, gate) = mpsc::channel();
        let restored = snapshot
            .restore_with(
                &RestoreOptions {
                    mode: RestoreMode::Prefetch,
                    vcpu: VcpuConfig { strict_io: true },
                    ..Default::default()
                },
                Some(gate),
            )
            .unwrap();
        (restored, open)
    }

    #[test]
    fn pages_the_guest_touched_before_the_prefetch_are_served_once_and_keep_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, code, buffer) = recorded_counter(dir.path());
        let (mut restored, open) = gated_restore(&snapshot);
        crate::devices::attach_micro_devices(
            &restored.vm,
            &restored.devices,
            Console::new(std::io::sink()),
        )
        .unwrap();
        // The guest runs to its end before the prefetch starts: every page of its working
        // set is served on demand (and the buffer's pages written).
        assert_eq!(restored.vcpus[0].run().unwrap(), VcpuStop::Exit(code));
        let faults = restored.faults.clone().unwrap();
        let served = faults.stats();
        assert_eq!(faults.prefetch().unwrap().state, PrefetchState::Running);
        open.send(()).unwrap();
        let report = faults.wait_prefetch().unwrap();
        eprintln!("{served:?} then {report:?}");
        assert_eq!(report.state, PrefetchState::Done);
        // Every page of the working set was already there: the prefetch installed only the
        // gaps it fills, and the fault handler served nothing more.
        assert!(
            report.present_pages >= report.working_set_pages,
            "{report:?}"
        );
        assert_eq!(faults.stats(), served);
        assert!(served.pages_faulted >= report.working_set_pages - restored.stats.first_pages);
        // The guest's writes survived the prefetch.
        assert!(
            read_buffer(&restored) == buffer,
            "the guest's buffer was overwritten"
        );
    }

    #[test]
    fn the_prefetch_stops_when_the_vm_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _, _) = recorded_counter(dir.path());
        let (restored, open) = gated_restore(&snapshot);
        let faults = restored.faults.clone().unwrap();
        drop(restored);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !faults.is_finished() {
            assert!(Instant::now() < deadline, "the fault handler did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        open.send(()).unwrap();
        let report = faults.wait_prefetch().unwrap();
        assert_eq!(report.state, PrefetchState::Stopped);
        assert_eq!(report.installed_pages, 0);
    }

    #[test]
    fn the_vcpus_first_pages_are_installed_before_the_vm_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, code, _) = recorded_counter(dir.path());
        let (mut restored, _open) = gated_restore(&snapshot);
        // The code page, the stack page and the page tables: a handful.
        let first = restored.stats.first_pages;
        assert!((2..=64).contains(&first), "{first} first pages");
        // The micro-guest's code is identity-mapped: reading its page faults nothing.
        let faults = restored.faults.clone().unwrap();
        let rip = snapshot.state().vcpus[0].regs.rip;
        let mut byte = [0u8; 1];
        restored
            .vm
            .memory()
            .guest()
            .read_slice(&mut byte, GuestAddress(rip))
            .unwrap();
        assert_eq!(faults.stats().pages_faulted, 0);
        crate::devices::attach_micro_devices(
            &restored.vm,
            &restored.devices,
            Console::new(std::io::sink()),
        )
        .unwrap();
        assert_eq!(restored.vcpus[0].run().unwrap(), VcpuStop::Exit(code));
    }
}
