//! Micro-guest function `wordcount` on the nexus-io path: the handler of
//! `src/functions/wordcount.rs` run by the `nexus-guest` function runtime (`function!`).
//!
//! Without arguments it serves invocations; `wordcount INPUT_KEY OUTPUT_KEY` GETs
//! `INPUT_KEY`, PUTs the result (`<n>\n`) to `OUTPUT_KEY`, prints `words: <n>` and exits 0 (on
//! any error it prints it and exits 1; 2 for bad arguments).

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../functions/wordcount.rs"]
mod wordcount;

nexus_guest::function!(wordcount::wordcount);
