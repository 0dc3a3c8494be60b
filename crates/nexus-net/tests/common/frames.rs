// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Ethernet frames for the tests: ARP, and IPv4/UDP with full, partial or wrong checksums.

use std::net::Ipv4Addr;

pub const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Where the UDP header starts in a frame (Ethernet 14 + IPv4 20).
pub const UDP_START: usize = 34;
/// Offset of the checksum in the UDP header.
pub const UDP_CSUM_OFFSET: usize = 6;

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// "Who has `target`? Tell `ip`".
pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, mac, ETHERTYPE_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An ARP reply's sender `(mac, ip)` and target ip.
pub fn parse_arp_reply(f: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr)> {
    if f.len() < 42 || f[12..14] != ETHERTYPE_ARP.to_be_bytes() || f[20..22] != [0, 2] {
        return None;
    }
    let mac = f[22..28].try_into().ok()?;
    let ip = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    let target = Ipv4Addr::new(f[38], f[39], f[40], f[41]);
    Some((mac, ip, target))
}

/// The Internet checksum's folded one's complement sum (not inverted).
fn sum(data: &[u8], mut acc: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, 17]);
    p.extend_from_slice(&udp_len.to_be_bytes());
    u32::from(sum(&p, 0))
}

/// How a UDP frame's checksum is filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksum {
    /// Complete and right.
    Full,
    /// The pseudo-header sum only, as with `NEEDS_CSUM` (the device completes it).
    Partial,
}

/// The addresses of a UDP datagram.
#[derive(Clone, Copy, Debug)]
pub struct UdpEnds {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
}

/// An Ethernet/IPv4/UDP frame carrying `payload`.
pub fn udp_frame(ends: &UdpEnds, payload: &[u8], checksum: UdpChecksum) -> Vec<u8> {
    let mut f = ethernet(ends.dst_mac, ends.src_mac, ETHERTYPE_IPV4);
    let udp_len = (8 + payload.len()) as u16;
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ends.src.0.octets());
    ip.extend_from_slice(&ends.dst.0.octets());
    let check = !sum(&ip, 0);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&ends.src.1.to_be_bytes());
    udp.extend_from_slice(&ends.dst.1.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = pseudo_header_sum(ends.src.0, ends.dst.0, udp_len);
    let check = match checksum {
        UdpChecksum::Full => match !sum(&udp, pseudo) {
            0 => 0xffff,
            c => c,
        },
        UdpChecksum::Partial => sum(&[], pseudo),
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// A UDP frame's `(src, dst, payload, checksum)`.
pub struct Udp {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub payload: Vec<u8>,
    pub checksum: u16,
    /// Whether the checksum, as it is in the frame, verifies.
    pub checksum_valid: bool,
}

/// Parses an Ethernet/IPv4/UDP frame.
pub fn parse_udp(f: &[u8]) -> Option<Udp> {
    if f.len() < UDP_START + 8 || f[12..14] != ETHERTYPE_IPV4.to_be_bytes() || f[23] != 17 {
        return None;
    }
    let ip = &f[14..34];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &f[UDP_START..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = udp.get(..udp_len)?;
    let pseudo = pseudo_header_sum(src, dst, udp_len as u16);
    Some(Udp {
        src: (src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: (dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
        checksum: u16::from_be_bytes([udp[6], udp[7]]),
        checksum_valid: sum(udp, pseudo) == 0xffff,
    })
}

/// The pseudo-header sum a partial checksum of this UDP frame must hold.
pub fn partial_checksum(u: &Udp) -> u16 {
    sum(
        &[],
        pseudo_header_sum(u.src.0, u.dst.0, (8 + u.payload.len()) as u16),
    )
}
