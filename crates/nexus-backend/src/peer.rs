// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Who is on the other end of a control connection, as the kernel says (`SO_PEERCRED`).
//! Only peers the configuration allows ([`ControlAccess`](crate::ControlAccess)) are served,
//! a tenant's VMs are attached only by the peers it names, and a VM is reached only by peers
//! of the user that attached it; the backend's own user may do everything.

/// A control peer's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The peer's user ID.
    pub(crate) uid: u32,
    /// The peer's group ID.
    pub(crate) gid: u32,
}

impl Peer {
    /// Whether the peer runs as the backend's own user.
    pub(crate) fn is_backend_user(self) -> bool {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        self.uid == unsafe { libc::geteuid() }
    }
}
