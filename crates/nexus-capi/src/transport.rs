// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Opening a client over each transport the library was built with.

use crate::client::Client;
use crate::error::{Error, Result};

/// A client attached as VM `vm` of `tenant` to the backend listening on `control_socket`,
/// with a window of `window_size` bytes (0: 64 MiB).
#[cfg(not(feature = "loopback"))]
pub fn open_loopback(_: &str, _: &str, _: &str, _: u64) -> Result<Client> {
    Err(Error::Unsupported("the loopback transport (feature `loopback`)"))
}

/// A client attached as VM `vm` of `tenant` to the backend listening on `control_socket`,
/// with a window of `window_size` bytes (0: 64 MiB).
#[cfg(feature = "loopback")]
pub fn open_loopback(_: &str, _: &str, _: &str, _: u64) -> Result<Client> {
    Err(Error::Unsupported("the loopback transport (not merged yet)"))
}

/// The client of the Linux guest this process runs in.
pub fn open_linux() -> Result<Client> {
    Err(Error::Unsupported("the /dev/mem transport (feature `linux`)"))
}
