//! Cold start from a snapshot, with and without the prefetch hint, and the guest-visible time
//! write-behind saves — measured end to end with real processes: a `nexus-backend` over a
//! local store, one `nexus-vmm snapshot`, then `nexus-vmm invoke` runs alternating between
//! the two variants (so both see the same page-cache state), medians reported side by side.
//!
//! `cargo bench --bench cold_start` (`COLD_START_ROUNDS`, default 15; `COLD_START_MIB`, the
//! input size, default 48). Times are printed, never asserted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `nexus-vmm`, built in the profile and target directory of this bench.
fn nexus_vmm() -> PathBuf {
    let (target, profile) = nexus::guests::target_profile();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", "nexus-vmm", "--profile"])
        .arg(if profile == "debug" { "dev" } else { &profile })
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "nexus-vmm builds");
    target.join(profile).join("examples").join("nexus-vmm")
}

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_backend(dir: &Path, store: &Path) -> (Backend, String) {
    let socket = dir.join("backend.sock");
    let child =
        Command::new(nexus::guests::workspace_binary("nexus-backend", "nexus-backend").unwrap())
            .args(["--listen", socket.to_str().unwrap(), "--store"])
            .arg(format!("file://{}", store.display()))
            .args(["--prefetch-cache-mib", "128"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nexus-backend starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "nexus-backend listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Backend(child), socket.to_str().unwrap().to_owned())
}

/// Runs `nexus-vmm ARGS`; returns its stdout (panics on failure).
fn vmm(exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("nexus-vmm runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nexus-vmm {}: {}{}",
        args.join(" "),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `timings (ms):` line of an invoke as `(name, ms)` pairs.
fn timings(stdout: &str) -> Vec<(String, f64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("timings (ms): "))
        .expect("a timings line");
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn text(bytes: usize) -> Vec<u8> {
    let words = ["serverless ", "cold ", "start ", "prefetch\n", "window "];
    let mut out = Vec::with_capacity(bytes + 16);
    let mut i = 0;
    while out.len() < bytes {
        out.extend_from_slice(words[i % words.len()].as_bytes());
        i += 3;
    }
    out.truncate(bytes);
    out
}

/// Medians of each timing over the runs of one variant.
fn medians(runs: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
    runs[0]
        .iter()
        .map(|(name, _)| {
            let values = runs
                .iter()
                .map(|r| r.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v))
                .collect();
            (name.clone(), median(values))
        })
        .collect()
}

fn print_side_by_side(a_name: &str, a: &[(String, f64)], b_name: &str, b: &[(String, f64)]) {
    println!(
        "{:<16} {:>12} {:>12} {:>8}",
        "median (ms)", a_name, b_name, "ratio"
    );
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let ratio = if *y > 0.0 { x / y } else { f64::NAN };
        println!("{name:<16} {x:>12.3} {y:>12.3} {ratio:>8.2}");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no flag: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("COLD_START_ROUNDS", 15);
    let mib = env_or("COLD_START_MIB", 48);
    nexus::guests::build_bundled(false).expect("the guests build");
    let exe = nexus_vmm();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("big.txt"), text(mib << 20)).unwrap();
    let (_backend, socket) = start_backend(dir.path(), &store);

    let snap = dir.path().join("wordcount").to_str().unwrap().to_owned();
    let out = vmm(
        &exe,
        &[
            "snapshot",
            "--guest",
            "wordcount",
            "--backend",
            &socket,
            "--out",
            &snap,
        ],
    );
    print!("{out}");
    println!("\n## Cold start: {mib} MiB input, lazy restore, {rounds} rounds alternating\n");
    let (mut hinted, mut unhinted) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        for hint in [true, false] {
            let mut args = vec![
                "invoke",
                "--snapshot",
                &snap,
                "--backend",
                &socket,
                "--restore",
                "lazy",
                "--input",
                "big.txt",
            ];
            if !hint {
                args.push("--no-hint");
            }
            let t = timings(&vmm(&exe, &args));
            // Round 0 warms the page cache and the binaries.
            if round > 0 {
                if hint { &mut hinted } else { &mut unhinted }.push(t);
            }
        }
    }
    print_side_by_side(
        "prefetch hint",
        &medians(&hinted),
        "no hint",
        &medians(&unhinted),
    );

    // Write-behind: aes's result is as large as its input; stored write-behind, the
    // function completes without waiting for the upload.
    let wb_mib = mib.min(16);
    std::fs::write(store.join("wb.txt"), text(wb_mib << 20)).unwrap();
    let snap = dir.path().join("aes").to_str().unwrap().to_owned();
    vmm(
        &exe,
        &[
            "snapshot",
            "--guest",
            "aes",
            "--backend",
            &socket,
            "--out",
            &snap,
        ],
    );
    let mut runs = Vec::new();
    for round in 0..=rounds {
        let key = format!("wb-out/{round}.aes");
        let t = timings(&vmm(
            &exe,
            &[
                "invoke",
                "--snapshot",
                &snap,
                "--backend",
                &socket,
                "--input",
                "wb.txt",
                "--output",
                &key,
            ],
        ));
        if round > 0 {
            runs.push(t);
        }
    }
    let m = medians(&runs);
    let get = |name: &str| m.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
    println!(
        "\n## Write-behind: aes over {wb_mib} MiB, result PUT write-behind ({rounds} rounds)\n\n\
         function (guest-visible, incl. the write-behind PUT) {:.3} ms; upload finished after \
         COMPLETE (durable) {:.3} ms — guest-visible time saved ≈ the upload's share that \
         overlapped or followed COMPLETE; end to end {:.3} ms",
        get("function"),
        get("durable"),
        get("total")
    );
}
