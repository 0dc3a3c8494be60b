//! Micro-guest function `counter` on the nexus-io path: the handler of
//! `src/functions/counter.rs` run by the `nexus-guest` function runtime (`function!`).
//!
//! It serves invocations when started without arguments.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/counter.rs"]
mod counter;

nexus_guest::function!(counter::counter);
