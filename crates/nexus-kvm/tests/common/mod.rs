// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the KVM tests share: hand-assembled micro-guests.

use nexus_kvm::layout::IMAGE_BASE;

/// A minimal static ELF with one RX segment at `addr` holding `code` (entry = `addr`).
pub fn elf(code: &[u8]) -> Vec<u8> {
    let addr = IMAGE_BASE;
    let mut b = vec![0u8; 120];
    b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&addr.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    b[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
    b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
    b[ph + 16..ph + 24].copy_from_slice(&addr.to_le_bytes());
    b[ph + 24..ph + 32].copy_from_slice(&addr.to_le_bytes());
    b[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b.extend_from_slice(code);
    b
}
