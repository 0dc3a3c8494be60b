//! Micro-guest function: counts the words (runs of non-whitespace) of an object.
//!
//! `wordcount INPUT_KEY OUTPUT_KEY`: GETs `INPUT_KEY`, PUTs `<n>\n` to `OUTPUT_KEY`, prints
//! `words: <n>` and exits 0; on any error prints it and exits 1 (2 for bad arguments).
//! Without arguments: the runtime loop, completing each invocation with `<n>\n`.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../function.rs"]
mod function;

use alloc::format;
use alloc::string::String;

use nexus_guest::{BootInfo, WindowBuf};

use function::{Client, Failure};

nexus_guest::entry!(main);

fn main(boot: &BootInfo) -> u32 {
    function::run(boot, "wordcount", wordcount)
}

/// Words in `text`: maximal runs of bytes that are not ASCII whitespace.
fn count_words(text: &[u8]) -> usize {
    text.split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .count()
}

fn wordcount(nexus: &Client, input: WindowBuf) -> Result<(WindowBuf, String), Failure> {
    let words = count_words(&input);
    drop(input);
    let output = nexus.copy_to_window(format!("{words}\n").as_bytes())?;
    Ok((output, format!("words: {words}")))
}
