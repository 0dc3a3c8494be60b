//! The `aes` function, written once against [`ObjectIo`]: encrypts its input with
//! AES-128-CTR (RustCrypto `aes` + `ctr`, `no_std`), in place in the buffer the input arrived
//! in (a window buffer on the nexus-io path, the heap on the network path).
//!
//! The result is the ciphertext (same length, no IV prefix: the demo key and IV below are
//! fixed). Check with
//! `openssl enc -d -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 6e657875732d6165732d64656d6f2121`.
//!
//! The `aes` crate picks AES-NI at run time through `cpuid` (which works at CPL 3) and falls
//! back to its constant-time software implementation if the vCPU does not report AES-NI.

use alloc::format;

use aes::cipher::{KeyIvInit, StreamCipher};
use nexus_guest::function::{FunctionError, Invocation, ObjectIo, Output};

/// AES-128 in CTR mode with a 128-bit big-endian counter.
type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// The demo key. Not a secret: a real function would get its key from the backend.
const KEY: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
/// The demo initial counter block: `b"nexus-aes-demo!!"`.
const IV: [u8; 16] = *b"nexus-aes-demo!!";

/// The handler.
pub fn encrypt<Io: ObjectIo>(
    _io: &mut Io,
    invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    let mut data = invocation.input;
    let mut cipher = Aes128Ctr::new(&KEY.into(), &IV.into());
    cipher.apply_keystream(&mut data);
    let summary = format!("aes-128-ctr: {} bytes", data.len());
    // Zero copy: the result is the buffer the input arrived in.
    Ok(Output::buf(data).with_summary(summary))
}
