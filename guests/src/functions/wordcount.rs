//! The `wordcount` function, written once against [`ObjectIo`]: counts the words (runs of
//! non-whitespace) of its input; the result is `<n>\n`.
//!
//! Built twice: `wordcount` (the nexus-io runtime, `function!`) and `wordcount-net` (the
//! network runtime, `net_function!`); both give the same bytes for the same input.

use alloc::format;

use nexus_guest::function::{FunctionError, Invocation, ObjectIo, Output};

/// Words in `text`: maximal runs of bytes that are not ASCII whitespace.
pub fn count_words(text: &[u8]) -> usize {
    text.split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .count()
}

/// The handler.
pub fn wordcount<Io: ObjectIo>(
    _io: &mut Io,
    invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    let words = count_words(&invocation.input);
    Ok(Output::from(format!("{words}\n")).with_summary(format!("words: {words}")))
}
