// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The HTTP allow-list: `scheme://host[:port]` entries, matched exactly on scheme, host and
//! port.
//!
//! An entry is `http://` or `https://`, then a DNS name, an IPv4 address (`a.b.c.d`) or an
//! IPv6 address in brackets, then optionally `:port`; without a port it stands for the
//! scheme's default port only (80 or 443). Names match case-insensitively, with a trailing
//! dot ignored. Nothing else is accepted (no path, user info, query or fragment), and the old
//! `host[:port]` form is refused with the new form to write instead, so a configuration never
//! silently changes meaning.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;

use super::address::special_use;
use crate::error::{Error, Result};

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme named `name` (lower case).
    fn parse(name: &str) -> Option<Self> {
        match name {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A host: a DNS name (lower case, no trailing dot) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// A DNS name.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl Host {
    /// The name `name`, normalised: lower case, one trailing dot dropped.
    pub(crate) fn name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        Host::Name(match lower.strip_suffix('.') {
            Some(stripped) => stripped.to_owned(),
            None => lower,
        })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where a request goes: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) host: Host,
    pub(crate) port: u16,
}

impl Origin {
    /// The origin of an `http://` or `https://` URL (`None` for other schemes).
    pub(crate) fn of(url: &Url) -> Option<Self> {
        let scheme = Scheme::parse(url.scheme())?;
        let host = match url.host()? {
            url::Host::Domain(name) => Host::name(name),
            url::Host::Ipv4(ip) => Host::Ip(ip.into()),
            url::Host::Ipv6(ip) => Host::Ip(ip.into()),
        };
        let port = url.port_or_known_default()?;
        Some(Self { scheme, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

/// The origins the HTTP op may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AllowList {
    origins: Vec<Origin>,
}

impl AllowList {
    /// Parses `scheme://host[:port]` entries; the first bad one is named in the error.
    pub(crate) fn parse(entries: &[String]) -> Result<Self> {
        let origins = entries
            .iter()
            .map(|entry| {
                parse_entry(entry).map_err(|reason| Error::InvalidHttpAllow {
                    entry: entry.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { origins })
    }

    /// Whether an entry is exactly `origin`.
    pub(crate) fn allows(&self, origin: &Origin) -> bool {
        self.origins.contains(origin)
    }

    /// Whether some entry names `host` (with whatever scheme and port).
    pub(crate) fn names_host(&self, host: &Host) -> bool {
        self.origins.iter().any(|origin| origin.host == *host)
    }

    /// Whether a connection to the listed name `name` may go to `ip`, one of its addresses;
    /// if not, what `ip` is.
    ///
    /// A public address always may. A special-use address ([`special_use`]: loopback,
    /// private, link-local, …) only if the address itself is listed, as an IP literal, with
    /// the scheme and port of every entry that names `name`: a name never reaches further
    /// than the IP-literal entries already do, so neither DNS (rebinding, a record pointing
    /// at 127.0.0.1 or 169.254.169.254) nor `/etc/hosts` can open a private address.
    pub(crate) fn admits(&self, name: &str, ip: IpAddr) -> std::result::Result<(), &'static str> {
        let Some(kind) = special_use(ip) else {
            return Ok(());
        };
        let name = Host::name(name);
        let mut entries = self
            .origins
            .iter()
            .filter(|origin| origin.host == name)
            .peekable();
        let listed = entries.peek().is_some()
            && entries.all(|origin| {
                self.allows(&Origin {
                    scheme: origin.scheme,
                    host: Host::Ip(ip),
                    port: origin.port,
                })
            });
        if listed { Ok(()) } else { Err(kind) }
    }
}

/// One entry, or why it is not one.
fn parse_entry(entry: &str) -> std::result::Result<Origin, String> {
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(format!(
            "entries are `scheme://host[:port]`: write `https://{entry}` (or `http://{entry}` \
             for plain HTTP)"
        ));
    };
    let scheme = Scheme::parse(&scheme.to_ascii_lowercase())
        .ok_or_else(|| "the scheme must be http or https".to_owned())?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(c) = authority
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@' | '\\') || !c.is_ascii_graphic())
    {
        return Err(match c {
            '/' => "an entry has no path",
            '?' => "an entry has no query",
            '#' => "an entry has no fragment",
            '@' => "an entry has no user info",
            _ => "an entry has no spaces, backslashes, control or non-ASCII characters",
        }
        .to_owned());
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => scheme.default_port(),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("port `{port}` is not 1 to 65535"))?,
    };
    Ok(Origin {
        scheme,
        host: parse_host(host)?,
        port,
    })
}

/// `host` and `port` of `host[:port]` (`[v6][:port]` for IPv6).
fn split_host_port(authority: &str) -> std::result::Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "an IPv6 address needs its closing `]`".to_owned())?;
        let (host, after) = authority.split_at(end + 2);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("only `:port` may follow an IPv6 address".to_owned()),
            },
        };
    }
    match authority.split_once(':') {
        Some((_, port)) if port.contains(':') => {
            Err("IPv6 addresses are written in brackets, e.g. `http://[::1]:8080`".to_owned())
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

fn parse_host(host: &str) -> std::result::Result<Host, String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(ip.into()))
            .map_err(|_| format!("`{inner}` is not an IPv6 address"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(ip.into()));
    }
    // URLs read `127.1`, `0x7f.0.0.1` or `2130706433` as IPv4 addresses: an entry must write
    // them the one way, so that it means what it looks like.
    match url::Host::parse(host) {
        Ok(url::Host::Domain(_)) => {}
        Ok(_) => return Err("write an IPv4 address as four decimal numbers, a.b.c.d".to_owned()),
        Err(_) => return Err(format!("`{host}` is not a host name")),
    }
    let name = Host::name(host);
    let Host::Name(text) = &name else {
        unreachable!("Host::name makes a name")
    };
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if text.len() > 253 || !text.split('.').all(label_ok) {
        return Err(format!(
            "`{host}` is not a host name (labels of 1 to 63 letters, digits, `-` or `_`; \
             internationalised names in their ASCII `xn--` form)"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowList> {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn origin(url: &str) -> Origin {
        Origin::of(&Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn entries_match_exactly() {
        let allow = list(&[
            "https://Example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:9000",
            "HTTP://api.test.:81/",
            "https://example.org:443",
        ])
        .unwrap();
        let ok = |u: &str| allow.allows(&origin(u));
        assert!(ok("https://example.com/x"));
        assert!(ok("https://EXAMPLE.com./x"));
        assert!(ok("https://example.com:443/"));
        assert!(!ok("http://example.com/"), "scheme");
        assert!(!ok("https://example.com:8443/"), "port");
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://example.com.evil/"));
        assert!(ok("http://127.0.0.1:8080/a"));
        assert!(!ok("http://127.0.0.1:8081/a"));
        assert!(!ok("http://127.0.0.1/a"));
        assert!(!ok("https://127.0.0.1:8080/a"));
        // The same number written another way is the same host to a URL.
        assert!(ok("http://2130706433:8080/"));
        assert!(!ok("http://[::ffff:127.0.0.1]:8080/"));
        assert!(ok("http://[::1]:9000/"));
        assert!(!ok("http://[::1]:9001/"));
        assert!(ok("http://api.test:81/v1"));
        assert!(!ok("http://api.test/v1"));
        assert!(ok("https://example.org/"));
        assert!(Origin::of(&Url::parse("ftp://example.com/").unwrap()).is_none());
        assert!(!AllowList::default().allows(&origin("http://x/")));
        assert!(allow.names_host(&Host::name("API.test")));
        assert!(!allow.names_host(&Host::name("other.test")));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for (bad, why) in [
            ("example.com", "write `https://example.com`"),
            ("example.com:8080", "write `https://example.com:8080`"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/path", "no path"),
            ("https://example.com/?q", "no path"),
            ("https://example.com?q", "no query"),
            ("https://example.com#f", "no fragment"),
            ("https://user@example.com", "no user info"),
            ("https://example.com\\@evil", "backslashes"),
            ("https://exa mple.com", "spaces"),
            ("https://ex\u{e4}mple.com", "non-ASCII"),
            ("https://", "host is missing"),
            ("https://:80", "host is missing"),
            ("https://example.com:0", "not 1 to 65535"),
            ("https://example.com:99999", "not 1 to 65535"),
            ("https://example.com:x", "not 1 to 65535"),
            ("https://::1", "brackets"),
            ("https://[::1", "closing"),
            ("https://[zz]:1", "not an IPv6 address"),
            ("https://[::1]x", "only `:port`"),
            ("http://127.1", "a.b.c.d"),
            ("http://0x7f.0.0.1", "a.b.c.d"),
            ("http://2130706433", "a.b.c.d"),
            ("http://01.2.3.4", "a.b.c.d"),
            ("http://a..b", "not a host name"),
            ("http://a!b", "not a host name"),
        ] {
            let error = list(&[bad]).expect_err(bad).to_string();
            assert!(error.contains(bad), "{bad}: {error}");
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn names_reach_special_addresses_only_where_the_address_is_listed() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let v6_loopback: IpAddr = "::1".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        // `localhost` listed by name does not open loopback.
        let allow = list(&["http://localhost"]).unwrap();
        assert_eq!(allow.admits("localhost", loopback), Err("loopback"));
        assert_eq!(allow.admits("localhost", public), Ok(()));
        // Listing the address with the same scheme and port does.
        let allow = list(&["http://localhost:8080", "http://127.0.0.1:8080"]).unwrap();
        assert_eq!(allow.admits("LOCALHOST.", loopback), Ok(()));
        assert_eq!(allow.admits("localhost", v6_loopback), Err("loopback"));
        // Another port or scheme of the address does not.
        let allow = list(&["http://localhost:8080", "http://127.0.0.1:8081"]).unwrap();
        assert_eq!(allow.admits("localhost", loopback), Err("loopback"));
        let allow = list(&["http://localhost:8080", "https://127.0.0.1:8080"]).unwrap();
        assert_eq!(allow.admits("localhost", loopback), Err("loopback"));
        // Every entry of the name must be covered.
        let allow = list(&[
            "http://internal.test",
            "https://internal.test",
            "http://10.0.0.5",
        ])
        .unwrap();
        assert_eq!(
            allow.admits("internal.test", "10.0.0.5".parse().unwrap()),
            Err("private")
        );
        let allow = list(&[
            "http://internal.test",
            "https://internal.test",
            "http://10.0.0.5",
            "https://10.0.0.5",
        ])
        .unwrap();
        assert_eq!(
            allow.admits("internal.test", "10.0.0.5".parse().unwrap()),
            Ok(())
        );
        // The mapped form is a different literal.
        assert_eq!(
            allow.admits("internal.test", "::ffff:10.0.0.5".parse().unwrap()),
            Err("private")
        );
        // A name that is not listed admits nothing special.
        assert_eq!(
            allow.admits("other.test", "10.0.0.5".parse().unwrap()),
            Err("private")
        );
    }
}
