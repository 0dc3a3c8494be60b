//! Micro-VM start-up: time from VM creation to `hello`'s exit, the VM exits one run costs,
//! and the VMM's resident memory beyond guest memory.
//!
//! `cargo bench --bench micro_vm` — the counts and memory figures are printed after
//! criterion's timing report.

use std::time::Instant;

use criterion::{Criterion, criterion_group};
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::Console;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

fn hello() -> Vec<u8> {
    let path = nexus::guests::resolve("hello").expect("the hello guest builds");
    std::fs::read(path).unwrap()
}

fn config(args: &[&str]) -> MicroVmConfig {
    MicroVmConfig {
        memory: MemoryConfig {
            ram_size: 128 << 20,
            window_size: 0,
        },
        args: args.iter().map(|s| s.to_string()).collect(),
        device: None,
        net_device: None,
        console: Console::sink(),
    }
}

fn boot_to_exit(c: &mut Criterion) {
    let elf = hello();
    let mut group = c.benchmark_group("micro_vm");
    group.sample_size(50);
    group.bench_function("create_to_hello_exit", |b| {
        b.iter(|| {
            let mut vm = MicroVm::new(&elf, config(&["bench"])).unwrap();
            assert_eq!(vm.run().unwrap(), 0);
        })
    });
    group.bench_function("create_only", |b| {
        b.iter(|| MicroVm::new(&elf, config(&["bench"])).unwrap())
    });
    group.finish();
}

/// Resident kB of the whole process, and of the mapping that starts at `addr`.
fn rss_kb(mapping_start: Option<usize>) -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let total = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let mut mapped = 0;
    if let Some(start) = mapping_start {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        for line in smaps.lines() {
            let mapping_lo = line
                .split_once(' ')
                .and_then(|(range, _)| range.split_once('-'))
                .and_then(|(lo, _)| usize::from_str_radix(lo, 16).ok());
            if let Some(lo) = mapping_lo {
                in_mapping = lo == start;
            } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| in_mapping) {
                mapped = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            }
        }
    }
    (total, mapped)
}

fn counts_and_memory() {
    let elf = hello();
    // Warm up code paths so that the first VM's one-time costs do not count.
    MicroVm::new(&elf, config(&[])).unwrap().run().unwrap();
    let mut runs = Vec::new();
    for _ in 0..21 {
        let (before, _) = rss_kb(None);
        let t = Instant::now();
        let mut vm = MicroVm::new(&elf, config(&["a", "b"])).unwrap();
        let stats = vm.vcpu().stats().unwrap();
        let k0 = stats.read("exits").unwrap().unwrap_or(0);
        assert_eq!(vm.run().unwrap(), 0);
        let elapsed = t.elapsed();
        let kvm_exits = stats.read("exits").unwrap().unwrap_or(0) - k0;
        let ram = vm.vm().memory().ram_regions().next().unwrap();
        let host = ram
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap() as usize;
        let (after, guest_rss) = rss_kb(Some(host));
        let _ = vm.vm().memory().guest().num_regions();
        runs.push((
            elapsed,
            vm.exit_counters(),
            kvm_exits,
            after - before,
            guest_rss,
            ram.len(),
        ));
    }
    runs.sort_by_key(|r| r.0);
    let median = &runs[runs.len() / 2];
    let mut overhead: Vec<i64> = runs.iter().map(|r| r.3 as i64 - r.4 as i64).collect();
    overhead.sort();
    println!(
        "\nmicro_vm: hello with two arguments, 128 MiB guest, median of {} runs",
        runs.len()
    );
    println!(
        "  create → exit           {:.3} ms",
        median.0.as_secs_f64() * 1e3
    );
    println!(
        "  user-space exits        {} (port out {}, port in {}, mmio {})",
        median.1.total(),
        median.1.port_write,
        median.1.port_read,
        median.1.mmio_read + median.1.mmio_write
    );
    println!("  KVM exits (binary stats) {}", median.2);
    println!(
        "  guest RAM resident      {} KiB of {} MiB",
        median.4,
        median.5 >> 20
    );
    println!(
        "  VMM RSS beyond guest    {} KiB (process RSS growth minus resident guest RAM)",
        overhead[overhead.len() / 2]
    );
}

criterion_group!(benches, boot_to_exit);

fn main() {
    benches();
    counts_and_memory();
    Criterion::default().configure_from_args().final_summary();
}
