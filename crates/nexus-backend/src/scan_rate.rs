// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a VM's listings may cost the backend over time.
//!
//! One LIST page looks at no more than [`VmLimits::list_scan_budget`](crate::VmLimits)
//! entries; a VM that lists again and again is held to
//! [`VmLimits::list_scan_per_second`](crate::VmLimits) entries a second on average. Each page's
//! entries are debited after it ran (the cost is known only then); a VM in debt waits —
//! holding one of its request slots, no CPU — until it is paid back. A well-behaved VM never
//! notices: one second's worth is always allowed as a burst.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// One VM's listing rate.
#[derive(Debug)]
pub(crate) struct ScanRate {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl ScanRate {
    /// A rate of `per_second` entries a second, starting with one second's worth.
    pub(crate) fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// How long the VM must wait before its next page (zero if it is not in debt).
    pub(crate) fn wait(&self) -> Duration {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let (tokens, at) = &mut *state;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.per_second);
        *at = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.per_second)
        }
    }

    /// A page looked at `entries` entries.
    pub(crate) fn charge(&self, entries: u64) {
        lock(&self.state).0 -= entries as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lister_in_debt_waits_it_off() {
        let rate = ScanRate::new(1000);
        assert_eq!(rate.wait(), Duration::ZERO);
        rate.charge(1000);
        assert_eq!(rate.wait(), Duration::ZERO, "a full page is the burst");
        rate.charge(2000);
        let wait = rate.wait();
        assert!(
            (1.99..=2.01).contains(&wait.as_secs_f64()),
            "{wait:?} to pay 2000 entries back at 1000/s"
        );
        tokio::time::advance(wait).await;
        assert_eq!(rate.wait(), Duration::ZERO);
    }
}
