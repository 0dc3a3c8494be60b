//! Snapshot and restore of real micro-VMs (needs `/dev/kvm`).

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use nexus_kvm::layout::{SERIAL_PORT, SERIAL_PORT_LEN};
use nexus_kvm::micro::{self, MicroGuestPorts};
use nexus_kvm::serial::{Console, SerialDevice, SerialIrq};
use nexus_kvm::{BusKind, MemoryConfig, VcpuConfig, VcpuStop, Vm, VmConfig};
use nexus_snapshot::{
    DeviceState, Error, FileChange, PrefetchState, RestoreMode, RestoreOptions, Snapshot,
    SnapshotFiles,
};
use vm_memory::{Bytes, GuestAddress};

/// Long enough (a few hundred ms natively) to be stopped in the middle.
const ITERATIONS: u64 = 100_000_000;
const BUFFER_BYTES: u64 = 1 << 20;
const RAM: u64 = 64 << 20;
const STOP_AFTER: Duration = Duration::from_millis(20);

fn counter() -> &'static (Vec<u8>, u32, String) {
    static REF: OnceLock<(Vec<u8>, u32, String)> = OnceLock::new();
    REF.get_or_init(|| {
        let elf = counter_elf(ITERATIONS, BUFFER_BYTES);
        let (code, console) = run_uninterrupted(&elf, RAM);
        assert_eq!(console, "go\nok\n");
        (elf, code, console)
    })
}

fn snapshot_in(dir: &Path, window: u64) -> (Snapshot, String) {
    let (elf, _, _) = counter();
    let (files, before) = snapshot_counter(elf, RAM, window, STOP_AFTER, dir);
    (Snapshot::open(&files).expect("open the snapshot"), before)
}

fn check_run(result: &RunResult, before: &str) {
    let (_, code, console) = counter();
    assert_eq!(result.code, *code, "exit code after restore");
    assert_eq!(format!("{before}{}", result.console), *console);
}

#[test]
fn restores_a_guest_stopped_mid_computation_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(dir.path(), 1 << 20);
    assert!(counter().2.starts_with(&before));
    let v = &snapshot.state().vcpus[0];
    eprintln!(
        "saved: fpu {} xsave {} xcrs {} debugregs {} events {} lapic {} tsc_khz {:?} cpuid {} \
         clock {} msrs {:x?}",
        v.fpu.is_some(),
        v.xsave.is_some(),
        v.xcrs.is_some(),
        v.debug_regs.is_some(),
        v.events.is_some(),
        v.lapic.is_some(),
        v.tsc_khz,
        v.cpuid.len(),
        snapshot.state().vm.clock.is_some(),
        v.msrs.iter().map(|m| m.index).collect::<Vec<_>>()
    );
    for mode in [RestoreMode::Eager, RestoreMode::Lazy, RestoreMode::Uffd] {
        let r = restore_and_run(&snapshot, mode, false);
        check_run(&r, &before);
        assert_eq!(r.stats.mode, mode);
        if mode == RestoreMode::Uffd {
            assert!(r.faults.pages_faulted > 256, "{:?}", r.faults);
        } else {
            assert_eq!(r.faults.pages_faulted, 0);
        }
    }
    // Record, then prefetch.
    let recording = restore_and_run(&snapshot, RestoreMode::Uffd, true);
    check_run(&recording, &before);
    assert!(snapshot.has_working_set());
    let prefetch = restore_and_run(&snapshot, RestoreMode::Prefetch, false);
    check_run(&prefetch, &before);
    assert!(prefetch.stats.prefetched_pages > 256);
}

#[test]
fn prefetch_after_recording_faults_fewer_pages_than_uffd() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(dir.path(), 0);
    let plain = restore_and_run(&snapshot, RestoreMode::Uffd, false);
    check_run(&plain, &before);
    let recording = restore_and_run(&snapshot, RestoreMode::Uffd, true);
    check_run(&recording, &before);
    let report = recording.recorded.unwrap();
    assert_eq!(
        report.data_pages + report.zero_pages,
        recording.faults.pages_faulted
    );
    let prefetch = restore_and_run(&snapshot, RestoreMode::Prefetch, false);
    check_run(&prefetch, &before);
    eprintln!(
        "uffd faulted {} pages; prefetch installed {} and faulted {}",
        plain.faults.pages_faulted, prefetch.stats.prefetched_pages, prefetch.faults.pages_faulted
    );
    assert!(
        prefetch.faults.pages_faulted < plain.faults.pages_faulted,
        "prefetch {:?} vs uffd {:?}",
        prefetch.faults,
        plain.faults
    );
    assert_eq!(
        prefetch.stats.prefetched_pages,
        report.data_pages + report.zero_pages
    );
}

#[test]
fn a_background_prefetch_restore_ends_as_an_eager_one_in_memory_too() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(dir.path(), 0);
    restore_and_run(&snapshot, RestoreMode::Uffd, true);
    let eager = restore_and_run(&snapshot, RestoreMode::Eager, false);
    check_run(&eager, &before);
    let eager_ram = read_ram(&eager.restored.vm, RAM);
    for _ in 0..3 {
        let prefetch = restore_and_run(&snapshot, RestoreMode::Prefetch, false);
        check_run(&prefetch, &before);
        let report = prefetch
            .restored
            .faults
            .as_ref()
            .unwrap()
            .wait_prefetch()
            .unwrap();
        eprintln!("at exit {:?}; at the end {report:?}", prefetch.prefetch);
        assert_eq!(report.state, PrefetchState::Done);
        assert!(report.installed_pages + report.present_pages >= report.working_set_pages);
        assert!(
            read_ram(&prefetch.restored.vm, RAM) == eager_ram,
            "RAM differs from the eager restore's"
        );
    }
}

#[test]
fn ten_concurrent_restores_from_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(dir.path(), 0);
    restore_and_run(&snapshot, RestoreMode::Uffd, true);
    let modes = [
        RestoreMode::Lazy,
        RestoreMode::Uffd,
        RestoreMode::Prefetch,
        RestoreMode::Eager,
        RestoreMode::Lazy,
    ];
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let snapshot = snapshot.clone();
            let mode = modes[i % modes.len()];
            std::thread::spawn(move || (mode, restore_and_run(&snapshot, mode, false)))
        })
        .collect();
    for t in threads {
        let (mode, r) = t.join().expect("a restore thread panicked");
        eprintln!("{mode:?}: exit {:#x}, {:?}", r.code, r.faults);
        check_run(&r, &before);
    }
}

#[test]
fn a_restored_vm_can_be_snapshotted_again() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(&dir.path().join("first"), 0);
    for mode in [RestoreMode::Lazy, RestoreMode::Uffd] {
        let mut restored = snapshot
            .restore(&RestoreOptions {
                mode,
                vcpu: VcpuConfig { strict_io: true },
                ..Default::default()
            })
            .unwrap();
        let output = Output::default();
        let serial = nexus_snapshot::devices::attach_micro_devices(
            &restored.vm,
            &restored.devices,
            Console::new(output.clone()),
        )
        .unwrap();
        let vcpu = restored.vcpus.pop().unwrap();
        let handle = vcpu.spawn("again".into()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let (vcpu, result) = handle.stop().unwrap();
        assert_eq!(result.unwrap(), VcpuStop::Stopped);
        let files = SnapshotFiles::in_dir(dir.path().join(format!("{mode:?}")));
        let section = DeviceState::save(&*serial.lock().unwrap());
        nexus_snapshot::save(&restored.vm, &mut [vcpu], &[section], &files).unwrap();
        let again = Snapshot::open(&files).unwrap();
        let r = restore_and_run(&again, RestoreMode::Eager, false);
        check_run(&r, &format!("{before}{}", output.text()));
    }
}

#[test]
fn window_is_restored_into_a_fresh_memfd() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = snapshot_in(dir.path(), 2 << 20);
    for mode in [RestoreMode::Lazy, RestoreMode::Uffd] {
        let restored = snapshot
            .restore(&RestoreOptions {
                mode,
                ..Default::default()
            })
            .unwrap();
        let window = restored.vm.memory().window().expect("a window");
        assert_eq!(window.size(), 2 << 20);
        let mut buf = [0u8; 12];
        window.memfd().read_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"window bytes");
    }
}

/// Every page of `ram` bytes of guest RAM, read from `vm`.
fn read_ram(vm: &Vm, ram: u64) -> Vec<u8> {
    let mut buf = vec![0u8; ram as usize];
    vm.memory()
        .guest()
        .read_slice(&mut buf, GuestAddress(0))
        .unwrap();
    buf
}

#[test]
fn a_snapshot_stores_the_pages_the_guest_touched_and_nothing_else() {
    const RAM: u64 = 64 << 20;
    let (dirty, stride) = (RAM / 4, 4 * 4096);
    let dir = tempfile::tempdir().unwrap();
    let mut booted = boot(&pause_elf(dirty, stride), RAM, 0);
    assert_eq!(booted.vcpu.run().unwrap(), VcpuStop::Exit(PAUSE_CODE_EXIT));
    // Known contents in two pages past the guest's buffer: one non-zero, one zero (written,
    // so stored, and still read as zero).
    let (marked, zeroed) = (BUFFER + dirty + (1 << 20), BUFFER + dirty + (2 << 20));
    let guest = booted.vm.memory().guest();
    guest
        .write_slice(b"marked page", GuestAddress(marked))
        .unwrap();
    guest
        .write_slice(&[0u8; 4096], GuestAddress(zeroed))
        .unwrap();
    let original = read_ram(&booted.vm, RAM);
    let files = SnapshotFiles::in_dir(dir.path());
    let report = save(&mut booted, &files);
    eprintln!("{report:?}");
    assert_eq!(
        report.pages_scanned, 0,
        "anonymous RAM is saved from its page tables (PAGEMAP_SCAN, Linux 6.7)"
    );
    // The dirtied buffer, the two pages above, the image and the boot structures.
    let touched = dirty / 4096 + 2;
    assert!(
        (touched..touched + 64).contains(&report.nonzero_pages),
        "{} pages stored for {touched} touched",
        report.nonzero_pages
    );
    drop(booted);
    let meta = std::fs::metadata(&files.memory).unwrap();
    assert!(
        meta.blocks() * 512 < dirty + (2 << 20),
        "{} bytes allocated",
        meta.blocks() * 512
    );

    let snapshot = Snapshot::open(&files).unwrap();
    for mode in [RestoreMode::Eager, RestoreMode::Lazy] {
        let restored = snapshot
            .restore(&RestoreOptions {
                mode,
                ..Default::default()
            })
            .unwrap();
        let ram = read_ram(&restored.vm, RAM);
        assert!(
            ram == original,
            "{mode:?}: RAM differs from the saved guest's"
        );
        // Untouched pages read zero: the whole page after the marked one, say.
        assert!(
            ram[(marked + 4096) as usize..][..4096]
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(&ram[marked as usize..][..11], b"marked page");
    }
    let r = restore_and_run(&snapshot, RestoreMode::Uffd, false);
    assert_eq!(r.code, pause_expected(dirty, stride));
}

#[test]
fn memory_file_of_a_barely_touched_guest_is_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let (elf, _, _) = counter();
    let (files, _) = snapshot_counter(elf, 256 << 20, 0, STOP_AFTER, dir.path());
    let meta = std::fs::metadata(&files.memory).unwrap();
    let allocated = meta.blocks() * 512;
    eprintln!(
        "memory file: {} bytes apparent, {} bytes allocated",
        meta.len(),
        allocated
    );
    assert!(meta.len() > 256 << 20);
    assert!(allocated < 8 << 20, "{allocated} bytes allocated");
    let snapshot = Snapshot::open(&files).unwrap();
    let pages = snapshot.state().memory.nonzero_pages;
    // Boot structures, the image, and at most the 256 pages of the buffer.
    assert!((4..300).contains(&pages), "{pages} non-zero pages");
}

#[test]
fn a_pending_port_write_is_completed_before_saving() {
    let dir = tempfile::tempdir().unwrap();
    let (dirty, stride) = (4 << 20, 4 * 4096);
    let mut b = boot(&pause_elf(dirty, stride), RAM, 0);
    assert_eq!(b.vcpu.run().unwrap(), VcpuStop::Exit(PAUSE_CODE_EXIT));
    let files = SnapshotFiles::in_dir(dir.path());
    save(&mut b, &files);
    let snapshot = Snapshot::open(&files).unwrap();
    for mode in [RestoreMode::Eager, RestoreMode::Uffd] {
        let r = restore_and_run(&snapshot, mode, false);
        assert_eq!(r.code, pause_expected(dirty, stride), "{mode:?}");
        assert!(r.first_instruction.is_some());
    }
}

#[test]
fn a_vm_with_an_irqchip_round_trips() {
    let (elf, code, console) = counter();
    let memory = MemoryConfig {
        ram_size: RAM,
        window_size: 0,
    };
    let mut vm = Vm::new(VmConfig {
        memory,
        irqchip: true,
    })
    .unwrap();
    let loaded = micro::load(vm.memory().guest(), memory, elf, &[], None).unwrap();
    let output = Output::default();
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        Console::new(output.clone()),
        SerialIrq::default(),
    )));
    vm.add_device(
        BusKind::Pio,
        serial.clone(),
        u64::from(SERIAL_PORT),
        u64::from(SERIAL_PORT_LEN),
    )
    .unwrap();
    let ports = MicroGuestPorts::new(vm.memory().guest().clone(), Console::new(output.clone()));
    vm.add_device(BusKind::Pio, Arc::new(Mutex::new(ports)), 0xf4, 2)
        .unwrap();
    let vcpu = vm.create_vcpu(VcpuConfig { strict_io: true }).unwrap();
    micro::setup_vcpu(vcpu.fd(), &loaded).unwrap();
    let handle = vcpu.spawn("irqchip".into()).unwrap();
    std::thread::sleep(STOP_AFTER);
    let (vcpu, result) = handle.stop().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Stopped);
    let dir = tempfile::tempdir().unwrap();
    let files = SnapshotFiles::in_dir(dir.path());
    let section = DeviceState::save(&*serial.lock().unwrap());
    nexus_snapshot::save(&vm, &mut [vcpu], &[section], &files).unwrap();
    let snapshot = Snapshot::open(&files).unwrap();
    let state = snapshot.state();
    assert!(state.vm.irqchip.is_some());
    assert!(state.vcpus[0].lapic.is_some());
    let r = restore_and_run(&snapshot, RestoreMode::Eager, false);
    assert_eq!(r.code, *code);
    assert_eq!(format!("{}{}", output.text(), r.console), *console);
}

/// Copies a snapshot's files into a new directory, for one corruption each.
fn copy(files: &SnapshotFiles, to: &Path) -> SnapshotFiles {
    let copy = SnapshotFiles::in_dir(to);
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(&files.state, &copy.state).unwrap();
    std::fs::copy(&files.memory, &copy.memory).unwrap();
    if files.working_set.exists() {
        std::fs::copy(&files.working_set, &copy.working_set).unwrap();
    }
    copy
}

fn flip(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

fn truncate(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

fn refused(files: &SnapshotFiles, mode: RestoreMode) -> Error {
    let result = Snapshot::open(files).and_then(|s| {
        s.restore(&RestoreOptions {
            mode,
            ..Default::default()
        })
    });
    match result {
        Ok(_) => panic!("a bad snapshot was restored"),
        Err(e) => e,
    }
}

#[test]
fn bad_snapshots_are_refused_naming_the_file_and_reason() {
    let root = tempfile::tempdir().unwrap();
    let (a, before_a) = snapshot_in(&root.path().join("a"), 0);
    let (b, _) = snapshot_in(&root.path().join("b"), 0);
    restore_and_run(&a, RestoreMode::Uffd, true);
    restore_and_run(&b, RestoreMode::Uffd, true);
    let a = a.files().clone();
    let b = b.files().clone();
    let mut n = 0;
    let mut case = || {
        n += 1;
        copy(&a, &root.path().join(format!("case{n}")))
    };
    let expect = |err: Error, path: &Path, what: &str| {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "{msg:?} does not name {}",
            path.display()
        );
        assert!(msg.contains(what), "{msg:?} does not say {what:?}");
    };

    let f = case();
    truncate(&f.state, 10);
    expect(refused(&f, RestoreMode::Eager), &f.state, "truncated");

    let f = case();
    flip(&f.state, 200);
    let err = refused(&f, RestoreMode::Eager);
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    expect(err, &f.state, "corrupted");

    let f = case();
    flip(&f.state, 8); // the format version: 1 → 0x41
    let err = refused(&f, RestoreMode::Eager);
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 0x41, .. }),
        "{err}"
    );
    expect(err, &f.state, "format version 65");

    let f = case();
    std::fs::copy(&b.memory, &f.memory).unwrap();
    let err = refused(&f, RestoreMode::Lazy);
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    expect(err, &f.memory, "belongs to snapshot");

    let f = case();
    truncate(&f.memory, 4096);
    expect(refused(&f, RestoreMode::Lazy), &f.memory, "truncated");

    let f = case();
    flip(&f.memory, 20); // the snapshot id, under the header checksum
    expect(
        refused(&f, RestoreMode::Lazy),
        &f.memory,
        "header's checksum",
    );

    let f = case();
    let len = std::fs::metadata(&f.memory).unwrap().len();
    flip(&f.memory, len - 1); // the page list
    expect(
        refused(&f, RestoreMode::Uffd),
        &f.memory,
        "page list's checksum",
    );

    let f = case();
    flip(&f.memory, 0);
    expect(refused(&f, RestoreMode::Eager), &f.memory, "bad magic");

    // Working-set files.
    let f = case();
    std::fs::copy(&b.working_set, &f.working_set).unwrap();
    let err = refused(&f, RestoreMode::Prefetch);
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    expect(err, &f.working_set, "belongs to snapshot");

    // The stored pages of a working-set file are not read (prefetch installs pages from the
    // memory file): one changed there does not reach the guest.
    let f = case();
    let len = std::fs::metadata(&f.working_set).unwrap().len();
    flip(&f.working_set, len - 100);
    let s = Snapshot::open(&f).unwrap();
    let r = restore_and_run(&s, RestoreMode::Prefetch, false);
    check_run(&r, &before_a);
    assert_eq!(
        r.restored
            .faults
            .as_ref()
            .unwrap()
            .wait_prefetch()
            .unwrap()
            .state,
        PrefetchState::Done
    );

    let f = case();
    truncate(&f.working_set, 4096);
    expect(
        refused(&f, RestoreMode::Prefetch),
        &f.working_set,
        "truncated",
    );

    let f = case();
    flip(&f.working_set, 8);
    expect(
        refused(&f, RestoreMode::Prefetch),
        &f.working_set,
        "format version",
    );

    let f = case();
    std::fs::remove_file(&f.working_set).unwrap();
    expect(
        refused(&f, RestoreMode::Prefetch),
        &f.working_set,
        "Cannot read",
    );

    // A recording restore needs userfaultfd.
    let s = Snapshot::open(&a).unwrap();
    let err = s
        .restore(&RestoreOptions {
            mode: RestoreMode::Lazy,
            record_working_set: true,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::RecordNeedsUffd(RestoreMode::Lazy)),
        "{err}"
    );

    // The untouched originals still restore.
    for files in [&a, &b] {
        let s = Snapshot::open(files).unwrap();
        let r = restore_and_run(&s, RestoreMode::Prefetch, false);
        assert_eq!(r.code, counter().1);
    }
}

const EVERY_MODE: [RestoreMode; 4] = [
    RestoreMode::Eager,
    RestoreMode::Lazy,
    RestoreMode::Uffd,
    RestoreMode::Prefetch,
];

/// The change a refused restore reports, after checking that it names `path`.
fn change_of(
    result: nexus_snapshot::Result<nexus_snapshot::RestoredVm>,
    path: &Path,
) -> FileChange {
    match result {
        Err(Error::FileChanged { path: p, change }) => {
            assert_eq!(p, path);
            change
        }
        Err(other) => panic!("expected FileChanged for {}, got {other}", path.display()),
        Ok(_) => panic!("a restore from a changed {} succeeded", path.display()),
    }
}

fn restore_in(
    snapshot: &Snapshot,
    mode: RestoreMode,
) -> nexus_snapshot::Result<nexus_snapshot::RestoredVm> {
    snapshot.restore(&RestoreOptions {
        mode,
        ..Default::default()
    })
}

/// Replaces `path` by a copy of itself renamed over it (a new inode, the same bytes).
fn replace_by_copy(path: &Path) {
    let tmp = path.with_extension("replacement");
    std::fs::copy(path, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_memory_file_changed_after_open_refuses_every_restore_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, before) = snapshot_in(dir.path(), 1 << 20);
    restore_and_run(&snapshot, RestoreMode::Uffd, true);
    let files = snapshot.files().clone();
    let backup = dir.path().join("vm.mem.backup");
    std::fs::copy(&files.memory, &backup).unwrap();
    let len = std::fs::metadata(&files.memory).unwrap().len();
    check_run(
        &restore_and_run(&snapshot, RestoreMode::Lazy, false),
        &before,
    );

    // Truncated in place, into guest RAM: a lazy mapping would fault past the new end.
    truncate(&files.memory, len / 2);
    for mode in EVERY_MODE {
        let change = change_of(restore_in(&snapshot, mode), &files.memory);
        assert_eq!(
            change,
            FileChange::Resized {
                was: len,
                now: len - len / 2
            },
            "{mode:?}"
        );
    }
    let err = snapshot.check_files().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&files.memory.display().to_string()) && msg.contains("size changed"),
        "{msg}"
    );

    // Put back as it was, in place: its size matches again, but it was written to since the
    // snapshot was opened, so this snapshot stays refused...
    std::fs::copy(&backup, &files.memory).unwrap();
    assert_eq!(std::fs::metadata(&files.memory).unwrap().len(), len);
    for mode in EVERY_MODE {
        let change = change_of(restore_in(&snapshot, mode), &files.memory);
        assert!(
            matches!(change, FileChange::Modified | FileChange::Resized { .. }),
            "{mode:?}: {change}"
        );
    }
    // ...until it is opened again.
    let reopened = Snapshot::open(&files).unwrap();
    check_run(
        &restore_and_run(&reopened, RestoreMode::Lazy, false),
        &before,
    );

    // Replaced by another file (renamed over it): the open descriptor still reads the old
    // one, but the snapshot on disk is no longer the one opened.
    replace_by_copy(&files.memory);
    for mode in EVERY_MODE {
        let change = change_of(restore_in(&reopened, mode), &files.memory);
        assert!(
            matches!(change, FileChange::Replaced { was_inode, inode, .. } if was_inode != inode),
            "{mode:?}: {change}"
        );
    }
    std::fs::remove_file(&files.memory).unwrap();
    assert_eq!(
        change_of(restore_in(&reopened, RestoreMode::Eager), &files.memory),
        FileChange::Removed
    );
    std::fs::copy(&backup, &files.memory).unwrap();

    // The state file is watched too.
    let reopened = Snapshot::open(&files).unwrap();
    replace_by_copy(&files.state);
    assert!(matches!(
        change_of(restore_in(&reopened, RestoreMode::Uffd), &files.state),
        FileChange::Replaced { .. }
    ));

    // The process survived all of it, and the files as they are now restore in every mode.
    let reopened = Snapshot::open(&files).unwrap();
    for mode in EVERY_MODE {
        check_run(&restore_and_run(&reopened, mode, false), &before);
    }
}

#[test]
fn an_oversized_state_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = snapshot_in(dir.path(), 0);
    let files = snapshot.files().clone();
    // Its first bytes are still a valid header; the rest is a 1 GiB hole.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files.state)
        .unwrap();
    f.set_len(1 << 30).unwrap();
    let started = std::time::Instant::now();
    match Snapshot::open(&files) {
        Err(Error::StateFileTooLarge { path, size, max }) => {
            assert_eq!(path, files.state);
            assert_eq!(size, 1 << 30);
            assert_eq!(max, nexus_snapshot::limits::MAX_STATE_FILE_SIZE);
        }
        other => panic!("expected StateFileTooLarge, got {other:?}"),
    }
    eprintln!("refused in {:?}", started.elapsed());
}

#[test]
fn saving_refuses_bad_vcpu_lists_and_duplicate_devices() {
    let dir = tempfile::tempdir().unwrap();
    let files = SnapshotFiles::in_dir(dir.path());
    let mut b = boot(&counter_elf(10, 4096), RAM, 0);
    let err = nexus_snapshot::save(&b.vm, &mut [], &[], &files).unwrap_err();
    assert!(matches!(err, Error::VcpuIds(_)), "{err}");
    let s = DeviceState::save(&*b.serial.lock().unwrap());
    let err = nexus_snapshot::save(
        &b.vm,
        std::slice::from_mut(&mut b.vcpu),
        &[s.clone(), s],
        &files,
    )
    .unwrap_err();
    assert!(matches!(err, Error::DuplicateDevice(_)), "{err}");
    assert!(!files.state.exists());
}
