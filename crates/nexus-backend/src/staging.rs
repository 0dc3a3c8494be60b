// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bound on payload bytes the backend holds in its own memory.
//!
//! Payloads normally go straight between storage and the window. Where the backend must own a
//! copy (write-behind PUTs, S3 request bodies, HTTP request bodies, invocation results), the
//! copy first takes room from one budget shared by all VMs, so no guest can make the backend
//! allocate without bound: a request that finds no room waits.
//!
//! Each VM takes that room through its own **share** of the budget
//! ([`VmLimits::staging_bytes`](crate::VmLimits::staging_bytes), capped at the whole budget):
//! a request first waits for room in its VM's share, then in the global budget, and one
//! request never takes more than its VM's share. So a VM can hold at most its share, and its
//! requests queue behind its own, not in front of every other VM's: a VM that has used up its
//! share waits on it alone while the others still find room in the global budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity: 64 KiB.
const UNIT: u64 = 64 << 10;

/// Budget units for `bytes`, at least one.
fn units_of(bytes: u64) -> u32 {
    u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX >> 4)
}

/// A staging budget (cheap to clone): the global one, or a VM's share of it.
#[derive(Clone, Debug)]
pub(crate) struct Staging {
    global: Arc<Semaphore>,
    total: u32,
    /// A VM's share: its own units, and how many (at most `total`).
    share: Option<(Arc<Semaphore>, u32)>,
}

/// Room for some bytes; given back when dropped.
#[derive(Debug)]
pub(crate) struct StagingPermit {
    _global: Option<OwnedSemaphorePermit>,
    _share: Option<OwnedSemaphorePermit>,
}

impl StagingPermit {
    const NONE: Self = Self {
        _global: None,
        _share: None,
    };
}

impl Staging {
    /// A global budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = units_of(bytes);
        Self {
            global: Arc::new(Semaphore::new(total as usize)),
            total,
            share: None,
        }
    }

    /// A VM's share of this budget: `bytes` (at least one unit, at most the whole budget).
    pub(crate) fn share(&self, bytes: u64) -> Self {
        let units = units_of(bytes).min(self.total);
        Self {
            global: self.global.clone(),
            total: self.total,
            share: Some((Arc::new(Semaphore::new(units as usize)), units)),
        }
    }

    /// The most units one request may hold: the share, or the whole budget.
    fn cap(&self) -> u32 {
        self.share.as_ref().map_or(self.total, |(_, units)| *units)
    }

    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.cap())
    }

    /// Waits for room for `bytes`: in the VM's share first, then in the global budget. The
    /// reservation is capped at the share (or the whole budget), so any request can proceed
    /// once everything else of its VM is done.
    pub(crate) async fn reserve(&self, bytes: u64) -> StagingPermit {
        let units = self.units_for(bytes);
        if units == 0 {
            return StagingPermit::NONE;
        }
        // The semaphores are never closed, so acquiring only fails if they were.
        let share = match &self.share {
            Some((share, _)) => share.clone().acquire_many_owned(units).await.ok(),
            None => None,
        };
        let global = self.global.clone().acquire_many_owned(units).await.ok();
        StagingPermit {
            _global: global,
            _share: share,
        }
    }

    /// Bytes held now from this budget (the VM's share, or the whole budget), in whole
    /// units, and the budget's size.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn usage(&self) -> (u64, u64) {
        let (semaphore, units) = match &self.share {
            Some((share, units)) => (share, *units),
            None => (&self.global, self.total),
        };
        let free = u64::try_from(semaphore.available_permits()).unwrap_or(u64::MAX);
        (
            u64::from(units).saturating_sub(free) * UNIT,
            u64::from(units) * UNIT,
        )
    }

    /// [`usage`](Self::usage) of the global budget this one is a share of.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn global_usage(&self) -> (u64, u64) {
        let free = u64::try_from(self.global.available_permits()).unwrap_or(u64::MAX);
        (
            u64::from(self.total).saturating_sub(free) * UNIT,
            u64::from(self.total) * UNIT,
        )
    }

    /// Room for `bytes` if it is free now.
    #[cfg(test)]
    pub(crate) fn try_reserve(&self, bytes: u64) -> Option<StagingPermit> {
        let units = self.units_for(bytes);
        if units == 0 {
            return Some(StagingPermit::NONE);
        }
        let share = match &self.share {
            Some((share, _)) => Some(share.clone().try_acquire_many_owned(units).ok()?),
            None => None,
        };
        let global = self.global.clone().try_acquire_many_owned(units).ok()?;
        Some(StagingPermit {
            _global: Some(global),
            _share: share,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[tokio::test]
    async fn a_vm_holding_its_whole_share_does_not_block_the_others() {
        let global = Staging::new(4 * UNIT);
        let hog = global.share(2 * UNIT);
        let other = global.share(2 * UNIT);

        // The hog takes its whole share, then asks for more: far more than the budget.
        let held = hog.reserve(2 * UNIT).await;
        let waiting = tokio::spawn({
            let hog = hog.clone();
            async move { hog.reserve(100 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the hog waits on its own share");
        assert!(hog.try_reserve(1).is_none());

        // Its waiting request is not at the head of the global queue: the other VM gets room
        // at once, all of its share.
        let got = tokio::time::timeout(Duration::from_secs(5), other.reserve(2 * UNIT))
            .await
            .expect("another VM finds room while the hog waits");
        assert!(global.try_reserve(1).is_none(), "the budget is used up");

        // Once the hog lets go of what it held, its request, capped at its share (two
        // units), gets through.
        drop(held);
        let capped = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the hog's capped request proceeds")
            .unwrap();
        assert!(global.try_reserve(1).is_none(), "two units each");
        drop(got);
        assert!(other.try_reserve(2 * UNIT).is_some());
        drop(capped);
        assert!(global.try_reserve(4 * UNIT).is_some());
    }

    #[test]
    fn a_share_is_at_least_one_unit_and_at_most_the_budget() {
        let global = Staging::new(4 * UNIT);
        assert_eq!(global.share(0).cap(), 1);
        assert_eq!(global.share(UNIT + 1).cap(), 1);
        assert_eq!(global.share(u64::MAX).cap(), 4);
        assert_eq!(global.cap(), 4);
    }
}
