//! Micro-guest function `compress` on the nexus-io path: the handler of
//! `src/functions/compress.rs` run by the `nexus-guest` function runtime (`function!`).
//!
//! Without arguments it serves invocations, completing each with the compressed input;
//! `compress INPUT_KEY OUTPUT_KEY` GETs `INPUT_KEY`, PUTs the compressed bytes to `OUTPUT_KEY`,
//! prints `compressed: <in> -> <out> bytes` and exits 0 (on any error it prints it and exits
//! 1; 2 for bad arguments). Check with
//! `python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))'`.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/compress.rs"]
mod compress;

nexus_guest::function!(compress::deflate);
