// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend's configuration: where objects live, the tenants who may touch which (as
//! given, before they are checked against the store), and the limits.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where objects are stored: the `--store` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:///DIR`: objects are files under `DIR` (key `a/b` is `DIR/a/b`). The embedded
    /// default: no service needed, payloads go straight between the page cache and the window.
    File(PathBuf),
    /// `s3://BUCKET`: an S3 bucket (AWS or any S3-compatible service, see [`S3Options`]).
    S3 {
        /// The bucket name.
        bucket: String,
    },
}

impl StoreUrl {
    /// Parses `file:///ABSOLUTE/DIR` or `s3://BUCKET`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidStoreUrl {
            url: url.to_owned(),
            reason,
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file store needs an absolute directory: file:///DIR",
                ));
            }
            let trimmed = path.trim_end_matches('/');
            let dir = if trimmed.is_empty() { "/" } else { trimmed };
            return Ok(StoreUrl::File(PathBuf::from(dir)));
        }
        if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.strip_suffix('/').unwrap_or(bucket);
            if !valid_bucket(bucket) {
                return Err(invalid(
                    "an S3 bucket name is 3 to 63 of a-z, 0-9, `.` and `-` (s3://BUCKET, no path)",
                ));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
            });
        }
        Err(invalid("use file:///DIR or s3://BUCKET"))
    }

    /// Parses a tenant's own store: `file:///DIR` or `s3://BUCKET[/PREFIX]`; returns the
    /// store and the prefix (empty for a file store, or an S3 URL without one).
    pub fn parse_with_prefix(url: &str) -> Result<(Self, String)> {
        if let Some(rest) = url.strip_prefix("s3://") {
            if let Some((bucket, prefix)) = rest.split_once('/') {
                let store = Self::parse(&format!("s3://{bucket}"))?;
                return Ok((store, prefix.trim_end_matches('/').to_owned()));
            }
        }
        Ok((Self::parse(url)?, String::new()))
    }

    /// The bucket of an S3 store; `None` for a file store.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            StoreUrl::File(_) => None,
            StoreUrl::S3 { bucket } => Some(bucket),
        }
    }
}

/// S3 bucket naming rules (the subset that matters here): 3..=63 of `a-z 0-9 . -`, starting
/// and ending with a letter or digit.
fn valid_bucket(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// How to reach an S3 store. Every field left `None` is taken from the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), then from object_store's defaults.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible service, e.g. `http://127.0.0.1:9000`; requests use
    /// path-style addressing when it is set.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key ID.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints that are not on the loopback interface (loopback endpoints
    /// are always allowed, for local S3-compatible servers).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never leave the backend, not even in logs.
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<set>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<set>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Options {
    /// Whether plain HTTP may be used for `endpoint`: always for loopback endpoints
    /// (`localhost`, `127.0.0.0/8`, `::1`), otherwise only with [`allow_http`](Self::allow_http).
    pub fn http_allowed(&self, endpoint: &str) -> bool {
        self.allow_http || is_loopback_url(endpoint)
    }
}

/// Whether `url`'s host is the loopback interface.
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The store: its URL and, for S3, how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Where objects live.
    pub url: StoreUrl,
    /// Connection settings for `s3://` stores (ignored for `file://`).
    pub s3: S3Options,
}

/// The store when none is configured.
pub const DEFAULT_STORE_URL: &str = "file:///var/lib/nexus/objects";

/// Default bound of each VM's prefetch cache.
pub const DEFAULT_PREFETCH_CACHE_BYTES: u64 = 64 << 20;
/// Default bound of the bytes each VM may have in write-behind uploads.
pub const DEFAULT_WRITE_BEHIND_BYTES: u64 = 256 << 20;
/// Default bound of all payload bytes the backend stages in its own memory at once.
pub const DEFAULT_STAGING_BYTES: u64 = 1 << 30;

/// What one VM may use of the shared backend. [`BackendConfig::limits`] holds the defaults;
/// a tenant may override them for its VMs ([`TenantSpec::limits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmLimits {
    /// Ring requests of one VM being served at once; further chains wait in the ring.
    pub requests_in_flight: u32,
    /// Bound of the VM's prefetch cache, in bytes (0 disables prefetching).
    pub prefetch_cache_bytes: u64,
    /// Bound of the VM's pending write-behind bytes; a write-behind PUT beyond it (or beyond
    /// [`write_behind_requests`](Self::write_behind_requests)) is performed synchronously.
    pub write_behind_bytes: u64,
    /// Bound of the VM's pending write-behind uploads, counted (a 0-byte PUT is not free).
    pub write_behind_requests: u32,
    /// The VM's share of the staging budget ([`BackendConfig::staging_bytes`]), in bytes.
    pub staging_bytes: u64,
    /// LOG records the VM may write per second, sustained.
    pub log_records_per_second: u32,
    /// LOG records the VM may write in a burst.
    pub log_burst: u32,
    /// LIST: most objects (and directories) looked at for one page before it ends early with
    /// a continuation token.
    pub list_scan_budget: u32,
    /// LIST: objects (and directories) looked at per second on average over a VM's listings
    /// (with one second's worth as burst); a VM that lists faster waits.
    pub list_scan_per_second: u32,
    /// Milliseconds of the backend's CPU the VM may use a second (its requests' work, kicks
    /// and blocking I/O included), with one second's worth as burst; past it, its requests
    /// wait in the ring.
    pub cpu_millis_per_second: u32,
}

impl Default for VmLimits {
    fn default() -> Self {
        Self {
            requests_in_flight: 64,
            prefetch_cache_bytes: DEFAULT_PREFETCH_CACHE_BYTES,
            write_behind_bytes: DEFAULT_WRITE_BEHIND_BYTES,
            write_behind_requests: 256,
            staging_bytes: 256 << 20,
            log_records_per_second: 100,
            log_burst: 200,
            list_scan_budget: 100_000,
            list_scan_per_second: 100_000,
            cpu_millis_per_second: 200,
        }
    }
}

/// What the HTTP op may reach, and the bounds the backend (not the guest) sets on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Allow-list entries: `scheme://host[:port]` (no port: the scheme's default port only).
    pub allow: Vec<String>,
    /// Longest an HTTP request may take, whatever timeout the guest asks for.
    pub max_timeout: std::time::Duration,
    /// Largest request body a guest may send, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body read, in bytes; a longer body is cut there.
    pub max_response_bytes: u64,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_timeout: std::time::Duration::from_secs(30),
            max_request_bytes: 8 << 20,
            max_response_bytes: 64 << 20,
        }
    }
}

/// Who may use the control socket, and who owns the socket directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlAccess {
    /// User IDs allowed on the control socket (the backend's own user always is).
    pub uids: Vec<u32>,
    /// Group IDs allowed on the control socket.
    pub gids: Vec<u32>,
    /// Group of the socket directory (mode `0750`); `None`: mode `0700`.
    pub socket_group: Option<u32>,
}

/// A tenant's quotas (`[tenants.NAME.quota]`): what all of its VMs together may store and
/// how fast they may ask. `None` fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Bytes stored under the tenant (its prefix in its store), counted at start and kept up
    /// to date on PUT and DELETE.
    pub bytes: Option<u64>,
    /// Objects stored under the tenant.
    pub objects: Option<u64>,
    /// Requests per second over all the tenant's VMs (GET, PUT, HEAD, DELETE, LIST, HTTP,
    /// INVOKE), sustained.
    pub requests_per_second: Option<u32>,
    /// Requests in a burst (default: one second's worth).
    pub burst: Option<u32>,
}

impl Quota {
    /// Whether bytes or objects are limited (so the tenant's usage must be counted).
    pub fn counts_usage(&self) -> bool {
        self.bytes.is_some() || self.objects.is_some()
    }
}

/// A `--tenant NAME=VALUE` argument, not yet checked against the store (the rule is in
/// [`Tenant::from_spec`](crate::Tenant::from_spec)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSpec {
    /// The tenant's name.
    pub name: String,
    /// `PREFIX` (file store) or `BUCKET[/PREFIX]` (S3 store).
    pub value: String,
    /// The per-VM limits of the tenant's VMs (`None`: the backend's defaults).
    pub limits: Option<VmLimits>,
    /// Control peers (user IDs) allowed to attach the tenant's VMs; with `control_gids` both
    /// empty, every peer allowed on the control socket may.
    pub control_uids: Vec<u32>,
    /// Control peers (group IDs) allowed to attach the tenant's VMs.
    pub control_gids: Vec<u32>,
    /// The tenant's own store (`None`: the backend's store, [`BackendConfig::store`]); with
    /// it, `value` is the key prefix inside that store.
    pub store: Option<StoreConfig>,
    /// The tenant's own HTTP allow-list, replacing [`HttpPolicy::allow`] for its VMs.
    pub http_allow: Option<Vec<String>>,
    /// The tenant's quotas.
    pub quota: Quota,
}

impl std::str::FromStr for TenantSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTenant {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, value) = spec.split_once('=').ok_or_else(|| {
            invalid("expected NAME=BUCKET/PREFIX (or NAME=PREFIX for a file store)")
        })?;
        if !valid_name(name) {
            return Err(invalid(
                "a tenant name is 1 to 64 letters, digits, `.`, `_` or `-`",
            ));
        }
        Ok(TenantSpec {
            name: name.to_owned(),
            value: value.to_owned(),
            limits: None,
            control_uids: Vec::new(),
            control_gids: Vec::new(),
            store: None,
            http_allow: None,
            quota: Quota::default(),
        })
    }
}

/// Whether `name` is 1..=64 of `A-Z a-z 0-9 . _ -` (a tenant's name; a VM ID too, which
/// must not start with `.` either).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Everything [`Backend::new`](crate::Backend::new) needs.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// The object store every tenant's objects live in.
    pub store: StoreConfig,
    /// The tenants; empty means one tenant `default` that may touch every object.
    pub tenants: Vec<TenantSpec>,
    /// The backend's own state: its record of acknowledged write-behind uploads
    /// (`uploads.journal`), so that after a restart it can tell which were lost.
    pub state_dir: PathBuf,
    /// The HTTP op's allow-list and bounds.
    pub http: HttpPolicy,
    /// Per-VM limits of VMs whose tenant sets none of its own.
    pub limits: VmLimits,
    /// Bound of the payload bytes the backend copies into its own memory at once, over all
    /// VMs (write-behind copies, S3 request bodies, HTTP and invocation payloads); requests
    /// wait for room.
    pub staging_bytes: u64,
    /// Who may use the control socket.
    pub control: ControlAccess,
}

impl BackendConfig {
    /// A configuration with the default limits, no tenants and no HTTP hosts.
    pub fn new(store: StoreConfig, state_dir: PathBuf) -> Self {
        Self {
            store,
            tenants: Vec::new(),
            state_dir,
            http: HttpPolicy::default(),
            limits: VmLimits::default(),
            staging_bytes: DEFAULT_STAGING_BYTES,
            control: ControlAccess::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/nexus/").unwrap(),
            StoreUrl::File(PathBuf::from("/var/lib/nexus"))
        );
        assert_eq!(
            StoreUrl::parse("file:///").unwrap(),
            StoreUrl::File(PathBuf::from("/"))
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://my.bucket/").unwrap().bucket(),
            Some("my.bucket")
        );
        for bad in [
            "file://relative/dir",
            "file:",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://bucket/path",
            "s3://-bucket",
            "http://example.com",
            "/plain/path",
            "",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
        let (store, prefix) = StoreUrl::parse_with_prefix("s3://my-bucket/fn/a/").unwrap();
        assert_eq!(store.bucket(), Some("my-bucket"));
        assert_eq!(prefix, "fn/a");
        let (store, prefix) = StoreUrl::parse_with_prefix("file:///srv/a/").unwrap();
        assert_eq!(store, StoreUrl::File(PathBuf::from("/srv/a")));
        assert_eq!(prefix, "");
        assert!(StoreUrl::parse_with_prefix("s3://B/x").is_err());
    }

    #[test]
    fn loopback_endpoints_may_use_http() {
        let options = S3Options::default();
        assert!(options.http_allowed("http://127.0.0.1:9000"));
        assert!(options.http_allowed("http://127.5.0.1"));
        assert!(options.http_allowed("http://localhost:9000"));
        assert!(options.http_allowed("http://[::1]:9000"));
        assert!(!options.http_allowed("http://10.0.0.1:9000"));
        assert!(!options.http_allowed("http://s3.example.com"));
        assert!(!options.http_allowed("not a url"));
        let options = S3Options {
            allow_http: true,
            ..S3Options::default()
        };
        assert!(options.http_allowed("http://s3.example.com"));
    }

    #[test]
    fn credentials_are_not_printed() {
        let options = S3Options {
            secret_access_key: Some("hunter2".into()),
            ..S3Options::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
