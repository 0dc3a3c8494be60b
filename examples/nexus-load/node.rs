//! What the load generator reads about the node: the daemon's and backend's memory and CPU
//! (from `GET /metrics`) and the host's available memory (from `/proc/meminfo`).
//!
//! The load generator runs on the same host as the daemon, so the host's `MemAvailable`
//! drop includes what it allocates itself (small and steady during a run) and the kernel
//! memory KVM allocates for the VMs (which the daemon's RSS does not show).

use std::time::Instant;

use serde::Serialize;

use crate::api;
use crate::http::Connection;
use crate::metrics::Metrics;
use crate::stats::ratio;

/// Errors reading `/proc/meminfo`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path read.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A field the load generator needs is missing or unreadable.
    #[error("/proc/meminfo has no readable {0} line")]
    Field(&'static str),
}

/// The host memory figures read from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available_bytes: u64,
}

/// Reads `MemTotal` and `MemAvailable` out of `/proc/meminfo`'s text.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, Error> {
    let field = |name: &'static str| -> Result<u64, Error> {
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                let mut words = rest.split_whitespace();
                let value: u64 = words.next()?.parse().ok()?;
                let scale = match words.next() {
                    None => 1,
                    Some(unit) if unit.eq_ignore_ascii_case("kB") => 1024,
                    Some(_) => return None,
                };
                value.checked_mul(scale)
            })
            .ok_or(Error::Field(name))
    };
    Ok(MemInfo {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// Reads the host's `/proc/meminfo`.
pub fn read_meminfo() -> Result<MemInfo, Error> {
    const PATH: &str = "/proc/meminfo";
    let text =
        std::fs::read_to_string(PATH).map_err(|source| Error::Read { path: PATH, source })?;
    parse_meminfo(&text)
}

/// The node's figures at one instant. A figure is `None` when it could not be read (a
/// warning says why when the sample is taken).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeSample {
    /// When it was taken.
    pub taken: Instant,
    /// `nexus_vmm_resident_bytes`.
    pub daemon_rss: Option<f64>,
    /// `nexus_backend_resident_bytes`.
    pub backend_rss: Option<f64>,
    /// `nexus_vmm_cpu_seconds_total`.
    pub daemon_cpu: Option<f64>,
    /// `nexus_backend_cpu_seconds_total`.
    pub backend_cpu: Option<f64>,
    /// `nexus_vms{function=…,state="idle"}` for the function measured.
    pub idle_vms: Option<f64>,
    /// `nexus_vms{function=…,state="busy"}` for the function measured.
    pub busy_vms: Option<f64>,
    /// `nexus_invocations_total{function=…}`, all outcomes and starts.
    pub invocations: Option<f64>,
    /// `nexus_invocations_total{function=…,start="cold"}`, all outcomes.
    pub cold_invocations: Option<f64>,
    /// The host's `MemAvailable`, in bytes.
    pub mem_available: Option<u64>,
}

impl NodeSample {
    /// The figures out of a scrape and a meminfo reading, either of which may be missing.
    pub fn from_parts(
        taken: Instant,
        metrics: Option<&Metrics>,
        meminfo: Option<&MemInfo>,
        function: &str,
    ) -> Self {
        let gauge = |name: &str| metrics.and_then(|m| m.sum(name, &[]));
        NodeSample {
            taken,
            daemon_rss: gauge("nexus_vmm_resident_bytes"),
            backend_rss: gauge("nexus_backend_resident_bytes"),
            daemon_cpu: gauge("nexus_vmm_cpu_seconds_total"),
            backend_cpu: gauge("nexus_backend_cpu_seconds_total"),
            idle_vms: metrics
                .and_then(|m| m.sum("nexus_vms", &[("function", function), ("state", "idle")])),
            busy_vms: metrics
                .and_then(|m| m.sum("nexus_vms", &[("function", function), ("state", "busy")])),
            invocations: metrics
                .and_then(|m| m.sum("nexus_invocations_total", &[("function", function)])),
            cold_invocations: metrics.and_then(|m| {
                m.sum(
                    "nexus_invocations_total",
                    &[("function", function), ("start", "cold")],
                )
            }),
            mem_available: meminfo.map(|m| m.available_bytes),
        }
    }

    /// Daemon plus backend resident bytes; a missing one counts as zero, both missing is
    /// `None`.
    pub fn node_rss(&self) -> Option<f64> {
        match (self.daemon_rss, self.backend_rss) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        }
    }
}

/// Takes a [`NodeSample`]: scrapes `/metrics` on `conn` and reads `/proc/meminfo`. Whatever
/// cannot be read is logged as a warning and left out, so a missing figure never stops a
/// measurement.
pub async fn sample(conn: &mut Connection, function: &str) -> NodeSample {
    let metrics = match api::metrics(conn).await {
        Ok(text) => {
            let metrics = Metrics::parse(&text);
            if metrics.skipped > 0 {
                log::debug!("{} unreadable lines in /metrics", metrics.skipped);
            }
            Some(metrics)
        }
        Err(e) => {
            log::warn!(
                "node memory and CPU figures unavailable: {:#}",
                anyhow::Error::new(e)
            );
            None
        }
    };
    let meminfo = match read_meminfo() {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!(
                "host memory figures unavailable: {:#}",
                anyhow::Error::new(e)
            );
            None
        }
    };
    let taken = Instant::now();
    let sample = NodeSample::from_parts(taken, metrics.as_ref(), meminfo.as_ref(), function);
    if let Some(m) = &metrics {
        for (name, value) in [
            ("nexus_vmm_resident_bytes", sample.daemon_rss),
            ("nexus_backend_resident_bytes", sample.backend_rss),
            ("nexus_vmm_cpu_seconds_total", sample.daemon_cpu),
            ("nexus_backend_cpu_seconds_total", sample.backend_cpu),
        ] {
            if value.is_none() {
                log::warn!(
                    "/metrics has no {name} ({} samples read): that figure is left out",
                    m.samples.len()
                );
            }
        }
    }
    sample
}

/// The node's resource use over a phase, between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NodeUsage {
    /// Wall time between the two samples, in seconds.
    pub wall_seconds: f64,
    /// The daemon's resident bytes at the end.
    pub daemon_rss_bytes: Option<f64>,
    /// The backend's resident bytes at the end.
    pub backend_rss_bytes: Option<f64>,
    /// CPU seconds the daemon used during the phase.
    pub daemon_cpu_seconds: Option<f64>,
    /// CPU seconds the backend used during the phase.
    pub backend_cpu_seconds: Option<f64>,
    /// The daemon's mean CPU use, in cores (CPU seconds / wall seconds).
    pub daemon_cpu_cores: Option<f64>,
    /// The backend's mean CPU use, in cores.
    pub backend_cpu_cores: Option<f64>,
    /// How much the host's `MemAvailable` dropped (negative: it grew), in bytes.
    pub host_mem_available_drop_bytes: Option<i64>,
    /// The function's idle VMs at the end.
    pub idle_vms: Option<f64>,
    /// The function's busy VMs at the end.
    pub busy_vms: Option<f64>,
    /// Invocations of the function the daemon counted during the phase.
    pub daemon_invocations: Option<f64>,
    /// Of those, cold starts.
    pub daemon_cold_invocations: Option<f64>,
}

impl NodeUsage {
    /// The use between `before` and `after`.
    pub fn between(before: &NodeSample, after: &NodeSample) -> Self {
        let wall_seconds = after.taken.duration_since(before.taken).as_secs_f64();
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let daemon_cpu_seconds = delta(before.daemon_cpu, after.daemon_cpu);
        let backend_cpu_seconds = delta(before.backend_cpu, after.backend_cpu);
        NodeUsage {
            wall_seconds,
            daemon_rss_bytes: after.daemon_rss,
            backend_rss_bytes: after.backend_rss,
            daemon_cpu_seconds,
            backend_cpu_seconds,
            daemon_cpu_cores: daemon_cpu_seconds.and_then(|s| ratio(s, wall_seconds)),
            backend_cpu_cores: backend_cpu_seconds.and_then(|s| ratio(s, wall_seconds)),
            host_mem_available_drop_bytes: mem_drop(before, after),
            idle_vms: after.idle_vms,
            busy_vms: after.busy_vms,
            daemon_invocations: delta(before.invocations, after.invocations),
            daemon_cold_invocations: delta(before.cold_invocations, after.cold_invocations),
        }
    }
}

/// How much `MemAvailable` dropped from `before` to `after`, in bytes.
pub fn mem_drop(before: &NodeSample, after: &NodeSample) -> Option<i64> {
    let before = i64::try_from(before.mem_available?).ok()?;
    let after = i64::try_from(after.mem_available?).ok()?;
    Some(before - after)
}

/// Memory per parked VM between two samples around parking `new_vms` more VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerVmMemory {
    /// (Δ daemon RSS + Δ backend RSS) / new VMs, in bytes.
    pub rss_bytes: Option<f64>,
    /// Δ host `MemAvailable` drop / new VMs, in bytes (includes kernel memory KVM
    /// allocates).
    pub host_bytes: Option<f64>,
}

impl PerVmMemory {
    /// Memory per VM for `new_vms` parked between `before` and `after`.
    pub fn between(before: &NodeSample, after: &NodeSample, new_vms: u64) -> Self {
        let vms = new_vms as f64;
        let rss = match (before.node_rss(), after.node_rss()) {
            (Some(b), Some(a)) => ratio(a - b, vms),
            _ => None,
        };
        PerVmMemory {
            rss_bytes: rss,
            host_bytes: mem_drop(before, after).and_then(|d| ratio(d as f64, vms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MEMINFO: &str = "MemTotal:       16303348 kB\n\
                           MemFree:         1215260 kB\n\
                           MemAvailable:    9876543 kB\n\
                           Buffers:          512000 kB\n\
                           HugePages_Total:       0\n";

    #[test]
    fn reads_meminfo() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total_bytes, 16303348 * 1024);
        assert_eq!(m.available_bytes, 9876543 * 1024);
    }

    #[test]
    fn meminfo_without_available_is_an_error() {
        let err = parse_meminfo("MemTotal: 1 kB\nMemFree: 1 kB\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/meminfo has no readable MemAvailable line"
        );
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
        // A prefix of another field's name is not that field.
        assert!(parse_meminfo("MemTotalX: 1 kB\nMemAvailable: 1 kB").is_err());
    }

    #[test]
    fn this_host_has_meminfo() {
        let m = read_meminfo().unwrap();
        assert!(m.available_bytes > 0 && m.available_bytes <= m.total_bytes);
    }

    fn node(at: Instant, rss: f64, backend: f64, cpu: f64, avail: u64) -> NodeSample {
        NodeSample {
            taken: at,
            daemon_rss: Some(rss),
            backend_rss: Some(backend),
            daemon_cpu: Some(cpu),
            backend_cpu: Some(cpu / 2.0),
            idle_vms: None,
            busy_vms: None,
            invocations: Some(cpu * 10.0),
            cold_invocations: None,
            mem_available: Some(avail),
        }
    }

    #[test]
    fn usage_between_samples() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(4);
        let before = node(t0, 100.0, 10.0, 1.0, 1 << 30);
        let after = node(t1, 300.0, 20.0, 7.0, (1 << 30) - 4096);
        let u = NodeUsage::between(&before, &after);
        assert_eq!(u.wall_seconds, 4.0);
        assert_eq!(u.daemon_rss_bytes, Some(300.0));
        assert_eq!(u.daemon_cpu_seconds, Some(6.0));
        assert_eq!(u.backend_cpu_seconds, Some(3.0));
        assert_eq!(u.daemon_cpu_cores, Some(1.5));
        assert_eq!(u.backend_cpu_cores, Some(0.75));
        assert_eq!(u.host_mem_available_drop_bytes, Some(4096));
        assert_eq!(u.daemon_invocations, Some(60.0));
        assert_eq!(u.daemon_cold_invocations, None);

        let per_vm = PerVmMemory::between(&before, &after, 10);
        assert_eq!(per_vm.rss_bytes, Some(21.0));
        assert_eq!(per_vm.host_bytes, Some(409.6));
        assert_eq!(
            PerVmMemory::between(&before, &after, 0),
            PerVmMemory::default()
        );
    }

    #[test]
    fn missing_figures_stay_missing() {
        let t0 = Instant::now();
        let empty = NodeSample::from_parts(t0, None, None, "f");
        let u = NodeUsage::between(&empty, &empty);
        assert_eq!(u.daemon_cpu_seconds, None);
        assert_eq!(u.daemon_cpu_cores, None);
        assert_eq!(u.host_mem_available_drop_bytes, None);

        let m = Metrics::parse(
            "nexus_vmm_resident_bytes 50\nnexus_vms{function=\"f\",state=\"idle\"} 3\n\
             nexus_invocations_total{function=\"f\",outcome=\"success\",start=\"cold\"} 2\n\
             nexus_invocations_total{function=\"f\",outcome=\"success\",start=\"warm\"} 5\n\
             nexus_invocations_total{function=\"g\",outcome=\"success\",start=\"cold\"} 9\n",
        );
        let s = NodeSample::from_parts(t0, Some(&m), None, "f");
        assert_eq!(s.node_rss(), Some(50.0));
        assert_eq!(s.idle_vms, Some(3.0));
        assert_eq!(s.busy_vms, None);
        assert_eq!(s.invocations, Some(7.0));
        assert_eq!(s.cold_invocations, Some(2.0));
        assert_eq!(empty.node_rss(), None);
    }
}
