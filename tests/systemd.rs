//! deploy/systemd/ checked without a running systemd: every unit passes
//! `systemd-analyze verify` with nothing to say (an unknown or misspelled key, a bad value
//! or a wrong section is a warning there, so any output fails the test), the flags each
//! `ExecStart=` passes are the binaries' own, and the two units agree with each other (the
//! node's `--backend` is the backend's `--listen`, inside the backend's runtime directory;
//! the node is ordered after the backend; the backend reloads on SIGHUP).
//!
//! `systemd-analyze` (Debian: package systemd) must be installed: without it the test fails.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd")
}

/// A unit file: `(section, key)` → values in file order (continuation lines joined).
type Unit = BTreeMap<(String, String), Vec<String>>;

fn parse(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        unit.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn value<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    let values = unit
        .get(&(section.to_owned(), key.to_owned()))
        .unwrap_or_else(|| panic!("no {key}= in [{section}]"));
    assert_eq!(values.len(), 1, "{key}= set more than once");
    &values[0]
}

#[test]
fn units_verify_and_agree() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "systemd-analyze is not installed: this test verifies deploy/systemd/'s units with \
             it (Debian: apt-get install systemd, as .ci/run does): {analyze:?}"
        );
    }
    let temp = tempfile::tempdir().unwrap();
    let mut units = BTreeMap::new();
    for name in ["nexus-backend.service", "nexus-node.service"] {
        let text = std::fs::read_to_string(dir().join(name)).unwrap();
        let unit = parse(&text);
        // `verify` insists that ExecStart's program exists: point it at one that does, the
        // rest of the line unchanged.
        let program = value(&unit, "Service", "ExecStart")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        assert!(
            program.starts_with('/'),
            "{name}: ExecStart needs an absolute path"
        );
        let copy = temp.path().join(name);
        std::fs::write(&copy, text.replace(&program, "/bin/true")).unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {name}: {}\n{said}",
            output.status
        );
        units.insert(name, unit);
    }
    let backend = &units["nexus-backend.service"];
    let node = &units["nexus-node.service"];

    // The flags they pass are the binaries' flags.
    let backend_command: Vec<&str> = value(backend, "Service", "ExecStart")
        .split_whitespace()
        .collect();
    let node_command: Vec<&str> = value(node, "Service", "ExecStart")
        .split_whitespace()
        .collect();
    assert!(backend_command[0].ends_with("/nexus-backend"));
    assert!(node_command[0].ends_with("/nexus-vmm") && node_command[1] == "serve");
    common::assert_backend_and_node_flags(&backend_command, &node_command);

    // The node reaches the control socket the backend listens on, in the runtime directory
    // systemd makes for the backend, through the group they share.
    let socket = common::arg(&backend_command, "--listen");
    assert_eq!(common::arg(&node_command, "--backend"), socket);
    let runtime = value(backend, "Service", "RuntimeDirectory");
    assert!(socket.starts_with(&format!("/run/{runtime}/")));
    let shared = value(backend, "Service", "SupplementaryGroups");
    assert!(
        value(node, "Service", "SupplementaryGroups")
            .split_whitespace()
            .any(|g| g == shared)
    );
    assert!(value(node, "Unit", "After").contains("nexus-backend.service"));
    assert!(value(node, "Unit", "Requires").contains("nexus-backend.service"));

    // Each has its own user; the state directories are their own.
    assert_ne!(
        value(backend, "Service", "User"),
        value(node, "Service", "User")
    );
    assert_eq!(
        common::arg(&backend_command, "--state-dir"),
        format!("/var/lib/{}", value(backend, "Service", "StateDirectory"))
    );
    assert_eq!(
        common::arg(&node_command, "--state-dir"),
        format!("/var/lib/{}", value(node, "Service", "StateDirectory"))
    );

    // Nothing gained on exec; no capabilities; of the host's devices the node has /dev/kvm
    // alone and the backend none; the backend takes a changed config on SIGHUP.
    for unit in [backend, node] {
        assert_eq!(value(unit, "Service", "NoNewPrivileges"), "yes");
        assert_eq!(value(unit, "Service", "CapabilityBoundingSet"), "");
        assert_eq!(value(unit, "Service", "ProtectSystem"), "strict");
    }
    assert_eq!(value(backend, "Service", "PrivateDevices"), "yes");
    assert_eq!(value(node, "Service", "DevicePolicy"), "closed");
    assert_eq!(value(node, "Service", "DeviceAllow"), "/dev/kvm rw");
    assert!(value(backend, "Service", "ExecReload").contains("-HUP"));
}
