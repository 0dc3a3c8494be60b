// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every kind's filter, installed for real on a thread of a child process (this test binary
//! run again with `NEXUS_SECCOMP_CASE` set): allowed work goes through, a forbidden system
//! call kills the process by SIGSYS and the report names the thread, the kind and the call.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_seccomp::{ThreadKind, current_kind, install, syscall_name};

const CASE: &str = "NEXUS_SECCOMP_CASE";

/// A forbidden call each kind of thread might be tempted into, and a harmless form of it
/// (the filter traps it before the kernel looks at the arguments).
fn forbidden(kind: ThreadKind) -> Vec<(i64, fn())> {
    fn personality() {
        // SAFETY: personality(0xffffffff) only queries.
        unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
    }
    fn create() {
        let _ = std::fs::File::create(std::env::temp_dir().join("nexus-seccomp-test"));
    }
    fn socket() {
        // An Internet socket (Unix ones are allowed on vCPU and device threads).
        let _ = std::net::UdpSocket::bind("127.0.0.1:0");
    }
    fn mount() {
        // SAFETY: null arguments: the kernel would refuse them (EFAULT).
        unsafe { libc::syscall(libc::SYS_mount, 0usize, 0usize, 0usize, 0usize, 0usize) };
    }
    fn execve() {
        // Running a program, which the node's threads may not (`ip` runs before its filter).
        // SAFETY: null arguments: the kernel would refuse them (EFAULT).
        unsafe { libc::syscall(libc::SYS_execve, 0usize, 0usize, 0usize) };
    }
    fn bpf() {
        // SAFETY: an invalid command with no attributes: the kernel would refuse it.
        unsafe { libc::syscall(libc::SYS_bpf, -1i64, 0usize, 0usize) };
    }
    let mut cases: Vec<(i64, fn())> = vec![(libc::SYS_personality, personality)];
    match kind {
        ThreadKind::Vcpu | ThreadKind::VcpuMonitor => {
            cases.push((libc::SYS_openat, create));
            cases.push((libc::SYS_socket, socket));
        }
        ThreadKind::Device | ThreadKind::BackendEventLoop => {
            cases.push((libc::SYS_socket, socket));
        }
        ThreadKind::BackendEngine => cases.push((libc::SYS_mount, mount)),
        ThreadKind::NodeApi => {
            cases.push((libc::SYS_bpf, bpf));
            cases.push((libc::SYS_execve, execve));
            cases.push((libc::SYS_mount, mount));
        }
    }
    cases
}

/// What a child does: `<kind>:<index>` makes forbidden call `index` of `kind` on a filtered
/// thread; `<kind>:ok` does allowed work there and exits 0.
fn child(case: &str) {
    let (kind, what) = case.split_once(':').unwrap();
    let kind = ThreadKind::from_name(kind).unwrap();
    let what = what.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("t-{}", kind.name()))
        .spawn(move || {
            assert_eq!(current_kind(), None);
            install(kind).unwrap();
            assert_eq!(current_kind(), Some(kind));
            // Installing the same kind again stacks nothing; a thread started from here
            // inherits the filter.
            install(kind).unwrap();
            if what == "ok" {
                let inherited = std::thread::spawn(current_kind).join().unwrap();
                assert_eq!(inherited, Some(kind));
                let v: Vec<u64> = (0..100_000).collect();
                assert_eq!(v.iter().sum::<u64>(), 4_999_950_000);
                eprintln!("allowed work done");
                // A panic is still reported, and unwinds, under the filter.
                let caught = std::panic::catch_unwind(|| panic!("deliberate panic"));
                assert!(caught.is_err());
                std::thread::sleep(Duration::from_millis(1));
            } else {
                let index: usize = what.parse().unwrap();
                (forbidden(kind)[index].1)();
                eprintln!("survived");
            }
        })
        .unwrap();
    thread.join().unwrap();
}

/// Runs case `case` in a child; its exit status and standard error.
fn run(case: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("case {case} did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn child_entry() {
    if let Ok(case) = std::env::var(CASE) {
        child(&case);
    }
}

#[test]
fn forbidden_syscalls_kill_by_sigsys_with_a_report() {
    for kind in ThreadKind::ALL {
        for (index, (nr, _)) in forbidden(kind).into_iter().enumerate() {
            let (status, stderr) = run(&format!("{}:{index}", kind.name()));
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind} {nr}: {stderr}");
            let thread = format!("t-{}", kind.name());
            // Linux keeps 15 bytes of a thread's name.
            let thread = thread.get(..15).unwrap_or(&thread);
            let line = format!(
                "nexus: seccomp: thread {thread} (kind {}) made forbidden syscall {nr} ({})",
                kind.name(),
                syscall_name(nr).unwrap()
            );
            assert!(stderr.contains(&line), "{kind}: want {line:?} in {stderr}");
            // Then the call's first arguments: personality's is the 0xffffffff it was given.
            let args = stderr
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .unwrap();
            assert!(args.starts_with(" args 0x"), "{args:?}");
            if nr == libc::SYS_personality {
                assert!(args.starts_with(" args 0xffffffff, "), "{args:?}");
            }
            assert!(!stderr.contains("survived"), "{stderr}");
        }
    }
}

#[test]
fn allowed_work_and_panics_run_under_every_filter() {
    for kind in ThreadKind::ALL {
        let (status, stderr) = run(&format!("{}:ok", kind.name()));
        assert!(status.success(), "{kind}: {status:?}: {stderr}");
        assert!(stderr.contains("allowed work done"), "{kind}: {stderr}");
        assert!(stderr.contains("deliberate panic"), "{kind}: {stderr}");
    }
}
