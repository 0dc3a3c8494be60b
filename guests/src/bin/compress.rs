//! Micro-guest function: compresses its input with DEFLATE (zlib format, RFC 1950, level 6),
//! straight into a window buffer (miniz_oxide, `no_std`).
//!
//! Built on the `nexus-guest` function runtime: without arguments it serves invocations,
//! completing each with the compressed input; `compress INPUT_KEY OUTPUT_KEY` GETs
//! `INPUT_KEY`, PUTs the compressed bytes to `OUTPUT_KEY`, prints
//! `compressed: <in> -> <out> bytes` and exits 0 (on any error it prints it and exits 1; 2 for
//! bad arguments). Check with
//! `python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))'`.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;

use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};
use nexus_guest::function::{Client, FunctionError, Invocation, Output};

nexus_guest::function!(deflate);

/// Compression level (0–10).
const LEVEL: i32 = 6;
/// zlib wrapper, 32 KiB window.
const WINDOW_BITS: i32 = 15;

/// Room for the compressed form of `len` bytes: incompressible input is stored, 5 bytes of
/// block header per (at most 64 KiB) block plus the zlib header and checksum; generously.
fn bound(len: usize) -> usize {
    len + len / 16 + 256
}

fn deflate(nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
    let input = invocation.input;
    let mut output = nexus.alloc(bound(input.len()))?;
    let flags = create_comp_flags_from_zip_params(LEVEL, WINDOW_BITS, 0);
    let mut compressor = Box::new(CompressorOxide::new(flags));
    let (status, consumed, produced) = compress(
        &mut compressor,
        &input,
        output.full_mut(),
        TDEFLFlush::Finish,
    );
    if status != TDEFLStatus::Done || consumed != input.len() {
        return Err("deflate did not finish within the output buffer".into());
    }
    output.set_len(produced);
    output.shrink_to_fit();
    let summary = format!("compressed: {} -> {} bytes", input.len(), produced);
    Ok(Output::window(output).with_summary(summary))
}
