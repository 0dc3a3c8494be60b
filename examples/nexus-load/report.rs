//! The final reports of both modes: what they hold (serialised as one JSON object for
//! `--json`) and how they read as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::api::ApiError;
use crate::node::NodeUsage;
use crate::stats::LatencySummary;

const MIB: f64 = 1024.0 * 1024.0;

/// The report of `nexus-load run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunReport {
    /// Always `run`.
    pub mode: &'static str,
    /// The daemon's URL.
    pub url: String,
    /// The function invoked.
    pub function: String,
    /// `open` (at `rate`) or `closed`.
    pub loop_kind: &'static str,
    /// Offered rate of the open loop, in invocations per second.
    pub rate: Option<f64>,
    /// Workers (and connections).
    pub concurrency: usize,
    /// The duration bound, in seconds.
    pub duration_limit_s: Option<f64>,
    /// The request-count bound.
    pub request_limit: Option<u64>,
    /// Warm-up invocations sent before the measurement (not counted below).
    pub warmup: u64,
    /// Wall time of the measured phase, in seconds.
    pub elapsed_s: f64,
    /// Invocations sent.
    pub sent: u64,
    /// Open loop: invocations dropped because every worker was busy at their send time.
    pub dropped: u64,
    /// Invocations finished, whatever their outcome.
    pub completed: u64,
    /// Invocations that succeeded.
    pub succeeded: u64,
    /// Finished invocations that did not succeed.
    pub failed: u64,
    /// Finished invocations by `status outcome` (`200 success`, `429 TooManyRequests`,
    /// `transport timeout`…).
    pub outcomes: BTreeMap<String, u64>,
    /// The first message seen for every failing outcome.
    pub errors: BTreeMap<String, String>,
    /// Finished invocations per second.
    pub throughput_rps: Option<f64>,
    /// Successful invocations per second.
    pub success_rps: Option<f64>,
    /// Client-side latency of the successful invocations.
    pub latency_ms: LatencySummary,
    /// Fraction of successful invocations that were cold starts.
    pub cold_fraction: Option<f64>,
    /// Successful cold starts.
    pub cold: u64,
    /// Successful warm starts.
    pub warm: u64,
    /// Mean server-side `timings_ms.total`.
    pub server_total_ms_mean: Option<f64>,
    /// Mean `vm_exits` per successful invocation.
    pub vm_exits_mean: Option<f64>,
    /// Mean `bytes_in` per successful invocation.
    pub bytes_in_mean: Option<f64>,
    /// Mean `bytes_out` per successful invocation.
    pub bytes_out_mean: Option<f64>,
    /// The node's memory and CPU over the measured phase.
    pub node: NodeUsage,
    /// TCP connections opened during the measured phase.
    pub connections_opened: u64,
    /// Open loop: the load generator's worst lag behind its schedule, in milliseconds.
    pub max_schedule_lag_ms: Option<f64>,
    /// Why the run ended early, when it did.
    pub stopped_early: Option<String>,
}

impl RunReport {
    /// The report as text, for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let shape = match self.rate {
            Some(rate) => format!("open loop at {rate} req/s, {} workers", self.concurrency),
            None => format!("closed loop, {} workers", self.concurrency),
        };
        let mut bounds = Vec::new();
        if let Some(d) = self.duration_limit_s {
            bounds.push(format!("{d} s"));
        }
        if let Some(n) = self.request_limit {
            bounds.push(format!("{n} requests"));
        }
        let _ = writeln!(
            out,
            "nexus-load run: {} at {}, {shape}, bounded by {}, {} warm-up",
            self.function,
            self.url,
            bounds.join(" and "),
            self.warmup
        );
        if let Some(reason) = &self.stopped_early {
            let _ = writeln!(out, "STOPPED EARLY: {reason}");
        }

        section(&mut out, "invocations");
        row(&mut out, "elapsed", format!("{:.2} s", self.elapsed_s));
        row(&mut out, "sent", self.sent.to_string());
        if self.rate.is_some() {
            row(
                &mut out,
                "dropped (all workers busy)",
                self.dropped.to_string(),
            );
            row(
                &mut out,
                "max schedule lag",
                format!("{} ms", num(self.max_schedule_lag_ms, 2)),
            );
        }
        row(&mut out, "completed", self.completed.to_string());
        for (outcome, count) in &self.outcomes {
            row(&mut out, &format!("  {outcome}"), count.to_string());
        }
        row(
            &mut out,
            "throughput",
            format!(
                "{} req/s ({} successful/s)",
                num(self.throughput_rps, 1),
                num(self.success_rps, 1)
            ),
        );
        row(
            &mut out,
            "connections opened",
            self.connections_opened.to_string(),
        );
        if !self.errors.is_empty() {
            section(&mut out, "first error of each kind");
            for (outcome, message) in &self.errors {
                row(&mut out, outcome, message.clone());
            }
        }

        section(&mut out, "latency, client side, successful invocations");
        let l = &self.latency_ms;
        row(
            &mut out,
            "p50 / p90 / p99 / max",
            format!(
                "{} / {} / {} / {} ms",
                num(l.p50_ms, 2),
                num(l.p90_ms, 2),
                num(l.p99_ms, 2),
                num(l.max_ms, 2)
            ),
        );
        row(
            &mut out,
            "mean",
            format!("{} ms over {} samples", num(l.mean_ms, 2), l.samples),
        );

        section(&mut out, "per invocation, as the daemon reports it");
        row(
            &mut out,
            "cold starts",
            format!(
                "{} ({} cold, {} warm)",
                num(self.cold_fraction, 4),
                self.cold,
                self.warm
            ),
        );
        row(
            &mut out,
            "server total (mean)",
            format!("{} ms", num(self.server_total_ms_mean, 2)),
        );
        row(&mut out, "VM exits (mean)", num(self.vm_exits_mean, 1));
        row(
            &mut out,
            "bytes in / out (mean)",
            format!(
                "{} / {}",
                num(self.bytes_in_mean, 0),
                num(self.bytes_out_mean, 0)
            ),
        );

        section(&mut out, "node, over the measured phase");
        let n = &self.node;
        row(
            &mut out,
            "resident, daemon / backend",
            format!(
                "{} / {} MiB (at the end)",
                num(n.daemon_rss_bytes.map(|b| b / MIB), 1),
                num(n.backend_rss_bytes.map(|b| b / MIB), 1)
            ),
        );
        row(
            &mut out,
            "CPU, daemon / backend",
            format!(
                "{} / {} s = {} / {} cores",
                num(n.daemon_cpu_seconds, 2),
                num(n.backend_cpu_seconds, 2),
                num(n.daemon_cpu_cores, 2),
                num(n.backend_cpu_cores, 2)
            ),
        );
        row(
            &mut out,
            "function VMs, idle / busy",
            format!(
                "{} / {} (at the end)",
                num(n.idle_vms, 0),
                num(n.busy_vms, 0)
            ),
        );
        row(
            &mut out,
            "daemon counted",
            format!(
                "{} invocations, {} cold",
                num(n.daemon_invocations, 0),
                num(n.daemon_cold_invocations, 0)
            ),
        );
        row(
            &mut out,
            "host MemAvailable drop",
            format!(
                "{} MiB (this host: includes nexus-load and KVM)",
                num(n.host_mem_available_drop_bytes.map(|b| b as f64 / MIB), 1)
            ),
        );
        out
    }
}

/// Warm invocations run against a parked pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WarmFigures {
    /// Invocations sent.
    pub invocations: u64,
    /// Invocations that succeeded.
    pub succeeded: u64,
    /// Invocations that did not.
    pub failed: u64,
    /// Client-side latency of the successful ones.
    pub latency_ms: LatencySummary,
    /// Fraction of cold starts among the successful ones (expected 0).
    pub cold_fraction: Option<f64>,
    /// The first message seen for every failing outcome.
    pub errors: BTreeMap<String, String>,
}

/// One row of `nexus-load park`: one pool size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParkRow {
    /// Idle VMs asked for.
    pub target_vms: u64,
    /// Idle VMs the daemon reported at the end of warming.
    pub reached_vms: u64,
    /// Idle VMs before warming.
    pub idle_before: u64,
    /// Wall time of the warm requests, from the previous size to this one, in seconds.
    pub park_seconds: f64,
    /// (Δ daemon RSS + Δ backend RSS) per newly parked VM, in bytes.
    pub rss_bytes_per_vm: Option<f64>,
    /// Δ host `MemAvailable` per newly parked VM, in bytes.
    pub host_bytes_per_vm: Option<f64>,
    /// Daemon plus backend resident bytes once parked.
    pub node_rss_bytes: Option<f64>,
    /// The warm invocations at this size (`None` when the size was not reached).
    pub warm: Option<WarmFigures>,
}

/// Where `nexus-load park` stopped, when the daemon could not reach a size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParkStop {
    /// The size asked for.
    pub target_vms: u64,
    /// Idle VMs reached.
    pub reached_vms: u64,
    /// HTTP status of the daemon's error (none for a transport failure).
    pub status: Option<u16>,
    /// The daemon's error (none for a transport failure).
    pub daemon_error: Option<ApiError>,
    /// The full error text.
    pub message: String,
}

/// The report of `nexus-load park`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParkReport {
    /// Always `park`.
    pub mode: &'static str,
    /// The daemon's URL.
    pub url: String,
    /// The function parked.
    pub function: String,
    /// VMs per warm request.
    pub step: u64,
    /// Warm invocations per size.
    pub invocations: u64,
    /// Workers for the warm invocations.
    pub concurrency: usize,
    /// One row per size tried.
    pub rows: Vec<ParkRow>,
    /// Where it stopped, when a size could not be reached.
    pub stopped: Option<ParkStop>,
    /// Why it ended early otherwise (Ctrl-C, a rejected invocation).
    pub stopped_early: Option<String>,
}

impl ParkReport {
    /// The report as text, for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "nexus-load park: {} at {}, warm steps of {}, {} warm invocations per size on {} workers",
            self.function, self.url, self.step, self.invocations, self.concurrency
        );
        let _ = writeln!(
            out,
            "memory per VM over the VMs newly parked for each row; host = MemAvailable drop on this host (includes KVM kernel memory)"
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:>7}  {:>7}  {:>9}  {:>12}  {:>13}  {:>8}  {:>8}  {:>6}",
            "N",
            "reached",
            "park (s)",
            "MiB/VM (RSS)",
            "MiB/VM (host)",
            "p50 (ms)",
            "p99 (ms)",
            "cold"
        );
        for r in &self.rows {
            let warm = r.warm.as_ref();
            let _ = writeln!(
                out,
                "{:>7}  {:>7}  {:>9}  {:>12}  {:>13}  {:>8}  {:>8}  {:>6}",
                r.target_vms,
                r.reached_vms,
                format!("{:.2}", r.park_seconds),
                num(r.rss_bytes_per_vm.map(|b| b / MIB), 3),
                num(r.host_bytes_per_vm.map(|b| b / MIB), 3),
                num(warm.and_then(|w| w.latency_ms.p50_ms), 2),
                num(warm.and_then(|w| w.latency_ms.p99_ms), 2),
                num(warm.and_then(|w| w.cold_fraction), 3),
            );
        }
        for r in &self.rows {
            let Some(w) = &r.warm else { continue };
            if w.failed > 0 {
                let _ = writeln!(
                    out,
                    "N={}: {} of {} warm invocations failed",
                    r.target_vms, w.failed, w.invocations
                );
                for (outcome, message) in &w.errors {
                    let _ = writeln!(out, "  {outcome}: {message}");
                }
            }
            if w.cold_fraction.is_some_and(|c| c > 0.0) {
                let _ = writeln!(
                    out,
                    "N={}: warm invocations found cold starts (fraction {})",
                    r.target_vms,
                    num(w.cold_fraction, 4)
                );
            }
        }
        if let Some(stop) = &self.stopped {
            let _ = writeln!(
                out,
                "\nSTOPPED at N={}: the daemon reached {} idle VMs: {}",
                stop.target_vms, stop.reached_vms, stop.message
            );
        }
        if let Some(reason) = &self.stopped_early {
            let _ = writeln!(out, "\nSTOPPED EARLY: {reason}");
        }
        out
    }
}

/// `value` with `decimals` decimals, or `-` when absent.
pub fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_string(),
    }
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "\n{title}");
}

fn row(out: &mut String, key: &str, value: String) {
    let _ = writeln!(out, "  {key:<30} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_report() -> RunReport {
        RunReport {
            mode: "run",
            url: "http://127.0.0.1:8080".to_string(),
            function: "wordcount".to_string(),
            loop_kind: "open",
            rate: Some(200.0),
            concurrency: 8,
            duration_limit_s: Some(30.0),
            sent: 5990,
            dropped: 10,
            completed: 5990,
            succeeded: 5980,
            failed: 10,
            outcomes: BTreeMap::from([
                ("200 success".to_string(), 5980),
                ("429 TooManyRequests".to_string(), 10),
            ]),
            errors: BTreeMap::from([("429 TooManyRequests".to_string(), "pool full".to_string())]),
            throughput_rps: Some(199.66),
            success_rps: Some(199.33),
            latency_ms: LatencySummary::from_samples(&[1.0, 2.0, 3.0, 40.0]),
            cold_fraction: Some(0.0025),
            cold: 15,
            warm: 5965,
            node: NodeUsage {
                wall_seconds: 30.0,
                daemon_rss_bytes: Some(64.0 * MIB),
                daemon_cpu_seconds: Some(15.0),
                daemon_cpu_cores: Some(0.5),
                host_mem_available_drop_bytes: Some(-(MIB as i64)),
                idle_vms: Some(8.0),
                daemon_invocations: Some(6000.0),
                daemon_cold_invocations: Some(15.0),
                ..NodeUsage::default()
            },
            connections_opened: 8,
            max_schedule_lag_ms: Some(1.25),
            ..RunReport::default()
        }
    }

    #[test]
    fn run_report_text() {
        let text = run_report().to_text();
        for needle in [
            "open loop at 200 req/s, 8 workers, bounded by 30 s, 0 warm-up",
            "dropped (all workers busy)     10",
            "  200 success                  5980",
            "  429 TooManyRequests          10",
            "throughput                     199.7 req/s (199.3 successful/s)",
            "429 TooManyRequests            pool full",
            "p50 / p90 / p99 / max          2.00 / 40.00 / 40.00 / 40.00 ms",
            "0.0025 (15 cold, 5965 warm)",
            "64.0 / - MiB",
            "15.00 / - s = 0.50 / - cores",
            "-1.0 MiB",
            "8 / - (at the end)",
            "6000 invocations, 15 cold",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("STOPPED"));
    }

    #[test]
    fn run_report_json_is_one_object() {
        let json = serde_json::to_value(run_report()).unwrap();
        assert_eq!(json["mode"], "run");
        assert_eq!(json["outcomes"]["200 success"], 5980);
        assert_eq!(json["latency_ms"]["p50_ms"], 2.0);
        assert_eq!(json["node"]["backend_rss_bytes"], serde_json::Value::Null);
    }

    #[test]
    fn park_report_text() {
        let report = ParkReport {
            mode: "park",
            url: "http://127.0.0.1:8080".to_string(),
            function: "wordcount".to_string(),
            step: 50,
            invocations: 1000,
            concurrency: 4,
            rows: vec![
                ParkRow {
                    target_vms: 100,
                    reached_vms: 100,
                    park_seconds: 2.5,
                    rss_bytes_per_vm: Some(1.5 * MIB),
                    host_bytes_per_vm: Some(2.0 * MIB),
                    warm: Some(WarmFigures {
                        invocations: 1000,
                        succeeded: 1000,
                        latency_ms: LatencySummary::from_samples(&[0.5, 0.9]),
                        cold_fraction: Some(0.0),
                        ..WarmFigures::default()
                    }),
                    ..ParkRow::default()
                },
                ParkRow {
                    target_vms: 500,
                    reached_vms: 320,
                    idle_before: 100,
                    park_seconds: 9.0,
                    ..ParkRow::default()
                },
            ],
            stopped: Some(ParkStop {
                target_vms: 500,
                reached_vms: 320,
                status: Some(429),
                daemon_error: None,
                message: "the daemon answered 429".to_string(),
            }),
            ..ParkReport::default()
        };
        let text = report.to_text();
        assert!(
            text.contains("    100      100       2.50         1.500          2.000      0.50      0.90   0.000"),
            "{text}"
        );
        assert!(text.contains("    500      320       9.00             -              -         -         -       -"), "{text}");
        assert!(text.contains(
            "STOPPED at N=500: the daemon reached 320 idle VMs: the daemon answered 429"
        ));
    }
}
