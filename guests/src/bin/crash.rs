//! Micro-guest: reads from an address the ABI leaves unmapped (the null page), which must
//! fault; with no IDT the fault becomes a triple fault, which the VMM reports as a crash.
//! If the read ever returns, it exits with 3.

#![no_std]
#![no_main]

use nexus_guest::{BootInfo, println};

nexus_guest::entry!(main);

/// An address in page 0, which the micro-guest ABI guarantees unmapped.
const UNMAPPED: usize = 0x8;

/// Exit code if the read unexpectedly succeeds.
const EXIT_NO_FAULT: u32 = 3;

fn main(_boot: &BootInfo) -> u32 {
    println!(
        "crash: reading a u64 at unmapped address {UNMAPPED:#x}; the VMM should report a crash"
    );
    let ptr = core::ptr::with_exposed_provenance::<u64>(UNMAPPED);
    // SAFETY: deliberately not sound: this read must fault, ending the VM. A volatile read
    // keeps the compiler from removing or reasoning about it.
    let value = unsafe { ptr.read_volatile() };
    println!("crash: read {value:#x} from an unmapped address without a fault");
    EXIT_NO_FAULT
}
