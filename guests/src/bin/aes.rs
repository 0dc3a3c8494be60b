//! Micro-guest function: encrypts its input with AES-128-CTR (RustCrypto `aes` + `ctr`,
//! `no_std`), in place in the window buffer the input arrived in.
//!
//! The result is the ciphertext (same length, no IV prefix: the demo key and IV below are
//! fixed). Built on the `nexus-guest` function runtime: without arguments it serves
//! invocations; `aes INPUT_KEY OUTPUT_KEY` GETs `INPUT_KEY`, PUTs the ciphertext to
//! `OUTPUT_KEY`, prints `aes-128-ctr: <n> bytes` and exits 0 (on any error it prints it and
//! exits 1; 2 for bad arguments). Check with
//! `openssl enc -d -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 6e657875732d6165732d64656d6f2121`.
//!
//! The `aes` crate picks AES-NI at run time through `cpuid` (which works at CPL 3) and falls
//! back to its constant-time software implementation if the vCPU does not report AES-NI.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;

use aes::cipher::{KeyIvInit, StreamCipher};
use nexus_guest::function::{Client, FunctionError, Invocation, Output};

nexus_guest::function!(encrypt);

/// AES-128 in CTR mode with a 128-bit big-endian counter.
type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// The demo key. Not a secret: a real function would get its key from the backend.
const KEY: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
/// The demo initial counter block: `b"nexus-aes-demo!!"`.
const IV: [u8; 16] = *b"nexus-aes-demo!!";

fn encrypt(_nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
    let mut data = invocation.input;
    let mut cipher = Aes128Ctr::new(&KEY.into(), &IV.into());
    cipher.apply_keystream(&mut data);
    let summary = format!("aes-128-ctr: {} bytes", data.len());
    // Zero copy: the result is the buffer the input arrived in.
    Ok(Output::window(data).with_summary(summary))
}
