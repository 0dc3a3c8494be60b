//! The `fibonacci` function, written once against [`ObjectIo`]: the `n`-th Fibonacci
//! number, by naive recursion.
//!
//! The input is a decimal `n` (surrounding whitespace ignored), the result
//! `fib(<n>) = <value>\n`. The work doubles with every step of `n` (fib(30) takes
//! milliseconds, fib(60) hours), which makes it the example of a function that a node must
//! stop at its timeout. An input that is not a number below 94 (the largest whose value fits
//! a `u64`) fails the invocation.

use alloc::format;

use nexus_guest::function::{FunctionError, Invocation, ObjectIo, Output};

/// Largest `n` whose Fibonacci number fits a `u64`.
const MAX_N: u32 = 93;

/// fib(n), the slow way on purpose.
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1).wrapping_add(fib(n - 2))
    }
}

/// The handler.
pub fn fibonacci<Io: ObjectIo>(
    _io: &mut Io,
    invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    let n = core::str::from_utf8(&invocation.input)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| n <= MAX_N)
        .ok_or("the input must be a whole number from 0 to 93")?;
    drop(invocation);
    let value = fib(n);
    Ok(Output::from(format!("fib({n}) = {value}\n")).with_summary(format!("fib({n}) = {value}")))
}
