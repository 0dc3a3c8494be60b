//! The 8250 serial console (vm-superio) and the shared console sink it writes to.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusAction, BusDevice};

/// Where a VM's console output goes: any writer, shared by the serial port and the
/// micro-guest console-write port so that their bytes stay in order.
#[derive(Clone)]
pub struct Console {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Console {
    /// A console writing to `out`.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Console {
            out: Arc::new(Mutex::new(Box::new(out))),
        }
    }

    /// A console that drops everything.
    pub fn sink() -> Self {
        Self::new(io::sink())
    }

    /// Writes `bytes` and flushes.
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(bytes)?;
        out.flush()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Console::write_all(self, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A console sink that keeps everything written to it, for callers that show or check a
/// guest's output afterwards. Clones share the same buffer.
#[derive(Debug, Clone, Default)]
pub struct ConsoleBuffer(Arc<Mutex<Vec<u8>>>);

impl ConsoleBuffer {
    /// The bytes written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bytes written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl Write for ConsoleBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The serial port's interrupt line: an eventfd registered as an irqfd when the VM has an
/// interrupt controller, nothing otherwise (micro-guests take no interrupts).
#[derive(Debug, Default)]
pub struct SerialIrq(Option<EventFd>);

impl SerialIrq {
    /// An interrupt line that signals `fd`.
    pub fn new(fd: EventFd) -> Self {
        SerialIrq(Some(fd))
    }
}

impl Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// An 8250 UART on the port bus, writing to a [`Console`].
pub struct SerialDevice {
    serial: Serial<SerialIrq, vm_superio::serial::NoEvents, Console>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART writing to `console` and raising `irq`.
    pub fn new(console: Console, irq: SerialIrq) -> Self {
        SerialDevice {
            serial: Serial::new(irq, console),
        }
    }

    /// The UART's register state (for snapshots).
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    /// A UART restored from `state` (taken by [`SerialDevice::state`]), writing to `console`
    /// and raising `irq`. Fails if the state's input FIFO is larger than the UART's.
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        console: Console,
        irq: SerialIrq,
    ) -> io::Result<Self> {
        let serial = Serial::from_state(state, irq, vm_superio::serial::NoEvents, console)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok(SerialDevice { serial })
    }

    /// Feeds bytes to the guest as if typed on the console.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.serial
            .enqueue_raw_bytes(bytes)
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                log::warn!("Serial write failed: {e:?}");
            }
        }
        BusAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_console() {
        let out = ConsoleBuffer::default();
        let mut dev = SerialDevice::new(Console::new(out.clone()), SerialIrq::default());
        for b in b"hi\n" {
            assert_eq!(dev.write(0, &[*b]), BusAction::Continue);
        }
        assert_eq!(out.contents(), b"hi\n");
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
