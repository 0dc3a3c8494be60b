//! What the workspace's integration tests share: the `nexus-vmm` example and a real
//! `nexus-backend` process.

#![allow(dead_code)] // each test crate uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nexus-vmm` example next to this test binary (cargo builds examples for tests).
pub fn nexus_vmm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("nexus-vmm");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test`",
        path.display()
    );
    path
}

/// A `nexus-backend` process over a local store, killed on drop.
pub struct Backend {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Backend {
    pub fn start(dir: &Path, store: &Path) -> Self {
        let socket = dir.join("backend.sock");
        let log = dir.join("backend.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(
            nexus::guests::workspace_binary("nexus-backend", "nexus-backend").unwrap(),
        )
        .args(["--listen", socket.to_str().unwrap(), "--store"])
        .arg(format!("file://{}", store.display()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("nexus-backend starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nexus-backend exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nexus-backend did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Backend { child, socket, log }
    }

    pub fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
