//! Nexus nodes as stateless hosts: three network namespaces as hosts on a bridge, each with
//! its own `nexus-backend` (its own state) and `nexus-vmm serve` node, all over one S3
//! server (`nexus-load s3-server`, in a fourth namespace that holds the bridge), HAProxy
//! (deploy/haproxy/haproxy.cfg) in front of the three nodes in the test's namespace. The
//! nodes share snapshots through their backends (`--publish-snapshots`).
//!
//! Shown: each of 60 functions (copies of `wordcount`) lands on one host; killing a host
//! moves its functions, and only them, to the others, which restore the snapshots the dead
//! host published (their metrics say `fetched`, and no boot) and answer correctly; when the
//! host comes back its functions, and no others, move back; load above the bound spills to
//! a second host; the S3 server going away gives a 5xx with a message, not a hang. The
//! figures (failover time, share of functions moved, cold start from a fetched snapshot
//! against a boot) are printed.
//!
//! Root only, with `ip` (iproute2) and HAProxy; it fails with a message without them.
//! Everything it makes (processes, namespaces, the veth into the test's namespace) is
//! removed when it ends, failed or not.

mod common;
#[path = "agent/node.rs"]
mod node;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::{Answer, function, request};

const ACCESS_KEY: &str = "nexus-multihost";
const SECRET_KEY: &str = "nexus-multihost-secret";
const BUCKET: &str = "nexus";
const FUNCTIONS: usize = 60;
const HOSTS: usize = 3;
const NODE_PORT: u16 = 8080;
const S3_PORT: u16 = 9000;

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("`ip` does not run ({e}): this test needs iproute2 (apt-get install iproute2)")
    });
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and the veth into the test's namespace; removed on drop.
struct Network {
    switch: String,
    hosts: Vec<String>,
    uplink: String,
    /// `10.213.N.`: the bridge is `.1`, the test's end `.2`, host i `.11+i`.
    subnet: String,
}

impl Network {
    fn build() -> Network {
        let pid = std::process::id();
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root: its hosts are network namespaces (`ip netns add`)"
        );
        let probe = Command::new("ip").args(["netns", "list"]).output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            panic!(
                "`ip netns` is not available ({probe:?}): this test needs root and iproute2 \
                 (network namespaces are its hosts)"
            );
        }
        let subnet = format!("10.213.{}.", pid % 250);
        let network = Network {
            switch: format!("nxmh-{pid}-sw"),
            hosts: (0..HOSTS).map(|i| format!("nxmh-{pid}-h{i}")).collect(),
            uplink: format!("nxmh{pid}"),
            subnet,
        };
        // From here on, drop removes whatever was made.
        let sw = network.switch.as_str();
        let bridge = format!("{}1/24", network.subnet);
        ip(&["netns", "add", sw]);
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "addr", "add", &bridge, "dev", "br0"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        ip(&[
            "link",
            "add",
            &network.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            sw,
        ]);
        let uplink_address = format!("{}2/24", network.subnet);
        ip(&["addr", "add", &uplink_address, "dev", &network.uplink]);
        ip(&["link", "set", &network.uplink, "up"]);
        ip(&["-n", sw, "link", "set", "up0", "master", "br0", "up"]);
        for (i, host) in network.hosts.iter().enumerate() {
            ip(&["netns", "add", host]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
            let port = format!("v{i}");
            ip(&[
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                host,
            ]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
            let address = format!("{}/24", network.host_address(i));
            ip(&["-n", host, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
        }
        network
    }

    fn host_address(&self, i: usize) -> String {
        format!("{}{}", self.subnet, 11 + i)
    }

    fn s3_address(&self) -> String {
        format!("{}1:{S3_PORT}", self.subnet)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.uplink])
            .output();
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A process in a namespace, killed on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program ARGS` in namespace `ns` (`None`: the test's), its stderr to `log`.
    fn start(
        ns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
        stdout: Stdio,
    ) -> Proc {
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One host: its backend and node, their files in `dir`.
struct Host {
    name: String,
    address: String,
    dir: PathBuf,
    backend: Option<Proc>,
    node: Option<Proc>,
}

/// Everything the test runs; fields drop in order: processes first, the network last.
struct World {
    hosts: Vec<Host>,
    s3: Option<Proc>,
    network: Network,
    dir: tempfile::TempDir,
    functions: PathBuf,
    key: PathBuf,
}

impl World {
    fn start() -> World {
        let network = Network::build();
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("s3").join(BUCKET);
        std::fs::create_dir_all(bucket.join("inputs")).unwrap();
        std::fs::write(bucket.join("inputs/words.txt"), "one two three four five").unwrap();
        let functions = dir.path().join("functions");
        std::fs::create_dir_all(&functions).unwrap();
        for i in 0..FUNCTIONS {
            std::fs::write(
                functions.join(format!("{}.toml", name(i))),
                function("wordcount", ""),
            )
            .unwrap();
        }
        let key = dir.path().join("snapshot.key");
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
        let mut world = World {
            hosts: Vec::new(),
            s3: None,
            network,
            dir,
            functions,
            key,
        };
        world.start_s3();
        for i in 0..HOSTS {
            let host = Host {
                name: format!("host-{i}"),
                address: format!("{}:{NODE_PORT}", world.network.host_address(i)),
                dir: world.dir.path().join(format!("host-{i}")),
                backend: None,
                node: None,
            };
            std::fs::create_dir_all(&host.dir).unwrap();
            world.hosts.push(host);
            world.start_host(i);
        }
        for i in 0..HOSTS {
            world.wait_ready(i);
        }
        world
    }

    fn start_s3(&mut self) {
        let load = nexus::guests::workspace_example("nexus-load").unwrap();
        let args: Vec<String> = [
            "s3-server",
            "--root",
            self.dir.path().join("s3").to_str().unwrap(),
            "--listen",
            &self.network.s3_address(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut s3 = Proc::start(
            Some(&self.network.switch),
            &load,
            &args,
            &[],
            self.dir.path().join("s3.log"),
            Stdio::piped(),
        );
        let out = s3.child.as_mut().unwrap().stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(line);
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("the S3 server did not listen in 30 s:\n{}", s3.log());
        }
        self.s3 = Some(s3);
    }

    fn start_host(&mut self, i: usize) {
        ip(&[
            "-n",
            &self.network.switch,
            "link",
            "set",
            &format!("v{i}"),
            "up",
        ]);
        let s3 = format!("http://{}", self.network.s3_address());
        let ns = self.network.hosts[i].clone();
        let host = &mut self.hosts[i];
        let socket = host.dir.join("backend.sock");
        let _ = std::fs::remove_file(&socket);
        let backend_args: Vec<String> = [
            "--listen",
            socket.to_str().unwrap(),
            "--store",
            &format!("s3://{BUCKET}"),
            "--s3-endpoint",
            &s3,
            "--s3-region",
            "us-east-1",
            "--s3-allow-http",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut backend = Proc::start(
            Some(&ns),
            &common::backend_binary(),
            &backend_args,
            &[
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ],
            host.dir.join("backend.log"),
            Stdio::null(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(status) = backend.exited() {
                panic!(
                    "{}'s backend exited ({status}):\n{}",
                    host.name,
                    backend.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}'s backend did not listen",
                host.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let node_args: Vec<String> = [
            "serve",
            "--listen",
            &host.address,
            "--backend",
            socket.to_str().unwrap(),
            "--functions",
            self.functions.to_str().unwrap(),
            "--state-dir",
            host.dir.join("state").to_str().unwrap(),
            "--node-name",
            &host.name,
            "--max-vms",
            "128",
            "--snapshot-key-file",
            self.key.to_str().unwrap(),
            "--publish-snapshots",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let node = Proc::start(
            Some(&ns),
            &common::nexus_vmm(),
            &node_args,
            &[],
            host.dir.join("serve.log"),
            Stdio::null(),
        );
        host.backend = Some(backend);
        host.node = Some(node);
    }

    fn wait_ready(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = node::try_request(&host.address, "GET", "/readyz", &[], b"");
            if ready.is_some_and(|answer| answer.status == 200) {
                return;
            }
            if let Some(status) = host.node.as_mut().and_then(Proc::exited) {
                panic!(
                    "{}'s node exited ({status}):\n{}",
                    host.name,
                    host.node.as_ref().unwrap().log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in 60 s:\n{}",
                host.name,
                host.node.as_ref().unwrap().log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host `i` goes away: its link goes down (its packets are dropped, as a dead machine's
    /// are: no connection is refused) and its node and backend are killed.
    fn kill_host(&mut self, i: usize) {
        ip(&[
            "-n",
            &self.network.switch,
            "link",
            "set",
            &format!("v{i}"),
            "down",
        ]);
        let host = &mut self.hosts[i];
        if let Some(mut node) = host.node.take() {
            node.kill();
        }
        if let Some(mut backend) = host.backend.take() {
            backend.kill();
        }
    }

    /// The published manifests in the S3 server's directory.
    fn manifests(&self) -> usize {
        let root = self
            .dir
            .path()
            .join("s3")
            .join(BUCKET)
            .join("nexus-system/snapshots");
        let Ok(functions) = std::fs::read_dir(root) else {
            return 0;
        };
        functions
            .flatten()
            .flat_map(|f| std::fs::read_dir(f.path()).into_iter().flatten().flatten())
            .filter(|identity| identity.path().join("manifest").exists())
            .count()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for host in &self.hosts {
            for (what, p) in [("backend", &host.backend), ("node", &host.node)] {
                if let Some(p) = p {
                    let log = p.log();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    out.push_str(&format!("--- {} {what} (last lines)\n", host.name));
                    for line in tail.iter().rev() {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

fn name(i: usize) -> String {
    format!("wc{i:02}")
}

/// HAProxy with the shipped config in front of `nodes`, with `env`; killed on drop.
fn haproxy(dir: &Path, nodes: &[String], env: &[(&str, &str)]) -> (Proc, String) {
    let version = Command::new("haproxy").arg("-v").output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        panic!("haproxy is not installed (apt-get install haproxy, as .ci/run does): {version:?}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
    let mut all: Vec<(String, String)> = vec![("NEXUS_LISTEN".into(), address.clone())];
    for (i, node) in nodes.iter().enumerate() {
        all.push((format!("NEXUS_NODE{}", i + 1), node.clone()));
    }
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<String> = ["-db", "-f", config.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut proc = Proc::start(
        None,
        Path::new("haproxy"),
        &args,
        &env,
        dir.join(format!("haproxy-{port}.log")),
        Stdio::null(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        if let Some(status) = proc.exited() {
            panic!("haproxy exited with {status}:\n{}", proc.log());
        }
        assert!(Instant::now() < deadline, "haproxy did not listen in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every node up in HAProxy's eyes (its first checks).
    std::thread::sleep(Duration::from_millis(1500));
    (proc, address)
}

fn invocation_path(f: &str) -> String {
    format!("/v1/functions/{f}/invocations")
}

const INPUT: &str = "alpha beta gamma delta epsilon zeta eta";

/// One invocation through HAProxy that must succeed and count right: the node that answered.
fn invoke(proxy: &str, f: &str) -> String {
    invoke_timed(proxy, f).0
}

/// [`invoke`], and the node's timings: getting the snapshot (taking or fetching it, 0 once
/// the node has it) and the whole invocation in the node, in ms.
fn invoke_timed(proxy: &str, f: &str) -> (String, f64, f64) {
    let body = serde_json::json!({ "input": INPUT }).to_string();
    let answer = request(proxy, "POST", &invocation_path(f), &body);
    assert_eq!(answer.status, 200, "{f}: {}", answer.body);
    check_count(f, &answer);
    let timings = &answer.json()["timings_ms"];
    let ms = |name: &str| timings[name].as_f64().unwrap_or(f64::NAN);
    (node_of(&answer), ms("snapshot"), ms("total"))
}

fn check_count(f: &str, answer: &Answer) {
    let result = answer.json();
    assert_eq!(
        result["output"].as_str().map(str::trim),
        Some("7"),
        "{f}: not the count of 7 words: {}",
        answer.body
    );
}

fn node_of(answer: &Answer) -> String {
    answer
        .header("x-nexus-node")
        .expect("X-Nexus-Node")
        .to_owned()
}

/// The sum of the node's series `series` (a full name with its labels).
fn metric(address: &str, series: &str) -> f64 {
    let answer = request(address, "GET", "/metrics", "");
    assert_eq!(answer.status, 200);
    answer
        .body
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l[series.len()..].trim().parse::<f64>().ok())
        .sum()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Invokes every function once, `parallel` at a time: (owner, snapshot ms, total ms) of
/// each.
fn invoke_all(proxy: &str, parallel: usize) -> BTreeMap<String, (String, f64, f64)> {
    let names: Vec<String> = (0..FUNCTIONS).map(name).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = names
            .chunks(FUNCTIONS.div_ceil(parallel))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|f| (f.clone(), invoke_timed(proxy, f)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

#[test]
fn stateless_hosts_share_snapshots_and_fail_over() {
    let begun = Instant::now();
    let mut world = World::start();
    let addresses: Vec<String> = world.hosts.iter().map(|h| h.address.clone()).collect();
    let (_proxy, proxy) = haproxy(
        world.dir.path(),
        &addresses,
        &[("NEXUS_HASH_BALANCE_FACTOR", "0")],
    );

    // Every function, cold (each host boots and snapshots its own; one at a time, for the
    // figure), then warm, 6 at a time: one host each.
    let first = invoke_all(&proxy, 1);
    let owners: BTreeMap<String, String> = first
        .iter()
        .map(|(f, (n, _, _))| (f.clone(), n.clone()))
        .collect();
    let again = invoke_all(&proxy, 6);
    for (f, (node, _, _)) in &again {
        assert_eq!(node, &owners[f], "{f} moved between two invocations");
    }
    let per_host: BTreeMap<&String, usize> = owners.values().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n).or_default() += 1;
        m
    });
    eprintln!("functions per host: {per_host:?}");
    assert_eq!(
        per_host.len(),
        HOSTS,
        "a host got no function: {per_host:?}"
    );
    let booted_snapshot: Vec<f64> = first.values().map(|(_, ms, _)| *ms).collect();
    let booted_total: Vec<f64> = first.values().map(|(_, _, ms)| *ms).collect();

    // Every host published what it took.
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.manifests() < FUNCTIONS {
        assert!(
            Instant::now() < deadline,
            "{} of {FUNCTIONS} snapshots published after 60 s\n{}",
            world.manifests(),
            world.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A host dies: its functions move to the others, which restore the published snapshots.
    let victim_function = name(0);
    let victim = world
        .hosts
        .iter()
        .position(|h| h.name == owners[&victim_function])
        .unwrap();
    let victim_name = world.hosts[victim].name.clone();
    world.kill_host(victim);
    let killed = Instant::now();
    let body = serde_json::json!({ "input": INPUT }).to_string();
    let failover = loop {
        let answer = request(&proxy, "POST", &invocation_path(&victim_function), &body);
        if answer.status == 200 {
            assert_ne!(node_of(&answer), victim_name);
            check_count(&victim_function, &answer);
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "{victim_function} not served 30 s after {victim_name} died: {} {}",
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut fetched_snapshot, mut fetched_total) = (Vec::new(), Vec::new());
    let mut after_kill = BTreeMap::new();
    for (f, owner) in &owners {
        let (node, snapshot, total) = invoke_timed(&proxy, f);
        assert_ne!(node, victim_name, "{f} still on the dead host");
        if *owner != victim_name {
            assert_eq!(&node, owner, "{f} moved off a live host");
        } else if *f != victim_function {
            fetched_snapshot.push(snapshot);
            fetched_total.push(total);
        }
        after_kill.insert(f.clone(), node);
    }
    let moved: Vec<&String> = owners
        .iter()
        .filter(|(_, o)| **o == victim_name)
        .map(|(f, _)| f)
        .collect();
    // The new owners restored the published snapshots: fetched, never booted.
    for f in &moved {
        let host = world
            .hosts
            .iter()
            .find(|h| h.name == after_kill[*f])
            .unwrap();
        let fetched = metric(
            &host.address,
            &format!("nexus_snapshot_events_total{{function=\"{f}\",how=\"fetched\"}}"),
        );
        let booted = metric(
            &host.address,
            &format!("nexus_vm_starts_total{{function=\"{f}\",how=\"boot\"}}"),
        );
        assert_eq!(
            (fetched, booted),
            (1.0, 0.0),
            "{f} on {}: fetched {fetched}, booted {booted}; its log about {f}:\n{}",
            host.name,
            host.node
                .as_ref()
                .map(|n| n
                    .log()
                    .lines()
                    .filter(|l| l.contains(f.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n"))
                .unwrap_or_default()
        );
    }

    // The host comes back (its state directory kept): its functions come back, no others.
    world.start_host(victim);
    world.wait_ready(victim);
    let back = Instant::now();
    while invoke(&proxy, &victim_function) != victim_name {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "{victim_name} did not get {victim_function} back in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut moved_back = 0;
    for (f, owner) in &owners {
        let node = invoke(&proxy, f);
        assert_eq!(&node, owner, "{f} after {victim_name} came back");
        if node != after_kill[f] {
            moved_back += 1;
        }
    }

    // Load above the bound spills to a second host (the shipped factor, 150).
    let (_bounded, bounded) = haproxy(world.dir.path(), &addresses, &[]);
    let hot = name(1);
    let spread: BTreeMap<String, usize> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| (0..10).map(|_| invoke(&bounded, &hot)).collect::<Vec<_>>()))
            .collect();
        let mut count = BTreeMap::new();
        for caller in callers {
            for node in caller.join().unwrap() {
                *count.entry(node).or_default() += 1;
            }
        }
        count
    });
    assert!(spread.len() >= 2, "{hot} held on one host: {spread:?}");

    // The S3 server goes away: an invocation that reads the store fails cleanly.
    world.s3.take();
    let started = Instant::now();
    let answer = request(
        &proxy,
        "POST",
        &invocation_path(&name(2)),
        &serde_json::json!({ "input_key": "inputs/words.txt" }).to_string(),
    );
    let took = started.elapsed();
    assert!(
        answer.status >= 500 && !answer.body.trim().is_empty(),
        "with the store gone: {} {}",
        answer.status,
        answer.body
    );
    eprintln!(
        "store gone: {} in {:.1} s: {}",
        answer.status,
        took.as_secs_f64(),
        answer.body.trim()
    );

    eprintln!(
        "figures: failover (host gone → first answer elsewhere) {:.0} ms with the shipped \
         checks; {} of {FUNCTIONS} functions moved when {victim_name} left, {moved_back} moved \
         back when it returned; first cold start in the node (median): booting and \
         snapshotting {:.1} ms of {:.1} ms in all ({FUNCTIONS} samples), fetching the \
         published snapshot {:.1} ms of {:.1} ms in all ({} samples), one at a time; whole \
         test {:.0} s",
        failover.as_secs_f64() * 1e3,
        moved.len(),
        median(booted_snapshot),
        median(booted_total),
        median(fetched_snapshot),
        median(fetched_total.clone()),
        fetched_total.len(),
        begun.elapsed().as_secs_f64()
    );
    assert_eq!(moved_back, moved.len());
}
