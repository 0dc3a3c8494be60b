// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The nexus-guest client over the loopback transport against the real backend binary and a
//! file store: object round trips, tenants, errors, and detaching on drop.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, pattern, report};
use nexus_guest::Error as DriverError;
use nexus_loopback::{Error, Loopback};

const TENANTS: &[&str] = &["alpha=tenants/alpha", "beta=tenants/beta"];

#[test]
fn get_put_list_head_delete_round_trip() {
    let backend = Backend::start(TENANTS);
    let mut nexus = backend.connect("rt-1", "alpha");

    let small = b"hello, loopback".to_vec();
    let large = pattern(300 << 10, 7);
    nexus.put("tenants/alpha/a/small", &small).unwrap();
    nexus.put("tenants/alpha/a/large", &large).unwrap();
    nexus.put("tenants/alpha/b/other", b"x").unwrap();

    // GET: the object, and a range of it.
    assert_eq!(&nexus.get("tenants/alpha/a/small").unwrap()[..], &small[..]);
    assert_eq!(&nexus.get("tenants/alpha/a/large").unwrap()[..], &large[..]);
    let range = nexus
        .get_range("tenants/alpha/a/large", 1000, 4096)
        .unwrap();
    assert_eq!(&range[..], &large[1000..1000 + 4096]);
    drop(range);
    // The backend wrote it to the store the client named.
    assert_eq!(
        std::fs::read(backend.objects().join("tenants/alpha/a/large")).unwrap(),
        large
    );

    // HEAD.
    let info = nexus.head("tenants/alpha/a/large").unwrap();
    assert_eq!(info.size, large.len() as u64);

    // LIST: keys under the prefix, in order, with their sizes.
    let page = nexus.list("tenants/alpha/a/", None).unwrap();
    let listed: Vec<(&str, u64)> = page
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.size))
        .collect();
    assert_eq!(
        listed,
        [
            ("tenants/alpha/a/large", large.len() as u64),
            ("tenants/alpha/a/small", small.len() as u64),
        ]
    );
    assert!(page.next_token.is_none());

    // A write-behind PUT is readable once acknowledged, and durable after FLUSH.
    nexus
        .put_behind("tenants/alpha/a/behind", b"later")
        .unwrap();
    nexus.flush().unwrap();
    assert_eq!(&nexus.get("tenants/alpha/a/behind").unwrap()[..], b"later");

    // DELETE, after which the object is gone.
    nexus.delete("tenants/alpha/a/small").unwrap();
    match nexus.get("tenants/alpha/a/small") {
        Err(DriverError::NotFound(_)) => {}
        other => panic!("GET after DELETE: {other:?}"),
    }
    assert!(!backend.objects().join("tenants/alpha/a/small").exists());
    let stats = nexus.device().stats();
    assert!(stats.submitted >= 10, "{stats:?}");
    assert_eq!(stats.resets, 0, "{stats:?}");
}

#[test]
fn a_missing_object_is_not_found() {
    let backend = Backend::start(TENANTS);
    let mut nexus = backend.connect("missing-1", "alpha");
    match nexus.get("tenants/alpha/no/such/object") {
        Err(DriverError::NotFound(message)) => {
            assert!(!message.is_empty(), "NOT_FOUND without a message")
        }
        other => panic!("GET of a missing object: {other:?}"),
    }
    match nexus.head("tenants/alpha/no/such/object") {
        Err(DriverError::NotFound(_)) => {}
        other => panic!("HEAD of a missing object: {other:?}"),
    }
}

#[test]
fn two_clients_of_one_tenant_see_each_others_objects() {
    let backend = Backend::start(TENANTS);
    let mut one = backend.connect("shared-1", "alpha");
    let mut two = backend.connect("shared-2", "alpha");
    one.put("tenants/alpha/from-one", b"one").unwrap();
    two.put("tenants/alpha/from-two", b"two").unwrap();
    assert_eq!(&two.get("tenants/alpha/from-one").unwrap()[..], b"one");
    assert_eq!(&one.get("tenants/alpha/from-two").unwrap()[..], b"two");
    let keys: Vec<String> = one
        .list("tenants/alpha/", None)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["tenants/alpha/from-one", "tenants/alpha/from-two"]);
    two.delete("tenants/alpha/from-one").unwrap();
    assert!(matches!(
        one.get("tenants/alpha/from-one"),
        Err(DriverError::NotFound(_))
    ));
}

#[test]
fn a_key_outside_the_tenant_is_refused() {
    let backend = Backend::start(TENANTS);
    let mut beta = backend.connect("beta-1", "beta");
    beta.put("tenants/beta/secret", b"beta's").unwrap();
    let mut alpha = backend.connect("alpha-1", "alpha");
    let denied = |result: nexus_guest::Result<()>, what: &str| match result {
        Err(DriverError::PermissionDenied(message)) => assert!(
            message.contains("outside prefix"),
            "{what}: unclear refusal {message:?}"
        ),
        other => panic!("{what}: {other:?}"),
    };
    denied(
        alpha.get("tenants/beta/secret").map(drop),
        "GET of another tenant's key",
    );
    denied(
        alpha.put("tenants/beta/secret", b"overwritten"),
        "PUT of another tenant's key",
    );
    denied(
        alpha.delete("tenants/beta/secret"),
        "DELETE of another tenant's key",
    );
    denied(
        alpha.list("tenants/beta/", None).map(drop),
        "LIST of another tenant's prefix",
    );
    // The error reads well as a whole.
    let error = alpha.get("tenants/beta/secret").unwrap_err();
    assert!(
        error.to_string().starts_with("Permission denied: "),
        "{error}"
    );
    // Nothing changed.
    assert_eq!(&beta.get("tenants/beta/secret").unwrap()[..], b"beta's");
}

#[test]
fn connecting_says_why_it_failed() {
    let backend = Backend::start(TENANTS);
    // No socket there.
    let mut config = backend.config("nowhere-1", "alpha");
    config.control_socket = config.control_socket.with_file_name("missing.sock");
    match Loopback::connect(config) {
        Err(Error::Connect { path, .. }) => assert!(path.ends_with("missing.sock")),
        other => panic!(
            "connect to a missing socket: {:?}",
            other.map(|c| c.vm_id().to_owned())
        ),
    }
    // A tenant the backend does not know.
    match Loopback::connect(backend.config("stranger-1", "gamma")) {
        Err(e @ Error::NotAttached { .. }) => {
            assert!(report(&e).contains("\"gamma\""), "{}", report(&e))
        }
        other => panic!(
            "connect as an unknown tenant: {:?}",
            other.map(|c| c.vm_id().to_owned())
        ),
    }
    // A window too small for the driver.
    let mut config = backend.config("tiny-1", "alpha");
    config.window_size = 0x4000;
    match Loopback::connect(config) {
        Err(Error::Driver(DriverError::WindowTooSmall { .. })) => {}
        other => panic!("a 16 KiB window: {:?}", other.map(|c| c.vm_id().to_owned())),
    }
}

#[test]
fn dropping_a_client_detaches_its_vm() {
    let backend = Backend::start(TENANTS);
    let mut first = backend.connect("again-1", "alpha");
    first.put("tenants/alpha/k", b"v").unwrap();
    // The id is taken while the first client is attached.
    assert!(matches!(
        Loopback::connect(backend.config("again-1", "alpha")),
        Err(Error::NotAttached { .. })
    ));
    drop(first);
    // Once the backend has seen the connections close, the id is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut second = loop {
        match Loopback::connect(backend.config("again-1", "alpha")) {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the VM id stayed attached: {}\n{}",
                    report(&e),
                    backend.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(&second.get("tenants/alpha/k").unwrap()[..], b"v");
}
