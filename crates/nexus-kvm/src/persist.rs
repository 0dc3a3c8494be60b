// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Save and restore of device state: the [`Persist`] trait every device implements in its own
//! crate.
//!
//! It lives here, at the bottom of the stack, so that any device crate (this one's serial
//! console, `nexus-io`, `nexus-net`) can implement it without depending on the snapshot
//! engine; `nexus-snapshot` re-exports it and stores what it produces as one named section
//! per device ([`Persist::SECTION`]).
//!
//! The serial console's section, `"serial"` (version 1), is its 8250 registers and input
//! FIFO:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 9 | divisor low, divisor high, IER, IIR, LCR, LSR, MCR, MSR, scratch (one byte each) |
//! | 9 | 4 | FIFO length `n` (u32 LE, at most 64) |
//! | 13 | `n` | FIFO bytes, oldest first |

use std::io;

use vm_superio::serial::SerialState;

use crate::serial::{Console, SerialDevice, SerialIrq};

/// Save and restore of one device's state.
///
/// The bytes are the device's own format: a snapshot stores them opaquely, in a section named
/// [`Persist::SECTION`] with [`Persist::STATE_VERSION`] beside them, so that a device can change
/// its format without changing the snapshot's.
pub trait Persist: Sized {
    /// The device's section name in a snapshot, unique among the devices of a VM. Part of the
    /// snapshot format: changing it makes existing snapshots unreadable.
    const SECTION: &'static str;
    /// Version of the format [`Persist::save_state`] writes.
    const STATE_VERSION: u32;
    /// What restoring needs besides the saved bytes (an output, an interrupt line, memory…).
    type RestoreArgs;
    /// Why restoring failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The device's state.
    fn save_state(&self) -> Vec<u8>;

    /// A device rebuilt from `bytes`, written by `save_state` with format `version`.
    fn restore_state(
        args: Self::RestoreArgs,
        version: u32,
        bytes: &[u8],
    ) -> std::result::Result<Self, Self::Error>;
}

/// Bytes of the serial section before the FIFO.
const SERIAL_FIXED_LEN: usize = 13;

impl Persist for SerialDevice {
    const SECTION: &'static str = "serial";
    const STATE_VERSION: u32 = 1;
    type RestoreArgs = (Console, SerialIrq);
    type Error = io::Error;

    fn save_state(&self) -> Vec<u8> {
        let s = self.state();
        let mut out = vec![
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ];
        out.extend_from_slice(&(s.in_buffer.len() as u32).to_le_bytes());
        out.extend_from_slice(&s.in_buffer);
        out
    }

    fn restore_state(
        (console, irq): (Console, SerialIrq),
        version: u32,
        bytes: &[u8],
    ) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        if version != Self::STATE_VERSION {
            return Err(invalid(format!(
                "serial state version {version} is not supported (only {})",
                Self::STATE_VERSION
            )));
        }
        let Some((fixed, fifo)) = bytes.split_first_chunk::<SERIAL_FIXED_LEN>() else {
            return Err(invalid(format!(
                "serial state is {} bytes, fewer than {SERIAL_FIXED_LEN}",
                bytes.len()
            )));
        };
        let [
            dll,
            dlh,
            ier,
            iir,
            lcr,
            lsr,
            mcr,
            msr,
            scratch,
            l0,
            l1,
            l2,
            l3,
        ] = *fixed;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if fifo.len() != len {
            return Err(invalid(format!(
                "serial state is {} bytes; its FIFO length says {}",
                bytes.len(),
                SERIAL_FIXED_LEN + len
            )));
        }
        let state = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: fifo.to_vec(),
        };
        SerialDevice::from_state(&state, console, irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;

    #[test]
    fn serial_state_round_trips() {
        let mut dev = SerialDevice::new(Console::sink(), SerialIrq::default());
        dev.write(7, &[0x5a]); // scratch register
        dev.write(3, &[0x80]); // DLAB on
        dev.write(0, &[0x0c]); // divisor low
        dev.write(3, &[0x03]); // DLAB off, 8N1
        dev.enqueue_input(b"abc").unwrap();
        let bytes = dev.save_state();
        assert_eq!(bytes.len(), 16);
        let restore = |version, bytes: &[u8]| {
            SerialDevice::restore_state((Console::sink(), SerialIrq::default()), version, bytes)
        };
        let mut back = restore(SerialDevice::STATE_VERSION, &bytes).unwrap();
        let s = back.state();
        assert_eq!(
            (s.scratch, s.baud_divisor_low, s.line_control),
            (0x5a, 0x0c, 0x03)
        );
        let mut b = [0u8];
        back.read(0, &mut b);
        assert_eq!(b[0], b'a');

        assert!(restore(SerialDevice::STATE_VERSION, &bytes[..bytes.len() - 1]).is_err());
        assert!(restore(SerialDevice::STATE_VERSION, &bytes[..12]).is_err());
        assert!(restore(SerialDevice::STATE_VERSION + 1, &bytes).is_err());
    }
}
