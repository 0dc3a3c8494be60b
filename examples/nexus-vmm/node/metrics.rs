//! The node's metrics, rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! Counters and histograms are kept here; gauges (VMs, queue depth, memory, CPU) are read
//! when `/metrics` is scraped and passed to [`Metrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), then the `+Inf` bucket.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// How an invocation was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Start {
    /// A VM was restored (or booted) for it.
    Cold,
    /// A parked VM of the pool took it.
    Warm,
}

impl Start {
    /// `cold` or `warm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Warm => "warm",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (function, outcome, start) → count.
    invocations: BTreeMap<(String, &'static str, &'static str), u64>,
    /// (function, start) → latency of completed invocations.
    latency: BTreeMap<(String, &'static str), Histogram>,
    /// (function, start) → time to get a VM (queueing plus restore).
    start_latency: BTreeMap<(String, &'static str), Histogram>,
    /// function → KVM exits of its invocations.
    exits: BTreeMap<String, u64>,
    /// (function, direction) → payload bytes through the window.
    bytes: BTreeMap<(String, &'static str), u64>,
    /// (function, how) → VMs started.
    vm_starts: BTreeMap<(String, &'static str), u64>,
    /// (function, reason) → VMs stopped.
    vm_stops: BTreeMap<(String, &'static str), u64>,
    /// (status) → requests rejected before reaching a function.
    rejected: BTreeMap<u16, u64>,
}

/// The gauges read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// (function, idle VMs, busy VMs, starting VMs).
    pub vms: Vec<(String, usize, usize, usize)>,
    /// Invocations waiting for a VM.
    pub queue_depth: usize,
    /// The node daemon's (VMMs') resident set, bytes.
    pub vmm_rss: u64,
    /// The node daemon's CPU time, seconds.
    pub vmm_cpu: f64,
    /// The backend's figures, if it answered.
    pub backend: Option<nexus_ring::control::BackendStats>,
}

/// The node's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// What one finished invocation adds.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The function.
    pub function: &'a str,
    /// `success`, `error`, `timeout`, `crash` or `failed`.
    pub outcome: &'static str,
    /// Cold or warm.
    pub start: Start,
    /// End to end in the node.
    pub latency: Duration,
    /// Waiting for and starting a VM.
    pub start_latency: Duration,
    /// KVM exits of the invocation.
    pub exits: u64,
    /// Payload bytes into the window.
    pub bytes_in: u64,
    /// Payload bytes out of the window.
    pub bytes_out: u64,
}

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished invocation.
    pub fn invocation(&self, o: &Observation<'_>) {
        let mut inner = self.inner();
        let f = o.function.to_owned();
        *inner
            .invocations
            .entry((f.clone(), o.outcome, o.start.as_str()))
            .or_default() += 1;
        inner
            .latency
            .entry((f.clone(), o.start.as_str()))
            .or_default()
            .observe(o.latency.as_secs_f64());
        inner
            .start_latency
            .entry((f.clone(), o.start.as_str()))
            .or_default()
            .observe(o.start_latency.as_secs_f64());
        *inner.exits.entry(f.clone()).or_default() += o.exits;
        *inner.bytes.entry((f.clone(), "in")).or_default() += o.bytes_in;
        *inner.bytes.entry((f, "out")).or_default() += o.bytes_out;
    }

    /// Records a VM started for `function` (`restore` or `boot`).
    pub fn vm_started(&self, function: &str, how: &'static str) {
        *self
            .inner()
            .vm_starts
            .entry((function.to_owned(), how))
            .or_default() += 1;
    }

    /// Records a VM of `function` stopped (`idle`, `timeout`, `crash`, `evicted`, `failed`,
    /// `shutdown`).
    pub fn vm_stopped(&self, function: &str, reason: &'static str) {
        *self
            .inner()
            .vm_stops
            .entry((function.to_owned(), reason))
            .or_default() += 1;
    }

    /// Records a request refused with `status` before it reached a function.
    pub fn rejected(&self, status: u16) {
        *self.inner().rejected.entry(status).or_default() += 1;
    }

    /// Invocations of `function` so far (all outcomes).
    pub fn invocations_of(&self, function: &str) -> u64 {
        self.inner()
            .invocations
            .iter()
            .filter(|((f, _, _), _)| f == function)
            .map(|(_, n)| n)
            .sum()
    }

    /// The whole exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let inner = self.inner();
        let mut out = String::with_capacity(8 << 10);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "nexus_invocations_total",
            "counter",
            "Invocations finished, by function, outcome and start (cold or warm).",
        );
        for ((f, outcome, start), n) in &inner.invocations {
            let _ = writeln!(
                out,
                "nexus_invocations_total{{function=\"{f}\",outcome=\"{outcome}\",start=\"{start}\"}} {n}"
            );
        }
        for (name, start) in [
            ("nexus_cold_starts_total", "cold"),
            ("nexus_warm_starts_total", "warm"),
        ] {
            family(
                &mut out,
                name,
                "counter",
                &format!("Invocations served by a {start} VM, by function."),
            );
            let mut per_function: BTreeMap<&str, u64> = BTreeMap::new();
            for ((f, _, s), n) in &inner.invocations {
                if *s == start {
                    *per_function.entry(f).or_default() += n;
                }
            }
            for (f, n) in per_function {
                let _ = writeln!(out, "{name}{{function=\"{f}\"}} {n}");
            }
        }
        family(
            &mut out,
            "nexus_invocation_duration_seconds",
            "histogram",
            "Invocation latency in the node, request to answer, by function and start.",
        );
        for ((f, start), h) in &inner.latency {
            h.render(
                &mut out,
                "nexus_invocation_duration_seconds",
                &format!("function=\"{f}\",start=\"{start}\""),
            );
        }
        family(
            &mut out,
            "nexus_vm_acquire_duration_seconds",
            "histogram",
            "Time to get a VM for an invocation (queueing, and the restore of a cold start).",
        );
        for ((f, start), h) in &inner.start_latency {
            h.render(
                &mut out,
                "nexus_vm_acquire_duration_seconds",
                &format!("function=\"{f}\",start=\"{start}\""),
            );
        }
        family(
            &mut out,
            "nexus_vm_exits_total",
            "counter",
            "KVM exits of the vCPU during invocations, by function.",
        );
        for (f, n) in &inner.exits {
            let _ = writeln!(out, "nexus_vm_exits_total{{function=\"{f}\"}} {n}");
        }
        family(
            &mut out,
            "nexus_window_bytes_total",
            "counter",
            "Payload bytes moved through the I/O windows during invocations (in: into the guest).",
        );
        for ((f, dir), n) in &inner.bytes {
            let _ = writeln!(
                out,
                "nexus_window_bytes_total{{function=\"{f}\",direction=\"{dir}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nexus_vm_starts_total",
            "counter",
            "VMs started, by function and how (restore from the snapshot, or boot).",
        );
        for ((f, how), n) in &inner.vm_starts {
            let _ = writeln!(
                out,
                "nexus_vm_starts_total{{function=\"{f}\",how=\"{how}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nexus_vm_stops_total",
            "counter",
            "VMs stopped, by function and reason.",
        );
        for ((f, reason), n) in &inner.vm_stops {
            let _ = writeln!(
                out,
                "nexus_vm_stops_total{{function=\"{f}\",reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nexus_requests_rejected_total",
            "counter",
            "Invocation requests answered with an error before reaching a function, by status.",
        );
        for (status, n) in &inner.rejected {
            let _ = writeln!(
                out,
                "nexus_requests_rejected_total{{status=\"{status}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nexus_vms",
            "gauge",
            "VMs of the node, by function and state.",
        );
        for (f, idle, busy, starting) in &gauges.vms {
            for (state, n) in [("idle", idle), ("busy", busy), ("starting", starting)] {
                let _ = writeln!(out, "nexus_vms{{function=\"{f}\",state=\"{state}\"}} {n}");
            }
        }
        family(
            &mut out,
            "nexus_queue_depth",
            "gauge",
            "Invocations waiting for a VM.",
        );
        let _ = writeln!(out, "nexus_queue_depth {}", gauges.queue_depth);
        family(
            &mut out,
            "nexus_vmm_resident_bytes",
            "gauge",
            "Resident memory of the node daemon, which runs every VMM (guest memory it touched included).",
        );
        let _ = writeln!(out, "nexus_vmm_resident_bytes {}", gauges.vmm_rss);
        family(
            &mut out,
            "nexus_vmm_cpu_seconds_total",
            "counter",
            "CPU time of the node daemon (vCPUs included).",
        );
        let _ = writeln!(out, "nexus_vmm_cpu_seconds_total {}", gauges.vmm_cpu);
        family(
            &mut out,
            "nexus_backend_up",
            "gauge",
            "Whether the shared backend answered the scrape's stats request.",
        );
        let _ = writeln!(
            out,
            "nexus_backend_up {}",
            u8::from(gauges.backend.is_some())
        );
        if let Some(b) = &gauges.backend {
            let rows: [(&str, &str, &str, String); 9] = [
                (
                    "nexus_backend_resident_bytes",
                    "gauge",
                    "Resident memory of the shared backend.",
                    b.rss_bytes.to_string(),
                ),
                (
                    "nexus_backend_cpu_seconds_total",
                    "counter",
                    "CPU time of the shared backend.",
                    b.cpu_seconds.to_string(),
                ),
                (
                    "nexus_backend_vms",
                    "gauge",
                    "VMs attached to the shared backend.",
                    b.vms.to_string(),
                ),
                (
                    "nexus_backend_queue_depth",
                    "gauge",
                    "Ring requests the backend is serving now, all VMs.",
                    b.in_flight.to_string(),
                ),
                (
                    "nexus_backend_queued_invocations",
                    "gauge",
                    "Invocations queued in the backend and not yet taken by a VM.",
                    b.queued_invocations.to_string(),
                ),
                (
                    "nexus_backend_uploads_pending",
                    "gauge",
                    "Write-behind uploads not yet durable.",
                    b.uploads_pending.to_string(),
                ),
                (
                    "nexus_backend_requests_total",
                    "counter",
                    "Ring requests served by the backend.",
                    b.requests.to_string(),
                ),
                (
                    "nexus_backend_window_bytes_in_total",
                    "counter",
                    "Payload bytes the backend wrote into windows.",
                    b.bytes_in.to_string(),
                ),
                (
                    "nexus_backend_window_bytes_out_total",
                    "counter",
                    "Payload bytes the backend read from windows.",
                    b.bytes_out.to_string(),
                ),
            ];
            for (name, kind, help, value) in rows {
                family(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        out
    }
}

/// This process's resident set (bytes) and CPU time (seconds), from `/proc/self`.
pub fn self_usage() -> (u64, f64) {
    // Linux on x86-64: 4 KiB pages and 100 clock ticks per second (the kernel ABI's USER_HZ).
    const PAGE: u64 = 4096;
    const TICKS: f64 = 100.0;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * PAGE;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / TICKS)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 7.0, 100.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "f=\"a\"");
        assert!(out.contains("x_bucket{f=\"a\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{f=\"a\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{f=\"a\",le=\"5\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{f=\"a\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{f=\"a\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{f=\"a\"} 5\n"), "{out}");
    }

    #[test]
    fn render_counts_invocations() {
        let m = Metrics::default();
        for start in [Start::Cold, Start::Warm, Start::Warm] {
            m.invocation(&Observation {
                function: "wc",
                outcome: "success",
                start,
                latency: Duration::from_millis(3),
                start_latency: Duration::from_millis(1),
                exits: 10,
                bytes_in: 100,
                bytes_out: 2,
            });
        }
        m.vm_stopped("wc", "timeout");
        m.rejected(404);
        let text = m.render(&Gauges {
            vms: vec![("wc".into(), 1, 0, 0)],
            queue_depth: 2,
            vmm_rss: 4096,
            vmm_cpu: 1.5,
            backend: None,
        });
        for line in [
            "nexus_invocations_total{function=\"wc\",outcome=\"success\",start=\"warm\"} 2",
            "nexus_cold_starts_total{function=\"wc\"} 1",
            "nexus_warm_starts_total{function=\"wc\"} 2",
            "nexus_vm_exits_total{function=\"wc\"} 30",
            "nexus_window_bytes_total{function=\"wc\",direction=\"in\"} 300",
            "nexus_vm_stops_total{function=\"wc\",reason=\"timeout\"} 1",
            "nexus_requests_rejected_total{status=\"404\"} 1",
            "nexus_vms{function=\"wc\",state=\"idle\"} 1",
            "nexus_queue_depth 2",
            "nexus_backend_up 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert_eq!(m.invocations_of("wc"), 3);
        let (rss, _) = self_usage();
        assert!(rss > 0);
    }
}
