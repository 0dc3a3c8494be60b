//! Statistics over a load phase: exact percentiles and the per-invocation tally.
//!
//! Everything here is plain data and arithmetic, so it is unit-tested without a daemon.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::{ApiError, InvocationAnswer, Start};

/// The exact `p`-th percentile (0 < p ≤ 100) of `sorted`, by the nearest-rank method: the
/// smallest sample such that at least `p` % of the samples are less than or equal to it.
///
/// `sorted` must be sorted in ascending order. Returns `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: ceil(p/100 * n), 1-based; p = 0 takes the minimum.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency figures of one phase, in milliseconds, from client-side timing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples the figures are computed from.
    pub samples: usize,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Largest sample.
    pub max_ms: Option<f64>,
    /// Arithmetic mean.
    pub mean_ms: Option<f64>,
}

impl LatencySummary {
    /// Summarises `samples` (milliseconds, any order). NaN samples are ignored.
    pub fn from_samples(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let mean_ms = if sorted.is_empty() {
            None
        } else {
            Some(sorted.iter().sum::<f64>() / sorted.len() as f64)
        };
        LatencySummary {
            samples: sorted.len(),
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().copied(),
            mean_ms,
        }
    }
}

/// How one invocation ended, as seen by the load generator.
#[derive(Debug, Clone)]
pub enum InvocationResult {
    /// The daemon answered 200 with an invocation answer.
    Answered(Box<InvocationAnswer>),
    /// The daemon answered with an error status (its JSON error, or the body's text).
    Rejected {
        /// HTTP status.
        status: u16,
        /// The daemon's error.
        error: ApiError,
    },
    /// No answer: connecting, sending or reading failed, or the request timed out.
    Transport {
        /// A short kind, used to group the failures (`timeout`, `connect`, `http`).
        kind: &'static str,
        /// The full error text, with its causes.
        message: String,
    },
}

impl InvocationResult {
    /// The key this result is counted under in [`Tally::outcomes`]: `200 success`,
    /// `404 ResourceNotFound`, `transport timeout`…
    pub fn outcome_key(&self) -> String {
        match self {
            InvocationResult::Answered(answer) => format!("200 {}", answer.outcome),
            InvocationResult::Rejected { status, error } => format!("{status} {}", error.error),
            InvocationResult::Transport { kind, .. } => format!("transport {kind}"),
        }
    }
}

/// Running totals of one load phase; the workers of a phase record into one.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Invocations started (sent to the daemon).
    pub sent: u64,
    /// Open loop only: scheduled invocations that could not start because every worker was
    /// busy, so they were dropped.
    pub dropped: u64,
    /// Finished invocations by outcome key (see [`InvocationResult::outcome_key`]).
    pub outcomes: BTreeMap<String, u64>,
    /// The first message seen for every non-success outcome key.
    pub first_errors: BTreeMap<String, String>,
    /// Client-side latency of every successful invocation, in milliseconds.
    pub success_latencies_ms: Vec<f64>,
    /// Successful answers that said `"start":"cold"`.
    pub cold: u64,
    /// Successful answers that said `"start":"warm"`.
    pub warm: u64,
    /// Sum of the server-side `timings_ms.total` over the answers that carry it.
    pub server_total_ms_sum: f64,
    /// Number of answers that carry `timings_ms.total`.
    pub server_total_count: u64,
    /// Sum of `vm_exits` over the successful answers.
    pub vm_exits_sum: u64,
    /// Sum of `bytes_in` over the successful answers.
    pub bytes_in_sum: u64,
    /// Sum of `bytes_out` over the successful answers.
    pub bytes_out_sum: u64,
}

impl Tally {
    /// Records one finished invocation that took `latency_ms` on the client side.
    pub fn record(&mut self, result: &InvocationResult, latency_ms: f64) {
        let key = result.outcome_key();
        *self.outcomes.entry(key.clone()).or_default() += 1;
        match result {
            InvocationResult::Answered(answer) if answer.is_success() => {
                self.success_latencies_ms.push(latency_ms);
                match answer.start {
                    Some(Start::Cold) => self.cold += 1,
                    Some(Start::Warm) => self.warm += 1,
                    Some(Start::Other) | None => {}
                }
                if let Some(total) = answer.timings_ms.total {
                    self.server_total_ms_sum += total;
                    self.server_total_count += 1;
                }
                self.vm_exits_sum += answer.vm_exits;
                self.bytes_in_sum += answer.bytes_in;
                self.bytes_out_sum += answer.bytes_out;
            }
            InvocationResult::Answered(answer) => {
                self.first_errors
                    .entry(key)
                    .or_insert_with(|| format!("outcome {:?}", answer.outcome));
            }
            InvocationResult::Rejected { error, .. } => {
                self.first_errors
                    .entry(key)
                    .or_insert_with(|| error.message.clone());
            }
            InvocationResult::Transport { message, .. } => {
                self.first_errors
                    .entry(key)
                    .or_insert_with(|| message.clone());
            }
        }
    }

    /// Finished invocations, whatever their outcome.
    pub fn completed(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Successful invocations.
    pub fn succeeded(&self) -> u64 {
        self.success_latencies_ms.len() as u64
    }

    /// Finished invocations that did not succeed.
    pub fn failed(&self) -> u64 {
        self.completed() - self.succeeded()
    }

    /// Fraction of the successful answers that said they were cold starts, among those that
    /// said how they started. `None` when none did.
    pub fn cold_fraction(&self) -> Option<f64> {
        ratio(self.cold as f64, (self.cold + self.warm) as f64)
    }

    /// Mean server-side `timings_ms.total`.
    pub fn mean_server_total_ms(&self) -> Option<f64> {
        ratio(self.server_total_ms_sum, self.server_total_count as f64)
    }

    /// Mean `vm_exits` per successful invocation.
    pub fn mean_vm_exits(&self) -> Option<f64> {
        ratio(self.vm_exits_sum as f64, self.succeeded() as f64)
    }

    /// Mean `bytes_in` per successful invocation.
    pub fn mean_bytes_in(&self) -> Option<f64> {
        ratio(self.bytes_in_sum as f64, self.succeeded() as f64)
    }

    /// Mean `bytes_out` per successful invocation.
    pub fn mean_bytes_out(&self) -> Option<f64> {
        ratio(self.bytes_out_sum as f64, self.succeeded() as f64)
    }
}

/// `num / den`, or `None` when `den` is zero.
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    if den == 0.0 { None } else { Some(num / den) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Timings;

    fn answer(start: Start, total: f64) -> InvocationResult {
        InvocationResult::Answered(Box::new(InvocationAnswer {
            start: Some(start),
            outcome: "success".to_string(),
            output: None,
            vm: Some("vm-1".to_string()),
            vm_exits: 10,
            bytes_in: 100,
            bytes_out: 7,
            timings_ms: Timings {
                total: Some(total),
                restore: None,
            },
        }))
    }

    #[test]
    fn percentile_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&sorted, 90.0), Some(90.0));
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 100.0), Some(100.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 51.0), Some(3.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_ignores_nan() {
        let s = LatencySummary::from_samples(&[5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]);
        assert_eq!(s.samples, 5);
        assert_eq!(s.p50_ms, Some(3.0));
        assert_eq!(s.p99_ms, Some(5.0));
        assert_eq!(s.max_ms, Some(5.0));
        assert_eq!(s.mean_ms, Some(3.0));
        assert_eq!(LatencySummary::from_samples(&[]), LatencySummary::default());
    }

    #[test]
    fn tally_counts_outcomes_and_means() {
        let mut a = Tally::default();
        a.record(&answer(Start::Cold, 30.0), 40.0);
        a.record(&answer(Start::Warm, 2.0), 3.0);
        a.record(&answer(Start::Warm, 4.0), 5.0);
        a.record(
            &InvocationResult::Rejected {
                status: 429,
                error: ApiError {
                    error: "TooManyRequests".to_string(),
                    message: "pool full".to_string(),
                    body: String::new(),
                },
            },
            1.0,
        );
        a.record(
            &InvocationResult::Transport {
                kind: "timeout",
                message: "no answer".to_string(),
            },
            1000.0,
        );
        assert_eq!(a.completed(), 5);
        assert_eq!(a.succeeded(), 3);
        assert_eq!(a.failed(), 2);
        assert_eq!(a.outcomes["200 success"], 3);
        assert_eq!(a.outcomes["429 TooManyRequests"], 1);
        assert_eq!(a.outcomes["transport timeout"], 1);
        assert_eq!(a.first_errors["429 TooManyRequests"], "pool full");
        assert_eq!(a.cold_fraction(), Some(1.0 / 3.0));
        assert_eq!(a.mean_server_total_ms(), Some(12.0));
        assert_eq!(a.mean_vm_exits(), Some(10.0));
        assert_eq!(a.mean_bytes_in(), Some(100.0));
        assert_eq!(a.mean_bytes_out(), Some(7.0));
        assert!(!a.first_errors.contains_key("200 success"));
    }

    #[test]
    fn empty_tally_has_no_means() {
        let t = Tally::default();
        assert_eq!(t.cold_fraction(), None);
        assert_eq!(t.mean_server_total_ms(), None);
        assert_eq!(t.mean_vm_exits(), None);
    }
}
