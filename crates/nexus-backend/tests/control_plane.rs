// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control plane checks who is calling: the socket's directory belongs to the backend,
//! peers are checked with `SO_PEERCRED`, a tenant's VMs are attached only by the peers it
//! names, and a VM is reached only by the user that attached it.
//!
//! Another user is played by a thread of the test that switches its own credentials to
//! `nobody` (raw `setresgid`/`setresuid` affect the calling thread only) before it connects;
//! this needs root, which CI has. Without it the tests fail and say so.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use common::BackendProcess;

/// `nobody`/`nogroup`.
const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "these tests play another user by switching a thread's credentials, which needs root \
         (CI runs as root); running as uid {uid}"
    );
}

/// Runs `f` in a thread whose user and group are `nobody`'s.
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid change only the calling thread's credentials (the
        // libc wrappers would change every thread's); the thread does nothing else after
        // `f` and ends.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
        }
        f()
    })
    .join()
    .expect("the other user's thread")
}

/// Sends `lines` on a new connection to `socket`; the replies, or the connect error.
fn talk(socket: &Path, lines: &[String]) -> Result<Vec<serde_json::Value>, std::io::Error> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(common::WAIT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut replies = Vec::new();
    for line in lines {
        if writeln!(writer, "{line}").is_err() {
            break;
        }
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 {
            break;
        }
        replies.push(serde_json::from_str(&reply).unwrap());
    }
    Ok(replies)
}

fn start_with_config(dir: &Path, config: &str) -> BackendProcess {
    let file = dir.join("backend.toml");
    std::fs::write(&file, config).unwrap();
    BackendProcess::start_at(
        dir.join("run").join("control.sock"),
        dir.join("backend.log"),
        &[
            "--config".into(),
            file.display().to_string(),
            "--store".into(),
            format!("file://{}", dir.join("objects").display()),
        ],
        &[],
    )
}

/// A directory for the test that `nobody` may reach (the socket's own directory is then the
/// backend's to make).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("run").join("control.sock")
}

#[test]
fn the_socket_directory_is_the_backends_own() {
    require_root();
    let dir = open_dir();
    let backend = start_with_config(dir.path(), "");
    let meta = std::fs::metadata(dir.path().join("run")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    // The socket, bound under a temporary name and renamed into place once it listens, with
    // its mode set: no temporary name is left in the directory.
    let socket_meta = std::fs::metadata(socket(dir.path())).unwrap();
    assert_eq!(socket_meta.permissions().mode() & 0o777, 0o600);
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(entries.contains(&"control.sock".to_owned()), "{entries:?}");
    assert!(!entries.iter().any(|e| e.starts_with('.')), "{entries:?}");
    drop(backend);

    // A directory others may write to, or someone else's, is refused at start.
    for (mode, owner) in [(0o777, 0), (0o700, NOBODY)] {
        let dir = open_dir();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&run, Some(owner), Some(owner)).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-backend"))
            .arg("--listen")
            .arg(run.join("control.sock"))
            .arg("--store")
            .arg(format!("file://{}", dir.path().join("objects").display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "mode {mode:o} owner {owner}: {stderr}"
        );
        assert!(
            stderr.contains("Cannot use socket directory"),
            "mode {mode:o} owner {owner}: {stderr}"
        );
    }
}

#[test]
fn peers_of_other_users_are_refused_unless_allowed() {
    require_root();
    let dir = open_dir();
    // The socket is reachable by group `nogroup`, but only root is allowed to use it.
    let backend = start_with_config(dir.path(), "[control]\nsocket_group = 65534\n");
    let path = socket(dir.path());
    let replies = as_nobody(move || talk(&path, &[r#"{"op":"stats"}"#.to_owned()]).unwrap());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["ok"], false);
    let error = replies[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Permission denied") && error.contains("65534"),
        "{error}"
    );
    drop(backend);

    // Without the socket group, the directory itself keeps nobody out.
    let dir = open_dir();
    let _backend = start_with_config(dir.path(), "");
    let path = socket(dir.path());
    let refused = as_nobody(move || talk(&path, &[r#"{"op":"stats"}"#.to_owned()]).err());
    assert_eq!(
        refused.map(|e| e.kind()),
        Some(std::io::ErrorKind::PermissionDenied)
    );

    // Allowed by uid: served.
    let dir = open_dir();
    let _backend = start_with_config(
        dir.path(),
        "[control]\nsocket_group = 65534\nuids = [65534]\n",
    );
    let path = socket(dir.path());
    let replies = as_nobody(move || talk(&path, &[r#"{"op":"stats"}"#.to_owned()]).unwrap());
    assert_eq!(replies[0]["ok"], true, "{replies:?}");
}

#[test]
fn tenants_and_vms_are_reached_only_by_their_users() {
    require_root();
    let dir = open_dir();
    let backend = start_with_config(
        dir.path(),
        "[control]\nsocket_group = 65534\nuids = [65534]\n\n\
         [tenants.alpha]\nprefix = \"alpha\"\ncontrol_uids = [0]\n\n\
         [tenants.beta]\nprefix = \"beta\"\ncontrol_uids = [65534]\n",
    );
    // Root attaches a VM of alpha and keeps the connection (and the VM) open.
    let mut root = backend.connect();
    let _root_vm = root.attach("alpha-vm", "alpha");
    let path = socket(dir.path());
    let replies = as_nobody(move || {
        talk(
            &path,
            &[
                // Not nobody's tenant.
                r#"{"op":"attach","vm":"nobodys","tenant":"alpha"}"#.to_owned(),
                // Its own tenant.
                r#"{"op":"attach","vm":"nobodys","tenant":"beta"}"#.to_owned(),
                // Root's VM: neither detached, nor invoked, nor hinted by nobody.
                r#"{"op":"detach","vm":"alpha-vm"}"#.to_owned(),
                r#"{"op":"hint","vm":"alpha-vm","key":"alpha/x"}"#.to_owned(),
                r#"{"op":"invoke","vm":"alpha-vm","input":{"inline":"x"}}"#.to_owned(),
                // Its own VM: fine.
                r#"{"op":"hint","vm":"nobodys","key":"beta/x"}"#.to_owned(),
            ],
        )
        .unwrap()
    });
    let error = |i: usize| replies[i]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(replies[0]["ok"], false);
    assert!(error(0).contains("tenant `alpha`"), "{}", error(0));
    assert_eq!(replies[1]["ok"], true, "{}", replies[1]);
    assert_eq!(replies[1]["connection"], "fd");
    for (i, reply) in replies.iter().enumerate().take(5).skip(2) {
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(error(i).contains("another user"), "{}", error(i));
    }
    assert_eq!(replies[5]["ok"], true, "{}", replies[5]);
    // Root's VM is still attached and reachable by root.
    let reply = root.send(r#"{"op":"hint","vm":"alpha-vm","key":"alpha/x"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn only_the_backends_user_and_root_may_reload_and_a_reload_replaces_control_access() {
    require_root();
    let dir = open_dir();
    let backend = start_with_config(
        dir.path(),
        "[control]\nsocket_group = 65534\nuids = [65534]\n",
    );
    let path = socket(dir.path());
    let asked = path.clone();
    let replies = as_nobody(move || talk(&asked, &[r#"{"op":"reload"}"#.to_owned()]).unwrap());
    assert_eq!(replies[0]["ok"], false, "{replies:?}");
    assert_eq!(replies[0]["code"], "forbidden", "{replies:?}");
    assert!(
        replies[0]["error"]
            .as_str()
            .unwrap()
            .contains("may not reload"),
        "{replies:?}"
    );

    // Root reloads a file that no longer allows nobody: nobody is refused from then on.
    std::fs::write(
        dir.path().join("backend.toml"),
        "[control]\nsocket_group = 65534\n",
    )
    .unwrap();
    let reply = backend.connect().send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let replies = as_nobody(move || talk(&path, &[r#"{"op":"stats"}"#.to_owned()]).unwrap());
    assert_eq!(replies[0]["ok"], false, "{replies:?}");
    assert!(
        replies[0]["error"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{replies:?}"
    );
}
