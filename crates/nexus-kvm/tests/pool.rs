// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vCPUs on a `VcpuPool`: hand-assembled micro-guests that read a device register which
//! parks them until the test signals an eventfd.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_kvm::layout::{MMIO_DEVICE_SIZE, MMIO_START};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::park::{self, ParkRequest, Readiness, WaitMode};
use nexus_kvm::pool::{PoolConfig, VcpuPool};
use nexus_kvm::serial::{Console, ConsoleBuffer};
use nexus_kvm::{BusAction, BusDevice, BusKind, Vcpu, VcpuHandle, VcpuStop, Vm};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EFD_SEMAPHORE, EventFd};

mod common;
use common::elf;

/// Reads the 32-bit register at `MMIO_START` `reads` times and exits with the sum.
fn summing_guest(reads: u32) -> Vec<u8> {
    let mut code = vec![0x31, 0xdb]; // xor ebx, ebx
    code.push(0xb9); // mov ecx, reads
    code.extend_from_slice(&reads.to_le_bytes());
    code.push(0xbe); // mov esi, MMIO_START
    code.extend_from_slice(&(MMIO_START as u32).to_le_bytes());
    // loop: mov eax, [rsi] ; add ebx, eax ; dec ecx ; jnz loop
    code.extend_from_slice(&[0x8b, 0x06, 0x01, 0xc3, 0xff, 0xc9, 0x75, 0xf8]);
    // mov eax, ebx ; out 0xf4, eax
    code.extend_from_slice(&[0x89, 0xd8, 0xe7, 0xf4]);
    code
}

/// A register that answers once its eventfd has been signalled (one read per signal: the
/// values 1, 2, 3, …), parking the vCPU meanwhile; 100 if its timeout passes first.
struct Gate {
    signal: EventFd,
    given: u32,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    /// Reads answered at once because the vCPU was being stopped.
    answered_now: Arc<AtomicU32>,
}

impl BusDevice for Gate {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let value = loop {
            if self.signal.read().is_ok() {
                self.deadline = None;
                self.given += 1;
                break self.given;
            }
            match park::wait_mode() {
                WaitMode::Now => {
                    self.deadline = None;
                    self.answered_now.fetch_add(1, Ordering::SeqCst);
                    break u32::MAX;
                }
                WaitMode::Park => {
                    let deadline = self
                        .timeout
                        .map(|t| *self.deadline.get_or_insert_with(|| Instant::now() + t));
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        self.deadline = None;
                        break 100;
                    }
                    park::park(ParkRequest {
                        fds: vec![(
                            std::os::fd::AsRawFd::as_raw_fd(&self.signal),
                            Readiness::Readable,
                        )],
                        deadline,
                    });
                    return;
                }
                WaitMode::Block => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> BusAction {
        BusAction::Continue
    }
}

struct GatedVm {
    _vm: Vm,
    vcpu: Vcpu,
    signal: EventFd,
    answered_now: Arc<AtomicU32>,
}

fn gated_vm(code: &[u8], timeout: Option<Duration>) -> GatedVm {
    let config = MicroVmConfig {
        memory: MemoryConfig {
            ram_size: 4 << 20,
            window_size: 0,
        },
        args: vec![],
        device: None,
        net_device: None,
        console: Console::new(ConsoleBuffer::default()),
    };
    let micro = MicroVm::new(&elf(code), config).unwrap();
    let signal = EventFd::new(EFD_NONBLOCK | EFD_SEMAPHORE).unwrap();
    let answered_now = Arc::new(AtomicU32::new(0));
    let gate = Gate {
        signal: signal.try_clone().unwrap(),
        given: 0,
        timeout,
        deadline: None,
        answered_now: Arc::clone(&answered_now),
    };
    micro
        .vm()
        .add_device(
            BusKind::Mmio,
            Arc::new(Mutex::new(gate)),
            MMIO_START,
            MMIO_DEVICE_SIZE,
        )
        .unwrap();
    let (vm, vcpu, _) = micro.into_parts();
    GatedVm {
        _vm: vm,
        vcpu,
        signal,
        answered_now,
    }
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn exit_code(handle: VcpuHandle) -> u32 {
    match handle.join().unwrap().1 {
        Ok(VcpuStop::Exit(code)) => code,
        other => panic!("the guest did not exit: {other:?}"),
    }
}

#[test]
fn parked_vcpus_hold_no_thread_and_each_wakes_on_its_own_signal() {
    const VMS: usize = 24;
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-a".into(),
        spare_workers: 1,
        idle_retire: Duration::from_millis(50),
        ..PoolConfig::default()
    })
    .unwrap();
    let mut vms = Vec::new();
    for _ in 0..VMS {
        let vm = gated_vm(&summing_guest(3), None);
        let signal = vm.signal.try_clone().unwrap();
        let handle = pool.spawn(vm.vcpu, |_| {}).unwrap();
        vms.push((vm._vm, signal, handle));
    }
    until("every vCPU is parked", || pool.stats().parked == VMS);
    until("the workers beyond the spare have ended", || {
        pool.stats().workers <= 1
    });
    assert!(
        threads_named("pk-a") <= 2,
        "{VMS} parked vCPUs keep {} pool threads (the epoll thread and one spare expected)",
        threads_named("pk-a")
    );
    assert_eq!(pool.stats().vcpus, VMS);

    // Wake them one read at a time, in an order unrelated to how they parked.
    for round in 0..3 {
        for (i, (_, signal, _)) in vms.iter().enumerate().rev() {
            if (i + round) % 2 == 0 {
                signal.write(1).unwrap();
            }
        }
        for (i, (_, signal, _)) in vms.iter().enumerate() {
            if (i + round) % 2 == 1 {
                signal.write(1).unwrap();
            }
        }
    }
    for (_vm, _, handle) in vms {
        assert_eq!(exit_code(handle), 1 + 2 + 3);
    }
    until("the pool holds no vCPU", || pool.stats().vcpus == 0);
}

#[test]
fn a_deadline_repeats_the_read_without_a_signal() {
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-b".into(),
        ..PoolConfig::default()
    })
    .unwrap();
    let vm = gated_vm(&summing_guest(2), Some(Duration::from_millis(20)));
    let handle = pool.spawn(vm.vcpu, |_| {}).unwrap();
    assert_eq!(exit_code(handle), 200, "both reads timed out (100 each)");
}

#[test]
fn stopping_a_parked_vcpu_has_its_device_answer_at_once() {
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-c".into(),
        ..PoolConfig::default()
    })
    .unwrap();
    let vm = gated_vm(&summing_guest(1), None);
    let answered_now = Arc::clone(&vm.answered_now);
    let (tell, told) = std::sync::mpsc::channel();
    let handle = pool
        .spawn(vm.vcpu, move |result| {
            tell.send(format!("{result:?}")).unwrap();
        })
        .unwrap();
    until("the vCPU is parked", || pool.stats().parked == 1);
    assert!(!handle.is_finished());
    let (mut vcpu, result) = handle.stop().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Stopped);
    assert_eq!(answered_now.load(Ordering::SeqCst), 1);
    assert_eq!(told.recv().unwrap(), "Ok(Stopped)", "on_exit saw the end");
    // The answered read is KVM's to complete; the vCPU is whole and can be resumed on its
    // own thread, where the guest exits with the value the device gave (u32::MAX).
    vcpu.stop_flag().store(false, Ordering::Release);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Exit(u32::MAX));
    assert_eq!(pool.stats().vcpus, 0);
}

#[test]
fn a_spinning_guest_holds_its_worker_and_the_others_still_run() {
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-d".into(),
        spare_workers: 0,
        idle_retire: Duration::from_millis(20),
        ..PoolConfig::default()
    })
    .unwrap();
    let spinner = gated_vm(&[0xeb, 0xfe], None); // jmp $
    let spinning = pool.spawn(spinner.vcpu, |_| {}).unwrap();
    let waiter = gated_vm(&summing_guest(1), None);
    let signal = waiter.signal.try_clone().unwrap();
    let waiting = pool.spawn(waiter.vcpu, |_| {}).unwrap();
    until("the second vCPU is parked", || pool.stats().parked == 1);
    signal.write(1).unwrap();
    assert_eq!(exit_code(waiting), 1);
    assert!(!spinning.is_finished());
    let (_, result) = spinning.stop().unwrap();
    assert_eq!(result.unwrap(), VcpuStop::Stopped);
}

#[test]
fn the_pools_threads_end_with_it() {
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-e".into(),
        ..PoolConfig::default()
    })
    .unwrap();
    let vm = gated_vm(&summing_guest(1), None);
    let signal = vm.signal.try_clone().unwrap();
    let handle = pool.spawn(vm.vcpu, |_| {}).unwrap();
    until("the vCPU is parked", || pool.stats().parked == 1);
    assert!(threads_named("pk-e") >= 1);
    // The pool's last clone goes first: its threads stay while a vCPU runs on it.
    drop(pool);
    signal.write(1).unwrap();
    assert_eq!(exit_code(handle), 1);
    until("the pool's threads have ended", || {
        threads_named("pk-e") == 0
    });
}

/// A register whose read panics (a device's exit handler with a bug).
struct Panicking;

impl BusDevice for Panicking {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {
        panic!("test: the device's read panics");
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> BusAction {
        BusAction::Continue
    }
}

/// A micro-VM whose register at `MMIO_START` panics when read.
fn panicking_vm(code: &[u8]) -> (Vm, Vcpu) {
    let config = MicroVmConfig {
        memory: MemoryConfig {
            ram_size: 4 << 20,
            window_size: 0,
        },
        args: vec![],
        device: None,
        net_device: None,
        console: Console::new(ConsoleBuffer::default()),
    };
    let micro = MicroVm::new(&elf(code), config).unwrap();
    micro
        .vm()
        .add_device(
            BusKind::Mmio,
            Arc::new(Mutex::new(Panicking)),
            MMIO_START,
            MMIO_DEVICE_SIZE,
        )
        .unwrap();
    let (vm, vcpu, _) = micro.into_parts();
    (vm, vcpu)
}

#[test]
fn a_panicking_device_fails_its_vcpu_and_the_pool_runs_the_others() {
    let pool = VcpuPool::new(PoolConfig {
        name: "pk-f".into(),
        spare_workers: 1,
        ..PoolConfig::default()
    })
    .unwrap();
    // A neighbour parked before the panic, woken after it.
    let waiter = gated_vm(&summing_guest(2), None);
    let signal = waiter.signal.try_clone().unwrap();
    let waiting = pool.spawn(waiter.vcpu, |_| {}).unwrap();
    until("the neighbour is parked", || pool.stats().parked == 1);

    let (_panicking_vm, vcpu) = panicking_vm(&summing_guest(1));
    let (tell, told) = std::sync::mpsc::channel();
    let failing = pool
        .spawn(vcpu, move |result| {
            tell.send(format!("{result:?}")).unwrap();
        })
        .unwrap();
    let seen = told.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        seen.contains("RunPanicked") && seen.contains("the device's read panics"),
        "on_exit saw {seen}"
    );
    let (_, result) = failing.join().unwrap();
    match result {
        Err(nexus_kvm::Error::RunPanicked(message)) => {
            assert_eq!(message, "test: the device's read panics")
        }
        other => panic!("the panicking vCPU ended with {other:?}"),
    }

    // The neighbour still parks and wakes on the same pool, whose workers went on.
    signal.write(1).unwrap();
    signal.write(1).unwrap();
    assert_eq!(exit_code(waiting), 1 + 2);
    assert!(pool.stats().workers >= 1);

    // And a vCPU spawned after the panic runs to its end.
    let later = gated_vm(&summing_guest(1), None);
    let signal = later.signal.try_clone().unwrap();
    let later_handle = pool.spawn(later.vcpu, |_| {}).unwrap();
    signal.write(1).unwrap();
    assert_eq!(exit_code(later_handle), 1);
    until("the pool holds no vCPU", || pool.stats().vcpus == 0);
}

#[test]
fn a_panicking_device_fails_a_vcpu_on_its_own_thread() {
    let (_vm, vcpu) = panicking_vm(&summing_guest(1));
    let handle = vcpu.spawn("pk-g".into()).unwrap();
    match handle.join().unwrap().1 {
        Err(nexus_kvm::Error::RunPanicked(message)) => {
            assert_eq!(message, "test: the device's read panics")
        }
        other => panic!("the panicking vCPU ended with {other:?}"),
    }
}
