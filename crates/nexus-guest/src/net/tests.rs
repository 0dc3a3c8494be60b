// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tests of the driver against the fake device, and of the stack, the HTTP client and the
//! server end to end: the driver's stack on one side, a second smoltcp interface on the
//! other, frames between them through the fake device and channels.

use std::boxed::Box;
use std::string::String;
use std::sync::mpsc;
use std::thread;
use std::vec;
use std::vec::Vec;

use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::{Duration, Instant};

use super::driver::{NetDriverConfig, VirtioNet, fold, sum_words};
use super::error::NetError;
use super::fake::{ChannelLink, FakeNet, StdClock};
use super::http::{HttpClient, HttpServer, Method, Request};
use super::stack::{Net, NetStack, StackConnector};
use super::{NetConfig, config::DEFAULT_TCP_BUFFER};
use crate::mmio::status::*;
use core::net::Ipv4Addr;
use nexus_ring::net::{
    HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, NetHeader, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_MAC,
};

pub(crate) const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(crate) const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn driver(
    setup: impl FnOnce(&mut super::fake::FakeNetState),
) -> (super::Result<VirtioNet<FakeNet>>, FakeNet) {
    let fake = FakeNet::new();
    setup(&mut fake.state());
    (
        VirtioNet::new(fake.clone(), NetDriverConfig::default()),
        fake,
    )
}

/// An Ethernet + IPv4 + TCP frame with `payload` and a correct checksum.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20];
    frame[0..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    frame[6..12].copy_from_slice(&PEER_MAC);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (40 + payload.len()) as u16;
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&PEER_IP.octets());
    ip[16..20].copy_from_slice(&GUEST_IP.octets());
    let ip_sum = !fold(sum_words(0, &frame[14..34]));
    frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    frame[34..36].copy_from_slice(&80u16.to_be_bytes());
    frame[36..38].copy_from_slice(&50000u16.to_be_bytes());
    frame[46] = 0x50;
    frame[47] = 0x18;
    frame.extend_from_slice(payload);
    let mut pseudo = sum_words(0, &frame[26..34]) + 6 + u32::from(total - 20);
    pseudo = sum_words(pseudo, &frame[34..]);
    let sum = !fold(pseudo);
    frame[50..52].copy_from_slice(&sum.to_be_bytes());
    frame
}

fn tcp_checksum_valid(frame: &[u8]) -> bool {
    let total = u16::from_be_bytes([frame[16], frame[17]]);
    let pseudo = sum_words(0, &frame[26..34]) + 6 + u32::from(total - 20);
    fold(sum_words(pseudo, &frame[34..])) == 0xFFFF
}

#[test]
fn negotiates_and_posts_every_receive_buffer() {
    let (device, fake) = driver(|_| {});
    let device = device.unwrap();
    let s = fake.state();
    assert_eq!(
        s.status_writes,
        [
            0,
            ACKNOWLEDGE,
            ACKNOWLEDGE | DRIVER,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        ]
    );
    assert_eq!(
        s.driver_features, s.offered,
        "everything offered is accepted"
    );
    let info = device.info();
    assert_eq!(info.mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(info.mtu, 1500);
    assert!(info.tx_checksum_offload() && info.rx_checksum_offload());
    assert!(device.link_up());
    assert_eq!((info.rx_queue_size, info.tx_queue_size), (256, 256));
    for queue in &s.queues {
        assert_eq!((queue.num, queue.ready), (256, 1));
        assert!(queue.desc % 16 == 0 && queue.avail % 2 == 0 && queue.used % 4 == 0);
    }
    // Every receive buffer is posted, with one doorbell for all of them.
    assert_eq!(s.queues[0].avail_idx(), 256);
    assert_eq!(s.notifies, [1, 0]);
    assert!(s.unexpected.is_empty(), "{:?}", s.unexpected);
    let caps = device.capabilities();
    assert_eq!(caps.max_transmission_unit, 1514);
    assert!(matches!(caps.checksum.tcp, smoltcp::phy::Checksum::None));
}

#[test]
fn negotiation_needs_version_1_and_the_nexus_device() {
    let (device, fake) = driver(|s| s.offered = VIRTIO_NET_F_MAC);
    assert!(matches!(device, Err(NetError::FeatureNegotiation { .. })));
    // FAILED, then the reset of the driver's drop (its rings' memory goes).
    assert_ne!(
        fake.state().status_writes.iter().rev().nth(1).unwrap() & FAILED,
        0
    );
    assert_eq!(fake.state().status, 0);
    let (device, _) = driver(|s| s.vendor_id = 0x1AF4);
    assert!(matches!(
        device,
        Err(NetError::NotNetDevice {
            vendor_id: 0x1AF4,
            ..
        })
    ));
    let (device, _) = driver(|s| s.refuse_features_ok = true);
    assert!(matches!(device, Err(NetError::FeatureNegotiation { .. })));
    let (device, _) = driver(|s| s.queues[1].num_max = 0);
    assert!(matches!(
        device,
        Err(NetError::QueueUnavailable { queue: 1, .. })
    ));
    let (device, _) = driver(|s| s.mtu = 9001);
    assert!(matches!(device, Err(NetError::BadMtu { mtu: 9001, .. })));

    // Only what is offered is taken: no checksum offload, no MAC (a fallback), no MTU.
    let (device, fake) = driver(|s| {
        s.offered = VIRTIO_F_VERSION_1;
        s.queues[0].num_max = 100;
    });
    let device = device.unwrap();
    assert_eq!(fake.state().driver_features, VIRTIO_F_VERSION_1);
    assert_eq!(device.info().mac, NetDriverConfig::default().fallback_mac);
    assert_eq!(device.info().rx_queue_size, 64);
    assert!(matches!(
        device.capabilities().checksum.tcp,
        smoltcp::phy::Checksum::Both
    ));
}

#[test]
fn receives_frames_with_headers_in_order_and_reposts_buffers() {
    let (device, fake) = driver(|_| {});
    let mut device = device.unwrap();
    let frames: Vec<Vec<u8>> = (0..3).map(|i| tcp_frame(&[i; 100])).collect();
    for frame in &frames {
        let header = NetHeader {
            num_buffers: 1,
            ..NetHeader::default()
        };
        fake.state().rx_pending.push_back((header, frame.clone()));
    }
    // A frame with a wrong checksum the device did not validate: dropped by the driver.
    let mut bad = tcp_frame(b"bad");
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    fake.state()
        .rx_pending
        .push_back((NetHeader::default(), bad.clone()));
    // The same frame flagged DATA_VALID (or NEEDS_CSUM) is taken as it is.
    let valid = NetHeader {
        flags: HDR_F_DATA_VALID,
        ..NetHeader::default()
    };
    fake.state().rx_pending.push_back((valid, bad.clone()));
    assert_eq!(fake.state().deliver_rx(), 5);
    let mut received = Vec::new();
    while let Some((rx, _tx)) = device.receive(Instant::ZERO) {
        received.push(rx.consume(|frame| frame.to_vec()));
    }
    assert_eq!(
        received,
        [frames[0].clone(), frames[1].clone(), frames[2].clone(), bad]
    );
    let stats = device.stats();
    assert_eq!(
        (stats.rx_frames, stats.rx_dropped, stats.rx_bad_checksum),
        (4, 1, 1)
    );
    // Every buffer went back to the device; the doorbell says so after the poll.
    assert_eq!(fake.state().queues[0].avail_idx(), 256 + 5);
    device.flush().unwrap();
    assert_eq!(fake.state().notifies[0], 2);
    assert_eq!(fake.state().rx_dropped, 0);
}

#[test]
fn transmits_with_checksum_offload_and_batched_doorbells() {
    let (device, fake) = driver(|_| {});
    let mut device = device.unwrap();
    let frame = tcp_frame(b"hello, world");
    let mut zeroed = frame.clone();
    zeroed[50..52].fill(0); // as smoltcp leaves it without TCP checksumming
    for _ in 0..3 {
        let token = device.transmit(Instant::ZERO).unwrap();
        token.consume(zeroed.len(), |buf| buf.copy_from_slice(&zeroed));
    }
    // Nothing rung yet: the doorbell comes with the flush after the poll.
    assert_eq!(fake.state().notifies[1], 0);
    device.flush().unwrap();
    let s = fake.state();
    assert_eq!(s.notifies[1], 1);
    assert_eq!(s.transmitted.len(), 3);
    for (header, sent) in &s.transmitted {
        assert_eq!(header.flags, HDR_F_NEEDS_CSUM);
        assert_eq!((header.csum_start, header.csum_offset), (34, 16));
        assert_eq!(header.num_buffers, 0);
        // The device completed the pseudo-header sum the driver left: a valid checksum.
        assert!(tcp_checksum_valid(sent));
        assert_eq!(sent, &frame);
    }
    drop(s);
    assert_eq!(device.stats().tx_csum_offloaded, 3);

    // Without CSUM the stack's own checksum goes out untouched.
    let (device, fake) = driver(|s| s.offered &= !VIRTIO_NET_F_CSUM);
    let mut device = device.unwrap();
    let token = device.transmit(Instant::ZERO).unwrap();
    token.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
    device.flush().unwrap();
    let s = fake.state();
    assert_eq!(s.transmitted[0].0, NetHeader::default());
    assert_eq!(s.transmitted[0].1, frame);
}

#[test]
fn a_full_transmit_ring_refuses_tokens_until_completions_come_back() {
    let (device, fake) = driver(|s| s.queues[1].num_max = 4);
    let mut device = device.unwrap();
    // The device processes nothing until notified; fill the ring without notifying.
    fake.state().no_notify = false;
    let frame = tcp_frame(b"x");
    let mut sent = 0;
    while let Some(token) = device.transmit(Instant::ZERO) {
        token.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
        sent += 1;
        assert!(sent <= 8, "the ring has 4 entries");
    }
    // The 5th request rang the doorbell; the device completed all 4 and more fit now.
    assert_eq!(sent, 4);
    assert_eq!(fake.state().transmitted.len(), 4);
    assert!(device.transmit(Instant::ZERO).is_some());
}

#[test]
fn no_notify_suppresses_doorbells() {
    let (device, fake) = driver(|s| s.no_notify = true);
    let mut device = device.unwrap();
    let frame = tcp_frame(b"x");
    let token = device.transmit(Instant::ZERO).unwrap();
    token.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
    device.flush().unwrap();
    assert_eq!(fake.state().notifies, [0, 0]);
    assert_eq!(device.stats().notifies, 0);
}

#[test]
fn wait_keeps_used_event_at_what_was_consumed() {
    let (device, fake) = driver(|_| {});
    let mut device = device.unwrap();
    // Nothing happens: the read returns (the device's timeout) with nothing consumed.
    device.wait().unwrap();
    let frame = tcp_frame(b"x");
    let token = device.transmit(Instant::ZERO).unwrap();
    token.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
    fake.state()
        .rx_pending
        .push_back((NetHeader::default(), tcp_frame(b"y")));
    // The flush before the read rings the doorbell: the device sends and delivers, and
    // the driver reaps both before reading WAIT again.
    device.wait().unwrap();
    assert_eq!(device.pending_frames(), 1);
    device.wait().unwrap();
    let (rx, _) = device.receive(Instant::ZERO).unwrap();
    rx.consume(|_| ());
    device.wait().unwrap();
    let s = fake.state();
    // At every read, used_event was everything consumed: nothing before, then one receive
    // and one transmit completion. (The read with a frame pending was skipped.)
    assert_eq!(s.used_event_at_wait, [(0, 0), (1, 1)]);
    assert_eq!(s.wait_reads, 2);
}

#[test]
fn wait_hints_tell_the_device_when_the_stack_needs_to_run() {
    let (device, fake) = driver(|_| {});
    let mut device = device.unwrap();
    device.hint_wait(Some(25));
    device.wait().unwrap();
    device.hint_wait(None);
    device.wait().unwrap();
    // Longer than a u16 of milliseconds: the longest hint; shorter than 1 ms: 1 ms.
    device.hint_wait(Some(1_000_000));
    device.wait().unwrap();
    device.hint_wait(Some(0));
    device.wait().unwrap();
    assert_eq!(fake.state().hint_at_wait, [25, 0, 0xFFFF, 1]);
}

#[test]
fn wait_all_ones_resets_and_the_next_use_sets_up_again() {
    let (device, fake) = driver(|_| {});
    let mut device = device.unwrap();
    fake.state().wait_override = Some(0xFFFF_FFFF);
    assert_eq!(
        device.wait(),
        Err(NetError::DeviceReset("the WAIT register read 0xFFFF_FFFF"))
    );
    assert!(!device.is_live());
    assert_eq!(fake.state().status, 0);
    assert!(device.transmit(Instant::ZERO).is_none());
    device.flush().unwrap();
    assert!(device.is_live());
    let stats = device.stats();
    assert_eq!((stats.setups, stats.resets), (2, 1));
    assert_eq!(fake.state().queues[0].avail_idx(), 256);
    // A broken used ring resets too.
    let used = fake.state().queues[1].used;
    super::fake::write_u16(used + 2, 1000);
    assert!(matches!(device.wait(), Err(NetError::DeviceReset(_))));
    assert_eq!(device.stats().resets, 2);
}

/// Runs `peer` on a thread with a stack over channels; returns the guest's stack over the
/// fake device wired to it.
pub(crate) fn wire<T: Send + 'static>(
    peer: impl FnOnce(Net<ChannelLink>) -> T + Send + 'static,
) -> (Net<VirtioNet<FakeNet>>, thread::JoinHandle<T>) {
    let (to_peer, from_guest) = mpsc::channel::<Vec<u8>>();
    let (to_guest, from_peer) = mpsc::channel::<Vec<u8>>();
    let handle = thread::spawn(move || {
        let link = ChannelLink {
            tx: to_guest,
            rx: from_guest,
            queued: Default::default(),
            mac: PEER_MAC,
        };
        let stack = NetStack::new(link, NetConfig::new(PEER_IP, 24), StdClock::new(), 7);
        peer(Net::new(stack))
    });
    let fake = FakeNet::new();
    {
        let mut s = fake.state();
        s.sink = Some(Box::new(move |_, frame| {
            let _ = to_peer.send(frame);
        }));
        s.source = Some(Box::new(move |timeout| {
            from_peer.recv_timeout(timeout).ok()
        }));
    }
    let driver = VirtioNet::new(fake, NetDriverConfig::default()).unwrap();
    let mut config = NetConfig::new(GUEST_IP, 24);
    config.gateway = Some(PEER_IP);
    let stack = NetStack::new(driver, config, StdClock::new(), 42);
    (Net::new(stack), handle)
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const BIG: usize = 4 << 20;

#[test]
fn http_client_over_the_driver_to_a_peer_server() {
    let (net, peer) = wire(|net| {
        let mut server = HttpServer::new(&net, 8080).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let request = server.next_request(Some(Duration::from_secs(20))).unwrap();
            seen.push((
                request.method.clone(),
                request.target.clone(),
                request.body.len(),
            ));
            match request.target.as_str() {
                "/echo" => server.respond(200, "application/octet-stream", &request.body),
                "/big" => server.respond(200, "application/octet-stream", &pattern(BIG, 9)),
                "/chunked" => {
                    server.respond_chunked(200, "text/plain", &[b"hello, ", b"chunked ", b"world"])
                }
                _ => server.respond(404, "text/plain", b"no"),
            }
            .unwrap();
        }
        (seen, server.stats())
    });
    let connector = StackConnector::new(&net, PEER_IP, 8080);
    let mut client = HttpClient::new(connector, "10.0.0.1:8080");
    let upload = pattern(BIG, 3);
    let mut body = Vec::new();
    let echo = Request {
        method: Method::Post,
        target: "/echo",
        headers: &[("content-type", "application/octet-stream")],
        body: &upload,
    };
    let exchange = client.send(&echo).unwrap();
    assert_eq!(exchange.status(), 200);
    assert_eq!(exchange.read_to_vec(&mut body, BIG).unwrap(), BIG as u64);
    assert!(body == upload, "4 MiB echoed back intact");
    body.clear();
    let get = |target| Request {
        method: Method::Get,
        target,
        headers: &[],
        body: &[],
    };
    client
        .send(&get("/big"))
        .unwrap()
        .read_to_vec(&mut body, BIG)
        .unwrap();
    assert!(body == pattern(BIG, 9));
    body.clear();
    let exchange = client.send(&get("/chunked")).unwrap();
    assert_eq!(exchange.framing(), super::http::Framing::Chunked);
    exchange.read_to_vec(&mut body, 100).unwrap();
    assert_eq!(body, b"hello, chunked world");
    let exchange = client.send(&get("/missing")).unwrap();
    assert_eq!(exchange.status(), 404);
    exchange.discard().unwrap();

    let stats = client.stats();
    assert_eq!((stats.requests, stats.connections, stats.reused), (4, 1, 3));
    let (seen, server_stats) = peer.join().unwrap();
    assert_eq!(seen[0], (String::from("POST"), String::from("/echo"), BIG));
    assert_eq!(server_stats.connections, 1, "one kept-alive connection");
    let driver = net.with(|stack| stack.link().stats());
    assert!(driver.tx_csum_offloaded > 0);
    assert!(driver.rx_bytes > 2 * BIG as u64);
    assert_eq!(driver.rx_dropped, 0);
    assert_eq!(driver.resets, 0);
}

#[test]
fn server_over_the_driver_answers_a_peer_client() {
    let (net, peer) = wire(|net| {
        let connector = StackConnector::new(&net, GUEST_IP, 9000);
        let mut client = HttpClient::new(connector, "10.0.0.2:9000");
        let input = pattern(BIG, 5);
        let mut outputs = Vec::new();
        for body in [&b"small"[..], &input] {
            let mut out = Vec::new();
            let exchange = client
                .send(&Request {
                    method: Method::Post,
                    target: "/invoke",
                    headers: &[("expect", "100-continue")],
                    body,
                })
                .unwrap();
            assert_eq!(exchange.status(), 200);
            exchange.read_to_vec(&mut out, 2 * BIG).unwrap();
            outputs.push(out);
        }
        (outputs, client.stats())
    });
    let mut server = HttpServer::new(&net, 9000).unwrap();
    for _ in 0..2 {
        let request = server.next_request(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(request.method, "POST");
        let mut output = request.body.clone();
        output.reverse();
        server
            .respond(200, "application/octet-stream", &output)
            .unwrap();
    }
    let (outputs, client_stats) = peer.join().unwrap();
    assert_eq!(outputs[0], b"llams");
    let mut expected = pattern(BIG, 5);
    expected.reverse();
    assert!(outputs[1] == expected);
    assert_eq!(client_stats.connections, 1);
    assert_eq!(server.stats().requests, 2);
}

#[test]
fn reseed_drops_connections_and_the_client_reconnects() {
    let (net, peer) = wire(|net| {
        let mut server = HttpServer::new(&net, 8080).unwrap();
        let mut served = 0;
        // The guest's first connection disappears without a word: this side's connection
        // stays open until the guest's new SYN arrives on a new port.
        while served < 2 {
            let request = match server.next_request(Some(Duration::from_secs(20))) {
                Ok(request) => request,
                Err(_) => continue,
            };
            server.respond(200, "text/plain", &request.body).unwrap();
            served += 1;
        }
        server.stats()
    });
    let mut client = HttpClient::new(StackConnector::new(&net, PEER_IP, 8080), "10.0.0.1");
    let post = Request {
        method: Method::Put,
        target: "/",
        headers: &[],
        body: b"one",
    };
    let mut body = Vec::new();
    client
        .send(&post)
        .unwrap()
        .read_to_vec(&mut body, 10)
        .unwrap();
    net.reseed(0xDEAD_BEEF);
    assert_eq!(net.with(|stack| stack.epoch()), 1);
    client
        .send(&Request {
            body: b"two",
            ..post
        })
        .unwrap()
        .read_to_vec(&mut body, 10)
        .unwrap();
    assert_eq!(body, b"onetwo");
    // The stale connection was seen before sending: a new one, no retry needed.
    assert_eq!(client.stats().connections, 2);
    assert_eq!(client.stats().retries, 0);
    let stats = peer.join().unwrap();
    assert_eq!(stats.requests, 2);
}

#[test]
fn stack_defaults_are_the_tuned_ones() {
    assert_eq!(DEFAULT_TCP_BUFFER, 256 * 1024);
    let (net, peer) = wire(|net| {
        let mut listener = net.listen(7000).unwrap();
        let connection = listener.accept(Some(Duration::from_secs(20))).unwrap();
        drop(connection);
    });
    let connection = net.connect(PEER_IP, 7000).unwrap();
    net.with(|stack| {
        let socket = stack.tcp_for_test(&connection);
        assert!(!socket.nagle_enabled());
        assert_eq!(socket.ack_delay(), None);
        assert_eq!(socket.recv_capacity(), DEFAULT_TCP_BUFFER);
        assert_eq!(socket.send_capacity(), DEFAULT_TCP_BUFFER);
    });
    peer.join().unwrap();
}
