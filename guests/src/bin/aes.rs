//! Micro-guest function `aes` on the nexus-io path: the handler of
//! `src/functions/aes.rs` run by the `nexus-guest` function runtime (`function!`).
//!
//! Without arguments it serves invocations; `aes INPUT_KEY OUTPUT_KEY` GETs `INPUT_KEY`,
//! PUTs the ciphertext to `OUTPUT_KEY`, prints `aes-128-ctr: <n> bytes` and exits 0 (on any
//! error it prints it and exits 1; 2 for bad arguments).

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/aes.rs"]
mod aes;

nexus_guest::function!(aes::encrypt);
