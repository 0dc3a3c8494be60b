//! I/O offload (nexus-io + nexus-backend): GET/PUT latency and throughput measured inside the
//! guest, against a host process reading and writing the same files; VM exits per request;
//! the backend's resident memory per attached VM.
//!
//! `cargo bench --bench io` prints three tables. Everything runs against a real
//! `nexus-backend` process over a local file store (`file://` in a temporary directory):
//!
//! 1. **Throughput.** For each object size, the `iobench` micro-guest runs in a VM in this
//!    process (`MicroVm` + `nexus_io::attach`, as `nexus-vmm run --backend` does) and times
//!    each GET (`get_into`, one reused window buffer) and PUT (`put_buf`, synchronous) with
//!    `rdtsc`; the TSC frequency is calibrated here against the host clock. Side by side, the
//!    host upper bound: `pread` of the same file into a reused buffer (page cache warm), and a
//!    PUT done as the file store does it (staging file, `write`, `fsync`, `rename`, directory
//!    `fsync`).
//! 2. **Exits per request.** The same guest with `ITERS` = N and `ITERS` = 0: the difference
//!    in user-space exits (`exit_counters`) and in all exits KVM counted (binary stats
//!    `exits`), divided by N. The guest reports its driver's counters (doorbells, WAIT reads).
//! 3. **Backend memory.** A fresh backend's `VmRSS` idle, then with 1, 10 and 50 real
//!    `nexus-vmm` processes attached, each running `iobench park` (one GET and one PUT of
//!    4 KiB, then idle in `NEXT` long-polls).
//!
//! No criterion timing here: the figures that matter are taken inside the guest. Under
//! `cargo test --benches` (no `--bench` argument) the benchmark does nothing.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_kvm::vcpu::ExitCounters;

/// Object sizes and timed iterations (GET, PUT) for each, per round.
const SIZES: &[(usize, u64, u64)] = &[
    (4 << 10, 200, 40),
    (64 << 10, 200, 30),
    (1 << 20, 50, 20),
    (16 << 20, 10, 6),
    (64 << 20, 5, 4),
];
/// Rounds of (guest, host) measurements, alternating which goes first: the machine's load
/// (and, for PUT, the file system's journal) changes over seconds.
const ROUNDS: usize = 5;
/// Timed iterations of the exit-counting runs.
const COUNT_ITERS: u64 = 100;
/// Attached VMs at which the backend's memory is read.
const VM_STEPS: &[usize] = &[1, 10, 50];
/// Guest RAM and I/O window of the in-process VMs (the window holds a 64 MiB object).
const RAM: u64 = 64 << 20;
const WINDOW: u64 = 96 << 20;

fn tsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per second, against the host's monotonic clock (median of five 100 ms spans).
fn tsc_hz() -> f64 {
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let (t0, c0) = (Instant::now(), tsc());
            std::thread::sleep(Duration::from_millis(100));
            let (c1, t1) = (tsc(), Instant::now());
            (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// A `nexus-backend` process, killed on drop.
struct Backend {
    child: Child,
    socket: PathBuf,
}

impl Backend {
    fn start(dir: &Path, store: &Path) -> Self {
        let socket = dir.join("backend.sock");
        let _ = std::fs::remove_file(&socket);
        let log = File::create(dir.join("backend.log")).unwrap();
        let binary = nexus::guests::workspace_binary("nexus-backend", "nexus-backend").unwrap();
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg(&socket)
            .arg("--store")
            .arg(format!("file://{}", store.display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nexus-backend starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nexus-backend exited with {status}");
            }
            assert!(Instant::now() < deadline, "nexus-backend did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child, socket }
    }

    /// `(VmRSS, RssAnon, RssFile, RssShmem, Threads)` in KiB (threads: a count).
    fn memory(&self) -> [u64; 5] {
        proc_status(self.child.id())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status(pid: u32) -> [u64; 5] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    [
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:"),
        field("Threads:"),
    ]
}

/// What one in-process VM run gave.
struct GuestRun {
    line: String,
    user: ExitCounters,
    kvm_exits: u64,
    /// The host's TSC just before `run` and just after.
    host_tsc: (u64, u64),
}

impl GuestRun {
    fn field(&self, name: &str) -> u64 {
        let prefix = format!("{name}=");
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.line))
    }

    /// Whether the guest's TSC readings fall between the host's: the same counter, no offset.
    fn same_clock(&self) -> bool {
        let (b, e) = (self.field("tsc_begin"), self.field("tsc_end"));
        self.host_tsc.0 <= b && b <= e && e <= self.host_tsc.1
    }
}

static VM_IDS: AtomicU64 = AtomicU64::new(0);

/// Runs `iobench ARGS` in a VM of this process, attached to `backend`.
fn run_guest(elf: &[u8], backend: &Backend, args: &[String]) -> GuestRun {
    let out = ConsoleBuffer::default();
    let mut vm = MicroVm::new(
        elf,
        MicroVmConfig {
            memory: MemoryConfig {
                ram_size: RAM,
                window_size: WINDOW,
            },
            args: args.to_vec(),
            device: Some(nexus_io::device_info()),
            net_device: None,
            console: Console::new(out.clone()),
        },
    )
    .unwrap();
    let device = nexus_io::NexusIo::new(nexus_io::NexusIoConfig {
        control_socket: backend.socket.clone(),
        vm_id: format!("bench-{}", VM_IDS.fetch_add(1, Ordering::Relaxed)),
        tenant: "default".into(),
        window: vm.vm().memory().window().cloned().unwrap(),
        irq: None,
    })
    .unwrap();
    let attached = nexus_io::attach(vm.vm(), device).unwrap();
    let stats = vm.vcpu().stats().unwrap();
    let k0 = stats.read("exits").unwrap().unwrap_or(0);
    let t0 = tsc();
    let code = vm.run();
    let t1 = tsc();
    let kvm_exits = stats.read("exits").unwrap().unwrap_or(0) - k0;
    drop(attached);
    let text = out.text();
    assert!(
        matches!(code, Ok(0)),
        "iobench {args:?} ended with {code:?}:\n{text}"
    );
    GuestRun {
        line: text.lines().last().unwrap_or_default().to_string(),
        user: vm.exit_counters(),
        kvm_exits,
        host_tsc: (t0, t1),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn object_name(size: usize) -> String {
    format!("obj-{size}")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn minimum(v: &[Duration]) -> Duration {
    v.iter().copied().min().unwrap_or_default()
}

/// Host upper bound for a GET: `pread` of the whole file into a reused, touched buffer.
fn host_get(path: &Path, size: usize, iters: u64) -> Vec<Duration> {
    let file = File::open(path).unwrap();
    let mut buf = vec![1u8; size];
    file.read_exact_at(&mut buf, 0).unwrap();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            file.read_exact_at(&mut buf, 0).unwrap();
            t.elapsed()
        })
        .collect()
}

/// Host equivalent of the file store's PUT: staging file, write, fsync, rename, fsync dir.
fn host_put(store: &Path, size: usize, iters: u64) -> Vec<Duration> {
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let staging = store.join(".host-staging");
    std::fs::create_dir_all(&staging).unwrap();
    let target = store.join(format!("host-put-{size}"));
    let once = |n: u64| {
        let temp = staging.join(format!("{size}-{n}"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .unwrap();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&temp, &target).unwrap();
        File::open(store).unwrap().sync_all().unwrap();
    };
    let first = PUT_FILES.fetch_add(iters + 1, Ordering::Relaxed);
    once(first);
    (first + 1..=first + iters)
        .map(|n| {
            let t = Instant::now();
            once(n);
            t.elapsed()
        })
        .collect()
}

/// Numbers the host PUTs' staging files.
static PUT_FILES: AtomicU64 = AtomicU64::new(0);

fn human_size(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

fn throughput(size: usize, d: Duration) -> String {
    let mib_s = size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    if mib_s >= 1024.0 {
        format!("{:.2} GiB/s", mib_s / 1024.0)
    } else {
        format!("{mib_s:.0} MiB/s")
    }
}

fn throughput_pass(elf: &[u8], backend: &Backend, store: &Path, hz: f64) {
    println!(
        "\nio: GET/PUT from the file store into the window, {ROUNDS} alternating rounds; guest times in the guest (rdtsc), host bound in this process"
    );
    println!(
        "  {:<7} {:<4} {:>6} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>7} {:>9}",
        "size",
        "op",
        "n",
        "guest med",
        "guest thru",
        "guest min",
        "host med",
        "host thru",
        "host min",
        "ratio",
        "WAIT/req"
    );
    let mut clock_ok = true;
    for &(size, get_iters, put_iters) in SIZES {
        for (op, iters) in [("get", get_iters), ("put", put_iters)] {
            let key = if op == "get" {
                object_name(size)
            } else {
                format!("put-{size}")
            };
            let guest_args = args(&[op, &key, &size.to_string(), &iters.to_string()]);
            let host_run = || {
                if op == "get" {
                    host_get(&store.join(&key), size, iters)
                } else {
                    host_put(store, size, iters)
                }
            };
            let cycles = |c: u64| Duration::from_secs_f64(c as f64 / hz);
            let (mut guest_medians, mut guest_mins, mut host) =
                (Vec::new(), Vec::new(), Vec::new());
            let mut wait_reads = 0;
            for round in 0..ROUNDS {
                if round % 2 == 1 {
                    host.extend(host_run());
                }
                let run = run_guest(elf, backend, &guest_args);
                clock_ok &= run.same_clock();
                guest_medians.push(cycles(run.field("cycles_median")));
                guest_mins.push(cycles(run.field("cycles_min")));
                wait_reads += run.field("wait_reads");
                if round % 2 == 0 {
                    host.extend(host_run());
                }
            }
            let guest = median(guest_medians);
            let host_med = median(host.clone());
            println!(
                "  {:<7} {:<4} {:>6} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>6.2}× {:>9.2}",
                human_size(size),
                op,
                format!("{ROUNDS}×{iters}"),
                fmt_time(guest),
                throughput(size, guest),
                fmt_time(minimum(&guest_mins)),
                fmt_time(host_med),
                throughput(size, host_med),
                fmt_time(minimum(&host)),
                guest.as_secs_f64() / host_med.as_secs_f64(),
                wait_reads as f64 / (iters as usize * ROUNDS) as f64,
            );
        }
    }
    println!(
        "  guest med: median of the {ROUNDS} rounds' medians; host med: median of all samples; ratio: guest med / host med"
    );
    println!(
        "  TSC {:.1} MHz (calibrated on the host); guest TSC readings inside the host's bracket in every run: {}",
        hz / 1e6,
        if clock_ok { "yes" } else { "NO" }
    );
}

fn exits_pass(elf: &[u8], backend: &Backend) {
    println!(
        "\nio: VM exits per request (runs with {COUNT_ITERS} and 0 timed requests, difference / {COUNT_ITERS})"
    );
    println!(
        "  {:<7} {:<4} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "size", "op", "user/req", "(mmio rd)", "KVM/req", "notify/req", "WAIT/req", "poll/req"
    );
    for (op, size) in [
        ("get", 4usize << 10),
        ("put", 4 << 10),
        ("get", 1 << 20),
        ("put", 1 << 20),
    ] {
        let key = if op == "get" {
            object_name(size)
        } else {
            format!("put-{size}")
        };
        let run = |iters: u64| {
            run_guest(
                elf,
                backend,
                &args(&[op, &key, &size.to_string(), &iters.to_string()]),
            )
        };
        let base = run(0);
        let full = run(COUNT_ITERS);
        let n = COUNT_ITERS as f64;
        let per = |a: u64, b: u64| (a as f64 - b as f64) / n;
        println!(
            "  {:<7} {:<4} {:>10.2} {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            human_size(size),
            op,
            per(full.user.total(), base.user.total()),
            per(full.user.mmio_read, base.user.mmio_read),
            per(full.kvm_exits, base.kvm_exits),
            full.field("notifies") as f64 / n,
            full.field("wait_reads") as f64 / n,
            full.field("polled") as f64 / n,
        );
        println!(
            "    totals with {COUNT_ITERS}: user {} (mmio rd {}, mmio wr {}, port wr {}), KVM {}; with 0: user {}, KVM {}",
            full.user.total(),
            full.user.mmio_read,
            full.user.mmio_write,
            full.user.port_write,
            full.kvm_exits,
            base.user.total(),
            base.kvm_exits
        );
    }
    let rd = |n: u64| run_guest(elf, backend, &args(&["rdtsc", &n.to_string()]));
    let (zero, many) = (rd(0), rd(1_000_000));
    println!(
        "  rdtsc: {:.4} KVM exits and {:.4} user-space exits per rdtsc (1,000,000 executed)",
        (many.kvm_exits as f64 - zero.kvm_exits as f64) / 1e6,
        (many.user.total() as f64 - zero.user.total() as f64) / 1e6
    );
}

/// `nexus-vmm` of this target directory and profile, built with cargo.
fn nexus_vmm() -> PathBuf {
    let (target, profile) = nexus::guests::target_profile();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let cargo_profile = if profile == "debug" { "dev" } else { &profile };
    let status = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", "nexus-vmm", "--profile"])
        .arg(cargo_profile)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success(), "building nexus-vmm failed");
    target.join(&profile).join("examples").join("nexus-vmm")
}

/// A parked `nexus-vmm` process, killed on drop.
struct Parked(Child);

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn memory_pass(guest: &Path, dir: &Path, store: &Path) {
    let vmm = nexus_vmm();
    let dir = dir.join("rss");
    std::fs::create_dir_all(&dir).unwrap();
    let backend = Backend::start(&dir, store);
    std::thread::sleep(Duration::from_millis(500));
    let idle = backend.memory();
    let (tx, rx) = mpsc::channel::<usize>();
    let mut parked: Vec<Parked> = Vec::new();
    let mut rows = vec![(0usize, idle)];
    let mut vmm_rss = Vec::new();
    for &step in VM_STEPS {
        let first = parked.len();
        for i in first..step {
            let mut child = Command::new(&vmm)
                .args(["run", "--guest"])
                .arg(guest)
                .arg("--backend")
                .arg(&backend.socket)
                .args(["--mem", "64", "--window", "8", "--vm-id"])
                .arg(format!("park-{i}"))
                .args(["--", "park", "obj-4096", "300"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line == "parked" {
                        let _ = tx.send(i);
                    }
                }
            });
            parked.push(Parked(child));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in first..step {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left)
                .expect("every parked VM reports within 60 s");
        }
        std::thread::sleep(Duration::from_millis(500));
        rows.push((step, backend.memory()));
        vmm_rss = parked.iter().map(|p| proc_status(p.0.id())[0]).collect();
    }
    drop(parked);
    std::thread::sleep(Duration::from_secs(1));
    let after = backend.memory();

    println!(
        "\nio: nexus-backend resident memory with parked VMs attached (real nexus-vmm processes)"
    );
    println!(
        "  {:>4} {:>10} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "VMs", "VmRSS", "RssAnon", "RssFile", "RssShmem", "threads", "VmRSS Δ/VM"
    );
    for (n, m) in &rows {
        let per = if *n == 0 {
            "-".to_string()
        } else {
            format!("{:.0} KiB", (m[0] as f64 - idle[0] as f64) / *n as f64)
        };
        println!(
            "  {:>4} {:>7} KiB {:>6} KiB {:>6} KiB {:>6} KiB {:>8} {:>14}",
            n, m[0], m[1], m[2], m[3], m[4], per
        );
    }
    let (n1, m1) = rows[rows.len() - 2];
    let (n2, m2) = rows[rows.len() - 1];
    println!(
        "  marginal {n1}→{n2} VMs: VmRSS {:.0} KiB/VM, RssAnon {:.0} KiB/VM, RssShmem {:.0} KiB/VM",
        (m2[0] as f64 - m1[0] as f64) / (n2 - n1) as f64,
        (m2[1] as f64 - m1[1] as f64) / (n2 - n1) as f64,
        (m2[3] as f64 - m1[3] as f64) / (n2 - n1) as f64
    );
    println!(
        "  after all VMs detached: VmRSS {} KiB (RssAnon {} KiB, RssShmem {} KiB, threads {})",
        after[0], after[1], after[3], after[4]
    );
    vmm_rss.sort();
    if let Some(m) = vmm_rss.get(vmm_rss.len() / 2) {
        println!("  each parked nexus-vmm process: VmRSS median {m} KiB (guest pages included)");
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("io: run with `cargo bench --bench io`");
        return;
    }
    let guest = nexus::guests::resolve("iobench").expect("the iobench guest builds");
    let elf = std::fs::read(&guest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    for &(size, _, _) in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(store.join(object_name(size)), data).unwrap();
    }
    let hz = tsc_hz();
    {
        let backend = Backend::start(dir.path(), &store);
        throughput_pass(&elf, &backend, &store, hz);
        exits_pass(&elf, &backend);
    }
    memory_pass(&guest, dir.path(), &store);
}
