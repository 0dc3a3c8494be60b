// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small rtnetlink client: the few link, address, neighbour and route requests the network
//! plane ([`super::netplane`]) makes for each VM, sent together in one datagram and
//! acknowledged one by one — a VM's network costs one `sendto` and one `recv`, not a handful
//! of `ip` processes.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it, and keeps
//! acting there whichever thread uses it afterwards.
//!
//! Messages are built and acknowledgements parsed in safe code over byte buffers (host byte
//! order, as netlink is); the socket calls go through `rustix`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// `struct nlmsghdr`: length, type, flags, sequence number, port ID.
const HEADER_LEN: usize = 16;
/// Netlink aligns messages and attributes to 4 bytes.
const ALIGN: usize = 4;
/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;
/// A kernel that does not answer within this long has lost the request.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Sets link `index` up, with `mac` as its hardware address if given.
    LinkUp {
        /// The link.
        index: u32,
        /// Its new hardware address.
        mac: Option<[u8; 6]>,
    },
    /// Deletes the link named `name` (a veth takes its peer with it).
    DeleteLink {
        /// The link's name.
        name: String,
    },
    /// Adds `address/prefix` to link `index`.
    AddAddress {
        /// The link.
        index: u32,
        /// The address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Adds, or replaces, a permanent neighbour entry: `address` is at `mac` on link `index`.
    SetNeighbour {
        /// The link.
        index: u32,
        /// The neighbour's address.
        address: Ipv4Addr,
        /// Its hardware address.
        mac: [u8; 6],
    },
    /// Adds, or replaces, the on-link route to `destination/prefix` out of link `index`.
    SetRoute {
        /// The link.
        index: u32,
        /// The destination.
        destination: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::LinkUp { index, mac: None } => write!(f, "setting link {index} up"),
            Request::LinkUp {
                index,
                mac: Some(m),
            } => write!(
                f,
                "setting link {index} up with address \
                 {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Request::DeleteLink { name } => write!(f, "deleting link {name}"),
            Request::AddAddress {
                index,
                address,
                prefix,
            } => write!(f, "adding {address}/{prefix} to link {index}"),
            Request::SetNeighbour { index, address, .. } => {
                write!(f, "setting the neighbour {address} on link {index}")
            }
            Request::SetRoute {
                index,
                destination,
                prefix,
            } => write!(
                f,
                "setting the route to {destination}/{prefix} via link {index}"
            ),
        }
    }
}

/// Errors of the netlink client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened.
    #[error("Cannot open a route netlink socket")]
    Open(#[source] io::Error),
    /// Sending or receiving failed.
    #[error("The netlink exchange failed")]
    Io(#[source] io::Error),
    /// The kernel refused a request.
    #[error("The kernel refused {request}")]
    Refused {
        /// The request, in words.
        request: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("The kernel's netlink answer is malformed: {0}")]
    Malformed(&'static str),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A route netlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::Open(e.into()))?;
        rustix::net::sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(RECV_TIMEOUT))
            .map_err(|e| Error::Open(e.into()))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `requests` in one datagram and waits for every acknowledgement; the first
    /// refusal is the error (the requests after it were still tried by the kernel).
    pub fn apply(&mut self, requests: &[Request]) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        let mut datagram = Vec::with_capacity(128 * requests.len());
        for request in requests {
            self.seq = self.seq.wrapping_add(1);
            encode(request, self.seq, &mut datagram);
        }
        rustix::net::sendto(
            &self.fd,
            &datagram,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(|e| Error::Io(e.into()))?;
        let mut answers: Vec<Option<i32>> = vec![None; requests.len()];
        let mut buf = vec![0u8; 16 << 10];
        while answers.iter().any(Option::is_none) {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())
                .map_err(|e| Error::Io(e.into()))?;
            for (seq, errno) in parse_acks(buf.get(..n).unwrap_or_default())? {
                let slot = seq.wrapping_sub(first) as usize;
                if let Some(answer) = answers.get_mut(slot) {
                    *answer = Some(errno);
                }
            }
        }
        for (request, answer) in requests.iter().zip(answers) {
            if let Some(errno) = answer.filter(|&e| e != 0) {
                return Err(Error::Refused {
                    request: request.to_string(),
                    source: io::Error::from_raw_os_error(-errno),
                });
            }
        }
        Ok(())
    }
}

/// Appends request `request` with sequence number `seq` to `out`.
fn encode(request: &Request, seq: u32, out: &mut Vec<u8>) {
    let create =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let start = out.len();
    let put_header = |out: &mut Vec<u8>, kind: u16, flags: u16| {
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, set at the end
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
    };
    match request {
        Request::LinkUp { index, mac } => {
            put_header(
                out,
                libc::RTM_NEWLINK,
                (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            );
            ifinfomsg(out, *index, libc::IFF_UP as u32);
            if let Some(mac) = mac {
                attribute(out, libc::IFLA_ADDRESS, mac);
            }
        }
        Request::DeleteLink { name } => {
            put_header(
                out,
                libc::RTM_DELLINK,
                (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            );
            ifinfomsg(out, 0, 0);
            let mut bytes = name.as_bytes().to_vec();
            bytes.push(0);
            attribute(out, libc::IFLA_IFNAME, &bytes);
        }
        Request::AddAddress {
            index,
            address,
            prefix,
        } => {
            put_header(out, libc::RTM_NEWADDR, create);
            // struct ifaddrmsg: family, prefix length, flags, scope, index.
            out.extend_from_slice(&[libc::AF_INET as u8, *prefix, 0, libc::RT_SCOPE_UNIVERSE]);
            out.extend_from_slice(&index.to_ne_bytes());
            attribute(out, libc::IFA_LOCAL, &address.octets());
            attribute(out, libc::IFA_ADDRESS, &address.octets());
        }
        Request::SetNeighbour {
            index,
            address,
            mac,
        } => {
            put_header(out, libc::RTM_NEWNEIGH, create);
            // struct ndmsg: family, two pads, index, state, flags, type.
            out.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
            out.extend_from_slice(&index.to_ne_bytes());
            out.extend_from_slice(&libc::NUD_PERMANENT.to_ne_bytes());
            out.extend_from_slice(&[0, 0]);
            attribute(out, libc::NDA_DST, &address.octets());
            attribute(out, libc::NDA_LLADDR, mac);
        }
        Request::SetRoute {
            index,
            destination,
            prefix,
        } => {
            put_header(out, libc::RTM_NEWROUTE, create);
            // struct rtmsg: family, destination and source lengths, TOS, table, protocol,
            // scope, type, flags.
            out.extend_from_slice(&[
                libc::AF_INET as u8,
                *prefix,
                0,
                0,
                RT_TABLE_MAIN,
                libc::RTPROT_STATIC,
                libc::RT_SCOPE_LINK,
                libc::RTN_UNICAST,
            ]);
            out.extend_from_slice(&0u32.to_ne_bytes());
            attribute(out, libc::RTA_DST, &destination.octets());
            attribute(out, libc::RTA_OIF, &index.to_ne_bytes());
        }
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends `struct ifinfomsg` for link `index` (0: named by an attribute), changing `flags`.
fn ifinfomsg(out: &mut Vec<u8>, index: u32, flags: u32) {
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
    out.extend_from_slice(&index.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes()); // flags
    out.extend_from_slice(&flags.to_ne_bytes()); // change mask: the same bits
}

/// Appends one attribute (`struct rtattr` and its value, padded).
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (4 + value.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(ALIGN), 0);
}

/// The acknowledgements in one datagram: (sequence number, 0 or a negative errno).
fn parse_acks(mut datagram: &[u8]) -> Result<Vec<(u32, i32)>> {
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let mut acks = Vec::new();
    while datagram.len() >= HEADER_LEN {
        let len = u32_at(datagram, 0).ok_or(Error::Malformed("a short header"))? as usize;
        let kind = datagram
            .get(4..6)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_ne_bytes)
            .ok_or(Error::Malformed("a short header"))?;
        let seq = u32_at(datagram, 8).ok_or(Error::Malformed("a short header"))?;
        if len < HEADER_LEN || len > datagram.len() {
            return Err(Error::Malformed("a message length outside the datagram"));
        }
        if kind == libc::NLMSG_ERROR as u16 {
            let errno = u32_at(datagram, HEADER_LEN)
                .ok_or(Error::Malformed("an error message without its code"))?
                as i32;
            acks.push((seq, errno));
        }
        datagram = datagram
            .get(len.next_multiple_of(ALIGN)..)
            .unwrap_or_default();
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The attributes after a fixed header of `fixed` bytes: (type, value).
    fn attributes(message: &[u8], fixed: usize) -> Vec<(u16, Vec<u8>)> {
        let mut at = HEADER_LEN + fixed;
        let mut found = Vec::new();
        while at < message.len() {
            let len = u16_at(message, at) as usize;
            found.push((u16_at(message, at + 2), message[at + 4..at + len].to_vec()));
            at += len.next_multiple_of(4);
        }
        found
    }

    #[test]
    fn a_route_is_an_rtmsg_with_its_destination_and_link() {
        let mut out = Vec::new();
        let request = Request::SetRoute {
            index: 7,
            destination: Ipv4Addr::new(10, 200, 0, 9),
            prefix: 32,
        };
        encode(&request, 41, &mut out);
        assert_eq!(u32_at(&out, 0) as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        assert_eq!(u16_at(&out, 4), libc::RTM_NEWROUTE);
        let flags = u16_at(&out, 6) as i32;
        for flag in [
            libc::NLM_F_REQUEST,
            libc::NLM_F_ACK,
            libc::NLM_F_CREATE,
            libc::NLM_F_REPLACE,
        ] {
            assert_ne!(flags & flag, 0, "{flag:#x}");
        }
        assert_eq!(u32_at(&out, 8), 41);
        let rtmsg = &out[HEADER_LEN..HEADER_LEN + 12];
        assert_eq!(rtmsg[0], libc::AF_INET as u8);
        assert_eq!(rtmsg[1], 32);
        assert_eq!(rtmsg[4], RT_TABLE_MAIN);
        assert_eq!(rtmsg[6], libc::RT_SCOPE_LINK);
        assert_eq!(rtmsg[7], libc::RTN_UNICAST);
        assert_eq!(
            attributes(&out, 12),
            vec![
                (libc::RTA_DST, vec![10, 200, 0, 9]),
                (libc::RTA_OIF, 7u32.to_ne_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn links_addresses_and_neighbours_carry_their_attributes() {
        let mac = [2, 0x4e, 0x58, 0, 0, 1];
        let mut out = Vec::new();
        encode(
            &Request::LinkUp {
                index: 3,
                mac: Some(mac),
            },
            1,
            &mut out,
        );
        assert_eq!(u16_at(&out, 4), libc::RTM_NEWLINK);
        assert_eq!(u32_at(&out, HEADER_LEN + 4), 3);
        assert_eq!(u32_at(&out, HEADER_LEN + 8), libc::IFF_UP as u32);
        assert_eq!(u32_at(&out, HEADER_LEN + 12), libc::IFF_UP as u32);
        assert_eq!(
            attributes(&out, 16),
            vec![(libc::IFLA_ADDRESS, mac.to_vec())]
        );

        let mut out = Vec::new();
        encode(
            &Request::DeleteLink {
                name: "nx12h".into(),
            },
            2,
            &mut out,
        );
        assert_eq!(u16_at(&out, 4), libc::RTM_DELLINK);
        assert_eq!(
            attributes(&out, 16),
            vec![(libc::IFLA_IFNAME, b"nx12h\0".to_vec())]
        );

        let mut out = Vec::new();
        let address = Ipv4Addr::new(10, 200, 0, 1);
        encode(
            &Request::AddAddress {
                index: 3,
                address,
                prefix: 32,
            },
            3,
            &mut out,
        );
        assert_eq!(u16_at(&out, 4), libc::RTM_NEWADDR);
        assert_eq!(out[HEADER_LEN + 1], 32);
        assert_eq!(u32_at(&out, HEADER_LEN + 4), 3);
        assert_eq!(
            attributes(&out, 8),
            vec![
                (libc::IFA_LOCAL, address.octets().to_vec()),
                (libc::IFA_ADDRESS, address.octets().to_vec())
            ]
        );

        let mut out = Vec::new();
        encode(
            &Request::SetNeighbour {
                index: 3,
                address,
                mac,
            },
            4,
            &mut out,
        );
        assert_eq!(u16_at(&out, 4), libc::RTM_NEWNEIGH);
        assert_eq!(u32_at(&out, HEADER_LEN + 4), 3);
        assert_eq!(u16_at(&out, HEADER_LEN + 8), libc::NUD_PERMANENT);
        assert_eq!(
            attributes(&out, 12),
            vec![
                (libc::NDA_DST, address.octets().to_vec()),
                (libc::NDA_LLADDR, mac.to_vec())
            ]
        );
    }

    /// An `NLMSG_ERROR` message answering `seq` with `errno`.
    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&errno.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]); // the request's header
        m
    }

    #[test]
    fn acknowledgements_are_read_by_sequence_number() {
        let mut datagram = ack(5, 0);
        datagram.extend(ack(6, -libc::EEXIST));
        assert_eq!(
            parse_acks(&datagram).unwrap(),
            vec![(5, 0), (6, -libc::EEXIST)]
        );
        // A length past the datagram, or shorter than a header, is refused.
        let mut bad = ack(1, 0);
        bad[0] = 200;
        assert!(matches!(parse_acks(&bad), Err(Error::Malformed(_))));
        let mut bad = ack(1, 0);
        bad[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(matches!(parse_acks(&bad), Err(Error::Malformed(_))));
        assert!(parse_acks(&[]).unwrap().is_empty());
    }
}
