//! A `nexus-vmm serve` daemon over a real `nexus-backend`, and HTTP to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Backend, nexus_vmm};

/// A `nexus-vmm serve` process, killed on drop.
pub struct Daemon {
    child: Child,
    /// The HTTP API's address.
    pub address: String,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Starts the daemon over `backend` with the function files `functions` (name, TOML).
    pub fn start(
        dir: &Path,
        backend: &Backend,
        functions: &[(&str, String)],
        extra: &[&str],
    ) -> Self {
        Self::start_wrapped(dir, backend, functions, extra, &[], &nexus_vmm())
    }

    /// [`start`](Self::start), with `env` added to the daemon's environment.
    pub fn start_with_env(
        dir: &Path,
        backend: &Backend,
        functions: &[(&str, String)],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(dir, backend, functions, extra, &[], &nexus_vmm(), env)
    }

    /// [`start`](Self::start) with the command line `wrapper` (a program and its arguments,
    /// which must end by running the rest of the line) in front of `binary` (a copy of
    /// `nexus-vmm`, say, where another user can run it).
    pub fn start_wrapped(
        dir: &Path,
        backend: &Backend,
        functions: &[(&str, String)],
        extra: &[&str],
        wrapper: &[&str],
        binary: &Path,
    ) -> Self {
        Self::start_full(dir, backend, functions, extra, wrapper, binary, &[])
    }

    /// [`start_wrapped`](Self::start_wrapped), with `env` added to the daemon's environment.
    fn start_full(
        dir: &Path,
        backend: &Backend,
        functions: &[(&str, String)],
        extra: &[&str],
        wrapper: &[&str],
        binary: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let functions_dir = dir.join("functions");
        std::fs::create_dir_all(&functions_dir).unwrap();
        for (name, toml) in functions {
            std::fs::write(functions_dir.join(format!("{name}.toml")), toml).unwrap();
        }
        let log = dir.join("serve.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend.socket(),
            ])
            .arg("--functions")
            .arg(&functions_dir)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nexus-vmm serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "no address in {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Daemon {
            child,
            address,
            log,
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the daemon `signal` and waits for it to end, at most `timeout` (then kills it
    /// and panics): its exit status.
    pub fn stop_with(
        &mut self,
        signal: rustix::process::Signal,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("the daemon can be signalled");
        super::wait_within(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "the daemon did not end within {timeout:?} of {signal:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP/1.1 request; returns the status, the headers (lowercase names) and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let (status, headers, body) = self.request_bytes(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// One HTTP/1.1 request with `headers` and a body of any bytes.
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // A server that refuses a body may close before it has all of it.
        let _ = stream.write_all(body);
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let body = response[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body)
    }

    /// One request whose answer is JSON.
    pub fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, _, body) = self.request(method, path, body);
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
        (status, value)
    }

    /// `POST /v1/functions/{function}/invocations`.
    pub fn invoke(&self, function: &str, body: &Value) -> (u16, Value) {
        self.json(
            "POST",
            &format!("/v1/functions/{function}/invocations"),
            &body.to_string(),
        )
    }

    /// The whole `/metrics` text.
    pub fn metric_text(&self) -> String {
        let (status, _, text) = self.request("GET", "/metrics", "");
        assert_eq!(status, 200);
        text
    }

    /// The value of the metric line that starts with `series` (0 if absent).
    pub fn metric(&self, series: &str) -> f64 {
        let (status, _, text) = self.request("GET", "/metrics", "");
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l[series.len()..].trim().parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function file of `guest` with `limits`.
pub fn function(guest: &str, limits: &str) -> String {
    format!("guest = \"{guest}\"\nmemory_mib = 32\nwindow_mib = 16\n\n[limits]\n{limits}\n")
}

/// `words` words of text.
pub fn sample_text(words: usize) -> String {
    let vocabulary = ["the", "node", "keeps", "parked", "VMs\n", "warm"];
    (0..words)
        .map(|i| vocabulary[i % vocabulary.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A backend and a daemon over a local store in a temporary directory.
pub struct Node {
    pub _dir: tempfile::TempDir,
    pub store: std::path::PathBuf,
    pub backend: Backend,
    pub daemon: Daemon,
}

/// A node serving `functions`, its store holding `inputs/words.txt` of `words` words.
pub fn node(functions: &[(&str, String)], extra: &[&str], words: usize) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("inputs")).unwrap();
    std::fs::write(store.join("inputs/words.txt"), sample_text(words)).unwrap();
    let backend = Backend::local(dir.path(), &store);
    let daemon = Daemon::start(dir.path(), &backend, functions, extra);
    Node {
        _dir: dir,
        store,
        backend,
        daemon,
    }
}
