// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend's configuration file (`nexus-backend --config FILE`), in TOML.
//!
//! Every key is optional; unknown keys are refused. Sizes are integers (bytes) or strings
//! with a binary unit (`"64MiB"`: `B`, `KiB`, `MiB`, `GiB`, `TiB`). Relative paths are
//! relative to the file's directory. `crates/nexus-backend/backend.example.toml` shows every
//! key:
//!
//! ```toml
//! listen = "/run/nexus/backend.sock"   # the control socket
//! state_dir = "/run/nexus/backend.state"  # write-behind journal (default: <listen>.state/)
//! io_threads = 2
//! staging_bytes = "1GiB"               # over all VMs
//!
//! [store]
//! url = "s3://nexus-data"              # or file:///DIR
//! endpoint = "http://127.0.0.1:9000"   # S3-compatible service
//! region = "us-east-1"
//! access_key_id = "nexus"
//! secret_access_key_file = "s3-secret" # never the secret itself (else AWS_SECRET_ACCESS_KEY)
//! allow_http = false
//!
//! [limits]                             # every VM's, unless its tenant says otherwise
//! requests_in_flight = 64
//! prefetch_cache_bytes = "64MiB"
//! write_behind_bytes = "256MiB"
//! write_behind_requests = 256
//! staging_bytes = "256MiB"             # the VM's share of the staging budget
//! log_records_per_second = 100
//! log_burst = 200
//! list_scan_budget = 100000
//!
//! [http]
//! allow = ["https://api.example.com", "http://127.0.0.1:8080"]
//! max_timeout_ms = 30000
//! max_request_bytes = "8MiB"
//! max_response_bytes = "64MiB"
//!
//! [control]
//! uids = [1000]
//! gids = [1000]
//! socket_group = "nexus"               # a name or a number
//!
//! [tenants.alpha]
//! prefix = "tenants/alpha"             # the key prefix (inside the bucket, for S3)
//! [tenants.alpha.limits]               # any subset of [limits]
//! log_records_per_second = 10
//! [tenants.alpha.quota]                # over all the tenant's VMs
//! bytes = "10GiB"                      # stored under its prefix
//! objects = 1000000
//! requests_per_second = 1000
//! burst = 2000                         # default: one second's worth
//!
//! [tenants.gamma]                      # a store of its own, with its own credentials
//! url = "s3://gamma-data/functions"    # or file:///DIR; the URL's path is the prefix
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! access_key_id = "gamma"
//! secret_access_key_file = "gamma-s3-secret"
//! allow_http = false
//! [tenants.gamma.http]
//! allow = ["https://api.gamma.example.com"]   # replaces [http] allow for its VMs
//! ```
//!
//! A tenant has a `prefix` in the backend's store, or a `url` of its own store (whose path,
//! for S3, is its prefix; or give `prefix` beside a URL without one). The S3 keys of a
//! tenant mean nothing without its `url` and are refused.
//!
//! An error names the file, the line and key, and what is wrong with it. The same file is
//! read again on reload ([`Backend::reload_config`](crate::Backend::reload_config)), with
//! the same rules.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use toml::Spanned;

use crate::config::{
    BackendConfig, ControlAccess, DEFAULT_STAGING_BYTES, DEFAULT_STORE_URL, HttpPolicy, Quota,
    S3Options, StoreConfig, StoreUrl, TenantSpec, VmLimits, valid_name,
};
use crate::error::{Error, Result};
use crate::tenant::{Tenant, Tenants};

/// What a configuration file sets, checked. Every field is optional (or starts from the
/// defaults), so that command-line flags can override any of it before
/// [`backend_config`](Self::backend_config) puts it together.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    /// The file this was read from (`None`: no file, only defaults).
    pub path: Option<PathBuf>,
    /// `listen`: the control socket.
    pub listen: Option<PathBuf>,
    /// `state_dir`: the backend's own state (its write-behind journal).
    pub state_dir: Option<PathBuf>,
    /// `io_threads`: threads of the shared I/O engine (at least 1).
    pub io_threads: Option<usize>,
    /// `store.url`.
    pub store: Option<StoreUrl>,
    /// The other `[store]` keys; the secret comes from `secret_access_key_file`.
    pub s3: S3Options,
    /// `[tenants.NAME]`, sorted by name.
    pub tenants: Vec<TenantEntry>,
    /// `[limits]`: the per-VM defaults it changes.
    pub limits: LimitOverrides,
    /// `staging_bytes`: the staging budget over all VMs.
    pub staging_bytes: Option<u64>,
    /// `[http]`, over the defaults.
    pub http: HttpPolicy,
    /// `[control]`.
    pub control: ControlAccess,
}

/// A `[tenants.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantEntry {
    /// `NAME`.
    pub name: String,
    /// `prefix`: the key prefix its VMs are confined to (inside the bucket for S3; `""`:
    /// everything).
    pub prefix: String,
    /// `bucket`: for S3 stores, the bucket (it must be the store's; default: the store's).
    pub bucket: Option<String>,
    /// `[tenants.NAME.limits]`: what it changes of the defaults.
    pub limits: LimitOverrides,
    /// `control_uids`: control peers (by user ID) allowed to attach VMs of this tenant
    /// (with `control_gids` both empty: any peer allowed on the control socket).
    pub control_uids: Vec<u32>,
    /// `control_gids`: control peers (by group ID) allowed to attach VMs of this tenant.
    pub control_gids: Vec<u32>,
    /// `url` and the S3 keys beside it: the tenant's own store (`None`: the backend's).
    pub store: Option<StoreConfig>,
    /// `[tenants.NAME.http] allow`: the tenant's own allow-list.
    pub http_allow: Option<Vec<String>>,
    /// `[tenants.NAME.quota]`.
    pub quota: Quota,
}

impl TenantEntry {
    /// The tenant as a [`TenantSpec`] for `store`, with `defaults` changed by its own limits
    /// (`None` if it changes none).
    pub fn spec(&self, store: &StoreUrl, defaults: &VmLimits) -> Result<TenantSpec> {
        let store_bucket = match &self.store {
            Some(_) => None,
            None => store.bucket(),
        };
        let value = match (store_bucket, &self.bucket) {
            (None, None) => self.prefix.clone(),
            (None, Some(bucket)) => {
                return Err(Error::InvalidTenant {
                    spec: self.name.clone(),
                    reason: format!("it names bucket `{bucket}`, but a file store has none"),
                });
            }
            (Some(store_bucket), named) => {
                let bucket = named.as_deref().unwrap_or(store_bucket);
                if self.prefix.is_empty() {
                    bucket.to_owned()
                } else {
                    format!("{bucket}/{}", self.prefix)
                }
            }
        };
        Ok(TenantSpec {
            name: self.name.clone(),
            value,
            limits: (!self.limits.is_empty()).then(|| self.limits.apply(defaults)),
            control_uids: self.control_uids.clone(),
            control_gids: self.control_gids.clone(),
            store: self.store.clone(),
            http_allow: self.http_allow.clone(),
            quota: self.quota.clone(),
        })
    }
}

/// [`VmLimits`] with every field optional: what a `[limits]` table changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// [`VmLimits::requests_in_flight`] (at least 1).
    #[serde(default, deserialize_with = "positive_u32")]
    pub requests_in_flight: Option<u32>,
    /// [`VmLimits::prefetch_cache_bytes`].
    #[serde(default, deserialize_with = "size")]
    pub prefetch_cache_bytes: Option<u64>,
    /// [`VmLimits::write_behind_bytes`].
    #[serde(default, deserialize_with = "size")]
    pub write_behind_bytes: Option<u64>,
    /// [`VmLimits::write_behind_requests`].
    #[serde(default)]
    pub write_behind_requests: Option<u32>,
    /// [`VmLimits::staging_bytes`].
    #[serde(default, deserialize_with = "size")]
    pub staging_bytes: Option<u64>,
    /// [`VmLimits::log_records_per_second`].
    #[serde(default)]
    pub log_records_per_second: Option<u32>,
    /// [`VmLimits::log_burst`].
    #[serde(default)]
    pub log_burst: Option<u32>,
    /// [`VmLimits::list_scan_budget`] (at least 1).
    #[serde(default, deserialize_with = "positive_u32")]
    pub list_scan_budget: Option<u32>,
    /// [`VmLimits::list_scan_per_second`] (at least 1).
    #[serde(default, deserialize_with = "positive_u32")]
    pub list_scan_per_second: Option<u32>,
    /// [`VmLimits::cpu_millis_per_second`] (at least 1).
    #[serde(default, deserialize_with = "positive_u32")]
    pub cpu_millis_per_second: Option<u32>,
}

impl LimitOverrides {
    /// `base` with the fields set here changed.
    pub fn apply(&self, base: &VmLimits) -> VmLimits {
        VmLimits {
            requests_in_flight: self.requests_in_flight.unwrap_or(base.requests_in_flight),
            prefetch_cache_bytes: self
                .prefetch_cache_bytes
                .unwrap_or(base.prefetch_cache_bytes),
            write_behind_bytes: self.write_behind_bytes.unwrap_or(base.write_behind_bytes),
            write_behind_requests: self
                .write_behind_requests
                .unwrap_or(base.write_behind_requests),
            staging_bytes: self.staging_bytes.unwrap_or(base.staging_bytes),
            log_records_per_second: self
                .log_records_per_second
                .unwrap_or(base.log_records_per_second),
            log_burst: self.log_burst.unwrap_or(base.log_burst),
            list_scan_budget: self.list_scan_budget.unwrap_or(base.list_scan_budget),
            list_scan_per_second: self
                .list_scan_per_second
                .unwrap_or(base.list_scan_per_second),
            cpu_millis_per_second: self
                .cpu_millis_per_second
                .unwrap_or(base.cpu_millis_per_second),
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks `text`, the contents of the file at `path` (relative paths in it are relative
    /// to `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file = Source { text, path };
        let raw: RawFile = toml::from_str(text).map_err(|e| file.toml_error(&e))?;
        file.check(raw)
    }

    /// The backend configuration: the defaults, changed by the file (and whatever was set on
    /// this value since). Every tenant is checked against the store, and against the others
    /// (no overlapping prefixes).
    pub fn backend_config(&self, state_dir: PathBuf) -> Result<BackendConfig> {
        let url = match &self.store {
            Some(url) => url.clone(),
            None => StoreUrl::parse(DEFAULT_STORE_URL)?,
        };
        let mut config = BackendConfig::new(
            StoreConfig {
                url,
                s3: self.s3.clone(),
            },
            state_dir,
        );
        config.limits = self.limits.apply(&VmLimits::default());
        config.staging_bytes = self.staging_bytes.unwrap_or(DEFAULT_STAGING_BYTES);
        config.http = self.http.clone();
        config.control = self.control.clone();
        let in_file = |error: Error| match &self.path {
            Some(path) => Error::ConfigFile {
                path: path.clone(),
                line: None,
                key: Some("tenants".to_owned()),
                reason: error.to_string(),
            },
            None => error,
        };
        config.tenants = self
            .tenants
            .iter()
            .map(|entry| entry.spec(&config.store.url, &config.limits))
            .collect::<Result<_>>()
            .map_err(in_file)?;
        Tenants::from_specs(&config.tenants, &config.store.url).map_err(in_file)?;
        Ok(config)
    }
}

/// The file being checked.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    /// An error at byte `span` of the file about `key`.
    fn error(&self, span: Option<Range<usize>>, key: Option<String>, reason: String) -> Error {
        let line = span.map(|span| {
            let end = span.start.min(self.text.len());
            self.text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        Error::ConfigFile {
            path: self.path.to_owned(),
            line,
            key,
            reason,
        }
    }

    /// An error about the value of `key`.
    fn at<T>(&self, value: &Spanned<T>, key: &str, reason: impl Into<String>) -> Error {
        self.error(Some(value.span()), Some(key.to_owned()), reason.into())
    }

    fn toml_error(&self, error: &toml::de::Error) -> Error {
        let key = error.span().and_then(|span| key_at(self.text, span.start));
        self.error(error.span(), key, error.message().trim_end().to_owned())
    }

    /// A path in the file, relative to its directory.
    fn path_in_file(&self, path: PathBuf) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }

    fn check(&self, raw: RawFile) -> Result<ConfigFile> {
        let mut config = ConfigFile {
            path: Some(self.path.to_owned()),
            listen: raw.listen.map(|p| self.path_in_file(p)),
            state_dir: raw.state_dir.map(|p| self.path_in_file(p)),
            io_threads: raw.io_threads,
            staging_bytes: raw.staging_bytes,
            limits: raw.limits,
            ..ConfigFile::default()
        };
        if let Some(store) = raw.store {
            self.check_store(store, &mut config)?;
        }
        config.http = self.check_http(raw.http)?;
        config.control = self.check_control(raw.control)?;
        for (name, tenant) in raw.tenants {
            config.tenants.push(self.check_tenant(name, tenant)?);
        }
        Ok(config)
    }

    fn check_store(&self, store: RawStore, config: &mut ConfigFile) -> Result<()> {
        let url = StoreUrl::parse(store.url.get_ref())
            .map_err(|e| self.at(&store.url, "store.url", e.to_string()))?;
        config.store = Some(url);
        config.s3 = self.check_s3(
            "store",
            S3Keys {
                endpoint: store.endpoint,
                region: store.region,
                access_key_id: store.access_key_id,
                secret_access_key_file: store.secret_access_key_file,
                allow_http: store.allow_http,
                secret_access_key: store.secret_access_key,
                session_token: store.session_token,
            },
        )?;
        Ok(())
    }

    /// The S3 keys of table `table` (`store`, or `tenants.NAME`).
    fn check_s3(&self, table: &str, keys: S3Keys) -> Result<S3Options> {
        for (secret, key) in [
            (&keys.secret_access_key, "secret_access_key"),
            (&keys.session_token, "session_token"),
        ] {
            if let Some(secret) = secret {
                return Err(self.at(
                    secret,
                    &format!("{table}.{key}"),
                    format!("secrets do not belong in the configuration file: use the AWS_* environment variables or {table}.secret_access_key_file"),
                ));
            }
        }
        if let Some(endpoint) = &keys.endpoint {
            if reqwest::Url::parse(endpoint.get_ref()).is_err() {
                return Err(self.at(endpoint, &format!("{table}.endpoint"), "not a URL"));
            }
        }
        let secret_access_key = match keys.secret_access_key_file {
            None => None,
            Some(file) => {
                Some(self.read_secret(&file, &format!("{table}.secret_access_key_file"))?)
            }
        };
        Ok(S3Options {
            endpoint: keys.endpoint.map(Spanned::into_inner),
            region: keys.region,
            access_key_id: keys.access_key_id,
            secret_access_key,
            session_token: None,
            allow_http: keys.allow_http,
        })
    }

    fn read_secret(&self, file: &Spanned<PathBuf>, key: &str) -> Result<String> {
        let path = self.path_in_file(file.get_ref().clone());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.at(file, key, format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(self.at(file, key, format!("{} is empty", path.display())));
        }
        Ok(secret.to_owned())
    }

    fn check_http(&self, http: RawHttp) -> Result<HttpPolicy> {
        let mut policy = HttpPolicy {
            allow: self.check_allow(http.allow, "http")?,
            ..HttpPolicy::default()
        };
        if let Some(ms) = http.max_timeout_ms {
            policy.max_timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = http.max_request_bytes {
            policy.max_request_bytes = bytes;
        }
        if let Some(bytes) = http.max_response_bytes {
            policy.max_response_bytes = bytes;
        }
        Ok(policy)
    }

    /// Checks the allow-list `allow` of table `table`.
    fn check_allow(&self, allow: Vec<Spanned<String>>, table: &str) -> Result<Vec<String>> {
        for (index, entry) in allow.iter().enumerate() {
            check_allow_entry(entry.get_ref())
                .map_err(|reason| self.at(entry, &format!("{table}.allow[{index}]"), reason))?;
        }
        Ok(allow.into_iter().map(Spanned::into_inner).collect())
    }

    fn check_control(&self, control: RawControl) -> Result<ControlAccess> {
        let socket_group = match control.socket_group {
            None => None,
            Some(group) => Some(match group.get_ref() {
                GroupRef::Id(gid) => *gid,
                GroupRef::Name(name) => crate::privileges::group_id(name).ok_or_else(|| {
                    self.at(
                        &group,
                        "control.socket_group",
                        format!("there is no group `{name}` on this host"),
                    )
                })?,
            }),
        };
        Ok(ControlAccess {
            uids: control.uids,
            gids: control.gids,
            socket_group,
        })
    }

    fn check_tenant(&self, name: Spanned<String>, tenant: RawTenant) -> Result<TenantEntry> {
        let key = format!("tenants.{}", name.get_ref());
        if !valid_name(name.get_ref()) {
            return Err(self.at(
                &name,
                &key,
                "a tenant name is 1 to 64 letters, digits, `.`, `_` or `-`",
            ));
        }
        if tenant.url.is_none() {
            // The S3 keys of a tenant's own store mean nothing without one.
            let stray = [
                tenant.endpoint.as_ref().map(|v| (v.span(), "endpoint")),
                tenant
                    .secret_access_key_file
                    .as_ref()
                    .map(|v| (v.span(), "secret_access_key_file")),
            ];
            if let Some((span, name)) = stray.into_iter().flatten().next() {
                return Err(self.error(
                    Some(span),
                    Some(format!("{key}.{name}")),
                    "the S3 keys of a tenant belong to its own store: set url too".into(),
                ));
            }
            if tenant.region.is_some()
                || tenant.access_key_id.is_some()
                || tenant.allow_http.is_some()
                || tenant.secret_access_key.is_some()
                || tenant.session_token.is_some()
            {
                return Err(self.at(
                    &name,
                    &key,
                    "the S3 keys of a tenant belong to its own store: set url too",
                ));
            }
        }
        let (store, url_prefix) = match &tenant.url {
            None => (None, None),
            Some(url) => {
                let (parsed, prefix) = StoreUrl::parse_with_prefix(url.get_ref())
                    .map_err(|e| self.at(url, &format!("{key}.url"), e.to_string()))?;
                if tenant.access_key_id.is_some() != tenant.secret_access_key_file.is_some() {
                    return Err(self.at(
                        url,
                        &key,
                        "a tenant's own store takes access_key_id and secret_access_key_file together (or neither: the AWS_* variables)",
                    ));
                }
                let s3 = self.check_s3(
                    &key,
                    S3Keys {
                        endpoint: tenant.endpoint,
                        region: tenant.region,
                        access_key_id: tenant.access_key_id,
                        secret_access_key_file: tenant.secret_access_key_file,
                        allow_http: tenant.allow_http.unwrap_or(false),
                        secret_access_key: tenant.secret_access_key,
                        session_token: tenant.session_token,
                    },
                )?;
                (Some(StoreConfig { url: parsed, s3 }), Some(prefix))
            }
        };
        let prefix = match (&tenant.prefix, url_prefix) {
            (Some(prefix), Some(from_url)) if !from_url.is_empty() => {
                return Err(self.at(
                    prefix,
                    &format!("{key}.prefix"),
                    format!("the url names prefix `{from_url}` already: give it once"),
                ));
            }
            (Some(prefix), _) => prefix.clone(),
            (None, Some(from_url)) => Spanned::new(name.span(), from_url),
            (None, None) => {
                return Err(self.at(
                    &name,
                    &key,
                    "a tenant needs a prefix (in the backend's store), or a url of its own store",
                ));
            }
        };
        if store.is_some() && tenant.bucket.is_some() {
            return Err(self.at(
                &name,
                &format!("{key}.bucket"),
                "a tenant with its own store names its bucket in url",
            ));
        }
        // The prefix's own rules; the bucket and overlaps are checked with the store.
        Tenant::new(name.get_ref(), prefix.get_ref()).map_err(|e| {
            let reason = match e {
                Error::InvalidTenant { reason, .. } => reason,
                other => other.to_string(),
            };
            self.at(&prefix, &format!("{key}.prefix"), reason)
        })?;
        let http_allow = match tenant.http {
            None => None,
            Some(http) => Some(self.check_allow(http.allow, &format!("{key}.http"))?),
        };
        let quota = tenant.quota.unwrap_or_default();
        Ok(TenantEntry {
            name: name.into_inner(),
            prefix: prefix.into_inner(),
            bucket: tenant.bucket,
            limits: tenant.limits,
            control_uids: tenant.control_uids,
            control_gids: tenant.control_gids,
            store,
            http_allow,
            quota: Quota {
                bytes: quota.bytes,
                objects: quota.objects,
                requests_per_second: quota.requests_per_second,
                burst: quota.burst,
            },
        })
    }
}

/// The S3 keys of a store table, as written.
struct S3Keys {
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<Spanned<PathBuf>>,
    allow_http: bool,
    secret_access_key: Option<Spanned<IgnoredAny>>,
    session_token: Option<Spanned<IgnoredAny>>,
}

/// The dotted key whose name or value covers byte `at` of `text` (the innermost), if any.
fn key_at(text: &str, at: usize) -> Option<String> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    let mut found = None;
    find_in_table(document.get_ref(), at, &mut path, &mut found);
    found
}

/// Looks for `at` in every entry of `table`, `path` being the table's own key.
fn find_in_table(
    table: &toml::de::DeTable<'_>,
    at: usize,
    path: &mut Vec<String>,
    found: &mut Option<String>,
) {
    for (key, value) in table.iter() {
        path.push(format!(".{}", key.get_ref()));
        if key.span().contains(&at) {
            *found = Some(dotted(path));
        }
        find_in_value(value, at, path, found);
        path.pop();
    }
}

/// Looks for `at` in `value` and what it holds.
fn find_in_value(
    value: &Spanned<toml::de::DeValue<'_>>,
    at: usize,
    path: &mut Vec<String>,
    found: &mut Option<String>,
) {
    if value.span().contains(&at) {
        *found = Some(dotted(path));
    }
    match value.get_ref() {
        toml::de::DeValue::Table(table) => find_in_table(table, at, path, found),
        toml::de::DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(format!("[{index}]"));
                find_in_value(item, at, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `a.b[1].c` from the pieces `.a`, `.b`, `[1]`, `.c`.
fn dotted(path: &[String]) -> String {
    let joined = path.concat();
    joined.strip_prefix('.').unwrap_or(&joined).to_owned()
}

/// Checks an HTTP allow-list entry: `http://host[:port]` or `https://host[:port]`.
fn check_allow_entry(entry: &str) -> std::result::Result<(), &'static str> {
    const SHAPE: &str = "an allow-list entry is scheme://host[:port] (http or https), nothing more";
    let (scheme, rest) = entry.split_once("://").ok_or(SHAPE)?;
    if !matches!(scheme, "http" | "https") {
        return Err("the scheme of an allow-list entry is http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(SHAPE);
    }
    let url = reqwest::Url::parse(entry).map_err(|_| SHAPE)?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SHAPE);
    }
    Ok(())
}

/// A size: bytes, or a string with a binary unit.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim();
    let what = || {
        format!(
            "`{text}` is not a size: use bytes, or a whole number with B, KiB, MiB, GiB or TiB (like \"64MiB\")"
        )
    };
    let number: u64 = number.parse().map_err(|_| what())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        "tib" => 40,
        _ => return Err(what()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is more bytes than fit in 64 bits"))
}

/// Deserializes a size (see [`parse_size`]).
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<u64>, D::Error> {
    struct SizeVisitor;
    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size: bytes, or a string like \"64MiB\"")
        }
        fn visit_u64<E: de::Error>(self, bytes: u64) -> std::result::Result<u64, E> {
            Ok(bytes)
        }
        fn visit_i64<E: de::Error>(self, bytes: i64) -> std::result::Result<u64, E> {
            u64::try_from(bytes).map_err(|_| E::custom("a size is not negative"))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<u64, E> {
            parse_size(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(SizeVisitor).map(Some)
}

/// Deserializes a number that must be at least 1.
fn positive_u32<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<u32>, D::Error> {
    match u32::deserialize(deserializer)? {
        0 => Err(de::Error::custom("must be at least 1")),
        n => Ok(Some(n)),
    }
}

fn positive_usize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<usize>, D::Error> {
    Ok(positive_u32(deserializer)?.map(|n| n as usize))
}

fn positive_u64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<u64>, D::Error> {
    match u64::deserialize(deserializer)? {
        0 => Err(de::Error::custom("must be at least 1")),
        n => Ok(Some(n)),
    }
}

/// A group, by name or number.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GroupRef {
    Id(u32),
    Name(String),
}

impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct GroupVisitor;
        impl Visitor<'_> for GroupVisitor {
            type Value = GroupRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a group name or number")
            }
            fn visit_u64<E: de::Error>(self, id: u64) -> std::result::Result<GroupRef, E> {
                u32::try_from(id)
                    .map(GroupRef::Id)
                    .map_err(|_| E::custom("a group number fits in 32 bits"))
            }
            fn visit_i64<E: de::Error>(self, id: i64) -> std::result::Result<GroupRef, E> {
                u32::try_from(id)
                    .map(GroupRef::Id)
                    .map_err(|_| E::custom("a group number is 0 to 4294967295"))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> std::result::Result<GroupRef, E> {
                if name.is_empty() {
                    return Err(E::custom("a group name is not empty"));
                }
                Ok(GroupRef::Name(name.to_owned()))
            }
        }
        deserializer.deserialize_any(GroupVisitor)
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "positive_usize")]
    io_threads: Option<usize>,
    #[serde(default, deserialize_with = "size")]
    staging_bytes: Option<u64>,
    store: Option<RawStore>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    tenants: BTreeMap<Spanned<String>, RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    allow_http: bool,
    /// Refused with a message that says where secrets go.
    secret_access_key: Option<Spanned<IgnoredAny>>,
    /// Refused likewise.
    session_token: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default, deserialize_with = "positive_u64")]
    max_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    max_request_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    max_response_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    socket_group: Option<Spanned<GroupRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    prefix: Option<Spanned<String>>,
    bucket: Option<String>,
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<Spanned<PathBuf>>,
    allow_http: Option<bool>,
    /// Refused with a message that says where secrets go.
    secret_access_key: Option<Spanned<IgnoredAny>>,
    /// Refused likewise.
    session_token: Option<Spanned<IgnoredAny>>,
    http: Option<RawTenantHttp>,
    quota: Option<RawQuota>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    control_uids: Vec<u32>,
    #[serde(default)]
    control_gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantHttp {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    #[serde(default, deserialize_with = "size")]
    bytes: Option<u64>,
    #[serde(default)]
    objects: Option<u64>,
    #[serde(default, deserialize_with = "positive_u32")]
    requests_per_second: Option<u32>,
    #[serde(default, deserialize_with = "positive_u32")]
    burst: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(text, Path::new("/etc/nexus/backend.toml"))
    }

    /// The error's text, which must name the file.
    fn error(text: &str) -> String {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.contains("/etc/nexus/backend.toml"), "{error}");
        error
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("backend.example.toml");
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.listen, Some(PathBuf::from("/run/nexus/backend.sock")));
        assert_eq!(file.io_threads, Some(2));
        assert_eq!(file.staging_bytes, Some(1 << 30));
        assert_eq!(
            file.store,
            Some(StoreUrl::File(PathBuf::from("/var/lib/nexus/objects")))
        );
        assert_eq!(file.limits.prefetch_cache_bytes, Some(64 << 20));
        assert_eq!(file.limits.list_scan_budget, Some(100_000));
        assert_eq!(file.http.allow.len(), 2);
        assert_eq!(file.http.max_response_bytes, 64 << 20);
        assert_eq!(file.control.uids, vec![1000]);
        let names: Vec<&str> = file.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "gamma"]);

        let config = file.backend_config(PathBuf::from("/run/vms")).unwrap();
        assert_eq!(
            config.limits,
            VmLimits::default(),
            "the example shows the defaults"
        );
        assert_eq!(config.tenants[0].limits, None);
        let beta = config.tenants[1].limits.clone().unwrap();
        assert_eq!(
            (
                beta.requests_in_flight,
                beta.log_records_per_second,
                beta.log_burst
            ),
            (16, 10, 20)
        );
        assert_eq!(
            beta.prefetch_cache_bytes,
            config.limits.prefetch_cache_bytes
        );
        assert_eq!(config.tenants[1].value, "tenants/beta");
        assert_eq!(
            config.tenants[1].quota,
            Quota {
                bytes: Some(10 << 30),
                objects: Some(1_000_000),
                requests_per_second: Some(1000),
                burst: Some(2000),
            }
        );
        let gamma = &config.tenants[2];
        assert_eq!(gamma.value, "functions");
        let store = gamma.store.as_ref().unwrap();
        assert_eq!(store.url.bucket(), Some("gamma-data"));
        assert_eq!(store.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            gamma.http_allow.as_deref(),
            Some(&["https://api.gamma.example.com".to_owned()][..])
        );
        assert_eq!(config.tenants[0].http_allow, None);
        assert!(config.tenants[0].store.is_none());
    }

    #[test]
    fn tenants_with_their_own_stores_allow_lists_and_quotas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret-a"), "s3cr3t-a\n").unwrap();
        let path = dir.path().join("backend.toml");
        std::fs::write(
            &path,
            "[store]\nurl = \"s3://shared\"\n\
             [tenants.a]\nurl = \"s3://bucket-a/fn/a\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             access_key_id = \"id-a\"\nsecret_access_key_file = \"secret-a\"\n\
             [tenants.a.http]\nallow = [\"https://a.example.com\"]\n\
             [tenants.a.quota]\nbytes = \"1MiB\"\nrequests_per_second = 5\n\
             [tenants.b]\nurl = \"file:///srv/b\"\nprefix = \"x\"\n\
             [tenants.c]\nprefix = \"\"\n",
        )
        .unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let config = file.backend_config(PathBuf::from("/vms")).unwrap();
        let a = &config.tenants[0];
        assert_eq!(a.value, "fn/a");
        let store = a.store.as_ref().unwrap();
        assert_eq!(store.s3.secret_access_key.as_deref(), Some("s3cr3t-a"));
        assert_eq!(store.s3.access_key_id.as_deref(), Some("id-a"));
        assert_eq!(a.quota.bytes, Some(1 << 20));
        assert_eq!(a.quota.requests_per_second, Some(5));
        assert_eq!(a.quota.objects, None);
        // b's own store is a directory, with a prefix in it; c has the whole shared bucket,
        // which overlaps nobody: the others are in stores of their own.
        assert_eq!(config.tenants[1].value, "x");
        assert_eq!(config.tenants[2].value, "shared");
        let tenants = Tenants::from_specs(&config.tenants, &config.store.url).unwrap();
        assert_eq!(tenants.get("a").unwrap().prefix(), "fn/a/");
        assert_eq!(tenants.get("c").unwrap().prefix(), "");

        // Two tenants of one own store still must not overlap.
        let file = parse(
            "[tenants.a]\nurl = \"file:///srv/x\"\n[tenants.b]\nurl = \"file:///srv/x\"\nprefix = \"p\"\n",
        )
        .unwrap();
        let text = file
            .backend_config(PathBuf::from("/vms"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("overlap"), "{text}");
    }

    #[test]
    fn bad_tenant_stores_quotas_and_allow_lists_are_refused_with_their_place() {
        for (text, line, key, what) in [
            (
                "[tenants.a]\nurl = \"s3://b-1\"\nsecret_access_key = \"hunter2\"\n",
                3,
                "tenants.a.secret_access_key",
                "secrets do not belong",
            ),
            (
                "[tenants.a]\nurl = \"ftp://x\"\n",
                2,
                "tenants.a.url",
                "file:///DIR or s3://BUCKET",
            ),
            (
                "[tenants.a]\nprefix = \"a\"\nendpoint = \"http://127.0.0.1:1\"\n",
                3,
                "tenants.a.endpoint",
                "set url too",
            ),
            (
                "[tenants.a]\nurl = \"s3://b-1/p\"\nprefix = \"q\"\n",
                3,
                "tenants.a.prefix",
                "give it once",
            ),
            (
                "[tenants.a]\nurl = \"s3://b-1\"\naccess_key_id = \"k\"\n",
                2,
                "tenants.a",
                "together",
            ),
            (
                "[tenants.a]\nregion = \"r\"\n",
                1,
                "tenants.a",
                "set url too",
            ),
            (
                "[tenants.a]\nurl = \"file:///srv\"\n[tenants.a.quota]\nbites = 1\n",
                4,
                "tenants.a.quota.bites",
                "unknown field",
            ),
            (
                "[tenants.a]\nprefix = \"a\"\n[tenants.a.quota]\nrequests_per_second = 0\n",
                4,
                "tenants.a.quota.requests_per_second",
                "at least 1",
            ),
            (
                "[tenants.a]\nprefix = \"a\"\n[tenants.a.quota]\nbytes = \"1MB\"\n",
                4,
                "tenants.a.quota.bytes",
                "not a size",
            ),
            (
                "[tenants.a]\nprefix = \"a\"\n[tenants.a.http]\nallow = [\"ftp://x\"]\n",
                4,
                "tenants.a.http.allow[0]",
                "http or https",
            ),
            (
                "[tenants.a]\nlimits = {}\n",
                1,
                "tenants.a",
                "needs a prefix",
            ),
        ] {
            let error = error(text);
            assert!(
                error.contains(&format!("line {line}"))
                    && error.contains(&format!("`{key}`"))
                    && error.contains(what),
                "{text:?}: {error}"
            );
            assert!(!error.contains("hunter2"));
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("1 GiB", 1 << 30),
            ("3kib", 3 << 10),
            ("2TiB", 2 << 40),
            ("17B", 17),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "64MB", "1.5GiB", "-1", "64 Mi", "99999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let file = parse("staging_bytes = 1234\n[limits]\nwrite_behind_bytes = \"8MiB\"").unwrap();
        assert_eq!(file.staging_bytes, Some(1234));
        assert_eq!(file.limits.write_behind_bytes, Some(8 << 20));
        let text = error("[limits]\nlog_burst = 5\nwrite_behind_bytes = \"8MB\"\n");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("limits.write_behind_bytes"), "{text}");
        assert!(text.contains("`8MB` is not a size"), "{text}");
        let text = error("staging_bytes = -5");
        assert!(
            text.contains("line 1") && text.contains("not negative"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_place() {
        let text = error("io_threads = 2\n\n[limits]\nlog_brust = 5\n");
        assert!(text.contains("line 4"), "{text}");
        assert!(text.contains("limits.log_brust"), "{text}");
        assert!(text.contains("unknown field `log_brust`"), "{text}");
        let text = error("[tenants.a]\nprefix = \"a\"\ncolour = \"red\"\n");
        assert!(text.contains("line 3") && text.contains("colour"), "{text}");
        let text = error("nonsense = 1");
        assert!(text.contains("unknown field `nonsense`"), "{text}");
        let text = error("io_threads = 0");
        assert!(
            text.contains("io_threads") && text.contains("at least 1"),
            "{text}"
        );
        let text = error("[limits]\nrequests_in_flight = \"many\"");
        assert!(
            text.contains("line 2") && text.contains("requests_in_flight"),
            "{text}"
        );
        let text = error("[store]\nurl = \"ftp://x\"");
        assert!(
            text.contains("line 2") && text.contains("store.url"),
            "{text}"
        );
        assert!(text.contains("file:///DIR or s3://BUCKET"), "{text}");
        let text = error("[store]\nregion = \"x\"");
        assert!(text.contains("missing field `url`"), "{text}");
        let text = error("[control]\nuids = [1,\n  \"x\"]");
        assert!(
            text.contains("line 3") && text.contains("`control.uids[1]`"),
            "{text}"
        );
        let text = error("[limits\nlog_burst = 1");
        assert!(text.contains("line 1"), "{text}");
        let text = error("[tenants.\"bad name\"]\nprefix = \"x\"");
        assert!(
            text.contains("line 1") && text.contains("tenant name"),
            "{text}"
        );
        let text = error("[tenants.a]\nprefix = \"x//y\"");
        assert!(
            text.contains("line 2") && text.contains("tenants.a.prefix"),
            "{text}"
        );
    }

    #[test]
    fn secrets_stay_out_of_the_file() {
        let text = error("[store]\nurl = \"s3://nexus-data\"\nsecret_access_key = \"hunter2\"");
        assert!(
            text.contains("line 3") && text.contains("secrets do not belong"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        let text = error("[store]\nurl = \"s3://nexus-data\"\nsession_token = \"t\"");
        assert!(text.contains("store.session_token"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
        let path = dir.path().join("backend.toml");
        std::fs::write(
            &path,
            "[store]\nurl = \"s3://nexus-data\"\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"id\"\nsecret_access_key_file = \"secret\"\n",
        )
        .unwrap();
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.s3.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(file.s3.access_key_id.as_deref(), Some("id"));
        assert_eq!(file.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        std::fs::write(
            &path,
            "[store]\nurl = \"s3://b-1\"\nsecret_access_key_file = \"none\"\n",
        )
        .unwrap();
        let text = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            text.contains("secret_access_key_file") && text.contains("line 3"),
            "{text}"
        );
        let missing = ConfigFile::load(&dir.path().join("absent.toml")).unwrap_err();
        assert!(matches!(missing, Error::ConfigRead { .. }), "{missing}");
    }

    #[test]
    fn tenants_take_their_limits_and_must_not_overlap() {
        let file = parse(
            "[store]\nurl = \"s3://nexus-data\"\n\
             [limits]\nlog_burst = 7\n\
             [tenants.a]\nprefix = \"fn/a\"\n[tenants.a.limits]\nlist_scan_budget = 10\n\
             [tenants.b]\nprefix = \"fn/b\"\nbucket = \"nexus-data\"\n",
        )
        .unwrap();
        let config = file.backend_config(PathBuf::from("/vms")).unwrap();
        assert_eq!(config.tenants[0].value, "nexus-data/fn/a");
        assert_eq!(config.tenants[1].value, "nexus-data/fn/b");
        let a = config.tenants[0].limits.clone().unwrap();
        assert_eq!((a.list_scan_budget, a.log_burst), (10, 7));
        assert_eq!(config.limits.log_burst, 7);

        let file = parse("[tenants.a]\nprefix = \"x\"\n[tenants.b]\nprefix = \"x/y\"\n").unwrap();
        let text = file
            .backend_config(PathBuf::from("/vms"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("/etc/nexus/backend.toml") && text.contains("`tenants`"),
            "{text}"
        );
        assert!(
            text.contains("`a` (prefix `x/`)") && text.contains("`b` (prefix `x/y/`)"),
            "{text}"
        );
        let file = parse("[tenants.a]\nprefix = \"\"\n").unwrap();
        assert!(
            file.backend_config(PathBuf::from("/vms")).is_ok(),
            "one tenant, everything"
        );
        let file = parse("[tenants.a]\nprefix = \"x\"\nbucket = \"b-1\"\n").unwrap();
        let text = file
            .backend_config(PathBuf::from("/vms"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("file store has none"), "{text}");
        let file = parse(
            "[store]\nurl = \"s3://nexus-data\"\n[tenants.a]\nprefix = \"x\"\nbucket = \"other\"\n",
        )
        .unwrap();
        assert!(file.backend_config(PathBuf::from("/vms")).is_err());
    }

    #[test]
    fn http_and_control() {
        let file = parse(
            "[http]\nallow = [\"https://a.example.com\", \"http://[::1]:8080\", \"http://10.0.0.1:80\"]\nmax_timeout_ms = 1500\n\
             [control]\nuids = [1, 2]\ngids = [3]\nsocket_group = \"root\"\n",
        )
        .unwrap();
        assert_eq!(file.http.allow.len(), 3);
        assert_eq!(file.http.max_timeout, Duration::from_millis(1500));
        assert_eq!(file.control.uids, vec![1, 2]);
        assert_eq!(file.control.gids, vec![3]);
        assert_eq!(file.control.socket_group, Some(0));
        let file = parse("[control]\nsocket_group = 4242\n").unwrap();
        assert_eq!(file.control.socket_group, Some(4242));
        let text = error("[control]\nsocket_group = \"no-such-group-here\"\n");
        assert!(
            text.contains("line 2") && text.contains("no group"),
            "{text}"
        );
        for bad in [
            "api.example.com",
            "ftp://x.example.com",
            "https://x.example.com/path",
            "https://user@x.example.com",
            "https://",
            "https://x.example.com:99999",
        ] {
            let text = error(&format!(
                "[http]\nallow = [\"https://ok.example.com\",\n  \"{bad}\"]\n"
            ));
            assert!(
                text.contains("line 3") && text.contains("http.allow[1]"),
                "{bad}: {text}"
            );
        }
        let text = error("[http]\nmax_timeout_ms = 0\n");
        assert!(text.contains("at least 1"), "{text}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let file = ConfigFile::parse(
            "listen = \"run/backend.sock\"\nstate_dir = \"/abs/vms\"\n",
            Path::new("/etc/nexus/backend.toml"),
        )
        .unwrap();
        assert_eq!(
            file.listen,
            Some(PathBuf::from("/etc/nexus/run/backend.sock"))
        );
        assert_eq!(file.state_dir, Some(PathBuf::from("/abs/vms")));
        // An empty file is the defaults.
        let config = parse("")
            .unwrap()
            .backend_config(PathBuf::from("/vms"))
            .unwrap();
        assert_eq!(
            config.store.url,
            StoreUrl::parse(DEFAULT_STORE_URL).unwrap()
        );
        assert_eq!(config.staging_bytes, DEFAULT_STAGING_BYTES);
        assert!(config.tenants.is_empty());
    }
}
