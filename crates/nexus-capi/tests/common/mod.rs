// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test harness: a real `nexus-backend` over a file store (killed on drop, its log in the
//! test's temporary directory), libnexus installed as `libnexus.so.0` + `libnexus.so` in a
//! directory of its own, and programs run with a deadline.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long anything may take.
pub const WAIT: Duration = Duration::from_secs(60);
/// The tenant the tests attach to.
pub const TENANT: &str = "alpha";
/// Its keys: every key the tenant may touch starts with this.
pub const TENANT_PREFIX: &str = "alpha";

/// The workspace's target directory and this test's profile directory (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds `cargo build -p <package> <selector>` into this test's target directory and
/// profile.
fn cargo_build(package: &str, selector: &[&str]) {
    let profile_dir = profile_dir();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let cargo_profile = if profile == "debug" { "dev" } else { &profile };
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_dir())
        .args(["build", "--quiet", "-p", package])
        .args(selector)
        .args(["--profile", cargo_profile, "--target-dir"])
        .arg(profile_dir.parent().unwrap())
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo build -p {package} {selector:?} failed"
    );
}

/// The `nexus-backend` binary, built now (so it is never stale).
pub fn backend_binary() -> PathBuf {
    cargo_build("nexus-backend", &["--bin", "nexus-backend"]);
    profile_dir().join("nexus-backend")
}

/// libnexus built now and installed in `dir` the way a system would: the file under its
/// soname, `libnexus.so.0`, and the link-time name `libnexus.so` pointing at it.
pub fn install_library(dir: &Path) -> PathBuf {
    cargo_build("nexus-capi", &["--lib"]);
    let built = profile_dir().join("libnexus_capi.so");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&built, dir.join("libnexus.so.0")).unwrap();
    std::os::unix::fs::symlink("libnexus.so.0", dir.join("libnexus.so")).unwrap();
    dir.join("libnexus.so.0")
}

/// The header's directory.
pub fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// A real backend serving the file store `<dir>/objects` to tenant `alpha`.
pub struct Backend {
    child: Child,
    /// Its control socket.
    pub control: PathBuf,
    /// The store's root directory.
    pub objects: PathBuf,
    log: PathBuf,
}

impl Backend {
    pub fn start(dir: &Path) -> Self {
        let binary = backend_binary();
        let control = dir.join("control.sock");
        let objects = dir.join("objects");
        let log = dir.join("backend.log");
        std::fs::create_dir_all(&objects).unwrap();
        let child = Command::new(binary)
            .arg("--listen")
            .arg(&control)
            .arg("--store")
            .arg(format!("file://{}", objects.display()))
            .arg("--tenant")
            .arg(format!("{TENANT}={TENANT_PREFIX}"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start nexus-backend");
        let backend = Self {
            child,
            control,
            objects,
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&backend.control).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "the backend did not start:\n{}",
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// The backend's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where object `key` (a full key, starting with the tenant's prefix) lives in the store.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.objects.join(key)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("NEXUS_TEST_LOG").is_some() {
            eprintln!("--- backend log ---\n{}", self.log());
        }
    }
}

/// What a program run with [`run`] did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the program's output unless it exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `command` to completion with its output in files under `dir`, killed after
/// `timeout`.
pub fn run(mut command: Command, dir: &Path, name: &str, timeout: Duration) -> Run {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} ran longer than {timeout:?}:\n{}\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}
