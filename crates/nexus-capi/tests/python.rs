// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Python package against a real `nexus-backend`: `nexus.Client` (GET/PUT/LIST/HEAD/
//! DELETE), and a plain boto3 program behind `nexus.boto3.install()` whose objects land in
//! the backend's store. Nothing is installed: the package comes from `PYTHONPATH`, libnexus
//! from `NEXUS_LIBRARY`. python3 with boto3 must be there (CI installs boto3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Backend, TENANT, WAIT, install_library, run};

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/nexus")
}

/// `python3` with the package on its path and libnexus at `library`, or a failure saying
/// what is missing.
fn python(library: &Path) -> Command {
    let probe = Command::new("python3")
        .args(["-c", "import boto3, botocore"])
        .output();
    match probe {
        Err(e) => panic!("these tests need python3 (with boto3): cannot run python3: {e}"),
        Ok(out) if !out.status.success() => panic!(
            "these tests need boto3 for python3 (pip install boto3): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
    let mut python = Command::new("python3");
    python
        .env("PYTHONPATH", package_dir().join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NEXUS_LIBRARY", library)
        // No credentials, region or endpoint of the machine's: the shim needs none.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE");
    python
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

#[test]
fn the_python_client_reads_and_writes_through_a_real_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(dir.path());
    let library = install_library(&dir.path().join("lib"));
    let rust = nexus_capi::open_loopback(backend.control.to_str().unwrap(), "rust-vm", TENANT, 0)
        .unwrap_or_else(|e| panic!("open: {e}\n{}", backend.log()));
    rust.with(|c| c.write("alpha/shared/from-rust", b"hello from Rust", false))
        .unwrap();

    let mut python = python(&library);
    python
        .arg(script("client_roundtrip.py"))
        .env("NEXUS_CONTROL_SOCKET", &backend.control)
        .env("NEXUS_TENANT", TENANT);
    let ran = run(python, dir.path(), "client_roundtrip", WAIT);
    ran.assert_success("client_roundtrip.py");
    assert!(
        ran.stdout.contains("client_roundtrip: ok"),
        "{}",
        ran.stdout
    );

    // Python's objects, in the store and through Rust.
    assert_eq!(
        std::fs::read(backend.object_path("alpha/py/kept")).unwrap(),
        b"kept by Python"
    );
    assert_eq!(
        std::fs::read(backend.object_path("alpha/py/behind")).unwrap(),
        b"written behind"
    );
    let big = rust.with(|c| c.read_all("alpha/py/big")).unwrap();
    assert_eq!(big.len(), 200 * 1024);
    assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(!backend.object_path("alpha/py/gone").exists());
}

#[test]
fn an_unmodified_boto3_program_runs_over_nexus_io() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(dir.path());
    let library = install_library(&dir.path().join("lib"));
    // The input, written straight into the store's directory.
    let words = "the quick brown fox jumps over the lazy dog";
    let input = backend.object_path("alpha/input/words.txt");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(&input, words).unwrap();
    let blob: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    std::fs::write(backend.object_path("alpha/input/blob"), &blob).unwrap();

    let mut python = python(&library);
    python
        .arg(script("boto3_function.py"))
        .env("NEXUS_CONTROL_SOCKET", &backend.control)
        .env("NEXUS_TENANT", TENANT)
        .env("NEXUS_VM_ID", "boto3-vm");
    let ran = run(python, dir.path(), "boto3_function", WAIT);
    ran.assert_success("boto3_function.py");
    assert!(
        ran.stdout.contains("missing key: NoSuchKey"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("boto3_function: 9 words"),
        "{}",
        ran.stdout
    );

    assert_eq!(
        std::fs::read_to_string(backend.object_path("alpha/output/words.txt")).unwrap(),
        words.to_uppercase()
    );
    assert_eq!(
        std::fs::read(backend.object_path("alpha/output/blob")).unwrap(),
        blob
    );
    assert!(!input.exists(), "delete_object left the input in the store");
}

#[test]
fn the_shim_keeps_boto3_shapes() {
    // The unit tests of the shim (an in-memory client: no backend, no libnexus).
    let dir = tempfile::tempdir().unwrap();
    let mut python = python(Path::new("/nonexistent/libnexus.so.0"));
    python
        .current_dir(package_dir())
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"]);
    let ran = run(python, dir.path(), "unittest", WAIT);
    ran.assert_success("python3 -m unittest");
    assert!(ran.stderr.contains("OK"), "{}", ran.stderr);
}
