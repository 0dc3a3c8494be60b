// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Name resolution for the HTTP client, checked: the client connects only to the addresses
//! returned here, and every one of them has passed [`AllowList::admits`].
//!
//! The resolver is the only way the client learns an address for a name (IP-literal hosts
//! need none and are checked against the allow-list before a request or redirect is sent),
//! so what is checked is exactly what is connected to: a second lookup that could answer
//! differently (DNS rebinding) never happens. If any address of a name is refused, the
//! request is refused; another address is not silently picked.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::allow::AllowList;
use super::refusal::Refusal;

/// A name that could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("host `{name}` could not be resolved")]
pub(crate) struct Unresolved {
    /// The name.
    pub(crate) name: String,
    /// The cause (logged, not shown to guests).
    #[source]
    pub(crate) source: io::Error,
}

/// Where addresses come from.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// The system resolver (`getaddrinfo`: DNS, `/etc/hosts`).
    System,
    /// A fixed table, for tests.
    #[cfg(test)]
    Fixed(Arc<std::collections::HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    async fn addresses(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let mut found: Vec<IpAddr> = match self {
            Lookup::System => tokio::net::lookup_host((name, 0))
                .await?
                .map(|addr| addr.ip())
                .collect(),
            #[cfg(test)]
            Lookup::Fixed(table) => table.get(name).cloned().unwrap_or_default(),
        };
        let mut seen = std::collections::HashSet::new();
        found.retain(|ip| seen.insert(*ip));
        if found.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
        }
        Ok(found)
    }
}

/// The client's resolver.
#[derive(Clone, Debug)]
pub(crate) struct CheckedResolver {
    allow: Arc<AllowList>,
    lookup: Lookup,
}

impl CheckedResolver {
    pub(crate) fn new(allow: Arc<AllowList>, lookup: Lookup) -> Self {
        Self { allow, lookup }
    }
}

/// The addresses of `name` if every one is admitted for it.
pub(crate) fn check_addresses(
    allow: &AllowList,
    name: &str,
    addrs: &[IpAddr],
) -> Result<(), Refusal> {
    for &addr in addrs {
        allow.admits(name, addr).map_err(|kind| Refusal::Address {
            name: name.to_owned(),
            addr,
            kind,
        })?;
    }
    Ok(())
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_owned();
        let (allow, lookup) = (self.allow.clone(), self.lookup.clone());
        Box::pin(async move {
            let addrs = lookup.addresses(&name).await.map_err(|source| Unresolved {
                name: name.clone(),
                source,
            })?;
            if let Err(refusal) = check_addresses(&allow, &name, &addrs) {
                log::debug!("HTTP: {refusal}");
                return Err(refusal.into());
            }
            // Port 0: the client puts the URL's port in.
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> Arc<AllowList> {
        Arc::new(
            AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        )
    }

    fn table(entries: &[(&str, &[&str])]) -> Lookup {
        Lookup::Fixed(Arc::new(
            entries
                .iter()
                .map(|(name, ips)| {
                    (
                        name.to_string(),
                        ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        ))
    }

    async fn resolve(resolver: &CheckedResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        resolver
            .resolve(name.parse().unwrap())
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn every_address_is_checked() {
        let lookup = table(&[
            ("public.test", &["93.184.216.34", "2606:2800:220:1::1"]),
            ("rebound.test", &["93.184.216.34", "127.0.0.1"]),
            ("metadata.test", &["169.254.169.254"]),
            ("mapped.test", &["::ffff:10.0.0.1"]),
            ("internal.test", &["10.0.0.5"]),
        ]);
        let resolver = CheckedResolver::new(
            allow(&[
                "http://public.test",
                "http://rebound.test",
                "http://metadata.test",
                "http://mapped.test",
                "http://internal.test",
                "http://10.0.0.5",
            ]),
            lookup,
        );
        assert_eq!(
            resolve(&resolver, "public.test").await.unwrap(),
            vec![
                "93.184.216.34:0".parse::<SocketAddr>().unwrap(),
                "[2606:2800:220:1::1]:0".parse().unwrap()
            ]
        );
        // One refused address refuses the name: no falling back to the public one.
        let error = resolve(&resolver, "rebound.test").await.unwrap_err();
        assert!(error.contains("127.0.0.1, which is loopback"), "{error}");
        let error = resolve(&resolver, "metadata.test").await.unwrap_err();
        assert!(
            error.contains("169.254.169.254, which is link-local"),
            "{error}"
        );
        let error = resolve(&resolver, "mapped.test").await.unwrap_err();
        assert!(
            error.contains("::ffff:10.0.0.1, which is private"),
            "{error}"
        );
        // Named by an IP-literal entry of the same scheme and port: reachable.
        assert_eq!(
            resolve(&resolver, "internal.test").await.unwrap(),
            vec!["10.0.0.5:0".parse::<SocketAddr>().unwrap()]
        );
        let error = resolve(&resolver, "nothing.test").await.unwrap_err();
        assert!(error.contains("could not be resolved"), "{error}");
    }

    #[tokio::test]
    async fn localhost_by_name_is_loopback() {
        // The system resolver (here /etc/hosts) answers; the answer is checked all the same.
        let resolver = CheckedResolver::new(allow(&["http://localhost"]), Lookup::System);
        let error = resolve(&resolver, "localhost").await.unwrap_err();
        assert!(error.contains("which is loopback"), "{error}");
    }
}
