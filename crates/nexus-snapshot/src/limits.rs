// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bounds of the state file format, and the largest state file they allow.
//!
//! Every count and length the state file carries is bounded here; [`save`](crate::save)
//! refuses to write past a bound ([`Error::LimitExceeded`](crate::Error::LimitExceeded)) and
//! [`Snapshot::open`](crate::Snapshot::open) refuses to read past one. Since no record may
//! repeat beyond these counts, the largest valid state file follows from them
//! ([`MAX_STATE_FILE_SIZE`], about 9.2 MiB): a larger file is refused from its size alone,
//! before a byte of it is read
//! ([`Error::StateFileTooLarge`](crate::Error::StateFileTooLarge)).

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

/// Most vCPUs a snapshot holds.
pub const MAX_VCPUS: usize = 256;
/// Most MSRs one vCPU's `MSRS` record lists (KVM's `KVM_MAX_MSR_ENTRIES`).
pub const MAX_MSRS: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;
/// Most CPUID entries one vCPU's `CPUID` record lists (KVM's `KVM_MAX_CPUID_ENTRIES`).
pub const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// Most device sections a snapshot holds.
pub const MAX_DEVICES: usize = 64;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 255;
/// Largest device state (a section's bytes), in bytes.
pub const MAX_DEVICE_STATE_LEN: usize = 64 << 10;
/// Longest creator string (`META` record), in bytes.
pub const MAX_CREATOR_LEN: usize = 255;
/// Most memory regions (low RAM, high RAM, window).
pub const MAX_REGIONS: usize = 3;

/// Size of the state file's header (magic, version, flags, body length).
const HEADER: u64 = 24;
/// Size of the state file's trailing CRC32.
const TRAILER: u64 = 4;

/// A record (tag u32, length u32) with a payload of `payload` bytes.
const fn record(payload: usize) -> u64 {
    8 + payload as u64
}

/// The largest `META` record: id, creation time, creator length and the longest creator.
pub(crate) const MAX_META_RECORD: u64 = record(8 + 8 + 2 + MAX_CREATOR_LEN);
/// The largest `MEMORY` record: sizes, page size, count, three regions, file size, page count,
/// page-list CRC, reserved.
pub(crate) const MAX_MEMORY_RECORD: u64 = record(8 + 8 + 4 + 4 + 32 * MAX_REGIONS + 8 + 8 + 4 + 4);
/// The largest `VM` record: the clock, three interrupt controllers and the PIT.
pub(crate) const MAX_VM_RECORD: u64 = record(
    (record(size_of::<kvm_clock_data>())
        + 3 * record(size_of::<kvm_irqchip>())
        + record(size_of::<kvm_pit_state2>())) as usize,
);
/// The largest `VCPU` record: the id and every sub-record, lists at their longest.
pub(crate) const MAX_VCPU_RECORD: u64 = record(
    (8 + record(size_of::<kvm_regs>())
        + record(size_of::<kvm_sregs>())
        + record(crate::vcpu::FPU_SIZE)
        + record(size_of::<kvm_xsave>())
        + record(size_of::<kvm_xcrs>())
        + record(size_of::<kvm_debugregs>())
        + record(8 + MAX_MSRS * size_of::<kvm_msr_entry>())
        + record(size_of::<kvm_lapic_state>())
        + record(size_of::<kvm_vcpu_events>())
        + record(size_of::<kvm_mp_state>())
        + record(8 + MAX_CPUID_ENTRIES * size_of::<kvm_cpuid_entry2>())
        + record(4)) as usize,
);
/// The largest `DEVICE` record: name length, reserved, version, the longest name and state.
pub(crate) const MAX_DEVICE_RECORD: u64 =
    record(2 + 2 + 4 + MAX_DEVICE_NAME_LEN + MAX_DEVICE_STATE_LEN);

/// The largest state file the format allows (9,602,165 bytes): header, one `META`, `MEMORY`
/// and `VM` record each, [`MAX_VCPUS`] `VCPU` records and [`MAX_DEVICES`] `DEVICE` records at
/// their largest, and the CRC32.
pub const MAX_STATE_FILE_SIZE: u64 = HEADER
    + MAX_META_RECORD
    + MAX_MEMORY_RECORD
    + MAX_VM_RECORD
    + MAX_VCPUS as u64 * MAX_VCPU_RECORD
    + MAX_DEVICES as u64 * MAX_DEVICE_RECORD
    + TRAILER;
