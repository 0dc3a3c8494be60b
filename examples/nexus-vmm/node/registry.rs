//! The function registry: one small TOML file per function in a directory.
//!
//! ```toml
//! # functions/wordcount.toml — the function's name is the file's stem
//! guest = "wordcount"      # a bundled micro-guest, or a path to an ELF (relative to this file)
//! memory_mib = 64          # guest RAM
//! window_mib = 32          # the I/O window (rings and payload buffers)
//! tenant = "default"       # the backend tenant: what the function may read and write
//! restore = "lazy"         # how cold starts bring guest RAM back: eager, lazy, uffd, prefetch
//! io = "nexus"             # how the guest reaches storage: "nexus" (the nexus-io device and
//!                          # the shared backend) or "net" (its own TCP/IP and S3 client over
//!                          # a tap: the in-guest networking baseline)
//! http_port = 8080         # io = "net" only: the port the guest's invocation server listens on
//! warm_input = "warm up"   # run once through every VM parked ahead of demand (POST /warm)
//! isolation = "reuse"      # between invocations: "reuse" the VM as it is, or "reset" it to
//!                          # its snapshot (nothing of one invocation is seen by the next)
//!
//! [limits]
//! timeout_ms = 30000       # wall-clock limit of one invocation: the VM is stopped after it
//! max_vms = 16             # VMs of this function at once (busy and idle)
//! keep_alive_s = 300       # an idle VM is stopped after this long
//! ```
//!
//! Every key but `guest` is optional (the defaults are the values above). A net function has
//! no I/O window (`window_mib` does not apply) and no backend tenant: its guest reaches the
//! object store with the S3 endpoint, bucket and credentials the daemon gives it in its boot
//! arguments (`--net-s3-*`).
//!
//! `warm_input` (no default): the first invocation of a VM after its restore maps the guest
//! pages the invocation path touches — on this project's reference host 25 shadow-paging
//! faults for `wordcount`, ~2 ms, against 2 exits for every later invocation — so a pool of
//! VMs parked ahead of demand and used least-recently-first pays that on every first call.
//! With `warm_input`, each VM parked by `POST /warm` runs one invocation with this inline
//! input (its result discarded, not counted as an invocation) before it counts as idle. Set
//! it only for a function that may run on that input: it runs for real.
//!
//! `isolation = "reset"`: after every invocation the VM goes back to its snapshot in place —
//! its vCPU registers, every page of guest RAM it wrote (dropped back to the memory file's),
//! its I/O window (rewritten to the snapshot's), its request queue (started again on the
//! backend from the snapshot's ring) and what the backend kept for it (control `reset`) —
//! so no invocation can read what an earlier one left in the VM. It needs guest RAM mapped
//! from the snapshot's memory file: `restore = "lazy"` (the default) and `io = "nexus"`;
//! any other combination is refused when the file is loaded, as is `warm_input`. A reset
//! costs a fraction of a millisecond, and every RAM page the next invocation writes again
//! faults once more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexus_snapshot::RestoreMode;
use serde::{Deserialize, Serialize};

/// A function's limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit of one invocation, in milliseconds.
    pub timeout_ms: u64,
    /// VMs of this function at once, busy and idle.
    pub max_vms: usize,
    /// An idle VM is stopped after this many seconds.
    pub keep_alive_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            max_vms: 16,
            keep_alive_s: 300,
        }
    }
}

/// How a function's guest reaches storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// The nexus-io device and the shared backend.
    #[default]
    Nexus,
    /// Its own TCP/IP stack and S3 client over a virtio-net device on a tap (the in-guest
    /// networking baseline); invocations are HTTP requests to its server.
    Net,
}

/// What a function VM keeps between two invocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// The VM is reused as the invocation left it (its guest's state carries over).
    #[default]
    Reuse,
    /// The VM is reset to its snapshot after every invocation (see the module's docs).
    Reset,
}

/// The default port of a net function's invocation server.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// One function, as its TOML file describes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionFile {
    /// The micro-guest: a bundled name or a path to an ELF.
    pub guest: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// The I/O window in MiB.
    #[serde(default = "default_window")]
    pub window_mib: u64,
    /// The backend tenant.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// How cold starts restore guest RAM (`prefetch`: the first cold start, which finds no
    /// working set, restores with userfaultfd and records one).
    #[serde(default = "default_restore")]
    pub restore: RestoreMode,
    /// How the guest reaches storage.
    #[serde(default)]
    pub io: Io,
    /// A net function's invocation server's port (default [`DEFAULT_HTTP_PORT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// An inline input run once through every VM parked ahead of demand, before it counts
    /// as idle (see the module's documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_input: Option<String>,
    /// What a VM keeps between two invocations.
    #[serde(default)]
    pub isolation: Isolation,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
}

fn default_memory() -> u64 {
    64
}
fn default_window() -> u64 {
    32
}
fn default_tenant() -> String {
    "default".into()
}
fn default_restore() -> RestoreMode {
    RestoreMode::Lazy
}

/// A registered function: its name, its file's settings and its guest's ELF.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// The function's name (its file's stem).
    pub name: String,
    /// Its settings.
    pub file: FunctionFile,
    /// The micro-guest ELF.
    pub elf: PathBuf,
}

impl FunctionSpec {
    /// The invocation timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.file.limits.timeout_ms)
    }

    /// How long an idle VM is kept.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.file.limits.keep_alive_s)
    }

    /// Whether its VMs are reset to the snapshot after every invocation.
    pub fn resets(&self) -> bool {
        self.file.isolation == Isolation::Reset
    }

    /// Whether the function is a net function.
    pub fn is_net(&self) -> bool {
        self.file.io == Io::Net
    }

    /// The I/O window's size in MiB: none for a net function.
    pub fn window_mib(&self) -> u64 {
        match self.file.io {
            Io::Nexus => self.file.window_mib,
            Io::Net => 0,
        }
    }

    /// A net function's invocation server's port.
    pub fn http_port(&self) -> u16 {
        self.file.http_port.unwrap_or(DEFAULT_HTTP_PORT)
    }
}

/// Whether `name` may name a function: 1 to 64 of `[A-Za-z0-9_-]`, not starting with `-`
/// (it becomes part of VM IDs, paths and metric labels).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses one function file's text; `dir` resolves a relative guest path.
pub fn parse(name: &str, text: &str, dir: &Path) -> Result<FunctionSpec> {
    if !valid_name(name) {
        bail!("`{name}` is not a valid function name (1 to 64 of A-Z, a-z, 0-9, `-`, `_`)");
    }
    let file: FunctionFile = toml::from_str(text)?;
    if !(1..=16 * 1024).contains(&file.memory_mib) {
        bail!("memory_mib must be 1 to 16384, not {}", file.memory_mib);
    }
    if !(1..=1024).contains(&file.window_mib) {
        bail!("window_mib must be 1 to 1024, not {}", file.window_mib);
    }
    if file.limits.timeout_ms == 0 {
        bail!("limits.timeout_ms must be positive");
    }
    if file.limits.max_vms == 0 {
        bail!("limits.max_vms must be positive");
    }
    match (file.io, file.http_port) {
        (Io::Nexus, Some(_)) => bail!("http_port applies to io = \"net\" functions only"),
        (Io::Net, Some(0)) => bail!("http_port must be 1 to 65535"),
        _ => {}
    }
    if file.isolation == Isolation::Reset {
        if file.io != Io::Nexus {
            bail!("isolation = \"reset\" applies to io = \"nexus\" functions only");
        }
        if file.restore != RestoreMode::Lazy {
            bail!(
                "isolation = \"reset\" needs restore = \"lazy\" (guest RAM mapped from the \
                 snapshot's memory file, which a reset drops written pages back to), not {:?}",
                file.restore
            );
        }
        if file.warm_input.is_some() {
            bail!(
                "warm_input does not apply with isolation = \"reset\" (the warm-up would \
                 leave its state in the VM until the next invocation)"
            );
        }
    }
    let guest_path = Path::new(&file.guest);
    let elf = if nexus::guests::BUNDLED.contains(&file.guest.as_str()) {
        nexus::guests::resolve(&file.guest)?
    } else if guest_path.is_absolute() {
        guest_path.to_path_buf()
    } else {
        dir.join(guest_path)
    };
    if !elf.is_file() {
        bail!(
            "guest `{}` is neither a bundled micro-guest ({}) nor a file at {}",
            file.guest,
            nexus::guests::BUNDLED.join(", "),
            elf.display()
        );
    }
    Ok(FunctionSpec {
        name: name.to_owned(),
        file,
        elf,
    })
}

/// Loads every `*.toml` of `dir`; the error names the file at fault.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, FunctionSpec>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("Cannot read the functions directory {}", dir.display()))?;
    let mut functions = BTreeMap::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("Cannot read {}", path.display()))?;
        let spec = parse(&name, &text, dir).with_context(|| format!("In {}", path.display()))?;
        functions.insert(name, spec);
    }
    if functions.is_empty() {
        bail!("No function files (*.toml) in {}", dir.display());
    }
    Ok(functions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let dir = std::env::temp_dir();
        let elf = dir.join(format!("nexus-registry-test-{}", std::process::id()));
        std::fs::write(&elf, b"\x7fELF").unwrap();
        let spec = parse(
            "f",
            &format!("guest = {:?}\n", elf.display().to_string()),
            &dir,
        )
        .unwrap();
        assert_eq!(spec.file.memory_mib, 64);
        assert_eq!(spec.file.restore, RestoreMode::Lazy);
        assert_eq!(spec.file.limits, Limits::default());
        assert_eq!(spec.timeout(), Duration::from_secs(30));
        let text = format!(
            "guest = {:?}\nmemory_mib = 128\nrestore = \"eager\"\n[limits]\ntimeout_ms = 500\nmax_vms = 2\n",
            elf.file_name().unwrap().to_str().unwrap()
        );
        let spec = parse("g-2", &text, &dir).unwrap();
        assert_eq!(spec.elf, elf);
        assert_eq!(spec.file.memory_mib, 128);
        assert_eq!(spec.file.restore, RestoreMode::Eager);
        assert_eq!(spec.file.limits.max_vms, 2);
        assert_eq!(spec.file.limits.keep_alive_s, 300);
        assert_eq!(spec.file.io, Io::Nexus);
        assert!(!spec.is_net());
        assert_eq!(spec.window_mib(), 32);
        assert_eq!(spec.file.isolation, Isolation::Reuse);
        assert!(!spec.resets());
        let text = format!(
            "guest = {:?}\nisolation = \"reset\"\n",
            elf.display().to_string()
        );
        assert!(parse("r", &text, &dir).unwrap().resets());
        let text = format!("guest = {:?}\nio = \"net\"\n", elf.display().to_string());
        let spec = parse("n", &text, &dir).unwrap();
        assert!(spec.is_net());
        assert_eq!((spec.window_mib(), spec.http_port()), (0, 8080));
        let text = format!(
            "guest = {:?}\nio = \"net\"\nhttp_port = 9000\n",
            elf.display().to_string()
        );
        assert_eq!(parse("n", &text, &dir).unwrap().http_port(), 9000);
        std::fs::remove_file(elf).unwrap();
    }

    #[test]
    fn bad_files_say_why() {
        let dir = std::env::temp_dir();
        let cases = [
            ("f", "", "guest"),
            ("f", "guest = \"/nonexistent/elf\"", "neither a bundled"),
            ("f", "guest = \"x\"\nmemroy_mib = 3", "memroy_mib"),
            ("f", "guest = \"x\"\nmemory_mib = 0", "memory_mib"),
            ("f", "guest = \"x\"\n[limits]\nmax_vms = 0", "max_vms"),
            ("f", "guest = \"x\"\nrestore = \"fast\"", "fast"),
            ("f", "guest = \"x\"\nio = \"tcp\"", "tcp"),
            (
                "f",
                "guest = \"/bin/sh\"\nhttp_port = 80",
                "io = \"net\" functions only",
            ),
            (
                "f",
                "guest = \"/bin/sh\"\nio = \"net\"\nhttp_port = 0",
                "1 to 65535",
            ),
            (
                "f",
                "guest = \"/bin/sh\"\nisolation = \"reset\"\nrestore = \"eager\"",
                "needs restore = \"lazy\"",
            ),
            (
                "f",
                "guest = \"/bin/sh\"\nisolation = \"reset\"\nio = \"net\"",
                "io = \"nexus\" functions only",
            ),
            ("f", "guest = \"x\"\nisolation = \"wipe\"", "wipe"),
            ("../f", "guest = \"x\"", "not a valid function name"),
            ("f", "guest = ", "TOML"),
        ];
        for (name, text, needle) in cases {
            let error = format!("{:#}", parse(name, text, &dir).unwrap_err());
            assert!(
                error.to_lowercase().contains(&needle.to_lowercase()) || needle == "TOML",
                "{text:?}: {error}"
            );
        }
        assert!(valid_name("word_count-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
