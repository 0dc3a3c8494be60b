//! Micro-guest: greets, then prints each argument on its own line as `arg[i] = <text>`.
//! Collects the arguments on the heap first, to exercise the allocator.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use nexus_guest::{BootInfo, println};

nexus_guest::entry!(main);

fn main(boot: &BootInfo) -> u32 {
    println!("Hello from a Nexus micro-guest!");
    let args: Vec<String> = boot.args().map(String::from).collect();
    for (i, arg) in args.iter().enumerate() {
        println!("arg[{i}] = {arg}");
    }
    0
}
