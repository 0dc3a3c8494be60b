//! The node daemon needs no privilege but `/dev/kvm`: a real `nexus-vmm serve` started as
//! `nobody` (uid and gid 65534, no supplementary groups), with no capabilities (empty
//! bounding set) and `no_new_privs`, given only a `/dev/kvm` it may open (a device node of
//! its own bound over `/dev/kvm` in a private mount namespace — the host's node is left
//! alone), its state directory and the backend's control socket through a group the backend
//! config allows, serves cold and warm invocations. This is what deploy/systemd's
//! `nexus-node.service` gives it (docs/security.md, "Least privilege").
//!
//! Runs as root (to make the device node, the namespace and the user switch), with
//! util-linux's `unshare` and `setpriv`: without them it fails saying so.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::Backend;
use common::daemon::{Daemon, function};
use serde_json::json;

const NOBODY: u32 = 65534;

/// `/proc/PID/status`'s line `key:`, its fields.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

#[test]
fn the_node_serves_as_nobody_with_only_dev_kvm() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it makes a device node, a mount namespace and switches to \
         uid {NOBODY} (CI runs as root)"
    );
    for tool in ["unshare", "setpriv", "mknod"] {
        let found = Command::new(tool).arg("--version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "{tool} (util-linux/coreutils) is needed: {found:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // What nobody may run: copies of the daemon and the guest, wherever the build tree is.
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let daemon_binary = bin.join("nexus-vmm");
    std::fs::copy(common::nexus_vmm(), &daemon_binary).unwrap();
    let guest = bin.join("wordcount");
    std::fs::copy(nexus::guests::resolve("wordcount").unwrap(), &guest).unwrap();
    // Its own /dev/kvm: the same device (10, 232), owned by nobody, mode 0600.
    let kvm = root.join("kvm");
    let made = Command::new("mknod")
        .arg(&kvm)
        .args(["c", "10", "232"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod {}: {made}", kvm.display());
    chown(&kvm, NOBODY, NOBODY);
    std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The backend (as root here) lets group 65534 on its control socket.
    let store = root.join("store");
    std::fs::create_dir_all(store.join("inputs")).unwrap();
    std::fs::write(store.join("inputs/words.txt"), "one two three four\n").unwrap();
    let config = root.join("backend.toml");
    std::fs::write(
        &config,
        format!("[control]\ngids = [{NOBODY}]\nsocket_group = {NOBODY}\n"),
    )
    .unwrap();
    let backend = Backend::start(
        root,
        &common::store_url(&store),
        &["--config", config.to_str().unwrap()],
    );

    // The daemon's directory: its functions (readable) and its state (its own).
    let node_dir = root.join("node");
    std::fs::create_dir_all(node_dir.join("state")).unwrap();
    chown(&node_dir.join("state"), NOBODY, NOBODY);
    let script = format!(
        "mount --bind \"$0\" /dev/kvm && exec setpriv --reuid={NOBODY} --regid={NOBODY} \
         --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs \"$@\""
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        kvm.to_str().unwrap(),
    ];
    let daemon = Daemon::start_wrapped(
        &node_dir,
        &backend,
        &[(
            "wordcount",
            function(guest.to_str().unwrap(), "max_vms = 1"),
        )],
        &[],
        &wrapper,
        &daemon_binary,
    );

    // `unshare` and `sh` exec: the process is the daemon, as nobody, with nothing more.
    let pid = daemon.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "nexus-vmm");
    assert_eq!(status_field(pid, "Uid"), vec![NOBODY.to_string(); 4]);
    assert_eq!(status_field(pid, "Gid"), vec![NOBODY.to_string(); 4]);
    assert!(status_field(pid, "Groups").is_empty());
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);

    // A cold start (snapshot taken into its state directory), then a warm one.
    for start in ["cold", "warm"] {
        let (status, answer) =
            daemon.invoke("wordcount", &json!({ "input_key": "inputs/words.txt" }));
        assert_eq!(status, 200, "{answer}\n{}", daemon.log());
        assert_eq!(answer["output"], "4\n", "{answer}");
        assert_eq!(answer["start"], start, "{answer}");
    }
    let snapshots = node_dir.join("state/snapshots");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&snapshots).unwrap());
    assert_eq!(owner, NOBODY, "the snapshots are the daemon's own");
}
