//! The `compress` function, written once against [`ObjectIo`]: compresses its input with
//! DEFLATE (zlib format, RFC 1950, level 6), straight into a buffer of the I/O path
//! (miniz_oxide, `no_std`) — a window buffer on the nexus-io path, the heap on the network
//! path. The same input gives the same bytes on both.

use alloc::boxed::Box;
use alloc::format;

use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};
use nexus_guest::function::{FunctionError, Invocation, IoBuf, ObjectIo, Output};

/// Compression level (0–10).
const LEVEL: i32 = 6;
/// zlib wrapper, 32 KiB window.
const WINDOW_BITS: i32 = 15;

/// Room for the compressed form of `len` bytes: incompressible input is stored, 5 bytes of
/// block header per (at most 64 KiB) block plus the zlib header and checksum; generously.
fn bound(len: usize) -> usize {
    len + len / 16 + 256
}

/// The handler.
pub fn deflate<Io: ObjectIo>(
    io: &mut Io,
    invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    let input = invocation.input;
    let room = bound(input.len());
    let mut output = io.alloc(room)?;
    output.resize_for_overwrite(room)?;
    let flags = create_comp_flags_from_zip_params(LEVEL, WINDOW_BITS, 0);
    let mut compressor = Box::new(CompressorOxide::new(flags));
    let (status, consumed, produced) =
        compress(&mut compressor, &input, &mut output, TDEFLFlush::Finish);
    if status != TDEFLStatus::Done || consumed != input.len() {
        return Err("deflate did not finish within the output buffer".into());
    }
    output.truncate(produced);
    output.release_spare();
    let summary = format!("compressed: {} -> {} bytes", input.len(), produced);
    Ok(Output::buf(output).with_summary(summary))
}
