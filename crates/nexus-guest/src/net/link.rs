// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the TCP/IP stack needs of its surroundings: a [`Link`] (a smoltcp device that can
//! also ring its doorbells and block) and a [`Clock`].

use smoltcp::time::Instant;

use super::driver::VirtioNet;
use super::error::Result;
use crate::mmio::Registers;

/// A network device the stack polls: smoltcp's [`Device`](smoltcp::phy::Device), plus the
/// two things an executor-free loop needs.
pub trait Link: smoltcp::phy::Device {
    /// Called after every poll of the stack: announces to the device what the poll queued
    /// (frames to send, receive buffers given back).
    fn flush(&mut self) -> Result<()>;

    /// Blocks until the device may have something new (a received frame, a completed
    /// transmission) or a timeout of the device's passes; returns at once when frames are
    /// already waiting.
    fn wait(&mut self) -> Result<()>;

    /// Before a [`wait`](Self::wait): the longest the stack may sleep, in milliseconds, before
    /// one of its timers is due (`None`: none is). A link that cannot shorten its waits
    /// ignores it (the default).
    fn hint_wait(&mut self, within_ms: Option<u64>) {
        let _ = within_ms;
    }

    /// The link's MAC address.
    fn mac(&self) -> [u8; 6];
}

impl<R: Registers> Link for VirtioNet<R> {
    fn flush(&mut self) -> Result<()> {
        VirtioNet::flush(self)
    }

    fn wait(&mut self) -> Result<()> {
        VirtioNet::wait(self)
    }

    fn hint_wait(&mut self, within_ms: Option<u64>) {
        VirtioNet::hint_wait(self, within_ms);
    }

    fn mac(&self) -> [u8; 6] {
        self.info().mac
    }
}

/// Time, for the stack's timers and for request signing.
pub trait Clock {
    /// Monotonic time.
    fn now(&self) -> Instant;

    /// Wall-clock time, Unix milliseconds, if known.
    fn unix_time_ms(&self) -> Option<u64>;
}

/// The time-stamp counter as a clock (micro-guests: `RDTSC` runs at CPL 3, and the TSC keeps
/// counting while the vCPU sleeps in a WAIT read).
///
/// The guest cannot measure the TSC's frequency (CPUID leaves 0x15/0x16 are empty under
/// KVM here, and there is no other timer to calibrate against): the VMM gives it in the boot
/// arguments (`net.tsc_khz`), as it gives the wall-clock time at boot (`net.time`).
#[derive(Debug, Clone, Copy)]
pub struct TscClock {
    khz: u64,
    start: u64,
    unix_ms_at_start: Option<u64>,
}

impl TscClock {
    /// What is assumed without `net.tsc_khz`: 2 GHz. A wrong frequency only stretches or
    /// shrinks the stack's timers (retransmission, timeouts).
    pub const DEFAULT_KHZ: u64 = 2_000_000;

    /// A clock counting from now, with the TSC at `khz` kHz and, if known, the wall clock
    /// now at `unix_ms`.
    pub fn new(khz: u64, unix_ms: Option<u64>) -> Self {
        Self {
            khz: khz.max(1),
            start: read_tsc(),
            unix_ms_at_start: unix_ms,
        }
    }

    /// Microseconds since the clock was made.
    fn elapsed_us(&self) -> u64 {
        let ticks = read_tsc().wrapping_sub(self.start);
        // ticks / (khz / 1000) without overflow for centuries of ticks.
        (u128::from(ticks) * 1000 / u128::from(self.khz)) as u64
    }
}

impl Clock for TscClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.elapsed_us() as i64)
    }

    fn unix_time_ms(&self) -> Option<u64> {
        self.unix_ms_at_start
            .map(|start| start + self.elapsed_us() / 1000)
    }
}

/// The time-stamp counter (0 on other architectures).
pub fn read_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `RDTSC` only reads the counter; the VMM leaves CR4.TSD clear, so it runs at
        // CPL 3, and every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}
