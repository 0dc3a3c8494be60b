// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libnexus from C: `tests/c/roundtrip.c`, compiled with `cc` against the installed library
//! (`-lnexus`, soname `libnexus.so.0`), runs GET/PUT/HEAD/LIST/DELETE/write-behind PUT
//! through the loopback transport against a real `nexus-backend`, and a Rust client of the
//! same tenant sees the C program's objects (and the C program the Rust client's).

mod common;

use std::process::Command;

use common::{Backend, TENANT, WAIT, include_dir, install_library, run};

#[test]
fn a_c_program_and_a_rust_client_share_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(dir.path());
    let lib_dir = dir.path().join("lib");
    install_library(&lib_dir);

    // Compile against the header and the installed library.
    let program = dir.path().join("roundtrip");
    let compiled = run(
        {
            let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
            cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(include_dir())
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/roundtrip.c"))
                .arg("-L")
                .arg(&lib_dir)
                .arg("-lnexus")
                .arg("-o")
                .arg(&program);
            cc
        },
        dir.path(),
        "cc",
        WAIT,
    );
    compiled.assert_success("cc");
    // The program records the soname, not the file it was linked with.
    let binary = std::fs::read(&program).unwrap();
    assert!(
        binary.windows(14).any(|w| w == b"libnexus.so.0\0"),
        "the program does not need libnexus.so.0"
    );

    let rust = nexus_capi::open_loopback(backend.control.to_str().unwrap(), "rust-vm", TENANT, 0)
        .unwrap_or_else(|e| panic!("open: {e}\n{}", backend.log()));
    let expected = "hello from Rust";
    rust.with(|c| c.write("alpha/shared/from-rust", expected.as_bytes(), false))
        .unwrap();

    let mut c_program = Command::new(&program);
    c_program
        .arg(&backend.control)
        .args(["c-vm", TENANT, "alpha/shared", expected])
        .env("LD_LIBRARY_PATH", &lib_dir);
    let ran = run(c_program, dir.path(), "roundtrip", WAIT);
    ran.assert_success("roundtrip");
    assert!(ran.stdout.contains(", 0 failures"), "{}", ran.stdout);

    // What C wrote, through Rust and in the store's directory.
    let from_c = rust.with(|c| c.read_all("alpha/shared/from-c")).unwrap();
    assert_eq!(from_c, b"written by C");
    let behind = rust.with(|c| c.read_all("alpha/shared/behind-c")).unwrap();
    assert_eq!(behind, b"behind");
    assert_eq!(
        std::fs::read(backend.object_path("alpha/shared/from-c")).unwrap(),
        b"written by C"
    );
    assert!(!backend.object_path("alpha/shared/deleted-by-c").exists());
    let listed = rust.with(|c| c.list("alpha/shared/", None)).unwrap();
    let keys: Vec<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "alpha/shared/behind-c",
            "alpha/shared/from-c",
            "alpha/shared/from-rust"
        ]
    );
}
