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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BackendProcess, Call, Control, GuestVm};
use nexus_ring::{Command, Status};

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
    _dir: tempfile::TempDir,
    backend: BackendProcess,
    _neighbour_control: Control,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    neighbour: Option<std::thread::JoinHandle<()>>,
}

impl Bench {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        std::fs::create_dir_all(objects.join("good")).unwrap();
        std::fs::write(objects.join("good/object"), vec![7u8; 4096]).unwrap();
        let mut args = vec![
            "--store".to_owned(),
            format!("file://{}", objects.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let backend = BackendProcess::start(dir.path(), &args, &[("RUST_LOG", "info".into())]);
        let mut control = backend.connect();
        let mut vm = GuestVm::connect(control.attach("good", "default"), WINDOW);
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
        let guest = GuestVm::connect(control.attach(vm, "default"), WINDOW);
        (control, guest)
    }

    /// Runs `attack` beside the neighbour and checks the attack stayed contained: the
    /// neighbour served throughout, CPU and log within budget. `attack` returns once it has
    /// checked how it was contained.
    fn contain(mut self, what: &str, attack: impl FnOnce(&Self)) {
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
            log_added <= LOG_BUDGET,
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
    let bench = Bench::start(&[]);
    bench.contain("available index 300 ahead", |bench| {
        let (mut control, mut vm) = bench.attacker("evil");
        vm.publish_raw(&[], 300);
        expect_broken(&mut control, &mut vm, "ahead");
    });
}

#[test]
fn a_descriptor_loop_breaks_only_the_attackers_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bench = Bench::start(&[]);
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
    let bench = Bench::start(&[]);
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
    let bench = Bench::start(&[]);
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
