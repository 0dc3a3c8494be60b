//! The `nexus-vmm` example binary, run as a user runs it (real processes, /dev/kvm).

use std::path::PathBuf;
use std::process::{Command, Output};

/// `target/<profile>/examples/nexus-vmm`, which `cargo test` builds alongside the tests.
fn nexus_vmm() -> PathBuf {
    // Built (or found up to date) through cargo, so that a filtered `cargo test` never runs a
    // stale example.
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| nexus::guests::workspace_example("nexus-vmm").unwrap())
        .clone()
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(nexus_vmm())
        .args(args)
        .output()
        .expect("nexus-vmm starts");
    eprintln!(
        "$ nexus-vmm {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn hello_prints_greeting_and_arguments() {
    let out = run(&["run", "--guest", "hello", "--", "a", "b"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("Hello from a Nexus micro-guest!"),
        "{stdout}"
    );
    assert!(stdout.contains("arg[0] = a"), "{stdout}");
    assert!(stdout.contains("arg[1] = b"), "{stdout}");
}

#[test]
fn fib_computes_its_argument() {
    let out = run(&["run", "--guest", "fib", "--", "20"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("fib(20) = 6765")
    );
    let out = run(&["run", "--guest", "fib", "--", "90"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("fib(90) = 2880067194370816120")
    );
}

#[test]
fn fib_rejects_a_non_number() {
    let out = run(&["run", "--guest", "fib", "--", "twenty"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn crash_exits_nonzero_naming_fault_and_rip() {
    let out = run(&["run", "--guest", "crash"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("triple fault"), "{stderr}");
    assert!(stderr.contains("RIP 0x1"), "{stderr}");
}

#[test]
fn guest_by_path_and_stats() {
    let (target, profile) = nexus::guests::target_profile();
    // The test binary's own profile dir holds the bundled guests once resolved.
    nexus::guests::resolve("hello").unwrap();
    let path = target.join(profile).join("hello");
    let out = run(&["run", "--stats", "--guest", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("user-space exits"), "{stderr}");
    assert!(stderr.contains("KVM exits"), "{stderr}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let out = run(&["run", "--guest", "no-such-guest"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("No bundled guest is named")
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.elf");
    std::fs::write(
        &junk,
        b"definitely not an ELF file, but long enough for a header........",
    )
    .unwrap();
    let out = run(&["run", "--guest", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("Not an ELF file"), "{stderr}");

    let out = run(&["run", "--guest", "hello", "--mem", "1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8(out.stderr).unwrap().contains("too small"));

    let out = run(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("/nonexistent/vmlinux")
    );
}

#[test]
fn demo_runs_every_bundled_guest() {
    let out = run(&["demo"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("fib(20) = 6765"), "{stdout}");
    assert!(stdout.contains("crash: triple fault"), "{stdout}");
    assert!(
        stdout.contains("Hello from a Nexus micro-guest!"),
        "{stdout}"
    );
}
