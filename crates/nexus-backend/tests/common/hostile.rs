// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile neighbours: each [`Attack`] runs against a real backend process beside a
//! well-behaved VM that reads a 4 KiB object every 2 ms. [`Attack::run`] measures the two
//! phases (the neighbour alone, then beside the attacker): the backend's CPU time, the
//! neighbour's GETs and their latency, the log's growth, and how the attacker was contained.
//! The containment tests assert on the figures; the `hostile_neighbour` benchmark prints them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BackendProcess, Call, Control, GuestVm};
use nexus_ring::{Command, HttpMethod, LogLevel, Status};

const WINDOW: u64 = 16 << 20;
/// How long each phase (neighbour alone, neighbour beside the attacker) lasts.
pub const PHASE: Duration = Duration::from_secs(3);
/// The neighbour's pace: one GET per this (so that its own cost is small and steady).
const NEIGHBOUR_PERIOD: Duration = Duration::from_millis(2);

/// Every attack, in the order the benchmark reports them.
pub const ALL: [Attack; 9] = [
    Attack::AvailIndexAhead,
    Attack::DescriptorLoop,
    Attack::IndirectDescriptor,
    Attack::HeadOutOfRangeAndLongChain,
    Attack::LogFlood,
    Attack::EmptyWriteBehindFlood,
    Attack::ListLargeTree,
    Attack::HttpRefusedLargeBody,
    Attack::HttpSlowEndlessBody,
];

/// One attack of a hostile guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// An available index 300 ahead of the queue.
    AvailIndexAhead,
    /// A chain whose `next` loops back.
    DescriptorLoop,
    /// An indirect descriptor (not offered).
    IndirectDescriptor,
    /// A head out of range, then a chain of 64 descriptors.
    HeadOutOfRangeAndLongChain,
    /// LOG as fast as it can.
    LogFlood,
    /// 0-byte write-behind PUTs as fast as it can.
    EmptyWriteBehindFlood,
    /// LIST, page after page, of 20,000 objects.
    ListLargeTree,
    /// HTTP with 8 MiB bodies, the allow-list empty.
    HttpRefusedLargeBody,
    /// HTTP GETs of a body that drips forever.
    HttpSlowEndlessBody,
}

/// What one phase measured.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// The backend's CPU time, seconds.
    pub cpu: f64,
    /// The neighbour's GETs served.
    pub served: u64,
    /// Their latency (round trip as the neighbour sees it), sorted.
    pub latencies: Vec<Duration>,
    /// Bytes and lines the backend's log grew by.
    pub log_bytes: u64,
    /// Lines the backend's log grew by.
    pub log_lines: usize,
}

impl Phase {
    /// The `q` quantile of the neighbour's latency.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let at = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[at]
    }
}

/// The outcome of an attack beside the neighbour.
#[derive(Clone, Debug)]
pub struct Report {
    /// The neighbour alone.
    pub quiet: Phase,
    /// The neighbour beside the attacker.
    pub attack: Phase,
    /// How the attacker was contained, in words.
    pub contained: String,
    /// The neighbour's requests that failed (none, if contained).
    pub failures: Vec<String>,
    /// The backend's log, for a failing test.
    pub log: String,
}

impl Attack {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Attack::AvailIndexAhead => "available index 300 ahead",
            Attack::DescriptorLoop => "descriptor loop",
            Attack::IndirectDescriptor => "indirect descriptor",
            Attack::HeadOutOfRangeAndLongChain => "head out of range, then a 64-descriptor chain",
            Attack::LogFlood => "LOG flood",
            Attack::EmptyWriteBehindFlood => "0-byte write-behind PUT flood",
            Attack::ListLargeTree => "LIST over 20,000 objects, page after page",
            Attack::HttpRefusedLargeBody => "HTTP with 8 MiB bodies, empty allow-list",
            Attack::HttpSlowEndlessBody => "HTTP GET of a slow endless body",
        }
    }

    /// Log lines the attack may cost: the attacker's attach, window, disconnect and detach,
    /// and what the attack itself may log.
    pub fn log_budget(self) -> usize {
        match self {
            // Two breaks: the second is counted, not logged.
            Attack::AvailIndexAhead
            | Attack::DescriptorLoop
            | Attack::IndirectDescriptor
            | Attack::HeadOutOfRangeAndLongChain => 5,
            // At most four records (burst and refill) and two drop summaries.
            Attack::LogFlood => 10,
            _ => 5,
        }
    }

    /// Runs the attack beside the neighbour and measures both phases.
    pub fn run(self) -> Report {
        let bench = match self {
            Attack::LogFlood => {
                Bench::start("log_records_per_second = 1\nlog_burst = 2\n", "", |_| {})
            }
            Attack::EmptyWriteBehindFlood => {
                Bench::start("write_behind_requests = 8\n", "", |_| {})
            }
            Attack::ListLargeTree => Bench::start(
                &format!(
                    "list_scan_budget = {LIST_BUDGET}\nlist_scan_per_second = {LIST_BUDGET}\n"
                ),
                "",
                |objects| {
                    for d in 0..20 {
                        let dir = objects.join(format!("evil/tree/{d:02}"));
                        std::fs::create_dir_all(&dir).unwrap();
                        for f in 0..1000 {
                            std::fs::write(dir.join(format!("{f:04}")), b"").unwrap();
                        }
                    }
                },
            ),
            Attack::HttpSlowEndlessBody => {
                let port = drip_server();
                let bench = Bench::start(
                    "",
                    &format!(
                        "[http]\nallow = [\"http://127.0.0.1:{port}\"]\nmax_timeout_ms = 1000\n"
                    ),
                    |_| {},
                );
                *bench.drip_port.lock().unwrap() = port;
                bench
            }
            _ => Bench::start("", "", |_| {}),
        };
        bench.measure(|bench| self.attack(bench))
    }

    /// The attack itself, returning how it was contained (after checking it).
    fn attack(self, bench: &Bench) -> String {
        let (mut control, mut vm) = bench.attacker();
        match self {
            Attack::AvailIndexAhead => {
                vm.publish_raw(&[], 300);
                expect_broken(&mut control, &mut vm, "ahead")
            }
            Attack::DescriptorLoop => {
                let (header, _) = flush_descriptors(&mut vm);
                // 0 → 1 → 0 → …
                vm.write_descriptor(0, header, 48, 1, 1);
                vm.write_descriptor(1, header, 48, 1, 0);
                vm.publish_raw(&[0], 0);
                expect_broken(&mut control, &mut vm, "links back")
            }
            Attack::IndirectDescriptor => {
                let (header, response) = flush_descriptors(&mut vm);
                // An indirect table of a well-formed FLUSH: refused all the same.
                let table = vm.alloc(32);
                vm.write_window(table, &descriptor(header, 48, 1, 1));
                vm.write_window(table + 16, &descriptor(response, 1064, 2, 0));
                vm.write_descriptor(0, table, 32, 4, 0);
                vm.publish_raw(&[0], 0);
                expect_broken(&mut control, &mut vm, "indirect")
            }
            Attack::HeadOutOfRangeAndLongChain => {
                vm.publish_raw(&[4000], 0);
                let first = expect_broken(&mut control, &mut vm, "4000");
                let (header, _) = flush_descriptors(&mut vm);
                for i in 0..64u16 {
                    vm.write_descriptor(i, header, 48, 1, i + 1);
                }
                vm.publish_raw(&[0], 0);
                let second = expect_broken(&mut control, &mut vm, "more than");
                format!("{first}; then {second}")
            }
            Attack::LogFlood => {
                let (mut ok, mut throttled) = (0u64, 0u64);
                for_a_while(Duration::from_secs(2), || {
                    let answer = vm.call(
                        &Call::new(Command::Log {
                            level: LogLevel::Error,
                        })
                        .payload(&[b"forged\nERROR vm=good: \x1b[31mnot me\x1b[0m"])
                        .response_meta(64),
                    );
                    match answer.header.status {
                        Status::Ok => ok += 1,
                        Status::Throttled => throttled += 1,
                        other => panic!("LOG answered {other:?}"),
                    }
                });
                assert!(ok <= 4, "{ok} records let through");
                assert!(throttled > 100, "only {throttled} throttled");
                format!("throttled: {ok} records logged (escaped), {throttled} answered THROTTLED")
            }
            Attack::EmptyWriteBehindFlood => {
                let mut most_pending = 0;
                let mut n = 0u64;
                let puts = for_a_while(Duration::from_secs(2), || {
                    n += 1;
                    let key = format!("evil/wb/{n}");
                    let answer = vm.call(
                        &Call::new(Command::Put { write_behind: true })
                            .key(key.as_bytes())
                            .response_meta(1024),
                    );
                    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
                    if n % 64 == 0 {
                        let stats = control.send(r#"{"op":"stats"}"#);
                        most_pending =
                            most_pending.max(stats["stats"]["uploads_pending"].as_u64().unwrap());
                    }
                });
                // Past its eight pending uploads, each PUT waits for its own fsync, within
                // the VM's CPU share.
                assert!(most_pending <= 8, "{most_pending} uploads pending at once");
                let flush =
                    vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
                assert_eq!(flush.header.status, Status::Ok);
                format!("bounded and throttled: {puts} PUTs in 2 s, at most {most_pending} pending")
            }
            Attack::ListLargeTree => {
                let start = Instant::now();
                let mut token = Vec::new();
                let (mut pages, mut listed) = (0u64, 0u64);
                for_a_while(Duration::from_millis(2500), || {
                    let answer = vm.call(
                        &Call::new(Command::List { max_entries: 1000 })
                            .key(b"evil/")
                            .meta(&token)
                            .response_meta(1024)
                            .buffers(&[1 << 20]),
                    );
                    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
                    listed += nexus_ring::records::EntryList::decode(&answer.payload)
                        .unwrap()
                        .len() as u64;
                    pages += 1;
                    token = answer.meta.clone();
                });
                let elapsed = start.elapsed().as_secs_f64();
                assert!(pages >= 2, "only {pages} pages");
                assert!(
                    (listed as f64) <= LIST_BUDGET as f64 * (elapsed + 2.0),
                    "{listed} entries listed in {elapsed:.1} s at {LIST_BUDGET} a second"
                );
                format!("paced: {pages} pages, {listed} entries in {elapsed:.1} s")
            }
            Attack::HttpRefusedLargeBody => {
                let stats = |control: &mut Control| {
                    control.send(r#"{"op":"stats"}"#)["stats"]["bytes_out"]
                        .as_u64()
                        .unwrap()
                };
                let before = stats(&mut control);
                let body = vec![0x41u8; 8 << 20];
                let calls = for_a_while(Duration::from_secs(2), || {
                    let answer = vm.call(
                        &Call::new(Command::Http {
                            method: HttpMethod::Post,
                            timeout_ms: 0,
                        })
                        .key(b"http://169.254.169.254/latest/meta-data/")
                        .payload(&[&body])
                        .response_meta(1024)
                        .buffers(&[4096]),
                    );
                    assert_eq!(
                        answer.header.status,
                        Status::PermissionDenied,
                        "{}",
                        answer.meta_text()
                    );
                });
                assert_eq!(stats(&mut control), before, "a body byte was copied");
                format!("refused: {calls} calls PERMISSION_DENIED, no body byte copied")
            }
            Attack::HttpSlowEndlessBody => {
                let port = *bench.drip_port.lock().unwrap();
                let mut took = Vec::new();
                for _ in 0..2 {
                    let start = Instant::now();
                    let answer = vm.call(
                        &Call::new(Command::Http {
                            method: HttpMethod::Get,
                            // The guest asks for a minute; the backend allows a second.
                            timeout_ms: 60_000,
                        })
                        .key(format!("http://127.0.0.1:{port}/drip").as_bytes())
                        .response_meta(1024)
                        .buffers(&[1 << 20]),
                    );
                    assert_eq!(
                        answer.header.status,
                        Status::Timeout,
                        "{}",
                        answer.meta_text()
                    );
                    took.push(start.elapsed());
                    assert!(took.last().unwrap() < &Duration::from_secs(5));
                }
                format!("cut at the backend's 1 s deadline: TIMEOUT after {took:.1?}")
            }
        }
    }
}

const LIST_BUDGET: u64 = 5000;

/// A backend with a neighbour VM reading `good/object` in a loop.
struct Bench {
    backend: BackendProcess,
    _neighbour_control: Control,
    stop: Arc<AtomicBool>,
    /// The neighbour's served GETs' latencies, per phase (0: quiet, 1: attack).
    latencies: Arc<Mutex<[Vec<Duration>; 2]>>,
    phase: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    neighbour: Option<std::thread::JoinHandle<()>>,
    drip_port: Mutex<u16>,
    /// Last: the backend's log is read from it.
    _dir: tempfile::TempDir,
}

impl Bench {
    /// A backend with tenants `good` (the neighbour's) and `evil` (the attacker's, its limits
    /// `evil_limits` — and a CPU share of 50 ms a second, as a host that takes in tenants it
    /// does not trust would set), `config` added to its configuration file; `prepare` fills
    /// the store first.
    fn start(evil_limits: &str, config: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        std::fs::create_dir_all(objects.join("good")).unwrap();
        std::fs::write(objects.join("good/object"), vec![7u8; 4096]).unwrap();
        prepare(&objects);
        let file = dir.path().join("backend.toml");
        std::fs::write(
            &file,
            format!(
                "{config}\n[tenants.good]\nprefix = \"good\"\n\n[tenants.evil]\nprefix = \"evil\"\n\n\
                 [tenants.evil.limits]\ncpu_millis_per_second = 50\n{evil_limits}"
            ),
        )
        .unwrap();
        let args = vec![
            "--config".to_owned(),
            file.display().to_string(),
            "--store".to_owned(),
            format!("file://{}", objects.display()),
        ];
        let backend = BackendProcess::start(
            dir.path(),
            &args,
            &[(
                "RUST_LOG",
                std::env::var("CONTAINMENT_LOG").unwrap_or_else(|_| "info".into()),
            )],
        );
        let mut control = backend.connect();
        let mut vm = GuestVm::connect(control.attach("good", "good"), WINDOW);
        let stop = Arc::new(AtomicBool::new(false));
        let latencies: Arc<Mutex<[Vec<Duration>; 2]>> = Arc::default();
        let phase = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let neighbour = {
            let (stop, latencies, phase, failures) = (
                stop.clone(),
                latencies.clone(),
                phase.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    next += NEIGHBOUR_PERIOD;
                    if let Some(pause) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(pause);
                    }
                    let start = Instant::now();
                    let answer = vm.call(
                        &Call::new(Command::Get {
                            offset: 0,
                            max_len: 0,
                        })
                        .key(b"good/object")
                        .buffers(&[4096]),
                    );
                    let took = start.elapsed();
                    if answer.header.status == Status::Ok && answer.payload == [7u8; 4096] {
                        let at = phase.load(Ordering::Relaxed);
                        if let Some(list) = latencies.lock().unwrap().get_mut(at) {
                            list.push(took);
                        }
                    } else {
                        failures.lock().unwrap().push(format!(
                            "{:?}: {}",
                            answer.header.status,
                            answer.meta_text()
                        ));
                    }
                }
            })
        };
        Self {
            backend,
            _neighbour_control: control,
            stop,
            latencies,
            phase,
            failures,
            neighbour: Some(neighbour),
            drip_port: Mutex::new(0),
            _dir: dir,
        }
    }

    /// One phase (index `at`) in which `during` runs.
    fn phase(&self, at: usize, during: impl FnOnce() -> String) -> (Phase, String) {
        let log = self.backend.log();
        let cpu = self.backend.cpu_seconds();
        self.phase.store(at, Ordering::Relaxed);
        let start = Instant::now();
        let contained = during();
        if let Some(left) = PHASE.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
        self.phase.store(usize::MAX, Ordering::Relaxed);
        let cpu = self.backend.cpu_seconds() - cpu;
        let grown = self.backend.log();
        let mut latencies = std::mem::take(&mut self.latencies.lock().unwrap()[at]);
        latencies.sort();
        let phase = Phase {
            cpu,
            served: latencies.len() as u64,
            latencies,
            log_bytes: grown.len().saturating_sub(log.len()) as u64,
            log_lines: grown.lines().count().saturating_sub(log.lines().count()),
        };
        (phase, contained)
    }

    /// The attacker: a second VM, of tenant `evil`, on a control connection of its own.
    fn attacker(&self) -> (Control, GuestVm) {
        let mut control = self.backend.connect();
        let guest = GuestVm::connect(control.attach("evil", "evil"), WINDOW);
        (control, guest)
    }

    /// Both phases: the neighbour alone, then beside `attack`.
    fn measure(mut self, attack: impl FnOnce(&Self) -> String) -> Report {
        let (quiet, _) = self.phase(0, String::new);
        let (attack, contained) = self.phase(1, || attack(&self));
        self.stop.store(true, Ordering::Relaxed);
        self.neighbour.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        Report {
            quiet,
            attack,
            contained,
            failures,
            log: self.backend.log(),
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(neighbour) = self.neighbour.take() {
            let _ = neighbour.join();
        }
    }
}

/// The attacker's queue is broken: the backend said so on the attacker's control connection,
/// naming the cause, and (after the guest's reset) serves it again. Returns what happened.
fn expect_broken(control: &mut Control, vm: &mut GuestVm, cause: &str) -> String {
    let event = control.next_event();
    assert_eq!(event["event"], "queue_broken", "{event}");
    assert_eq!(event["vm"], "evil", "{event}");
    let reason = event["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains(cause), "reason {reason:?} lacks {cause:?}");
    // However often the guest rings now, nothing is served.
    for _ in 0..10_000 {
        vm.kick();
    }
    std::thread::sleep(Duration::from_millis(200));
    vm.reset_ring();
    let answer = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
    assert_eq!(
        answer.header.status,
        Status::Ok,
        "served again after the reset"
    );
    format!("queue broken ({reason}), 10,000 kicks ignored, served again after a reset")
}

/// A FLUSH header and response head in the window; their addresses.
fn flush_descriptors(vm: &mut GuestVm) -> (u64, u64) {
    let header = vm.alloc(48);
    let layout = nexus_ring::RequestLayout {
        header,
        key: None,
        meta: None,
        payload: &[],
        response_head: nexus_ring::SegmentRef::new(vm.alloc(1064), 1064),
        response_payload: &[],
    };
    let bytes = layout
        .header(1, Command::Flush { timeout_ms: 0 })
        .unwrap()
        .to_bytes()
        .unwrap();
    vm.write_window(header, &bytes);
    (header, layout.response_head.addr)
}

/// A raw 16-byte descriptor.
fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    raw
}

/// Runs `step` again and again for `span`; how many times.
fn for_a_while(span: Duration, mut step: impl FnMut()) -> u64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < span {
        step();
        n += 1;
    }
    n
}

/// A server that sends its headers, then one byte every 50 ms, forever; its port.
fn drip_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                while stream.write_all(b".").is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    port
}
