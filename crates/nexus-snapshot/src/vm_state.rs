//! VM-wide KVM state: the clock and, when the VM has them, the in-kernel interrupt
//! controllers and PIT.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;

use crate::codec::{DecodeError, DecodeResult, Decoder, Encoder, raw_from};
use crate::{Error, Result};

/// The in-kernel interrupt controllers and PIT.
#[derive(Clone, Copy)]
pub struct IrqchipState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The PIT (8254), when KVM let us read it.
    pub pit: Option<kvm_pit_state2>,
}

impl std::fmt::Debug for IrqchipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqchipState")
            .field("pit", &self.pit.is_some())
            .finish_non_exhaustive()
    }
}

/// VM-wide KVM state.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmState {
    /// The kvmclock, when KVM let us read it.
    pub clock: Option<kvm_clock_data>,
    /// The interrupt controllers, when the VM has them.
    pub irqchip: Option<IrqchipState>,
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

impl VmState {
    /// Captures the state of a paused VM; `irqchip` says whether it has in-kernel interrupt
    /// controllers.
    pub fn capture(fd: &VmFd, irqchip: bool) -> Result<Self> {
        let irqchip = if irqchip {
            let pit = match fd.get_pit2() {
                Ok(p) => Some(p),
                Err(e) => {
                    log::warn!("KVM refused to read the PIT ({e}); it is not saved");
                    None
                }
            };
            Some(IrqchipState {
                pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
                pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
                ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC)?,
                pit,
            })
        } else {
            None
        };
        let clock = match fd.get_clock() {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("KVM refused to read the VM clock ({e}); it is not saved");
                None
            }
        };
        Ok(VmState { clock, irqchip })
    }

    /// Restores the interrupt controllers and PIT (before the vCPUs are set up).
    pub fn apply_irqchip(&self, fd: &VmFd) -> Result<()> {
        if let Some(chips) = &self.irqchip {
            for chip in [&chips.pic_master, &chips.pic_slave, &chips.ioapic] {
                fd.set_irqchip(chip)
                    .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
            }
            if let Some(pit) = &chips.pit {
                fd.set_pit2(pit).map_err(Error::kvm("KVM_SET_PIT2"))?;
            }
        }
        Ok(())
    }

    /// Restores the clock (last, just before the vCPUs resume).
    pub fn apply_clock(&self, fd: &VmFd) -> Result<()> {
        if let Some(clock) = &self.clock {
            // Only the clock value is restored; the flags describe how it was read.
            let clock = kvm_clock_data {
                clock: clock.clock,
                ..Default::default()
            };
            fd.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))?;
        }
        Ok(())
    }
}

// Sub-record tags inside the VM record.
const CLOCK: u32 = 1;
const PIC_MASTER: u32 = 2;
const PIC_SLAVE: u32 = 3;
const IOAPIC: u32 = 4;
const PIT: u32 = 5;

impl VmState {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        if let Some(c) = &self.clock {
            e.record(CLOCK, |e| e.raw(c));
        }
        if let Some(chips) = &self.irqchip {
            e.record(PIC_MASTER, |e| e.raw(&chips.pic_master));
            e.record(PIC_SLAVE, |e| e.raw(&chips.pic_slave));
            e.record(IOAPIC, |e| e.raw(&chips.ioapic));
            if let Some(pit) = &chips.pit {
                e.record(PIT, |e| e.raw(pit));
            }
        }
    }

    pub(crate) fn decode(payload: &[u8]) -> DecodeResult<Self> {
        let mut d = Decoder::new(payload, "the VM record");
        let mut state = VmState::default();
        let mut chips: [Option<kvm_irqchip>; 3] = [None; 3];
        let mut pit = None;
        while !d.is_empty() {
            let (tag, p) = d.record()?;
            let dup = || {
                DecodeError(format!(
                    "the VM record has a duplicate sub-record (tag {tag})"
                ))
            };
            match tag {
                CLOCK if state.clock.is_none() => {
                    state.clock = Some(raw_from(p, "the CLOCK record")?)
                }
                PIC_MASTER | PIC_SLAVE | IOAPIC if chips[(tag - PIC_MASTER) as usize].is_none() => {
                    let chip: kvm_irqchip = raw_from(p, "an IRQCHIP record")?;
                    if chip.chip_id != tag - PIC_MASTER {
                        return Err(DecodeError(format!(
                            "the IRQCHIP record with tag {tag} holds chip {}",
                            chip.chip_id
                        )));
                    }
                    chips[(tag - PIC_MASTER) as usize] = Some(chip);
                }
                PIT if pit.is_none() => pit = Some(raw_from(p, "the PIT record")?),
                CLOCK | PIC_MASTER | PIC_SLAVE | IOAPIC | PIT => return Err(dup()),
                other => {
                    return Err(DecodeError(format!(
                        "the VM record has an unknown sub-record (tag {other})"
                    )));
                }
            }
        }
        state.irqchip = match chips {
            [Some(pic_master), Some(pic_slave), Some(ioapic)] => Some(IrqchipState {
                pic_master,
                pic_slave,
                ioapic,
                pit,
            }),
            [None, None, None] if pit.is_none() => None,
            _ => {
                return Err(DecodeError(
                    "the VM record has only some of the interrupt controllers".into(),
                ));
            }
        };
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn vm_state_round_trips() {
        // chip_id at 0, then the 512-byte union at 8; mark byte 5 of the union.
        let chip = |id: u32| {
            let mut bytes = vec![0u8; std::mem::size_of::<kvm_irqchip>()];
            bytes[..4].copy_from_slice(&id.to_le_bytes());
            bytes[13] = id as u8 + 1;
            kvm_irqchip::read_from_bytes(&bytes).unwrap()
        };
        let state = VmState {
            clock: Some(kvm_clock_data {
                clock: 77,
                ..Default::default()
            }),
            irqchip: Some(IrqchipState {
                pic_master: chip(0),
                pic_slave: chip(1),
                ioapic: chip(2),
                pit: Some(kvm_pit_state2::default()),
            }),
        };
        let mut e = Encoder::default();
        state.encode(&mut e);
        let back = VmState::decode(&e.buf).unwrap();
        assert_eq!(back.clock, state.clock);
        let chips = back.irqchip.unwrap();
        assert_eq!(chips.ioapic.as_bytes()[13], 3);
        assert!(chips.pit.is_some());

        let mut partial = Encoder::default();
        partial.record(PIC_MASTER, |e| e.raw(&chip(0)));
        assert!(VmState::decode(&partial.buf).is_err());
        let mut wrong = Encoder::default();
        wrong.record(PIC_SLAVE, |e| e.raw(&chip(0)));
        assert!(VmState::decode(&wrong.buf).is_err());
        assert!(VmState::decode(&[]).unwrap().irqchip.is_none());
    }
}
