// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's unsafe code: `prctl` calls, the kind probe, and the SIGSYS reporter.
//!
//! **The kind probe**: every kind's filter comes with a second, *marker* filter that answers
//! `prctl(PROBE_OPTION)` with the errno `PROBE_ERRNO_BASE + kind id` (every allowlist lets
//! that call through, so the marker's answer stands; of stacked markers the kernel returns
//! the most recent one's). Unfiltered, the kernel answers `EINVAL` (no such option).

use std::io;
use std::sync::Once;

use crate::ThreadKind;

/// The `prctl` option of the kind probe: no option of Linux ("NXSC").
pub(crate) const PROBE_OPTION: u32 = 0x4e58_5343;
/// The probe's errno for kind id `n` is this plus `n` (below 4096, as errnos are).
pub(crate) const PROBE_ERRNO_BASE: u32 = 3900;

/// `PR_SET_NO_NEW_PRIVS` on the calling thread.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kind id the calling thread's most recent marker filter answers, if any.
pub(crate) fn probe() -> Option<u32> {
    // SAFETY: prctl with integer arguments only, and an option Linux does not know: it only
    // returns an error (or the marker filter's errno).
    let rc = unsafe { libc::prctl(PROBE_OPTION as libc::c_int, 0, 0, 0, 0) };
    if rc != -1 {
        return None;
    }
    let errno = io::Error::last_os_error().raw_os_error()? as u32;
    errno.checked_sub(PROBE_ERRNO_BASE).filter(|&id| id > 0)
}

/// Installs the SIGSYS handler, once per process.
pub(crate) fn install_reporter() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is an
        // `extern "C"` function of the signature SA_SIGINFO handlers have, and it only makes
        // async-signal-safe calls (see `report`).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = report as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// The kernel's `siginfo_t` for `SIGSYS` (`_sigsys` of the union), x86_64 layout.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer the handler formats its line into (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn push_hex(&mut self, n: u64) {
        self.push(b"0x");
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = n;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The first three arguments of the trapped call (an ioctl's descriptor and request, say),
/// from the registers the kernel saved in the signal's context.
#[cfg(target_arch = "x86_64")]
fn arguments(context: *mut libc::c_void) -> Option<[u64; 3]> {
    if context.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid `ucontext_t` as the third
    // argument; a seccomp trap saves the system call's registers in it unchanged.
    let gregs = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext.gregs };
    let reg = |r: libc::c_int| gregs.get(r as usize).map(|&v| v as u64);
    Some([
        reg(libc::REG_RDI)?,
        reg(libc::REG_RSI)?,
        reg(libc::REG_RDX)?,
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn arguments(_: *mut libc::c_void) -> Option<[u64; 3]> {
    None
}

/// The SIGSYS handler: one line naming the thread, its kind, the system call and its first
/// three arguments (an ioctl's request is the second), then death
/// by SIGSYS. Only async-signal-safe system calls (prctl, write, sigaction, tgkill), all of
/// them in every allowlist.
extern "C" fn report(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers, and a SIGSYS
        // raised by seccomp fills in the `_sigsys` member this layout reads.
        i64::from(unsafe { (*(info as *const SigsysInfo)).syscall })
    };
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) to the buffer, which has 17.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let kind = probe().and_then(ThreadKind::from_id);
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"nexus: seccomp: thread ");
    line.push(name.get(..name_len).unwrap_or(&[]));
    line.push(b" (kind ");
    line.push(kind.map_or("none", ThreadKind::name).as_bytes());
    line.push(b") made forbidden syscall ");
    line.push_number(nr);
    line.push(b" (");
    line.push(
        crate::filters::syscall_name(nr)
            .unwrap_or("unknown")
            .as_bytes(),
    );
    line.push(b")");
    if let Some(args) = arguments(context) {
        line.push(b" args ");
        for (i, arg) in args.into_iter().enumerate() {
            if i > 0 {
                line.push(b", ");
            }
            line.push_hex(arg);
        }
    }
    line.push(b"\n");
    // SAFETY: write(2) of an initialized buffer of `line.len` bytes; sigaction with a zeroed
    // (default) action; raise is tgkill on the calling thread. All async-signal-safe.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
        // Blocked while this handler runs: delivered, with the default action, on return.
        libc::raise(signal);
    }
}
