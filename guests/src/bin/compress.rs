//! Micro-guest function: compresses an object with DEFLATE (zlib format, RFC 1950, level 6),
//! straight into a window buffer (miniz_oxide, `no_std`).
//!
//! `compress INPUT_KEY OUTPUT_KEY`: GETs `INPUT_KEY`, PUTs the compressed bytes to
//! `OUTPUT_KEY`, prints `compressed: <in> -> <out> bytes` and exits 0; on any error prints it
//! and exits 1 (2 for bad arguments). Without arguments: the runtime loop, completing each
//! invocation with the compressed input. Check with
//! `python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))'`.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../function.rs"]
mod function;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};
use nexus_guest::{BootInfo, WindowBuf};

use function::{Client, Failure};

nexus_guest::entry!(main);

/// Compression level (0–10).
const LEVEL: i32 = 6;
/// zlib wrapper, 32 KiB window.
const WINDOW_BITS: i32 = 15;

fn main(boot: &BootInfo) -> u32 {
    function::run(boot, "compress", deflate)
}

/// Room for the compressed form of `len` bytes: incompressible input is stored, 5 bytes of
/// block header per (at most 64 KiB) block plus the zlib header and checksum; generously.
fn bound(len: usize) -> usize {
    len + len / 16 + 256
}

fn deflate(nexus: &Client, input: WindowBuf) -> Result<(WindowBuf, String), Failure> {
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
        return Err(Failure::Function(
            "deflate did not finish within the output buffer",
        ));
    }
    output.set_len(produced);
    output.shrink_to_fit();
    let summary = format!("compressed: {} -> {} bytes", input.len(), produced);
    Ok((output, summary))
}
