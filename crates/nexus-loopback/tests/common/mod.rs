// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test harness: the real `nexus-backend` binary over a file store, in a temporary
//! directory, killed on drop (its log printed when a test fails).

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nexus_loopback::{Loopback, LoopbackConfig};

/// How long the backend may take to start.
const START: Duration = Duration::from_secs(20);

/// The target directory and profile directory this test runs from
/// (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// The `nexus-backend` binary: `NEXUS_BACKEND` if set, else built with cargo from this
/// workspace (same profile and target directory) once per test process.
pub fn backend_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("NEXUS_BACKEND") {
                return PathBuf::from(path);
            }
            let profile_dir = profile_dir();
            let target = profile_dir.parent().expect("target dir");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "dev".to_owned(),
                Some(other) => other.to_owned(),
                None => panic!("no profile in {}", profile_dir.display()),
            };
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&workspace)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "nexus-backend",
                    "--bin",
                    "nexus-backend",
                ])
                .arg("--profile")
                .arg(profile)
                .arg("--target-dir")
                .arg(target)
                .status()
                .expect("run cargo");
            assert!(status.success(), "cannot build nexus-backend: {status}");
            profile_dir.join("nexus-backend")
        })
        .clone()
}

/// The backend, running over a file store in a temporary directory.
pub struct Backend {
    child: Child,
    dir: tempfile::TempDir,
    /// The control socket.
    pub control: PathBuf,
    log: PathBuf,
}

impl Backend {
    /// Starts the backend with `--store file://<dir>/objects` and `--tenant` for each of
    /// `tenants` (`NAME=PREFIX`).
    pub fn start(tenants: &[&str]) -> Self {
        Self::start_with(tenants, None)
    }

    /// [`start`](Self::start), with `config` (TOML) as the backend's `--config` file if given.
    pub fn start_with(tenants: &[&str], config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let control = dir.path().join("control.sock");
        let log = dir.path().join("backend.log");
        let objects = dir.path().join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        let mut command = Command::new(backend_binary());
        command
            .arg("--listen")
            .arg(&control)
            .arg("--store")
            .arg(format!("file://{}", objects.display()));
        for tenant in tenants {
            command.arg("--tenant").arg(tenant);
        }
        if let Some(config) = config {
            let path = dir.path().join("backend.toml");
            std::fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        // SAFETY: the closure runs in the child between fork and exec and only makes one
        // async-signal-safe system call: the backend dies with the thread that started it
        // (the test's), even if the test process is killed before `Drop` runs.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start nexus-backend");
        let mut backend = Self {
            child,
            dir,
            control,
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&backend.control).is_err() {
            if let Some(status) = backend.child.try_wait().unwrap() {
                panic!("the backend exited ({status}):\n{}", backend.log());
            }
            assert!(
                start.elapsed() < START,
                "the backend did not start:\n{}",
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// The file store's directory.
    pub fn objects(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// The backend's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A loopback client attached as `vm_id` of `tenant`.
    pub fn connect(&self, vm_id: &str, tenant: &str) -> Loopback {
        match Loopback::connect(self.config(vm_id, tenant)) {
            Ok(client) => client,
            Err(e) => panic!(
                "connect {vm_id}: {}\n--- backend log ---\n{}",
                report(&e),
                self.log()
            ),
        }
    }

    /// The configuration of a client attached as `vm_id` of `tenant`.
    pub fn config(&self, vm_id: &str, tenant: &str) -> LoopbackConfig {
        let mut config = LoopbackConfig::new(&self.control, vm_id, tenant);
        config.window_size = 4 << 20;
        config
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

/// `error: cause: cause…`.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
