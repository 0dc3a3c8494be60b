//! Micro-guest for resilience tests: GETs one object over and over, through a backend that
//! may go away and come back.
//!
//! `getloop KEY [SUCCESSES]`: prints `get ok <len>` for the first success, then one line
//! `get failed: <error>` for the first failure of each outage, and exits 0 once it has seen
//! an outage and then `SUCCESSES` (default 3) successful GETs in a row. An error other than
//! "backend unavailable" exits 1; bad arguments exit 2; giving up after too many attempts
//! exits 3.

#![no_std]
#![no_main]

use nexus_guest::{BootInfo, Error, println};

nexus_guest::entry!(main);

/// Attempts before giving up (an outage makes each attempt cheap, so this is generous).
const MAX_ATTEMPTS: u64 = 50_000_000;

fn main(boot: &BootInfo) -> u32 {
    let Some(key) = boot.arg(0) else {
        println!("usage: getloop KEY [SUCCESSES]");
        return 2;
    };
    let wanted: u32 = match boot.arg(1).map(str::parse) {
        None => 3,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            println!("getloop: SUCCESSES must be a number");
            return 2;
        }
    };
    let mut nexus = match nexus_guest::rt::nexus() {
        Ok(nexus) => nexus,
        Err(error) => {
            println!("getloop: {}", error.report());
            return 1;
        }
    };
    let mut outages = 0u32;
    let mut in_outage = false;
    let mut streak = 0u32;
    let mut printed_first = false;
    for _ in 0..MAX_ATTEMPTS {
        match nexus.get(key) {
            Ok(data) => {
                if !printed_first || in_outage {
                    println!("get ok {}", data.len());
                    printed_first = true;
                }
                in_outage = false;
                if outages > 0 {
                    streak += 1;
                    if streak >= wanted {
                        println!("recovered after {outages} outage(s)");
                        return 0;
                    }
                }
            }
            Err(error @ Error::BackendUnavailable(_)) => {
                if !in_outage {
                    println!("get failed: {}", error.report());
                    outages += 1;
                    in_outage = true;
                }
                streak = 0;
            }
            Err(error) => {
                println!("getloop: {}", error.report());
                return 1;
            }
        }
    }
    println!("getloop: gave up after {MAX_ATTEMPTS} attempts");
    3
}
