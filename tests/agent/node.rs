//! A `nexus-vmm serve` process as a balancer sees it: started without waiting for it to be
//! ready, its address read from its log, signalled, and asked over plain HTTP/1.1.

#![allow(dead_code)] // each test crate uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::nexus_vmm;

/// An HTTP answer: status, headers (lowercase names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request to `address` (`Connection: close`); `None` if the connection
/// failed or closed without an answer.
pub fn try_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Answer> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = String::from_utf8_lossy(&response[split + 4..]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// [`try_request`] that must be answered.
pub fn request(address: &str, method: &str, path: &str, body: &str) -> Answer {
    try_request(
        address,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap_or_else(|| panic!("{method} http://{address}{path}: no answer"))
}

/// A `nexus-vmm serve` process, killed on drop.
pub struct AgentNode {
    child: Child,
    /// The HTTP API's address (bound before the node is ready).
    pub address: String,
    log: PathBuf,
    /// Lines the node prints on its standard output (its `listening on` line once ready).
    stdout: mpsc::Receiver<String>,
}

impl AgentNode {
    /// Starts `nexus-vmm serve` over the backend socket `backend` (which may not exist yet)
    /// with the function files `functions` (name, TOML) and `extra` arguments; returns once
    /// the node has bound its address (not once it is ready).
    pub fn start(dir: &Path, backend: &Path, functions: &[(&str, String)], extra: &[&str]) -> Self {
        let functions_dir = dir.join("functions");
        std::fs::create_dir_all(&functions_dir).unwrap();
        for (name, toml) in functions {
            std::fs::write(functions_dir.join(format!("{name}.toml")), toml).unwrap();
        }
        let log = dir.join("serve.log");
        let mut child = Command::new(nexus_vmm())
            .args(["serve", "--listen", "127.0.0.1:0", "--backend"])
            .arg(backend)
            .arg("--functions")
            .arg(&functions_dir)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nexus-vmm serve starts");
        let out = child.stdout.take().unwrap();
        let (sender, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(address) = text
                .lines()
                .find(|l| l.contains(" bound to http://"))
                .and_then(|l| l.split("http://").nth(1))
                .and_then(|rest| rest.split([',', ' ']).next())
            {
                break address.to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nexus-vmm serve exited with {status} before binding:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "nexus-vmm serve did not bind within 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        AgentNode {
            child,
            address,
            log,
            stdout,
        }
    }

    /// Waits (at most `timeout`) for the node's `listening on` line: it is ready.
    pub fn wait_listening(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains("listening on http://") => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "the node did not say it listens within {timeout:?}; log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// One request to the node.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Answer {
        request(&self.address, method, path, body)
    }

    /// Polls `GET /readyz` until its status is `status`, at most `timeout`.
    pub fn wait_ready_status(&self, status: u16, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.request("GET", "/readyz", "");
            if answer.status == status {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {} ({}) for {timeout:?}, not {status}; log:\n{}",
                answer.status,
                answer.body,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the node `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("the node can be signalled");
    }

    /// Waits for the node to end, at most `timeout` (then kills it and panics).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        crate::common::wait_within(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "the node did not end within {timeout:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function file of `guest` with `limits`.
pub fn function(guest: &str, limits: &str) -> String {
    format!("guest = \"{guest}\"\nmemory_mib = 32\nwindow_mib = 16\n\n[limits]\n{limits}\n")
}

/// fib(n), as the `fibonacci` guest answers it.
pub fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}
