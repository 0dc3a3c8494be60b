// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The network function runtime (feature `net`): the same handler as on the nexus-io path,
//! served the baseline's way — invocations arrive as HTTP requests on the guest's own TCP/IP
//! stack, and its I/O goes through the in-guest S3 client, as functions in
//! Firecracker-based platforms work. [`net_function!`](crate::net_function) makes a handler a
//! micro-guest that runs it.
//!
//! At start the runtime brings the network up from the boot arguments (`net.ip=…`,
//! `s3.endpoint=…`, credentials: [`config`](crate::net::config)), connects nothing yet,
//! listens on `http.port` (8080 by default) and prints one console line,
//! `nexus-net-function: listening on A.B.C.D:PORT` ([`LISTENING`]): the node waits for it
//! before it takes the snapshot. Then it serves one request at a time, on keep-alive
//! connections, printing nothing per invocation (a console line is a VM exit) but errors:
//!
//! - `POST /invoke` with `X-Nexus-Request-Id` (may be empty), `X-Nexus-Input-Key: KEY` (the
//!   input is that object, fetched with an S3 GET; without it the request body is the
//!   input), `X-Nexus-Output-Key: KEY` (optional: the result is stored there with an S3 PUT,
//!   synchronously — durable before the answer, as an in-guest SDK's `put_object` is).
//!   - `200` with the result as the body, or, stored at the output key, an empty body and
//!     `X-Nexus-Output-Len: N`;
//!   - a function error (the handler's, or a refused PUT of the result): `200` with
//!     `X-Nexus-Function-Error: Unhandled` and the JSON error document the nexus-io runtime
//!     reports in `COMPLETE` ([`error_document`](super::error_document));
//!   - an input that cannot be read: `404` (no such object) or `502` (the store failed),
//!     with a one-line message; `400` for an input key together with a body.
//! - `GET /ready`: `200`, no I/O (health checks).
//! - Every answer carries `X-Nexus-Reconnects: N` (store connections given up since the
//!   guest started, each one re-opened by the next request — [`NetStore::reconnects`]),
//!   `X-Nexus-Generation: G` (the VM generation it runs in) and `Connection: keep-alive`.
//!
//! **Restored VMs.** The stack watches the VM generation record
//! ([`NetStack::watch_generation`](crate::net::NetStack::watch_generation)): when a restore
//! gives the VM a new generation, the stack reseeds and takes the new address and gateway at
//! its next poll, dropping the snapshotted VM's connections (the listening port listens
//! again), and the runtime drops its pooled store connection before it answers the next
//! request — counted in `X-Nexus-Reconnects`: it belonged to the VM of the snapshot.
//!
//! **Tuning** (a fair baseline, never handicapped): one keep-alive connection to the store,
//! reused across invocations; Nagle off and 256 KiB socket buffers on every connection (the
//! stack's defaults, `net.tcp_buffer`); the vCPU sleeps in the device's WAIT register
//! whenever the stack has nothing to do, exactly as the driver does on every path.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use smoltcp::time::Duration;

use super::{
    EXIT_ERROR, FunctionError, Invocation, Mode, ObjectIo, Options, Output, error_document,
    report_once, usage,
};
use crate::error::Error;
use crate::net::http::head::find_header;
use crate::net::http::{HttpServer, ServerRequest};
use crate::net::{Connector, Link, Net, NetError, S3Client};

/// The path invocations are posted to.
pub const INVOKE_PATH: &str = "/invoke";
/// The health-check path.
pub const READY_PATH: &str = "/ready";
/// The start of the console line printed once listening: `<LISTENING> A.B.C.D:PORT`.
pub const LISTENING: &str = "nexus-net-function: listening on";
/// The value of [`header::FUNCTION_ERROR`].
pub const UNHANDLED: &str = "Unhandled";

/// The header fields of the contract, as the runtime writes them (HTTP reads them without
/// regard to case).
pub mod header {
    /// Request: the platform's request id (may be empty).
    pub const REQUEST_ID: &str = "X-Nexus-Request-Id";
    /// Request: the input is this object.
    pub const INPUT_KEY: &str = "X-Nexus-Input-Key";
    /// Request: store the result at this key.
    pub const OUTPUT_KEY: &str = "X-Nexus-Output-Key";
    /// Answer: the result's length, when it was stored at the output key.
    pub const OUTPUT_LEN: &str = "X-Nexus-Output-Len";
    /// Answer: the function failed (the body is the error document).
    pub const FUNCTION_ERROR: &str = "X-Nexus-Function-Error";
    /// Answer: store connections given up since the guest started.
    pub const RECONNECTS: &str = "X-Nexus-Reconnects";
    /// Answer: the VM generation the guest runs in.
    pub const GENERATION: &str = "X-Nexus-Generation";
}

/// The store of a network function: objects on the heap ([`ObjectIo`] with `Vec<u8>`
/// buffers), and the connections it keeps to reach them.
pub trait NetStore: ObjectIo<Buf = Vec<u8>> {
    /// Drops the kept connections (they belonged to the VM before a restore); returns how
    /// many there were. Each counts in [`reconnects`](Self::reconnects).
    fn drop_connections(&mut self) -> u64;

    /// Connections given up since the start — closed by the server, found broken, or
    /// dropped — each one the next request opens anew.
    fn reconnects(&self) -> u64;
}

impl<C: Connector> NetStore for S3Client<C> {
    fn drop_connections(&mut self) -> u64 {
        u64::from(self.http_mut().disconnect())
    }

    fn reconnects(&self) -> u64 {
        self.http().stats().dropped
    }
}

/// The client a network function's handler gets in a micro-guest: the S3 client over the
/// guest's stack.
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub type NetClient =
    S3Client<crate::net::StackConnector<crate::net::VirtioNet<crate::mmio::MmioRegisters>>>;

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Stored at the output key: its length.
    output_len: Option<usize>,
    /// The body is the error document of a failed invocation.
    function_error: bool,
}

impl Answer {
    /// A one-line text message.
    fn text(status: u16, message: &str) -> Self {
        let mut body = String::with_capacity(message.len() + 1);
        body.push_str(message);
        body.push('\n');
        Self {
            status,
            content_type: "text/plain",
            body: body.into_bytes(),
            output_len: None,
            function_error: false,
        }
    }

    /// A result.
    fn result(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: "application/octet-stream",
            body,
            output_len: None,
            function_error: false,
        }
    }

    /// A result stored at the output key.
    fn stored(len: usize) -> Self {
        Self {
            output_len: Some(len),
            ..Self::result(Vec::new())
        }
    }

    /// A failed invocation: its error document.
    fn failed(message: &str) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: error_document(message).into_bytes(),
            output_len: None,
            function_error: true,
        }
    }
}

/// The runtime: the invocation server on the guest's stack, the store, and what it counts.
#[derive(Debug)]
pub struct NetRuntime<L: Link, S: NetStore> {
    net: Net<L>,
    server: HttpServer<L>,
    store: S,
    options: Options,
    /// Invocations so far (each one's number).
    invocations: u64,
    /// The VM generation of the store's connections.
    generation: u64,
}

impl<L: Link, S: NetStore> NetRuntime<L, S> {
    /// Listens on `port` of `net`; invocations will use `store`.
    pub fn new(net: &Net<L>, port: u16, store: S, options: Options) -> Result<Self, NetError> {
        let server = HttpServer::new(net, port)?;
        let generation = net.with(|stack| stack.generation());
        Ok(Self {
            net: net.clone(),
            server,
            store,
            options,
            invocations: 0,
            generation,
        })
    }

    /// The listening line: `nexus-net-function: listening on A.B.C.D:PORT`, with the
    /// stack's address now.
    pub fn listening_line(&self) -> String {
        let address = self.net.with(|stack| stack.config().address);
        format!("{LISTENING} {address}:{}", self.server.port())
    }

    /// The store.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// The invocation server (its counters).
    pub fn server(&self) -> &HttpServer<L> {
        &self.server
    }

    /// Invocations served so far.
    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// Serves requests until waiting for one fails `options.max_next_failures` times in a
    /// row; then returns [`EXIT_ERROR`]. Errors go to `console`.
    pub fn serve<H, O, E>(&mut self, console: &mut dyn Write, mut handler: H) -> u32
    where
        H: FnMut(&mut S, Invocation<Vec<u8>>) -> Result<O, E>,
        O: Into<Output<Vec<u8>>>,
        E: Into<FunctionError>,
    {
        let mut failures = 0;
        loop {
            match self.serve_one(None, console, &mut handler) {
                Ok(()) => failures = 0,
                Err(error) => {
                    let _ = writeln!(console, "{}: {error}", self.options.name);
                    failures += 1;
                    if failures >= self.options.max_next_failures {
                        return EXIT_ERROR;
                    }
                }
            }
        }
    }

    /// Waits (at most `timeout`; `None`: for ever) for one request and answers it. An
    /// answer the client did not take (it went away) is an error too.
    pub fn serve_one<H, O, E>(
        &mut self,
        timeout: Option<Duration>,
        console: &mut dyn Write,
        handler: &mut H,
    ) -> Result<(), NetError>
    where
        H: FnMut(&mut S, Invocation<Vec<u8>>) -> Result<O, E>,
        O: Into<Output<Vec<u8>>>,
        E: Into<FunctionError>,
    {
        let request = self.server.next_request(timeout)?;
        let generation = self.net.with(|stack| stack.generation());
        if generation != self.generation {
            // A restore: the pooled connection was the snapshotted VM's.
            self.store.drop_connections();
            self.generation = generation;
        }
        let answer = self.answer(request, console, handler);
        let reconnects = self.store.reconnects().to_string();
        let generation = generation.to_string();
        let output_len = answer.output_len.map(|len| len.to_string());
        let mut headers = Vec::with_capacity(4);
        headers.push((header::RECONNECTS, reconnects.as_str()));
        headers.push((header::GENERATION, generation.as_str()));
        if let Some(len) = &output_len {
            headers.push((header::OUTPUT_LEN, len.as_str()));
        }
        if answer.function_error {
            headers.push((header::FUNCTION_ERROR, UNHANDLED));
        }
        self.server
            .respond_with(answer.status, answer.content_type, &headers, &answer.body)
    }

    /// What to answer `request`.
    fn answer<H, O, E>(
        &mut self,
        request: ServerRequest,
        console: &mut dyn Write,
        handler: &mut H,
    ) -> Answer
    where
        H: FnMut(&mut S, Invocation<Vec<u8>>) -> Result<O, E>,
        O: Into<Output<Vec<u8>>>,
        E: Into<FunctionError>,
    {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", READY_PATH) => Answer::text(200, "ready"),
            ("POST", INVOKE_PATH) => self.invoke(request, console, handler),
            (_, INVOKE_PATH) => Answer::text(405, "invoke with POST"),
            (_, READY_PATH) => Answer::text(405, "ask with GET"),
            _ => Answer::text(404, &format!("no such path: {path}")),
        }
    }

    /// Runs one invocation.
    fn invoke<H, O, E>(
        &mut self,
        request: ServerRequest,
        console: &mut dyn Write,
        handler: &mut H,
    ) -> Answer
    where
        H: FnMut(&mut S, Invocation<Vec<u8>>) -> Result<O, E>,
        O: Into<Output<Vec<u8>>>,
        E: Into<FunctionError>,
    {
        let ServerRequest { headers, body, .. } = request;
        let field = |name| find_header(&headers, name).filter(|value| !value.is_empty());
        let input = match field(header::INPUT_KEY) {
            Some(_) if !body.is_empty() => {
                return Answer::text(
                    400,
                    "an input key and a request body: give the input one way",
                );
            }
            Some(key) => match self.store.get(key) {
                Ok(bytes) => bytes,
                Err(error @ Error::NotFound(_)) => {
                    return Answer::text(404, &format!("input {key}: {}", error.report()));
                }
                Err(error) => {
                    return Answer::text(502, &format!("input {key}: {}", error.report()));
                }
            },
            None => body,
        };
        self.invocations += 1;
        let number = self.invocations;
        let output_key = field(header::OUTPUT_KEY).map(String::from);
        let invocation = Invocation {
            number,
            deadline_ms: 0,
            async_durability: false,
            function: self.options.name.clone(),
            request_id: String::from(field(header::REQUEST_ID).unwrap_or_default()),
            output_key: output_key.clone(),
            input,
        };
        let outcome = handler(&mut self.store, invocation)
            .map(Into::<Output<Vec<u8>>>::into)
            .map_err(Into::<FunctionError>::into)
            .and_then(|output| {
                let (bytes, summary) = output.into_vec();
                if let (true, Some(summary)) = (self.options.verbose, &summary) {
                    let _ = writeln!(console, "{summary} (invocation {number})");
                }
                match &output_key {
                    Some(key) => match self.store.put(key, &bytes) {
                        Ok(()) => Ok(Answer::stored(bytes.len())),
                        Err(error) => Err(FunctionError::Failed(format!(
                            "storing the result at {key}: {}",
                            error.report()
                        ))),
                    },
                    None => Ok(Answer::result(bytes)),
                }
            });
        outcome.unwrap_or_else(|error| {
            let message = format!("{error}");
            let _ = writeln!(
                console,
                "{}: invocation {number}: {message}",
                self.options.name
            );
            Answer::failed(&message)
        })
    }
}

/// One-shot mode over the store: GET `input`, run `handler` once (an invocation numbered 0
/// whose output key is `output`), PUT the result at `output`, print the summary (or `<name>:
/// <n> bytes stored at <output>`). Returns 0, or [`EXIT_ERROR`] after printing what failed.
pub fn once<S, H, O, E>(
    store: &mut S,
    options: &Options,
    console: &mut dyn Write,
    input: &str,
    output: &str,
    mut handler: H,
) -> u32
where
    S: ObjectIo<Buf = Vec<u8>>,
    H: FnMut(&mut S, Invocation<Vec<u8>>) -> Result<O, E>,
    O: Into<Output<Vec<u8>>>,
    E: Into<FunctionError>,
{
    let mut run = || -> Result<(usize, Option<String>), FunctionError> {
        let data = store.get(input)?;
        let invocation = Invocation {
            number: 0,
            deadline_ms: 0,
            async_durability: false,
            function: options.name.clone(),
            request_id: String::new(),
            output_key: Some(String::from(output)),
            input: data,
        };
        let result: Output<Vec<u8>> = handler(store, invocation).map_err(Into::into)?.into();
        let (bytes, summary) = result.into_vec();
        store.put(output, &bytes)?;
        Ok((bytes.len(), summary))
    };
    report_once(run(), options, output, console)
}

/// The body of the entry point [`net_function!`](crate::net_function) defines: brings the
/// network up from the boot arguments, then serves invocations (no other argument but the
/// network's; `--verbose` prints a summary per invocation) or runs once
/// (`INPUT_KEY OUTPUT_KEY`). `name` starts console lines.
#[cfg(all(feature = "rt", target_arch = "x86_64"))]
pub fn main<H, O, E>(boot: &crate::BootInfo, name: &str, handler: H) -> u32
where
    H: FnMut(&mut NetClient, Invocation<Vec<u8>>) -> Result<O, E>,
    O: Into<Output<Vec<u8>>>,
    E: Into<FunctionError>,
{
    let mut console = super::Console;
    let (net, config) = match crate::rt::net() {
        Ok(up) => up,
        Err(error) => {
            let _ = writeln!(console, "{name}: the network: {error}");
            return EXIT_ERROR;
        }
    };
    let Some(s3) = config.s3.clone() else {
        let _ = writeln!(
            console,
            "{name}: no object store: give s3.endpoint, s3.bucket, s3.access_key and s3.secret_key"
        );
        return super::EXIT_USAGE;
    };
    let mut store = S3Client::over(&net, s3);
    let args: Vec<&str> = crate::net::positional_args(boot.args()).collect();
    let mut options = Options::new(name);
    match Mode::from_args(&args) {
        Mode::Serve { verbose } => {
            options.verbose = verbose;
            let mut runtime = match NetRuntime::new(&net, config.http_port, store, options) {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = writeln!(console, "{name}: {error}");
                    return EXIT_ERROR;
                }
            };
            let _ = writeln!(console, "{}", runtime.listening_line());
            runtime.serve(&mut console, handler)
        }
        Mode::Once { input, output } => {
            once(&mut store, &options, &mut console, input, output, handler)
        }
        Mode::Usage => usage(&options, &mut console),
    }
}

#[cfg(test)]
mod tests;
