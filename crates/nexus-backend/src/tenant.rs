// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tenants and the object-key rules.
//!
//! A tenant is a name bound to a key prefix in a store: the backend's store, or the tenant's
//! own (`[tenants.NAME] url = …`, with its own credentials). Every VM is attached to one
//! tenant and may touch only keys that start with its prefix, in its tenant's store only.
//!
//! # The `--tenant NAME=VALUE` rule
//!
//! - `file://` stores have no bucket: `VALUE` is the key prefix (`NAME=` for every key).
//! - `s3://BUCKET` stores: `VALUE` is `BUCKET` (the whole bucket) or `BUCKET/PREFIX`, and
//!   `BUCKET` must be the store's bucket (the backend serves one bucket).
//! - A non-empty prefix always denotes a "directory": `a` and `a/` both mean the prefix `a/`,
//!   so tenant `a` can never reach `ab/…`.
//! - Without any `--tenant`, one tenant `default` with the empty prefix exists.
//! - Keys under [`SYSTEM_PREFIX`] (`nexus-system/`: published snapshots) belong to the
//!   backend: no tenant may touch them, not even one with the empty prefix, and no tenant's
//!   prefix may be or lie under it.
//! - A tenant with its own store is confined to its prefix in that store (the URL's
//!   `s3://BUCKET/PREFIX` or the `prefix` key); it never reaches the backend's store.
//! - No two tenants overlap: neither prefix may start with the other in one store (so equal
//!   prefixes, and the empty prefix beside any other tenant, are refused at start). A single
//!   tenant may have the empty prefix. Stores are compared by bucket, and by directory: a
//!   tenant whose own directory lies under another tenant's place (`file:///srv` with the
//!   empty prefix, and `file:///srv/b`) overlaps it too; so does a tenant's own store that is
//!   the backend's.
//!
//! # Object keys
//!
//! A key is 1 to 1024 bytes of UTF-8 without control characters, made of `/`-separated
//! segments that are neither empty nor `.` or `..` (so no leading, trailing or doubled `/`).
//! The first segment must not be `.nexus-tmp` (the file store's staging directory). The same
//! rule holds for every store, so a key means the same object everywhere.

use std::collections::HashMap;
use std::sync::Arc;

use nexus_ring::limits::MAX_KEY_LEN;

pub(crate) use nexus_ring::control::SYSTEM_PREFIX;

use crate::config::{Quota, StoreConfig, StoreUrl, TenantSpec, VmLimits, valid_name};
use crate::error::{Error, Result};

/// Name of the file store's staging directory; no key may start with it.
pub(crate) const STAGING_DIR: &str = ".nexus-tmp";

/// The tenant every VM gets when the backend was started without `--tenant`.
pub const DEFAULT_TENANT: &str = "default";

/// A tenant: a name, the key prefix its VMs are confined to, and their limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    name: String,
    prefix: String,
    limits: Option<VmLimits>,
    control_uids: Vec<u32>,
    control_gids: Vec<u32>,
    store: Option<StoreConfig>,
    http_allow: Option<Vec<String>>,
    quota: Quota,
}

impl Tenant {
    /// A tenant confined to `prefix` (normalized to end with `/` unless empty).
    pub fn new(name: &str, prefix: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTenant {
            spec: format!("{name}={prefix}"),
            reason: reason.to_owned(),
        };
        if !valid_name(name) {
            return Err(invalid(
                "a tenant name is 1 to 64 letters, digits, `.`, `_` or `-`",
            ));
        }
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        if !trimmed.is_empty() {
            check_key(trimmed).map_err(|reason| invalid(&format!("bad prefix: {reason}")))?;
        }
        if !trimmed.is_empty() && format!("{trimmed}/").starts_with(SYSTEM_PREFIX) {
            return Err(invalid(&format!(
                "keys under `{SYSTEM_PREFIX}` belong to the backend"
            )));
        }
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Ok(Self {
            name: name.to_owned(),
            prefix,
            limits: None,
            control_uids: Vec::new(),
            control_gids: Vec::new(),
            store: None,
            http_allow: None,
            quota: Quota::default(),
        })
    }

    /// The same tenant, whose VMs get `limits` (`None`: the backend's defaults).
    pub fn with_limits(mut self, limits: Option<VmLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// Checks `spec` against the store (see the module docs for the rule).
    pub fn from_spec(spec: &TenantSpec, store: &StoreUrl) -> Result<Self> {
        let prefix = match spec.store.as_ref().map_or(store.bucket(), |_| None) {
            None => spec.value.as_str(),
            Some(bucket) => {
                let (named, prefix) = spec
                    .value
                    .split_once('/')
                    .unwrap_or((spec.value.as_str(), ""));
                if named != bucket {
                    return Err(Error::InvalidTenant {
                        spec: format!("{}={}", spec.name, spec.value),
                        reason: format!(
                            "it names bucket `{named}`, but the store is s3://{bucket}: use {}={bucket}/PREFIX",
                            spec.name
                        ),
                    });
                }
                prefix
            }
        };
        let mut tenant = Self::new(&spec.name, prefix)?.with_limits(spec.limits.clone());
        tenant.control_uids = spec.control_uids.clone();
        tenant.control_gids = spec.control_gids.clone();
        tenant.store = spec.store.clone();
        tenant.http_allow = spec.http_allow.clone();
        tenant.quota = spec.quota.clone();
        Ok(tenant)
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key prefix (empty, or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-VM limits of this tenant's VMs, if it has its own (else the backend's
    /// defaults apply).
    pub fn limits(&self) -> Option<&VmLimits> {
        self.limits.as_ref()
    }

    /// The tenant's own store, if it has one (else it lives in the backend's store).
    pub fn store(&self) -> Option<&StoreConfig> {
        self.store.as_ref()
    }

    /// The tenant's own HTTP allow-list, if it has one (else the backend's applies).
    pub fn http_allow(&self) -> Option<&[String]> {
        self.http_allow.as_deref()
    }

    /// The tenant's quotas.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Whether a control peer with user `uid` and group `gid` may attach VMs of this tenant.
    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        (self.control_uids.is_empty() && self.control_gids.is_empty())
            || self.control_uids.contains(&uid)
            || self.control_gids.contains(&gid)
    }

    /// Whether a VM of this tenant may touch `key` (or list prefix `key`): it is under the
    /// tenant's prefix and not under [`SYSTEM_PREFIX`].
    pub fn allows(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && !key.starts_with(SYSTEM_PREFIX)
    }

    /// Checks that `key` is a valid object key (see the module docs) that a VM of this
    /// tenant may touch.
    pub(crate) fn check_object_key(&self, key: &str) -> Result<()> {
        check_key(key).map_err(|reason| Error::InvalidKey {
            key: key.to_owned(),
            reason,
        })?;
        if !self.allows(key) {
            return Err(Error::KeyNotPermitted {
                key: key.to_owned(),
                tenant: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Where the tenant's objects live, as one string that starts with another tenant's
    /// exactly when that tenant's place holds it: `file:DIR/PREFIX` or `s3:BUCKET/PREFIX`
    /// (`default`: the backend's store).
    fn location(&self, default: &StoreUrl) -> String {
        match self.store.as_ref().map_or(default, |s| &s.url) {
            StoreUrl::File(dir) => {
                let dir = dir.display().to_string();
                let slash = if dir.ends_with('/') { "" } else { "/" };
                format!("file:{dir}{slash}{}", self.prefix)
            }
            StoreUrl::S3 { bucket } => format!("s3:{bucket}/{}", self.prefix),
        }
    }
}

/// The configured tenants, by name.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
}

impl Tenants {
    /// Checks every spec against the store; no specs means one `default` tenant with access
    /// to every key. Names must be unique, and prefixes must not overlap (see the module
    /// docs).
    pub fn from_specs(specs: &[TenantSpec], store: &StoreUrl) -> Result<Self> {
        let mut by_name = HashMap::new();
        if specs.is_empty() {
            let tenant = Tenant::new(DEFAULT_TENANT, "")?;
            by_name.insert(DEFAULT_TENANT.to_owned(), Arc::new(tenant));
        }
        for spec in specs {
            let tenant = Tenant::from_spec(spec, store)?;
            if by_name
                .insert(tenant.name.clone(), Arc::new(tenant))
                .is_some()
            {
                return Err(Error::InvalidTenant {
                    spec: format!("{}={}", spec.name, spec.value),
                    reason: "the name is given twice".to_owned(),
                });
            }
        }
        check_disjoint(&by_name, store)?;
        Ok(Self { by_name })
    }

    /// The tenant called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Tenant>> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTenant(name.to_owned()))
    }

    /// The tenants' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Refuses two tenants whose places overlap ([`Tenant::location`]; `store` is the backend's).
/// In byte order, a location that starts another sorts before it with only locations it
/// also starts in between, so checking neighbours finds every overlap. The error names the
/// prefixes of tenants of one store, else their locations.
fn check_disjoint(by_name: &HashMap<String, Arc<Tenant>>, store: &StoreUrl) -> Result<()> {
    let mut tenants: Vec<(String, &Tenant)> = by_name
        .values()
        .map(|t| (t.location(store), t.as_ref()))
        .collect();
    tenants.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.name.cmp(&b.1.name)));
    for pair in tenants.windows(2) {
        let ((first_at, first), (second_at, second)) = (&pair[0], &pair[1]);
        if second_at.starts_with(first_at.as_str()) {
            let same_store = first.store == second.store;
            let place = |t: &Tenant, at: &String| {
                if same_store {
                    t.prefix.clone()
                } else {
                    at.clone()
                }
            };
            return Err(Error::OverlappingTenants {
                first: first.name.clone(),
                first_prefix: place(first, first_at),
                second: second.name.clone(),
                second_prefix: place(second, second_at),
            });
        }
    }
    Ok(())
}

/// Whether `c` may appear in a key.
fn allowed_char(c: char) -> bool {
    !c.is_control()
}

/// Checks an object key (see the module docs); the error says what is wrong.
pub fn check_key(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key is not empty");
    }
    if key.len() > MAX_KEY_LEN as usize {
        return Err("a key is at most 1024 bytes");
    }
    if !key.chars().all(allowed_char) {
        return Err("a key has no control characters");
    }
    for (index, segment) in key.split('/').enumerate() {
        match segment {
            "" => return Err("a key has no empty segment (leading, trailing or doubled `/`)"),
            "." | ".." => return Err("a key has no `.` or `..` segment"),
            STAGING_DIR if index == 0 => return Err("keys under `.nexus-tmp/` are reserved"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a LIST prefix: like a key, but it may be empty, may end with `/`, and its last
/// (partial) segment may be anything a key segment may start with.
pub fn check_prefix(prefix: &str) -> std::result::Result<(), &'static str> {
    if prefix.len() > MAX_KEY_LEN as usize {
        return Err("a prefix is at most 1024 bytes");
    }
    if !prefix.chars().all(allowed_char) {
        return Err("a prefix has no control characters");
    }
    let mut segments: Vec<&str> = prefix.split('/').collect();
    // The last piece is a partial segment (or empty after a trailing `/`).
    segments.pop();
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "" => return Err("a prefix has no empty segment (leading or doubled `/`)"),
            "." | ".." => return Err("a prefix has no `.` or `..` segment"),
            STAGING_DIR if index == 0 => return Err("keys under `.nexus-tmp/` are reserved"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(s: &str) -> TenantSpec {
        s.parse().unwrap()
    }

    #[test]
    fn key_rules() {
        for good in [
            "a",
            "a/b",
            "in/data.bin",
            "x y/ü",
            ".hidden",
            "a/.nexus-tmp",
            "a..b",
        ] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        let long = "k".repeat(1025);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "./a",
            "a\0b",
            "a\nb",
            ".nexus-tmp",
            ".nexus-tmp/x",
            long.as_str(),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_rules() {
        for good in ["", "a", "a/", "a/b", "a/.", "a/..x", "in/da"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in ["/", "/a", "a//", "../", "a/./b", "x\u{7f}", ".nexus-tmp/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_specs_for_a_file_store() {
        let store = StoreUrl::File(PathBuf::from("/srv"));
        let t = Tenant::from_spec(&spec("alpha=tenants/alpha"), &store).unwrap();
        assert_eq!(t.name(), "alpha");
        assert_eq!(t.prefix(), "tenants/alpha/");
        assert!(t.allows("tenants/alpha/x"));
        assert!(!t.allows("tenants/alphabet/x"));
        assert!(!t.allows("tenants/alpha"));
        assert!(!t.allows("other"));
        // A trailing slash is the same prefix; an empty value is everything.
        let t = Tenant::from_spec(&spec("a=p/"), &store).unwrap();
        assert_eq!(t.prefix(), "p/");
        let all = Tenant::from_spec(&spec("all="), &store).unwrap();
        assert_eq!(all.prefix(), "");
        assert!(all.allows("anything/at/all"));
        for bad in [
            "noequals",
            "=p",
            "bad name=p",
            "a=/abs",
            "a=x//y",
            "a=../up",
        ] {
            let parsed = bad.parse::<TenantSpec>();
            let checked = parsed.and_then(|s| Tenant::from_spec(&s, &store));
            assert!(checked.is_err(), "{bad}");
        }
    }

    #[test]
    fn the_system_prefix_belongs_to_no_tenant() {
        let store = StoreUrl::File(PathBuf::from("/srv"));
        let all = Tenant::from_spec(&spec("all="), &store).unwrap();
        assert!(!all.allows("nexus-system/snapshots/f/i/manifest"));
        assert!(!all.allows(SYSTEM_PREFIX));
        assert!(all.check_object_key("nexus-system/x").is_err());
        // Only the directory itself is reserved.
        assert!(all.allows("nexus-systems/x"));
        assert!(all.allows("nexus-system"));
        for bad in [
            "a=nexus-system",
            "a=nexus-system/",
            "a=nexus-system/snapshots",
        ] {
            let error = Tenant::from_spec(&spec(bad), &store).unwrap_err();
            assert!(
                error.to_string().contains("belong to the backend"),
                "{error}"
            );
        }
        assert!(Tenant::from_spec(&spec("a=nexus-systemic"), &store).is_ok());
    }

    #[test]
    fn tenant_specs_for_an_s3_store() {
        let store = StoreUrl::S3 {
            bucket: "nexus-data".into(),
        };
        let t = Tenant::from_spec(&spec("a=nexus-data/fn/a"), &store).unwrap();
        assert_eq!(t.prefix(), "fn/a/");
        let whole = Tenant::from_spec(&spec("b=nexus-data"), &store).unwrap();
        assert_eq!(whole.prefix(), "");
        let error = Tenant::from_spec(&spec("c=other-bucket/x"), &store).unwrap_err();
        assert!(error.to_string().contains("other-bucket"), "{error}");
        assert!(Tenant::from_spec(&spec("d=fn/a"), &store).is_err());
    }

    #[test]
    fn tenant_sets() {
        let store = StoreUrl::File(PathBuf::from("/srv"));
        let tenants = Tenants::from_specs(&[], &store).unwrap();
        assert_eq!(tenants.names(), vec![DEFAULT_TENANT]);
        assert!(tenants.get(DEFAULT_TENANT).unwrap().allows("x"));
        assert!(matches!(tenants.get("nope"), Err(Error::UnknownTenant(_))));

        let tenants = Tenants::from_specs(&[spec("a=a"), spec("b=b")], &store).unwrap();
        assert_eq!(tenants.names(), vec!["a", "b"]);
        assert!(tenants.get(DEFAULT_TENANT).is_err());
        assert!(Tenants::from_specs(&[spec("a=a"), spec("a=b")], &store).is_err());
    }

    #[test]
    fn overlapping_tenants_are_refused() {
        let store = StoreUrl::File(PathBuf::from("/srv"));
        let specs = |list: &[&str]| list.iter().map(|s| spec(s)).collect::<Vec<_>>();
        // Disjoint prefixes, `a` beside `ab`, and one tenant with the empty prefix are fine.
        for good in [
            &["a=t/a", "b=t/b", "c=u"][..],
            &["a=t/a", "ab=t/ab", "a.b=t/a.b"],
            &["all="],
            &["x=deep/er/still"],
        ] {
            assert!(
                Tenants::from_specs(&specs(good), &store).is_ok(),
                "{good:?}"
            );
        }
        for (bad, named) in [
            (
                &["a=t", "b=t/b"][..],
                ["`a` (prefix `t/`)", "`b` (prefix `t/b/`)"],
            ),
            (
                &["a=t/b/", "b=t/b"],
                ["`a` (prefix `t/b/`)", "`b` (prefix `t/b/`)"],
            ),
            (&["all=", "b=x"], ["`all` (prefix ``)", "`b` (prefix `x/`)"]),
            (
                &["z=q", "y=r", "all="],
                ["`all` (prefix ``)", "`z` (prefix `q/`)"],
            ),
            (
                &["a=p/q/r/s", "m=m", "b=p/q"],
                ["`b` (prefix `p/q/`)", "`a` (prefix `p/q/r/s/`)"],
            ),
        ] {
            let error = Tenants::from_specs(&specs(bad), &store).unwrap_err();
            assert!(matches!(error, Error::OverlappingTenants { .. }), "{bad:?}");
            let text = error.to_string();
            for name in named {
                assert!(text.contains(name), "{text} should name {name}");
            }
        }
        // The same on an S3 store, where the whole bucket is the empty prefix.
        let s3 = StoreUrl::S3 {
            bucket: "nexus-data".into(),
        };
        assert!(Tenants::from_specs(&specs(&["a=nexus-data/a", "b=nexus-data"]), &s3).is_err());
        assert!(Tenants::from_specs(&specs(&["a=nexus-data/a", "b=nexus-data/b"]), &s3).is_ok());
    }

    #[test]
    fn tenants_of_stores_of_their_own_overlap_only_where_their_places_do() {
        let store = StoreUrl::File(PathBuf::from("/srv/objects"));
        let own = |name: &str, url: &str, prefix: &str| TenantSpec {
            store: Some(StoreConfig {
                url: StoreUrl::parse(url).unwrap(),
                s3: crate::config::S3Options::default(),
            }),
            ..spec(&format!("{name}={prefix}"))
        };
        // Same prefixes in different stores are fine.
        let good = [
            own("a", "file:///srv/a", ""),
            own("b", "file:///srv/b", ""),
            own("c", "s3://bucket-c", ""),
            own("d", "s3://bucket-d", "x"),
            spec("e="),
        ];
        assert!(Tenants::from_specs(&good, &store).is_ok());
        let tenants = Tenants::from_specs(&good, &store).unwrap();
        assert_eq!(tenants.get("d").unwrap().prefix(), "x/");
        assert!(tenants.get("a").unwrap().store().is_some());
        assert!(tenants.get("e").unwrap().store().is_none());
        for bad in [
            // A tenant's own store that is the backend's, under another tenant's prefix.
            vec![own("a", "file:///srv/objects", "t/a"), spec("b=t")],
            // A directory inside another tenant's place in the backend's store.
            vec![own("a", "file:///srv/objects/t/b", ""), spec("b=t")],
            // Nested directories of two own stores.
            vec![own("a", "file:///srv", ""), own("b", "file:///srv/x/", "")],
            // One bucket, overlapping prefixes.
            vec![
                own("a", "s3://bucket-a", "p"),
                own("b", "s3://bucket-a", "p/q"),
            ],
        ] {
            let error = Tenants::from_specs(&bad, &store).unwrap_err();
            assert!(matches!(error, Error::OverlappingTenants { .. }), "{bad:?}");
        }
        // A directory that merely shares a name's beginning does not overlap.
        let fine = [
            own("a", "file:///srv/ab", ""),
            own("b", "file:///srv/a", ""),
        ];
        assert!(Tenants::from_specs(&fine, &store).is_ok());
    }

    #[test]
    fn tenants_carry_their_limits() {
        let store = StoreUrl::File(PathBuf::from("/srv"));
        let limits = VmLimits {
            log_burst: 3,
            ..VmLimits::default()
        };
        let own = TenantSpec {
            limits: Some(limits.clone()),
            ..spec("a=a")
        };
        let tenants = Tenants::from_specs(&[own, spec("b=b")], &store).unwrap();
        assert_eq!(tenants.get("a").unwrap().limits(), Some(&limits));
        assert_eq!(tenants.get("b").unwrap().limits(), None);
    }
}
