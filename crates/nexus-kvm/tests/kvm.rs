//! Tests that run real (hand-assembled) micro-guests on /dev/kvm.

use std::time::{Duration, Instant};

mod common;
use common::elf;

use nexus_kvm::layout::IMAGE_BASE;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_kvm::vcpu::{AccessKind, CrashCause};
use nexus_kvm::{Error, VcpuStop};

fn vm(code: &[u8], out: &ConsoleBuffer) -> MicroVm {
    let config = MicroVmConfig {
        memory: MemoryConfig {
            ram_size: 8 << 20,
            window_size: 1 << 20,
        },
        args: vec![],
        device: None,
        net_device: None,
        console: Console::new(out.clone()),
    };
    MicroVm::new(&elf(code), config).unwrap()
}

// mov eax, imm32 ; out 0xf4, eax
fn exit_with(code: u32) -> Vec<u8> {
    let mut v = vec![0xb8];
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&[0xe7, 0xf4]);
    v
}

#[test]
fn guest_exits_with_its_code_at_cpl3() {
    let out = ConsoleBuffer::default();
    // mov ax, cs ; and eax, 3 (CPL) ; shl eax, 8 ; or eax, 0x2a ; out 0xf4, eax
    let code = [
        0x66, 0x8c, 0xc8, 0x83, 0xe0, 0x03, 0xc1, 0xe0, 0x08, 0x83, 0xc8, 0x2a, 0xe7, 0xf4,
    ];
    let mut vm = vm(&code, &out);
    assert_eq!(vm.run().unwrap(), 0x32a, "exit code carries CPL 3 and 42");
    assert_eq!(vm.exit_counters().port_write, 1);
}

#[test]
fn serial_and_console_write_reach_the_console() {
    let out = ConsoleBuffer::default();
    let mut code = vec![];
    // mov dx, 0x3f8 ; mov al, 'h' ; out dx, al ; mov al, 'i' ; out dx, al
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee]);
    // RDI points at the boot info; its first 8 bytes are the magic "NEXUSBI1".
    // Build the record {addr = rdi, len = 8} on the stack and out its address to 0xF5:
    // push 8 ; push rdi ; mov rax, rsp ; out 0xf5, eax
    code.extend_from_slice(&[0x6a, 0x08, 0x57, 0x48, 0x89, 0xe0, 0xe7, 0xf5]);
    code.extend_from_slice(&exit_with(0));
    let mut vm = vm(&code, &out);
    assert_eq!(vm.run().unwrap(), 0);
    assert_eq!(out.contents(), b"hiNEXUSBI1");
    let counters = vm.exit_counters();
    assert_eq!(counters.port_write, 4);
}

#[test]
fn null_dereference_is_a_triple_fault_with_rip() {
    let out = ConsoleBuffer::default();
    // nop ; mov rax, [0]
    let code = [0x90, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0];
    let mut vm = vm(&code, &out);
    match vm.run() {
        Err(Error::GuestCrash(report)) => {
            assert_eq!(report.cause, CrashCause::TripleFault);
            assert_eq!(report.regs.rip, IMAGE_BASE + 1, "{report}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn privileged_instruction_crashes() {
    let out = ConsoleBuffer::default();
    // cli ... no: hlt at CPL 3 raises #GP
    let mut vm = vm(&[0xf4], &out);
    assert!(matches!(vm.run(), Err(Error::GuestCrash(_))));
}

#[test]
fn unknown_port_is_an_unexpected_exit() {
    let out = ConsoleBuffer::default();
    // mov al, 1 ; out 0x80, al
    let mut vm = vm(&[0xb0, 0x01, 0xe6, 0x80], &out);
    match vm.run() {
        Err(Error::UnexpectedExit { kind, addr, rip }) => {
            assert_eq!(kind, AccessKind::PortWrite);
            assert_eq!(addr, 0x80);
            assert_eq!(rip, IMAGE_BASE + 4);
        }
        other => panic!("expected an unexpected exit, got {other:?}"),
    }
}

#[test]
fn stop_from_another_thread_ends_a_spinning_guest() {
    let out = ConsoleBuffer::default();
    let vm = vm(&[0xeb, 0xfe], &out); // jmp $
    let (_vm, vcpu, _) = vm.into_parts();
    let handle = vcpu.spawn("vcpu0".into()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!handle.is_finished());
    let start = Instant::now();
    let (vcpu, result) = handle.stop().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Stopped);
    assert!(vcpu.exit_counters().interrupted >= 1);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn binary_stats_count_exits() {
    let out = ConsoleBuffer::default();
    let mut code = vec![];
    for _ in 0..10 {
        code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b'.', 0xee]);
    }
    code.extend_from_slice(&exit_with(0));
    let mut vm = vm(&code, &out);
    let stats = vm.vcpu().stats().unwrap();
    let before = stats.read("exits").unwrap().expect("exits counter");
    assert_eq!(vm.run().unwrap(), 0);
    let after = stats.read("exits").unwrap().unwrap();
    assert!(after - before >= 11, "KVM counted {} exits", after - before);
}

#[test]
fn running_vcpu_stats_open_through_the_handle_until_it_ends() {
    let out = ConsoleBuffer::default();
    // mov dx, 0x3f8 ; mov al, '.' ; 1: out dx, al ; jmp 1b
    let vm = vm(
        &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xeb, 0xfd],
        &out,
    );
    let (_vm, vcpu, _) = vm.into_parts();
    let handle = vcpu.spawn("vcpu-stats".into()).unwrap();
    let first = handle.stats().unwrap().read("exits").unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // A fresh statistics file each time: the counter is the vCPU's, not the file's.
    let second = handle.stats().unwrap().read("exits").unwrap().unwrap();
    assert!(second > first, "exits {first} then {second}");
    // What opening them per invocation costs (reported, not asserted).
    let start = Instant::now();
    for _ in 0..100 {
        handle.stats().unwrap().read("exits").unwrap().unwrap();
    }
    eprintln!(
        "open the vCPU statistics and read `exits`: {:.1} us",
        start.elapsed().as_secs_f64() * 1e6 / 100.0
    );
    let (_vcpu, result) = handle.stop().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Stopped);

    let vm = vm_exiting(&out);
    let (_vm, vcpu, _) = vm.into_parts();
    let handle = vcpu.spawn("vcpu-ended".into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(handle.is_finished());
    assert!(handle.stats().is_err());
    let (_vcpu, result) = handle.join().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Exit(0));
}

fn vm_exiting(out: &ConsoleBuffer) -> MicroVm {
    vm(&exit_with(0), out)
}
