// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `nexus-backend --user --group`: the backend starts as root, binds its control socket and
//! then becomes `nobody`/`nogroup` (65534) for good, and still serves the peers its
//! configuration allows. Needs root (CI runs as root); without it the test fails and says
//! so.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{BackendProcess, Call, GuestVm};
use nexus_ring::{Command, Status};

const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test starts the backend as root to see it drop to another user, which needs \
         root (CI runs as root); running as uid {uid}"
    );
}

/// The IDs of a `Uid:`/`Gid:`/`Groups:` line of `/proc/PID/status`.
fn ids(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// A directory `nobody` may reach and write.
fn nobodys(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
fn the_backend_drops_to_another_user_and_still_serves() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (objects, state) = (dir.path().join("objects"), dir.path().join("state"));
    nobodys(&objects);
    let config = dir.path().join("backend.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"file://{}\"\n[control]\nuids = [0]\n[tenants.a]\nprefix = \"a\"\n",
            objects.display()
        ),
    )
    .unwrap();
    let backend = BackendProcess::start_at(
        dir.path().join("run").join("control.sock"),
        dir.path().join("backend.log"),
        &[
            "--config".into(),
            config.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--user".into(),
            NOBODY.to_string(),
            "--group".into(),
            NOBODY.to_string(),
        ],
        &[],
    );
    let mut control = backend.connect();
    // The socket answers once the backend listens; the drop follows at once.
    let reply = control.send(r#"{"op":"stats"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", backend.pid())).unwrap();
    assert_eq!(ids(&status, "Uid:"), [NOBODY; 4], "{status}");
    assert_eq!(ids(&status, "Gid:"), [NOBODY; 4], "{status}");
    assert_eq!(ids(&status, "Groups:"), [NOBODY], "{status}");
    assert!(
        backend
            .log()
            .contains("privileges dropped: now uid 65534, gid 65534"),
        "{}",
        backend.log()
    );
    // The state directory is the new user's.
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), NOBODY);

    // Root, allowed in [control], still attaches a VM, whose objects are written as nobody.
    let connection = control.attach("vm1", "a");
    let mut vm = GuestVm::connect(connection, 1 << 20);
    let answer = vm.call(
        &Call::new(Command::Put {
            write_behind: false,
        })
        .key(b"a/x")
        .payload(&[b"as nobody"])
        .response_meta(1024),
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    let written = std::fs::metadata(objects.join("a/x")).unwrap();
    assert_eq!((written.uid(), written.gid()), (NOBODY, NOBODY));

    // The backend can no longer read root's files: a reload of a file only root may read
    // (as secret files are) fails, and the configuration in force stays.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let reply = control.send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("backend.toml"),
        "{reply}"
    );
    // Readable, it is applied.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reply = control.send(r#"{"op":"reload"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn a_state_directory_out_of_reach_of_the_new_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The default state directory lies in the socket's directory, root's and 0700.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-backend"))
        .arg("--listen")
        .arg(dir.path().join("run").join("control.sock"))
        .arg("--store")
        .arg(format!("file://{}", dir.path().join("objects").display()))
        .args(["--user", "65534", "--group", "65534"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("Cannot drop privileges")
            && log.contains("control.sock.state is out of reach of uid 65534"),
        "{log}"
    );
}
