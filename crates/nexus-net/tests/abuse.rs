// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Descriptor abuse is refused: the device shows `DEVICE_NEEDS_RESET`, WAIT returns
//! `0xFFFF_FFFF`, nothing more is served (a guest that keeps ringing costs nothing), and a
//! reset brings the device back.

mod common;

use std::time::Duration;

use common::driver::{Driver, F_INDIRECT, F_NEXT, F_WRITE, Q, RAM_SIZE, TX_BUFFERS};
use common::frames::arp_request;
use common::{BASIC, GUEST_IP, GUEST_MAC, HOST_IP, TestVm, wait_until};
use nexus_kvm::virtio_mmio::status;
use nexus_net::WAIT_NOT_LIVE;

/// Breaks the device with `abuse` (which rings the doorbell or lets a frame come in), checks
/// that it stops, then resets it and checks that it serves again.
fn refused(name: &str, abuse: impl FnOnce(&mut TestVm)) {
    let mut vm = TestVm::new(name);
    assert_eq!(vm.driver.init(BASIC), 0b1111);
    abuse(&mut vm);
    wait_until("DEVICE_NEEDS_RESET", || {
        vm.driver.status() & status::DEVICE_NEEDS_RESET != 0
    });
    assert_eq!(vm.driver.wait(), WAIT_NOT_LIVE);
    let counters = vm.counters();
    assert_eq!(counters.ring_faults, 1);
    assert!(
        !vm.driver.transport.lock().unwrap().device().is_served(),
        "the device stopped serving"
    );
    // More doorbells and frames: nothing is served any more.
    let (rx_used, tx_used) = (vm.driver.used_idx(Q::Rx), vm.driver.used_idx(Q::Tx));
    for _ in 0..10 {
        vm.driver.kick(Q::Tx);
    }
    vm.driver.publish(Q::Tx, 0);
    vm.driver.kick(Q::Tx);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vm.counters(), counters);
    assert_eq!(
        (vm.driver.used_idx(Q::Rx), vm.driver.used_idx(Q::Tx)),
        (rx_used, tx_used)
    );
    // The driver resets and sets up again: served.
    assert_eq!(vm.driver.init(BASIC), 0b1111);
    assert_eq!(vm.driver.wait() & 0xFFFF_0000, 0, "live again");
    vm.arp();
    assert_eq!(vm.counters().ring_faults, 1);
}

/// A transmit chain of `descriptors` `(flags, next)` over the first buffers, at head 0.
fn tx_chain(d: &mut Driver, descriptors: &[(u16, u16)]) {
    for (i, &(flags, next)) in descriptors.iter().enumerate() {
        let addr = TX_BUFFERS + 64 * i as u64;
        d.write_desc(Q::Tx, i as u16, addr, 64, flags, next);
    }
    d.publish(Q::Tx, 0);
    d.kick(Q::Tx);
}

#[test]
fn a_descriptor_loop_is_refused() {
    refused("nxt-loop", |vm| {
        tx_chain(&mut vm.driver, &[(F_NEXT, 1), (F_NEXT, 2), (F_NEXT, 1)]);
    });
}

#[test]
fn an_indirect_descriptor_is_refused() {
    refused("nxt-indir", |vm| {
        tx_chain(&mut vm.driver, &[(F_NEXT, 1), (F_INDIRECT, 0)]);
    });
}

#[test]
fn a_chain_longer_than_16_descriptors_is_refused() {
    refused("nxt-long", |vm| {
        let chain: Vec<(u16, u16)> = (1..=16)
            .map(|next| (F_NEXT, next))
            .chain([(0, 0)])
            .collect();
        assert_eq!(chain.len(), 17);
        tx_chain(&mut vm.driver, &chain);
    });
    // Sixteen are fine (and the frame, 16 × 64 bytes less the header, goes out).
    let mut vm = TestVm::new("nxt-long16");
    vm.driver.init(BASIC);
    let chain: Vec<(u16, u16)> = (1..=15)
        .map(|next| (F_NEXT, next))
        .chain([(0, 0)])
        .collect();
    tx_chain(&mut vm.driver, &chain);
    wait_until("the frame", || vm.counters().tx_frames == 1);
    assert_eq!(vm.counters().tx_bytes, 16 * 64 - 12);
    assert_eq!(vm.driver.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_head_out_of_range_is_refused() {
    refused("nxt-head", |vm| {
        vm.driver.publish(Q::Tx, 200);
        vm.driver.kick(Q::Tx);
    });
}

#[test]
fn an_available_index_too_far_ahead_is_refused() {
    refused("nxt-ahead", |vm| {
        for _ in 0..40 {
            vm.driver.publish(Q::Tx, 0);
        }
        vm.driver.kick(Q::Tx);
    });
}

#[test]
fn buffers_in_the_wrong_direction_or_outside_ram_are_refused() {
    // A device-writable buffer in a transmit chain.
    refused("nxt-txdir", |vm| {
        tx_chain(&mut vm.driver, &[(F_NEXT, 1), (F_WRITE, 0)]);
    });
    // A transmit buffer past the end of guest RAM.
    refused("nxt-txram", |vm| {
        vm.driver.write_desc(Q::Tx, 0, RAM_SIZE - 8, 64, 0, 0);
        vm.driver.publish(Q::Tx, 0);
        vm.driver.kick(Q::Tx);
    });
    // A device-readable buffer in a receive chain, found when a frame comes in.
    refused("nxt-rxdir", |vm| {
        vm.driver.init_with(BASIC, 0);
        vm.driver.write_desc(Q::Rx, 0, 0x10_0000, 2048, 0, 0);
        vm.driver.publish(Q::Rx, 0);
        vm.driver
            .send_plain(&arp_request(GUEST_MAC, GUEST_IP, HOST_IP));
    });
}
