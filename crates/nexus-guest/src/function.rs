// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The function SDK: write a handler, get a micro-guest that serves invocations.
//!
//! A function is one handler, `fn(&mut Client, Invocation) -> Result<impl Into<Output>,
//! impl Into<FunctionError>>`; [`function!`](crate::function!) makes it the guest's entry
//! point. The runtime does the rest:
//!
//! - **The invocation loop** ([`serve`]), when the VM is started without arguments: NEXT
//!   (the input is already in the window when the handler runs), the handler, COMPLETE with
//!   its result — or, if it failed, with the error document `{"error":"<message>"}` — and
//!   NEXT again, for ever. COMPLETE and the following NEXT go to the device together under
//!   one doorbell, and no console line is printed per invocation, so a warm invocation costs
//!   the guest two VM exits: that doorbell and the WAIT read that returns with the next
//!   invocation ([`Nexus::complete_and_next`]) — unless holding the result would move the next
//!   input elsewhere in the window ([`Nexus::shifts_next_input`]): then COMPLETE goes alone,
//!   the result is freed, and NEXT follows. A NEXT that fails is tried again; after
//!   [`MAX_NEXT_FAILURES`] failures in a row the guest exits with [`EXIT_ERROR`].
//! - **The output key.** When the caller asked for the result to be stored
//!   ([`Invocation::output_key`]), the runtime stores it there with a write-behind PUT
//!   straight from the window buffer that holds it (one copy: window → store) and tells the
//!   backend so in COMPLETE, which then does not store it again. The invocation is reported
//!   complete only once that upload is durable; an upload that fails fails the invocation,
//!   naming the object. A PUT the backend refuses at once completes the invocation with an
//!   error document instead.
//! - **Write-behind.** Every write-behind PUT the handler makes is durable before its
//!   invocation is reported complete (the backend's COMPLETE waits for them, unless the
//!   caller asked for asynchronous durability): a handler never needs to FLUSH for that.
//! - **One-shot mode**, when the VM is started with `INPUT_KEY OUTPUT_KEY`: GET the input,
//!   run the handler once, PUT the result (synchronously), FLUSH if the handler wrote
//!   behind, print the result's summary, exit 0 — or print the error and exit
//!   [`EXIT_ERROR`]. Handy to try a function with `nexus-vmm run`.
//! - **`--verbose`**, as the only argument: the loop, printing one summary line per
//!   invocation (one more VM exit each). Errors are always printed.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! extern crate alloc;
//!
//! use alloc::format;
//! use nexus_guest::function::{Client, FunctionError, Invocation, Output};
//!
//! nexus_guest::function!(hello);
//!
//! fn hello(_nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
//!     let name = core::str::from_utf8(&invocation.input).map_err(|_| "the input is not UTF-8")?;
//!     Ok(format!("Hello, {}!\n", name.trim()).into())
//! }
//! ```
//!
//! The loop itself ([`serve`], [`once`]) is generic over the device's
//! [`Registers`], so it runs against a fake device in tests; [`main`] (feature `rt`) is what
//! [`function!`](crate::function!) calls in a micro-guest.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use nexus_ring::Outcome;

use crate::client::{Completion, Nexus};
use crate::error::Error;
use crate::mmio::Registers;

#[cfg(feature = "net")]
pub mod net;

/// What a handler gets and may return, re-exported so that a function needs one `use`.
pub use crate::client::Invocation;
pub use crate::io::{IoBuf, ObjectIo};
pub use crate::window::WindowBuf;

/// The client a function's handler gets in a micro-guest.
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub type Client = Nexus<crate::mmio::MmioRegisters>;

/// Exit code after an error (one-shot mode), or when the loop gives up.
pub const EXIT_ERROR: u32 = 1;
/// Exit code for arguments the runtime does not understand.
pub const EXIT_USAGE: u32 = 2;
/// Failures of NEXT in a row after which the loop gives up.
pub const MAX_NEXT_FAILURES: u32 = 3;

/// What a handler returns: its result, in one of the I/O path's buffers or on the heap, and
/// optionally a one-line summary (printed in one-shot mode, and per invocation with
/// `--verbose`).
///
/// `B` is the path's buffer ([`ObjectIo::Buf`]): a [`WindowBuf`] on the nexus-io path (the
/// default), a `Vec<u8>` on the network path. A result already in a [`WindowBuf`] — the input
/// transformed in place, or a buffer from [`Nexus::alloc`] filled by the handler — goes to
/// COMPLETE (and to the output key) without a copy; bytes on the heap are copied into the
/// window once. On the network path both are the response body as they are.
#[derive(Debug)]
pub struct Output<B = WindowBuf> {
    body: Body<B>,
    summary: Option<String>,
}

#[derive(Debug)]
enum Body<B> {
    Buf(B),
    Heap(Vec<u8>),
}

impl<B> Output<B> {
    /// A result in one of the path's buffers ([`ObjectIo::alloc`], or the input's).
    pub fn buf(buf: B) -> Self {
        Self {
            body: Body::Buf(buf),
            summary: None,
        }
    }

    /// A result on the heap (copied into the window once on the nexus-io path).
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            body: Body::Heap(bytes.into()),
            summary: None,
        }
    }

    /// The same result with a one-line summary.
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// The summary, if the handler gave one.
    pub fn summary(&self) -> Option<&str> {
        self.summary.as_deref()
    }
}

impl<B: IoBuf> Output<B> {
    /// The result's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Buf(buf) => buf,
            Body::Heap(bytes) => bytes,
        }
    }
}

impl Output<WindowBuf> {
    /// A result in a window buffer (zero copy): [`Output::buf`] on the nexus-io path.
    pub fn window(buf: WindowBuf) -> Self {
        Self::buf(buf)
    }

    /// The result in a window buffer (a copy only for heap bytes), and the summary.
    fn into_window<R: Registers>(
        self,
        nexus: &Nexus<R>,
    ) -> Result<(WindowBuf, Option<String>), Error> {
        let buf = match self.body {
            Body::Buf(buf) => buf,
            Body::Heap(bytes) => nexus.copy_to_window(&bytes)?,
        };
        Ok((buf, self.summary))
    }
}

impl Output<Vec<u8>> {
    /// The result's bytes (no copy: both kinds are on the heap), and the summary.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn into_vec(self) -> (Vec<u8>, Option<String>) {
        let bytes = match self.body {
            Body::Buf(bytes) | Body::Heap(bytes) => bytes,
        };
        (bytes, self.summary)
    }
}

impl From<WindowBuf> for Output<WindowBuf> {
    fn from(buf: WindowBuf) -> Self {
        Self::window(buf)
    }
}

impl<B> From<Vec<u8>> for Output<B> {
    fn from(bytes: Vec<u8>) -> Self {
        Self::bytes(bytes)
    }
}

impl<B> From<&[u8]> for Output<B> {
    fn from(bytes: &[u8]) -> Self {
        Self::bytes(bytes)
    }
}

impl<B> From<String> for Output<B> {
    fn from(text: String) -> Self {
        Self::bytes(text.into_bytes())
    }
}

impl<B> From<&str> for Output<B> {
    fn from(text: &str) -> Self {
        Self::bytes(text.as_bytes())
    }
}

/// Why a handler failed: the invocation completes with `{"error":"<this, displayed>"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionError {
    /// A nexus-io request failed (`?` on any [`Nexus`] call converts).
    #[error("{}", .0.report())]
    Io(Error),
    /// The function's own failure.
    #[error("{0}")]
    Failed(String),
}

impl From<Error> for FunctionError {
    fn from(error: Error) -> Self {
        FunctionError::Io(error)
    }
}

impl From<&str> for FunctionError {
    fn from(message: &str) -> Self {
        FunctionError::Failed(String::from(message))
    }
}

impl From<String> for FunctionError {
    fn from(message: String) -> Self {
        FunctionError::Failed(message)
    }
}

/// How the runtime runs: from the boot arguments in a micro-guest, by hand in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The function's name, at the start of console lines.
    pub name: String,
    /// Print a summary line per invocation (an exit each).
    pub verbose: bool,
    /// NEXT failures in a row after which [`serve`] returns [`EXIT_ERROR`].
    pub max_next_failures: u32,
}

impl Options {
    /// Quiet, with [`MAX_NEXT_FAILURES`].
    pub fn new(name: &str) -> Self {
        Self {
            name: String::from(name),
            verbose: false,
            max_next_failures: MAX_NEXT_FAILURES,
        }
    }
}

/// What the boot arguments ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// No arguments (or just `--verbose`): the invocation loop.
    Serve {
        /// `--verbose` was given.
        verbose: bool,
    },
    /// `INPUT_KEY OUTPUT_KEY`: one run over stored objects.
    Once {
        /// The object to read.
        input: &'a str,
        /// Where to store the result.
        output: &'a str,
    },
    /// Anything else.
    Usage,
}

impl<'a> Mode<'a> {
    /// The mode `args` ask for.
    pub fn from_args(args: &[&'a str]) -> Self {
        match args {
            [] => Mode::Serve { verbose: false },
            ["--verbose"] => Mode::Serve { verbose: true },
            [input, output] if !input.starts_with("--") && !output.starts_with("--") => {
                Mode::Once { input, output }
            }
            _ => Mode::Usage,
        }
    }
}

/// A finished invocation, waiting to be reported with the next NEXT.
struct Finished {
    number: u64,
    outcome: Outcome,
    result: Option<WindowBuf>,
    stored: bool,
}

impl Finished {
    fn completion(&self) -> Completion<'_> {
        Completion {
            number: self.number,
            outcome: self.outcome,
            result: self.result.as_ref(),
            stored: self.stored,
        }
    }
}

/// The error document for `message`: `{"error":"<message as a JSON string>"}`.
pub fn error_document(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 12);
    out.push_str("{\"error\":\"");
    for c in message.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out
}

/// Runs `handler` on one invocation; what to report in COMPLETE.
fn handle<R, H, O, E>(
    nexus: &mut Nexus<R>,
    options: &Options,
    console: &mut dyn Write,
    handler: &mut H,
    invocation: Invocation,
) -> Finished
where
    R: Registers,
    H: FnMut(&mut Nexus<R>, Invocation) -> Result<O, E>,
    O: Into<Output>,
    E: Into<FunctionError>,
{
    let number = invocation.number;
    let output_key = invocation.output_key.clone();
    let stored = handler(nexus, invocation)
        .map(Into::<Output>::into)
        .map_err(Into::<FunctionError>::into)
        .and_then(|output| Ok(output.into_window(nexus)?))
        .and_then(|(result, summary)| {
            if let (true, Some(summary)) = (options.verbose, &summary) {
                let _ = writeln!(console, "{summary} (invocation {number})");
            }
            match &output_key {
                Some(key) => match nexus.put_buf_behind(key, &result) {
                    Ok(()) => Ok((result, true)),
                    Err(error) => Err(FunctionError::Failed(format!(
                        "storing the result at {key}: {}",
                        error.report()
                    ))),
                },
                None => Ok((result, false)),
            }
        });
    match stored {
        Ok((result, stored)) => Finished {
            number,
            outcome: Outcome::Success,
            result: Some(result),
            stored,
        },
        Err(error) => {
            let message = format!("{error}");
            let _ = writeln!(console, "{}: invocation {number}: {message}", options.name);
            Finished {
                number,
                outcome: Outcome::Error,
                // Without room for the document the invocation still fails, with an empty one.
                result: nexus
                    .copy_to_window(error_document(&message).as_bytes())
                    .ok(),
                stored: false,
            }
        }
    }
}

/// The invocation loop: NEXT, `handler`, COMPLETE — the COMPLETE together with the next
/// NEXT — until NEXT fails `options.max_next_failures` times in a row; then returns
/// [`EXIT_ERROR`]. Console lines (errors; summaries with `options.verbose`) go to `console`.
///
/// A COMPLETE that fails is printed (when the NEXT beside it returns) and the loop goes on:
/// the backend has failed that invocation or will.
pub fn serve<R, H, O, E>(
    nexus: &mut Nexus<R>,
    options: &Options,
    console: &mut dyn Write,
    mut handler: H,
) -> u32
where
    R: Registers,
    H: FnMut(&mut Nexus<R>, Invocation) -> Result<O, E>,
    O: Into<Output>,
    E: Into<FunctionError>,
{
    let mut failures = 0;
    let mut finished: Option<Finished> = None;
    loop {
        let next = match finished.take() {
            None => nexus.next_invocation(),
            // A result that would push the next input elsewhere in the window (to pages the
            // VM never touched, each a VM exit to map): complete, free it, then NEXT.
            Some(done)
                if done
                    .result
                    .as_ref()
                    .is_some_and(|r| nexus.shifts_next_input(r)) =>
            {
                if let Err(error) = nexus.complete_with(&done.completion()) {
                    let _ = writeln!(
                        console,
                        "{}: complete {}: {}",
                        options.name,
                        done.number,
                        error.report()
                    );
                }
                drop(done);
                nexus.next_invocation()
            }
            Some(done) => {
                let (completed, next) = nexus.complete_and_next(&done.completion());
                if let Err(error) = completed {
                    let _ = writeln!(
                        console,
                        "{}: complete {}: {}",
                        options.name,
                        done.number,
                        error.report()
                    );
                }
                // The NEXT beside the COMPLETE had the window less the result it was still
                // holding: an input too large for that stays queued, and a NEXT alone (the
                // result is freed now) has the whole window.
                if matches!(next, Err(Error::TooLarge { .. })) {
                    continue;
                }
                next
            }
        };
        let invocation = match next {
            Ok(invocation) => invocation,
            Err(error) => {
                let _ = writeln!(
                    console,
                    "{}: next invocation: {}",
                    options.name,
                    error.report()
                );
                failures += 1;
                if failures >= options.max_next_failures {
                    return EXIT_ERROR;
                }
                continue;
            }
        };
        failures = 0;
        finished = Some(handle(nexus, options, console, &mut handler, invocation));
    }
}

/// One-shot mode: GET `input`, run `handler` once (an invocation numbered 0 whose output
/// key is `output`), PUT the result at `output` synchronously, FLUSH if the handler wrote
/// behind, print the summary (or `<name>: <n> bytes stored at <output>`). Returns 0, or
/// [`EXIT_ERROR`] after printing what failed.
pub fn once<R, H, O, E>(
    nexus: &mut Nexus<R>,
    options: &Options,
    console: &mut dyn Write,
    input: &str,
    output: &str,
    mut handler: H,
) -> u32
where
    R: Registers,
    H: FnMut(&mut Nexus<R>, Invocation) -> Result<O, E>,
    O: Into<Output>,
    E: Into<FunctionError>,
{
    let mut run = || -> Result<(usize, Option<String>), FunctionError> {
        let data = nexus.get(input)?;
        let invocation = Invocation {
            number: 0,
            deadline_ms: 0,
            async_durability: false,
            function: options.name.clone(),
            request_id: String::new(),
            output_key: Some(String::from(output)),
            input: data,
        };
        let result: Output = handler(nexus, invocation).map_err(Into::into)?.into();
        let (buf, summary) = result.into_window(nexus)?;
        nexus.put_buf(output, &buf)?;
        if nexus.unflushed_write_behind() > 0 {
            nexus.flush()?;
        }
        Ok((buf.len(), summary))
    };
    report_once(run(), options, output, console)
}

/// What a one-shot run prints — the handler's summary, or how many bytes it stored at
/// `output`, or the error — and the exit code it ends with.
pub(crate) fn report_once(
    result: Result<(usize, Option<String>), FunctionError>,
    options: &Options,
    output: &str,
    console: &mut dyn Write,
) -> u32 {
    match result {
        Ok((len, summary)) => {
            let _ = match summary {
                Some(summary) => writeln!(console, "{summary}"),
                None => writeln!(console, "{}: {len} bytes stored at {output}", options.name),
            };
            0
        }
        Err(error) => {
            let _ = writeln!(console, "{}: {error}", options.name);
            EXIT_ERROR
        }
    }
}

/// The usage lines.
pub(crate) fn usage(options: &Options, console: &mut dyn Write) -> u32 {
    let name = &options.name;
    let _ = writeln!(
        console,
        "usage: {name}                       (serve invocations)"
    );
    let _ = writeln!(
        console,
        "       {name} --verbose             (serve, one line per invocation)"
    );
    let _ = writeln!(
        console,
        "       {name} INPUT_KEY OUTPUT_KEY  (one run over stored objects)"
    );
    EXIT_USAGE
}

/// Runs the function as `args` ask ([`Mode::from_args`]) over `nexus`; the exit code.
pub fn run_with<R, H, O, E>(
    nexus: &mut Nexus<R>,
    name: &str,
    args: &[&str],
    console: &mut dyn Write,
    handler: H,
) -> u32
where
    R: Registers,
    H: FnMut(&mut Nexus<R>, Invocation) -> Result<O, E>,
    O: Into<Output>,
    E: Into<FunctionError>,
{
    let mut options = Options::new(name);
    match Mode::from_args(args) {
        Mode::Serve { verbose } => {
            options.verbose = verbose;
            let code = serve(nexus, &options, console, handler);
            if verbose {
                let _ = writeln!(console, "{name}: {:?}", nexus.device().stats());
            }
            code
        }
        Mode::Once { input, output } => once(nexus, &options, console, input, output, handler),
        Mode::Usage => usage(&options, console),
    }
}

/// The console of a micro-guest, as a [`core::fmt::Write`].
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

#[cfg(all(feature = "rt", target_arch = "x86_64"))]
impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::rt::console::write_fmt(format_args!("{s}"));
        Ok(())
    }
}

/// The body of the entry point [`function!`](crate::function!) defines: brings the device
/// up, then runs `handler` as the boot arguments ask (see the [module](self) docs). `name`
/// starts console lines.
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub fn main<H, O, E>(boot: &crate::BootInfo, name: &str, handler: H) -> u32
where
    H: FnMut(&mut Client, Invocation) -> Result<O, E>,
    O: Into<Output>,
    E: Into<FunctionError>,
{
    let mut console = Console;
    let mut nexus = match crate::rt::nexus() {
        Ok(nexus) => nexus,
        Err(error) => {
            let _ = writeln!(console, "{name}: {}", error.report());
            return EXIT_ERROR;
        }
    };
    let args: Vec<&str> = boot.args().collect();
    run_with(&mut nexus, name, &args, &mut console, handler)
}

/// Defines a micro-guest that runs a function: `function!(handler)`, with `handler` a
/// `fn(&mut Client, Invocation) -> Result<O, E>` where `O: Into<Output>` and
/// `E: Into<FunctionError>`.
///
/// Expands to [`entry!`](crate::entry) (the entry point, panic handler, allocator and C
/// memory functions) with a `main` that calls [`function::main`](crate::function::main): the
/// invocation loop without arguments, one-shot mode with `INPUT_KEY OUTPUT_KEY` (see
/// [`function`](mod@crate::function)). Console lines start with the binary's name. Use it once,
/// in a `#![no_std]`, `#![no_main]` binary linked as a micro-guest.
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
#[macro_export]
macro_rules! function {
    ($handler:path) => {
        $crate::entry!(__nexus_function_main);

        fn __nexus_function_main(boot: &'static $crate::BootInfo) -> u32 {
            let name = match ::core::option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => ::core::env!("CARGO_PKG_NAME"),
            };
            $crate::function::main(boot, name, $handler)
        }
    };
}

/// Defines a micro-guest that runs a function on the network path (features `rt` and
/// `net`): `net_function!(handler)`, with `handler` a
/// `fn(&mut NetClient, Invocation<Vec<u8>>) -> Result<O, E>` where
/// `O: Into<Output<Vec<u8>>>` and `E: Into<FunctionError>` — typically the same generic
/// handler (`fn h<Io: ObjectIo>(&mut Io, Invocation<Io::Buf>) -> …`) that
/// [`function!`](crate::function!) runs on the nexus-io path.
///
/// Expands to [`entry!`](crate::entry) with a `main` that calls
/// [`function::net::main`](crate::function::net::main): the network from the boot arguments,
/// the invocation server on `http.port`, the S3 client as the handler's I/O (see
/// [`function::net`](mod@crate::function::net)). Console lines start with the binary's name.
#[cfg(all(feature = "rt", feature = "net", target_arch = "x86_64"))]
#[macro_export]
macro_rules! net_function {
    ($handler:path) => {
        $crate::entry!(__nexus_net_function_main);

        fn __nexus_net_function_main(boot: &'static $crate::BootInfo) -> u32 {
            let name = match ::core::option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => ::core::env!("CARGO_PKG_NAME"),
            };
            $crate::function::net::main(boot, name, $handler)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, FakeDevice, FakeInvocation};
    use std::string::ToString;

    fn queue(fake: &FakeDevice, number: u64, output_key: Option<&str>, input: &[u8]) {
        fake.state().backend.invocations.push_back(FakeInvocation {
            number,
            function: "shout".to_string(),
            request_id: String::new(),
            output_key: output_key.map(str::to_string),
            input: input.to_vec(),
        });
    }

    /// Upper-cases its input in place; fails on `fail`, on `io` makes a request that fails.
    fn shout(
        nexus: &mut Nexus<FakeDevice>,
        mut invocation: Invocation,
    ) -> Result<Output, FunctionError> {
        match &invocation.input[..] {
            b"fail" => return Err("no \"fail\"\nallowed".into()),
            b"io" => {
                nexus.get("missing")?;
            }
            b"heap" => return Ok(Output::from("from the heap").with_summary("heap")),
            _ => {}
        }
        invocation.input.make_ascii_uppercase();
        let summary = format!("shouted {} bytes", invocation.input.len());
        Ok(Output::window(invocation.input).with_summary(summary))
    }

    #[test]
    fn the_loop_completes_every_invocation_and_stores_results_at_their_keys() {
        let (mut nexus, fake) = fake::nexus();
        queue(&fake, 1, None, b"hello");
        queue(&fake, 2, Some("out/2"), b"world");
        queue(&fake, 3, None, b"fail");
        queue(&fake, 4, None, b"io");
        queue(&fake, 5, Some("out/5"), b"heap");
        let mut console = String::new();
        let options = Options::new("shout");
        // When the queue runs dry the fake answers NEXT with TIMEOUT: three in a row end it.
        let code = serve(&mut nexus, &options, &mut console, shout);
        assert_eq!(code, EXIT_ERROR);
        let s = fake.state();
        assert_eq!(
            s.backend.completed,
            [
                (1, Outcome::Success, b"HELLO".to_vec()),
                (2, Outcome::Success, b"WORLD".to_vec()),
                (
                    3,
                    Outcome::Error,
                    br#"{"error":"no \"fail\"\nallowed"}"#.to_vec()
                ),
                (
                    4,
                    Outcome::Error,
                    br#"{"error":"Not found: no object missing"}"#.to_vec()
                ),
                (5, Outcome::Success, b"from the heap".to_vec()),
            ]
        );
        // Stored write-behind at their keys, and said so.
        assert_eq!(s.backend.write_behind_puts, ["out/2", "out/5"]);
        assert_eq!(s.backend.objects["out/2"], b"WORLD");
        assert_eq!(s.backend.objects["out/5"], b"from the heap");
        assert_eq!(s.backend.stored, [2, 5]);
        // Each COMPLETE went out with the next NEXT: 1 NEXT alone, then 5 pairs (the last
        // NEXT timing out), then two NEXTs alone; plus the two PUTs and the failed GET.
        assert_eq!(s.notifies, 1 + 5 + 2 + 2 + 1);
        // Quiet but for errors.
        assert_eq!(
            console.lines().collect::<Vec<_>>(),
            [
                "shout: invocation 3: no \"fail\"",
                "allowed",
                "shout: invocation 4: Not found: no object missing",
                "shout: next invocation: Timed out: no invocation",
                "shout: next invocation: Timed out: no invocation",
                "shout: next invocation: Timed out: no invocation",
            ]
        );
        drop(s);
        let allocator = nexus.window_allocator();
        assert_eq!(allocator.free_bytes(), allocator.capacity());
    }

    #[test]
    fn an_input_too_large_beside_the_held_result_is_fetched_by_a_next_alone() {
        // A 1 MiB window: a 40 KB result (too small to move the next input) held while the
        // NEXT beside its COMPLETE offers what is left, which a 1000 KB input does not fit.
        let (mut nexus, fake) = fake::nexus();
        queue(&fake, 1, None, &[b'a'; 40_000]);
        queue(&fake, 2, None, &[b'b'; 1_000_000]);
        let mut console = String::new();
        let options = Options {
            max_next_failures: 1,
            ..Options::new("shout")
        };
        assert_eq!(serve(&mut nexus, &options, &mut console, shout), EXIT_ERROR);
        let s = fake.state();
        let completed: Vec<(u64, usize)> = s
            .backend
            .completed
            .iter()
            .map(|(n, _, r)| (*n, r.len()))
            .collect();
        assert_eq!(completed, [(1, 40_000), (2, 1_000_000)]);
        assert!(s.backend.completed[1].2.iter().all(|&b| b == b'B'));
        // NEXT; COMPLETE + NEXT (TOO_LARGE); NEXT; then the 1000 KB result would move the
        // next input: COMPLETE; NEXT (TIMEOUT).
        assert_eq!(s.notifies, 5);
        // Only the final TIMEOUT was reported: the TOO_LARGE was not a failure.
        assert_eq!(
            console.lines().collect::<Vec<_>>(),
            ["shout: next invocation: Timed out: no invocation"]
        );
    }

    #[test]
    fn a_result_that_would_move_the_next_input_is_completed_before_the_next() {
        // A 300 KB result at the start of the window: beside it, the next input would land
        // 300 KB further on, in pages no input touched. A 3 KB one moves it by 3 KB only.
        let (mut nexus, fake) = fake::nexus();
        queue(&fake, 1, None, &[b'a'; 300_000]);
        queue(&fake, 2, None, &[b'b'; 3_000]);
        queue(&fake, 3, None, &[b'c'; 300_000]);
        let mut offsets = Vec::new();
        let mut console = String::new();
        let options = Options {
            max_next_failures: 1,
            ..Options::new("shout")
        };
        let code = serve(
            &mut nexus,
            &options,
            &mut console,
            |n: &mut Nexus<FakeDevice>, i| {
                offsets.push(i.input.window_offset());
                shout(n, i)
            },
        );
        assert_eq!(code, EXIT_ERROR);
        // Every input at the same place, give or take the small result held beside one.
        assert_eq!(offsets[1], offsets[0]);
        assert!(offsets[2] - offsets[0] < 4096 + 1024, "{offsets:?}");
        let s = fake.state();
        assert_eq!(s.backend.completed.len(), 3);
        // NEXT; COMPLETE; NEXT; COMPLETE + NEXT; COMPLETE; NEXT (TIMEOUT).
        assert_eq!(s.notifies, 6);
        let ops: Vec<Op> = s
            .seen
            .iter()
            .map(|seen| seen.decoded.as_ref().unwrap().op())
            .collect();
        use nexus_ring::Op;
        assert_eq!(
            ops,
            [
                Op::Next,
                Op::Complete,
                Op::Next,
                Op::Complete,
                Op::Next,
                Op::Complete,
                Op::Next
            ]
        );
    }

    #[test]
    fn verbose_prints_a_summary_per_invocation() {
        let (mut nexus, fake) = fake::nexus();
        queue(&fake, 9, None, b"abc");
        let mut console = String::new();
        let options = Options {
            verbose: true,
            max_next_failures: 1,
            ..Options::new("shout")
        };
        assert_eq!(serve(&mut nexus, &options, &mut console, shout), EXIT_ERROR);
        assert!(
            console.starts_with("shouted 3 bytes (invocation 9)\n"),
            "{console}"
        );
    }

    #[test]
    fn a_refused_store_fails_the_invocation() {
        let (mut nexus, fake) = fake::nexus_with(1 << 20, |s| {
            // No write-behind: the PUT is synchronous, and the fake fails this key.
            s.offered =
                crate::mmio::features::VIRTIO_F_VERSION_1 | crate::mmio::features::NEXUS_F_WAIT;
            s.backend.fail_uploads = Some("out/x".to_string());
        });
        queue(&fake, 1, Some("out/x"), b"data");
        let mut console = String::new();
        let options = Options {
            max_next_failures: 1,
            ..Options::new("shout")
        };
        serve(&mut nexus, &options, &mut console, shout);
        let s = fake.state();
        assert_eq!(s.backend.completed.len(), 1);
        let (number, outcome, document) = &s.backend.completed[0];
        assert_eq!((*number, *outcome), (1, Outcome::Error));
        let document = String::from_utf8(document.clone()).unwrap();
        assert!(
            document.starts_with(r#"{"error":"storing the result at out/x: Upload of"#),
            "{document}"
        );
        assert!(s.backend.stored.is_empty());
    }

    #[test]
    fn one_shot_reads_runs_stores_and_prints_the_summary() {
        let (mut nexus, fake) = fake::nexus();
        fake.state()
            .backend
            .objects
            .insert("in".to_string(), b"quiet".to_vec());
        let mut console = String::new();
        let args = ["in", "out"];
        assert_eq!(run_with(&mut nexus, "shout", &args, &mut console, shout), 0);
        assert_eq!(fake.state().backend.objects["out"], b"QUIET");
        // Stored synchronously.
        assert!(fake.state().backend.write_behind_puts.is_empty());
        assert_eq!(console, "shouted 5 bytes\n");

        let mut console = String::new();
        let args = ["missing", "out2"];
        assert_eq!(
            run_with(&mut nexus, "shout", &args, &mut console, shout),
            EXIT_ERROR
        );
        assert_eq!(console, "shout: Not found: no object missing\n");
        assert!(!fake.state().backend.objects.contains_key("out2"));

        // Without a summary: a line of the runtime's own.
        fake.state()
            .backend
            .objects
            .insert("in".to_string(), b"x".to_vec());
        let mut console = String::new();
        let plain =
            |_: &mut Nexus<FakeDevice>, i: Invocation| -> Result<WindowBuf, Error> { Ok(i.input) };
        let args = ["in", "copy"];
        assert_eq!(run_with(&mut nexus, "plain", &args, &mut console, plain), 0);
        assert_eq!(console, "plain: 1 bytes stored at copy\n");
    }

    #[test]
    fn arguments_select_the_mode() {
        assert_eq!(Mode::from_args(&[]), Mode::Serve { verbose: false });
        assert_eq!(
            Mode::from_args(&["--verbose"]),
            Mode::Serve { verbose: true }
        );
        assert_eq!(
            Mode::from_args(&["a", "b"]),
            Mode::Once {
                input: "a",
                output: "b"
            }
        );
        for bad in [&["a"][..], &["a", "b", "c"], &["--verbose", "b"], &["--x"]] {
            assert_eq!(Mode::from_args(bad), Mode::Usage, "{bad:?}");
        }
        let (mut nexus, _fake) = fake::nexus();
        let mut console = String::new();
        assert_eq!(
            run_with(&mut nexus, "shout", &["a"], &mut console, shout),
            EXIT_USAGE
        );
        assert!(console.starts_with("usage: shout"), "{console}");
    }

    #[test]
    fn error_documents_are_json() {
        assert_eq!(error_document("plain"), r#"{"error":"plain"}"#);
        assert_eq!(
            error_document("a \"b\" \\ c\n\t\u{1}é"),
            r#"{"error":"a \"b\" \\ c\n\t\u0001é"}"#
        );
    }
}
