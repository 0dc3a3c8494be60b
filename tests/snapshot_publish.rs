//! Published snapshots through a real `nexus-backend`, over the file store and over an S3
//! server (`nexus-load s3-server`, s3s-fs): `snapshot_put` and `snapshot_get` round trip
//! bytes under `nexus-system/snapshots/`, a create-only put (the manifest's) is refused
//! `exists` the second time, and a tenant cannot read or write the system prefix, not even
//! one with the empty prefix. Then nodes (`nexus-vmm serve`) over one backend: one
//! publishes, one with the same key restores the published snapshot without booting, one
//! with another key refuses it and takes its own (and does not publish over the first).

mod common;
#[path = "agent/node.rs"]
mod node;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, finish, spawn, store_url};
use nexus_ring::control::{ControlLine, ControlReply, ControlRequest, encode_request};

/// A control connection speaking raw lines.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Control {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends `request` (and `payload` after it): the reply and the bytes after it.
    fn call(&mut self, request: &ControlRequest, payload: &[u8]) -> (ControlReply, Vec<u8>) {
        self.writer
            .write_all(&encode_request(request, None))
            .unwrap();
        self.writer.write_all(payload).unwrap();
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        let ControlLine::Reply(reply) = ControlLine::parse(line.trim_ascii_end()).unwrap() else {
            panic!("an event: {}", String::from_utf8_lossy(&line))
        };
        let mut bytes = vec![0; reply.output_len.filter(|_| reply.binary()).unwrap_or(0) as usize];
        self.reader.read_exact(&mut bytes).unwrap();
        (reply, bytes)
    }

    fn put(&mut self, function: &str, name: &str, bytes: &[u8], create: bool) -> ControlReply {
        self.call(
            &ControlRequest::SnapshotPut {
                function: function.into(),
                identity: "0123abcd".into(),
                name: name.into(),
                len: bytes.len() as u64,
                create: create.then_some(true),
            },
            bytes,
        )
        .0
    }

    fn get(&mut self, function: &str, name: &str) -> (ControlReply, Vec<u8>) {
        self.call(
            &ControlRequest::SnapshotGet {
                function: function.into(),
                identity: "0123abcd".into(),
                name: name.into(),
            },
            &[],
        )
    }
}

/// The round trip and the refusals, against `backend`; `object` is where the store keeps
/// an object of a key.
fn round_trip(backend: &Backend, object: &dyn Fn(&str) -> std::path::PathBuf) {
    let mut control = Control::connect(&backend.socket);
    // Binary bytes, larger than a line, with zeros and newlines.
    let state: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let reply = control.put("wc", "vm.state.abc", &state, false);
    assert!(reply.ok, "{reply:?}\n{}", backend.log());
    let (reply, bytes) = control.get("wc", "vm.state.abc");
    assert!(reply.ok && reply.binary(), "{reply:?}");
    assert_eq!(bytes, state);
    assert_eq!(
        std::fs::read(object("nexus-system/snapshots/wc/0123abcd/vm.state.abc")).unwrap(),
        state
    );
    // The manifest: the first create wins, the second is refused and changes nothing.
    assert!(control.put("wc", "manifest", b"first", true).ok);
    let second = control.put("wc", "manifest", b"second", true);
    assert!(!second.ok);
    assert_eq!(
        second.code.map(|c| c.as_str()),
        Some("exists"),
        "{second:?}"
    );
    assert_eq!(control.get("wc", "manifest").1, b"first");
    // What is not there, and names that are not segments.
    let (missing, _) = control.get("wc", "nothing");
    assert_eq!(
        missing.code.map(|c| c.as_str()),
        Some("not_found"),
        "{missing:?}"
    );
    for bad in ["../x", "a/b", "", ".."] {
        let reply = control.put("wc", bad, b"x", false);
        assert_eq!(
            reply.code.map(|c| c.as_str()),
            Some("invalid"),
            "{bad}: {reply:?}"
        );
        let (reply, _) = control.get(bad, "manifest");
        assert_eq!(
            reply.code.map(|c| c.as_str()),
            Some("invalid"),
            "{bad}: {reply:?}"
        );
    }
    // The connection is still in step.
    assert_eq!(control.get("wc", "manifest").1, b"first");
}

/// A guest of the backend's one (empty-prefix) tenant cannot read or write the system
/// prefix.
/// `nexus-vmm run` of `wordcount` over `backend`, from `input` to `output`.
fn run_wordcount(backend: &Backend, input: &str, output: &str, what: &str) -> common::Run {
    finish(
        spawn(&[
            "run",
            "--guest",
            "wordcount",
            "--backend",
            backend.socket(),
            "--",
            input,
            output,
        ]),
        backend,
        what,
    )
}

fn tenant_cannot_reach_the_system_prefix(backend: &Backend, exists: &dyn Fn(&str) -> bool) {
    let read = ["nexus-system/snapshots/wc/0123abcd/manifest", "out/stolen"];
    let run = run_wordcount(
        backend,
        read[0],
        read[1],
        "wordcount reading the system prefix",
    );
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(!exists(read[1]));
    let written = "nexus-system/snapshots/wc/0123abcd/evil";
    let run = run_wordcount(
        backend,
        "in.txt",
        written,
        "wordcount writing the system prefix",
    );
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(!exists(written), "a guest wrote {written}");
    // The same guest may read and write its own keys (the refusals above are the prefix's).
    let run = run_wordcount(backend, "in.txt", "out/count", "wordcount");
    assert!(
        run.status.success(),
        "{}{}\n{}",
        run.stdout,
        run.stderr,
        backend.log()
    );
    assert!(exists("out/count"));
}

#[test]
fn publish_and_fetch_over_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("in.txt"), "one two three").unwrap();
    let backend = Backend::start(dir.path(), &store_url(&store), &[]);
    let object = |key: &str| store.join(key);
    round_trip(&backend, &object);
    tenant_cannot_reach_the_system_prefix(&backend, &|key| store.join(key).exists());
}

/// `nexus-load s3-server`, killed on drop.
struct S3Server {
    child: Child,
    address: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ACCESS_KEY: &str = "nexus-test";
const SECRET_KEY: &str = "nexus-test-secret";
const BUCKET: &str = "nexus";

fn s3_server(root: &Path) -> S3Server {
    let load = nexus::guests::workspace_example("nexus-load").unwrap();
    let mut child = Command::new(load)
        .args(["s3-server", "--root"])
        .arg(root)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.contains("listening on ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "s3-server ended");
        assert!(Instant::now() < deadline);
    }
    let address = line.trim().rsplit(' ').next().unwrap().to_owned();
    S3Server { child, address }
}

#[test]
fn publish_and_fetch_over_s3() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    let bucket = root.join(BUCKET);
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("in.txt"), "one two three").unwrap();
    let server = s3_server(&root);
    let backend = Backend::start_with_env(
        dir.path(),
        vec![
            "--store".into(),
            format!("s3://{BUCKET}"),
            "--s3-endpoint".into(),
            format!("http://{}", server.address),
            "--s3-region".into(),
            "us-east-1".into(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ],
    );
    let object = |key: &str| bucket.join(key);
    round_trip(&backend, &object);
    tenant_cannot_reach_the_system_prefix(&backend, &|key| bucket.join(key).exists());
}

/// The sum of a node's series `series` (full name with labels).
fn metric(node: &node::AgentNode, series: &str) -> f64 {
    let answer = node.request("GET", "/metrics", "");
    assert_eq!(answer.status, 200);
    answer
        .body
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l[series.len()..].trim().parse::<f64>().ok())
        .sum()
}

fn snapshot_events(node: &node::AgentNode, how: &str) -> f64 {
    metric(
        node,
        &format!("nexus_snapshot_events_total{{function=\"wc\",how=\"{how}\"}}"),
    )
}

/// One invocation of `wc` that must count 3 words.
fn count(node: &node::AgentNode) {
    let answer = node.request(
        "POST",
        "/v1/functions/wc/invocations",
        r#"{"input":"one two three"}"#,
    );
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, node.log());
    assert_eq!(answer.json()["output"].as_str().map(str::trim), Some("3"));
}

#[test]
fn nodes_restore_what_another_node_published_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backend = Backend::local(dir.path(), &store);
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let other_key = dir.path().join("other-key");
    std::fs::write(&other_key, "an entirely different key").unwrap();
    let functions = [("wc", node::function("wordcount", ""))];
    let start = |name: &str, key: &Path, publish: bool| {
        let node_dir = dir.path().join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let mut args = vec![
            "--node-name",
            name,
            "--snapshot-key-file",
            key.to_str().unwrap(),
        ];
        if publish {
            args.push("--publish-snapshots");
        }
        let node = node::AgentNode::start(&node_dir, &backend.socket, &functions, &args);
        node.wait_listening(Duration::from_secs(60));
        node
    };

    // The first node boots, snapshots and publishes.
    let first = start("first", &key, true);
    count(&first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot_events(&first, "published") < 1.0 {
        assert!(Instant::now() < deadline, "not published:\n{}", first.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(snapshot_events(&first, "taken"), 1.0);
    assert_eq!(snapshot_events(&first, "fetch_missing"), 1.0);
    let published = store.join("nexus-system/snapshots/wc");
    assert!(published.is_dir());

    // Same key: the published snapshot, no boot.
    let second = start("second", &key, true);
    count(&second);
    count(&second);
    assert_eq!(snapshot_events(&second, "fetched"), 1.0, "{}", second.log());
    assert_eq!(snapshot_events(&second, "taken"), 0.0);
    assert_eq!(
        metric(
            &second,
            "nexus_vm_starts_total{function=\"wc\",how=\"boot\"}"
        ),
        0.0
    );

    // Another key: refused, its own snapshot taken, and the first manifest stays.
    let manifest = std::fs::read_dir(&published)
        .unwrap()
        .flatten()
        .map(|identity| identity.path().join("manifest"))
        .next()
        .unwrap();
    let before = std::fs::read(&manifest).unwrap();
    let third = start("third", &other_key, true);
    count(&third);
    assert_eq!(
        snapshot_events(&third, "refused_hmac"),
        1.0,
        "{}",
        third.log()
    );
    assert_eq!(snapshot_events(&third, "taken"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot_events(&third, "publish_exists") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no publish attempt:\n{}",
            third.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(&manifest).unwrap(), before);

    // A tampered file is refused by its hash, and the node boots. The third node's refused
    // attempt left its own content-addressed files beside the published ones: tamper with
    // every state file, whichever the manifest names.
    let objects: Vec<_> = std::fs::read_dir(manifest.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("vm.state.")
        })
        .collect();
    assert!(!objects.is_empty(), "no published state file");
    for object in objects {
        let mut bytes = std::fs::read(&object).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&object, bytes).unwrap();
    }
    let fourth = start("fourth", &key, false);
    count(&fourth);
    assert_eq!(
        snapshot_events(&fourth, "refused_hash"),
        1.0,
        "{}",
        fourth.log()
    );
    assert_eq!(snapshot_events(&fourth, "taken"), 1.0);
}
