// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Frames through the device and a tap in a namespace of the test's own: ARP and UDP both
//! ways, checksum offload, receive without buffers, drops and their counters.

mod common;

use std::time::Duration;

use common::driver::Q;
use common::frames::{
    UDP_CSUM_OFFSET, UDP_START, UdpChecksum, arp_request, parse_arp_reply, parse_udp,
    partial_checksum, udp_frame,
};
use common::{BASIC, GUEST_IP, GUEST_MAC, HOST_IP, TestVm, wait_until};
use nexus_kvm::virtio_mmio::status;
use nexus_net::device::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM};
use nexus_net::header::{HDR_F_NEEDS_CSUM, NetHeader};
use nexus_net::{NetCounters, wait_value};

#[test]
fn an_arp_request_gets_its_reply() {
    let mut vm = TestVm::new("nxt-arp");
    assert_eq!(vm.driver.init(BASIC), 0b1111);
    let request = arp_request(GUEST_MAC, GUEST_IP, HOST_IP);
    let host_mac = vm.arp();
    assert_ne!(host_mac, GUEST_MAC);
    let counters = vm.counters();
    assert_eq!(counters.tx_frames, 1);
    assert_eq!(counters.tx_bytes, request.len() as u64);
    assert!(counters.rx_frames >= 1);
    assert!(counters.rx_bytes >= 42 * counters.rx_frames);
    assert_eq!(counters.ring_faults, 0);
    // WAIT now: nothing to consume, so it sleeps its timeout and reports both used indices.
    let (rx, tx) = (vm.driver.used_idx(Q::Rx), vm.driver.used_idx(Q::Tx));
    assert_eq!(tx, 1);
    assert_eq!(vm.driver.wait(), wait_value(rx, tx));
}

#[test]
fn udp_datagrams_go_both_ways() {
    let mut vm = TestVm::new("nxt-udp");
    vm.driver.init(BASIC);
    let host_mac = vm.arp();
    let socket = vm.host_socket(7000);
    let ends = vm.to_host(host_mac, 7000);
    for round in 0..20u32 {
        let payload = format!("ping {round}");
        vm.driver
            .send_plain(&udp_frame(&ends, payload.as_bytes(), UdpChecksum::Full));
        let mut buf = [0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf).expect("the datagram arrives");
        assert_eq!(&buf[..n], payload.as_bytes());
        assert_eq!(from, (GUEST_IP, 5000).into());
        let reply = format!("pong {round}");
        socket.send_to(reply.as_bytes(), from).unwrap();
        let udp = vm.driver.recv_matching("the reply", |r| {
            parse_udp(&r.frame).filter(|u| u.dst == (GUEST_IP, 5000))
        });
        assert_eq!(udp.payload, reply.as_bytes());
        assert_eq!(udp.src, (HOST_IP, 7000));
        assert!(
            udp.checksum_valid,
            "without GUEST_CSUM frames come checksummed"
        );
    }
    let counters = vm.counters();
    assert_eq!(counters.tx_frames, 21);
    assert!(counters.rx_frames >= 21);
    assert_eq!(counters.tx_dropped + counters.rx_dropped, 0);
}

#[test]
fn checksum_offload_is_honoured_both_ways() {
    let mut vm = TestVm::new("nxt-csum");
    vm.driver
        .init(BASIC | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM);
    let host_mac = vm.arp();
    let socket = vm.host_socket(7001);
    let ends = vm.to_host(host_mac, 7001);
    let partial = NetHeader {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: UDP_START as u16,
        csum_offset: UDP_CSUM_OFFSET as u16,
        ..NetHeader::default()
    };
    // A partial checksum without NEEDS_CSUM is a wrong checksum: the namespace's stack drops
    // the datagram. With NEEDS_CSUM the same bytes are taken. (The order of arrival shows it.)
    vm.driver
        .send_plain(&udp_frame(&ends, b"no flag: dropped", UdpChecksum::Partial));
    vm.driver.send(
        partial,
        &udp_frame(&ends, b"NEEDS_CSUM: taken", UdpChecksum::Partial),
    );
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"NEEDS_CSUM: taken");
    // The reply to a guest with GUEST_CSUM comes with its checksum to complete.
    socket.send_to(b"partial back", from).unwrap();
    let (header, udp) = vm.driver.recv_matching("the reply", |r| {
        parse_udp(&r.frame)
            .filter(|u| u.dst == (GUEST_IP, 5000))
            .map(|u| (r.header, u))
    });
    assert_eq!(udp.payload, b"partial back");
    assert_eq!(
        header.flags & HDR_F_NEEDS_CSUM,
        HDR_F_NEEDS_CSUM,
        "{header:?}"
    );
    assert_eq!(usize::from(header.csum_start), UDP_START);
    assert_eq!(usize::from(header.csum_offset), UDP_CSUM_OFFSET);
    assert_eq!(udp.checksum, partial_checksum(&udp));

    // Without CSUM a NEEDS_CSUM frame is refused by the device (and counted); without
    // GUEST_CSUM the reply is complete and `flags` is 0.
    vm.driver.init(BASIC);
    let host_mac = vm.arp();
    let ends = vm.to_host(host_mac, 7001);
    let before = vm.counters().tx_dropped;
    vm.driver.send(
        partial,
        &udp_frame(&ends, b"NEEDS_CSUM not agreed", UdpChecksum::Partial),
    );
    vm.driver
        .send_plain(&udp_frame(&ends, b"complete", UdpChecksum::Full));
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"complete");
    assert_eq!(vm.counters().tx_dropped, before + 1);
    socket.send_to(b"complete back", from).unwrap();
    let (header, udp) = vm.driver.recv_matching("the reply", |r| {
        parse_udp(&r.frame)
            .filter(|u| u.dst == (GUEST_IP, 5000))
            .map(|u| (r.header, u))
    });
    assert_eq!(udp.payload, b"complete back");
    assert_eq!(header.flags, 0);
    assert!(udp.checksum_valid);
}

#[test]
fn without_receive_buffers_frames_wait_for_the_guest() {
    let mut vm = TestVm::new("nxt-nobuf");
    assert_eq!(vm.driver.init_with(BASIC, 0), 0b1111);
    assert!(
        !vm.driver.wants_kick(Q::Rx),
        "no receive doorbells while the device does not wait for buffers"
    );
    vm.driver
        .send_plain(&arp_request(GUEST_MAC, GUEST_IP, HOST_IP));
    // The reply finds no buffer: the device stops reading the tap and asks for a doorbell.
    wait_until("the receive stall", || vm.counters().rx_no_buffer == 1);
    assert!(vm.driver.wants_kick(Q::Rx));
    assert_eq!(vm.driver.used_idx(Q::Rx), 0);
    std::thread::sleep(Duration::from_millis(50));
    let counters = vm.counters();
    assert_eq!(counters.rx_no_buffer, 1, "stalled once, not spinning");
    assert_eq!(
        counters.rx_dropped, 0,
        "nothing dropped: the frame waits in the tap"
    );
    // A doorbell for transmit only: still no buffer, still stalled (and counted once).
    vm.driver
        .send_plain(&arp_request(GUEST_MAC, GUEST_IP, HOST_IP));
    wait_until("the second request", || vm.counters().tx_frames == 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(vm.counters().rx_no_buffer, 1);
    assert!(vm.driver.wants_kick(Q::Rx));
    // A buffer and a doorbell: the waiting reply comes in, and receive doorbells are off
    // again.
    vm.driver.post_rx(0);
    vm.driver.kick(Q::Rx);
    let reply = vm
        .driver
        .recv_matching("the waiting ARP reply", |r| parse_arp_reply(&r.frame));
    assert_eq!(reply.1, HOST_IP);
    assert_eq!(vm.counters().tx_frames, 2);
}

#[test]
fn frames_that_do_not_fit_are_dropped_and_counted() {
    let mut vm = TestVm::new("nxt-drop");
    vm.driver.init(BASIC);
    let host_mac = vm.arp();
    let ends = vm.to_host(host_mac, 9);
    // Transmit: too short, too long, segmentation offload: refused and counted.
    let before = vm.counters();
    vm.driver.send_plain(&[0u8; 13]);
    vm.driver.send_plain(&vec![0u8; 1515]);
    let gso = NetHeader {
        gso_type: 1,
        ..NetHeader::default()
    };
    vm.driver
        .send(gso, &udp_frame(&ends, b"gso", UdpChecksum::Full));
    // The longest frame goes out.
    vm.driver.send_plain(&{
        let mut f = udp_frame(&ends, &[0u8; 1472], UdpChecksum::Full);
        f.truncate(1514);
        f
    });
    wait_until("the transmit queue to drain", || {
        vm.driver.reclaim_tx();
        vm.driver.tx_free() == 16
    });
    let after = vm.counters();
    assert_eq!(after.tx_dropped - before.tx_dropped, 3);
    assert_eq!(after.tx_frames - before.tx_frames, 1);
    assert_eq!(after.tx_bytes - before.tx_bytes, 1514);

    // Receive: a chain too small for the reply keeps its place; the frame is dropped.
    vm.driver.rx_frame_len = 20;
    vm.driver.init(BASIC);
    let used = vm.driver.used_idx(Q::Rx);
    vm.driver
        .send_plain(&arp_request(GUEST_MAC, GUEST_IP, HOST_IP));
    wait_until("the drop", || vm.counters().rx_dropped >= 1);
    assert_eq!(
        vm.driver.used_idx(Q::Rx),
        used,
        "no used entry for a dropped frame"
    );
    assert_eq!(vm.driver.status() & status::DEVICE_NEEDS_RESET, 0);
    let NetCounters { ring_faults, .. } = vm.counters();
    assert_eq!(ring_faults, 0);
}

#[test]
fn the_test_frames_have_the_right_checksums() {
    let ends = common::frames::UdpEnds {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        src: (GUEST_IP, 5000),
        dst: (HOST_IP, 7000),
    };
    let full = parse_udp(&udp_frame(&ends, b"hello", UdpChecksum::Full)).unwrap();
    assert!(full.checksum_valid);
    assert_eq!(full.payload, b"hello");
    let partial = parse_udp(&udp_frame(&ends, b"hello", UdpChecksum::Partial)).unwrap();
    assert!(!partial.checksum_valid);
    assert_eq!(partial.checksum, partial_checksum(&partial));
}
