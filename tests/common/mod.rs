//! What the workspace's integration tests share: the `nexus-vmm` example and real
//! `nexus-backend` processes.

#![allow(dead_code)] // each test crate uses part of it

pub mod daemon;
pub mod python;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `file://` URL of a local store directory.
pub fn store_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The `nexus-vmm` example, built (or found up to date) through cargo, so that a filtered
/// `cargo test` never runs a stale example.
pub fn nexus_vmm() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| nexus::guests::workspace_example("nexus-vmm").unwrap())
        .clone()
}

/// The `nexus-backend` binary, built like [`nexus_vmm`].
pub fn backend_binary() -> PathBuf {
    nexus::guests::workspace_binary("nexus-backend", "nexus-backend").unwrap()
}

/// A `nexus-backend` process, killed on drop.
pub struct Backend {
    child: Child,
    /// The control socket.
    pub socket: PathBuf,
    args: Vec<String>,
    /// The log file.
    pub log: PathBuf,
}

impl Backend {
    /// A backend over the local directory `store`, its socket and log in `dir`.
    pub fn local(dir: &Path, store: &Path) -> Self {
        Self::start(dir, &store_url(store), &[])
    }

    /// A backend over the store at URL `store`, with `extra` arguments.
    pub fn start(dir: &Path, store: &str, extra: &[&str]) -> Self {
        let socket = dir.join("backend.sock");
        let mut args = vec![
            "--listen".to_string(),
            socket.to_str().unwrap().to_string(),
            "--store".to_string(),
            store.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join("backend.log");
        let child = Self::spawn(&args, &log, &socket, &[]);
        Backend {
            child,
            socket,
            args,
            log,
        }
    }

    /// A backend with exactly `args` (after `--listen`) and environment `env`.
    pub fn start_with_env(dir: &Path, args: Vec<String>, env: &[(&str, String)]) -> Self {
        let socket = dir.join("backend.sock");
        let mut all = vec!["--listen".to_string(), socket.to_str().unwrap().to_string()];
        all.extend(args);
        let log = dir.join("backend.log");
        let child = Self::spawn(&all, &log, &socket, env);
        Backend {
            child,
            socket,
            args: all,
            log,
        }
    }

    fn spawn(args: &[String], log: &Path, socket: &Path, env: &[(&str, String)]) -> Child {
        let _ = std::fs::remove_file(socket);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = Command::new(backend_binary());
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("nexus-backend starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nexus-backend exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nexus-backend did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (the socket file stays).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.args, &self.log, &self.socket, &[]);
    }

    /// The control socket, as a string.
    pub fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// What the backend logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bound on one `nexus-vmm` process.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// How a `nexus-vmm` process ended.
pub struct Run {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Starts `nexus-vmm ARGS`.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(nexus_vmm())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a `nexus-vmm` process, bounded by [`RUN_TIMEOUT`].
pub fn finish(mut child: Child, backend: &Backend, what: &str) -> Run {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_within(&mut child, RUN_TIMEOUT) else {
        panic!(
            "{what} did not finish within {RUN_TIMEOUT:?}\nbackend log:\n{}",
            backend.log()
        );
    };
    let run = Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    eprintln!("$ nexus-vmm {what}\n{}{}", run.stdout, run.stderr);
    run
}

/// The long flags (`--name`) that `binary ARGS --help` lists.
pub fn flags(binary: &Path, args: &[&str]) -> Vec<String> {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} --help failed",
        binary.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches([',', '.'])
                .split(['=', '['])
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The value following `flag` in `command` (a command line split into words).
pub fn arg<'a, S: AsRef<str>>(command: &'a [S], flag: &str) -> &'a str {
    let words: Vec<&str> = command.iter().map(AsRef::as_ref).collect();
    let at = words
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} is not in {words:?}"));
    command[at + 1].as_ref()
}

/// Waits for `child` to end, at most `timeout`: its status, or `None` when it did not end in
/// time (then it is killed and reaped).
pub fn wait_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every `--flag` of the two command lines (a `nexus-backend` one and a `nexus-vmm serve`
/// one, split into words) is one the binary's `--help` lists.
pub fn assert_backend_and_node_flags<S: AsRef<str>>(backend: &[S], node: &[S]) {
    let backend_flags = flags(&backend_binary(), &[]);
    let node_flags = flags(&nexus_vmm(), &["serve"]);
    for (command, known) in [(backend, &backend_flags), (node, &node_flags)] {
        for flag in command.iter().filter_map(|a| a.as_ref().strip_prefix("--")) {
            assert!(
                known.iter().any(|k| k == flag),
                "--{flag} is not a flag of {}",
                command[0].as_ref()
            );
        }
    }
}
