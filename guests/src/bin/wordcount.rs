//! Micro-guest function: counts the words (runs of non-whitespace) of its input.
//!
//! The result is `<n>\n`. Built on the `nexus-guest` function runtime: without arguments it
//! serves invocations; `wordcount INPUT_KEY OUTPUT_KEY` GETs `INPUT_KEY`, PUTs the result to
//! `OUTPUT_KEY`, prints `words: <n>` and exits 0 (on any error it prints it and exits 1; 2 for
//! bad arguments).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;

use nexus_guest::function::{Client, FunctionError, Invocation, Output};

nexus_guest::function!(wordcount);

/// Words in `text`: maximal runs of bytes that are not ASCII whitespace.
fn count_words(text: &[u8]) -> usize {
    text.split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .count()
}

fn wordcount(_nexus: &mut Client, invocation: Invocation) -> Result<Output, FunctionError> {
    let words = count_words(&invocation.input);
    Ok(Output::from(format!("{words}\n")).with_summary(format!("words: {words}")))
}
