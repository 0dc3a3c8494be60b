// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A guest flooding its transmit queue does not starve another device served by the same
//! event loop (every device of a process shares it): the loop gives each device a bounded
//! turn, so the other device's frames go both ways while the flood goes on.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::frames::{UdpChecksum, parse_udp, udp_frame};
use common::{BASIC, GUEST_IP, GUEST_MAC, TestVm, wait_until};
use nexus_net::WAIT_NOT_LIVE;
use nexus_net::header::NetHeader;

#[test]
fn a_transmit_flood_does_not_starve_another_device() {
    let mut flooding = TestVm::new("nxt-flood");
    let mut other = TestVm::new("nxt-other");
    flooding.driver.queue_size = 256;
    flooding.driver.init(BASIC);
    other.driver.init(BASIC);
    let host_mac = other.arp();
    let socket = other.host_socket(7300);
    let ends = other.to_host(host_mac, 7300);

    // The flooder keeps the transmit ring full for as long as the test runs, as a guest
    // polling its used ring does: every chain the device returns is made available again at
    // once (publishing a chain costs the guest far less than sending its frame costs the
    // device, so the device never finds the ring empty). Full-size frames for a MAC nobody
    // has, which the namespace's stack drops.
    let mut frame = vec![0u8; 1514];
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    frame[6..12].copy_from_slice(&GUEST_MAC);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    let stop = Arc::new(AtomicBool::new(false));
    let mut driver = flooding.driver;
    while driver.try_send(NetHeader::default(), &frame) {}
    let flood = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut republished = 0usize;
            while !stop.load(Ordering::Relaxed) {
                republished += driver.republish_tx();
                std::hint::spin_loop();
            }
            // What came back last goes out too.
            republished += driver.republish_tx();
            assert_ne!(driver.wait(), WAIT_NOT_LIVE);
            (driver, republished)
        })
    };
    let flooded = || flooding.stats.snapshot().tx_frames;
    wait_until("the flood to start", || flooded() > 1000);

    let before = flooded();
    for round in 0..50u32 {
        let payload = format!("ping {round}");
        other
            .driver
            .send_plain(&udp_frame(&ends, payload.as_bytes(), UdpChecksum::Full));
        let mut buf = [0u8; 256];
        let (n, from) = socket
            .recv_from(&mut buf)
            .expect("the other device's frame goes out despite the flood");
        assert_eq!(&buf[..n], payload.as_bytes());
        socket.send_to(b"pong", from).unwrap();
        let udp = other.driver.recv_matching("the reply", |r| {
            parse_udp(&r.frame).filter(|u| u.dst == (GUEST_IP, 5000))
        });
        assert_eq!(udp.payload, b"pong");
    }
    stop.store(true, Ordering::Relaxed);
    let (_driver, republished) = flood.join().expect("the flooder");
    wait_until("the flooding device's frames", || flooded() > before);
    assert!(republished > 0);
    assert_eq!(other.counters().tx_frames, 51);
    assert_eq!(flooding.stats.snapshot().ring_faults, 0);
}

/// The order is exact: with both devices ready at once, the one with a full ring gets
/// `QUEUE_BUDGET` chains, then the other its chain, then the first the rest.
#[test]
fn a_turn_serves_at_most_a_budget_of_chains_then_the_next_device() {
    use common::driver::Driver;
    use common::{device, host_tap_with};
    use nexus_net::QUEUE_BUDGET;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    // Both taps in one namespace; every datagram goes to one socket, which sees them in the
    // order the event loop wrote them.
    let ns = common::netns::NetNs::new();
    let ips = [
        (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)),
        (Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 0, 2)),
    ];
    let mut drivers: Vec<Driver> = ["nxt-order-a", "nxt-order-b"]
        .iter()
        .zip(ips)
        .map(|(name, (host, guest))| {
            let (transport, memory) = device(host_tap_with(&ns, name, host, guest));
            let mut driver = Driver::new(transport, memory);
            driver.queue_size = 256;
            driver.init(BASIC);
            driver
        })
        .collect();
    let socket = ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7400)))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The taps' MACs, for the frames' destination.
    let macs: Vec<[u8; 6]> = ["nxt-order-a", "nxt-order-b"]
        .iter()
        .map(|name| {
            let out = ns.ip(&["-o", "link", "show", "dev", name]);
            let mac = out
                .split("link/ether ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("a MAC");
            let bytes: Vec<u8> = mac
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            bytes.try_into().unwrap()
        })
        .collect();
    let frame = |i: usize, tag: u8| {
        let ends = common::frames::UdpEnds {
            src_mac: GUEST_MAC,
            dst_mac: macs[i],
            src: (ips[i].1, 5000),
            dst: (ips[i].0, 7400),
        };
        udp_frame(&ends, &[tag], UdpChecksum::Full)
    };

    let (a, b) = (frame(0, b'a'), frame(1, b'b'));
    let chains = {
        let _hold = nexus_net::test_utils::hold_event_loop().expect("the event loop held");
        // `a` fills its ring and rings first, then `b` queues one frame and rings.
        let mut chains = 0;
        while drivers[0].try_send(NetHeader::default(), &a) {
            chains += 1;
        }
        assert!(drivers[1].try_send(NetHeader::default(), &b));
        chains
    };
    assert_eq!(chains, 128);
    let mut order = Vec::new();
    let mut buf = [0u8; 16];
    while order.len() < chains + 1 {
        let (n, _) = socket.recv_from(&mut buf).expect("every datagram arrives");
        assert_eq!(n, 1);
        order.push(buf[0]);
    }
    let b_at = order.iter().position(|&t| t == b'b').unwrap();
    // `a` had work left when `b` was served.
    assert!(b_at < chains, "{}", String::from_utf8_lossy(&order));
    assert_eq!(
        b_at,
        QUEUE_BUDGET,
        "`b` is served after one turn of `a`: {}",
        String::from_utf8_lossy(&order)
    );
}
