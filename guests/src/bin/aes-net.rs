//! Micro-guest function `aes-net`: the handler of `src/functions/aes.rs` (the same as
//! `aes`'s) on the network path — the in-guest networking baseline (`net_function!`):
//! invocations arrive as HTTP requests (`POST /invoke`) on the guest's own TCP/IP stack
//! and its objects come and go through the in-guest S3 client. For the same input the result
//! is byte for byte `aes`'s. The boot arguments give the network (`net.ip=`, `net.gw=`,
//! `s3.endpoint=`, `s3.bucket=`, `s3.access_key=`, `s3.secret_key=`, `http.port=`);
//! `aes-net INPUT_KEY OUTPUT_KEY` runs once instead.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/aes.rs"]
mod aes;

nexus_guest::net_function!(aes::encrypt);
