// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The tap: what the kernel made of the ioctls, and frames read and written with their
//! virtio-net header.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::frames::{arp_request, parse_arp_reply};
use common::netns::NetNs;
use common::{GUEST_IP, GUEST_MAC, HOST_IP, host_tap};
use nexus_net::Tap;
use nexus_net::header::{HEADER_LEN, NetHeader};
use nexus_net::tap::{Error, ReadFrame};
use vm_memory::VolatileSlice;

#[test]
fn the_tap_has_a_vnet_header_and_no_packet_information() {
    let ns = NetNs::new();
    let tap = ns.run(|| Tap::open(Some("nxt-flags"))).unwrap();
    assert_eq!(tap.name(), "nxt-flags");
    let details = ns.ip(&["-d", "link", "show", "dev", "nxt-flags"]);
    assert!(
        details.contains("tun type tap pi off vnet_hdr on"),
        "{details}"
    );
    // Not persistent: the interface goes with the tap.
    assert!(details.contains("persist off"), "{details}");
    drop(tap);
    let links = ns.ip(&["-br", "link"]);
    assert!(!links.contains("nxt-flags"), "{links}");
}

#[test]
fn the_kernel_names_a_tap_when_asked() {
    let ns = NetNs::new();
    let (first, second, pattern) = ns.run(|| {
        (
            Tap::open(None).unwrap(),
            Tap::open(None).unwrap(),
            Tap::open(Some("nxt%d")).unwrap(),
        )
    });
    assert!(first.name().starts_with("tap"), "{}", first.name());
    assert_ne!(first.name(), second.name());
    assert_eq!(pattern.name(), "nxt0");
    // A name in use by another open tap is refused.
    let taken = pattern.name().to_owned();
    let again = ns.run(move || Tap::open(Some(&taken)));
    assert!(matches!(again, Err(Error::SetIff { .. })), "{again:?}");
}

#[test]
fn offload_flags_are_set_and_unknown_ones_refused() {
    let ns = NetNs::new();
    let tap = ns.run(|| Tap::open(Some("nxt-off"))).unwrap();
    tap.set_offload(libc::TUN_F_CSUM).unwrap();
    tap.set_offload(0).unwrap();
    assert!(matches!(
        tap.set_offload(0x8000_0000),
        Err(Error::Offload {
            flags: 0x8000_0000,
            ..
        })
    ));
}

#[test]
fn frames_are_read_and_written_with_their_header() {
    let ns = NetNs::new();
    let tap = host_tap(&ns, "nxt-rw");
    let mut frame = [0u8; 2048];
    let empty = tap.read_frame(&[VolatileSlice::from(&mut frame[..])]);
    assert_eq!(empty.unwrap_err().kind(), ErrorKind::WouldBlock);
    assert!(!tap.has_frame().unwrap());

    let request = arp_request(GUEST_MAC, GUEST_IP, HOST_IP);
    let mut body = request.clone();
    let written = tap
        .write_frame(
            &NetHeader::default().to_bytes(),
            &[VolatileSlice::from(&mut body[..])],
        )
        .unwrap();
    assert_eq!(written, HEADER_LEN + request.len());

    // The reply, read into a header buffer and a frame buffer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tap.has_frame().unwrap() {
        assert!(Instant::now() < deadline, "no reply on the tap");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut header = [0xffu8; HEADER_LEN];
    let read = tap
        .read_frame(&[
            VolatileSlice::from(&mut header[..]),
            VolatileSlice::from(&mut frame[..]),
        ])
        .unwrap();
    let ReadFrame::Frame(n) = read else {
        panic!("{read:?}")
    };
    assert_eq!(n, HEADER_LEN + 42);
    let header = NetHeader::from_bytes(&header);
    assert_eq!((header.flags, header.gso_type), (0, 0));
    let (_, ip, target) = parse_arp_reply(&frame[..n - HEADER_LEN]).expect("an ARP reply");
    assert_eq!((ip, target), (HOST_IP, GUEST_IP));

    // A frame that does not fit is cut short and said so, even when it would fill the
    // buffers but for one byte.
    let mut body = request.clone();
    tap.write_frame(
        &NetHeader::default().to_bytes(),
        &[VolatileSlice::from(&mut body[..])],
    )
    .unwrap();
    while !tap.has_frame().unwrap() {
        assert!(Instant::now() < deadline, "no second reply on the tap");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut short = [0u8; HEADER_LEN + 41];
    assert_eq!(
        tap.read_frame(&[VolatileSlice::from(&mut short[..])])
            .unwrap(),
        ReadFrame::TooLarge
    );
    assert!(!tap.has_frame().unwrap(), "the frame is gone");
}
