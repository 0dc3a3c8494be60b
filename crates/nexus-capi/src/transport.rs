// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Opening a client over each transport the library was built with.

use crate::client::Client;
#[cfg(feature = "loopback")]
use crate::client::ObjectClient;
use crate::error::{Error, Result};

/// The window of [`open_loopback`] when none is asked for: 64 MiB, room for a 16 MiB object
/// and the requests around it (the memory is touched only as it is used).
pub const DEFAULT_LOOPBACK_WINDOW: u64 = 64 << 20;

/// A client attached as VM `vm` of `tenant` to the backend listening on `control_socket`,
/// with a window of `window_size` bytes (0: [`DEFAULT_LOOPBACK_WINDOW`]).
#[cfg(feature = "loopback")]
pub fn open_loopback(
    control_socket: &str,
    vm: &str,
    tenant: &str,
    window_size: u64,
) -> Result<Client> {
    let mut config = nexus_loopback::LoopbackConfig::new(control_socket, vm, tenant);
    config.window_size = if window_size == 0 {
        DEFAULT_LOOPBACK_WINDOW
    } else {
        window_size
    };
    let loopback = nexus_loopback::Loopback::connect(config)
        .map_err(|e| Error::Connect(crate::error::chain(&e)))?;
    Ok(Client::new(Box::new(loopback)))
}

/// A client attached as VM `vm` of `tenant` to the backend listening on `control_socket`:
/// this build has no loopback transport.
#[cfg(not(feature = "loopback"))]
pub fn open_loopback(_: &str, _: &str, _: &str, _: u64) -> Result<Client> {
    Err(Error::Unsupported(
        "the loopback transport (feature `loopback`)",
    ))
}

/// The client of the Linux guest this process runs in: the nexus-io device and window named
/// by the kernel command line (`nexus.io=`, `nexus.window=`), mapped through `/dev/mem`; one
/// process of the guest at a time owns the device (`nexus_guest::linux`).
#[cfg(all(feature = "linux", target_os = "linux"))]
pub fn open_linux() -> Result<Client> {
    match nexus_guest::linux::open() {
        Ok(nexus) => Ok(Client::new(Box::new(nexus))),
        Err(nexus_guest::linux::Error::Driver(e)) => Err(Error::Nexus(e)),
        Err(e) => Err(Error::Connect(crate::error::chain(&e))),
    }
}

/// The client of the Linux guest this process runs in: this build has no `/dev/mem`
/// transport.
#[cfg(not(all(feature = "linux", target_os = "linux")))]
pub fn open_linux() -> Result<Client> {
    Err(Error::Unsupported(
        "the /dev/mem transport (feature `linux`)",
    ))
}

#[cfg(feature = "loopback")]
impl ObjectClient for nexus_loopback::Loopback {
    fn max_payload(&self) -> usize {
        ObjectClient::max_payload(&**self)
    }
    fn read_at(&mut self, key: &str, offset: u64, dst: &mut [u8]) -> Result<(usize, u64)> {
        self.nexus().read_at(key, offset, dst)
    }
    fn read_all(&mut self, key: &str) -> Result<Vec<u8>> {
        self.nexus().read_all(key)
    }
    fn write(&mut self, key: &str, data: &[u8], behind: bool) -> Result<()> {
        self.nexus().write(key, data, behind)
    }
    fn head(&mut self, key: &str) -> Result<nexus_guest::ObjectInfo> {
        ObjectClient::head(self.nexus(), key)
    }
    fn delete(&mut self, key: &str) -> Result<()> {
        ObjectClient::delete(self.nexus(), key)
    }
    fn list(&mut self, prefix: &str, token: Option<&[u8]>) -> Result<nexus_guest::ListPage> {
        ObjectClient::list(self.nexus(), prefix, token)
    }
    fn flush(&mut self) -> Result<()> {
        ObjectClient::flush(self.nexus())
    }
}

#[cfg(test)]
mod tests {
    /// The `unsafe impl Send` of a boxed client rests on this: the loopback transport's parts
    /// other than the client's `Rc`-shared window are `Send` themselves.
    #[cfg(feature = "loopback")]
    #[test]
    fn the_loopback_device_is_send() {
        fn send<T: Send>() {}
        send::<nexus_loopback::LoopbackRegisters>();
    }

    /// This host's kernel command line names no nexus-io device: opening the Linux transport
    /// fails with a status and a message, not a crash.
    #[cfg(all(feature = "linux", target_os = "linux"))]
    #[test]
    fn the_linux_transport_outside_a_guest_fails_cleanly() {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if cmdline.contains("nexus.io=") {
            return; // inside a Nexus guest
        }
        let error = super::open_linux().unwrap_err();
        assert_eq!(error.status(), crate::NexusStatus::Connect, "{error}");
        assert!(error.to_string().contains("nexus-io device"), "{error}");
    }
}
