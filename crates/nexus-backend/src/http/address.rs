// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Addresses that are not a public service: the host itself, its networks, and ranges that
//! are never routed on the Internet. The HTTP op reaches one of them only when the
//! allow-list names it (see [`AllowList::admits`](super::allow::AllowList::admits)).
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, NAT64
//! `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) are judged by the IPv4 address they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What `ip` is, if it is not a public unicast address (`None` if it is one). The text reads
/// after "address X is".
pub(crate) fn special_use(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let kind = match ip.octets() {
        [0, ..] => "in \"this network\" (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private",
        [100, 64..=127, ..] => "in the shared address space (100.64.0.0/10, carrier-grade NAT)",
        [169, 254, ..] => "link-local",
        [192, 0, 0, _] => "reserved for IETF protocol assignments",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "reserved for documentation",
        [198, 18..=19, ..] => "reserved for benchmarking",
        [192, 88, 99, _] => "reserved (6to4 relay anycast)",
        [224..=239, ..] => "multicast",
        [240..=255, ..] => "reserved",
        _ => return None,
    };
    Some(kind)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let s = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let kind = match s {
        // ::/96 (IPv4-compatible, deprecated; `::` and `::1` are handled above).
        [0, 0, 0, 0, 0, 0, _, _] => "an IPv4-compatible IPv6 address (deprecated)",
        // ::ffff:0:0/96 (IPv4-translated, SIIT).
        [0, 0, 0, 0, 0xffff, 0, high, low] => return special_v4(embedded(high, low)),
        // NAT64, well-known prefix: the translator reaches the IPv4 address it carries.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return special_v4(embedded(high, low)),
        [0x64, 0xff9b, 1, ..] => "in the NAT64 local-use prefix (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        // 2001::/23 holds Teredo, benchmarking (2001:2::/48) and other protocol ranges.
        [0x2001, 0..=0x1ff, ..] => "reserved for IETF protocol assignments",
        [0x2001, 0xdb8, ..] => "reserved for documentation",
        // 6to4: a relay reaches the IPv4 address it carries.
        [0x2002, high, low, ..] => return special_v4(embedded(high, low)),
        [0x3fff, 0..=0x0fff, ..] => "reserved for documentation",
        [first, ..] if first & 0xfe00 == 0xfc00 => "unique-local (private)",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<&'static str> {
        special_use(ip.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_not_special() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.1.1",
            "169.253.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn host_and_internal_ranges_are_special() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "in \"this network\" (0.0.0.0/8)"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            (
                "100.64.0.1",
                "in the shared address space (100.64.0.0/10, carrier-grade NAT)",
            ),
            ("169.254.169.254", "link-local"),
            ("192.0.2.7", "reserved for documentation"),
            ("198.51.100.7", "reserved for documentation"),
            ("203.0.113.7", "reserved for documentation"),
            ("198.18.0.1", "reserved for benchmarking"),
            ("198.19.255.1", "reserved for benchmarking"),
            ("192.0.0.8", "reserved for IETF protocol assignments"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fc00::1", "unique-local (private)"),
            ("fd12:3456::1", "unique-local (private)"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "reserved for documentation"),
            ("3fff::1", "reserved for documentation"),
            ("2001:2::1", "reserved for IETF protocol assignments"),
            (
                "2001:0:4136:e378::1",
                "reserved for IETF protocol assignments",
            ),
            ("100::1", "discard-only (100::/64)"),
            // IPv4 addresses in IPv6 clothing.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            (
                "::127.0.0.1",
                "an IPv4-compatible IPv6 address (deprecated)",
            ),
            ("::8.8.8.8", "an IPv4-compatible IPv6 address (deprecated)"),
            ("::ffff:0:7f00:1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            (
                "64:ff9b:1::1",
                "in the NAT64 local-use prefix (64:ff9b:1::/48)",
            ),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
    }
}
