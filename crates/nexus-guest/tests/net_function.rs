// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A `*-net` function end to end: the `wordcount-net` micro-guest booted in a real micro-VM
//! on /dev/kvm, with a nexus-net virtio-net device over a tap in a network namespace of the
//! test's own, against a real S3-compatible server (s3s-fs, which verifies SigV4) in that
//! namespace. The test invokes it over HTTP as the node does (`POST /invoke` with
//! `X-Nexus-Input-Key` and `X-Nexus-Output-Key`), compares the stored bytes with what the same
//! handler (`guests/src/functions/wordcount.rs`, which the nexus-io `wordcount` runs) gives
//! on the host, then restores the VM's identity as the VMM does after a snapshot restore (a
//! new generation record with a new address, written while the vCPU is stopped) and checks
//! the guest's reaction: it answers at the new address, in the new generation, with its
//! pooled store connection counted as a reconnect.
//!
//! Needs root (a network namespace, a tap), `/dev/net/tun`, `/dev/kvm` and `ip` (iproute2):
//! without them it fails saying what is missing (it never passes by skipping). Every thread
//! and process it starts is bounded in time and stopped on drop.

#![cfg(target_arch = "x86_64")]

extern crate alloc;

#[path = "../../nexus-net/tests/common/netns.rs"]
mod netns;

#[path = "../../../guests/src/functions/aes.rs"]
mod aes_function;
#[path = "../../../guests/src/functions/compress.rs"]
mod compress;
#[path = "../../../guests/src/functions/fibonacci.rs"]
mod fibonacci;
/// The handlers of the bundled functions (`guests/src/functions/`), built here for the host:
/// what the `*-net` guests give must be byte for byte what they give.
#[path = "../../../guests/src/functions/wordcount.rs"]
mod wordcount;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use netns::NetNs;
use nexus_guest::function::{FunctionError, Output};
use nexus_guest::function::{Invocation, ObjectIo};
use nexus_guest::{Error, ListPage, ObjectInfo};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{Generation, MicroVm, MicroVmConfig, write_generation};
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_kvm::vcpu::VcpuHandle;
use nexus_kvm::vm::Vm;
use nexus_net::{AttachedNet, NexusNet, NexusNetConfig, Tap};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const ACCESS_KEY: &str = "net-function-access";
const SECRET_KEY: &str = "net-function-secret-key";
const BUCKET: &str = "net-functions";
const TAP: &str = "nxfn0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// Where the "restored" VM lives.
const RESTORED_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);
const GUEST_MAC: [u8; 6] = [0x02, 0x4e, 0x58, 0, 0, 0x02];
const HTTP_PORT: u16 = 8080;
/// Longest the guest build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest the guest may take to listen, or to answer.
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);
const LISTENING: &str = "nexus-net-function: listening on";

fn missing(what: &str) -> ! {
    panic!("this test needs {what}; it cannot run here (it does not skip)")
}

/// Builds the `wordcount-net` micro-guest (the guests workspace, dev profile, this
/// workspace's target directory), killing cargo if it takes longer than [`BUILD_TIMEOUT`].
fn build_guest(bin: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--quiet", "--manifest-path", "guests/Cargo.toml"])
        .args(["--bin", bin, "--target-dir"])
        .arg(&target)
        .stdin(Stdio::null());
    // What cargo set for this test is not the guests' build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let set_by_cargo = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name.as_str(),
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_by_cargo {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("cargo runs");
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building {bin} took longer than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "building {bin} failed: {status}");
    target.join("debug").join(bin)
}

/// Serves `root` as an S3 endpoint on `HOST_IP` (in the namespace of the calling thread);
/// returns the runtime running it and the port.
fn start_s3(root: &Path) -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root).unwrap());
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((HOST_IP, 0)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (runtime, port)
}

/// An answer of the guest's server.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `stream` (kept alive) and reads the answer (`Content-Length`
/// framed, as the guest's server answers).
fn request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {GUEST_IP}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).expect("the guest answers in time");
        assert!(n > 0, "the guest closed the connection");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("a Content-Length");
    let mut body = bytes[end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).expect("the guest sends its body");
        assert!(n > 0, "the guest closed the connection mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "nothing after the body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Objects on the heap: the host's I/O for the handler.
#[derive(Default)]
struct MemStore(HashMap<String, Vec<u8>>);

impl ObjectIo for MemStore {
    type Buf = Vec<u8>;

    fn alloc(&self, capacity: usize) -> nexus_guest::Result<Vec<u8>> {
        Ok(Vec::with_capacity(capacity))
    }

    fn get(&mut self, key: &str) -> nexus_guest::Result<Vec<u8>> {
        self.0
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    fn get_range(&mut self, key: &str, offset: u64, len: usize) -> nexus_guest::Result<Vec<u8>> {
        let object = self.get(key)?;
        let start = (offset as usize).min(object.len());
        Ok(object[start..(start + len).min(object.len())].to_vec())
    }

    fn get_into(&mut self, key: &str, offset: u64, buf: &mut Vec<u8>) -> nexus_guest::Result<u64> {
        let object = self.get(key)?;
        let capacity = buf.capacity();
        let start = (offset as usize).min(object.len());
        buf.clear();
        buf.extend_from_slice(&object[start..(start + capacity).min(object.len())]);
        Ok(object.len() as u64)
    }

    fn put(&mut self, key: &str, data: &[u8]) -> nexus_guest::Result<()> {
        self.0.insert(key.to_string(), data.to_vec());
        Ok(())
    }

    fn put_buf(&mut self, key: &str, buf: &Vec<u8>) -> nexus_guest::Result<()> {
        self.put(key, buf)
    }

    fn head(&mut self, key: &str) -> nexus_guest::Result<ObjectInfo> {
        let size = self.get(key)?.len() as u64;
        Ok(ObjectInfo {
            key: String::new(),
            size,
            last_modified_ms: 0,
            etag: String::new(),
        })
    }

    fn delete(&mut self, key: &str) -> nexus_guest::Result<()> {
        self.0.remove(key);
        Ok(())
    }

    fn list(&mut self, _prefix: &str, _token: Option<&[u8]>) -> nexus_guest::Result<ListPage> {
        Err(Error::InvalidRequest(
            "no listing in this store".to_string(),
        ))
    }
}

/// A handler of the bundled functions, on the host's `Vec<u8>` path.
type Handler = fn(&mut MemStore, Invocation<Vec<u8>>) -> Result<Output<Vec<u8>>, FunctionError>;

/// What the wordcount handler gives for `input` on the host.
fn wordcount_on_the_host(input: &[u8]) -> Vec<u8> {
    on_the_host(wordcount::wordcount, input)
}

/// What `handler` gives for `input` on the host.
fn on_the_host(handler: Handler, input: &[u8]) -> Vec<u8> {
    let mut store = MemStore::default();
    let invocation = Invocation {
        number: 1,
        deadline_ms: 0,
        async_durability: false,
        function: "wordcount".to_string(),
        request_id: String::new(),
        output_key: None,
        input: input.to_vec(),
    };
    let output = handler(&mut store, invocation).unwrap();
    output.as_bytes().to_vec()
}

fn sample_text(words: usize) -> String {
    let vocabulary = ["nexus", "net", "baseline\n", "smoltcp", "tap\t", "s3s"];
    (0..words)
        .map(|i| vocabulary[i % vocabulary.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connects to the guest's server from the namespace, retrying until it accepts.
fn connect(ns: &NetNs, address: Ipv4Addr) -> Result<TcpStream, String> {
    ns.run(move || {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        loop {
            match TcpStream::connect_timeout(&(address, HTTP_PORT).into(), Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
                    stream.set_write_timeout(Some(GUEST_TIMEOUT)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    return Ok(stream);
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "the guest's server at {address}:{HTTP_PORT} does not accept: {e}"
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// Fails the test unless the machine can run it.
fn require_root_and_kvm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing("root (a network namespace and a tap need CAP_NET_ADMIN)");
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        missing("/dev/kvm, readable and writable");
    }
}

/// A `*-net` micro-guest running in a namespace of its own, with the S3 server there. Fields
/// drop in order: the vCPU stops (kicked) before its VM goes, then the server, then the
/// namespace.
struct NetFunctionVm {
    running: Option<VcpuHandle>,
    vm: Vm,
    attached: AttachedNet,
    console: ConsoleBuffer,
    _s3: tokio::runtime::Runtime,
    bucket: PathBuf,
    _dir: tempfile::TempDir,
    ns: NetNs,
}

impl NetFunctionVm {
    /// Builds `bin`, starts the S3 server and boots the guest; returns once it listens.
    fn start(bin: &str) -> Self {
        require_root_and_kvm();
        let elf = std::fs::read(build_guest(bin)).unwrap();

        let ns = NetNs::new();
        let tap = ns
            .run(|| Tap::open(Some(TAP)))
            .unwrap_or_else(|e| panic!("cannot make tap {TAP}: {e:?}"));
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        let bucket = root.join(BUCKET);
        std::fs::create_dir_all(bucket.join("jobs")).unwrap();
        let (s3, s3_port) = ns.run(move || start_s3(&root));

        let console = ConsoleBuffer::default();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut args = vec![
            format!("net.ip={GUEST_IP}/24"),
            format!("net.gw={HOST_IP}"),
            format!("net.time_ms={now_ms}"),
            format!("s3.endpoint=http://{HOST_IP}:{s3_port}"),
            format!("s3.bucket={BUCKET}"),
            format!("s3.access_key={ACCESS_KEY}"),
            format!("s3.secret_key={SECRET_KEY}"),
            format!("http.port={HTTP_PORT}"),
        ];
        let config = |args: Vec<String>| MicroVmConfig {
            memory: MemoryConfig {
                ram_size: 128 << 20,
                window_size: 0,
            },
            args,
            device: None,
            net_device: Some(nexus_net::device_info()),
            console: Console::new(console.clone()),
        };
        // The guest's clock runs on the TSC: tell it the rate, as the node does.
        let probe = MicroVm::new(&elf, config(args.clone())).unwrap();
        if let Ok(khz) = probe.vcpu().fd().get_tsc_khz() {
            args.push(format!("net.tsc_khz={khz}"));
        }
        drop(probe);
        let vm = MicroVm::new(&elf, config(args)).unwrap();
        let device = NexusNet::new(NexusNetConfig {
            tap,
            mac: GUEST_MAC,
            memory: nexus_net::guest_ram(vm.vm().memory()).unwrap(),
        })
        .unwrap();
        let attached = nexus_net::attach(vm.vm(), device).unwrap();
        let (vm, vcpu, _loaded) = vm.into_parts();
        let running = vcpu.spawn(bin.to_string()).unwrap();

        let deadline = Instant::now() + GUEST_TIMEOUT;
        while !console.text().contains(LISTENING) {
            assert!(
                !running.is_finished(),
                "{bin} ended before listening; console:\n{}",
                console.text()
            );
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen within {GUEST_TIMEOUT:?}; console:\n{}",
                console.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            console
                .text()
                .contains(&format!("{LISTENING} {GUEST_IP}:{HTTP_PORT}")),
            "{}",
            console.text()
        );
        NetFunctionVm {
            running: Some(running),
            vm,
            attached,
            console,
            _s3: s3,
            bucket,
            _dir: dir,
            ns,
        }
    }

    /// A connection to the guest's server at `address`.
    fn connect(&self, address: Ipv4Addr) -> TcpStream {
        connect(&self.ns, address).unwrap_or_else(|e| {
            panic!(
                "{e} (vCPU running: {}, device: {:?}); console:\n{}",
                self.running.as_ref().is_some_and(|r| !r.is_finished()),
                self.attached.stats.snapshot(),
                self.console.text()
            )
        })
    }

    /// Stops the vCPU, writes `generation` as the VMM does after a restore, runs it again.
    fn restore_as(&mut self, generation: &Generation) {
        let running = self.running.take().expect("a running vCPU");
        let (vcpu, stopped) = running.stop().unwrap();
        assert!(stopped.is_ok(), "the vCPU stopped cleanly: {stopped:?}");
        write_generation(self.vm.memory().guest(), generation).unwrap();
        // The stop asked for stays set on the vCPU: clear it to run it again.
        vcpu.stop_flag()
            .store(false, std::sync::atomic::Ordering::Release);
        self.running = Some(vcpu.spawn("restored".to_string()).unwrap());
    }

    /// POSTs an invocation reading `input` and storing at `output`; the stored bytes.
    fn invoke_stored(&self, stream: &mut TcpStream, input: &[u8]) -> Vec<u8> {
        std::fs::write(self.bucket.join("jobs/input"), input).unwrap();
        let answer = request(
            stream,
            "POST",
            "/invoke",
            &[
                ("X-Nexus-Input-Key", "jobs/input"),
                ("X-Nexus-Output-Key", "jobs/output"),
            ],
            b"",
        );
        assert_eq!(
            answer.status,
            200,
            "{answer:?}; console:\n{}",
            self.console.text()
        );
        assert_eq!(answer.header("X-Nexus-Function-Error"), None, "{answer:?}");
        let stored = std::fs::read(self.bucket.join("jobs/output")).unwrap();
        assert_eq!(
            answer.header("X-Nexus-Output-Len"),
            Some(stored.len().to_string().as_str())
        );
        stored
    }
}

#[test]
fn wordcount_net_in_a_micro_vm_over_a_tap_against_s3() {
    let mut guest = NetFunctionVm::start("wordcount-net");
    let bucket = guest.bucket.clone();
    let text = sample_text(30_000);
    std::fs::write(bucket.join("jobs/in.txt"), &text).unwrap();
    let console = guest.console.clone();

    let mut stream = guest.connect(GUEST_IP);
    let ready = request(&mut stream, "GET", "/ready", &[], b"");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.header("X-Nexus-Generation"), Some("0"));
    assert_eq!(ready.header("X-Nexus-Reconnects"), Some("0"));
    assert_eq!(ready.header("Connection"), Some("keep-alive"));

    // Input and output in the store.
    let invoked = request(
        &mut stream,
        "POST",
        "/invoke",
        &[
            ("X-Nexus-Request-Id", "r-1"),
            ("X-Nexus-Input-Key", "jobs/in.txt"),
            ("X-Nexus-Output-Key", "jobs/out.txt"),
        ],
        b"",
    );
    assert_eq!(
        invoked.status,
        200,
        "{invoked:?}; console:\n{}",
        console.text()
    );
    assert_eq!(
        invoked.header("X-Nexus-Function-Error"),
        None,
        "{invoked:?}"
    );
    assert!(invoked.body.is_empty(), "{invoked:?}");
    // Read back independently: s3s-fs keeps objects as files under its root.
    let stored = std::fs::read(bucket.join("jobs/out.txt")).unwrap();
    let expected = wordcount_on_the_host(text.as_bytes());
    assert_eq!(stored, expected, "byte for byte the handler's result");
    let words = text.split_ascii_whitespace().count();
    assert_eq!(stored, format!("{words}\n").into_bytes());
    assert_eq!(
        invoked.header("X-Nexus-Output-Len"),
        Some(stored.len().to_string().as_str())
    );

    // Inline input, the result in the answer, on the same kept-alive connection.
    let inline = request(
        &mut stream,
        "POST",
        "/invoke",
        &[("X-Nexus-Request-Id", "")],
        b"one two  three\nfour",
    );
    assert_eq!(inline.status, 200, "{inline:?}");
    assert_eq!(inline.body, wordcount_on_the_host(b"one two  three\nfour"));
    assert_eq!(inline.body, b"4\n");

    // A missing input object: 404, one line.
    let missing_input = request(
        &mut stream,
        "POST",
        "/invoke",
        &[("X-Nexus-Input-Key", "jobs/nothing-here")],
        b"",
    );
    assert_eq!(missing_input.status, 404, "{missing_input:?}");
    assert_eq!(
        String::from_utf8_lossy(&missing_input.body).lines().count(),
        1
    );
    assert_eq!(missing_input.header("X-Nexus-Reconnects"), Some("0"));
    drop(stream);

    // A restore, as the VMM does it: the vCPU stopped, a new generation record with a new
    // address written, the vCPU run again.
    guest.restore_as(&Generation {
        generation: 1,
        seed: nexus_kvm::micro::fresh_seed().unwrap(),
        address: Some((RESTORED_IP, 24)),
        gateway: Some(HOST_IP),
    });
    let mut stream = guest.connect(RESTORED_IP);
    std::fs::write(bucket.join("jobs/in2.txt"), "restored and counted").unwrap();
    let after = request(
        &mut stream,
        "POST",
        "/invoke",
        &[
            ("X-Nexus-Input-Key", "jobs/in2.txt"),
            ("X-Nexus-Output-Key", "jobs/out2.txt"),
        ],
        b"",
    );
    assert_eq!(after.status, 200, "{after:?}; console:\n{}", console.text());
    assert_eq!(after.header("X-Nexus-Generation"), Some("1"));
    // The store connection of generation 0 was dropped and counted.
    assert_eq!(after.header("X-Nexus-Reconnects"), Some("1"));
    assert_eq!(
        std::fs::read(bucket.join("jobs/out2.txt")).unwrap(),
        wordcount_on_the_host(b"restored and counted")
    );
    // The old address is gone.
    let old = guest
        .ns
        .run(|| TcpStream::connect_timeout(&(GUEST_IP, HTTP_PORT).into(), Duration::from_secs(1)));
    assert!(old.is_err(), "the guest still answers at its old address");

    assert!(
        guest.attached.stats.snapshot().rx_frames > 0,
        "frames went through the device"
    );
    drop(stream);
}

#[test]
fn compress_aes_and_fibonacci_net_give_their_twins_bytes() {
    let text = sample_text(50_000);
    let cases: [(&str, Handler, Vec<u8>); 3] = [
        ("compress-net", compress::deflate, text.clone().into_bytes()),
        ("aes-net", aes_function::encrypt, text.clone().into_bytes()),
        ("fibonacci-net", fibonacci::fibonacci, b" 25\n".to_vec()),
    ];
    for (bin, handler, input) in cases {
        let guest = NetFunctionVm::start(bin);
        let mut stream = guest.connect(GUEST_IP);
        let stored = guest.invoke_stored(&mut stream, &input);
        assert_eq!(stored, on_the_host(handler, &input), "{bin}");
        // Checked independently of the handler too.
        match bin {
            "compress-net" => assert_eq!(
                miniz_oxide::inflate::decompress_to_vec_zlib(&stored).unwrap(),
                input
            ),
            "aes-net" => {
                use aes::cipher::{KeyIvInit, StreamCipher};
                let key: [u8; 16] = core::array::from_fn(|i| i as u8);
                let mut data = stored.clone();
                ctr::Ctr128BE::<aes::Aes128>::new(&key.into(), b"nexus-aes-demo!!".into())
                    .apply_keystream(&mut data);
                assert_eq!(data, input);
            }
            _ => assert_eq!(stored, b"fib(25) = 75025\n"),
        }
        // A function error: 200, flagged, the error document.
        if bin == "fibonacci-net" {
            let failed = request(&mut stream, "POST", "/invoke", &[], b"ninety");
            assert_eq!(failed.status, 200, "{failed:?}");
            assert_eq!(failed.header("X-Nexus-Function-Error"), Some("Unhandled"));
            let document = String::from_utf8(failed.body).unwrap();
            assert!(document.starts_with("{\"error\":"), "{document}");
        }
    }
}
