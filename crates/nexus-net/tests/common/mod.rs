// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the device tests share: a network namespace of their own ([`netns`]), frames
//! ([`frames`]), a guest driver over the registers and rings ([`driver`]), and a test VM:
//! a device over a tap in a namespace, with the host side of the link configured.
//!
//! Every test needs root, `/dev/net/tun` and `ip` (iproute2); without them it fails saying
//! what is missing.

#![allow(dead_code)]

pub mod driver;
pub mod frames;
pub mod netns;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_kvm::virtio_mmio::MmioTransport;
use nexus_net::device::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use nexus_net::{GuestMemoryMmap, NetCounters, NetStats, NexusNet, NexusNetConfig, Tap};

use driver::Driver;
use frames::{UdpEnds, parse_arp_reply};
use netns::NetNs;

/// The host side's address in every test namespace.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The guest's MAC.
pub const GUEST_MAC: [u8; 6] = [0x02, 0x4e, 0x58, 0, 0, 0x02];
/// Features without offloads.
pub const BASIC: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS;

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes tap `name` in `ns` and configures its host side: `HOST_IP/24`, up, and the guest's
/// MAC as the neighbour for `GUEST_IP`.
pub fn host_tap(ns: &NetNs, name: &str) -> Tap {
    host_tap_with(ns, name, HOST_IP, GUEST_IP)
}

/// [`host_tap`] with other addresses (both in one /24).
pub fn host_tap_with(ns: &NetNs, name: &str, host_ip: Ipv4Addr, guest_ip: Ipv4Addr) -> Tap {
    let owned = name.to_owned();
    let tap = ns
        .run(move || Tap::open(Some(&owned)))
        .unwrap_or_else(|e| panic!("cannot make tap {name}: {e:?}"));
    assert_eq!(tap.name(), name);
    ns.ip(&["addr", "add", &format!("{host_ip}/24"), "dev", name]);
    ns.ip(&["link", "set", name, "up"]);
    let mac = mac_string(GUEST_MAC);
    let guest = guest_ip.to_string();
    ns.ip(&[
        "neigh",
        "replace",
        &guest,
        "lladdr",
        &mac,
        "dev",
        name,
        "nud",
        "permanent",
    ]);
    tap
}

/// A device (in its transport) over `tap` and fresh guest RAM.
pub fn device(tap: Tap) -> (Arc<Mutex<nexus_net::NexusNetTransport>>, GuestMemoryMmap) {
    let memory = driver::guest_memory();
    let device = NexusNet::new(NexusNetConfig {
        tap,
        mac: GUEST_MAC,
        memory: memory.clone(),
    })
    .expect("a device");
    (Arc::new(Mutex::new(MmioTransport::new(device))), memory)
}

/// A test VM: a device over a tap in a namespace of its own, and the driver.
pub struct TestVm {
    pub driver: Driver,
    pub stats: Arc<NetStats>,
    pub tap_name: String,
    /// Last: the namespace outlives the device.
    pub ns: NetNs,
}

impl TestVm {
    pub fn new(tap_name: &str) -> Self {
        let ns = NetNs::new();
        let tap = host_tap(&ns, tap_name);
        let (transport, memory) = device(tap);
        let stats = transport.lock().unwrap().device().stats();
        TestVm {
            driver: Driver::new(transport, memory),
            stats,
            tap_name: tap_name.to_owned(),
            ns,
        }
    }

    pub fn counters(&self) -> NetCounters {
        self.stats.snapshot()
    }

    /// Resolves `HOST_IP` with ARP (the request goes out on transmit, the reply comes back on
    /// receive); returns the host's MAC.
    pub fn arp(&mut self) -> [u8; 6] {
        self.driver
            .send_plain(&frames::arp_request(GUEST_MAC, GUEST_IP, HOST_IP));
        self.driver.recv_matching("ARP reply", |r| {
            parse_arp_reply(&r.frame)
                .filter(|&(_, ip, target)| ip == HOST_IP && target == GUEST_IP)
                .map(|(mac, _, _)| mac)
        })
    }

    /// A UDP socket bound to `HOST_IP:port` in the namespace.
    pub fn host_socket(&self, port: u16) -> UdpSocket {
        let socket = self
            .ns
            .run(move || UdpSocket::bind((HOST_IP, port)))
            .expect("a socket in the namespace");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    /// The ends of a datagram from the guest to `HOST_IP:port`.
    pub fn to_host(&self, host_mac: [u8; 6], port: u16) -> UdpEnds {
        UdpEnds {
            src_mac: GUEST_MAC,
            dst_mac: host_mac,
            src: (GUEST_IP, 5000),
            dst: (HOST_IP, port),
        }
    }
}

/// Polls `cond` until it holds or 10 s pass.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
