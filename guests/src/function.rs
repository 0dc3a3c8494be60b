//! What the function micro-guests (wordcount, compress, aes) share: the two ways they run.
//!
//! - With arguments `INPUT_KEY OUTPUT_KEY`: GET the input, transform it, PUT the output, print
//!   the summary line, exit 0 (non-zero after printing the error).
//! - Without arguments: the runtime loop, forever — `next_invocation()` (the input arrives in
//!   the window with the invocation context), transform, `complete()` with the output as the
//!   result, inline. The invocation context carries no output key (protocol version 1), so
//!   the node stores the result if it wants it kept. A failed transform completes the
//!   invocation with an error document instead. A request id `put-behind:KEY` also makes the
//!   function store its result at `KEY` with a write-behind `PUT` before completing (the
//!   backend reports the invocation complete only once that upload is durable).

use alloc::format;
use alloc::string::String;
use core::fmt;

use nexus_guest::mmio::MmioRegisters;
use nexus_guest::{BootInfo, Error, Nexus, Outcome, WindowBuf, println};

/// The guest's client.
pub type Client = Nexus<MmioRegisters>;

/// A function: the input (a window buffer it owns) in, the output (a window buffer) and a
/// one-line summary out.
pub type Transform = fn(&Client, WindowBuf) -> Result<(WindowBuf, String), Failure>;

/// Why a function failed.
#[derive(Debug)]
pub enum Failure {
    /// A nexus-io request failed.
    Nexus(Error),
    /// The function's own work failed.
    // This module is compiled into every function guest; not all of them fail on their own.
    #[allow(dead_code)]
    Function(&'static str),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Nexus(error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Nexus(error) => write!(f, "{}", error.report()),
            Failure::Function(message) => f.write_str(message),
        }
    }
}

/// Exit code after an error.
pub const EXIT_ERROR: u32 = 1;
/// Exit code for bad arguments.
pub const EXIT_USAGE: u32 = 2;

/// A request id starting with this names a key to store the result at, write-behind.
const PUT_BEHIND: &str = "put-behind:";

/// Consecutive failures of `next_invocation` after which the loop gives up.
const MAX_NEXT_FAILURES: u32 = 3;

/// Runs `transform` as the guest's function `name`, per the arguments in `boot`.
pub fn run(boot: &BootInfo, name: &str, transform: Transform) -> u32 {
    let mut nexus = match nexus_guest::rt::nexus() {
        Ok(nexus) => nexus,
        Err(error) => {
            println!("{name}: {}", error.report());
            return EXIT_ERROR;
        }
    };
    match (boot.arg(0), boot.arg(1), boot.argc()) {
        (None, None, 0) => serve(&mut nexus, name, transform),
        (Some(input), Some(output), 2) => match once(&mut nexus, input, output, transform) {
            Ok(summary) => {
                println!("{summary}");
                0
            }
            Err(error) => {
                println!("{name}: {error}");
                EXIT_ERROR
            }
        },
        _ => {
            println!("usage: {name} INPUT_KEY OUTPUT_KEY   (no arguments: the runtime loop)");
            EXIT_USAGE
        }
    }
}

/// GET `input`, transform, PUT `output` (zero copy both ways).
fn once(
    nexus: &mut Client,
    input: &str,
    output: &str,
    transform: Transform,
) -> Result<String, Failure> {
    let data = nexus.get(input)?;
    let (result, summary) = transform(nexus, data)?;
    nexus.put_buf(output, &result)?;
    Ok(summary)
}

/// The runtime loop: NEXT, transform, COMPLETE, forever.
fn serve(nexus: &mut Client, name: &str, transform: Transform) -> u32 {
    let mut failures = 0;
    loop {
        let invocation = match nexus.next_invocation() {
            Ok(invocation) => invocation,
            Err(error) => {
                println!("{name}: next invocation: {}", error.report());
                failures += 1;
                if failures >= MAX_NEXT_FAILURES {
                    return EXIT_ERROR;
                }
                continue;
            }
        };
        failures = 0;
        let number = invocation.number;
        let behind = invocation
            .request_id
            .strip_prefix(PUT_BEHIND)
            .map(String::from);
        let completed = match transform(nexus, invocation.input) {
            Ok((result, summary)) => {
                println!("{summary} (invocation {number})");
                let stored = match &behind {
                    Some(key) => nexus.put_buf_behind(key, &result),
                    None => Ok(()),
                };
                match stored {
                    Ok(()) => nexus.complete_buf(number, Outcome::Success, &result),
                    Err(error) => {
                        let document = format!("{{\"error\":{:?}}}", format!("{}", error.report()));
                        println!("{name}: invocation {number}: {}", error.report());
                        nexus.complete(number, Err(document.as_bytes()))
                    }
                }
            }
            Err(error) => {
                let document = format!("{{\"error\":{:?}}}", format!("{error}"));
                println!("{name}: invocation {number}: {error}");
                nexus.complete(number, Err(document.as_bytes()))
            }
        };
        if let Err(error) = completed {
            println!("{name}: complete {number}: {}", error.report());
        }
    }
}
