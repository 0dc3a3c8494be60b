//! Python clients (boto3 and the like) run by the tests: a script that prints one JSON line
//! per case, bounded in time and killed on drop.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `script` (Python source, written to `dir/client.py`) with `args`, at most
/// `timeout`; its output lines as JSON values. A line `{"missing": …}` (the script's answer
/// to an `ImportError`), or python3 not running at all, fails with `install`: what to install.
pub fn json_lines(
    dir: &Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
    install: &str,
) -> Vec<Value> {
    let path = dir.join("client.py");
    std::fs::write(&path, script).unwrap();
    let child = Command::new("python3")
        .arg(&path)
        .args(args)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {install}"));
    let mut child = Killed(child);
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
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
    let status = super::wait_within(&mut child.0, timeout)
        .unwrap_or_else(|| panic!("the Python client did not finish within {timeout:?}"));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!("Python client ({status}):\n{out}{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    if let Some(missing) = lines.iter().find_map(|l| l.get("missing")) {
        panic!("{install}: {missing}");
    }
    assert!(status.success(), "the Python client failed: {err}");
    lines
}
