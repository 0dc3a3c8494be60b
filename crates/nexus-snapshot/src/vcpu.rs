//! A vCPU's saved state: capture from a stopped vCPU, apply to a fresh one, and the encoding
//! of the state file's `VCPU` record.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuFd, VmFd};
use nexus_kvm::Vcpu;

use crate::codec::{
    DecodeError, DecodeResult, Decoder, Encoder, raw_from, raw_list, raw_list_from,
};
use crate::limits::{MAX_CPUID_ENTRIES, MAX_MSRS};
use crate::{Error, Result};

/// The MSRs a snapshot saves, in the order they are restored (`IA32_TSC` before the TSC
/// deadline). Those KVM refuses to read are skipped at save time (and logged).
pub const SAVED_MSRS: &[u32] = &[
    0x0000_0010, // IA32_TSC
    0x0000_003b, // IA32_TSC_ADJUST
    0x0000_0174, // IA32_SYSENTER_CS
    0x0000_0175, // IA32_SYSENTER_ESP
    0x0000_0176, // IA32_SYSENTER_EIP
    0x0000_01a0, // IA32_MISC_ENABLE
    0x0000_0277, // IA32_PAT
    0x0000_02ff, // IA32_MTRR_DEF_TYPE
    0x0000_06e0, // IA32_TSC_DEADLINE
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // KVM wall clock
    0x4b56_4d01, // KVM system time
    0x4b56_4d02, // KVM async PF
    0x4b56_4d03, // KVM steal time
    0x4b56_4d04, // KVM PV EOI
];

/// Everything KVM holds about one vCPU. Optional parts are `None` when KVM refused to read
/// them at save time (this is logged); a part present in a snapshot must be accepted again on
/// restore.
#[derive(Debug)]
pub struct VcpuState {
    /// The vCPU index.
    pub id: u64,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// Legacy FPU and SSE state (also inside XSAVE when that is available).
    pub fpu: Option<kvm_fpu>,
    /// The XSAVE area (4096 bytes).
    pub xsave: Option<Box<kvm_xsave>>,
    /// Extended control registers (XCR0).
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debug_regs: Option<kvm_debugregs>,
    /// Model-specific registers that KVM let us read.
    pub msrs: Vec<kvm_msr_entry>,
    /// The local APIC, when the VM has an in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    /// Pending exceptions, interrupts, NMIs and the interrupt shadow.
    pub events: Option<kvm_vcpu_events>,
    /// Multiprocessing state (runnable, halted, …).
    pub mp_state: kvm_mp_state,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// TSC frequency in kHz.
    pub tsc_khz: Option<u32>,
}

fn optional<T>(what: &str, id: u64, r: std::result::Result<T, kvm_ioctls::Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("vCPU {id}: KVM refused to read {what} ({e}); it is not saved");
            None
        }
    }
}

/// Reads the MSRs of [`SAVED_MSRS`], skipping those KVM refuses. (`KVM_GET_MSR_INDEX_LIST` is
/// not consulted: PVM, for one, leaves EFER, FS/GS base and TSC_AUX out of it and yet reads and
/// writes them.)
fn read_msrs(fd: &VcpuFd, id: u64) -> Result<Vec<kvm_msr_entry>> {
    let mut wanted: Vec<u32> = SAVED_MSRS.to_vec();
    let mut saved = Vec::with_capacity(wanted.len());
    // KVM_GET_MSRS stops at the first MSR it refuses: keep what came before, skip that one,
    // and go on with the rest.
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::Kvm {
            op: "KVM_GET_MSRS (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        if read < wanted.len() {
            log::debug!(
                "vCPU {id}: KVM refused to read MSR {:#x}; it is not saved",
                wanted[read]
            );
            wanted.drain(..=read);
        } else {
            wanted.clear();
        }
    }
    Ok(saved)
}

impl VcpuState {
    /// Captures the state of a stopped vCPU. Any port or MMIO access KVM is still completing is
    /// finished first ([`Vcpu::complete_pending_io`]), so a restored guest does not repeat it.
    pub fn capture(vcpu: &mut Vcpu, irqchip: bool) -> Result<Self> {
        vcpu.complete_pending_io().map_err(Error::Vm)?;
        let id = vcpu.id();
        let fd = vcpu.fd();
        let mp_state = fd.get_mp_state().map_err(Error::kvm("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let fpu = optional("the FPU state", id, fd.get_fpu());
        let xsave = optional("the XSAVE area", id, fd.get_xsave()).map(Box::new);
        let xcrs = optional("the XCRs", id, fd.get_xcrs());
        let debug_regs = optional("the debug registers", id, fd.get_debug_regs());
        let lapic = if irqchip {
            Some(fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?)
        } else {
            None
        };
        let msrs = read_msrs(fd, id)?;
        let events = optional("the vCPU events", id, fd.get_vcpu_events());
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let tsc_khz = optional("the TSC frequency", id, fd.get_tsc_khz());
        Ok(VcpuState {
            id,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debug_regs,
            msrs,
            lapic,
            events,
            mp_state,
            cpuid,
            tsc_khz,
        })
    }

    /// Applies this state to a freshly created vCPU (never run) of the VM `vm`.
    pub fn apply(&self, vm: &VmFd, vcpu: &Vcpu) -> Result<()> {
        let fd = vcpu.fd();
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| Error::Kvm {
            op: "KVM_SET_CPUID2 (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(Error::kvm("KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        if let Some(fpu) = &self.fpu {
            fd.set_fpu(fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
        }
        if let Some(xsave) = &self.xsave {
            crate::sys::set_xsave(vm, fd, xsave).map_err(Error::kvm("KVM_SET_XSAVE"))?;
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
        }
        if let Some(dr) = &self.debug_regs {
            fd.set_debug_regs(dr)
                .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        }
        if let Some(lapic) = &self.lapic {
            fd.set_lapic(lapic).map_err(Error::kvm("KVM_SET_LAPIC"))?;
        }
        if !self.msrs.is_empty() {
            let msrs = Msrs::from_entries(&self.msrs).map_err(|_| Error::Kvm {
                op: "KVM_SET_MSRS (too many entries)",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let set = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
            if set < self.msrs.len() {
                return Err(Error::MsrRefused {
                    vcpu: self.id,
                    index: self.msrs[set].index,
                });
            }
        }
        if let Some(events) = &self.events {
            fd.set_vcpu_events(events)
                .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        }
        Ok(())
    }
}

// Sub-record tags inside a VCPU record.
const REGS: u32 = 1;
const SREGS: u32 = 2;
const FPU: u32 = 3;
const XSAVE: u32 = 4;
const XCRS: u32 = 5;
const DEBUGREGS: u32 = 6;
const MSRS: u32 = 7;
const LAPIC: u32 = 8;
const EVENTS: u32 = 9;
const MP_STATE: u32 = 10;
const CPUID: u32 = 11;
const TSC_KHZ: u32 = 12;

/// Size of the encoded `kvm_fpu`.
pub(crate) const FPU_SIZE: usize = 416;

fn encode_fpu(e: &mut Encoder, f: &kvm_fpu) {
    for r in &f.fpr {
        e.bytes(r);
    }
    e.u16(f.fcw);
    e.u16(f.fsw);
    e.bytes(&[f.ftwx, f.pad1]);
    e.u16(f.last_opcode);
    e.u64(f.last_ip);
    e.u64(f.last_dp);
    for r in &f.xmm {
        e.bytes(r);
    }
    e.u32(f.mxcsr);
    e.u32(f.pad2);
}

fn decode_fpu(bytes: &[u8]) -> DecodeResult<kvm_fpu> {
    if bytes.len() != FPU_SIZE {
        return Err(DecodeError(format!(
            "the FPU record is {} bytes; {FPU_SIZE} were expected",
            bytes.len()
        )));
    }
    let mut d = Decoder::new(bytes, "the FPU record");
    let mut f = kvm_fpu::default();
    for r in f.fpr.iter_mut() {
        r.copy_from_slice(d.take(16)?);
    }
    f.fcw = d.u16()?;
    f.fsw = d.u16()?;
    let b = d.take(2)?;
    (f.ftwx, f.pad1) = (b[0], b[1]);
    f.last_opcode = d.u16()?;
    f.last_ip = d.u64()?;
    f.last_dp = d.u64()?;
    for r in f.xmm.iter_mut() {
        r.copy_from_slice(d.take(16)?);
    }
    f.mxcsr = d.u32()?;
    f.pad2 = d.u32()?;
    d.finish()?;
    Ok(f)
}

impl VcpuState {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id);
        e.record(REGS, |e| e.raw(&self.regs));
        e.record(SREGS, |e| e.raw(&self.sregs));
        if let Some(f) = &self.fpu {
            e.record(FPU, |e| encode_fpu(e, f));
        }
        if let Some(x) = &self.xsave {
            e.record(XSAVE, |e| e.raw(&**x));
        }
        if let Some(x) = &self.xcrs {
            e.record(XCRS, |e| e.raw(x));
        }
        if let Some(x) = &self.debug_regs {
            e.record(DEBUGREGS, |e| e.raw(x));
        }
        e.record(MSRS, |e| raw_list(e, &self.msrs));
        if let Some(x) = &self.lapic {
            e.record(LAPIC, |e| e.raw(x));
        }
        if let Some(x) = &self.events {
            e.record(EVENTS, |e| e.raw(x));
        }
        e.record(MP_STATE, |e| e.raw(&self.mp_state));
        e.record(CPUID, |e| raw_list(e, &self.cpuid));
        if let Some(khz) = self.tsc_khz {
            e.record(TSC_KHZ, |e| e.u32(khz));
        }
    }

    pub(crate) fn decode(payload: &[u8]) -> DecodeResult<Self> {
        let mut d = Decoder::new(payload, "a VCPU record");
        let id = d.u64()?;
        let mut regs = None;
        let mut sregs = None;
        let mut mp_state = None;
        let mut cpuid = None;
        let mut s = VcpuState {
            id,
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            fpu: None,
            xsave: None,
            xcrs: None,
            debug_regs: None,
            msrs: Vec::new(),
            lapic: None,
            events: None,
            mp_state: kvm_mp_state::default(),
            cpuid: Vec::new(),
            tsc_khz: None,
        };
        let mut seen = 0u32;
        while !d.is_empty() {
            let (tag, p) = d.record()?;
            if tag < 32 && seen & (1 << tag) != 0 {
                return Err(DecodeError(format!(
                    "vCPU {id} has a duplicate sub-record (tag {tag})"
                )));
            }
            seen |= 1u32.checked_shl(tag).unwrap_or(0);
            match tag {
                REGS => regs = Some(raw_from(p, "the REGS record")?),
                SREGS => sregs = Some(raw_from(p, "the SREGS record")?),
                FPU => s.fpu = Some(decode_fpu(p)?),
                XSAVE => s.xsave = Some(Box::new(raw_from(p, "the XSAVE record")?)),
                XCRS => s.xcrs = Some(raw_from(p, "the XCRS record")?),
                DEBUGREGS => s.debug_regs = Some(raw_from(p, "the DEBUGREGS record")?),
                MSRS => s.msrs = raw_list_from(p, "the MSRS record", MAX_MSRS)?,
                LAPIC => s.lapic = Some(raw_from(p, "the LAPIC record")?),
                EVENTS => s.events = Some(raw_from(p, "the EVENTS record")?),
                MP_STATE => mp_state = Some(raw_from(p, "the MP_STATE record")?),
                CPUID => cpuid = Some(raw_list_from(p, "the CPUID record", MAX_CPUID_ENTRIES)?),
                TSC_KHZ => {
                    let mut t = Decoder::new(p, "the TSC_KHZ record");
                    s.tsc_khz = Some(t.u32()?);
                    t.finish()?;
                }
                other => {
                    return Err(DecodeError(format!(
                        "vCPU {id} has an unknown sub-record (tag {other})"
                    )));
                }
            }
        }
        let missing = |what: &str| DecodeError(format!("vCPU {id} has no {what} record"));
        s.regs = regs.ok_or_else(|| missing("REGS"))?;
        s.sregs = sregs.ok_or_else(|| missing("SREGS"))?;
        s.mp_state = mp_state.ok_or_else(|| missing("MP_STATE"))?;
        s.cpuid = cpuid.ok_or_else(|| missing("CPUID"))?;
        Ok(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(id: u64) -> VcpuState {
        let mut xsave = Box::new(kvm_xsave::default());
        xsave.region[3] = 0xdead_beef;
        VcpuState {
            id,
            regs: kvm_regs {
                rip: 0x20_0000 + id,
                rax: 42,
                rflags: 0x3002,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr3: 0x9000,
                efer: 0x500,
                ..Default::default()
            },
            fpu: Some(kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                xmm: [[7; 16]; 16],
                last_ip: 9,
                ..Default::default()
            }),
            xsave: Some(xsave),
            xcrs: Some(kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            }),
            debug_regs: None,
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 123,
                ..Default::default()
            }],
            lapic: None,
            events: Some(kvm_vcpu_events::default()),
            mp_state: kvm_mp_state { mp_state: 0 },
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806c1,
                ..Default::default()
            }],
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn kernel_structures_have_the_documented_sizes() {
        use std::mem::size_of;
        // docs/snapshot-format.md gives these sizes; a bindings change must not alter them.
        assert_eq!(size_of::<kvm_regs>(), 144);
        assert_eq!(size_of::<kvm_sregs>(), 312);
        assert_eq!(size_of::<kvm_xsave>(), 4096);
        assert_eq!(size_of::<kvm_xcrs>(), 392);
        assert_eq!(size_of::<kvm_debugregs>(), 128);
        assert_eq!(size_of::<kvm_msr_entry>(), 16);
        assert_eq!(size_of::<kvm_lapic_state>(), 1024);
        assert_eq!(size_of::<kvm_vcpu_events>(), 64);
        assert_eq!(size_of::<kvm_mp_state>(), 4);
        assert_eq!(size_of::<kvm_cpuid_entry2>(), 40);
        assert_eq!(size_of::<kvm_bindings::kvm_clock_data>(), 48);
        assert_eq!(size_of::<kvm_bindings::kvm_irqchip>(), 520);
        assert_eq!(size_of::<kvm_bindings::kvm_pit_state2>(), 112);
    }

    #[test]
    fn fpu_encoding_is_416_bytes_and_round_trips() {
        let f = sample(0).fpu.unwrap();
        let mut e = Encoder::default();
        encode_fpu(&mut e, &f);
        assert_eq!(e.buf.len(), FPU_SIZE);
        assert_eq!(e.buf.len(), std::mem::size_of::<kvm_fpu>());
        assert_eq!(decode_fpu(&e.buf).unwrap(), f);
        assert!(decode_fpu(&e.buf[1..]).is_err());
    }

    #[test]
    fn vcpu_state_round_trips() {
        let s = sample(1);
        let mut e = Encoder::default();
        s.encode(&mut e);
        let back = VcpuState::decode(&e.buf).unwrap();
        assert_eq!(back.regs, s.regs);
        assert_eq!(back.sregs, s.sregs);
        assert_eq!(back.fpu, s.fpu);
        assert_eq!(back.xsave.unwrap().region, s.xsave.unwrap().region);
        assert_eq!(back.xcrs, s.xcrs);
        assert_eq!(back.msrs, s.msrs);
        assert_eq!(back.cpuid, s.cpuid);
        assert_eq!(back.tsc_khz, s.tsc_khz);
        assert!(back.lapic.is_none() && back.debug_regs.is_none());
    }

    #[test]
    fn missing_or_unknown_sub_records_are_refused() {
        let mut e = Encoder::default();
        e.u64(0);
        e.record(REGS, |e| e.raw(&kvm_regs::default()));
        assert!(VcpuState::decode(&e.buf).unwrap_err().0.contains("SREGS"));
        e.record(99, |_| {});
        assert!(VcpuState::decode(&e.buf).is_err());
        let mut dup = Encoder::default();
        dup.u64(0);
        dup.record(REGS, |e| e.raw(&kvm_regs::default()));
        dup.record(REGS, |e| e.raw(&kvm_regs::default()));
        assert!(
            VcpuState::decode(&dup.buf)
                .unwrap_err()
                .0
                .contains("duplicate")
        );
    }
}
