// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A network namespace of the test's own, held by a thread that lives in it.
//!
//! The thread `unshare(CLONE_NEWNET)`s and then runs what the test sends it: taps and sockets
//! made there belong to the namespace, and `ip` commands it starts configure it. Nothing is
//! left behind: the namespace goes away with the thread and the last socket or tap in it (no
//! name under `/run/netns`, no interface of the host's touched).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace and the thread that lives in it.
pub struct NetNs {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// Fails the test, naming what the machine lacks (tests never pass by skipping).
fn missing(what: &str) -> ! {
    panic!("this test needs {what}; it cannot run here (it does not skip)")
}

impl NetNs {
    /// A fresh namespace with `lo` up and IPv6 off (no router solicitations on the taps).
    pub fn new() -> Self {
        if !Path::new("/dev/net/tun").exists() {
            missing("/dev/net/tun (the tun driver)");
        }
        let (jobs, inbox) = channel::<Job>();
        let (ready, started) = channel();
        let thread = thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new network
                // namespace; it shares no memory and invalidates no descriptor of the process.
                let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                let result = (ret == 0)
                    .then_some(())
                    .ok_or_else(std::io::Error::last_os_error);
                let ok = result.is_ok();
                let _ = ready.send(result);
                if ok {
                    serve(inbox);
                }
            })
            .expect("a namespace thread");
        if let Err(e) = started.recv().expect("the namespace thread answers") {
            missing(&format!(
                "root (CAP_SYS_ADMIN) to make a network namespace: unshare(CLONE_NEWNET) failed: {e}"
            ));
        }
        let ns = NetNs {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.run(|| {
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                // No IPv6 in the kernel: nothing to turn off.
                let _ = std::fs::write(path, "1");
            }
        });
        ns
    }

    /// Runs `job` in the namespace and returns its result.
    pub fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, result) = channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        self.jobs
            .as_ref()
            .expect("a live namespace")
            .send(job)
            .expect("the namespace thread runs");
        result.recv().expect("the job finished")
    }

    /// Runs `ip ARGS` in the namespace; fails the test if it fails or hangs.
    pub fn ip(&self, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.run(move || run_bounded("ip", &args))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(inbox: Receiver<Job>) {
    for job in inbox {
        job();
    }
}

/// Runs `program ARGS` to its end (at most 10 s, then it is killed); returns its output.
fn run_bounded(program: &str, args: &[String]) -> String {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            missing(&format!("`{program}` (iproute2) on the PATH"))
        }
        Err(e) => panic!("cannot start {program}: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("a child status").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within 10 s");
        }
        thread::sleep(Duration::from_millis(2));
    }
    let output = child.wait_with_output().expect("the output");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
