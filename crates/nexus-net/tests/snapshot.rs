// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Snapshot and restore: a live device saved (paused), restored over a copy of guest memory
//! and a new tap, resumes without a guest reset.

mod common;

use std::sync::{Arc, Mutex};

use common::driver::{Q, RAM_SIZE, guest_memory};
use common::frames::{UdpChecksum, parse_udp, udp_frame};
use common::{BASIC, GUEST_IP, TestVm, host_tap};
use nexus_kvm::virtio_mmio::regs;
use nexus_net::device::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM};
use nexus_net::header::NetHeader;
use nexus_net::{NexusNetState, QueuePosition};
use vm_memory::{Bytes, GuestAddress};

#[test]
fn a_restored_device_resumes_on_a_new_tap_without_a_reset() {
    let mut vm = TestVm::new("nxt-snap");
    let features = BASIC | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
    vm.driver.init(features);
    let host_mac = vm.arp();
    let socket = vm.host_socket(7500);
    let ends = vm.to_host(host_mac, 7500);
    vm.driver
        .send_plain(&udp_frame(&ends, b"before", UdpChecksum::Full));
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");

    // Snapshot: the device stops first; the guest still makes a datagram available (its
    // doorbell finds nobody); then memory and device state are saved.
    vm.driver.transport.lock().unwrap().device_mut().pause();
    vm.driver
        .send_plain(&udp_frame(&ends, b"while paused", UdpChecksum::Full));
    let state = NexusNetState::save(&vm.driver.transport.lock().unwrap());
    let saved_memory = {
        let mut bytes = vec![0u8; RAM_SIZE as usize];
        vm.driver
            .mem
            .read_slice(&mut bytes, GuestAddress(0))
            .unwrap();
        bytes
    };
    let device = &state.device;
    assert_eq!(device.acked_features, features);
    assert_eq!(device.mac, common::GUEST_MAC);
    let queues = device.queues.expect("live queues");
    assert_eq!(queues[0].config.size, 32);
    assert_eq!(
        queues[1].position,
        QueuePosition {
            next_avail: 2,
            next_used: 2
        },
        "two frames sent; the third waits"
    );
    let bytes = state.to_bytes();

    // The restore gets a new tap, configured as the old one was, its MAC too (the old one's
    // link goes down: the VM moved), and a copy of guest memory.
    vm.ns.ip(&["addr", "flush", "dev", "nxt-snap"]);
    vm.ns.ip(&["link", "set", "nxt-snap", "down"]);
    let tap = host_tap(&vm.ns, "nxt-snap2");
    let host_mac = common::mac_string(host_mac);
    vm.ns
        .ip(&["link", "set", "dev", "nxt-snap2", "address", &host_mac]);
    // (A new address flushes the neighbours: the guest's again.)
    let guest_mac = common::mac_string(common::GUEST_MAC);
    let guest_ip = GUEST_IP.to_string();
    vm.ns.ip(&[
        "neigh",
        "replace",
        &guest_ip,
        "lladdr",
        &guest_mac,
        "dev",
        "nxt-snap2",
        "nud",
        "permanent",
    ]);
    let memory = guest_memory();
    memory.write_slice(&saved_memory, GuestAddress(0)).unwrap();
    let state = NexusNetState::from_bytes(NexusNetState::STATE_VERSION, &bytes).unwrap();
    let restored = state.restore(tap, memory.clone()).expect("the restore");
    let stats = restored.device().stats();
    assert!(restored.device().is_served());
    vm.driver.transport = Arc::new(Mutex::new(restored));
    vm.driver.mem = memory;

    // No reset: the device is live as it was, sends what the guest made available while it
    // was paused, and goes on both ways.
    assert_eq!(vm.driver.read(regs::STATUS), 0b1111);
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"while paused");
    common::wait_until("the chain back", || vm.driver.used_idx(Q::Tx) == 3);
    socket.send_to(b"after", from).unwrap();
    let (header, udp) = vm.driver.recv_matching("the reply", |r| {
        parse_udp(&r.frame)
            .filter(|u| u.dst == (GUEST_IP, 5000))
            .map(|u| (r.header, u))
    });
    assert_eq!(udp.payload, b"after");
    // The offloads were set up again on the new tap.
    assert_eq!(header.flags, nexus_net::header::HDR_F_NEEDS_CSUM);
    vm.driver.send(
        NetHeader::default(),
        &udp_frame(&ends, b"after too", UdpChecksum::Full),
    );
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after too");
    // (The socket may have the datagram before the device counts it.)
    common::wait_until("two frames counted", || stats.snapshot().tx_frames == 2);
    assert_eq!(stats.snapshot().ring_faults, 0);
}

#[test]
fn a_device_that_was_not_live_restores_idle() {
    let vm = TestVm::new("nxt-snapidle");
    let state = NexusNetState::save(&vm.driver.transport.lock().unwrap());
    assert!(state.device.queues.is_none());
    assert_eq!(state.transport.status, 0);
    vm.ns.ip(&["link", "set", "nxt-snapidle", "down"]);
    let tap = host_tap(&vm.ns, "nxt-snapidle2");
    let restored = state.restore(tap, guest_memory()).unwrap();
    assert!(!restored.device().is_served());
    assert_eq!(NexusNetState::save(&restored), state);
    // A saved live state whose rings lie outside the new memory is refused.
    let mut vm = TestVm::new("nxt-snapbad");
    vm.driver.init(BASIC);
    vm.driver.transport.lock().unwrap().device_mut().pause();
    let mut state = NexusNetState::save(&vm.driver.transport.lock().unwrap());
    if let Some(queues) = state.device.queues.as_mut() {
        queues[1].config.used_ring = RAM_SIZE;
    }
    let tap = host_tap(&vm.ns, "nxt-snapbad2");
    assert!(matches!(
        state.restore(tap, guest_memory()),
        Err(nexus_net::Error::RingOutsideMemory {
            queue: "transmit",
            ..
        })
    ));
}
