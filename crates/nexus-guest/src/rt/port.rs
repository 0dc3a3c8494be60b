//! x86 port I/O.
//!
//! A micro-guest runs at CPL 3 with `IOPL = 3`, so `in`/`out` are allowed; each one is a VM
//! exit. None of these asm blocks is `nomem`: a port access may tell the VMM to read or
//! write guest memory (the console-write record, a device's rings), so the compiler must not
//! move memory accesses across it.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// Port writes have effects outside the program (ending the VM, for one); the caller must
/// know what writing `value` to `port` does and that it does not break the program's
/// invariants. Outside a micro-guest (without I/O privilege) the instruction faults.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory of this program and no stack; the effect of the
    // access itself is the caller's responsibility (see `# Safety`).
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) };
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches no memory of this program and no stack; the effect of the
    // access itself is the caller's responsibility (see `# Safety`).
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// Port reads can have effects too (a device's wait register blocks; an unknown port ends
/// the VM); the caller must know what reading `port` does.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` writes only `al`, touches no stack; the effect of the access itself is
    // the caller's responsibility (see `# Safety`).
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) };
    value
}
