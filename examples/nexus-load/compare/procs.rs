//! The node's processes for the comparison — the S3 server, the shared backend, the node
//! daemon — each a child process with its log in the run's directory, bounded in time
//! while it starts, stopped (SIGTERM, then SIGKILL) on drop, and sent SIGTERM by the kernel
//! if the load generator dies first.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a stopped process gets to exit after SIGTERM before SIGKILL (a daemon stops
/// every VM and removes its network namespace: a minute for a thousand net VMs).
const STOP_GRACE: Duration = Duration::from_secs(60);
/// The last bytes of a log shown in an error.
const LOG_TAIL: usize = 3000;

/// A child process, stopped on drop.
#[derive(Debug)]
pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    stdout: Receiver<String>,
}

impl Process {
    /// Starts `command` as `name`, its stderr into `log`, its stdout read line by line.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Result<Process> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the {name} ({command:?})"))?;
        let (lines, stdout) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                // Drain to the end, whether anyone listens or not, so the child never
                // blocks on a full pipe.
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = lines.send(line);
                }
            });
        }
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
            stdout,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = text.len().saturating_sub(LOG_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }

    /// Fails with the log's end if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the {} exited ({status}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits (at most `timeout`) for a line of its stdout that contains `marker`.
    pub fn wait_for_line(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(marker) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    self.check_alive()?;
                    bail!(
                        "the {} closed its stdout without printing {marker:?}",
                        self.name
                    );
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "the {} did not print {marker:?} within {} s; the end of its log ({}):\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display(),
                    self.log_tail()
                );
            }
        }
    }

    /// Waits (at most `timeout`) until `path` exists.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "the {} did not create {} within {} s; the end of its log:\n{}",
                    self.name,
                    path.display(),
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops it: SIGTERM (the daemon removes its network namespace), SIGKILL after
    /// [`STOP_GRACE`].
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill with a valid signal on our own child's pid (not yet reaped, so
            // the pid is still ours); no memory is passed.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!(
            "the {} did not stop within {STOP_GRACE:?}: killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
