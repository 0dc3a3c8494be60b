//! The node's metrics, through `prometheus-client`, in the Prometheus text exposition format
//! (version 0.0.4).
//!
//! Counters and histograms live in a [`Registry`] and are updated as things happen; gauges
//! that describe the node now (VMs, queue depth, memory, CPU, the backend's figures) are read
//! when `/metrics` is scraped and passed to [`Metrics::render`], which encodes them through a
//! [`Collector`].

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histograms' buckets: 1 ms (a warm invocation) to a
/// minute (a slow function, a snapshot taken on a cold start).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: String,
    outcome: &'static str,
    start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    function: String,
    start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    function: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabels {
    function: String,
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    function: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    outcome: &'static str,
}

/// Upper bounds (seconds) of the buckets of a net VM's tap set-up: 50 µs to 100 ms.
pub const TAP_SETUP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// A histogram with [`LATENCY_BUCKETS`].
fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

type Latencies = Family<StartLabels, Histogram, fn() -> Histogram>;

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
    /// The vCPU pool's figures (`--vcpu-threads pool`).
    pub vcpu_pool: Option<nexus_kvm::pool::PoolStats>,
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
    /// Payload bytes into the window (a net VM: frame bytes into the guest).
    pub bytes_in: u64,
    /// Payload bytes out of the window (a net VM: frame bytes out of the guest).
    pub bytes_out: u64,
    /// Whether a net VM ran it (its bytes are frames on its tap, not window payloads).
    pub net: bool,
}

/// The node's counters and histograms, and the encoder of a scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The scrape's gauges; held while a scrape encodes them.
    scrape: std::sync::Arc<ScrapeGauges>,
    invocations: Family<InvocationLabels, Counter>,
    cold_starts: Family<FunctionLabels, Counter>,
    warm_starts: Family<FunctionLabels, Counter>,
    latency: Latencies,
    acquire: Latencies,
    exits: Family<FunctionLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    net_bytes: Family<DirectionLabels, Counter>,
    net_reconnects: Family<FunctionLabels, Counter>,
    tap_setup: Histogram,
    reset: Histogram,
    vm_starts: Family<HowLabels, Counter>,
    snapshot_events: Family<HowLabels, Counter>,
    vm_stops: Family<ReasonLabels, Counter>,
    rejected: Family<StatusLabels, Counter>,
    events_queued: Family<FunctionLabels, Counter>,
    events_refused: Family<FunctionLabels, Counter>,
    events_dropped: Family<FunctionLabels, Counter>,
    events_done: Family<OutcomeLabels, Counter>,
    event_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let latencies = || Latencies::new_with_constructor(latency_histogram as fn() -> Histogram);
        let metrics = Metrics {
            registry: Registry::default(),
            scrape: std::sync::Arc::default(),
            invocations: Family::default(),
            cold_starts: Family::default(),
            warm_starts: Family::default(),
            latency: latencies(),
            acquire: latencies(),
            exits: Family::default(),
            bytes: Family::default(),
            net_bytes: Family::default(),
            net_reconnects: Family::default(),
            tap_setup: Histogram::new(TAP_SETUP_BUCKETS.iter().copied()),
            reset: Histogram::new(TAP_SETUP_BUCKETS.iter().copied()),
            vm_starts: Family::default(),
            snapshot_events: Family::default(),
            vm_stops: Family::default(),
            rejected: Family::default(),
            events_queued: Family::default(),
            events_refused: Family::default(),
            events_dropped: Family::default(),
            events_done: Family::default(),
            event_queue: Gauge::default(),
        };
        metrics.registered()
    }

    /// Registers every metric (counters are named without `_total`: the encoder adds it).
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "nexus_invocations",
            "Invocations finished, by function, outcome and start (cold or warm)",
            self.invocations.clone(),
        );
        r.register(
            "nexus_cold_starts",
            "Invocations served by a cold VM, by function",
            self.cold_starts.clone(),
        );
        r.register(
            "nexus_warm_starts",
            "Invocations served by a warm VM, by function",
            self.warm_starts.clone(),
        );
        r.register(
            "nexus_invocation_duration_seconds",
            "Invocation latency in the node, request to answer, by function and start",
            self.latency.clone(),
        );
        r.register(
            "nexus_vm_acquire_duration_seconds",
            "Time to get a VM for an invocation (queueing, and the restore of a cold start)",
            self.acquire.clone(),
        );
        r.register(
            "nexus_vm_exits",
            "KVM exits of the vCPU during invocations, by function",
            self.exits.clone(),
        );
        r.register(
            "nexus_window_bytes",
            "Payload bytes moved through the I/O windows during invocations (in: into the guest)",
            self.bytes.clone(),
        );
        r.register(
            "nexus_net_frame_bytes",
            "Frame bytes through net VMs' taps during invocations (in: to the guest), by function",
            self.net_bytes.clone(),
        );
        r.register(
            "nexus_net_store_reconnects",
            "Store connections net functions' guests had to re-open, as they report them, by function",
            self.net_reconnects.clone(),
        );
        r.register(
            "nexus_net_tap_setup_duration_seconds",
            "Making and configuring a net VM's tap (one netlink datagram)",
            self.tap_setup.clone(),
        );
        r.register(
            "nexus_vm_reset_duration_seconds",
            "Resetting a VM to its snapshot after an invocation (isolation = \"reset\"): the \
             backend's reset, the vCPU, RAM, window and request queue",
            self.reset.clone(),
        );
        r.register(
            "nexus_vm_starts",
            "VMs started, by function and how (restore from the snapshot, or boot)",
            self.vm_starts.clone(),
        );
        r.register(
            "nexus_snapshot_events",
            "Snapshots of functions, by function and how: taken (booted), reused (left by an \
             earlier run), fetched (published by another node), fetch_missing, fetch_failed, \
             refused_<why> (a published one not trusted or not for this host), published, \
             publish_exists (another node was first), publish_failed",
            self.snapshot_events.clone(),
        );
        r.register(
            "nexus_vm_stops",
            "VMs stopped, by function and reason",
            self.vm_stops.clone(),
        );
        r.register(
            "nexus_requests_rejected",
            "Invocation requests answered with an error before reaching a function, by status",
            self.rejected.clone(),
        );
        r.register(
            "nexus_lambda_events_queued",
            "Event invocations (Lambda API) accepted into the in-memory queue, by function",
            self.events_queued.clone(),
        );
        r.register(
            "nexus_lambda_events_refused",
            "Event invocations (Lambda API) refused because the queue was full, by function",
            self.events_refused.clone(),
        );
        r.register(
            "nexus_lambda_events_dropped",
            "Queued event invocations (Lambda API) lost without running (the node shut down), by function",
            self.events_dropped.clone(),
        );
        r.register(
            "nexus_lambda_events_done",
            "Queued event invocations (Lambda API) that ran, by function and outcome",
            self.events_done.clone(),
        );
        r.register(
            "nexus_lambda_event_queue_depth",
            "Event invocations (Lambda API) queued and not yet running",
            self.event_queue.clone(),
        );
        r.register_collector(Box::new(std::sync::Arc::clone(&self.scrape)));
        self
    }

    /// Records a finished invocation.
    pub fn invocation(&self, o: &Observation<'_>) {
        let function = o.function.to_owned();
        let start = o.start.as_str();
        self.invocations
            .get_or_create(&InvocationLabels {
                function: function.clone(),
                outcome: o.outcome,
                start,
            })
            .inc();
        let by_start = FunctionLabels {
            function: function.clone(),
        };
        match o.start {
            Start::Cold => self.cold_starts.get_or_create(&by_start).inc(),
            Start::Warm => self.warm_starts.get_or_create(&by_start).inc(),
        };
        let labels = StartLabels {
            function: function.clone(),
            start,
        };
        self.latency
            .get_or_create(&labels)
            .observe(o.latency.as_secs_f64());
        self.acquire
            .get_or_create(&labels)
            .observe(o.start_latency.as_secs_f64());
        self.exits.get_or_create(&by_start).inc_by(o.exits);
        let bytes = if o.net { &self.net_bytes } else { &self.bytes };
        for (direction, n) in [("in", o.bytes_in), ("out", o.bytes_out)] {
            bytes
                .get_or_create(&DirectionLabels {
                    function: function.clone(),
                    direction,
                })
                .inc_by(n);
        }
    }

    /// Records `n` store reconnects a net function's guest reported.
    pub fn net_reconnects(&self, function: &str, n: u64) {
        if n > 0 {
            self.net_reconnects
                .get_or_create(&function_labels(function))
                .inc_by(n);
        }
    }

    /// Records a net VM's tap set-up.
    pub fn tap_setup(&self, took: Duration) {
        self.tap_setup.observe(took.as_secs_f64());
    }

    /// Records a VM's reset to its snapshot.
    pub fn vm_reset(&self, took: Duration) {
        self.reset.observe(took.as_secs_f64());
    }

    /// Records a VM started for `function` (`restore` or `boot`).
    pub fn vm_started(&self, function: &str, how: &'static str) {
        self.vm_starts
            .get_or_create(&HowLabels {
                function: function.to_owned(),
                how,
            })
            .inc();
    }

    /// Records what happened to `function`'s snapshot (see `nexus_snapshot_events`).
    pub fn snapshot_event(&self, function: &str, how: &'static str) {
        self.snapshot_events
            .get_or_create(&HowLabels {
                function: function.to_owned(),
                how,
            })
            .inc();
    }

    /// Records a VM of `function` stopped (`idle`, `timeout`, `crash`, `evicted`, `failed`,
    /// `shutdown`).
    pub fn vm_stopped(&self, function: &str, reason: &'static str) {
        self.vm_stops
            .get_or_create(&ReasonLabels {
                function: function.to_owned(),
                reason,
            })
            .inc();
    }

    /// Records a request refused with `status` before it reached a function.
    pub fn rejected(&self, status: u16) {
        self.rejected.get_or_create(&StatusLabels { status }).inc();
    }

    /// Records an event invocation of `function` queued (the queue now holds one more).
    pub fn event_queued(&self, function: &str) {
        self.events_queued
            .get_or_create(&function_labels(function))
            .inc();
        self.event_queue.inc();
    }

    /// Records an event invocation of `function` refused: the queue was full.
    pub fn event_refused(&self, function: &str) {
        self.events_refused
            .get_or_create(&function_labels(function))
            .inc();
    }

    /// Records a queued event invocation of `function` taken off the queue to run.
    pub fn event_started(&self) {
        self.event_queue.dec();
    }

    /// Records a queued event invocation of `function` that ran, with its outcome
    /// (`success`, `error`, or the node's failure: `timeout`, `crash`, `failed`…).
    pub fn event_done(&self, function: &str, outcome: &'static str) {
        self.events_done
            .get_or_create(&OutcomeLabels {
                function: function.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Records a queued event invocation of `function` dropped without running.
    pub fn event_dropped(&self, function: &str) {
        self.events_dropped
            .get_or_create(&function_labels(function))
            .inc();
        self.event_queue.dec();
    }

    /// Invocations of `function` so far (all outcomes).
    pub fn invocations_of(&self, function: &str) -> u64 {
        let labels = function_labels(function);
        let count = |family: &Family<FunctionLabels, Counter>| {
            family.get(&labels).map_or(0, |counter| counter.get())
        };
        count(&self.cold_starts) + count(&self.warm_starts)
    }

    /// The whole exposition, with the scrape's `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        // One scrape at a time: the gauges encoded are its own.
        let _scrape = lock(&self.scrape.encoding);
        *lock(&self.scrape.gauges) = gauges.clone();
        let mut out = String::with_capacity(8 << 10);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            log::warn!("metrics: encoding failed: {e}");
        }
        out
    }
}

fn function_labels(function: &str) -> FunctionLabels {
    FunctionLabels {
        function: function.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gauges of the scrape being encoded.
#[derive(Debug, Default)]
struct ScrapeGauges {
    /// Held by a scrape from setting the gauges to encoding them.
    encoding: Mutex<()>,
    gauges: Mutex<Gauges>,
}

impl Collector for ScrapeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = lock(&self.gauges).clone();
        {
            let mut vms = encoder.encode_descriptor(
                "nexus_vms",
                "VMs of the node, by function and state.",
                None,
                MetricType::Gauge,
            )?;
            for (function, idle, busy, starting) in &g.vms {
                for (state, n) in [("idle", idle), ("busy", busy), ("starting", starting)] {
                    let labels = [("function", function.as_str()), ("state", state)];
                    ConstGauge::new(*n as i64).encode(vms.encode_family(&labels)?)?;
                }
            }
        }
        gauge(
            &mut encoder,
            "nexus_queue_depth",
            "Invocations waiting for a VM.",
            g.queue_depth as i64,
        )?;
        gauge(
            &mut encoder,
            "nexus_vmm_resident_bytes",
            "Resident memory of the node daemon, which runs every VMM (guest memory it touched included).",
            g.vmm_rss as i64,
        )?;
        counter(
            &mut encoder,
            "nexus_vmm_cpu_seconds",
            "CPU time of the node daemon (vCPUs included).",
            g.vmm_cpu,
        )?;
        if let Some(pool) = &g.vcpu_pool {
            gauge(
                &mut encoder,
                "nexus_vcpu_pool_vcpus",
                "vCPUs on the node's vCPU pool whose run has not ended.",
                pool.vcpus as i64,
            )?;
            gauge(
                &mut encoder,
                "nexus_vcpu_pool_parked",
                "Of those, parked: waiting on their device in the pool's epoll set, on no thread.",
                pool.parked as i64,
            )?;
            gauge(
                &mut encoder,
                "nexus_vcpu_pool_workers",
                "Worker threads of the vCPU pool.",
                pool.workers as i64,
            )?;
            gauge(
                &mut encoder,
                "nexus_vcpu_pool_idle_workers",
                "Of those, idle (watching the pool's epoll set).",
                pool.idle_workers as i64,
            )?;
        }
        gauge(
            &mut encoder,
            "nexus_backend_up",
            "Whether the shared backend answered the scrape's stats request.",
            i64::from(g.backend.is_some()),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "nexus_panics",
                "Panics caught, each failing one VM or invocation only, by where: vcpu (a vCPU's \
                 run, in a device's exit handling), invocation (the node's handling of an \
                 invocation), reset (a VM's reset after its answer), background (the reaper, \
                 stopping retired VMs, publishing a snapshot), backend (the shared backend \
                 serving one VM; its count since it started, present while it answers).",
                None,
                MetricType::Counter,
            )?;
            use super::panics::{Site, count};
            for site in Site::ALL {
                let labels = [("where", site.as_str())];
                ConstCounter::new(count(site)).encode(family.encode_family(&labels)?)?;
            }
            if let Some(b) = &g.backend {
                let labels = [("where", "backend")];
                ConstCounter::new(b.panics).encode(family.encode_family(&labels)?)?;
            }
        }
        let Some(b) = &g.backend else { return Ok(()) };
        gauge(
            &mut encoder,
            "nexus_backend_resident_bytes",
            "Resident memory of the shared backend.",
            b.rss_bytes as i64,
        )?;
        counter(
            &mut encoder,
            "nexus_backend_cpu_seconds",
            "CPU time of the shared backend.",
            b.cpu_seconds,
        )?;
        for (name, help, value) in [
            (
                "nexus_backend_vms",
                "VMs attached to the shared backend.",
                b.vms,
            ),
            (
                "nexus_backend_queue_depth",
                "Ring requests the backend is serving now, all VMs.",
                b.in_flight,
            ),
            (
                "nexus_backend_queued_invocations",
                "Invocations queued in the backend and not yet taken by a VM.",
                b.queued_invocations,
            ),
            (
                "nexus_backend_uploads_pending",
                "Write-behind uploads not yet durable.",
                b.uploads_pending,
            ),
        ] {
            gauge(&mut encoder, name, help, value as i64)?;
        }
        for (name, help, value) in [
            (
                "nexus_backend_requests",
                "Ring requests served by the backend.",
                b.requests,
            ),
            (
                "nexus_backend_window_bytes_in",
                "Payload bytes the backend wrote into windows.",
                b.bytes_in,
            ),
            (
                "nexus_backend_window_bytes_out",
                "Payload bytes the backend read from windows.",
                b.bytes_out,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family.encode_family(&NO_LABELS)?)?;
        }
        if !b.tenants.is_empty() {
            for (name, help, value) in [
                (
                    "nexus_backend_tenant_stored_bytes",
                    "Bytes stored under each tenant, as its quota counts them (0 without a \
                     bytes or objects quota).",
                    (|t: &nexus_ring::control::TenantStats| t.bytes) as fn(&_) -> u64,
                ),
                (
                    "nexus_backend_tenant_stored_objects",
                    "Objects stored under each tenant, likewise.",
                    |t| t.objects,
                ),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for t in &b.tenants {
                    let labels = [("tenant", t.name.as_str())];
                    ConstGauge::new(value(t) as i64).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "nexus_backend_tenant_quota_refusals",
                "Requests of each tenant's VMs refused for its quota since the backend started.",
                None,
                MetricType::Counter,
            )?;
            for t in &b.tenants {
                let labels = [("tenant", t.name.as_str())];
                ConstCounter::new(t.quota_refusals).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

const NO_LABELS: [(&str, &str); 0] = [];

/// Encodes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

/// Encodes one unlabelled counter (`name` without `_total`, which the encoder adds).
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
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

    fn observation(start: Start, latency_ms: u64) -> Observation<'static> {
        Observation {
            function: "wc",
            outcome: "success",
            start,
            latency: Duration::from_millis(latency_ms),
            start_latency: Duration::from_millis(1),
            exits: 10,
            bytes_in: 100,
            bytes_out: 2,
            net: false,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for ms in [0, 3, 3, 7_000, 100_000] {
            m.invocation(&observation(Start::Warm, ms));
        }
        let out = m.render(&Gauges::default());
        let name = "nexus_invocation_duration_seconds";
        let labels = "function=\"wc\",start=\"warm\"";
        for line in [
            format!("{name}_bucket{{{labels},le=\"0.001\"}} 1"),
            format!("{name}_bucket{{{labels},le=\"0.005\"}} 3"),
            format!("{name}_bucket{{{labels},le=\"5\"}} 3"),
            format!("{name}_bucket{{{labels},le=\"10\"}} 4"),
            format!("{name}_bucket{{{labels},le=\"+Inf\"}} 5"),
            format!("{name}_count{{{labels}}} 5"),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
        }
    }

    #[test]
    fn render_counts_invocations_and_events() {
        let m = Metrics::default();
        for start in [Start::Cold, Start::Warm, Start::Warm] {
            m.invocation(&observation(start, 3));
        }
        m.vm_stopped("wc", "timeout");
        m.rejected(404);
        m.event_queued("wc");
        m.event_queued("wc");
        m.event_started();
        m.event_done("wc", "success");
        m.event_dropped("wc");
        m.event_refused("wc");
        m.invocation(&Observation {
            function: "wcn",
            net: true,
            bytes_in: 1500,
            ..observation(Start::Cold, 3)
        });
        m.net_reconnects("wcn", 2);
        m.net_reconnects("wcn", 0);
        m.net_reconnects("wcn", 1);
        m.tap_setup(Duration::from_micros(300));
        let text = m.render(&Gauges {
            vms: vec![("wc".into(), 1, 0, 0)],
            queue_depth: 2,
            vmm_rss: 4096,
            vmm_cpu: 1.5,
            backend: None,
            vcpu_pool: Some(nexus_kvm::pool::PoolStats {
                vcpus: 5,
                parked: 4,
                workers: 2,
                idle_workers: 1,
            }),
        });
        for line in [
            "# TYPE nexus_invocations_total counter",
            "nexus_invocations_total{function=\"wc\",outcome=\"success\",start=\"warm\"} 2",
            "nexus_cold_starts_total{function=\"wc\"} 1",
            "nexus_warm_starts_total{function=\"wc\"} 2",
            "nexus_vm_exits_total{function=\"wc\"} 30",
            "nexus_window_bytes_total{function=\"wc\",direction=\"in\"} 300",
            "nexus_net_frame_bytes_total{function=\"wcn\",direction=\"in\"} 1500",
            "nexus_net_store_reconnects_total{function=\"wcn\"} 3",
            "nexus_net_tap_setup_duration_seconds_bucket{le=\"0.00025\"} 0",
            "nexus_net_tap_setup_duration_seconds_bucket{le=\"0.0005\"} 1",
            "nexus_vm_stops_total{function=\"wc\",reason=\"timeout\"} 1",
            "nexus_requests_rejected_total{status=\"404\"} 1",
            "nexus_lambda_events_queued_total{function=\"wc\"} 2",
            "nexus_lambda_events_done_total{function=\"wc\",outcome=\"success\"} 1",
            "nexus_lambda_events_dropped_total{function=\"wc\"} 1",
            "nexus_lambda_events_refused_total{function=\"wc\"} 1",
            "nexus_lambda_event_queue_depth 0",
            "# TYPE nexus_vms gauge",
            "nexus_vms{function=\"wc\",state=\"idle\"} 1",
            "nexus_queue_depth 2",
            "nexus_vmm_resident_bytes 4096",
            "nexus_vmm_cpu_seconds_total 1.5",
            "nexus_backend_up 0",
            "nexus_vcpu_pool_vcpus 5",
            "nexus_vcpu_pool_parked 4",
            "nexus_vcpu_pool_workers 2",
            "nexus_vcpu_pool_idle_workers 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("nexus_backend_vms"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("nexus_panics_total{where=\"vcpu\"} ")),
            "{text}"
        );
        assert!(!text.contains("where=\"backend\""), "{text}");
        assert!(
            !text.contains("nexus_window_bytes_total{function=\"wcn\""),
            "{text}"
        );
        assert_eq!(m.invocations_of("wc"), 3);
        assert_eq!(m.invocations_of("other"), 0);

        // With the backend's figures.
        let text = m.render(&Gauges {
            backend: Some(nexus_ring::control::BackendStats {
                vms: 3,
                requests: 7,
                cpu_seconds: 0.25,
                panics: 2,
                tenants: vec![nexus_ring::control::TenantStats {
                    name: "alpha".into(),
                    bytes: 4096,
                    objects: 3,
                    quota_refusals: 5,
                }],
                ..Default::default()
            }),
            ..Gauges::default()
        });
        for line in [
            "nexus_backend_up 1",
            "nexus_backend_vms 3",
            "nexus_backend_requests_total 7",
            "nexus_backend_cpu_seconds_total 0.25",
            "nexus_panics_total{where=\"backend\"} 2",
            "nexus_backend_tenant_stored_bytes{tenant=\"alpha\"} 4096",
            "nexus_backend_tenant_stored_objects{tenant=\"alpha\"} 3",
            "nexus_backend_tenant_quota_refusals_total{tenant=\"alpha\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        let (rss, _) = self_usage();
        assert!(rss > 0);
    }
}
