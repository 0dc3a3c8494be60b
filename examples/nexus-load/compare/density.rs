//! The density search: the largest number of parked VMs at which a function's warm p99,
//! under a fixed aggregate open-loop load spread over them, stays within the SLO.
//!
//! Probes double from a start size until one fails (or the cap is reached), then bisect
//! between the largest size that passed and the smallest that failed, down to a
//! resolution. Each probe is independent (a fresh daemon parks exactly that many VMs), so
//! the search may step down as well as up. The stepping is pure and tested here.

/// The state of one search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DensitySearch {
    /// The largest size probed that passed.
    passed: Option<u64>,
    /// The smallest size probed that failed.
    failed: Option<u64>,
    /// The next size while doubling.
    doubling: Option<u64>,
    /// The largest size probed at all.
    cap: u64,
    /// Bisecting stops when failed − passed ≤ this.
    resolution: u64,
    /// Probes left.
    probes_left: u32,
}

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DensityOutcome {
    /// The largest passing size, with a failing one within the resolution above it.
    Found(u64),
    /// Every size up to the cap passed: the density is at least this.
    AtLeast(u64),
    /// Even the start size failed.
    BelowStart(u64),
    /// The probe budget ran out between a passing and a failing size.
    Between(u64, u64),
}

impl DensitySearch {
    /// A search starting at `start` VMs, never above `cap`, bisecting down to `resolution`,
    /// with at most `max_probes` probes.
    pub fn new(start: u64, cap: u64, resolution: u64, max_probes: u32) -> Self {
        let cap = cap.max(1);
        DensitySearch {
            passed: None,
            failed: None,
            doubling: Some(start.clamp(1, cap)),
            cap,
            resolution: resolution.max(1),
            probes_left: max_probes,
        }
    }

    /// The next size to probe, or `None` when the search is over.
    pub fn next(&self) -> Option<u64> {
        if self.probes_left == 0 {
            return None;
        }
        if let Some(n) = self.doubling {
            return Some(n);
        }
        match (self.passed, self.failed) {
            (Some(lo), Some(hi)) if hi > lo + self.resolution => Some(lo + (hi - lo) / 2),
            _ => None,
        }
    }

    /// Records that `size` passed (`true`) or failed.
    pub fn record(&mut self, size: u64, pass: bool) {
        self.probes_left = self.probes_left.saturating_sub(1);
        if pass {
            self.passed = Some(self.passed.map_or(size, |p| p.max(size)));
        } else {
            self.failed = Some(self.failed.map_or(size, |f| f.min(size)));
        }
        self.doubling = match self.doubling {
            Some(n) if n == size && pass && n < self.cap => Some(n.saturating_mul(2).min(self.cap)),
            _ => None,
        };
    }

    /// How the search ended (or stands).
    pub fn outcome(&self) -> DensityOutcome {
        match (self.passed, self.failed) {
            (Some(lo), Some(hi)) if hi <= lo + self.resolution => DensityOutcome::Found(lo),
            (Some(lo), Some(hi)) => DensityOutcome::Between(lo, hi),
            (Some(lo), None) => DensityOutcome::AtLeast(lo),
            (None, Some(hi)) => DensityOutcome::BelowStart(hi),
            (None, None) => DensityOutcome::BelowStart(0),
        }
    }
}

impl DensityOutcome {
    /// For a report: `96`, `≥ 256 (the cap)`, `< 4`, `64 (128 failed)`.
    pub fn describe(&self) -> String {
        match *self {
            DensityOutcome::Found(n) => n.to_string(),
            DensityOutcome::AtLeast(n) => format!("≥ {n} (the cap)"),
            DensityOutcome::BelowStart(n) => format!("< {n}"),
            DensityOutcome::Between(lo, hi) => format!("{lo} ({hi} failed)"),
        }
    }
}

/// The largest size among `probes` (size, p99 in ms, whether it was otherwise clean) whose
/// p99 was within `slo_ms`, such that every smaller probe also passed (the first failing
/// size bounds it). `None` when the smallest probe failed.
pub fn largest_within(probes: &[(u64, Option<f64>, bool)], slo_ms: f64) -> Option<u64> {
    let mut sorted: Vec<_> = probes.to_vec();
    sorted.sort_by_key(|(n, _, _)| *n);
    let mut best = None;
    for (n, p99, clean) in sorted {
        match p99 {
            Some(p) if clean && p <= slo_ms => best = Some(n),
            _ => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a node whose p99 passes up to `limit` VMs.
    fn run(mut search: DensitySearch, limit: u64) -> (Vec<u64>, DensityOutcome) {
        let mut probed = Vec::new();
        while let Some(n) = search.next() {
            assert!(!probed.contains(&n), "{n} probed twice: {probed:?}");
            probed.push(n);
            search.record(n, n <= limit);
        }
        (probed, search.outcome())
    }

    #[test]
    fn doubles_then_bisects() {
        let (probed, outcome) = run(DensitySearch::new(4, 1024, 8, 20), 100);
        assert_eq!(probed, [4, 8, 16, 32, 64, 128, 96, 112, 104]);
        // 104 failed: within the resolution (8) of 96.
        assert_eq!(outcome, DensityOutcome::Found(96));
    }

    #[test]
    fn stops_at_the_cap() {
        let (probed, outcome) = run(DensitySearch::new(4, 48, 4, 20), 1000);
        assert_eq!(probed, [4, 8, 16, 32, 48]);
        assert_eq!(outcome, DensityOutcome::AtLeast(48));
        assert_eq!(outcome.describe(), "≥ 48 (the cap)");
    }

    #[test]
    fn fails_at_the_start() {
        let (probed, outcome) = run(DensitySearch::new(4, 64, 4, 20), 2);
        assert_eq!(probed, [4]);
        assert_eq!(outcome, DensityOutcome::BelowStart(4));
        assert_eq!(outcome.describe(), "< 4");
    }

    #[test]
    fn a_probe_budget_bounds_the_search() {
        let (probed, outcome) = run(DensitySearch::new(1, 1 << 20, 1, 6), 1000);
        assert_eq!(probed, [1, 2, 4, 8, 16, 32]);
        assert_eq!(outcome, DensityOutcome::AtLeast(32));
        let (probed, outcome) = run(DensitySearch::new(2, 64, 1, 5), 5);
        assert_eq!(probed, [2, 4, 8, 6, 5]);
        assert_eq!(outcome, DensityOutcome::Found(5));
        let (_, outcome) = run(DensitySearch::new(2, 1024, 1, 7), 100);
        assert_eq!(outcome, DensityOutcome::Between(64, 128));
        assert_eq!(outcome.describe(), "64 (128 failed)");
    }

    #[test]
    fn other_slos_from_the_same_probes() {
        let probes = [
            (4, Some(3.0), true),
            (16, Some(12.0), true),
            (8, Some(6.0), true),
            (32, Some(40.0), true),
            (24, Some(19.0), false),
        ];
        assert_eq!(largest_within(&probes, 10.0), Some(8));
        // 24 was within 20 ms but not clean (drops or failures): it does not count, and bounds.
        assert_eq!(largest_within(&probes, 20.0), Some(16));
        assert_eq!(largest_within(&probes, 50.0), Some(16));
        assert_eq!(largest_within(&probes, 1.0), None);
        assert_eq!(largest_within(&[(4, None, true)], 50.0), None);
    }
}
