//! The node daemon as a per-host agent behind a balancer, end to end with real processes:
//! `/readyz` while it waits for its backend, once it serves, when the backend goes and comes
//! back, and from the moment it drains; a drain that lets an invocation in flight finish
//! while new ones are refused, then exits 0; a drain cut at its deadline; `X-Nexus-Node` on
//! every answer.

mod common;
#[path = "agent/node.rs"]
mod node;

use std::time::{Duration, Instant};

use common::Backend;
use node::{AgentNode, fib, function, try_request};
use rustix::process::Signal;
use serde_json::json;

/// A directory with a store holding `inputs/words.txt` (five words).
fn store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("inputs")).unwrap();
    std::fs::write(store.join("inputs/words.txt"), "one two three four five").unwrap();
    (dir, store)
}

#[test]
fn readiness_follows_the_start_and_the_backend() {
    let (dir, store) = store();
    let socket = dir.path().join("backend.sock");
    // The node starts first: its backend is not there yet.
    let node = AgentNode::start(
        dir.path(),
        &socket,
        &[("wordcount", function("wordcount", ""))],
        &["--node-name", "agent-a", "--backend-wait", "120s"],
    );
    let ready = node.request("GET", "/readyz", "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.header("x-nexus-node"), Some("agent-a"));
    let body = ready.json();
    assert_eq!(body["status"], "starting");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for the backend"),
        "{body}"
    );
    // Invocations are refused with Retry-After, in each API's shape.
    let refused = node.request(
        "POST",
        "/v1/functions/wordcount/invocations",
        &json!({"input_key": "inputs/words.txt"}).to_string(),
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("x-nexus-node"), Some("agent-a"));
    assert_eq!(refused.json()["error"], "ServiceUnavailable");
    let refused = node.request(
        "POST",
        "/2015-03-31/functions/wordcount/invocations",
        "one two",
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("x-amzn-errortype"), Some("ServiceException"));
    assert_eq!(refused.json()["Type"], "Service");
    // Liveness is not readiness: /healthz says the backend is missing.
    let health = node.request("GET", "/healthz", "");
    assert_eq!(health.status, 503);
    assert_eq!(health.header("x-nexus-node"), Some("agent-a"));

    // The backend comes: the node becomes ready and says so.
    let mut backend = Backend::local(dir.path(), &store);
    let line = node.wait_listening(Duration::from_secs(60));
    assert!(line.contains("node agent-a"), "{line}");
    let ready = node.request("GET", "/readyz", "");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(ready.json()["functions"], 1);
    assert_eq!(ready.header("x-nexus-node"), Some("agent-a"));
    let done = node.request(
        "POST",
        "/v1/functions/wordcount/invocations",
        &json!({"input_key": "inputs/words.txt"}).to_string(),
    );
    assert_eq!(done.status, 200, "{}\n{}", done.body, node.log());
    assert_eq!(done.json()["output"], "5\n");
    assert_eq!(done.header("x-nexus-node"), Some("agent-a"));
    let lambda = node.request(
        "POST",
        "/2015-03-31/functions/wordcount/invocations",
        "one two",
    );
    assert_eq!((lambda.status, lambda.body.as_str()), (200, "2\n"));
    assert_eq!(lambda.header("x-nexus-node"), Some("agent-a"));
    // Errors and the other endpoints carry the header too.
    for (method, path, status) in [
        ("POST", "/v1/functions/nosuch/invocations", 404),
        ("GET", "/v1/functions/wordcount/invocations", 405),
        ("POST", "/readyz", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/v1/functions", 200),
    ] {
        let answer = node.request(method, path, "{\"input\":\"x\"}");
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(
            answer.header("x-nexus-node"),
            Some("agent-a"),
            "{method} {path}"
        );
    }

    // A node whose backend is gone is not ready; it is again once the backend is back.
    backend.kill();
    let unready = node.wait_ready_status(503, Duration::from_secs(30));
    assert_eq!(unready.json()["status"], "unready", "{}", unready.body);
    assert!(
        unready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("backend"),
        "{}",
        unready.body
    );
    backend.restart();
    node.wait_ready_status(200, Duration::from_secs(30));
}

/// Calibrates fib(n) on a warm VM of the node: the smallest `n` whose invocation takes
/// the function at least `at_least`.
fn slow_fib(node: &AgentNode, at_least: Duration) -> u32 {
    let mut n = 28;
    loop {
        let answer = node.request(
            "POST",
            "/v1/functions/fibonacci/invocations",
            &json!({"input": n.to_string()}).to_string(),
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        let ms = answer.json()["timings_ms"]["function"].as_f64().unwrap();
        if ms >= at_least.as_secs_f64() * 1e3 {
            return n;
        }
        assert!(n < 60, "fib({n}) still takes {ms} ms");
        n += 1;
    }
}

#[test]
fn drain_finishes_the_invocation_in_flight_and_refuses_new_ones() {
    let (dir, store) = store();
    let backend = Backend::local(dir.path(), &store);
    let mut node = AgentNode::start(
        dir.path(),
        &backend.socket,
        &[("fibonacci", function("fibonacci", "timeout_ms = 120000"))],
        &["--node-name", "agent-b", "--drain-timeout", "90s"],
    );
    node.wait_listening(Duration::from_secs(60));
    let n = slow_fib(&node, Duration::from_millis(1500));
    eprintln!("fib({n}) takes at least 1.5 s");

    std::thread::scope(|scope| {
        let address = node.address.clone();
        let slow = scope.spawn(move || {
            node::request(
                &address,
                "POST",
                "/v1/functions/fibonacci/invocations",
                &json!({"input": n.to_string()}).to_string(),
            )
        });
        // Once the invocation is running, the drain starts.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = node.request("GET", "/v1/functions/fibonacci", "").json();
            if info["vms"]["busy"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the slow invocation never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let drained_at = Instant::now();
        node.signal(Signal::TERM);
        let draining = node.wait_ready_status(503, Duration::from_secs(10));
        assert_eq!(draining.json()["status"], "draining", "{}", draining.body);
        assert_eq!(draining.json()["in_flight"], 1, "{}", draining.body);
        assert_eq!(draining.header("x-nexus-node"), Some("agent-b"));
        // New invocations are refused while the one in flight goes on.
        let refused = node.request(
            "POST",
            "/v1/functions/fibonacci/invocations",
            &json!({"input": "3"}).to_string(),
        );
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.header("connection"), Some("close"));
        assert_eq!(refused.header("x-nexus-node"), Some("agent-b"));
        assert!(
            refused.json()["message"]
                .as_str()
                .unwrap()
                .contains("draining")
        );
        let refused = node.request("POST", "/2015-03-31/functions/fibonacci/invocations", "3");
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.header("retry-after"), Some("1"));
        let health = node.request("GET", "/healthz", "");
        assert_eq!(health.status, 200, "{}", health.body);
        assert_eq!(health.header("x-nexus-node"), Some("agent-b"));

        let slow = slow.join().unwrap();
        assert_eq!(slow.status, 200, "{}\n{}", slow.body, node.log());
        assert_eq!(
            slow.json()["output"],
            format!("fib({n}) = {}\n", fib(n)),
            "{}",
            slow.body
        );
        assert_eq!(slow.header("x-nexus-node"), Some("agent-b"));
        eprintln!(
            "the invocation in flight finished {:.0} ms into the drain",
            drained_at.elapsed().as_secs_f64() * 1e3
        );
    });
    let status = node.wait_exit(Duration::from_secs(60));
    let log = node.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("SIGTERM: draining: 1 invocation(s) in flight"),
        "{log}"
    );
    assert!(log.contains("drained: no invocation in flight"), "{log}");
    assert!(log.contains("nexus-vmm serve: stopped"), "{log}");
    assert!(!log.contains("cut short"), "{log}");
}

#[test]
fn drain_ends_at_its_deadline_and_at_a_second_signal() {
    for second_signal in [false, true] {
        let (dir, store) = store();
        let backend = Backend::local(dir.path(), &store);
        let drain_timeout = if second_signal { "600s" } else { "1s" };
        let mut node = AgentNode::start(
            dir.path(),
            &backend.socket,
            &[("fibonacci", function("fibonacci", "timeout_ms = 600000"))],
            // With the snapshot taken at start: `GET /v1/functions/…` waits for a snapshot
            // being taken (by the runaway's cold start).
            &[
                "--node-name",
                "agent-c",
                "--drain-timeout",
                drain_timeout,
                "--prepare",
            ],
        );
        node.wait_listening(Duration::from_secs(60));
        std::thread::scope(|scope| {
            let address = node.address.clone();
            // fib(80) runs for days: only the end of the drain ends it.
            let runaway = scope.spawn(move || {
                try_request(
                    &address,
                    "POST",
                    "/v1/functions/fibonacci/invocations",
                    &[],
                    json!({"input": "80"}).to_string().as_bytes(),
                )
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let info = node.request("GET", "/v1/functions/fibonacci", "").json();
                if info["vms"]["busy"] == 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "the runaway never ran");
                std::thread::sleep(Duration::from_millis(10));
            }
            node.signal(Signal::INT);
            node.wait_ready_status(503, Duration::from_secs(10));
            if second_signal {
                node.signal(Signal::INT);
            }
            let status = node.wait_exit(Duration::from_secs(60));
            let log = node.log();
            assert!(status.success(), "{status}\n{log}");
            assert!(log.contains("SIGINT: draining"), "{log}");
            if second_signal {
                assert!(log.contains("SIGINT again: the drain ends now"), "{log}");
            }
            assert!(
                log.contains("drain: stopping with 1 invocation(s) in flight"),
                "{log}"
            );
            // The runaway got no answer: its connection went with the process.
            assert!(runaway.join().unwrap().is_none());
        });
    }
}
