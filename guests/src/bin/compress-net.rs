//! Micro-guest function `compress-net`: the handler of `src/functions/compress.rs` (the same as
//! `compress`'s) on the network path — the in-guest networking baseline (`net_function!`):
//! invocations arrive as HTTP requests (`POST /invoke`) on the guest's own TCP/IP stack
//! and its objects come and go through the in-guest S3 client. For the same input the result
//! is byte for byte `compress`'s. The boot arguments give the network (`net.ip=`, `net.gw=`,
//! `s3.endpoint=`, `s3.bucket=`, `s3.access_key=`, `s3.secret_key=`, `http.port=`);
//! `compress-net INPUT_KEY OUTPUT_KEY` runs once instead.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/compress.rs"]
mod compress;

nexus_guest::net_function!(compress::deflate);
