//! The console: line-buffered output through the console-write port.
//!
//! [`print!`](crate::print) and [`println!`](crate::println) format into a 256-byte line
//! buffer; the buffer is flushed with **one** 32-bit `out` to [`CONSOLE_WRITE_PORT`] (0xF5)
//! when a newline is written or the buffer fills, so a line costs one VM exit instead of one
//! per byte. The port takes the guest-physical address of a `{ addr: u64, len: u64 }` record
//! (built on the stack), which must lie below 4 GiB — true of the stack and of every static
//! in a micro-guest. [`crate::rt::exit`] flushes the buffer before ending the VM.
//!
//! [`serial_write_byte`] and [`serial_write`] write to the plain 8250 instead (one exit per
//! byte), for guests that want nothing but a UART.

use core::arch::asm;
use core::fmt::{self, Write};

use super::port::outb;
use crate::sync::TryLock;

/// Base port of the 8250 console (COM1); a byte written to it is printed.
pub const SERIAL_PORT: u16 = 0x3F8;
/// Console-write port: a 32-bit write of the address of a [`ConsoleRecord`].
pub const CONSOLE_WRITE_PORT: u16 = 0xF5;
/// Most bytes one console write may print.
pub const CONSOLE_WRITE_MAX: usize = 0x1_0000;
/// Size of the console's line buffer.
pub const LINE_BUFFER_SIZE: usize = 256;

/// The record whose address is written to [`CONSOLE_WRITE_PORT`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ConsoleRecord {
    /// Guest-physical address of the bytes.
    pub addr: u64,
    /// Number of bytes (at most [`CONSOLE_WRITE_MAX`]).
    pub len: u64,
}

/// Writes one byte to the 8250 (one VM exit).
pub fn serial_write_byte(byte: u8) {
    // SAFETY: writing the transmit register of the console UART only prints the byte.
    unsafe { outb(SERIAL_PORT, byte) };
}

/// Writes bytes to the 8250, one VM exit per byte.
pub fn serial_write(bytes: &[u8]) {
    bytes.iter().copied().for_each(serial_write_byte);
}

/// Prints `bytes` with one console-write exit per [`CONSOLE_WRITE_MAX`] bytes, unbuffered.
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX) {
        let record = ConsoleRecord {
            addr: chunk.as_ptr().addr() as u64,
            len: chunk.len() as u64,
        };
        let record_ptr: *const ConsoleRecord = &record;
        if u32::try_from(record_ptr.addr()).is_err() {
            // Cannot happen in a micro-guest (the stack is in low RAM); stay correct anyway.
            serial_write(chunk);
            continue;
        }
        // SAFETY: the VMM reads the record and `len` bytes at `addr`, both live and
        // initialised for the duration of the `out`, and writes nothing. The pointer is an
        // operand (`rax`, of which `out dx, eax` sends the low 32 bits, checked above to be
        // the whole address) and the block is not `nomem`, so the compiler has stored the
        // record before the instruction.
        unsafe {
            asm!(
                "out dx, eax",
                in("dx") CONSOLE_WRITE_PORT,
                in("rax") record_ptr,
                options(nostack, preserves_flags, readonly),
            );
        }
    }
}

/// A fixed-size line buffer: bytes accumulate until a newline or a full buffer, then go to a
/// sink in one piece.
#[derive(Debug)]
pub struct LineBuffer<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for LineBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineBuffer<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// Bytes waiting in the buffer.
    pub fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends `bytes`, calling `sink` with the buffer's contents after every newline and
    /// whenever it is full.
    pub fn push(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
        for &byte in bytes {
            self.buf[self.len] = byte;
            self.len += 1;
            if byte == b'\n' || self.len == N {
                self.flush(sink);
            }
        }
    }

    /// Calls `sink` with the buffered bytes, if any, and empties the buffer.
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            sink(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

/// A [`fmt::Write`] adapter pushing into a [`LineBuffer`] with a sink.
struct BufferedWriter<'a, const N: usize, F: FnMut(&[u8])> {
    buffer: &'a mut LineBuffer<N>,
    sink: F,
}

impl<const N: usize, F: FnMut(&[u8])> Write for BufferedWriter<'_, N, F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.buffer.push(s.as_bytes(), &mut self.sink);
        Ok(())
    }
}

/// The console's buffer.
static CONSOLE: TryLock<LineBuffer<LINE_BUFFER_SIZE>> = TryLock::new(LineBuffer::new());

/// Formats `args` to the console through its line buffer.
///
/// If the console is already in use higher up the call stack (a `Display` impl that prints,
/// or a panic while printing), the text goes out through a temporary buffer of its own.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    match CONSOLE.try_lock() {
        Some(mut console) => {
            let mut writer = BufferedWriter {
                buffer: &mut console,
                sink: console_write,
            };
            let _ = writer.write_fmt(args);
        }
        None => write_fmt_unbuffered(args),
    }
}

/// Formats `args` through a line buffer on the stack and flushes it, leaving the console's
/// own buffer alone.
pub(crate) fn write_fmt_unbuffered(args: fmt::Arguments<'_>) {
    let mut buffer = LineBuffer::<LINE_BUFFER_SIZE>::new();
    let mut writer = BufferedWriter {
        buffer: &mut buffer,
        sink: console_write,
    };
    let _ = writer.write_fmt(args);
    buffer.flush(&mut console_write);
}

/// Prints whatever is in the console's line buffer.
pub fn flush() {
    if let Some(mut console) = CONSOLE.try_lock() {
        console.flush(&mut console_write);
    }
}

/// Ends a partial line in the console's buffer with a newline and prints it, so that what
/// follows starts on a line of its own.
pub(crate) fn finish_line() {
    if let Some(mut console) = CONSOLE.try_lock() {
        if !console.pending().is_empty() {
            console.push(b"\n", &mut console_write);
        }
    }
}

/// Prints to the micro-guest's console (line-buffered; see [`rt::console`](crate::rt::console)).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::rt::console::write_fmt(::core::format_args!($($arg)*))
    };
}

/// Prints to the micro-guest's console, with a newline (which flushes the line).
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::rt::console::write_fmt(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn collect<const N: usize>(
        f: impl FnOnce(&mut LineBuffer<N>, &mut dyn FnMut(&[u8])),
    ) -> Vec<String> {
        let mut buffer = LineBuffer::<N>::new();
        let mut flushes = Vec::new();
        let mut sink = |b: &[u8]| flushes.push(String::from_utf8(b.to_vec()).unwrap());
        f(&mut buffer, &mut sink);
        flushes
    }

    #[test]
    fn flushes_once_per_line() {
        let flushes = collect::<256>(|buf, sink| {
            let mut sink = |b: &[u8]| sink(b);
            buf.push(b"Hello", &mut sink);
            buf.push(b", world\nsecond ", &mut sink);
            buf.push(b"line\n", &mut sink);
            buf.push(b"tail", &mut sink);
            assert_eq!(buf.pending(), b"tail");
            buf.flush(&mut sink);
            buf.flush(&mut sink);
        });
        assert_eq!(flushes, ["Hello, world\n", "second line\n", "tail"]);
    }

    #[test]
    fn flushes_when_full() {
        let flushes = collect::<4>(|buf, sink| {
            let mut sink = |b: &[u8]| sink(b);
            buf.push(b"abcdefghij\nxy", &mut sink);
            buf.flush(&mut sink);
        });
        assert_eq!(flushes, ["abcd", "efgh", "ij\n", "xy"]);
    }

    #[test]
    fn formats_through_the_buffer() {
        let mut buffer = LineBuffer::<16>::new();
        let mut out = Vec::new();
        let mut writer = BufferedWriter {
            buffer: &mut buffer,
            sink: |b: &[u8]| out.push(b.to_vec()),
        };
        writeln!(writer, "fib({}) = {}", 30, 832_040).unwrap();
        assert_eq!(out, [b"fib(30) = 832040".to_vec(), b"\n".to_vec()]);
    }
}
