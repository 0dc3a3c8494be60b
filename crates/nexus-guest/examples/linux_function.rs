// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A Linux function guest's program (feature `linux`): the word count function served from a
//! Linux process, through the nexus-io device mapped from `/dev/mem`. Build it static
//! (`--target x86_64-unknown-linux-musl`) and make it the initramfs's function, as
//! `docs/linux-guests.md` in the Nexus repository shows.
//!
//! `cargo build -p nexus-guest --features linux --example linux_function`

use std::process::ExitCode;

use nexus_guest::function::{self, Client, FunctionError, Invocation, Options, Output};

/// The runtime's console lines, to standard output.
struct Stdout;

impl core::fmt::Write for Stdout {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        print!("{text}");
        Ok(())
    }
}

fn wordcount(_nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
    let words = invocation
        .input // already in the I/O window: zero copy
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .count();
    Ok(Output::from(format!("{words}\n")).with_summary(format!("words: {words}")))
}

fn main() -> ExitCode {
    // The one process of this guest that owns the device: another gets `Error::Busy`.
    let mut nexus = match nexus_guest::linux::open() {
        Ok(nexus) => nexus,
        Err(error) => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(e) = cause {
                text.push_str(": ");
                text.push_str(&e.to_string());
                cause = e.source();
            }
            eprintln!("wordcount: {text}");
            return ExitCode::FAILURE;
        }
    };
    // NEXT → handler → COMPLETE until NEXT keeps failing. Each wait for the backend is a WAIT
    // read, which holds the vCPU until the answer comes.
    let code = function::serve(
        &mut nexus,
        &Options::new("wordcount"),
        &mut Stdout,
        wordcount,
    );
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
