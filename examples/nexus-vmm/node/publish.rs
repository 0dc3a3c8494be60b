//! Snapshots shared between nodes through the backend: a node that took a function's
//! snapshot publishes it (`--publish-snapshots`), and a node that has none fetches the
//! published one instead of booting the guest (`--snapshot-key-file`). The node never holds
//! the store's credentials: the backend stores the files under its system prefix
//! (`snapshot_put` / `snapshot_get`, `nexus-system/snapshots/{function}/{identity}/…`).
//!
//! What is published, for a function's snapshot of identity `I` (a digest of what
//! [`snapshot_identity`](super) says it was taken of):
//!
//! - each file as an object named `{file}.{sha256 prefix}` (content-addressed, so that two
//!   nodes publishing at once never overwrite each other's files): the state file as it is,
//!   the sparse memory file packed ([`pack`]: its non-zero pages and their numbers), the
//!   working-set file if there is one;
//! - last, the `manifest`, stored only if there is none yet (a conditional PUT: the first
//!   publisher wins, the others' files are left unreferenced). It is a line with the hex
//!   HMAC-SHA256 of the rest under the key the nodes share, then JSON ([`Manifest`]): the
//!   function, its identity, the snapshot format, the VMM's version, a digest of the host's
//!   KVM-supported CPUID (which covers the XSAVE size and layout, leaf 0xD), each file's
//!   object, size and SHA-256, and the publishing node.
//!
//! A fetching node checks the HMAC before it reads anything else, then every field against
//! its own (identity, format, version, CPU), then each file's size and hash as it arrives;
//! any mismatch refuses the published snapshot (a log line and
//! `nexus_snapshot_events_total{how="refused_<why>"}`) and the node takes its own. Net
//! functions are never published: their snapshots hold the S3 credentials of their boot
//! arguments.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use nexus_ring::control::{ErrorCode, MAX_SNAPSHOT_FILE};
use nexus_snapshot::SnapshotFiles;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backend::{BackendClient, BackendError};
use super::metrics::Metrics;

/// The format of [`Manifest`].
pub const MANIFEST_FORMAT: u32 = 1;
/// The object name of a published snapshot's manifest.
pub const MANIFEST: &str = "manifest";
/// A memory page, as packed.
const PAGE: u64 = 4096;
/// The first bytes of a packed memory file.
const PACK_MAGIC: &[u8; 8] = b"NXPACK01";

/// How the node shares snapshots (`--snapshot-key-file`, `--publish-snapshots`).
#[derive(Clone)]
pub struct PublishConfig {
    /// The key the nodes share, that authenticates manifests.
    pub key: Arc<[u8]>,
    /// Whether the node publishes the snapshots it takes (it fetches in any case).
    pub publish: bool,
    /// The node's name, written in its manifests.
    pub node: String,
}

impl std::fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishConfig")
            .field("key", &"(hidden)")
            .field("publish", &self.publish)
            .field("node", &self.node)
            .finish()
    }
}

impl PublishConfig {
    /// The key in file `path`: hex (at least 32 digits, whitespace around it ignored) or
    /// else the raw bytes (at least 16).
    pub fn read_key(path: &Path) -> Result<Arc<[u8]>> {
        let raw = std::fs::read(path)
            .with_context(|| format!("Cannot read the snapshot key {}", path.display()))?;
        let text = String::from_utf8_lossy(&raw);
        let trimmed = text.trim();
        let key = if trimmed.len() >= 32
            && trimmed.len() % 2 == 0
            && trimmed.bytes().all(|b| b.is_ascii_hexdigit())
        {
            (0..trimmed.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&trimmed[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?
        } else {
            raw
        };
        if key.len() < 16 {
            bail!(
                "the snapshot key in {} is {} bytes: give at least 16 (or 32 hex digits)",
                path.display(),
                key.len()
            );
        }
        Ok(key.into())
    }
}

/// A published snapshot's description (the manifest's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The function.
    pub function: String,
    /// The digest of the snapshot's identity (the objects' directory).
    pub identity: String,
    /// The identity itself.
    pub identity_text: String,
    /// `nexus_snapshot::FORMAT_VERSION`.
    pub snapshot_format: u32,
    /// The publishing VMM's version.
    pub vmm_version: String,
    /// [`host_cpu`] of the publishing host.
    pub cpu: String,
    /// The files.
    pub files: Vec<ManifestFile>,
    /// The publishing node.
    pub node: String,
}

/// One file of a published snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The file in the snapshot directory (`vm.state`, `vm.mem`, `vm.ws`).
    pub file: String,
    /// Its object (beside the manifest).
    pub object: String,
    /// Whether the object is [`pack`]ed.
    pub packed: bool,
    /// The object's size.
    pub size: u64,
    /// The object's SHA-256, hex.
    pub sha256: String,
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// The digest of a snapshot identity, as a key segment (128 bits of SHA-256, hex).
pub fn identity_digest(identity: &str) -> String {
    sha256_hex(identity.as_bytes())[..32].to_owned()
}

/// A digest of the CPUID KVM supports on this host (every leaf and sub-leaf: features,
/// the XSAVE size and layout of leaf 0xD; not the APIC IDs of the CPU that asked): a
/// snapshot's vCPU state restores on a host with the same.
pub fn host_cpu() -> Result<String, String> {
    static CPU: OnceLock<Result<String, String>> = OnceLock::new();
    CPU.get_or_init(|| {
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("cannot read the supported CPUID: {e}"))?;
        let mut hash = Sha256::new();
        for e in cpuid.as_slice() {
            // KVM reads some leaves on the CPU the ioctl ran on: leave out what names that
            // CPU (its APIC IDs), which differs between two processes of one host.
            let (mut eax, mut ebx, mut edx) = (e.eax, e.ebx, e.edx);
            match e.function {
                0x1 => ebx &= 0x00ff_ffff,
                0xb | 0x1f => edx = 0,
                0x8000_001e => (eax, ebx) = (0, 0),
                _ => {}
            }
            for word in [e.function, e.index, e.flags, eax, ebx, e.ecx, edx] {
                hash.update(word.to_le_bytes());
            }
        }
        Ok(hex(&hash.finalize())[..32].to_owned())
    })
    .clone()
}

/// Signs `manifest`: the hex HMAC, a newline, the JSON.
pub fn seal(key: &[u8], manifest: &Manifest) -> Vec<u8> {
    let body = serde_json::to_vec(manifest).unwrap_or_default();
    let mut mac = mac(key);
    mac.update(&body);
    let mut out = hex(&mac.finalize().into_bytes()).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(&body);
    out
}

/// Why a published snapshot was refused (the metric's `how` is `refused_` and this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The manifest's HMAC does not match (another key, or tampered with).
    #[error("the manifest's HMAC does not match")]
    Hmac,
    /// The manifest is not what this version writes.
    #[error("the manifest is malformed: {0}")]
    Malformed(String),
    /// Taken of something else.
    #[error("the manifest is of another identity or function")]
    Identity,
    /// Another snapshot format or VMM version.
    #[error("the manifest is of another snapshot format or VMM version ({0})")]
    Version(String),
    /// Another host CPU.
    #[error("the manifest is of a host with another CPU ({0})")]
    Cpu(String),
    /// A file does not match its size or hash.
    #[error("file {0} does not match the manifest")]
    Hash(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Hmac => "refused_hmac",
            Refusal::Malformed(_) => "refused_malformed",
            Refusal::Identity => "refused_identity",
            Refusal::Version(_) => "refused_version",
            Refusal::Cpu(_) => "refused_cpu",
            Refusal::Hash(_) => "refused_hash",
        }
    }
}

/// Checks a sealed manifest: the HMAC first, then its JSON.
pub fn open_manifest(key: &[u8], sealed: &[u8]) -> Result<Manifest, Refusal> {
    let newline = sealed
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Refusal::Hmac)?;
    let (tag, body) = (&sealed[..newline], &sealed[newline + 1..]);
    let tag = std::str::from_utf8(tag)
        .ok()
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(Refusal::Hmac)?;
    let tag: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&tag[i..i + 2], 16).unwrap_or(0))
        .collect();
    let mut mac = mac(key);
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| Refusal::Hmac)?;
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(Refusal::Malformed(format!(
            "manifest format {}",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Checks that `manifest` describes a snapshot this node can restore of `function` with
/// `identity`.
pub fn check_manifest(manifest: &Manifest, function: &str, identity: &str) -> Result<(), Refusal> {
    if manifest.function != function
        || manifest.identity != identity_digest(identity)
        || manifest.identity_text != identity
    {
        return Err(Refusal::Identity);
    }
    if manifest.snapshot_format != nexus_snapshot::FORMAT_VERSION
        || manifest.vmm_version != env!("CARGO_PKG_VERSION")
    {
        return Err(Refusal::Version(format!(
            "format {}, version {}",
            manifest.snapshot_format, manifest.vmm_version
        )));
    }
    let cpu = host_cpu().map_err(Refusal::Cpu)?;
    if manifest.cpu != cpu {
        return Err(Refusal::Cpu(manifest.cpu.clone()));
    }
    Ok(())
}

/// Packs a sparse memory file: [`PACK_MAGIC`], its length, the number of non-zero pages,
/// their page numbers (u64 LE each), then the pages. Holes and zero pages are left out.
pub fn pack(path: &Path) -> Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("Cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut numbers = Vec::new();
    let mut pages = Vec::new();
    let mut page = vec![0u8; PAGE as usize];
    let mut at = 0u64;
    while at < len {
        // The next data after `at` (holes are zero): SEEK_DATA, or the end.
        let fd = file.as_raw_fd();
        let offset = i64::try_from(at)?;
        // SAFETY: lseek on a descriptor this function owns; no memory is passed.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        let (data, hole) = if data >= 0 {
            // SAFETY: as above.
            (data, unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) })
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            break; // Only a hole is left.
        } else {
            // A file system without SEEK_DATA: read the rest.
            (offset, i64::try_from(len)?)
        };
        let (start, end) = (
            u64::try_from(data)? / PAGE * PAGE,
            u64::try_from(hole.max(data))?.min(len),
        );
        let mut p = start;
        while p < end {
            file.seek(SeekFrom::Start(p))?;
            let n = usize::try_from((len - p).min(PAGE))?;
            page.fill(0);
            file.read_exact(&mut page[..n])?;
            if page.iter().any(|&b| b != 0) {
                numbers.push(p / PAGE);
                pages.extend_from_slice(&page);
            }
            p += PAGE;
        }
        at = end.max(at + PAGE);
    }
    let mut out = Vec::with_capacity(24 + numbers.len() * 8 + pages.len());
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(numbers.len() as u64).to_le_bytes());
    for n in &numbers {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&pages);
    Ok(out)
}

/// Writes the sparse file `packed` describes at `path` (holes where it has no page). Not
/// synced: a fetched snapshot is a cache, checked (CRCs) whenever it is opened again.
pub fn unpack(packed: &[u8], path: &Path) -> Result<()> {
    let word = |at: usize| -> Result<u64> {
        let bytes = packed
            .get(at..at + 8)
            .context("the packed memory file is cut short")?;
        Ok(u64::from_le_bytes(bytes.try_into()?))
    };
    if packed.get(..8) != Some(&PACK_MAGIC[..]) {
        bail!("not a packed memory file");
    }
    let len = word(8)?;
    let count = usize::try_from(word(16)?)?;
    let pages_at = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(24))
        .context("a bad page count")?;
    if packed.len() != pages_at.saturating_add(count.saturating_mul(PAGE as usize)) {
        bail!("the packed memory file has the wrong length");
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("Cannot create {}", path.display()))?;
    file.set_len(len)?;
    for i in 0..count {
        let number = word(24 + i * 8)?;
        let offset = number.checked_mul(PAGE).filter(|o| *o < len);
        let offset = offset.context("a page beyond the memory file")?;
        let n = usize::try_from((len - offset).min(PAGE))?;
        let start = pages_at + i * PAGE as usize;
        file.write_all_at(&packed[start..start + n], offset)?;
    }
    Ok(())
}

/// Fetches and publishes snapshots for one node.
#[derive(Debug, Clone)]
pub struct Publisher {
    config: PublishConfig,
    backend: BackendClient,
}

/// The files of a snapshot directory, as published: (file name, path, packed).
fn files_of(dir: &Path) -> [(&'static str, PathBuf, bool); 3] {
    let files = SnapshotFiles::in_dir(dir);
    [
        ("vm.state", files.state, false),
        ("vm.mem", files.memory, true),
        ("vm.ws", files.working_set, false),
    ]
}

impl Publisher {
    /// A publisher with `config`, through `backend`.
    pub fn new(config: &PublishConfig, backend: &BackendClient) -> Self {
        Self {
            config: config.clone(),
            backend: backend.clone(),
        }
    }

    /// Writes the published snapshot of `function` with `identity` into `dir` if there is
    /// a valid one; `true` if it did. A refused or failed fetch is logged and counted, and
    /// leaves `dir` without snapshot files.
    pub async fn fetch(
        &self,
        function: &str,
        identity: &str,
        dir: &Path,
        metrics: &Metrics,
    ) -> bool {
        match self.try_fetch(function, identity, dir).await {
            Ok(Some(node)) => {
                log::info!(
                    "function {function}: restored the snapshot node {node} published (no boot)"
                );
                metrics.snapshot_event(function, "fetched");
                true
            }
            Ok(None) => {
                log::info!("function {function}: no published snapshot; taking one");
                metrics.snapshot_event(function, "fetch_missing");
                false
            }
            Err(FetchError::Refused(why)) => {
                log::warn!("function {function}: published snapshot refused: {why}; taking one");
                metrics.snapshot_event(function, why.label());
                for (_, path, _) in files_of(dir) {
                    let _ = std::fs::remove_file(path);
                }
                false
            }
            Err(FetchError::Failed(e)) => {
                log::warn!("function {function}: cannot fetch the published snapshot: {e:#}");
                metrics.snapshot_event(function, "fetch_failed");
                for (_, path, _) in files_of(dir) {
                    let _ = std::fs::remove_file(path);
                }
                false
            }
        }
    }

    async fn try_fetch(
        &self,
        function: &str,
        identity: &str,
        dir: &Path,
    ) -> Result<Option<String>, FetchError> {
        let digest = identity_digest(identity);
        let sealed = match self.backend.snapshot_get(function, &digest, MANIFEST).await {
            Ok(bytes) => bytes,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(None),
            Err(e) => return Err(FetchError::Failed(e.into())),
        };
        let manifest = open_manifest(&self.config.key, &sealed).map_err(FetchError::Refused)?;
        check_manifest(&manifest, function, identity).map_err(FetchError::Refused)?;
        let mut fetched = Vec::new();
        for file in &manifest.files {
            if !["vm.state", "vm.mem", "vm.ws"].contains(&file.file.as_str())
                || (file.packed != (file.file == "vm.mem"))
            {
                return Err(FetchError::Refused(Refusal::Malformed(format!(
                    "file {}",
                    file.file
                ))));
            }
            let bytes = self
                .backend
                .snapshot_get(function, &digest, &file.object)
                .await
                .map_err(|e| FetchError::Failed(e.into()))?;
            if bytes.len() as u64 != file.size || sha256_hex(&bytes) != file.sha256 {
                return Err(FetchError::Refused(Refusal::Hash(file.file.clone())));
            }
            fetched.push((file.clone(), bytes));
        }
        if !["vm.state", "vm.mem"]
            .iter()
            .all(|name| fetched.iter().any(|(f, _)| f.file == *name))
        {
            return Err(FetchError::Refused(Refusal::Malformed(
                "a file is missing".into(),
            )));
        }
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("Cannot create {}", dir.display()))?;
            for (file, bytes) in fetched {
                let path = dir.join(&file.file);
                if file.packed {
                    unpack(&bytes, &path)?;
                } else {
                    let mut out = std::fs::File::create(&path)
                        .with_context(|| format!("Cannot create {}", path.display()))?;
                    out.write_all(&bytes)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| FetchError::Failed(e.into()))?
        .map_err(FetchError::Failed)?;
        Ok(Some(manifest.node))
    }

    /// Publishes the snapshot of `function` with `identity` in `dir` unless one is published
    /// already; logs and counts what happened (`published`, `publish_exists`,
    /// `publish_failed`).
    pub async fn publish(&self, function: &str, identity: &str, dir: &Path, metrics: &Metrics) {
        if !self.config.publish {
            return;
        }
        let how = match self.try_publish(function, identity, dir).await {
            Ok(true) => {
                log::info!("function {function}: snapshot published");
                "published"
            }
            Ok(false) => {
                log::info!(
                    "function {function}: a snapshot was published first by another node; \
                     this one is not"
                );
                "publish_exists"
            }
            Err(e) => {
                log::warn!("function {function}: cannot publish the snapshot: {e:#}");
                "publish_failed"
            }
        };
        metrics.snapshot_event(function, how);
    }

    async fn try_publish(&self, function: &str, identity: &str, dir: &Path) -> Result<bool> {
        let digest = identity_digest(identity);
        let cpu = host_cpu().map_err(anyhow::Error::msg)?;
        let files = {
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || -> Result<Vec<(&'static str, bool, Vec<u8>)>> {
                let mut out = Vec::new();
                for (name, path, packed) in files_of(&dir) {
                    let bytes = if packed {
                        pack(&path)?
                    } else {
                        match std::fs::read(&path) {
                            Ok(bytes) => bytes,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::NotFound && name == "vm.ws" =>
                            {
                                continue;
                            }
                            Err(e) => {
                                return Err(e)
                                    .with_context(|| format!("Cannot read {}", path.display()));
                            }
                        }
                    };
                    out.push((name, packed, bytes));
                }
                Ok(out)
            })
            .await??
        };
        let mut entries = Vec::new();
        for (name, packed, bytes) in files {
            let size = bytes.len() as u64;
            if size > MAX_SNAPSHOT_FILE {
                bail!("{name} is {size} bytes packed, more than the {MAX_SNAPSHOT_FILE} published");
            }
            let sha256 = sha256_hex(&bytes);
            let object = format!("{name}.{}", &sha256[..32]);
            self.backend
                .snapshot_put(function, &digest, &object, Bytes::from(bytes), false)
                .await
                .map_err(|e: BackendError| anyhow::anyhow!("storing {object}: {e}"))?;
            entries.push(ManifestFile {
                file: name.to_owned(),
                object,
                packed,
                size,
                sha256,
            });
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            function: function.to_owned(),
            identity: digest.clone(),
            identity_text: identity.to_owned(),
            snapshot_format: nexus_snapshot::FORMAT_VERSION,
            vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
            cpu,
            files: entries,
            node: self.config.node.clone(),
        };
        let sealed = seal(&self.config.key, &manifest);
        match self
            .backend
            .snapshot_put(function, &digest, MANIFEST, Bytes::from(sealed), true)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(ErrorCode::Exists) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("storing the manifest: {e}")),
        }
    }
}

/// Why a fetch did not give a snapshot.
enum FetchError {
    /// The published snapshot is not to be trusted or not for this host.
    Refused(Refusal),
    /// It could not be read.
    Failed(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            function: "wc".into(),
            identity: identity_digest("guest-crc32=1\n"),
            identity_text: "guest-crc32=1\n".into(),
            snapshot_format: nexus_snapshot::FORMAT_VERSION,
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            cpu: "c".into(),
            files: vec![],
            node: "n1".into(),
        }
    }

    #[test]
    fn manifests_are_sealed_and_checked() {
        let key = [7u8; 32];
        let sealed = seal(&key, &manifest());
        assert_eq!(open_manifest(&key, &sealed), Ok(manifest()));
        // Another key, a changed byte, no tag: refused before the JSON is read.
        assert_eq!(open_manifest(&[8u8; 32], &sealed), Err(Refusal::Hmac));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 1;
        assert_eq!(open_manifest(&key, &tampered), Err(Refusal::Hmac));
        assert_eq!(open_manifest(&key, b"{}"), Err(Refusal::Hmac));
        // Checked against this node: identity and version.
        let m = manifest();
        assert_eq!(
            check_manifest(&m, "other", "guest-crc32=1\n"),
            Err(Refusal::Identity)
        );
        assert_eq!(
            check_manifest(&m, "wc", "guest-crc32=2\n"),
            Err(Refusal::Identity)
        );
        let old = Manifest {
            vmm_version: "0.0.0-old".into(),
            ..manifest()
        };
        assert!(matches!(
            check_manifest(&old, "wc", "guest-crc32=1\n"),
            Err(Refusal::Version(_))
        ));
    }

    #[test]
    fn memory_files_pack_and_unpack_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.mem");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 * PAGE).unwrap();
        file.write_all_at(b"hello", 3 * PAGE + 10).unwrap();
        file.write_all_at(&[0u8; 4096], 5 * PAGE).unwrap(); // data, but zero
        file.write_all_at(b"end", 64 * PAGE - 3).unwrap();
        drop(file);
        let packed = pack(&path).unwrap();
        assert_eq!(packed.len(), 24 + 2 * 8 + 2 * PAGE as usize);
        let out = dir.path().join("out.mem");
        unpack(&packed, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
        assert!(unpack(&packed[..packed.len() - 1], &out).is_err());
        assert!(unpack(b"NXPACK00", &out).is_err());
    }

    #[test]
    fn keys_are_hex_or_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(&*PublishConfig::read_key(&path).unwrap(), &[0xab; 32][..]);
        std::fs::write(&path, "a raw key of enough bytes").unwrap();
        assert_eq!(
            &*PublishConfig::read_key(&path).unwrap(),
            b"a raw key of enough bytes"
        );
        std::fs::write(&path, "short").unwrap();
        assert!(PublishConfig::read_key(&path).is_err());
    }
}
