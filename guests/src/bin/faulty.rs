//! Test micro-guest: a function that fails in the ways a node must survive.
//!
//! In its runtime loop (no arguments), the input decides: `crash` reads the unmapped null
//! page (a triple fault: the VMM reports a crash and the VM is gone), `exit` leaves the loop
//! before completing (the guest exits 0 with the invocation in flight); anything else comes
//! back unchanged.

#![no_std]
#![no_main]

use nexus_guest::function::{Client, FunctionError, Invocation, Output};

nexus_guest::function!(faulty);

/// An address in page 0, which the micro-guest ABI guarantees unmapped.
const UNMAPPED: usize = 0x8;

fn faulty(_nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
    match &invocation.input[..] {
        b"crash" => {
            let ptr = core::ptr::with_exposed_provenance::<u64>(UNMAPPED);
            // SAFETY: deliberately not sound: this read must fault, ending the VM. A volatile
            // read keeps the compiler from removing or reasoning about it.
            let value = unsafe { ptr.read_volatile() };
            Err(if value == 0 {
                "read zero from the null page"
            } else {
                "read from the null page"
            }
            .into())
        }
        b"exit" => nexus_guest::rt::exit(0),
        _ => Ok(Output::window(invocation.input).with_summary("echoed")),
    }
}
