//! Micro-guest for the I/O benchmark (`benches/io.rs`): times GETs and PUTs from inside the
//! VM with the time-stamp counter, and parks a VM on the backend.
//!
//! - `iobench get KEY SIZE ITERS`: reads the `SIZE`-byte object `KEY` into one reused window
//!   buffer (`get_into`), once as a warm-up, then `ITERS` times, each timed with `rdtsc`.
//! - `iobench put KEY SIZE ITERS`: fills a `SIZE`-byte window buffer once, then PUTs it to `KEY`
//!   (`put_buf`, synchronous, zero copy in the guest), once as a warm-up, then `ITERS` times.
//! - `iobench rdtsc N`: executes `rdtsc` `N` times (to check that it does not exit the VM).
//! - `iobench park KEY ROUNDS`: one GET of `KEY` and one PUT of `KEY.copy`, prints `parked`,
//!   then waits for an invocation `ROUNDS` times (`NEXT` with a 1 s timeout each): an attached,
//!   idle VM.
//!
//! `get` and `put` print one line, in cycles of the TSC (the host converts them):
//! `get <size> iters=<n> cycles_median=<c> cycles_min=<c> cycles_max=<c> tsc_begin=<t>
//! tsc_end=<t> submitted=<n> notifies=<n> wait_reads=<n> polled=<n>`, where the driver
//! counters cover the timed requests only. Exit code 0; 1 on an error (printed); 2 for bad
//! arguments.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use nexus_guest::mmio::MmioRegisters;
use nexus_guest::{BootInfo, Error, Nexus, println};

nexus_guest::entry!(main);

/// Exit code after an error.
const EXIT_ERROR: u32 = 1;
/// Exit code for bad arguments.
const EXIT_USAGE: u32 = 2;

const USAGE: &str =
    "usage: iobench get KEY SIZE ITERS | put KEY SIZE ITERS | rdtsc N | park KEY ROUNDS";

/// The time-stamp counter. `rdtsc` is allowed at CPL 3 unless the kernel sets CR4.TSD.
fn tsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn main(boot: &BootInfo) -> u32 {
    let tsc_begin = tsc();
    let args: Vec<&str> = boot.args().collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match (args.first().copied(), args.len()) {
        (Some("rdtsc"), 2) => {
            let Some(n) = number(1) else {
                println!("{USAGE}");
                return EXIT_USAGE;
            };
            let mut sum = 0u64;
            let start = tsc();
            for _ in 0..n {
                sum = sum.wrapping_add(tsc());
            }
            let cycles = tsc() - start;
            println!("rdtsc n={n} cycles={cycles} sum={}", sum & 1);
            0
        }
        (Some(op @ ("get" | "put")), 4) => {
            let (Some(size), Some(iters)) = (number(2), number(3)) else {
                println!("{USAGE}");
                return EXIT_USAGE;
            };
            match timed(op, args[1], size as usize, iters, tsc_begin) {
                Ok(()) => 0,
                Err(error) => {
                    println!("iobench: {op} {}: {}", args[1], error.report());
                    EXIT_ERROR
                }
            }
        }
        (Some("park"), 3) => {
            let Some(rounds) = number(2) else {
                println!("{USAGE}");
                return EXIT_USAGE;
            };
            match park(args[1], rounds) {
                Ok(()) => 0,
                Err(error) => {
                    println!("iobench: park: {}", error.report());
                    EXIT_ERROR
                }
            }
        }
        _ => {
            println!("{USAGE}");
            EXIT_USAGE
        }
    }
}

fn client() -> Result<Nexus<MmioRegisters>, Error> {
    nexus_guest::rt::nexus()
}

/// One warm-up request, then `iters` timed ones; prints the summary line.
fn timed(op: &str, key: &str, size: usize, iters: u64, tsc_begin: u64) -> Result<(), Error> {
    let mut nexus = client()?;
    let mut buf = nexus.alloc(size.max(1))?;
    let get = op == "get";
    if !get {
        // A recognisable pattern, written once: every PUT sends these bytes.
        buf.set_len(size);
        for (i, byte) in buf.as_mut_slice().iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
    }
    let mut one = |nexus: &mut Nexus<MmioRegisters>| -> Result<(), Error> {
        if get {
            let total = nexus.get_into(key, 0, &mut buf)?;
            if total != size as u64 || buf.len() != size {
                return Err(Error::UnexpectedReply(
                    "the object does not have SIZE bytes",
                ));
            }
            Ok(())
        } else {
            nexus.put_buf(key, &buf)
        }
    };
    one(&mut nexus)?;
    let before = nexus.device().stats();
    let mut cycles = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let start = tsc();
        one(&mut nexus)?;
        cycles.push(tsc() - start);
    }
    let after = nexus.device().stats();
    let tsc_end = tsc();
    cycles.sort_unstable();
    let pick = |i: usize| cycles.get(i).copied().unwrap_or(0);
    println!(
        "{op} {size} iters={iters} cycles_median={} cycles_min={} cycles_max={} tsc_begin={tsc_begin} tsc_end={tsc_end} submitted={} notifies={} wait_reads={} polled={}",
        pick(cycles.len() / 2),
        pick(0),
        pick(cycles.len().saturating_sub(1)),
        after.submitted - before.submitted,
        after.notifies - before.notifies,
        after.wait_reads - before.wait_reads,
        after.polled - before.polled,
    );
    Ok(())
}

/// Attaches for real (a GET and a PUT), then idles in `NEXT` long-polls.
fn park(key: &str, rounds: u64) -> Result<(), Error> {
    let mut nexus = client()?;
    let data = nexus.get(key)?;
    let copy = alloc::format!("{key}.copy");
    nexus.put_buf(&copy, &data)?;
    drop(data);
    println!("parked");
    for _ in 0..rounds {
        match nexus.next_invocation_timeout(1000) {
            Ok(invocation) => {
                nexus.complete(invocation.number, Ok(b""))?;
            }
            Err(Error::Timeout(_)) => {}
            Err(error) => return Err(error),
        }
    }
    println!("unparked");
    Ok(())
}
