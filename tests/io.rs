//! I/O offload end to end: real `nexus-backend` processes, real `nexus-vmm` processes running
//! micro-guest functions on /dev/kvm, a local store and a real S3-compatible server on
//! loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Backend, Run, finish, nexus_vmm, spawn, store_url};

/// Runs a micro-guest through `nexus-vmm run --backend`, bounded by [`common::RUN_TIMEOUT`].
fn run_guest(backend: &Backend, tenant: Option<&str>, guest: &str, args: &[&str]) -> Run {
    let mut command = vec!["run", "--guest", guest, "--backend", backend.socket()];
    if let Some(tenant) = tenant {
        command.extend(["--tenant", tenant]);
    }
    command.push("--");
    command.extend_from_slice(args);
    finish(spawn(&command), backend, &command.join(" "))
}

fn sample_text(words: usize) -> String {
    let vocabulary = [
        "nexus",
        "moves",
        "the",
        "fabric",
        "out of",
        "guest",
        "zero-copy\n",
        "window",
    ];
    (0..words)
        .map(|i| vocabulary[i % vocabulary.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn word_count(text: &[u8]) -> usize {
    text.split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .count()
}

#[test]
fn wordcount_compress_and_aes_against_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let text = sample_text(10_000);
    std::fs::write(store.join("in.txt"), &text).unwrap();
    let backend = Backend::start(dir.path(), &store_url(&store), &[]);

    let run = run_guest(&backend, None, "wordcount", &["in.txt", "out.txt"]);
    assert!(run.status.success());
    let expected = word_count(text.as_bytes());
    assert_eq!(
        std::fs::read_to_string(store.join("out.txt")).unwrap(),
        format!("{expected}\n")
    );
    assert!(run.stdout.contains(&format!("words: {expected}")));

    let run = run_guest(&backend, None, "compress", &["in.txt", "in.txt.z"]);
    assert!(run.status.success());
    let compressed = std::fs::read(store.join("in.txt.z")).unwrap();
    assert!(
        compressed.len() < text.len() / 4,
        "compressed to {} bytes",
        compressed.len()
    );
    let inflated = miniz_oxide::inflate::decompress_to_vec_zlib(&compressed).unwrap();
    assert_eq!(inflated, text.as_bytes());

    let run = run_guest(&backend, None, "aes", &["in.txt", "in.txt.aes"]);
    assert!(run.status.success());
    let mut data = std::fs::read(store.join("in.txt.aes")).unwrap();
    assert_ne!(data, text.as_bytes());
    use ctr::cipher::{KeyIvInit, StreamCipher};
    let key: [u8; 16] = core::array::from_fn(|i| i as u8);
    let mut cipher = ctr::Ctr128BE::<aes::Aes128>::new(&key.into(), b"nexus-aes-demo!!".into());
    cipher.apply_keystream(&mut data);
    assert_eq!(data, text.as_bytes());

    // A missing input is an error that names it, and nothing is written.
    let run = run_guest(&backend, None, "wordcount", &["missing.txt", "never.txt"]);
    assert!(!run.status.success());
    assert!(
        run.stdout.to_lowercase().contains("not found"),
        "{}",
        run.stdout
    );
    assert!(!store.join("never.txt").exists());
}

#[test]
fn objects_from_empty_to_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backend = Backend::start(dir.path(), &store_url(&store), &[]);
    for size in [0usize, 1, 4096, 1 << 20, 64 << 20] {
        let mut data = sample_text(size / 5 + 1).into_bytes();
        data.truncate(size);
        let name = format!("obj-{size}");
        std::fs::write(store.join(&name), &data).unwrap();
        let out = format!("{name}.count");
        let run = run_guest(&backend, None, "wordcount", &[&name, &out]);
        assert!(run.status.success(), "size {size}");
        assert_eq!(
            std::fs::read_to_string(store.join(&out)).unwrap(),
            format!("{}\n", word_count(&data)),
            "size {size}"
        );
        // And back the other way: a PUT of the same size (aes output has the input's length).
        let enc = format!("{name}.aes");
        let run = run_guest(&backend, None, "aes", &[&name, &enc]);
        assert!(run.status.success(), "size {size}");
        assert_eq!(
            std::fs::metadata(store.join(&enc)).unwrap().len(),
            size as u64
        );
    }
}

#[test]
fn hostile_guest_beside_a_well_behaved_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let text = sample_text(50_000);
    std::fs::write(store.join("in.txt"), &text).unwrap();
    let backend = Backend::start(dir.path(), &store_url(&store), &[]);
    std::thread::scope(|s| {
        let hostile = s.spawn(|| run_guest(&backend, None, "hostile", &["hostile/probe"]));
        let mut good = Vec::new();
        for i in 0..3 {
            let out = format!("out-{i}.txt");
            let run = run_guest(&backend, None, "wordcount", &["in.txt", &out]);
            good.push((run, out));
        }
        let hostile = hostile.join().unwrap();
        assert!(hostile.status.success(), "hostile: {}", hostile.stdout);
        for (run, out) in good {
            assert!(run.status.success());
            let count = std::fs::read_to_string(store.join(out)).unwrap();
            assert_eq!(count, format!("{}\n", word_count(text.as_bytes())));
        }
    });
    // The backend survived it all and still serves.
    let run = run_guest(&backend, None, "wordcount", &["in.txt", "after.txt"]);
    assert!(run.status.success());
}

#[test]
fn tenants_cannot_read_each_others_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for t in ["alice", "bob"] {
        std::fs::create_dir_all(store.join(t)).unwrap();
        std::fs::write(store.join(t).join("in.txt"), format!("{t} has four words")).unwrap();
    }
    let backend = Backend::start(
        dir.path(),
        &store_url(&store),
        &["--tenant", "alice=alice/", "--tenant", "bob=bob/"],
    );
    let run = run_guest(
        &backend,
        Some("alice"),
        "wordcount",
        &["alice/in.txt", "alice/out.txt"],
    );
    assert!(run.status.success());
    assert_eq!(
        std::fs::read_to_string(store.join("alice/out.txt")).unwrap(),
        "4\n"
    );

    let run = run_guest(
        &backend,
        Some("alice"),
        "wordcount",
        &["bob/in.txt", "alice/stolen.txt"],
    );
    assert!(!run.status.success());
    assert!(
        run.stdout.to_lowercase().contains("permission denied"),
        "{}",
        run.stdout
    );
    let run = run_guest(
        &backend,
        Some("bob"),
        "wordcount",
        &["bob/in.txt", "alice/planted.txt"],
    );
    assert!(!run.status.success());
    assert!(
        run.stdout.to_lowercase().contains("permission denied"),
        "{}",
        run.stdout
    );
    assert!(!store.join("alice/stolen.txt").exists());
    assert!(!store.join("alice/planted.txt").exists());

    // An unknown tenant is refused when the device attaches.
    let run = run_guest(&backend, Some("mallory"), "wordcount", &["bob/in.txt", "x"]);
    assert!(!run.status.success());
}

#[test]
fn backend_restart_fails_requests_then_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // Large enough that the backend is often mid-GET when it is killed.
    std::fs::write(store.join("big"), vec![b'x'; 8 << 20]).unwrap();
    let mut backend = Backend::start(dir.path(), &store_url(&store), &[]);

    let mut child = Command::new(nexus_vmm())
        .args([
            "run",
            "--guest",
            "getloop",
            "--backend",
            backend.socket.to_str().unwrap(),
        ])
        .args(["--", "big", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("getloop | {line}");
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str, within: Duration| -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((at, line)) if line.contains(what) => return at,
                Ok(_) => continue,
                Err(_) => panic!("no {what:?} from the guest within {within:?}"),
            }
        }
    };
    wait_for("get ok", Duration::from_secs(60));
    let killed = Instant::now();
    backend.kill();
    let failed = wait_for("get failed", Duration::from_secs(10));
    let detected = failed.saturating_duration_since(killed);
    eprintln!("backend loss seen by the guest after {detected:?}");
    assert!(detected < Duration::from_secs(2), "took {detected:?}");
    assert!(
        std::fs::read_to_string(&backend.log).is_ok(),
        "the backend log stays readable"
    );
    backend.restart();
    wait_for("recovered", Duration::from_secs(60));
    let status = child.wait().unwrap();
    assert!(status.success());
}

mod s3 {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    const ACCESS_KEY: &str = "nexus-e2e-access";
    const SECRET_KEY: &str = "nexus-e2e-secret-key";
    const BUCKET: &str = "functions";

    /// An S3-compatible server (s3s-fs) over `root` on 127.0.0.1; returns it and its port.
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
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
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

    #[test]
    fn functions_against_an_s3_compatible_server() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        let bucket = root.join(BUCKET);
        std::fs::create_dir_all(bucket.join("jobs")).unwrap();
        let (_server, port) = start_s3(&root);
        let text = sample_text(20_000);
        std::fs::write(bucket.join("jobs/in.txt"), &text).unwrap();
        std::fs::write(bucket.join("jobs/empty"), b"").unwrap();
        let backend = Backend::start_with_env(
            dir.path(),
            vec![
                "--store".into(),
                format!("s3://{BUCKET}"),
                "--s3-endpoint".into(),
                format!("http://127.0.0.1:{port}"),
                "--s3-region".into(),
                "us-east-1".into(),
                "--s3-allow-http".into(),
            ],
            &[
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ],
        );
        let run = run_guest(
            &backend,
            None,
            "wordcount",
            &["jobs/in.txt", "jobs/out.txt"],
        );
        assert!(run.status.success(), "backend log:\n{}", backend.log());
        // Read back independently: s3s-fs keeps objects as files under its root.
        let count = std::fs::read_to_string(bucket.join("jobs/out.txt")).unwrap();
        assert_eq!(count, format!("{}\n", word_count(text.as_bytes())));

        let run = run_guest(
            &backend,
            None,
            "compress",
            &["jobs/in.txt", "jobs/in.txt.z"],
        );
        assert!(run.status.success());
        let compressed = std::fs::read(bucket.join("jobs/in.txt.z")).unwrap();
        assert_eq!(
            miniz_oxide::inflate::decompress_to_vec_zlib(&compressed).unwrap(),
            text.as_bytes()
        );

        let run = run_guest(
            &backend,
            None,
            "wordcount",
            &["jobs/empty", "jobs/empty.count"],
        );
        assert!(run.status.success());
        assert_eq!(
            std::fs::read_to_string(bucket.join("jobs/empty.count")).unwrap(),
            "0\n"
        );
    }
}
