//! [`Persist`] for the devices of `nexus-kvm`, and the devices of a restored micro-VM.
//!
//! The serial console's section (version 1) is its 8250 registers and input FIFO:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 9 | divisor low, divisor high, IER, IIR, LCR, LSR, MCR, MSR, scratch (one byte each) |
//! | 9 | 4 | FIFO length `n` (u32 LE, at most 64) |
//! | 13 | `n` | FIFO bytes, oldest first |

use std::io;
use std::sync::{Arc, Mutex};

use nexus_kvm::layout::{CONSOLE_WRITE_PORT, EXIT_PORT, SERIAL_PORT, SERIAL_PORT_LEN};
use nexus_kvm::micro::MicroGuestPorts;
use nexus_kvm::serial::{Console, SerialDevice, SerialIrq};
use nexus_kvm::{BusKind, Vm};
use vm_superio::serial::SerialState;

use crate::persist::{DeviceState, Persist};
use crate::{Error, Result};

/// The name of the serial console's section.
pub const SERIAL: &str = "serial";

impl Persist for SerialDevice {
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
        if bytes.len() < 13 {
            return Err(invalid(format!(
                "serial state is {} bytes, fewer than 13",
                bytes.len()
            )));
        }
        let len = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
        if bytes.len() != 13 + len {
            return Err(invalid(format!(
                "serial state is {} bytes; its FIFO length says {}",
                bytes.len(),
                13 + len
            )));
        }
        let state = SerialState {
            baud_divisor_low: bytes[0],
            baud_divisor_high: bytes[1],
            interrupt_enable: bytes[2],
            interrupt_identification: bytes[3],
            line_control: bytes[4],
            line_status: bytes[5],
            modem_control: bytes[6],
            modem_status: bytes[7],
            scratch: bytes[8],
            in_buffer: bytes[13..].to_vec(),
        };
        SerialDevice::from_state(&state, console, irq)
    }
}

/// Places the devices of a micro-VM on a restored VM: the serial console (restored from its
/// [`SERIAL`] section) at `0x3F8` and the micro-guest exit and console-write ports, both
/// writing to `console`. Returns the serial device.
pub fn attach_micro_devices(
    vm: &Vm,
    devices: &[DeviceState],
    console: Console,
) -> Result<Arc<Mutex<SerialDevice>>> {
    let serial: SerialDevice =
        DeviceState::find(devices, SERIAL)?.restore((console.clone(), SerialIrq::default()))?;
    let serial = Arc::new(Mutex::new(serial));
    vm.add_device(
        BusKind::Pio,
        Arc::clone(&serial) as _,
        u64::from(SERIAL_PORT),
        u64::from(SERIAL_PORT_LEN),
    )
    .map_err(|source| Error::Bus {
        name: SERIAL.into(),
        source,
    })?;
    let ports = MicroGuestPorts::new(vm.memory().guest().clone(), console);
    debug_assert_eq!(CONSOLE_WRITE_PORT, EXIT_PORT + 1);
    vm.add_device(
        BusKind::Pio,
        Arc::new(Mutex::new(ports)),
        u64::from(EXIT_PORT),
        2,
    )
    .map_err(|source| Error::Bus {
        name: "micro-guest ports".into(),
        source,
    })?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_kvm::BusDevice;

    #[test]
    fn serial_state_round_trips() {
        let mut dev = SerialDevice::new(Console::sink(), SerialIrq::default());
        dev.write(7, &[0x5a]); // scratch register
        dev.write(3, &[0x80]); // DLAB on
        dev.write(0, &[0x0c]); // divisor low
        dev.write(3, &[0x03]); // DLAB off, 8N1
        dev.enqueue_input(b"abc").unwrap();
        let section = DeviceState::save(SERIAL, &dev);
        assert_eq!(section.data.len(), 16);
        let mut back: SerialDevice = section
            .restore((Console::sink(), SerialIrq::default()))
            .unwrap();
        let s = back.state();
        assert_eq!(
            (s.scratch, s.baud_divisor_low, s.line_control),
            (0x5a, 0x0c, 0x03)
        );
        let mut b = [0u8];
        back.read(0, &mut b);
        assert_eq!(b[0], b'a');

        let mut short = section.clone();
        short.data.pop();
        assert!(
            short
                .restore::<SerialDevice>((Console::sink(), SerialIrq::default()))
                .is_err()
        );
        let mut newer = section;
        newer.version = 2;
        assert!(
            newer
                .restore::<SerialDevice>((Console::sink(), SerialIrq::default()))
                .is_err()
        );
    }
}
