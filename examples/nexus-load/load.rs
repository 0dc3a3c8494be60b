//! The two load engines: a closed loop (C workers, each sending its next invocation as soon
//! as the previous one is answered) and an open loop (invocations at scheduled times,
//! whatever the daemon's latency).
//!
//! Each worker owns one keep-alive connection. In the open loop an invocation whose send
//! time comes while every worker is busy is dropped and counted, never delayed: delaying it
//! would let a slow daemon lower the offered load and hide its own slowness.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::api::{self, InvocationRequest};
use crate::http::{Connection, Endpoint};
use crate::stats::{InvocationResult, Tally};

/// What every invocation of a phase sends.
#[derive(Debug)]
pub struct Workload {
    /// The daemon.
    pub endpoint: Arc<Endpoint>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The function's invocations path.
    pub path: String,
    /// The invocation's body.
    pub request: InvocationRequest,
}

/// When a phase ends: after `requests` invocations (scheduled, in the open loop), after
/// `duration`, or at whichever comes first. In-flight invocations are always awaited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Number of invocations.
    pub requests: Option<u64>,
    /// Wall time from the phase's start.
    pub duration: Option<Duration>,
}

/// Why phases stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The user pressed Ctrl-C.
    Interrupted,
    /// The daemon rejected the invocation itself (400, 404): sending more of the same
    /// cannot succeed.
    Rejected {
        /// HTTP status.
        status: u16,
        /// The daemon's error, as it sent it.
        error: String,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Interrupted => f.write_str("interrupted (Ctrl-C)"),
            StopReason::Rejected { status, error } => {
                write!(
                    f,
                    "the daemon rejected the invocation with {status}: {error}"
                )
            }
        }
    }
}

/// Stops phases early, for a [`StopReason`]. Shared by every task of the process.
#[derive(Debug, Default)]
pub struct Stop {
    set: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    notify: Notify,
}

impl Stop {
    /// Asks every phase to stop, for `reason` (the first reason given is kept).
    pub fn trigger(&self, reason: StopReason) {
        lock(&self.reason).get_or_insert(reason);
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Why the stop was asked for.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// Waits until a stop is asked for.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Locks `mutex`, going on with the data when another thread panicked while holding it (the
/// totals stay usable: every update is a few additions).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a phase shows progress on stderr.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Prefix of each line (`run`, `warmup`, `park N=500`…).
    pub label: String,
    /// Time between lines; `None` for no lines.
    pub every: Option<Duration>,
}

/// The outcome of a phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// The totals.
    pub tally: Tally,
    /// Wall time from the phase's start until its last invocation finished.
    pub elapsed: Duration,
    /// TCP connections opened (one per worker when keep-alive held throughout).
    pub connections_opened: u64,
    /// Open loop only: the latest an invocation was handed to a worker after its scheduled
    /// send time (the load generator's own lag, not the daemon's).
    pub max_schedule_lag: Option<Duration>,
    /// Why the phase ended early, when it did.
    pub stopped_early: Option<StopReason>,
}

/// State shared by the tasks of one phase.
struct Shared {
    workload: Arc<Workload>,
    tally: Mutex<Tally>,
    next_seq: AtomicU64,
    stop: Arc<Stop>,
}

impl Shared {
    /// Sends invocation `seq` on `conn` and records how it ended.
    async fn invoke(&self, conn: &mut Connection, seq: u64) {
        let body = self.workload.request.body(seq);
        let started = Instant::now();
        let result = api::invoke(conn, &self.workload.path, body).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if let InvocationResult::Rejected {
            status: status @ (400 | 404),
            error,
        } = &result
        {
            self.stop.trigger(StopReason::Rejected {
                status: *status,
                error: error.to_string(),
            });
        }
        lock(&self.tally).record(&result, latency_ms);
    }
}

/// Runs a closed loop: `concurrency` workers, each with its own connection, each sending
/// its next invocation as soon as its previous one finished, until `bounds` or `stop`.
pub async fn closed_loop(
    workload: Arc<Workload>,
    concurrency: usize,
    bounds: Bounds,
    stop: Arc<Stop>,
    progress: Progress,
) -> PhaseResult {
    let shared = Arc::new(Shared {
        workload,
        tally: Mutex::new(Tally::default()),
        next_seq: AtomicU64::new(0),
        stop,
    });
    let start = Instant::now();
    let deadline = bounds.duration.map(|d| start + d);
    let reporter = spawn_progress(&shared, start, &progress);

    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let shared = Arc::clone(&shared);
        workers.spawn(async move {
            let mut conn = Connection::new(
                Arc::clone(&shared.workload.endpoint),
                shared.workload.timeout,
            );
            loop {
                if shared.stop.is_set() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
                if bounds.requests.is_some_and(|n| seq >= n) {
                    break;
                }
                lock(&shared.tally).sent += 1;
                shared.invoke(&mut conn, seq).await;
            }
            conn.opened()
        });
    }
    let mut connections_opened = 0;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(opened) => connections_opened += opened,
            Err(e) => log::error!("a load worker failed: {e}"),
        }
    }
    finish(&shared, start, reporter, connections_opened, None)
}

/// When the invocations of an open loop are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Evenly: invocation `i` at `i / rate`.
    Uniform,
    /// A Poisson process: exponentially distributed gaps of mean `1 / rate`, drawn from a
    /// generator seeded with `seed` (the same seed, the same schedule).
    Poisson {
        /// The generator's seed.
        seed: u64,
    },
}

/// The send times of an open loop, as offsets from its start.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate: f64,
    arrivals: Arrivals,
    seq: u64,
    state: u64,
    at: f64,
}

impl Schedule {
    /// The schedule of `rate` invocations per second.
    pub fn new(rate: f64, arrivals: Arrivals) -> Self {
        let state = match arrivals {
            Arrivals::Uniform => 0,
            Arrivals::Poisson { seed } => seed,
        };
        Schedule {
            rate,
            arrivals,
            seq: 0,
            state,
            at: 0.0,
        }
    }

    /// SplitMix64: a small, good-enough generator for send times.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The offset of the next invocation from the loop's start.
    pub fn next_offset(&mut self) -> Duration {
        let offset = match self.arrivals {
            Arrivals::Uniform => self.seq as f64 / self.rate,
            Arrivals::Poisson { .. } => {
                // The first is due at once; then gaps of −ln(U)/rate, U uniform in (0, 1].
                let now = self.at;
                let uniform = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                self.at += -uniform.ln() / self.rate;
                now
            }
        };
        self.seq += 1;
        Duration::from_secs_f64(offset)
    }
}

/// Runs an open loop: invocation `i` is due at `start + i / rate` (or at the times of a
/// Poisson process, with [`Arrivals::Poisson`]); it goes to an idle
/// worker (one of `concurrency`, each with its own connection) or, when all are busy, is
/// dropped and counted. Ends at `bounds` (the request bound counts scheduled invocations,
/// dropped ones included) or `stop`.
pub async fn open_loop(
    workload: Arc<Workload>,
    rate: f64,
    arrivals: Arrivals,
    concurrency: usize,
    bounds: Bounds,
    stop: Arc<Stop>,
    progress: Progress,
) -> PhaseResult {
    let idle: Arc<Mutex<Vec<Connection>>> = Arc::new(Mutex::new(
        (0..concurrency.max(1))
            .map(|_| Connection::new(Arc::clone(&workload.endpoint), workload.timeout))
            .collect(),
    ));
    let shared = Arc::new(Shared {
        workload,
        tally: Mutex::new(Tally::default()),
        next_seq: AtomicU64::new(0),
        stop,
    });
    let start = Instant::now();
    let reporter = spawn_progress(&shared, start, &progress);
    let mut in_flight = JoinSet::new();
    let mut max_lag = Duration::ZERO;

    let mut schedule = Schedule::new(rate, arrivals);
    for seq in 0u64.. {
        if bounds.requests.is_some_and(|n| seq >= n) {
            break;
        }
        let offset = schedule.next_offset();
        if bounds.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let due = start + offset;
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = shared.stop.wait() => break,
        }
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let conn = lock(&idle).pop();
        let Some(mut conn) = conn else {
            lock(&shared.tally).dropped += 1;
            continue;
        };
        lock(&shared.tally).sent += 1;
        let shared = Arc::clone(&shared);
        let idle = Arc::clone(&idle);
        in_flight.spawn(async move {
            shared.invoke(&mut conn, seq).await;
            lock(&idle).push(conn);
        });
        // Reap the finished ones so the set does not grow with the run.
        while let Some(joined) = in_flight.try_join_next() {
            if let Err(e) = joined {
                log::error!("a load task failed: {e}");
            }
        }
    }
    while let Some(joined) = in_flight.join_next().await {
        if let Err(e) = joined {
            log::error!("a load task failed: {e}");
        }
    }
    let connections_opened = lock(&idle).iter().map(Connection::opened).sum();
    finish(&shared, start, reporter, connections_opened, Some(max_lag))
}

fn finish(
    shared: &Shared,
    start: Instant,
    reporter: Option<tokio::task::JoinHandle<()>>,
    connections_opened: u64,
    max_schedule_lag: Option<Duration>,
) -> PhaseResult {
    let elapsed = start.elapsed();
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    PhaseResult {
        tally: std::mem::take(&mut *lock(&shared.tally)),
        elapsed,
        connections_opened,
        max_schedule_lag,
        stopped_early: shared.stop.reason(),
    }
}

/// Starts the task that prints a progress line every `progress.every`.
fn spawn_progress(
    shared: &Arc<Shared>,
    start: Instant,
    progress: &Progress,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = progress.every?;
    let shared = Arc::clone(shared);
    let label = progress.label.clone();
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at((start + every).into(), every);
        let mut last_completed = 0;
        loop {
            ticks.tick().await;
            let (line, completed) = {
                let tally = lock(&shared.tally);
                let completed = tally.completed();
                let line = progress_line(
                    &label,
                    start.elapsed(),
                    &tally,
                    completed - last_completed,
                    every,
                );
                (line, completed)
            };
            last_completed = completed;
            eprintln!("{line}");
        }
    }))
}

/// One progress line: totals so far and the rate over the last interval.
pub fn progress_line(
    label: &str,
    elapsed: Duration,
    tally: &Tally,
    completed_since_last: u64,
    interval: Duration,
) -> String {
    let mut line = format!(
        "{label}: {:>6.1} s  sent {}  ok {}  failed {}",
        elapsed.as_secs_f64(),
        tally.sent,
        tally.succeeded(),
        tally.failed(),
    );
    if tally.dropped > 0 {
        line.push_str(&format!("  dropped {}", tally.dropped));
    }
    line.push_str(&format!(
        "  {:.1} req/s",
        completed_since_last as f64 / interval.as_secs_f64()
    ));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut even = Schedule::new(4.0, Arrivals::Uniform);
        let offsets: Vec<f64> = (0..3).map(|_| even.next_offset().as_secs_f64()).collect();
        assert_eq!(offsets, [0.0, 0.25, 0.5]);

        let mut poisson = Schedule::new(100.0, Arrivals::Poisson { seed: 7 });
        let offsets: Vec<f64> = (0..20_001)
            .map(|_| poisson.next_offset().as_secs_f64())
            .collect();
        assert_eq!(offsets[0], 0.0);
        assert!(offsets.windows(2).all(|w| w[1] >= w[0]));
        // 20,000 gaps of mean 10 ms: the mean within 3 %, and about 1/e of them longer.
        let gaps: Vec<f64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = offsets[20_000] / 20_000.0;
        assert!((mean - 0.01).abs() < 0.0003, "{mean}");
        let longer = gaps.iter().filter(|g| **g > 0.01).count() as f64 / gaps.len() as f64;
        assert!((longer - (-1.0f64).exp()).abs() < 0.02, "{longer}");
        // The same seed gives the same schedule.
        let mut again = Schedule::new(100.0, Arrivals::Poisson { seed: 7 });
        assert_eq!(again.next_offset(), Duration::ZERO);
        assert_eq!(again.next_offset().as_secs_f64(), offsets[1]);
    }

    #[test]
    fn progress_lines() {
        let mut tally = Tally {
            sent: 12,
            ..Tally::default()
        };
        let line = progress_line(
            "run",
            Duration::from_secs(5),
            &tally,
            50,
            Duration::from_secs(5),
        );
        assert_eq!(line, "run:    5.0 s  sent 12  ok 0  failed 0  10.0 req/s");
        tally.dropped = 3;
        let line = progress_line(
            "run",
            Duration::from_secs(5),
            &tally,
            0,
            Duration::from_secs(5),
        );
        assert!(line.contains("dropped 3"), "{line}");
    }

    #[tokio::test]
    async fn stop_keeps_first_reason_and_wakes_waiters() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move { stop.wait().await })
        };
        tokio::task::yield_now().await;
        stop.trigger(StopReason::Interrupted);
        stop.trigger(StopReason::Rejected {
            status: 404,
            error: "{}".to_string(),
        });
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(stop.is_set());
        assert_eq!(stop.reason(), Some(StopReason::Interrupted));
        assert_eq!(
            StopReason::Rejected {
                status: 400,
                error: r#"{"error":"InvalidRequest"}"#.to_string()
            }
            .to_string(),
            r#"the daemon rejected the invocation with 400: {"error":"InvalidRequest"}"#
        );
    }
}
