//! Net functions (`io = "net"`, the in-guest networking baseline) through the node daemon,
//! end to end: a real S3 server (s3s-fs), a real `nexus-backend` for the nexus-io twins, a real
//! `nexus-vmm serve` that builds its own network namespace, veth and taps, and VMs whose guests
//! fetch and store their objects over TCP/IP.
//!
//! These tests need root (the daemon makes a network namespace, a veth and taps),
//! `/dev/net/tun`, `/dev/kvm` and iproute2's `ip`: where one is missing they fail and say so.
//! Each test uses a subnet of its own (10.231-235.0.0/24).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Backend;
use common::daemon::{Daemon, function, sample_text};
use rustix::process::Signal;
use serde_json::{Value, json};

const ACCESS_KEY: &str = "nexus-net-access";
const SECRET_KEY: &str = "nexus-net-secret-key";
const BUCKET: &str = "functions";
/// Bound on a daemon's orderly stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Held by each test for its whole run: every daemon start removes the namespaces of dead
/// daemons, which would race with a test that looks at a killed daemon's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails, saying what is missing, unless this host can run net functions.
fn require_net_host() {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root (the daemon makes a network namespace, a veth and taps)");
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (the tun driver)");
    }
    if !Path::new("/dev/kvm").exists() {
        missing.push("/dev/kvm");
    }
    if run_ip(&["-V"]).is_err() {
        missing.push("iproute2's `ip`");
    }
    assert!(
        missing.is_empty(),
        "net function tests need {}: run them as root on a host with KVM and tun",
        missing.join(", ")
    );
}

/// Bound on one `ip` process.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `ip ARGS` on the host, killed after [`IP_TIMEOUT`]: its exit status and output.
fn run_ip(args: &[&str]) -> std::io::Result<(std::process::ExitStatus, String)> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + IP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`ip {}` did not finish within {IP_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok((status, reader.join().unwrap_or_default()))
}

/// `ip ARGS` on the host; its standard output.
fn ip(args: &[&str]) -> String {
    run_ip(args).expect("ip runs").1
}

/// Whether the host has the network namespace `name`.
fn has_namespace(name: &str) -> bool {
    ip(&["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Whether the host namespace has link `name`.
fn has_link(name: &str) -> bool {
    run_ip(&["link", "show", "dev", name]).is_ok_and(|(status, _)| status.success())
}

/// Whether the host's main table has a route to exactly `subnet`.
fn has_route(subnet: &str) -> bool {
    ip(&["-4", "route", "show", "table", "main"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(subnet))
}

/// The taps (`nxv…`) in namespace `namespace`.
fn taps_in(namespace: &str) -> Vec<String> {
    ip(&["-n", namespace, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("nxv"))
        .collect()
}

/// What a daemon with pid `pid` makes: its namespace and its veth's host end.
fn names(pid: u32) -> (String, String) {
    (format!("nexus-{pid}"), format!("nx{pid}h"))
}

/// Deletes what a daemon with pid `pid` may have left (a failed test's), on drop.
struct Leftovers(u32);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (namespace, host_link) = names(self.0);
        if has_link(&host_link) {
            let _ = run_ip(&["link", "delete", &host_link]);
        }
        if has_namespace(&namespace) {
            let _ = run_ip(&["netns", "delete", &namespace]);
        }
    }
}

/// An S3-compatible server (s3s-fs) over `root`: one listener on 127.0.0.1 (for the
/// backend) and one on the daemon's host end of the veth, bound before the address exists
/// (`IP_FREEBIND`), for the guests. Dropping it stops it.
struct S3Server {
    runtime: Option<tokio::runtime::Runtime>,
    root: std::path::PathBuf,
    /// The loopback listener's port.
    local_port: u16,
    /// The guests' listener's address.
    guests: SocketAddrV4,
    /// The guests' endpoint, `http://A.B.C.D:PORT`.
    guest_endpoint: String,
}

impl S3Server {
    fn start(root: &Path, guest_address: Ipv4Addr) -> Self {
        Self::start_on(root, 0, SocketAddrV4::new(guest_address, 0))
    }

    /// Stops the server (every connection closes at once) and starts it again on the same
    /// ports.
    fn restart(&mut self) {
        drop(self.runtime.take());
        *self = Self::start_on(&self.root, self.local_port, self.guests);
    }

    fn start_on(root: &Path, local_port: u16, guests: SocketAddrV4) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root).unwrap());
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let local = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", local_port)))
            .unwrap();
        let local_port = local.local_addr().unwrap().port();
        let guests = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(freebind_listener(guests)).unwrap()
        };
        let guests_address = match guests.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other} is not IPv4"),
        };
        for listener in [local, guests] {
            let service = service.clone();
            runtime.spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let service = service.clone();
                    tokio::spawn(async move {
                        let _ = socket.set_nodelay(true);
                        let _ = ConnBuilder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    });
                }
            });
        }
        S3Server {
            runtime: Some(runtime),
            root: root.to_owned(),
            local_port,
            guests: guests_address,
            guest_endpoint: format!("http://{guests_address}"),
        }
    }
}

/// A listening TCP socket on `address`, which need not be the host's yet.
fn freebind_listener(address: SocketAddrV4) -> std::net::TcpListener {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .unwrap();
    sockopt::set_ip_freebind(&fd, true).unwrap();
    sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    rustix::net::bind(&fd, &address).unwrap();
    rustix::net::listen(&fd, 128).unwrap();
    std::net::TcpListener::from(fd)
}

/// The daemon's arguments for net functions on `subnet` (`A.B.C.0/24`) reaching `s3`.
fn net_args(subnet: &str, s3: &S3Server) -> Vec<String> {
    vec![
        "--net-subnet".into(),
        subnet.into(),
        "--net-s3-endpoint".into(),
        s3.guest_endpoint.clone(),
        "--net-s3-bucket".into(),
        BUCKET.into(),
        "--net-s3-access-key".into(),
        ACCESS_KEY.into(),
        "--net-s3-secret-key".into(),
        SECRET_KEY.into(),
    ]
}

/// The host's end of the veth in `A.B.C.0/24`: `A.B.C.2`.
fn host_end(subnet: &str) -> Ipv4Addr {
    let network: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    Ipv4Addr::from(u32::from(network) + 2)
}

/// A net function file of `guest`.
fn net_function(guest: &str) -> String {
    format!("guest = \"{guest}\"\nio = \"net\"\nmemory_mib = 32\n\n[limits]\ntimeout_ms = 60000\n")
}

/// A store, an S3 server over it, a backend over the server and a daemon with net
/// functions on `subnet`, in a temporary directory.
struct NetNode {
    daemon: Daemon,
    _leftovers: Leftovers,
    _backend: Backend,
    s3: S3Server,
    bucket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn net_node(subnet: &str, functions: &[(&str, String)], words: usize) -> NetNode {
    require_net_host();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    let bucket = root.join(BUCKET);
    std::fs::create_dir_all(bucket.join("inputs")).unwrap();
    std::fs::write(bucket.join("inputs/words.txt"), sample_text(words)).unwrap();
    let s3 = S3Server::start(&root, host_end(subnet));
    let backend = Backend::start_with_env(
        dir.path(),
        vec![
            "--store".into(),
            format!("s3://{BUCKET}"),
            "--s3-endpoint".into(),
            format!("http://127.0.0.1:{}", s3.local_port),
            "--s3-region".into(),
            "us-east-1".into(),
            "--s3-allow-http".into(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ],
    );
    let args = net_args(subnet, &s3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(dir.path(), &backend, functions, &args);
    NetNode {
        _leftovers: Leftovers(daemon.pid()),
        daemon,
        _backend: backend,
        s3,
        bucket,
        _dir: dir,
    }
}

/// Invokes `function` with `body`; panics with the daemon's log unless it answered 200.
fn invoke_ok(d: &Daemon, function: &str, body: &Value) -> Value {
    let (status, answer) = d.invoke(function, body);
    assert_eq!(status, 200, "{function}: {answer}\n{}", d.log());
    answer
}

#[test]
fn wordcount_net_matches_its_nexus_io_twin_cold_and_warm_against_s3() {
    let _serial = one_at_a_time();
    let mut n = net_node(
        "10.231.0.0/24",
        &[
            ("wordcount", function("wordcount", "")),
            ("wordcount-net", net_function("wordcount-net")),
        ],
        3_000,
    );
    let d = &n.daemon;
    let (status, info) = d.json("GET", "/v1/functions/wordcount-net", "");
    assert_eq!((status, info["io"].as_str()), (200, Some("net")), "{info}");

    // The same input object, each twin storing its result: cold, then warm on the same VM.
    let mut net_vm = None;
    for start in ["cold", "warm"] {
        let twin = invoke_ok(
            d,
            "wordcount",
            &json!({"input_key": "inputs/words.txt", "output_key": format!("outputs/{start}/wc")}),
        );
        let net = invoke_ok(
            d,
            "wordcount-net",
            &json!({"input_key": "inputs/words.txt", "output_key": format!("outputs/{start}/wc-net")}),
        );
        assert_eq!(
            (twin["start"].as_str(), net["start"].as_str()),
            (Some(start), Some(start))
        );
        eprintln!("wordcount {start}: {twin}\nwordcount-net {start}: {net}");
        assert_eq!(net["outcome"], "success", "{net}");
        assert_eq!(net["output_key"], format!("outputs/{start}/wc-net"));
        let expected = std::fs::read(n.bucket.join(format!("outputs/{start}/wc"))).unwrap();
        let stored = std::fs::read(n.bucket.join(format!("outputs/{start}/wc-net"))).unwrap();
        assert_eq!(stored, expected, "{start}: the twins' outputs differ");
        assert_eq!(expected, b"3000\n");
        assert_eq!(net["output_len"].as_u64(), Some(expected.len() as u64));
        // The input and the PUT crossed the tap: more frame bytes than the input itself.
        let input_len = sample_text(3_000).len() as u64;
        assert!(net["bytes_in"].as_u64().unwrap() > input_len, "{net}");
        match &net_vm {
            None => net_vm = Some(net["vm"].clone()),
            Some(vm) => assert_eq!(&net["vm"], vm, "the warm invocation took another VM"),
        }
    }

    // Inline input, the result in the answer.
    let text = sample_text(777);
    let twin = invoke_ok(d, "wordcount", &json!({"input": text}));
    let net = invoke_ok(d, "wordcount-net", &json!({"input": text}));
    assert_eq!(net["start"], "warm");
    assert_eq!(
        (net["output"].as_str(), twin["output"].as_str()),
        (Some("777\n"), Some("777\n"))
    );

    // Lambda's Invoke API: raw bytes in, raw bytes out, the same for both.
    let lambda = |name: &str| {
        let (status, _, body) = d.request_bytes(
            "POST",
            &format!("/2015-03-31/functions/{name}/invocations"),
            &[],
            text.as_bytes(),
        );
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        body
    };
    assert_eq!(lambda("wordcount-net"), lambda("wordcount"));

    // A missing input object is the caller's mistake (404) and the VM stays.
    let (status, e) = d.invoke("wordcount-net", &json!({"input_key": "inputs/missing.txt"}));
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("ResourceNotFound")),
        "{e}"
    );
    let again = invoke_ok(
        d,
        "wordcount-net",
        &json!({"input_key": "inputs/words.txt"}),
    );
    assert_eq!(
        (again["start"].as_str(), again["output"].as_str()),
        (Some("warm"), Some("3000\n"))
    );
    assert_eq!(Some(&again["vm"]), net_vm.as_ref());

    // A second VM at once: its own address and generation, the same result.
    let (status, warmed) = d.json("POST", "/v1/functions/wordcount-net/warm", "{\"count\":2}");
    assert_eq!(status, 200, "{warmed}\n{}", d.log());
    let results: Vec<Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    invoke_ok(
                        d,
                        "wordcount-net",
                        &json!({"input_key": "inputs/words.txt"}),
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r["output"], "3000\n", "{r}");
    }
    let log = d.log();
    // Every restored guest took its generation record (it answers with the generation the
    // daemon wrote).
    assert!(
        !log.contains("did not take the restored VM's identity"),
        "{log}"
    );
    assert!(
        d.metric("nexus_net_frame_bytes_total{function=\"wordcount-net\",direction=\"in\"}") > 0.0
    );
    assert_eq!(
        d.metric("nexus_vm_starts_total{function=\"wordcount-net\",how=\"restore\"}"),
        2.0,
        "one cold start, one more VM warmed"
    );

    // The store closes every connection: the guests re-open theirs, and the node counts it.
    let reconnects = "nexus_net_store_reconnects_total{function=\"wordcount-net\"}";
    let before = d.metric(reconnects);
    n.s3.restart();
    let d = &n.daemon;
    for _ in 0..2 {
        let r = invoke_ok(
            d,
            "wordcount-net",
            &json!({"input_key": "inputs/words.txt"}),
        );
        assert_eq!(r["output"], "3000\n", "{r}");
    }
    assert!(d.metric(reconnects) > before, "{}", d.log());
}

/// A node on `subnet` with one `wordcount-net` VM parked after one invocation; its
/// namespace's and host link's names.
fn one_parked_wordcount_net(subnet: &str) -> (NetNode, String, String) {
    let n = net_node(
        subnet,
        &[("wordcount-net", net_function("wordcount-net"))],
        10,
    );
    let (namespace, host_link) = names(n.daemon.pid());
    let r = invoke_ok(
        &n.daemon,
        "wordcount-net",
        &json!({"input_key": "inputs/words.txt"}),
    );
    assert_eq!(r["output"], "10\n");
    (n, namespace, host_link)
}

#[test]
fn an_orderly_stop_removes_the_namespace_veth_taps_and_route() {
    let _serial = one_at_a_time();
    let subnet = "10.232.0.0/24";
    let (mut n, namespace, host_link) = one_parked_wordcount_net(subnet);
    assert!(has_namespace(&namespace), "{}", n.daemon.log());
    assert!(has_link(&host_link));
    assert!(has_route(subnet));
    assert_eq!(taps_in(&namespace).len(), 1, "one parked VM, one tap");

    let status = n.daemon.stop_with(Signal::TERM, STOP_TIMEOUT);
    assert!(status.success(), "{status}: {}", n.daemon.log());
    assert!(!has_namespace(&namespace), "{}", n.daemon.log());
    assert!(!has_link(&host_link));
    assert!(!has_route(subnet), "{}", ip(&["-4", "route"]));
}

#[test]
fn a_killed_daemons_namespace_is_removed_by_the_next_start() {
    let _serial = one_at_a_time();
    let subnet = "10.233.0.0/24";
    let (mut n, namespace, host_link) = one_parked_wordcount_net(subnet);
    n.daemon.stop_with(Signal::KILL, STOP_TIMEOUT);
    // SIGKILL leaves everything behind.
    assert!(has_namespace(&namespace));
    assert!(has_link(&host_link));

    // The next daemon (any: this one has no net function) removes it as it starts, and
    // nothing else.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backend = Backend::local(dir.path(), &store);
    let mut next = Daemon::start(
        dir.path(),
        &backend,
        &[("fibonacci", function("fibonacci", ""))],
        &[],
    );
    let _next_leftovers = Leftovers(next.pid());
    assert!(!has_namespace(&namespace), "{}", next.log());
    assert!(!has_link(&host_link));
    assert!(!has_route(subnet));
    assert!(
        next.log()
            .contains(&format!("removed the stale network namespace {namespace}")),
        "{}",
        next.log()
    );
    assert!(
        !has_namespace(&names(next.pid()).0),
        "no net function, no namespace"
    );
    let status = next.stop_with(Signal::TERM, STOP_TIMEOUT);
    assert!(status.success());
}

#[test]
fn a_vm_streaming_large_objects_does_not_starve_another_vms_invocations() {
    let _serial = one_at_a_time();
    let n = net_node(
        "10.234.0.0/24",
        &[
            (
                "aes-net",
                "guest = \"aes-net\"\nio = \"net\"\nmemory_mib = 64\n\n[limits]\ntimeout_ms = 120000\n"
                    .to_string(),
            ),
            (
                "fibonacci-net",
                "guest = \"fibonacci-net\"\nio = \"net\"\nmemory_mib = 32\n\n[limits]\ntimeout_ms = 20000\n"
                    .to_string(),
            ),
        ],
        10,
    );
    // 4 MiB that do not compress: every round GETs them and PUTs their ciphertext.
    let big: Vec<u8> = (0u32..1 << 20)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    std::fs::write(n.bucket.join("inputs/big.bin"), &big).unwrap();
    let d = &n.daemon;
    // Both functions' first invocations at once (two snapshots taken side by side), so that
    // both VMs are parked before the stream begins.
    let (first, fib) = std::thread::scope(|s| {
        let first = s.spawn(|| {
            invoke_ok(
                d,
                "aes-net",
                &json!({"input_key": "inputs/big.bin", "output_key": "outputs/aes-0"}),
            )
        });
        let fib = s.spawn(|| invoke_ok(d, "fibonacci-net", &json!({"input": "20"})));
        (first.join().unwrap(), fib.join().unwrap())
    });
    assert_eq!(
        first["output_len"].as_u64(),
        Some(big.len() as u64),
        "{first}"
    );
    assert_eq!(fib["output"], "fib(20) = 6765\n");
    assert_eq!(
        (first["start"].as_str(), fib["start"].as_str()),
        (Some("cold"), Some("cold"))
    );

    let streaming = std::sync::atomic::AtomicBool::new(true);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let mut i = 1;
            while streaming.load(std::sync::atomic::Ordering::Relaxed) {
                let r = invoke_ok(
                    d,
                    "aes-net",
                    &json!({"input_key": "inputs/big.bin", "output_key": format!("outputs/aes-{i}")}),
                );
                assert_eq!(r["output_len"].as_u64(), Some(big.len() as u64), "{r}");
                rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
        });
        // Invoke the other VM again and again while the stream goes on: at least 20 times,
        // and until two rounds of the stream went by meanwhile (bounded).
        std::thread::sleep(Duration::from_millis(100));
        let mut latencies = Vec::new();
        let rounds_before = rounds.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut k = 0u64;
        while (k < 20 || rounds.load(std::sync::atomic::Ordering::Relaxed) < rounds_before + 2)
            && std::time::Instant::now() < deadline
        {
            let n = 10 + k % 30;
            let t = std::time::Instant::now();
            let r = invoke_ok(d, "fibonacci-net", &json!({"input": n.to_string()}));
            latencies.push(t.elapsed());
            assert_eq!(r["start"], "warm", "{r}");
            assert!(
                r["output"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("fib({n}) = ")),
                "{r}"
            );
            k += 1;
        }
        let rounds_during = rounds.load(std::sync::atomic::Ordering::Relaxed) - rounds_before;
        streaming.store(false, std::sync::atomic::Ordering::Relaxed);
        flood.join().unwrap();
        latencies.sort();
        eprintln!(
            "fibonacci-net beside a streaming aes-net: {} invocations, median {:?}, max {:?}; \
             {rounds_during} rounds of 4 MiB in and out meanwhile",
            latencies.len(),
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1]
        );
        assert!(
            rounds_during >= 2,
            "the stream made {rounds_during} rounds in 120 s"
        );
    });
    // Every round's output is the whole ciphertext.
    let last = std::fs::read(n.bucket.join("outputs/aes-1")).unwrap();
    assert_eq!(last.len(), big.len());
    assert_ne!(last, big);
}

#[test]
fn every_bundled_net_function_matches_its_nexus_io_twin() {
    let _serial = one_at_a_time();
    let mut functions = Vec::new();
    for name in ["compress", "aes", "fibonacci"] {
        functions.push((name.to_string(), function(name, "")));
        functions.push((format!("{name}-net"), net_function(&format!("{name}-net"))));
    }
    let functions: Vec<(&str, String)> = functions
        .iter()
        .map(|(name, toml)| (name.as_str(), toml.clone()))
        .collect();
    let n = net_node("10.235.0.0/24", &functions, 2_000);
    let d = &n.daemon;

    // Objects in, objects out: the stored bytes are the same.
    for name in ["compress", "aes"] {
        for twin in [name.to_string(), format!("{name}-net")] {
            let r = invoke_ok(
                d,
                &twin,
                &json!({"input_key": "inputs/words.txt", "output_key": format!("outputs/{twin}")}),
            );
            assert_eq!(r["outcome"], "success", "{r}");
        }
        let nexus = std::fs::read(n.bucket.join(format!("outputs/{name}"))).unwrap();
        let net = std::fs::read(n.bucket.join(format!("outputs/{name}-net"))).unwrap();
        assert!(!nexus.is_empty());
        assert_eq!(net, nexus, "{name}: the twins' outputs differ");
    }

    // Inline input, the result in the answer; and the function's own error, the same
    // document on both paths (502 FunctionError on /v1), the VM kept.
    let fib = invoke_ok(d, "fibonacci", &json!({"input": "25"}));
    let fib_net = invoke_ok(d, "fibonacci-net", &json!({"input": "25"}));
    assert_eq!(fib_net["output"], fib["output"]);
    assert_eq!(fib_net["output"], "fib(25) = 75025\n");
    let (status, e) = d.invoke("fibonacci", &json!({"input": "twenty"}));
    let (status_net, e_net) = d.invoke("fibonacci-net", &json!({"input": "twenty"}));
    assert_eq!((status, status_net), (502, 502), "{e}\n{e_net}");
    assert_eq!(e_net["error"], "FunctionError", "{e_net}");
    assert!(
        e["output"]
            .as_str()
            .is_some_and(|doc| doc.contains("whole number")),
        "{e}"
    );
    assert_eq!(e_net["output"], e["output"], "the error documents differ");
    let again = invoke_ok(d, "fibonacci-net", &json!({"input": "10"}));
    assert_eq!(
        (again["start"].as_str(), again["vm"].as_str()),
        (Some("warm"), fib_net["vm"].as_str())
    );
}
