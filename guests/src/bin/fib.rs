//! Micro-guest: prints `fib(<n>) = <value>` for its first argument `n` (default 30).
//!
//! Exit codes: 0 on success; 2 if the argument is not a number or fib(n) does not fit a
//! `u64` (n > 93).

#![no_std]
#![no_main]

use nexus_guest::{BootInfo, println};

nexus_guest::entry!(main);

/// Exit code for a bad argument.
const EXIT_USAGE: u32 = 2;

/// Default `n` when no argument is given.
const DEFAULT_N: u32 = 30;

fn main(boot: &BootInfo) -> u32 {
    let n = match boot.arg(0) {
        None => DEFAULT_N,
        Some(arg) => match arg.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                println!("fib: expected a non-negative integer, got {arg:?}");
                return EXIT_USAGE;
            }
        },
    };
    match fib(n) {
        Some(value) => {
            println!("fib({n}) = {value}");
            0
        }
        None => {
            println!("fib: fib({n}) does not fit in a u64 (n must be at most 93)");
            EXIT_USAGE
        }
    }
}

/// The `n`th Fibonacci number (fib(0) = 0, fib(1) = 1), computed iteratively; `None` if it
/// overflows a `u64`.
fn fib(n: u32) -> Option<u64> {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        let next = a.checked_add(b)?;
        a = b;
        b = next;
    }
    Some(a)
}
