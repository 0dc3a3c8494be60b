// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device on a KVM VM: the boot-info names it, the doorbell is an ioeventfd (a guest
//! write to `QueueNotify` reaches the device with no exit to the VMM), and the device serves
//! the VM's RAM only.

mod common;

use common::driver::{Driver, Q, RAM_SIZE, guest_memory};
use common::frames::{arp_request, parse_arp_reply};
use common::netns::NetNs;
use common::{BASIC, GUEST_IP, GUEST_MAC, HOST_IP, host_tap};
use nexus_kvm::layout::BOOT_INFO_ADDR;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_net::header::NetHeader;
use nexus_net::{NexusNet, NexusNetConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Where the test guest's code goes (above the driver's rings and buffers).
const CODE_ADDR: u64 = 0x80_0000;

/// A minimal static ELF with one RX segment at [`CODE_ADDR`] holding `code`.
fn elf(code: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 120];
    b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&CODE_ADDR.to_le_bytes()); // entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R X
    b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
    b[ph + 16..ph + 24].copy_from_slice(&CODE_ADDR.to_le_bytes());
    b[ph + 24..ph + 32].copy_from_slice(&CODE_ADDR.to_le_bytes());
    b[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b.extend_from_slice(code);
    b
}

/// `mov rax, QueueNotify; mov dword [rax], 1; xor eax, eax; out 0xf4, eax`: one doorbell,
/// then exit 0.
fn ring_the_doorbell() -> Vec<u8> {
    let notify =
        nexus_net::device_info().base + u64::from(nexus_kvm::virtio_mmio::regs::QUEUE_NOTIFY);
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&notify.to_le_bytes());
    code.extend_from_slice(&[0xc7, 0x00, 0x01, 0, 0, 0]);
    code.extend_from_slice(&[0x31, 0xc0, 0xe7, 0xf4]);
    code
}

#[test]
fn a_guest_doorbell_reaches_the_device_without_an_exit() {
    let ns = NetNs::new();
    let console = ConsoleBuffer::default();
    let mut vm = MicroVm::new(
        &elf(&ring_the_doorbell()),
        MicroVmConfig {
            memory: MemoryConfig {
                ram_size: RAM_SIZE,
                window_size: 1 << 20,
            },
            args: vec![],
            device: None,
            net_device: Some(nexus_net::device_info()),
            console: Console::new(console.clone()),
        },
    )
    .expect("a micro-VM (this test needs /dev/kvm)");
    let guest = vm.vm().memory().guest();
    let net_device_base: u64 = guest.read_obj(GuestAddress(BOOT_INFO_ADDR + 120)).unwrap();
    assert_eq!(net_device_base, 0xE000_1000);

    // The device serves the VM's RAM, without the window.
    let ram = nexus_net::guest_ram(vm.vm().memory()).unwrap();
    assert_eq!(ram.num_regions(), 1);
    assert!(!ram.address_in_range(GuestAddress(nexus_kvm::layout::WINDOW_START)));
    // A device over other memory is refused.
    let other = NexusNet::new(NexusNetConfig {
        tap: host_tap(&ns, "nxt-kvm-other"),
        mac: GUEST_MAC,
        memory: guest_memory(),
    })
    .unwrap();
    assert!(matches!(
        nexus_net::attach(vm.vm(), other),
        Err(nexus_net::Error::MemoryMismatch)
    ));
    // Its tap went with it.
    assert!(!ns.ip(&["-br", "link"]).contains("nxt-kvm-other"));

    let device = NexusNet::new(NexusNetConfig {
        tap: host_tap(&ns, "nxt-kvm"),
        mac: GUEST_MAC,
        memory: ram.clone(),
    })
    .unwrap();
    let attached = nexus_net::attach(vm.vm(), device).expect("attached");
    assert_eq!(attached.info, nexus_net::device_info());
    assert_eq!(attached.info.size, 0x1000);

    // The driver's side of the set-up, done from here; the guest only rings.
    let mut driver = Driver::new(attached.transport.clone(), ram);
    assert_eq!(driver.init(BASIC), 0b1111);
    let request = arp_request(GUEST_MAC, GUEST_IP, HOST_IP);
    // Made available, no doorbell yet: the guest rings it.
    let slot_base = common::driver::TX_BUFFERS;
    driver
        .mem
        .write_slice(&NetHeader::default().to_bytes(), GuestAddress(slot_base))
        .unwrap();
    driver
        .mem
        .write_slice(&request, GuestAddress(slot_base + 16))
        .unwrap();
    driver.write_desc(Q::Tx, 0, slot_base, 12, common::driver::F_NEXT, 1);
    driver.write_desc(Q::Tx, 1, slot_base + 16, request.len() as u32, 0, 0);
    driver.publish(Q::Tx, 0);
    assert_eq!(attached.stats.snapshot().tx_frames, 0);

    assert_eq!(vm.run().expect("the guest exits"), 0);
    let exits = vm.exit_counters();
    assert_eq!(
        exits.mmio_write, 0,
        "the doorbell never left KVM: {exits:?}"
    );
    assert_eq!(exits.mmio_read, 0);

    let reply = driver.recv_matching("the ARP reply", |r| parse_arp_reply(&r.frame));
    assert_eq!(reply.1, HOST_IP);
    assert_eq!(attached.stats.snapshot().tx_frames, 1);
}
