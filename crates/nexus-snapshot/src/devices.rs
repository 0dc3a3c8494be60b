//! The devices of a restored micro-VM. Each device saves and restores itself through its
//! [`Persist`] implementation (the serial console's is in `nexus_kvm::persist`, with its
//! section's format).

use std::sync::{Arc, Mutex};

use nexus_kvm::layout::{CONSOLE_WRITE_PORT, EXIT_PORT, SERIAL_PORT, SERIAL_PORT_LEN};
use nexus_kvm::micro::MicroGuestPorts;
use nexus_kvm::serial::{Console, SerialDevice, SerialIrq};
use nexus_kvm::{BusKind, Vm};

use crate::persist::{DeviceState, Persist};
use crate::{Error, Result};

/// Places the devices of a micro-VM on a restored VM: the serial console (restored from its
/// section, [`SerialDevice`]'s [`Persist::SECTION`]) at `0x3F8` and the micro-guest exit and console-write ports, both
/// writing to `console`. Returns the serial device.
pub fn attach_micro_devices(
    vm: &Vm,
    devices: &[DeviceState],
    console: Console,
) -> Result<Arc<Mutex<SerialDevice>>> {
    let serial: SerialDevice =
        DeviceState::restore_from(devices, (console.clone(), SerialIrq::default()))?;
    let serial = Arc::new(Mutex::new(serial));
    vm.add_device(
        BusKind::Pio,
        Arc::clone(&serial) as _,
        u64::from(SERIAL_PORT),
        u64::from(SERIAL_PORT_LEN),
    )
    .map_err(|source| Error::Bus {
        name: SerialDevice::SECTION.into(),
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

    #[test]
    fn the_serial_section_round_trips_under_its_name() {
        let mut dev = SerialDevice::new(Console::sink(), SerialIrq::default());
        dev.enqueue_input(b"abc").unwrap();
        let section = DeviceState::save(&dev);
        assert_eq!((section.name.as_str(), section.version), ("serial", 1));
        let devices = [section];
        let back: SerialDevice =
            DeviceState::restore_from(&devices, (Console::sink(), SerialIrq::default())).unwrap();
        assert_eq!(back.state().in_buffer, b"abc");
        let mut newer = devices[0].clone();
        newer.version = 2;
        let err = newer
            .restore::<SerialDevice>((Console::sink(), SerialIrq::default()))
            .unwrap_err();
        assert!(err.to_string().contains("serial"), "{err}");
    }
}
