//! The C memory functions a micro-guest must provide (`memcpy`, `memmove`, `memset`,
//! `memcmp`, `bcmp`).
//!
//! The host target's prebuilt `core` and `alloc` call them, and the compiler emits calls to
//! them for copies and comparisons. The [`entry!`](crate::entry) macro defines the
//! `#[no_mangle]` symbols in the guest binary and forwards to these functions, which use
//! `rep movsb`/`rep stosb` (fast on every CPU with ERMSB, and opaque to the optimiser, so it
//! cannot turn them back into calls to themselves) and plain byte loops for comparison.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst`; the ranges must not overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the ranges must not
/// overlap (C's `memcpy` contract).
#[inline]
pub unsafe fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges valid for `n` bytes. `rep movsb` copies
    // upwards (DF is clear on entry to asm, as Rust requires) and leaves the flags alone.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `n` bytes (C's `memmove` contract).
#[inline]
pub unsafe fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dst;
    }
    if dst.addr().wrapping_sub(src.addr()) >= n {
        // `dst` is below `src`, or the ranges are disjoint: copying upwards is safe.
        // SAFETY: the caller guarantees both ranges valid; an upward copy never reads a byte
        // it has already overwritten when `dst` is not inside `(src, src + n)`.
        return unsafe { memcpy(dst, src, n) };
    }
    // `dst` is inside `(src, src + n)`: copy downwards, from the last byte.
    // SAFETY: the caller guarantees both ranges valid for `n` (> 0) bytes, so `+ n - 1` stays
    // inside them. DF is set only for the copy and cleared again before the block ends, as
    // Rust requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
    dst
}

/// Sets `n` bytes at `dst` to the low byte of `value`.
///
/// # Safety
///
/// `dst` must be valid for writes of `n` bytes (C's `memset` contract).
#[inline]
pub unsafe fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` valid for `n` bytes; `rep stosb` writes upwards
    // (DF clear) and leaves the flags alone.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") value as u8,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// Compares `n` bytes; returns the difference of the first differing bytes (as unsigned
/// chars), or 0.
///
/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes (C's `memcmp` contract).
#[inline]
pub unsafe fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n`, and the caller guarantees both ranges valid for `n` bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality: 0 if equal, non-zero otherwise.
///
/// # Safety
///
/// As for [`memcmp`].
#[inline]
pub unsafe fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_set_compare() {
        let src = *b"0123456789";
        let mut dst = [0u8; 10];
        // SAFETY: both arrays are 10 bytes.
        unsafe {
            memcpy(dst.as_mut_ptr(), src.as_ptr(), 10);
            assert_eq!(dst, src);
            memset(dst.as_mut_ptr().add(2), i32::from(b'x'), 3);
            assert_eq!(&dst, b"01xxx56789");
            assert_eq!(memcmp(src.as_ptr(), dst.as_ptr(), 2), 0);
            assert!(memcmp(src.as_ptr(), dst.as_ptr(), 3) < 0);
            assert!(memcmp(dst.as_ptr(), src.as_ptr(), 10) > 0);
            assert_ne!(bcmp(dst.as_ptr(), src.as_ptr(), 10), 0);
            assert_eq!(memcmp(dst.as_ptr(), src.as_ptr(), 0), 0);
        }
    }

    #[test]
    fn move_overlapping_both_ways() {
        let mut buf = *b"abcdefghij";
        let p = buf.as_mut_ptr();
        // SAFETY: all ranges lie inside the 10-byte buffer.
        unsafe {
            memmove(p.add(2), p, 6); // upwards overlap: copy downwards
            assert_eq!(&buf, b"ababcdefij");
            let p = buf.as_mut_ptr();
            memmove(p, p.add(3), 7); // downwards overlap: copy upwards
            assert_eq!(&buf, b"bcdefijfij");
            memmove(p, p, 10);
            assert_eq!(&buf, b"bcdefijfij");
            memmove(p, p.add(1), 0);
        }
    }
}
