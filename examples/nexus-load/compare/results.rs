//! What the comparison measured: plain data, serialised beside the document
//! (`comparison/results.json`) and read by the document writer and the plots.

use serde::Serialize;

use super::cpu::CpuUsage;
use super::density::DensityOutcome;
use crate::stats::LatencySummary;

/// The two ways a function's guest reaches storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPath {
    /// The nexus-io device and the shared backend (`io = "nexus"`).
    Nexus,
    /// The guest's own TCP/IP stack and S3 client over a tap (`io = "net"`, the baseline).
    Net,
}

impl IoPath {
    /// Both, Nexus first.
    pub const BOTH: [IoPath; 2] = [IoPath::Nexus, IoPath::Net];

    /// The name of the registration of `function` on this path.
    pub fn function_name(self, function: &str) -> String {
        match self {
            IoPath::Nexus => function.to_string(),
            IoPath::Net => format!("{function}-net"),
        }
    }

    /// How the document names the path.
    pub fn label(self) -> &'static str {
        match self {
            IoPath::Nexus => "Nexus",
            IoPath::Net => "baseline",
        }
    }
}

/// The figures of one function, input and path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathFigures {
    /// Warm latency, closed loop, 1 client.
    pub warm_1: LatencySummary,
    /// Warm latency, closed loop, 4 clients.
    pub warm_4: LatencySummary,
    /// Invocations per second of the 4-client loop.
    pub throughput_4: f64,
    /// Cold starts: client-side latency of invocations that restored a VM.
    pub cold: LatencySummary,
    /// The daemon's `timings_ms.restore` of those, median.
    pub cold_restore_p50_ms: Option<f64>,
    /// Cold-phase invocations that were answered warm (left out of `cold`).
    pub cold_not_cold: u64,
    /// Host CPU over the 4-client loop (the node's processes, irq and softirq).
    pub cpu: CpuUsage,
    /// Invocations the daemon completed over that loop.
    pub cpu_invocations: u64,
    /// Host CPU per warm invocation, in ms.
    pub cpu_ms_per_invocation: Option<f64>,
    /// KVM exits per warm invocation (`nexus_vm_exits_total` over the 4-client loop).
    pub exits_per_invocation: Option<f64>,
    /// Invocations that failed in any phase.
    pub failed: u64,
    /// The first error, when one failed.
    pub first_error: Option<String>,
}

/// One function and input, both paths.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The function (the Nexus registration's name).
    pub function: String,
    /// The input, for people (`1 KiB object`, `inline "20"`).
    pub input: String,
    /// Nexus's figures.
    pub nexus: Option<PathFigures>,
    /// The baseline's figures.
    pub net: Option<PathFigures>,
    /// Warm latency samples (ms) of the 1-client loop, for the plots (not serialised).
    #[serde(skip)]
    pub samples: Vec<(IoPath, Vec<f64>)>,
}

impl CaseResult {
    /// The figures of `path`.
    pub fn path(&self, path: IoPath) -> Option<&PathFigures> {
        match path {
            IoPath::Nexus => self.nexus.as_ref(),
            IoPath::Net => self.net.as_ref(),
        }
    }
}

/// One probe of a density search.
#[derive(Debug, Clone, Serialize)]
pub struct DensityProbe {
    /// VMs parked.
    pub vms: u64,
    /// Warm latency under the open loop.
    pub latency: LatencySummary,
    /// Invocations dropped (no worker free) or failed, or answered cold.
    pub dropped: u64,
    /// Failed invocations.
    pub failed: u64,
    /// Cold starts among them.
    pub cold: u64,
    /// Whether the probe was clean (≤ 1 % dropped, none failed, none cold).
    pub clean: bool,
    /// Host `MemAvailable` drop per parked VM, bytes.
    pub host_bytes_per_vm: Option<f64>,
    /// Daemon + backend RSS growth per parked VM, bytes.
    pub rss_bytes_per_vm: Option<f64>,
    /// Why the node could not park them, when it could not.
    pub error: Option<String>,
}

/// The density search of one function on one path.
#[derive(Debug, Clone, Serialize)]
pub struct DensityResult {
    /// The function.
    pub function: String,
    /// The path.
    pub path: IoPath,
    /// The aggregate Poisson rate, invocations per second.
    pub rate: f64,
    /// The search's outcome at the main SLO.
    pub outcome: DensityOutcome,
    /// Every probe, in the order run.
    pub probes: Vec<DensityProbe>,
}

impl DensityResult {
    /// The probes as (size, p99, clean), for [`super::density::largest_within`].
    pub fn points(&self) -> Vec<(u64, Option<f64>, bool)> {
        self.probes
            .iter()
            .map(|p| (p.vms, p.latency.p99_ms, p.clean))
            .collect()
    }

    /// Memory per parked VM from the probe with the most VMs (the least noisy):
    /// (host bytes, RSS bytes).
    pub fn memory_per_vm(&self) -> Option<(u64, Option<f64>, Option<f64>)> {
        self.probes
            .iter()
            .filter(|p| p.host_bytes_per_vm.is_some())
            .max_by_key(|p| p.vms)
            .map(|p| (p.vms, p.host_bytes_per_vm, p.rss_bytes_per_vm))
    }
}

/// Everything one run measured, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The command that produced it.
    pub command: String,
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine: CPU model, cores, kernel.
    pub machine: String,
    /// The run's settings, for people.
    pub settings: Vec<(String, String)>,
    /// Whether the baseline was left out (`--nexus-only`).
    pub nexus_only: bool,
    /// Per function and input.
    pub cases: Vec<CaseResult>,
    /// The density searches.
    pub density: Vec<DensityResult>,
    /// The main SLO, ms.
    pub slo_ms: f64,
    /// The other SLOs reported.
    pub other_slos_ms: Vec<f64>,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
}
