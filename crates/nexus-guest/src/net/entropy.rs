// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Seeds for the stack's random numbers (TCP initial sequence numbers, ephemeral ports).
//!
//! VMs restored from one snapshot share their memory, their stack's generator included:
//! each must [`reseed`](super::NetStack::reseed) after the restore, or they would all pick
//! the same ports and sequence numbers. [`hardware_seed`] draws from `RDRAND` (when the CPU
//! has it; it runs at CPL 3) and the time-stamp counter, which differ between restored VMs;
//! the boot arguments may add a seed of the VMM's (`net.seed`).

use super::link::read_tsc;

/// A seed from the CPU: `RDRAND` if it has it, mixed with the time-stamp counter, mixed with
/// `extra`.
pub fn hardware_seed(extra: u64) -> u64 {
    let mut seed = mix(extra, read_tsc());
    if let Some(random) = rdrand() {
        seed = mix(seed, random);
    }
    mix(seed, read_tsc())
}

/// Mixes two words (SplitMix64's finaliser over their combination): a change of any input
/// bit changes about half the output bits.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .rotate_left(23)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small generator for the stack's own choices (ephemeral ports): SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0, 0)
    }
}

/// A 64-bit `RDRAND` value, if the CPU has the instruction and it delivers within a few
/// tries.
fn rdrand() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID.01H:ECX bit 30: RDRAND.
        let leaf = core::arch::x86_64::__cpuid(1);
        if leaf.ecx & (1 << 30) == 0 {
            return None;
        }
        for _ in 0..10 {
            // SAFETY: CPUID says the CPU has RDRAND (checked above), the one requirement of
            // the `rdrand` target feature.
            if let Some(value) = unsafe { rdrand_step() } {
                return Some(value);
            }
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// One `RDRAND` attempt.
///
/// # Safety
///
/// The CPU must support `RDRAND`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "rdrand")]
unsafe fn rdrand_step() -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the caller guarantees the instruction exists; it writes only `value`. (The
    // intrinsic is safe to call inside a function with the feature on newer compilers.)
    #[allow(unused_unsafe)]
    let ok = unsafe { core::arch::x86_64::_rdrand64_step(&mut value) };
    (ok == 1).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_and_mixing_spreads() {
        let a = hardware_seed(0);
        let b = hardware_seed(0);
        assert_ne!(a, b, "the TSC (and RDRAND) change between calls");
        assert_ne!(mix(1, 2), mix(1, 3));
        assert_ne!(mix(1, 2), mix(2, 1));
        let flipped = (mix(7, 0) ^ mix(7, 1)).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped} bits changed");
        let mut g = SplitMix::new(5);
        let mut h = SplitMix::new(5);
        assert_eq!(g.next_u64(), h.next_u64());
        assert_ne!(g.next_u64(), SplitMix::new(6).next_u64());
    }
}
