// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Linking a micro-guest (feature `build`, for a guest package's build script).
//!
//! A micro-guest is a static, non-PIE `ET_EXEC` laid out at `IMAGE_BASE` (`0x10_0000`) without
//! the C runtime (`docs/micro-guest-abi.md`). This module carries the linker script that does
//! that ([`LINKER_SCRIPT`]) and the arguments that go with it, so that a guest package's
//! `build.rs` is one line:
//!
//! ```toml
//! [build-dependencies]
//! nexus-guest = { version = "0.1", default-features = false, features = ["build"] }
//! ```
//!
//! ```ignore
//! // build.rs
//! fn main() {
//!     nexus_guest::build::link_micro_guest();
//! }
//! ```
//!
//! [`link_micro_guest`] writes the script into `OUT_DIR` and tells cargo to link the
//! package's binaries with it (`cargo:rustc-link-arg-bins`). Those arguments also apply to
//! the bins' test harnesses: give the guest bins `test = false` and `bench = false`.

use std::format;
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

/// The linker script of micro-guests: entry `_start`, the image at `0x10_0000`, page-aligned
/// text, read-only data and data segments, unwind tables dropped.
pub const LINKER_SCRIPT: &str = include_str!("../link.ld");

/// The file name [`link_micro_guest`] gives the script in `OUT_DIR`.
pub const LINKER_SCRIPT_NAME: &str = "nexus-micro-guest.ld";

/// Why the link set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Not run by cargo as a build script.
    #[error("OUT_DIR is not set: run this from a build script")]
    NoOutDir,
    /// The script could not be written.
    #[error("Cannot write the linker script {}", path.display())]
    Write {
        /// Where it was to go.
        path: PathBuf,
        /// Why it could not.
        #[source]
        source: std::io::Error,
    },
}

/// The linker arguments of a micro-guest linked with the script at `script`.
pub fn link_args(script: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        // No crt*.o, no libc, no libgcc: the guest is self-contained.
        "-nostdlib",
        // A static ET_EXEC at a fixed address; rustc asks for `-pie` on this target, and the
        // last of `-pie`/`-no-pie` wins.
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
        "-Wl,-z,norelro",
    ]
    .iter()
    .map(|arg| String::from(*arg))
    .collect();
    args.push(format!("-T{}", script.display()));
    args
}

/// Writes [`LINKER_SCRIPT`] into `dir` (as [`LINKER_SCRIPT_NAME`]); returns its path.
pub fn write_linker_script(dir: &Path) -> Result<PathBuf, BuildError> {
    let path = dir.join(LINKER_SCRIPT_NAME);
    std::fs::write(&path, LINKER_SCRIPT).map_err(|source| BuildError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// [`link_micro_guest`], reporting failure instead of panicking. Returns the script's path.
pub fn try_link_micro_guest() -> Result<PathBuf, BuildError> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?;
    let script = write_linker_script(Path::new(&out_dir))?;
    for arg in link_args(&script) {
        std::println!("cargo:rustc-link-arg-bins={arg}");
    }
    std::println!("cargo:rerun-if-changed=build.rs");
    Ok(script)
}

/// Links the calling package's binaries as micro-guests: writes the linker script into
/// `OUT_DIR` and passes it, with `-nostdlib -static -no-pie`, to the linker of every bin
/// (`cargo:rustc-link-arg-bins`). Call it from `build.rs`; panics (failing the build with
/// the reason) if it cannot.
pub fn link_micro_guest() {
    if let Err(error) = try_link_micro_guest() {
        panic!("nexus-guest: cannot link a micro-guest: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_and_its_arguments() {
        assert!(LINKER_SCRIPT.contains("ENTRY(_start)"));
        assert!(LINKER_SCRIPT.contains("IMAGE_BASE = 0x100000;"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_linker_script(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), LINKER_SCRIPT);
        let args = link_args(&path);
        assert_eq!(args.last().unwrap(), &format!("-T{}", path.display()));
        assert!(args.iter().any(|a| a == "-no-pie"));
        assert!(matches!(
            write_linker_script(&dir.path().join("missing")),
            Err(BuildError::Write { .. })
        ));
    }
}
