//! Micro-guest function `fibonacci` on the nexus-io path: the handler of
//! `src/functions/fibonacci.rs` run by the `nexus-guest` function runtime (`function!`).
//!
//! It serves invocations when started without arguments.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/fibonacci.rs"]
mod fibonacci;

nexus_guest::function!(fibonacci::fibonacci);
