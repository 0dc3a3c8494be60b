//! Restore latency per mode, for 64 MiB and 512 MiB guests (needs `/dev/kvm`).
//!
//! The guest (the pausing micro-guest of the tests) dirties a quarter of its RAM, writes the
//! PAUSE port, and is snapshotted there. Each restore then runs it to its exit: its first
//! instruction after the restore writes the MARK port (restore-to-first-instruction), then it
//! reads every fourth page of what it dirtied (1/16 of RAM: its "working set") and exits
//! (restore-to-exit). Criterion measures restore-to-exit; a table of medians of both, with
//! pages faulted through userfaultfd per restore, is printed at the end.
//!
//! Each is measured with the snapshot's files in the page cache (`warm`) and with them evicted
//! before every restore (`cold`, `posix_fadvise(DONTNEED)`; the times then include
//! `Snapshot::open`).
//!
//! `cargo bench -p nexus-snapshot --bench restore`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use nexus_kvm::VcpuStop;
use nexus_snapshot::{RestoreMode, SaveReport, Snapshot, SnapshotFiles};

/// The modes measured: name, mode, and whether to wait for the working set's prefetch before
/// the vCPU runs (`prefetch_wait`: how prefetch restores worked before the prefetch moved to
/// the background).
const MODES: [(&str, RestoreMode, bool); 5] = [
    ("eager", RestoreMode::Eager, false),
    ("lazy", RestoreMode::Lazy, false),
    ("uffd", RestoreMode::Uffd, false),
    ("prefetch_wait", RestoreMode::Prefetch, true),
    ("prefetch", RestoreMode::Prefetch, false),
];

/// Saves timed per guest size.
const SAVES: usize = 15;

#[derive(Default)]
struct Samples {
    first: Vec<Duration>,
    exit: Vec<Duration>,
    memory_phase: Vec<Duration>,
    faults: Vec<u64>,
    host_faults: Vec<u64>,
    prefetched: u64,
    first_pages: u64,
    /// Pages the background prefetch had installed, and found present, at the guest's exit.
    prefetch_installed: Vec<u64>,
    prefetch_present: Vec<u64>,
    bytes_read: Vec<u64>,
}

/// Page faults the whole process has taken so far (minor + major), from getrusage(2): the
/// faults the kernel serves itself — for a lazy restore, every guest page touched through the
/// `MAP_PRIVATE` mapping — which userfaultfd's count does not see.
fn process_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer, which is valid and aligned.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: getrusage succeeded, so it initialised the struct (it was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    (usage.ru_minflt + usage.ru_majflt) as u64
}

/// Evicts the snapshot's files from the page cache (they are clean: synced after saving).
fn evict(files: &SnapshotFiles) {
    for path in [&files.state, &files.memory, &files.working_set] {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: posix_fadvise only takes a descriptor we own and plain integers.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "posix_fadvise failed");
    }
}

fn sync(files: &SnapshotFiles) {
    for path in [&files.state, &files.memory, &files.working_set] {
        std::fs::File::open(path).unwrap().sync_all().unwrap();
    }
}

fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Medians of saving the stopped guest.
struct SaveTimes {
    /// Into a new directory (files that do not exist yet), without and with `fsync`.
    fresh: Duration,
    fresh_fsync: Duration,
    /// Over the files of the previous save, without and with `fsync`.
    replacing: Duration,
    replacing_fsync: Duration,
    report: SaveReport,
}

/// Saves the stopped guest `SAVES` times each way (see [`SaveTimes`]); `fsync` is of the
/// memory and state files.
fn time_saves(booted: &mut Booted, dir: &std::path::Path) -> SaveTimes {
    let mut times: [Vec<Duration>; 4] = Default::default();
    let mut report = None;
    for i in 0..SAVES {
        for (k, fsync) in [false, true].into_iter().enumerate() {
            // Fresh: a new directory, removed afterwards (not timed).
            let fresh = SnapshotFiles::in_dir(dir.join(format!("fresh-{i}-{k}")));
            // Replacing: the same files every time.
            let replaced = SnapshotFiles::in_dir(dir.join(format!("replaced-{k}")));
            for (j, files) in [fresh, replaced].iter().enumerate() {
                let t = Instant::now();
                let r = save(booted, files);
                if fsync {
                    for path in [&files.memory, &files.state] {
                        std::fs::File::open(path).unwrap().sync_all().unwrap();
                    }
                }
                times[2 * j + k].push(t.elapsed());
                report = Some(r);
            }
            std::fs::remove_dir_all(dir.join(format!("fresh-{i}-{k}"))).unwrap();
        }
    }
    SaveTimes {
        fresh: median(&times[0]),
        fresh_fsync: median(&times[1]),
        replacing: median(&times[2]),
        replacing_fsync: median(&times[3]),
        report: report.unwrap(),
    }
}

fn restore(c: &mut Criterion) {
    let samples: Mutex<BTreeMap<(u64, &str, &str), Samples>> = Mutex::default();
    let mut sizes = Vec::new();
    for ram_mib in [64u64, 512] {
        let ram = ram_mib << 20;
        let (dirty, stride) = (ram / 4, 4 * 4096);
        let dir = tempfile::tempdir().unwrap();
        let mut booted = boot(&pause_elf(dirty, stride), ram, 0);
        assert_eq!(booted.vcpu.run().unwrap(), VcpuStop::Exit(PAUSE_CODE_EXIT));
        let files = SnapshotFiles::in_dir(dir.path());
        let report = save(&mut booted, &files);
        let saves = time_saves(&mut booted, dir.path());
        drop(booted);
        let snapshot = Snapshot::open(&files).unwrap();
        let ws = restore_and_run(&snapshot, RestoreMode::Uffd, true)
            .recorded
            .unwrap();
        sizes.push((ram_mib, report, ws, saves));

        sync(&files);
        for cold in [false, true] {
            let temperature = if cold { "cold" } else { "warm" };
            let mut group = c.benchmark_group(format!("restore_{ram_mib}MiB_{temperature}"));
            group
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
            for (name, mode, wait) in MODES {
                group.bench_function(BenchmarkId::new("to_exit", name), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (snapshot, open) = if cold {
                                evict(&files);
                                let t = Instant::now();
                                (Snapshot::open(&files).unwrap(), t.elapsed())
                            } else {
                                (snapshot.clone(), Duration::ZERO)
                            };
                            let faults_before = process_faults();
                            let r = restore_and_run_with(&snapshot, mode, false, wait);
                            let host_faults = process_faults() - faults_before;
                            assert_eq!(r.code, pause_expected(dirty, stride));
                            total += open + r.to_exit;
                            let mut all = samples.lock().unwrap();
                            let s = all.entry((ram_mib, temperature, name)).or_default();
                            s.first.push(open + r.first_instruction.unwrap());
                            s.exit.push(open + r.to_exit);
                            s.memory_phase.push(r.stats.memory);
                            s.faults.push(r.faults.pages_faulted);
                            s.host_faults.push(host_faults);
                            s.bytes_read.push(r.stats.bytes_read);
                            s.prefetched = r.stats.prefetched_pages;
                            s.first_pages = r.stats.first_pages;
                            if let Some(p) = &r.prefetch {
                                s.prefetch_installed.push(p.installed_pages);
                                s.prefetch_present.push(p.present_pages);
                            }
                            drop(r);
                        }
                        total
                    })
                });
            }
            group.finish();
        }
    }

    println!(
        "\n| guest | page cache | mode | restore → first instruction | restore → exit | memory phase | pages faulted (uffd) | host page faults (getrusage) | working-set pages (+ first pages installed before the run) | prefetch installed / found present at exit | bytes read before run | samples |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((ram_mib, temperature, mode), s) in samples.lock().unwrap().iter() {
        println!(
            "| {ram_mib} MiB | {temperature} | {mode} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {} (+{}) | {} | {:.1} MiB | {} |",
            median(&s.first).as_secs_f64() * 1e3,
            median(&s.exit).as_secs_f64() * 1e3,
            median(&s.memory_phase).as_secs_f64() * 1e3,
            median(&s.faults),
            median(&s.host_faults),
            s.prefetched,
            s.first_pages,
            if s.prefetch_installed.is_empty() {
                "—".to_string()
            } else {
                format!(
                    "{} / {}",
                    median(&s.prefetch_installed),
                    median(&s.prefetch_present)
                )
            },
            median(&s.bytes_read) as f64 / f64::from(1 << 20),
            s.exit.len()
        );
    }
    for (ram_mib, report, ws, saves) in sizes {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{ram_mib} MiB guest: {} pages stored ({} scanned), first save {:.2} ms; working set {} pages ({} zero), {} KiB file",
            report.nonzero_pages,
            saves.report.pages_scanned,
            ms(report.total),
            ws.data_pages + ws.zero_pages,
            ws.zero_pages,
            ws.file_size / 1024
        );
        println!(
            "{ram_mib} MiB guest saves (medians of {SAVES}): new files {:.2} ms, + fsync {:.2} ms; replacing files {:.2} ms, + fsync {:.2} ms; memory phase {:.2} ms",
            ms(saves.fresh),
            ms(saves.fresh_fsync),
            ms(saves.replacing),
            ms(saves.replacing_fsync),
            ms(saves.report.memory),
        );
    }
}

criterion_group!(benches, restore);
criterion_main!(benches);
