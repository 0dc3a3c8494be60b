//! A panic is one VM's problem: a panic injected (test-only `NEXUS_TEST_PANIC`) in a vCPU's
//! MMIO handling, in the node's handling of an invocation, or in the shared backend's serving
//! of a VM's request fails that function's invocation with a clear error and discards its VM,
//! is counted in `/metrics`, and the node — real `nexus-vmm serve` over a real
//! `nexus-backend` — goes on serving the neighbouring function, before and after. A panic in
//! a VM's reset stops that VM only, and one in the keep-alive reaper does not end keep-alive.

mod common;

use common::daemon::{Daemon, function, sample_text};
use common::{Backend, store_url};
use serde_json::{Value, json};

/// The function the hook names, and its input (its answer is "50\n").
const VICTIM: &str = "wordcount";
/// The neighbour: `faulty` echoes its input.
const NEIGHBOUR: &str = "faulty";

struct PanicNode {
    _dir: tempfile::TempDir,
    backend: Backend,
    daemon: Daemon,
}

/// A node serving [`VICTIM`] and [`NEIGHBOUR`], with `NEXUS_TEST_PANIC=<hook>` given to the
/// node daemon (`on_backend` false) or to the backend.
fn panic_node(hook: &str, on_backend: bool) -> PanicNode {
    let functions = [
        (VICTIM, function("wordcount", "timeout_ms = 20000")),
        (NEIGHBOUR, function("faulty", "timeout_ms = 20000")),
    ];
    hooked_node(&functions, hook, on_backend)
}

/// A node serving `functions` over a store holding `inputs/words.txt` (50 words), with
/// `NEXUS_TEST_PANIC=<hook>` given to the daemon (`on_backend` false) or to the backend.
fn hooked_node(functions: &[(&str, String)], hook: &str, on_backend: bool) -> PanicNode {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("inputs")).unwrap();
    std::fs::write(store.join("inputs/words.txt"), sample_text(50)).unwrap();
    let backend_env = [("NEXUS_TEST_PANIC", hook.to_owned())];
    let backend = Backend::start_with_env(
        dir.path(),
        vec!["--store".into(), store_url(&store)],
        if on_backend { &backend_env } else { &[] },
    );
    let daemon_env = [("NEXUS_TEST_PANIC", hook)];
    let daemon = Daemon::start_with_env(
        dir.path(),
        &backend,
        functions,
        &[],
        if on_backend { &[] } else { &daemon_env },
    );
    PanicNode {
        _dir: dir,
        backend,
        daemon,
    }
}

/// Idle (parked) VMs of the victim, from `/metrics`.
fn victim_idle_vms(d: &Daemon) -> f64 {
    d.metric(&format!(
        "nexus_vms{{function=\"{VICTIM}\",state=\"idle\"}}"
    ))
}

/// Invokes the neighbour `n` times: each invocation is warm, on the VM `vm` it had.
fn neighbour_stays_on(d: &Daemon, n: usize, what: &str, vm: &Value) {
    for r in neighbour_serves(d, n, what) {
        assert_eq!((&r["start"], &r["vm"]), (&json!("warm"), vm), "{r}");
    }
}

/// Invokes the neighbour `n` times: every invocation succeeds.
fn neighbour_serves(d: &Daemon, n: usize, what: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let input = format!("{what} {i}");
            let (status, r) = d.invoke(NEIGHBOUR, &json!({ "input": input }));
            assert_eq!(status, 200, "{what}: {r}\n{}", d.log());
            assert_eq!(r["output"].as_str(), Some(input.as_str()), "{r}");
            r
        })
        .collect()
}

/// The victim's invocation fails with `status` and `error`, its message naming a panic.
fn victim_fails(d: &Daemon, status: u16, error: &str) -> Value {
    let (got, r) = d.invoke(VICTIM, &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(
        (got, r["error"].as_str()),
        (status, Some(error)),
        "{r}\n{}",
        d.log()
    );
    assert!(
        r["message"].as_str().unwrap_or("").contains("panicked"),
        "the error names a panic: {r}"
    );
    r
}

/// What every hook location shares: the neighbour before and after, the victim failing twice
/// (each time on a fresh VM: the hook stays set, and a VM a panic touched is never parked
/// again), the count in `/metrics`, and the processes alive.
fn a_panic_fails_one_function_only(hook: &str, on_backend: bool, status: u16, error: &str) {
    let n = panic_node(hook, on_backend);
    let d = &n.daemon;
    let site = hook.split(':').next().unwrap();
    let panics = format!("nexus_panics_total{{where=\"{site}\"}}");

    let before = neighbour_serves(d, 2, "before");
    assert_eq!(before[1]["start"], "warm");
    let neighbour_vm = before[0]["vm"].clone();
    assert_eq!(d.metric(&panics), 0.0);

    victim_fails(d, status, error);
    assert_eq!(d.metric(&panics), 1.0, "{}", d.metric_text());
    assert_eq!(
        victim_idle_vms(d),
        0.0,
        "the VM the panic touched is not parked\n{}",
        d.metric_text()
    );

    // The neighbour goes on, warm, on the VM it had.
    neighbour_stays_on(d, 3, "after", &neighbour_vm);

    // A later invocation of the victim gets a fresh VM, and the hook, still set, fails it
    // the same way: the node is not wedged.
    victim_fails(d, status, error);
    assert_eq!(d.metric(&panics), 2.0, "{}", d.metric_text());
    neighbour_serves(d, 1, "last");

    if site == "invocation" {
        // Both VMs the panics caught with an invocation in hand were stopped as such.
        let stops = format!("nexus_vm_stops_total{{function=\"{VICTIM}\",reason=\"panic\"}}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while d.metric(&stops) < 2.0 {
            assert!(std::time::Instant::now() < deadline, "{}", d.metric_text());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    let (status, health) = d.json("GET", "/healthz", "");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    assert_eq!(d.metric("nexus_backend_up"), 1.0, "the backend is alive");
    // The panic's message reached the log of the process that panicked.
    let log = if on_backend { n.backend.log() } else { d.log() };
    assert!(log.contains("test hook NEXUS_TEST_PANIC"), "{log}");
}

#[test]
fn a_panic_in_a_vcpus_mmio_handling_fails_that_vm_only() {
    a_panic_fails_one_function_only(&format!("vcpu:{VICTIM}"), false, 502, "FunctionCrashed");
}

#[test]
fn a_panic_handling_an_invocation_fails_that_invocation_only() {
    a_panic_fails_one_function_only(&format!("invocation:{VICTIM}"), false, 500, "NodePanic");
}

#[test]
fn a_panic_in_the_backend_fails_that_vm_only() {
    a_panic_fails_one_function_only(&format!("backend:{VICTIM}"), true, 502, "BackendError");
}

/// A panic in a VM's reset after its answer (`isolation = "reset"`): the invocation was
/// answered already and stands; the VM is stopped, not parked half reset; the next
/// invocation — which waited for that VM's reset, the function being capped at one VM —
/// gets a fresh one rather than waiting for ever; the neighbour is untouched.
#[test]
fn a_panic_in_a_reset_stops_that_vm_only() {
    let victim = "guest = \"wordcount\"\nmemory_mib = 32\nwindow_mib = 16\n\
                  isolation = \"reset\"\n\n[limits]\nmax_vms = 1\ntimeout_ms = 20000\n";
    let functions = [
        (VICTIM, victim.to_owned()),
        (NEIGHBOUR, function("faulty", "timeout_ms = 20000")),
    ];
    let n = hooked_node(&functions, &format!("reset:{VICTIM}"), false);
    let d = &n.daemon;
    let panics = "nexus_panics_total{where=\"reset\"}";
    let before = neighbour_serves(d, 2, "before");
    let neighbour_vm = before[1]["vm"].clone();

    let mut vms = Vec::new();
    for i in 1..=3 {
        let (status, r) = d.invoke(VICTIM, &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "invocation {i}: {r}\n{}", d.log());
        assert_eq!(r["output"], "50\n", "{r}");
        // Every VM's reset panicked: none is ever reused.
        assert_eq!(r["start"], "cold", "invocation {i}: {r}");
        vms.push(r["vm"].clone());
        // The count follows the reset, which runs after the answer.
        metric_reaches(d, panics, i as f64);
    }
    vms.dedup();
    assert_eq!(vms.len(), 3, "a fresh VM each time: {vms:?}");
    assert_eq!(victim_idle_vms(d), 0.0, "{}", d.metric_text());
    neighbour_stays_on(d, 2, "after", &neighbour_vm);
    assert!(
        d.log()
            .contains("test hook NEXUS_TEST_PANIC: a panic in the reset"),
        "{}",
        d.log()
    );
}

/// Waits up to 20 s until `series` in the node's metrics reaches `at_least`.
fn metric_reaches(d: &Daemon, series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.metric(series) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stays below {at_least}:\n{}\n{}",
            d.metric_text(),
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A panic in the keep-alive reaper (the test-only hook panics in its tick when it reaps one
/// of the victim's VMs) is counted, and the reaper goes on: a neighbour's VM parked after the
/// panic is still reaped at its keep-alive (a reaper ended by the panic would keep it for
/// ever), and the victim's function still serves.
#[test]
fn a_panic_in_the_reaper_does_not_end_keep_alive() {
    let functions = [
        (
            VICTIM,
            function("wordcount", "keep_alive_s = 1\ntimeout_ms = 20000"),
        ),
        (
            NEIGHBOUR,
            function("faulty", "keep_alive_s = 1\ntimeout_ms = 20000"),
        ),
    ];
    let n = hooked_node(&functions, &format!("background:{VICTIM}"), false);
    let d = &n.daemon;
    let (status, r) = d.invoke(VICTIM, &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(status, 200, "{r}\n{}", d.log());
    assert_eq!(r["output"], "50\n", "{r}");
    // Its VM parks; a second later the reaper takes it, and panics.
    metric_reaches(d, "nexus_panics_total{where=\"background\"}", 1.0);
    assert!(
        d.log()
            .contains("test hook NEXUS_TEST_PANIC: a panic in the reaper"),
        "{}",
        d.log()
    );

    let idle_stops = format!("nexus_vm_stops_total{{function=\"{NEIGHBOUR}\",reason=\"idle\"}}");
    assert_eq!(d.metric(&idle_stops), 0.0, "{}", d.metric_text());
    neighbour_serves(d, 1, "after the panic");
    metric_reaches(d, &idle_stops, 1.0);

    let (status, r) = d.invoke(VICTIM, &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(status, 200, "{r}\n{}", d.log());
    assert_eq!(r["output"], "50\n", "{r}");
    assert!(d.log().contains("the reaper panicked"), "{}", d.log());
}
