// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bound on payload bytes the backend holds in its own memory.
//!
//! Payloads normally go straight between storage and the window. Where the backend must own a
//! copy (write-behind PUTs, S3 request bodies, HTTP request bodies, invocation results), the
//! copy first takes room from one budget shared by all VMs, so no guest can make the backend
//! allocate without bound: a request that finds no room waits.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity: 64 KiB.
const UNIT: u64 = 64 << 10;

/// The staging budget (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Staging {
    units: Arc<Semaphore>,
    total: u32,
}

/// Room for some bytes; given back when dropped.
#[derive(Debug)]
pub(crate) struct StagingPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Staging {
    /// A budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits for room for `bytes` (capped at the whole budget, so any request can proceed
    /// once everything else is done).
    pub(crate) async fn reserve(&self, bytes: u64) -> StagingPermit {
        if bytes == 0 {
            return StagingPermit { _permit: None };
        }
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total);
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self.units.clone().acquire_many_owned(units).await.ok();
        StagingPermit { _permit: permit }
    }

    /// Room for `bytes` if it is free now.
    #[cfg(test)]
    pub(crate) fn try_reserve(&self, bytes: u64) -> Option<StagingPermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total);
        if units == 0 {
            return Some(StagingPermit { _permit: None });
        }
        self.units
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|permit| StagingPermit {
                _permit: Some(permit),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_is_shared_and_returned() {
        let staging = Staging::new(4 * UNIT);
        let a = staging.reserve(3 * UNIT).await;
        assert!(staging.try_reserve(2 * UNIT).is_none());
        let b = staging.try_reserve(UNIT).unwrap();
        drop(a);
        // Larger than the whole budget: capped, so it still gets through.
        drop(b);
        let _all = staging.reserve(100 * UNIT).await;
        assert!(staging.try_reserve(1).is_none());
        assert!(staging.try_reserve(0).is_some());
    }
}
