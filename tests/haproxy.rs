//! deploy/haproxy/haproxy.cfg for real: HAProxy on loopback in front of three real
//! `nexus-vmm serve` nodes (each over its own `nexus-backend`). One function's invocations
//! always land on one node, whichever API path and name form (plain, partial ARN, ARN,
//! URL-encoded ARN) is used; different functions spread over the nodes; a node whose
//! `/readyz` fails (its backend killed) stops receiving once HAProxy's health checks see it,
//! its functions move and no other function does; it gets them back when it recovers.
//!
//! HAProxy must be installed (`apt-get install haproxy`; CI does): without it the test fails.

mod common;
#[path = "agent/node.rs"]
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Backend;
use node::{AgentNode, Answer, function, request};
use serde_json::json;

/// The config under test.
fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg")
}

/// A free loopback port (closed again: HAProxy binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HAProxy process, killed on drop.
struct Haproxy {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Haproxy {
    /// HAProxy with the config under test in front of `nodes`, with `env` besides.
    fn start(dir: &Path, nodes: &[&str], env: &[(&str, &str)]) -> Self {
        let version = Command::new("haproxy").arg("-v").output();
        if !version.as_ref().is_ok_and(|o| o.status.success()) {
            panic!(
                "haproxy is not installed (or does not run): this test runs deploy/haproxy/\
                 haproxy.cfg for real; install it (Debian: apt-get install haproxy, as .ci/run \
                 does): {version:?}"
            );
        }
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("haproxy-{}.log", address.replace(':', "-")));
        let mut command = Command::new("haproxy");
        command
            .arg("-db")
            .arg("-f")
            .arg(config())
            .env("NEXUS_LISTEN", &address)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null());
        for (i, node) in nodes.iter().enumerate() {
            command.env(format!("NEXUS_NODE{}", i + 1), node);
        }
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(config())
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut child = command.spawn().expect("haproxy starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "haproxy exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "haproxy did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            address,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node and its own backend.
struct Host {
    _dir: tempfile::TempDir,
    backend: Backend,
    node: AgentNode,
    name: String,
}

const FUNCTIONS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];

fn host(name: &str) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("inputs")).unwrap();
    std::fs::write(store.join("inputs/words.txt"), "one two three").unwrap();
    let backend = Backend::local(dir.path(), &store);
    let functions: Vec<(&str, String)> = FUNCTIONS
        .iter()
        .map(|f| (*f, function("wordcount", "")))
        .collect();
    let node = AgentNode::start(
        dir.path(),
        &backend.socket,
        &functions,
        &["--node-name", name, "--max-vms", "16"],
    );
    node.wait_listening(Duration::from_secs(60));
    Host {
        _dir: dir,
        backend,
        node,
        name: name.to_owned(),
    }
}

/// Every path naming `function` (both APIs, every name form), with its body.
fn paths(function: &str) -> Vec<(String, String)> {
    let v1 = json!({"input": "one two"}).to_string();
    let raw = "one two".to_string();
    vec![
        (format!("/v1/functions/{function}/invocations"), v1),
        (
            format!("/2015-03-31/functions/{function}/invocations"),
            raw.clone(),
        ),
        (
            format!("/2015-03-31/functions/{function}:%24LATEST/invocations"),
            raw.clone(),
        ),
        (
            format!("/2015-03-31/functions/123456789012:function:{function}/invocations"),
            raw.clone(),
        ),
        (
            format!(
                "/2015-03-31/functions/arn:aws:lambda:eu-west-1:123456789012:function:{function}:$LATEST/invocations"
            ),
            raw.clone(),
        ),
        (
            format!(
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3A{function}/invocations"
            ),
            raw.clone(),
        ),
        (
            format!(
                "/2015-03-31/functions/arn%3aaws%3alambda%3aus-east-1%3a123456789012%3afunction%3a{function}%3a%24LATEST/invocations"
            ),
            raw,
        ),
    ]
}

/// An invocation through HAProxy that must succeed: the node that answered.
fn invoke(proxy: &Haproxy, path: &str, body: &str) -> String {
    let answer = request(&proxy.address, "POST", path, body);
    assert_eq!(
        answer.status,
        200,
        "{path}: {}\n{}",
        answer.body,
        proxy.log()
    );
    assert!(answer.body.contains('2'), "{path}: {}", answer.body);
    node_of(&answer).to_owned()
}

fn node_of(answer: &Answer) -> &str {
    answer.header("x-nexus-node").expect("X-Nexus-Node")
}

/// The node serving `function` now (a plain `/v1` invocation through HAProxy).
fn owner(proxy: &Haproxy, function: &str) -> String {
    let (path, body) = &paths(function)[0];
    invoke(proxy, path, body)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[test]
fn one_function_one_node_spread_and_failover() {
    let mut hosts: Vec<Host> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| host(n))
        .collect();
    let addresses: Vec<String> = hosts.iter().map(|h| h.node.address.clone()).collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    // Bounded loads off: with them, an invocation that overlaps the end of the previous one
    // (HAProxy still counting it) may go to the next node (see the config; they are shown
    // at the end).
    let proxy = Haproxy::start(
        dir.path(),
        &addresses,
        &[("NEXUS_HASH_BALANCE_FACTOR", "0")],
    );

    // Affinity: every form of every function's name lands on one node, every time.
    let mut owners = BTreeMap::new();
    for function in FUNCTIONS {
        let mut seen = BTreeSet::new();
        let mut answers = Vec::new();
        for _ in 0..2 {
            for (path, body) in paths(function) {
                let node = invoke(&proxy, &path, &body);
                seen.insert(node.clone());
                answers.push((path, node));
            }
        }
        assert_eq!(
            seen.len(),
            1,
            "{function} answered by {seen:?}: {answers:#?}\n{}",
            proxy.log()
        );
        owners.insert(function, seen.into_iter().next().unwrap());
    }
    eprintln!("function → node: {owners:?}");
    // Spread: the functions do not all land on one node.
    let used: BTreeSet<&String> = owners.values().collect();
    assert!(used.len() >= 2, "every function on one node: {owners:?}");
    // Each node ran only its own functions: only there was a snapshot taken.
    for host in &hosts {
        let listed = host.node.request("GET", "/v1/functions", "").json();
        for f in listed["functions"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap();
            let snapshot = f["snapshot"].as_bool().unwrap();
            assert_eq!(
                snapshot,
                owners[name] == host.name,
                "{} ran {name}: {f}; owned by {}",
                host.name,
                owners[name]
            );
        }
    }

    // What HAProxy adds to a warm invocation: the median of direct and proxied ones.
    let (path, body) = &paths(FUNCTIONS[0])[1];
    let owner_address = &hosts
        .iter()
        .find(|h| h.name == owners[FUNCTIONS[0]])
        .unwrap()
        .node
        .address;
    let timed = |address: &str| {
        let start = Instant::now();
        let answer = request(address, "POST", path, body);
        assert_eq!(answer.status, 200);
        start.elapsed().as_secs_f64() * 1e3
    };
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for _ in 0..200 {
        direct.push(timed(owner_address));
        proxied.push(timed(&proxy.address));
    }
    let (direct, proxied) = (median(direct), median(proxied));
    eprintln!(
        "warm invocation, new connection each: direct median {direct:.3} ms, through HAProxy \
         {proxied:.3} ms (+{:.3} ms)",
        proxied - direct
    );

    // Failover: the owner of the first function loses its backend, so its /readyz fails.
    let victim = owners[FUNCTIONS[0]].clone();
    let victim_host = hosts.iter().position(|h| h.name == victim).unwrap();
    hosts[victim_host].backend.kill();
    let failed_at = Instant::now();
    hosts[victim_host]
        .node
        .wait_ready_status(503, Duration::from_secs(10));
    let moved_to = loop {
        let (path, body) = &paths(FUNCTIONS[0])[0];
        let answer = request(&proxy.address, "POST", path, body);
        if answer.status == 200 && node_of(&answer) != victim {
            break node_of(&answer).to_owned();
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(30),
            "{} still receives {} 30 s after its /readyz failed:\n{}",
            victim,
            FUNCTIONS[0],
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "{} moved from {victim} to {moved_to} {:.0} ms after {victim}'s backend was killed",
        FUNCTIONS[0],
        failed_at.elapsed().as_secs_f64() * 1e3
    );
    // Once moved, the victim receives nothing; only its functions moved.
    for function in FUNCTIONS {
        let now = owner(&proxy, function);
        assert_ne!(now, victim, "{function} still goes to {victim}");
        if owners[function] != victim {
            assert_eq!(now, owners[function], "{function} moved off a healthy node");
        }
    }
    // Recovery: the backend is back, the node is ready, and its functions come back.
    hosts[victim_host].backend.restart();
    hosts[victim_host]
        .node
        .wait_ready_status(200, Duration::from_secs(30));
    let recovered_at = Instant::now();
    while owner(&proxy, FUNCTIONS[0]) != victim {
        assert!(
            recovered_at.elapsed() < Duration::from_secs(30),
            "{} did not get {} back within 30 s of its recovery:\n{}",
            victim,
            FUNCTIONS[0],
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{} back on {victim} {:.0} ms after it was ready again",
        FUNCTIONS[0],
        recovered_at.elapsed().as_secs_f64() * 1e3
    );
    for function in FUNCTIONS {
        assert_eq!(owner(&proxy, function), owners[function], "{function}");
    }

    // Bounded loads, as shipped (factor 150): one function invoked by many callers at once
    // is not held on one node.
    let bounded = Haproxy::start(dir.path(), &addresses, &[]);
    let hot = FUNCTIONS[1];
    let nodes: BTreeMap<String, usize> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    let (path, body) = &paths(hot)[1];
                    (0..10)
                        .map(|_| invoke(&bounded, path, body))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut count = BTreeMap::new();
        for caller in callers {
            for node in caller.join().unwrap() {
                *count.entry(node).or_default() += 1;
            }
        }
        count
    });
    eprintln!("{hot} with 12 concurrent callers, bounded loads: {nodes:?}");
    assert!(nodes.len() >= 2, "{hot} held on one node: {nodes:?}");
    assert!(
        nodes.get(&owners[hot]).is_some_and(|&n| n > 0),
        "{hot} never on its own node: {nodes:?}"
    );
}
