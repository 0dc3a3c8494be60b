//! The micro-guest runtime (feature `rt`, x86-64 only).
//!
//! Everything a `#![no_std]`, `#![no_main]` binary needs to run as a Nexus micro-guest
//! (`docs/micro-guest-abi.md`):
//!
//! - [`entry!`](crate::entry) defines, in the binary, the `_start` symbol the VMM jumps to,
//!   the panic handler, the global allocator and the C memory functions;
//! - [`print!`](crate::print)/[`println!`](crate::println) write to the console through a
//!   line buffer, one VM exit per line ([`console`]);
//! - [`exit`] ends the VM with an exit code;
//! - [`GuestAllocator`] serves `alloc` from the heap the boot-info block gives;
//! - [`port`] has the raw port I/O;
//! - [`nexus`] hands the guest its [`crate::Nexus`] client, once.
//!
//! The library itself defines no lang items and no `#[no_mangle]` symbols, so it links into
//! ordinary `std` programs (tests, doctests) too; only the [`entry!`](crate::entry)
//! expansion does, and only in the guest binary.
//!
//! # Exit codes
//!
//! `main`'s return value is the VM's exit code. The runtime itself exits with
//! [`EXIT_PANIC`] (101) after a panic — including an allocation failure, which panics — and
//! with [`EXIT_BAD_BOOT_INFO`] (102) when it refuses the boot-info block.

pub mod console;
pub mod mem;
pub mod port;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::boot::BootInfo;
use crate::client::Nexus;
use crate::error::{Error, Result};
use crate::heap::FreeListHeap;
use crate::mmio::MmioRegisters;
use crate::sync::TryLock;

/// The exit port: a 32-bit write ends the VM with that exit code.
pub const EXIT_PORT: u16 = 0xF4;
/// Exit code after a panic (as for a Rust program that panics).
pub const EXIT_PANIC: u32 = 101;
/// Exit code when the runtime refuses the boot-info block.
pub const EXIT_BAD_BOOT_INFO: u32 = 102;

/// Ends the VM with `code` (0 = success), after flushing the console.
///
/// Never returns: if the VMM resumed the vCPU after the exit write, it would spin here.
pub fn exit(code: u32) -> ! {
    console::flush();
    // SAFETY: a write to the exit port ends the VM; nothing runs after it.
    unsafe { port::outl(EXIT_PORT, code) };
    loop {
        core::hint::spin_loop();
    }
}

/// The heap behind [`GuestAllocator`].
static HEAP: TryLock<FreeListHeap> = TryLock::new(FreeListHeap::empty());

/// The global allocator of a micro-guest: a [`FreeListHeap`] (first fit, coalescing) over the
/// heap range of the boot-info block, behind a lock that is only ever tried.
///
/// [`entry!`](crate::entry) installs it as `#[global_allocator]` and gives it the heap before
/// `main` runs. Freed memory is reused, and freeing everything an invocation allocated gives
/// back one whole heap. There is one vCPU and no interrupts, so the lock is never contended
/// except by re-entrance, which cannot happen inside the allocator; should it happen anyway,
/// the allocation fails (and a free leaks) instead of deadlocking.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestAllocator;

impl GuestAllocator {
    /// Gives the allocator `size` bytes at `base`, dropping any previous heap.
    ///
    /// # Safety
    ///
    /// As for [`FreeListHeap::init`]: the range is readable, writable and used by nothing
    /// else; and no allocation from a previous heap may be used or freed afterwards.
    pub unsafe fn init(base: *mut u8, size: usize) {
        if let Some(mut heap) = HEAP.try_lock() {
            // SAFETY: the caller's guarantee.
            unsafe { heap.init(base, size) };
        }
    }

    /// `(size, free)`: the heap's size and its free bytes.
    pub fn stats() -> (usize, usize) {
        HEAP.try_lock()
            .map_or((0, 0), |heap| (heap.size(), heap.free_bytes()))
    }
}

// SAFETY: allocations come from `FreeListHeap`, which hands out disjoint, suitably aligned
// blocks of at least `layout.size()` bytes from memory it owns and takes back exactly what
// it gave; the lock gives it exclusive access. Failure is reported with null.
unsafe impl GlobalAlloc for GuestAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.try_lock()
            .and_then(|mut heap| heap.allocate(layout))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(mut heap), Some(ptr)) = (HEAP.try_lock(), NonNull::new(ptr)) {
            // SAFETY: `GlobalAlloc`'s contract: `ptr` was allocated here with `layout`.
            unsafe { heap.deallocate(ptr, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (Some(mut heap), Some(old)) = (HEAP.try_lock(), NonNull::new(ptr)) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc`'s contract: `ptr` was allocated here with `layout`.
        if unsafe { heap.reallocate_in_place(old, layout, new_size) } {
            return ptr;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let Some(new) = heap.allocate(new_layout) else {
            return ptr::null_mut();
        };
        // SAFETY: both blocks are live, distinct (the old one is still allocated) and at
        // least `min(old size, new_size)` bytes long; then the old one is freed with its
        // layout.
        unsafe {
            ptr::copy_nonoverlapping(ptr, new.as_ptr(), layout.size().min(new_size));
            heap.deallocate(old, layout);
        }
        new.as_ptr()
    }
}

/// The body of the `_start` that [`entry!`](crate::entry) defines: validates the boot-info
/// block, gives the heap to the allocator, runs `main` and exits with its return value.
///
/// # Safety
///
/// `boot_info` must be the pointer the VMM passed in `RDI`, per the micro-guest ABI (see
/// [`BootInfo::from_ptr`]), and this must be the first thing the guest runs.
#[doc(hidden)]
pub unsafe fn __start(boot_info: *const BootInfo, main: fn(&'static BootInfo) -> u32) -> ! {
    // SAFETY: the caller passes the VMM's block, which the ABI keeps valid and unchanged.
    let boot = match unsafe { BootInfo::from_ptr(boot_info) } {
        Ok(boot) => boot,
        Err(error) => {
            crate::println!("nexus-guest: refusing the boot-info block: {error}");
            exit(EXIT_BAD_BOOT_INFO)
        }
    };
    BOOT_INFO.store(ptr::from_ref(boot).cast_mut(), Ordering::Release);
    let heap = boot.heap();
    // `from_ptr` checked that the heap range fits `usize`.
    let base = ptr::with_exposed_provenance_mut::<u8>(heap.start as usize);
    // SAFETY: the ABI gives the guest `[heap_base, heap_base + heap_size)` for its own use:
    // RAM, identity mapped, disjoint from the image, the stack and the boot structures.
    unsafe { GuestAllocator::init(base, (heap.end - heap.start) as usize) };
    let code = main(boot);
    exit(code)
}

/// The boot-info block `_start` validated; null until then (and in programs that are not
/// micro-guests).
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(ptr::null_mut());

/// Set once [`nexus`] has handed out the device.
static DEVICE_TAKEN: AtomicBool = AtomicBool::new(false);

/// The micro-guest's [`Nexus`] client, over the device and window of its boot-info block
/// (identity mapped).
///
/// Only one client may own the device and the window, so this succeeds once per VM:
/// [`Error::DeviceInUse`] after that. [`Error::NoDevice`] in a program that was not started
/// by [`entry!`](crate::entry) or in a VM without the device, [`Error::NoWindow`] without a
/// window; the errors of [`Nexus::new`] if the device cannot be brought up.
pub fn nexus() -> Result<Nexus<MmioRegisters>> {
    let boot = BOOT_INFO.load(Ordering::Acquire);
    if boot.is_null() {
        return Err(Error::NoDevice);
    }
    if DEVICE_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(Error::DeviceInUse);
    }
    // SAFETY: `BOOT_INFO` is only set by `__start`, to the block the VMM handed the guest,
    // which the ABI keeps valid and unchanged for the guest's life; its device and window are
    // this VM's, identity mapped; `DEVICE_TAKEN` makes this the only client.
    let nexus = unsafe { Nexus::from_boot_info(&*boot) };
    if nexus.is_err() {
        // No client exists: a later call may try again.
        DEVICE_TAKEN.store(false, Ordering::Release);
    }
    nexus
}

/// Set once [`net`] has handed out the network device.
#[cfg(feature = "net")]
static NET_TAKEN: AtomicBool = AtomicBool::new(false);

/// The micro-guest's network (feature `net`): the virtio-net device of its boot-info block
/// brought up, and the TCP/IP stack over it configured by the boot arguments (which are
/// returned, parsed: the S3 endpoint and credentials, the invocation port).
///
/// Succeeds once per VM: a second call fails with
/// [`NetError::NoDevice`](crate::net::NetError::NoDevice) (the device is taken), as does a
/// call in a VM without the device or in a program not started by [`entry!`](crate::entry).
#[cfg(feature = "net")]
pub fn net() -> crate::net::Result<(crate::net::GuestNet, crate::net::BootConfig)> {
    let boot = BOOT_INFO.load(Ordering::Acquire);
    if boot.is_null() || NET_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(crate::net::NetError::NoDevice);
    }
    // SAFETY: `BOOT_INFO` is only set by `__start`, to the block the VMM handed the guest,
    // which the ABI keeps valid and unchanged for the guest's life; its network device is
    // this VM's, identity mapped; `NET_TAKEN` makes this the only user.
    let net = unsafe { crate::net::from_boot_info(&*boot) };
    if net.is_err() {
        NET_TAKEN.store(false, Ordering::Release);
    }
    net
}

/// Set once the panic handler has started, to stop a panic inside it from recursing.
static PANICKING: AtomicBool = AtomicBool::new(false);

/// The body of the panic handler that [`entry!`](crate::entry) defines: prints
/// `panicked at <file:line:col>: <message>` and exits with [`EXIT_PANIC`]. Allocates nothing.
#[doc(hidden)]
pub fn __panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        exit(EXIT_PANIC);
    }
    console::finish_line();
    // The console may be locked (a panic while printing): print through a buffer of our own.
    let message = info.message();
    match info.location() {
        Some(location) => {
            console::write_fmt_unbuffered(format_args!("panicked at {location}: {message}\n"))
        }
        None => console::write_fmt_unbuffered(format_args!("panicked: {message}\n")),
    }
    exit(EXIT_PANIC)
}

/// The body of the `_Unwind_Resume` stub: never called with `panic = "abort"`.
#[doc(hidden)]
pub fn __unwind_resume() -> ! {
    crate::println!("nexus-guest: _Unwind_Resume called, but micro-guests cannot unwind");
    exit(EXIT_PANIC)
}

/// Defines a micro-guest's entry point and the runtime's required symbols.
///
/// `entry!(main)` takes a function `fn(&BootInfo) -> u32` (or `fn(&'static BootInfo) -> u32`)
/// and expands, in the guest binary, to:
///
/// - `_start`, the ELF entry point: validates the boot-info block (exit code
///   [`EXIT_BAD_BOOT_INFO`] if refused), gives the heap to the allocator, calls `main` and
///   [`exit`]s with its return value;
/// - the `#[panic_handler]`: prints `panicked at <location>: <message>` and exits with
///   [`EXIT_PANIC`];
/// - the `#[global_allocator]`, a [`GuestAllocator`];
/// - `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` (see [`mem`]);
/// - stubs for `_Unwind_Resume` and `rust_eh_personality`, which the host target's prebuilt
///   `core` and `alloc` reference.
///
/// Use it once, in a `#![no_std]`, `#![no_main]` binary built with `panic = "abort"` and
/// linked as the ABI requires (static, not PIE, at `0x10_0000`). Never in a library or a
/// `std` program: the symbols it defines would clash.
///
/// ```ignore
/// #![no_std]
/// #![no_main]
///
/// use nexus_guest::{BootInfo, println};
///
/// nexus_guest::entry!(main);
///
/// fn main(boot: &BootInfo) -> u32 {
///     println!("{} arguments", boot.argc());
///     0
/// }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The ELF entry point: the VMM starts the vCPU here with `RDI` = boot-info address.
        #[unsafe(no_mangle)]
        extern "C" fn _start(boot_info: *const $crate::BootInfo) -> ! {
            let main: fn(&'static $crate::BootInfo) -> u32 = $main;
            // SAFETY: only the VMM calls `_start`, as the micro-guest ABI's entry point, with
            // the boot-info block's address as the first argument (`RDI`).
            unsafe { $crate::rt::__start(boot_info, main) }
        }

        #[panic_handler]
        fn __nexus_guest_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::__panic(info)
        }

        #[global_allocator]
        static __NEXUS_GUEST_ALLOCATOR: $crate::rt::GuestAllocator = $crate::rt::GuestAllocator;

        /// C `memcpy`.
        ///
        /// # Safety
        ///
        /// C's contract: see `nexus_guest::rt::mem::memcpy`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the caller upholds C's contract, which is the helper's.
            unsafe { $crate::rt::mem::memcpy(dst, src, n) }
        }

        /// C `memmove`.
        ///
        /// # Safety
        ///
        /// C's contract: see `nexus_guest::rt::mem::memmove`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the caller upholds C's contract, which is the helper's.
            unsafe { $crate::rt::mem::memmove(dst, src, n) }
        }

        /// C `memset`.
        ///
        /// # Safety
        ///
        /// C's contract: see `nexus_guest::rt::mem::memset`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
            // SAFETY: the caller upholds C's contract, which is the helper's.
            unsafe { $crate::rt::mem::memset(dst, value, n) }
        }

        /// C `memcmp`.
        ///
        /// # Safety
        ///
        /// C's contract: see `nexus_guest::rt::mem::memcmp`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: the caller upholds C's contract, which is the helper's.
            unsafe { $crate::rt::mem::memcmp(a, b, n) }
        }

        /// C `bcmp`.
        ///
        /// # Safety
        ///
        /// C's contract: see `nexus_guest::rt::mem::bcmp`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: the caller upholds C's contract, which is the helper's.
            unsafe { $crate::rt::mem::bcmp(a, b, n) }
        }

        /// Referenced by the prebuilt `core`/`alloc`; never called with `panic = "abort"`.
        #[allow(non_snake_case)]
        #[unsafe(no_mangle)]
        extern "C" fn _Unwind_Resume() -> ! {
            $crate::rt::__unwind_resume()
        }

        /// Referenced by the prebuilt `core`/`alloc`; never called with `panic = "abort"`.
        #[unsafe(no_mangle)]
        extern "C" fn rust_eh_personality() {}
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Arena([u8; 8192]);

    #[test]
    fn global_allocator_allocates_reallocates_and_frees() {
        let mut arena = Box::new(Arena([0; 8192]));
        // SAFETY: the arena belongs to the (process-wide) heap for this test only; this is
        // the only test that uses `GuestAllocator`.
        unsafe { GuestAllocator::init(arena.0.as_mut_ptr(), 8192) };
        assert_eq!(GuestAllocator::stats(), (8192, 8192));
        let alloc = GuestAllocator;
        let l16 = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: every pointer is used within its layout and freed with it.
        unsafe {
            let a = alloc.alloc(l16);
            let b = alloc.alloc(l16);
            assert!(!a.is_null() && !b.is_null());
            a.write_bytes(0xAA, 16);
            // `a` is followed by `b`: realloc moves it and keeps the contents.
            let a2 = alloc.realloc(a, l16, 64);
            assert_ne!(a2, a);
            assert!(
                core::slice::from_raw_parts(a2, 16)
                    .iter()
                    .all(|&x| x == 0xAA)
            );
            // `a2` is followed by free space: realloc grows it in place.
            let a3 = alloc.realloc(a2, Layout::from_size_align(64, 8).unwrap(), 256);
            assert_eq!(a3, a2);
            assert!(
                alloc
                    .alloc(Layout::from_size_align(8192, 8).unwrap())
                    .is_null()
            );
            alloc.dealloc(a3, Layout::from_size_align(256, 8).unwrap());
            alloc.dealloc(b, l16);
        }
        assert_eq!(GuestAllocator::stats(), (8192, 8192));
        // SAFETY: no allocation from the arena is live; leave the heap empty.
        unsafe { GuestAllocator::init(core::ptr::null_mut(), 0) };
        drop(arena);
    }
}
