// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One hostile VM cannot hurt its neighbours: each attack runs against a real backend process
//! while a well-behaved VM keeps reading an object (a 4 KiB GET every 2 ms). Each test asserts how the attacker was
//! contained, that the neighbour's requests all succeeded, that the backend spent less than
//! 0.5 s of CPU per 3 s beyond what the neighbour alone costs, and that its log grew by a few
//! lines at most.
//!
//! The tests run one at a time (their CPU figures would mix otherwise).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BackendProcess, Call, Control, GuestVm};
use nexus_ring::{Command, HttpMethod, LogLevel, Status};

const WINDOW: u64 = 16 << 20;
/// How long each phase (neighbour alone, neighbour beside the attacker) lasts.
const PHASE: Duration = Duration::from_secs(3);
/// The CPU the attack may add per phase.
const CPU_BUDGET: f64 = 0.5;
/// Log lines an attack may add.
const LOG_BUDGET: usize = 5;
/// The neighbour's pace: one GET per this (so that its own cost is small and steady).
const NEIGHBOUR_PERIOD: Duration = Duration::from_millis(2);

/// One test at a time: each measures its backend's CPU.
static SERIAL: Mutex<()> = Mutex::new(());

/// A backend with a neighbour VM reading `good/object` in a loop.
struct Bench {
    backend: BackendProcess,
    _neighbour_control: Control,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    neighbour: Option<std::thread::JoinHandle<()>>,
    /// Last: the backend's log is read from it when a test fails.
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
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let neighbour = {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    next += NEIGHBOUR_PERIOD;
                    if let Some(pause) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(pause);
                    }
                    let answer = vm.call(
                        &Call::new(Command::Get {
                            offset: 0,
                            max_len: 0,
                        })
                        .key(b"good/object")
                        .buffers(&[4096]),
                    );
                    if answer.header.status == Status::Ok && answer.payload == [7u8; 4096] {
                        served.fetch_add(1, Ordering::Relaxed);
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
            _dir: dir,
            backend,
            _neighbour_control: control,
            stop,
            served,
            failures,
            neighbour: Some(neighbour),
        }
    }

    /// The backend's CPU seconds over one phase in which `during` runs.
    fn phase(&self, during: impl FnOnce()) -> (f64, u64) {
        let cpu = self.backend.cpu_seconds();
        let served = self.served.load(Ordering::Relaxed);
        let start = Instant::now();
        during();
        if let Some(left) = PHASE.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
        (
            self.backend.cpu_seconds() - cpu,
            self.served.load(Ordering::Relaxed) - served,
        )
    }

    /// A second VM: the attacker, on a control connection of its own.
    fn attacker(&self, vm: &str) -> (Control, GuestVm) {
        let mut control = self.backend.connect();
        let guest = GuestVm::connect(control.attach(vm, "evil"), WINDOW);
        (control, guest)
    }

    /// Runs `attack` beside the neighbour and checks the attack stayed contained: the
    /// neighbour served throughout, CPU and log within budget. `attack` returns once it has
    /// checked how it was contained.
    fn contain(self, what: &str, attack: impl FnOnce(&Self)) {
        self.contain_within(what, LOG_BUDGET, attack);
    }

    /// [`contain`](Self::contain), allowing the log `log_budget` lines.
    fn contain_within(mut self, what: &str, log_budget: usize, attack: impl FnOnce(&Self)) {
        let (quiet_cpu, quiet_served) = self.phase(|| {});
        let log_before = self.backend.log_lines();
        let (attack_cpu, attack_served) = self.phase(|| attack(&self));
        let log_added = self.backend.log_lines() - log_before;
        self.stop.store(true, Ordering::Relaxed);
        self.neighbour.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        eprintln!(
            "{what}: backend CPU {quiet_cpu:.3} s quiet, {attack_cpu:.3} s under attack; \
             neighbour GETs {quiet_served} quiet, {attack_served} under attack; \
             log +{log_added} lines"
        );
        assert!(
            failures.is_empty(),
            "{what}: the neighbour failed: {failures:?}"
        );
        assert!(
            attack_served > 0,
            "{what}: the neighbour was not served during the attack"
        );
        assert!(
            attack_cpu - quiet_cpu < CPU_BUDGET,
            "{what}: the attack cost the backend {:.3} s of CPU beyond the neighbour's {quiet_cpu:.3} s",
            attack_cpu - quiet_cpu
        );
        assert!(
            log_added <= log_budget,
            "{what}: the log grew by {log_added} lines:\n{}",
            self.backend.log()
        );
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
/// naming the cause, and (after the guest's reset) serves it again.
fn expect_broken(control: &mut Control, vm: &mut GuestVm, cause: &str) {
    let event = control.next_event();
    assert_eq!(event["event"], "queue_broken", "{event}");
    assert_eq!(event["vm"], "evil", "{event}");
    let reason = event["reason"].as_str().unwrap_or_default();
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
}

/// A header + response head chain for descriptor `head` onward, laid out by hand.
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

#[test]
fn an_available_index_far_ahead_breaks_only_the_attackers_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("", "", |_| {});
    bench.contain("available index 300 ahead", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        vm.publish_raw(&[], 300);
        expect_broken(&mut control, &mut vm, "ahead");
    });
}

#[test]
fn a_descriptor_loop_breaks_only_the_attackers_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("", "", |_| {});
    bench.contain("descriptor loop", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        let (header, _) = flush_descriptors(&mut vm);
        // 0 → 1 → 0 → …
        vm.write_descriptor(0, header, 48, 1, 1);
        vm.write_descriptor(1, header, 48, 1, 0);
        vm.publish_raw(&[0], 0);
        expect_broken(&mut control, &mut vm, "links back");
    });
}

#[test]
fn an_indirect_descriptor_breaks_only_the_attackers_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("", "", |_| {});
    bench.contain("indirect descriptor", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        let (header, response) = flush_descriptors(&mut vm);
        // An indirect table of a well-formed FLUSH: refused all the same (not offered).
        let table = vm.alloc(32);
        vm.write_window(table, &descriptor(header, 48, 1, 1));
        vm.write_window(table + 16, &descriptor(response, 1064, 2, 0));
        vm.write_descriptor(0, table, 32, 4, 0);
        vm.publish_raw(&[0], 0);
        expect_broken(&mut control, &mut vm, "indirect");
    });
}

#[test]
fn a_head_out_of_range_and_an_overlong_chain_break_only_the_attackers_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("", "", |_| {});
    bench.contain("head out of range, chain too long", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        vm.publish_raw(&[4000], 0);
        expect_broken(&mut control, &mut vm, "4000");
        let (header, _) = flush_descriptors(&mut vm);
        for i in 0..64u16 {
            vm.write_descriptor(i, header, 48, 1, i + 1);
        }
        vm.publish_raw(&[0], 0);
        expect_broken(&mut control, &mut vm, "more than");
    });
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

#[test]
fn a_log_flood_is_throttled_and_costs_a_few_lines() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("log_records_per_second = 1\nlog_burst = 2\n", "", |_| {});
    // The attacker's attach, window, disconnect and detach (4 lines), at most four records
    // (burst and refill), and two drop summaries (the first drop, and the rest at detach).
    bench.contain_within("LOG flood", 10, |bench| {
        let (_control, mut vm) = bench.attacker("evil");
        let (mut ok, mut throttled) = (0, 0);
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
    });
}

#[test]
fn a_flood_of_empty_write_behind_puts_is_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("write_behind_requests = 8\n", "", |_| {});
    bench.contain("0-byte write-behind flood", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
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
        // Past its eight pending uploads, each PUT waited for its own fsync.
        assert!(most_pending <= 8, "{most_pending} uploads pending at once");
        let flush = vm.call(&Call::new(Command::Flush { timeout_ms: 0 }).response_meta(1024));
        assert_eq!(flush.header.status, Status::Ok);
        eprintln!("0-byte write-behind flood: {puts} PUTs, at most {most_pending} pending");
    });
}

#[test]
fn listing_a_large_tree_is_bounded_per_page_and_over_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const BUDGET: u64 = 5000;
    let limits = format!("list_scan_budget = {BUDGET}\nlist_scan_per_second = {BUDGET}\n");
    let bench = Bench::start(&limits, "", |objects| {
        for d in 0..20 {
            let dir = objects.join(format!("evil/tree/{d:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                std::fs::write(dir.join(format!("{f:04}")), b"").unwrap();
            }
        }
    });
    bench.contain("LIST over 20,000 objects", |bench| {
        let (_control, mut vm) = bench.attacker("evil");
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
        // A page looks at about the budget; over time no more than the budget a second (and
        // one page of burst).
        assert!(pages >= 2, "only {pages} pages");
        assert!(
            (listed as f64) <= BUDGET as f64 * (elapsed + 2.0),
            "{listed} entries listed in {elapsed:.1} s at {BUDGET} a second"
        );
        eprintln!("LIST: {pages} pages, {listed} entries in {elapsed:.1} s");
    });
}

#[test]
fn http_with_an_empty_allow_list_is_refused_before_the_body_is_copied() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start("", "", |_| {});
    bench.contain("HTTP, empty allow-list, 8 MiB bodies", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        let before = control.send(r#"{"op":"stats"}"#)["stats"]["bytes_out"]
            .as_u64()
            .unwrap();
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
        let after = control.send(r#"{"op":"stats"}"#)["stats"]["bytes_out"]
            .as_u64()
            .unwrap();
        assert_eq!(after, before, "no body byte was copied out of the window");
        eprintln!("HTTP to an empty allow-list: {calls} calls refused");
    });
}

#[test]
fn a_slow_endless_http_body_is_cut_at_the_backends_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A server that sends its headers, then one byte every 50 ms, forever.
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
    let bench = Bench::start(
        "",
        &format!("[http]\nallow = [\"http://127.0.0.1:{port}\"]\nmax_timeout_ms = 1000\n"),
        |_| {},
    );
    bench.contain("slow endless HTTP body", |bench| {
        let (_control, mut vm) = bench.attacker("evil");
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
            let took = start.elapsed();
            assert_eq!(
                answer.header.status,
                Status::Timeout,
                "{}",
                answer.meta_text()
            );
            assert!(took < Duration::from_secs(5), "the request lasted {took:?}");
        }
    });
}
