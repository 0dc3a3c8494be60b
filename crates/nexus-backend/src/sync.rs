// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Locking the backend's shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning (the data is simple enough to stay consistent, and the
/// backend must keep serving other VMs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
