//! The bundled example micro-guests (`guests/` in the workspace): finding and building them.
//!
//! A bundled guest is named (`hello`, `fib`, …); any other argument is a path to a
//! micro-guest ELF. Bundled guests are built by cargo, with the same profile as the running
//! binary, into the same target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

/// The bundled example guests.
pub const BUNDLED: &[&str] = &[
    "hello",
    "fib",
    "crash",
    "wordcount",
    "compress",
    "aes",
    "fibonacci",
    "counter",
    "hostile",
    "getloop",
    "iobench",
    "faulty",
    // The same functions on the in-guest network (`nexus_guest::net_function!`).
    "wordcount-net",
    "compress-net",
    "aes-net",
    "fibonacci-net",
];

/// Errors of locating a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a bundled name nor an existing file.
    #[error("No bundled guest is named {name:?} and no file is at that path (bundled: {list})")]
    Unknown {
        /// What was asked for.
        name: String,
        /// The bundled names.
        list: String,
    },
    /// cargo could not be run.
    #[error("Cannot run cargo to build a workspace binary")]
    Cargo(#[source] std::io::Error),
    /// cargo failed.
    #[error("Building a workspace binary failed (cargo exited with {0})")]
    BuildFailed(std::process::ExitStatus),
    /// The build succeeded but the binary is missing.
    #[error("{0} was built but is not at {1}")]
    Missing(String, PathBuf),
    /// cargo took too long and was stopped.
    #[error("Building {0} took longer than {1:?}; cargo was stopped")]
    Timeout(PathBuf, Duration),
}

/// Where the workspace is (compile-time), to build bundled guests from source.
fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory and profile of the running executable, from its path
/// (`<target>/<profile>/examples/<exe>` or `<target>/<profile>/deps/<exe>`).
pub fn target_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("examples" | "deps")
    ) {
        dir.pop();
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_dir().join("target"));
    (target, profile)
}

/// A `cargo` command without the variables cargo sets for the process it runs (a test, an
/// example): some build scripts (ring's, for one) rerun when `CARGO_PKG_NAME` or
/// `CARGO_MANIFEST_DIR` change, so a nested cargo that inherited a test's values would rebuild
/// them, and the next top-level build would rebuild them back.
fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_by_cargo {
            command.env_remove(name);
        }
    }
    command
}

/// Builds every bundled guest with cargo (once per process), quietly unless it fails.
pub fn build_bundled(progress: bool) -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let (target, profile) = target_profile();
        if progress {
            eprintln!("nexus: building the bundled micro-guests ({profile})…");
        }
        let cargo_profile = if profile == "debug" {
            "dev".to_string()
        } else {
            profile
        };
        let status = cargo_command()
            .current_dir(workspace_dir())
            .args([
                "build",
                "--quiet",
                "--manifest-path",
                "guests/Cargo.toml",
                "--bins",
            ])
            .arg("--profile")
            .arg(cargo_profile)
            .arg("--target-dir")
            .arg(&target)
            .status();
        result = match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(Error::BuildFailed(s)),
            Err(e) => Err(Error::Cargo(e)),
        };
    });
    result
}

/// The path of a binary of this workspace (for example `nexus-backend`), built with cargo
/// (same profile and target directory as the running executable) when the sources are here.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf, Error> {
    build_target(package, &["--bin", bin], bin)
}

/// The path of an example binary of the root package (for example `nexus-vmm`), built with
/// cargo like [`workspace_binary`], so that tests never run a stale example.
pub fn workspace_example(example: &str) -> Result<PathBuf, Error> {
    build_target(
        "nexus",
        &["--example", example],
        &format!("examples/{example}"),
    )
}

fn build_target(package: &str, selector: &[&str], output: &str) -> Result<PathBuf, Error> {
    let (target, profile) = target_profile();
    let path = target.join(&profile).join(output);
    if workspace_dir().join("crates").is_dir() {
        let cargo_profile = if profile == "debug" {
            "dev".to_string()
        } else {
            profile
        };
        let status = cargo_command()
            .current_dir(workspace_dir())
            .args(["build", "--quiet", "-p", package])
            .args(selector)
            .arg("--profile")
            .arg(cargo_profile)
            .arg("--target-dir")
            .arg(&target)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(Error::BuildFailed(s)),
            Err(e) => return Err(Error::Cargo(e)),
        }
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing(output.to_string(), path))
    }
}

/// Builds the micro-guest package whose manifest is `manifest` — a crate of its own, outside
/// this workspace, such as a function written as `docs/writing-functions.md` says — with
/// cargo (dev profile) into `target_dir`; returns the path of its binary `bin`.
/// cargo is killed if it runs longer than `timeout`.
pub fn build_guest_package(
    manifest: &Path,
    bin: &str,
    target_dir: &Path,
    timeout: Duration,
) -> Result<PathBuf, Error> {
    let mut child = cargo_command()
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest)
        .args(["--bin", bin, "--target-dir"])
        .arg(target_dir)
        .spawn()
        .map_err(Error::Cargo)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Error::Cargo)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout(manifest.to_path_buf(), timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        return Err(Error::BuildFailed(status));
    }
    let path = target_dir.join("debug").join(bin);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing(bin.to_string(), path))
    }
}

/// Resolves `name_or_path` to an ELF file: an existing path, or a bundled guest (built if
/// the workspace sources are present).
pub fn resolve(name_or_path: &str) -> Result<PathBuf, Error> {
    let as_path = Path::new(name_or_path);
    if BUNDLED.contains(&name_or_path) && !name_or_path.contains('/') {
        let (target, profile) = target_profile();
        let path = target.join(profile).join(name_or_path);
        if workspace_dir().join("guests").is_dir() {
            build_bundled(!path.exists())?;
        }
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Missing(name_or_path.to_string(), path))
        };
    }
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    Err(Error::Unknown {
        name: name_or_path.to_string(),
        list: BUNDLED.join(", "),
    })
}
