//! Micro-guest function: the `n`-th Fibonacci number, by naive recursion.
//!
//! Runs only as a function (its runtime loop): the input is a decimal `n` (surrounding
//! whitespace ignored), the result `fib(<n>) = <value>\n`. The work doubles with every
//! step of `n` (fib(30) takes milliseconds, fib(60) hours), which makes it the example of
//! a function that a node must stop at its timeout. An input that is not a number below 94
//! (the largest whose value fits a `u64`) completes the invocation with an error.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../function.rs"]
mod function;

use alloc::format;
use alloc::string::String;

use nexus_guest::{BootInfo, WindowBuf};

use function::{Client, Failure};

nexus_guest::entry!(main);

/// Largest `n` whose Fibonacci number fits a `u64`.
const MAX_N: u32 = 93;

fn main(boot: &BootInfo) -> u32 {
    function::run(boot, "fibonacci", fibonacci)
}

/// fib(n), the slow way on purpose.
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1).wrapping_add(fib(n - 2))
    }
}

fn fibonacci(nexus: &Client, input: WindowBuf) -> Result<(WindowBuf, String), Failure> {
    let n = core::str::from_utf8(&input)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| n <= MAX_N)
        .ok_or(Failure::Function(
            "the input must be a whole number from 0 to 93",
        ))?;
    drop(input);
    let value = fib(n);
    let output = nexus.copy_to_window(format!("fib({n}) = {value}\n").as_bytes())?;
    Ok((output, format!("fib({n}) = {value}")))
}
