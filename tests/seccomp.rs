//! The binaries' seccomp filters (docs/security.md, "Seccomp filters"), on for real: every
//! thread of a serving node and of its backend runs under one, vCPU threads under their
//! own stacked on the node's; `--no-seccomp` turns them off.

mod common;

use std::collections::BTreeMap;

use common::daemon::{function, node};
use serde_json::json;

/// Each thread of process `pid`: its name, seccomp mode (0 none, 2 filter) and filter count.
fn threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        if comm.starts_with("kvm-") {
            // KVM's own worker (`kvm-nx-lpage-recovery`, one per VM on hosts that mitigate
            // iTLB multihit): a kernel task listed among the process's threads, which never
            // runs user code.
            continue;
        }
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or(0, |v| v.trim().parse().unwrap())
        };
        threads.push((
            comm.trim().to_owned(),
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    threads
}

#[test]
fn every_thread_of_the_node_and_backend_is_filtered() {
    let n = node(&[("wordcount", function("wordcount", ""))], &[], 100);
    let (status, warm) = n
        .daemon
        .json("POST", "/v1/functions/wordcount/warm", "{\"count\":2}");
    assert_eq!(status, 200, "{warm}");
    let (status, r) = n
        .daemon
        .invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(status, 200, "{r}\n{}", n.daemon.log());
    assert_eq!(r["output"], "100\n");

    let node_threads = threads(n.daemon.pid());
    let by_name: BTreeMap<_, _> = node_threads
        .iter()
        .map(|(name, _, filters)| (name.as_str(), *filters))
        .collect();
    for (name, mode, filters) in &node_threads {
        assert_eq!(
            *mode, 2,
            "node thread {name} is not filtered: {node_threads:?}"
        );
        assert!(*filters >= 2, "{name}: {node_threads:?}");
    }
    // The main thread and the runtime's run under the node's filter (and its marker); a vCPU
    // worker under the node's and its own.
    let main = node_threads[0].2;
    assert!(
        node_threads.iter().any(|(_, _, f)| *f > main),
        "no thread stacks a filter on the node's: {by_name:?}"
    );

    let backend_threads = threads(n.backend.pid());
    for (name, mode, _) in &backend_threads {
        assert_eq!(
            *mode, 2,
            "backend thread {name} is not filtered: {backend_threads:?}"
        );
    }
    assert!(
        !n.daemon.log().contains("nexus: seccomp:"),
        "{}",
        n.daemon.log()
    );
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    let n = node(
        &[("wordcount", function("wordcount", ""))],
        &["--no-seccomp"],
        10,
    );
    let (status, r) = n
        .daemon
        .invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(status, 200, "{r}\n{}", n.daemon.log());
    let node_threads = threads(n.daemon.pid());
    assert!(node_threads.len() > 2, "{node_threads:?}");
    for (name, mode, _) in &node_threads {
        assert_eq!(*mode, 0, "node thread {name} is filtered: {node_threads:?}");
    }
}
