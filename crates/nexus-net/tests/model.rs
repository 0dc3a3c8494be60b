// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device model through its `MmioTransport`, without KVM: identity, features, the
//! configuration space, the WAIT register, activation and reset.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use common::driver::Q;
use common::{BASIC, GUEST_IP, GUEST_MAC, TestVm, wait_until};
use nexus_kvm::BusDevice;
use nexus_kvm::virtio_mmio::{MAGIC, regs, status};
use nexus_net::device::{
    LINK_UP, MTU, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, config,
};
use nexus_net::{DEVICE_FEATURES, DEVICE_ID, VENDOR_ID, WAIT_NOT_LIVE, wait_value};

#[test]
fn identity_features_and_configuration_space() {
    let vm = TestVm::new("nxt-ident");
    let d = &vm.driver;
    assert_eq!(d.read(regs::MAGIC_VALUE), MAGIC);
    assert_eq!(d.read(regs::VERSION), 2);
    assert_eq!(d.read(regs::DEVICE_ID), DEVICE_ID);
    assert_eq!(DEVICE_ID, 1);
    assert_eq!(d.read(regs::VENDOR_ID), VENDOR_ID);
    d.write(regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(d.read(regs::DEVICE_FEATURES), 0x0001_002B);
    d.write(regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.read(regs::DEVICE_FEATURES), 1);
    assert_eq!(DEVICE_FEATURES, 0x1_0001_002B);
    for (queue, max) in [(0, 256), (1, 256), (2, 0)] {
        d.write(regs::QUEUE_SEL, queue);
        assert_eq!(d.read(regs::QUEUE_NUM_MAX), max, "queue {queue}");
    }
    assert_eq!(d.config_bytes(config::MAC, 6), GUEST_MAC);
    assert_eq!(d.config_bytes(config::STATUS, 2), LINK_UP.to_le_bytes());
    assert_eq!(d.config_bytes(config::MAX_VIRTQUEUE_PAIRS, 2), [1, 0]);
    assert_eq!(d.config_bytes(config::MTU, 2), MTU.to_le_bytes());
    assert_eq!(MTU, 1500);
    // Everything at once, and past the end.
    let all = d.config_bytes(0, 0x50);
    assert_eq!(&all[..6], GUEST_MAC);
    assert_eq!(&all[6..12], [1, 0, 1, 0, 0xdc, 0x05]);
    assert!(all[12..].iter().all(|&b| b == 0));
    // Read only: a MAC write changes nothing.
    vm.driver
        .transport
        .lock()
        .unwrap()
        .write(regs::CONFIG.into(), &[0xaa; 6]);
    assert_eq!(d.config_bytes(config::MAC, 6), GUEST_MAC);
    assert_eq!(d.read(regs::CONFIG_GENERATION), 0);
}

#[test]
fn features_the_device_does_not_offer_are_refused() {
    let vm = TestVm::new("nxt-feat");
    let d = &vm.driver;
    // VIRTIO_NET_F_GUEST_TSO4 (7), VIRTIO_NET_F_MRG_RXBUF (15), VIRTIO_RING_F_EVENT_IDX (29).
    for bit in [7, 15, 29] {
        d.write(regs::STATUS, 0);
        d.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.write(regs::DRIVER_FEATURES_SEL, 0);
        d.write(
            regs::DRIVER_FEATURES,
            (VIRTIO_NET_F_MAC | (1 << bit)) as u32,
        );
        d.write(regs::DRIVER_FEATURES_SEL, 1);
        d.write(regs::DRIVER_FEATURES, 1);
        d.write(regs::STATUS, 0b1011);
        assert_eq!(d.status() & status::FEATURES_OK, 0, "bit {bit}");
    }
}

#[test]
fn the_wait_register_reports_both_used_indices() {
    let mut vm = TestVm::new("nxt-wait");
    // Not live: at once.
    assert_eq!(vm.driver.wait(), WAIT_NOT_LIVE);
    vm.driver.init(BASIC);
    // Live, nothing used yet, nothing to consume: the read sleeps its timeout and reports
    // both indices (0).
    assert_eq!(vm.driver.wait(), 0);
    vm.arp();
    let socket = vm.host_socket(7100);
    let guest = (GUEST_IP, 5000);
    // Three datagrams for the guest, none consumed: WAIT returns at once with the receive
    // index, the transmit index in the upper half.
    for i in 0..3u8 {
        socket.send_to(&[i], guest).unwrap();
    }
    let rx_before = vm.driver.rx.last_used;
    wait_until("three frames", || {
        vm.driver.used_idx(Q::Rx) == rx_before.wrapping_add(3)
    });
    let (rx, tx) = (vm.driver.used_idx(Q::Rx), vm.driver.used_idx(Q::Tx));
    assert_eq!(tx, 1, "the ARP request");
    assert_eq!(vm.driver.wait(), wait_value(rx, tx));
    assert_eq!(wait_value(rx, tx), u32::from(rx) | 1 << 16);
    // A sleeping WAIT wakes when a frame comes in.
    for _ in 0..3 {
        vm.driver.recv(Duration::from_secs(5)).expect("a frame");
    }
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        socket.send_to(b"wake", guest).unwrap();
        socket
    });
    let value = vm.driver.wait();
    let _socket: UdpSocket = sender.join().unwrap();
    // Either the wake-up or (on a slow machine) the timeout; both report the indices.
    let (rx, tx) = (vm.driver.used_idx(Q::Rx), vm.driver.used_idx(Q::Tx));
    assert!(
        value == wait_value(rx, tx) || value == wait_value(rx.wrapping_sub(1), tx),
        "{value:#x}"
    );
    vm.driver.write(regs::STATUS, 0);
    assert_eq!(vm.driver.wait(), WAIT_NOT_LIVE);
}

#[test]
fn reset_stops_the_device_and_a_new_setup_brings_it_back() {
    let mut vm = TestVm::new("nxt-reset");
    vm.driver
        .init(BASIC | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM);
    vm.arp();
    let socket = vm.host_socket(7200);
    let served = |vm: &TestVm| vm.driver.transport.lock().unwrap().device().is_served();
    assert!(served(&vm));
    vm.driver.write(regs::STATUS, 0);
    assert!(!served(&vm));
    {
        let transport = vm.driver.transport.lock().unwrap();
        assert_eq!(transport.device().acked_features(), 0);
        assert!(transport.device().queues().is_none());
    }
    // Frames for the guest and doorbells now touch nothing of its memory.
    let used = vm.driver.used_idx(Q::Rx);
    for i in 0..5u8 {
        socket.send_to(&[i], (GUEST_IP, 5000)).unwrap();
    }
    vm.driver.kick(Q::Tx);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vm.driver.used_idx(Q::Rx), used);
    assert_eq!(vm.counters().ring_faults, 0);
    // Set up again: frames flow (those that waited in the tap come in first).
    assert_eq!(vm.driver.init(BASIC), 0b1111);
    vm.arp();
}

#[test]
fn activation_needs_both_queues_in_guest_ram() {
    let mut vm = TestVm::new("nxt-act");
    // A ring outside guest RAM: QueueReady is refused and the device needs a reset.
    vm.driver.negotiate(BASIC);
    vm.driver.rx.used = common::driver::RAM_SIZE - 0x100;
    vm.driver.write(regs::QUEUE_SEL, 0);
    vm.driver.write(regs::QUEUE_NUM, 32);
    vm.driver
        .write(regs::QUEUE_DEVICE_LOW, vm.driver.rx.used as u32);
    vm.driver.write(regs::QUEUE_READY, 1);
    assert_eq!(vm.driver.read(regs::QUEUE_READY), 0);
    assert_ne!(vm.driver.status() & status::DEVICE_NEEDS_RESET, 0);
    // Only the receive queue ready: DRIVER_OK fails activation.
    let mut vm = TestVm::new("nxt-act2");
    vm.driver.negotiate(BASIC);
    vm.driver.setup_queue(Q::Rx);
    vm.driver.write(regs::STATUS, 0b1111);
    assert_ne!(vm.driver.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(vm.driver.wait(), WAIT_NOT_LIVE);
    // A reset and a full setup work.
    assert_eq!(vm.driver.init(BASIC), 0b1111);
    vm.arp();
}

#[test]
fn a_wait_sleeps_no_longer_than_the_drivers_hint() {
    let mut vm = TestVm::new("nxt-hint");
    vm.driver.init(BASIC);
    vm.driver
        .transport
        .lock()
        .unwrap()
        .device_mut()
        .set_wait_timeout(Duration::from_secs(30));
    // The driver's stack has a timer due in 20 ms: it says so in the receive queue's used
    // ring, and the WAIT ends then (nothing arrives), not after the device's 30 s.
    let slot = vm.driver.rx.used + nexus_ring::net::wait_hint_offset(vm.driver.rx.size);
    vm.driver
        .mem
        .write_obj(20u16.to_le(), GuestAddress(slot))
        .unwrap();
    let start = std::time::Instant::now();
    assert_eq!(vm.driver.wait(), 0, "nothing was used");
    let slept = start.elapsed();
    assert!(
        slept < Duration::from_secs(15),
        "the WAIT ignored the driver's 20 ms hint and slept {slept:?}"
    );
    // No hint (0): the device's own timeout, here shortened so the test stays short.
    vm.driver.mem.write_obj(0u16, GuestAddress(slot)).unwrap();
    vm.driver
        .transport
        .lock()
        .unwrap()
        .device_mut()
        .set_wait_timeout(Duration::from_millis(50));
    assert_eq!(vm.driver.wait(), 0);
}
