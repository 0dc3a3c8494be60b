//! The `counter` function: state that outlives an invocation, to show whether a node reuses a
//! function VM as it is or resets it to its snapshot between invocations.
//!
//! It counts its invocations in a static and keeps the previous invocation's input on the
//! heap; it also allocates a window buffer and, before writing `mark-<n>` into it, reads
//! what the window held there. The result is
//! `count=<n> previous=<input of the invocation before, or "none"> window=<the window bytes
//! found, up to the first zero, or "clean">\n`. A VM reused as it is answers `count=1`,
//! `count=2`, … and shows the input and (where the window buffer lands on the previous
//! result's) the result it gave before; one reset to its snapshot after every invocation
//! (`isolation = "reset"`) answers exactly as its first invocation did, every time.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use nexus_guest::function::{FunctionError, Invocation, IoBuf, ObjectIo, Output};

/// Invocations this VM ran.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// The previous invocation's input (at most 256 bytes of it), on the heap.
static PREVIOUS: spin_cell::Cell = spin_cell::Cell::new();

/// A cell the single-threaded micro-guest owns, without `static mut`.
mod spin_cell {
    use alloc::vec::Vec;
    use core::cell::RefCell;

    /// A `RefCell` usable in a static: a micro-guest runs one thread.
    pub struct Cell(RefCell<Option<Vec<u8>>>);

    // SAFETY: a micro-guest has one thread of execution and no interrupt handlers touch the
    // cell: it is never accessed concurrently.
    unsafe impl Sync for Cell {}

    impl Cell {
        pub const fn new() -> Self {
            Cell(RefCell::new(None))
        }

        /// Stores `value`, returning what was there.
        pub fn replace(&self, value: Vec<u8>) -> Option<Vec<u8>> {
            self.0.replace(Some(value))
        }
    }
}

/// The handler.
pub fn counter<Io: ObjectIo>(
    io: &mut Io,
    invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let input: Vec<u8> = invocation.input.iter().copied().take(256).collect();
    drop(invocation);
    let previous = PREVIOUS.replace(input);
    let previous = match &previous {
        Some(bytes) => alloc::string::String::from_utf8_lossy(bytes).into_owned(),
        None => "none".into(),
    };
    // What the window holds where a buffer lands, then a mark of this invocation there.
    let mut buf = io
        .alloc(64)
        .map_err(|_| "cannot allocate a window buffer")?;
    buf.resize_for_overwrite(16)
        .map_err(|_| "cannot size the window buffer")?;
    let found: Vec<u8> = buf.iter().copied().take_while(|&b| b != 0).collect();
    let window = if found.is_empty() {
        "clean".into()
    } else {
        alloc::string::String::from_utf8_lossy(&found).into_owned()
    };
    let mark = format!("mark-{count}");
    buf[..mark.len()].copy_from_slice(mark.as_bytes());
    drop(buf);
    Ok(Output::from(format!(
        "count={count} previous={previous} window={window}\n"
    )))
}
