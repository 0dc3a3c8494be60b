//! `nexus-load compare`: Nexus against the in-guest networking baseline, side by side on
//! this host, with one command (issue 12).
//!
//! It starts, each as its own process with its log in a temporary directory, an S3 server
//! (`nexus-load s3-server`, s3s-fs over a directory, the inputs seeded), the shared backend
//! (`nexus-backend` with an `s3://` store on that server) and node daemons (`nexus-vmm
//! serve`) with two registrations of every function: `NAME` (`io = "nexus"`) and
//! `NAME-net` (`io = "net"`, guest `NAME-net`, its own TCP/IP and S3 client reaching the
//! same server over a tap). Then, for each function × input × path:
//!
//! 1. **cold starts** ([`cold`]), on a daemon capped at one VM: each invocation restores a
//!    VM (the twin registration `NAME-cold`, invoked in between, evicts it);
//! 2. **warm latency, CPU and exits** ([`warm`]), on a fresh daemon per case and path
//!    (no other VMs beside): closed loops of 1 and 4 clients; host CPU ([`cpu`]) and
//!    `nexus_vm_exits_total` over the 4-client loop;
//! 3. **density and memory per VM** ([`density`]), a fresh daemon per probe: park N VMs,
//!    read the host's memory before and after, send a Poisson open loop spread over them.
//!
//! Then it writes `comparison.md`, `comparison/*.svg` and `comparison/results.json` under
//! `--out` ([`document`], [`plots`]).

mod cpu;
mod density;
mod document;
mod plots;
mod procs;
mod results;
pub mod s3;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::api::{self, Input, InvocationRequest};
use crate::cli::{parse_duration, parse_rate};
use crate::http::{Connection, Endpoint};
use crate::load::{self, Arrivals, Bounds, Progress, Stop, Workload};
use crate::metrics::Metrics;
use crate::node::{self, PerVmMemory};
use crate::stats::{InvocationResult, LatencySummary, Tally, percentile};

use cpu::{CpuMeter, CpuUsage};
use density::DensitySearch;
use procs::Process;
use results::{CaseResult, Comparison, DensityProbe, DensityResult, IoPath, PathFigures};

/// The four functions built for both paths.
pub const FUNCTIONS: [&str; 4] = ["wordcount", "compress", "aes", "fibonacci"];
/// Fibonacci's input (inline): the same work on both paths, no object read.
const FIBONACCI_INPUT: &str = "20";
/// The S3 bucket and the credentials both paths use.
const BUCKET: &str = "nexus-compare";
const ACCESS_KEY: &str = "nexus-compare-access";
const SECRET_KEY: &str = "nexus-compare-secret-key";
/// The density search's SLO, and the others reported from the same probes.
const SLO_MS: f64 = 20.0;
const OTHER_SLOS_MS: [f64; 2] = [10.0, 50.0];
/// Bounds on the processes' start.
const BACKEND_START: Duration = Duration::from_secs(60);
const DAEMON_START: Duration = Duration::from_secs(600);
/// Per-invocation timeout.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Workers of a density probe's open loop.
const DENSITY_WORKERS: usize = 64;
/// VMs parked per `POST /warm` in a density probe.
const PARK_STEP: u64 = 64;

/// Arguments of `nexus-load compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A CI-sized run (a minute or two): wordcount only, 1 KiB input, short phases, a
    /// density search up to 4 VMs.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Also 4 MiB inputs, and the density search for every function (not only wordcount).
    #[arg(long)]
    pub full: bool,
    /// Measure Nexus alone: the baseline needs root (network namespace, veth, taps).
    #[arg(long)]
    pub nexus_only: bool,
    /// Where comparison.md and comparison/ (plots, results.json) are written.
    #[arg(long, value_name = "DIR", default_value = "docs")]
    pub out: PathBuf,
    /// The functions, comma-separated [default: all four; wordcount with --quick].
    #[arg(long, value_name = "NAME,…", value_delimiter = ',')]
    pub functions: Vec<String>,
    /// Length of each warm closed loop (1 client, then 4) [default: 5s; 2s with --quick].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warm_duration: Option<Duration>,
    /// Cold starts measured per function, input and path [default: 20; 5 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cold_samples: Option<u32>,
    /// The density probes' aggregate Poisson rate, invocations/s [default: 100; 50 with
    /// --quick].
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub density_rate: Option<f64>,
    /// The most VMs a density probe parks [default: 2048; 4 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4000))]
    pub density_max: Option<u64>,
    /// Length of each density probe's open loop [default: 5s; 2s with --quick].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub density_duration: Option<Duration>,
    /// Guest RAM of every function, both paths, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub memory_mib: u32,
    /// The net VMs' subnet (the daemon's --net-subnet); its second address is the host's
    /// end of the daemon's veth, where the guests reach the S3 server.
    #[arg(long, value_name = "A.B.C.D/P", default_value = "10.200.0.0/16")]
    pub net_subnet: String,
    /// Keep the run's directory (logs, snapshots, the S3 server's files) afterwards; it is
    /// always kept when the run fails.
    #[arg(long)]
    pub keep: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// One input of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseInput {
    /// An object of this many bytes, read by key.
    Object(u64),
    /// Inline text.
    Inline(&'static str),
}

impl CaseInput {
    /// The object's key.
    fn key(&self) -> Option<String> {
        match self {
            CaseInput::Object(bytes) => Some(format!("inputs/{}.txt", size_slug(*bytes))),
            CaseInput::Inline(_) => None,
        }
    }

    /// For people.
    fn label(&self) -> String {
        match self {
            CaseInput::Object(bytes) => format!("{} object", size_label(*bytes)),
            CaseInput::Inline(text) => format!("inline \"{text}\""),
        }
    }

    fn request(&self) -> InvocationRequest {
        InvocationRequest {
            input: match (self.key(), self) {
                (Some(key), _) => Input::Key(key),
                (None, CaseInput::Inline(text)) => Input::Inline((*text).to_string()),
                (None, CaseInput::Object(_)) => Input::Inline(String::new()),
            },
            output_key: None,
        }
    }
}

/// `1 KiB`, `4 MiB`, `100 B`.
pub fn size_label(bytes: u64) -> String {
    // Masks, not `%`: `is_multiple_of` is newer than the workspace's rust-version.
    if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes & ((1 << 10) - 1) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn size_slug(bytes: u64) -> String {
    size_label(bytes).replace(' ', "").to_lowercase()
}

/// The checked plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The functions.
    pub functions: Vec<String>,
    /// Object sizes for the functions that read an object.
    pub sizes: Vec<u64>,
    /// The paths measured.
    pub paths: Vec<IoPath>,
    /// Warm closed loops' length.
    pub warm_duration: Duration,
    /// Warm-up invocations before them (4 clients).
    pub warmup: u64,
    /// Cold starts per case and path.
    pub cold_samples: u32,
    /// Functions whose density is searched.
    pub density_functions: Vec<String>,
    /// Their aggregate rate.
    pub density_rate: f64,
    /// The first size probed.
    pub density_start: u64,
    /// The largest.
    pub density_max: u64,
    /// Bisecting stops within this many VMs.
    pub density_resolution: u64,
    /// At most this many probes per search.
    pub density_probes: u32,
    /// Each probe's open loop.
    pub density_duration: Duration,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// The nexus functions' I/O window, MiB.
    pub window_mib: u32,
    /// The net subnet.
    pub net_subnet: String,
    /// Output directory.
    pub out: PathBuf,
    /// Keep the run directory.
    pub keep: bool,
    /// Progress on stderr.
    pub progress: bool,
    /// The executable that serves `s3-server` (this one, normally).
    pub s3_server_exe: PathBuf,
    /// The command line, for the document.
    pub command: String,
}

impl Plan {
    /// The plan of `args`, with `--quick` and `--full` presets.
    pub fn from_args(args: &CompareArgs, s3_server_exe: PathBuf, command: String) -> Result<Plan> {
        let quick = args.quick;
        let functions: Vec<String> = if !args.functions.is_empty() {
            args.functions.clone()
        } else if quick {
            vec!["wordcount".to_string()]
        } else {
            FUNCTIONS.iter().map(|f| f.to_string()).collect()
        };
        for f in &functions {
            if !FUNCTIONS.contains(&f.as_str()) {
                bail!(
                    "--functions: {f:?} is not one of {} (each is built for both paths)",
                    FUNCTIONS.join(", ")
                );
            }
        }
        let mut sizes: Vec<u64> = vec![1 << 10];
        if !quick {
            sizes.push(1 << 20);
        }
        if args.full {
            sizes.push(4 << 20);
        }
        let largest_mib = sizes.iter().max().copied().unwrap_or(0).div_ceil(1 << 20);
        let density_functions = if args.full {
            functions.clone()
        } else {
            functions
                .iter()
                .filter(|f| *f == "wordcount")
                .cloned()
                .collect::<Vec<_>>()
        };
        let density_functions = if density_functions.is_empty() {
            functions.iter().take(1).cloned().collect()
        } else {
            density_functions
        };
        let density_max = args.density_max.unwrap_or(if quick { 4 } else { 2048 });
        Ok(Plan {
            sizes,
            paths: if args.nexus_only {
                vec![IoPath::Nexus]
            } else {
                IoPath::BOTH.to_vec()
            },
            warm_duration: args.warm_duration.unwrap_or(Duration::from_secs(if quick {
                2
            } else {
                5
            })),
            warmup: if quick { 8 } else { 40 },
            cold_samples: args.cold_samples.unwrap_or(if quick { 5 } else { 20 }),
            density_functions,
            density_rate: args
                .density_rate
                .unwrap_or(if quick { 50.0 } else { 100.0 }),
            density_start: if quick { 2 } else { 16 }.min(density_max),
            density_max,
            density_resolution: (density_max / 32).max(1),
            density_probes: if quick { 4 } else { 10 },
            density_duration: args
                .density_duration
                .unwrap_or(Duration::from_secs(if quick { 2 } else { 5 })),
            memory_mib: args.memory_mib,
            // The largest input and result at once, and room for the rings.
            window_mib: u32::try_from(2 * largest_mib + 4)
                .unwrap_or(u32::MAX)
                .max(8),
            net_subnet: args.net_subnet.clone(),
            out: args.out.clone(),
            keep: args.keep,
            progress: !args.quiet,
            s3_server_exe,
            command,
            functions,
        })
    }

    /// The cases: each function with each size (fibonacci with its inline input).
    pub fn cases(&self) -> Vec<(String, CaseInput)> {
        let mut cases = Vec::new();
        for f in &self.functions {
            if f == "fibonacci" {
                cases.push((f.clone(), CaseInput::Inline(FIBONACCI_INPUT)));
            } else {
                for size in &self.sizes {
                    cases.push((f.clone(), CaseInput::Object(*size)));
                }
            }
        }
        cases
    }

    /// The input a density probe sends to `function`.
    fn density_input(&self, function: &str) -> CaseInput {
        if function == "fibonacci" {
            CaseInput::Inline(FIBONACCI_INPUT)
        } else {
            CaseInput::Object(1 << 10)
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        vec![
            ("functions".into(), self.functions.join(", ")),
            (
                "inputs".into(),
                format!(
                    "objects of {} (text; read by key, by the backend or the guest's own S3 \
                     client){}; results returned in the answer, not stored",
                    self.sizes
                        .iter()
                        .map(|s| size_label(*s))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if self.functions.iter().any(|f| f == "fibonacci") {
                        format!(", fibonacci inline \"{FIBONACCI_INPUT}\"")
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "guests".into(),
                format!(
                    "{} MiB RAM on both paths; the Nexus functions also have a {} MiB I/O \
                     window; lazy restore (the daemon's default) on both",
                    self.memory_mib, self.window_mib
                ),
            ),
            (
                "warm".into(),
                format!(
                    "{} warm-up invocations (4 clients), then closed loops of 1 and 4 clients, \
                     {} each, one keep-alive HTTP/1.1 connection per client",
                    self.warmup,
                    secs(self.warm_duration)
                ),
            ),
            (
                "cold".into(),
                format!(
                    "{} per case and path, the daemon run with --max-vms 1 and a twin \
                     registration invoked between two measured ones so that each restores",
                    self.cold_samples
                ),
            ),
            (
                "density".into(),
                format!(
                    "{}: Poisson open loop at {} invocations/s in aggregate, {} per probe, \
                     {} workers; sizes from {} doubling to at most {}, then bisecting to {} \
                     VMs, at most {} probes; SLO p99 ≤ {SLO_MS} ms (10 and 50 ms from the \
                     same probes)",
                    self.density_functions.join(", "),
                    document::number(self.density_rate),
                    secs(self.density_duration),
                    DENSITY_WORKERS,
                    self.density_start,
                    self.density_max,
                    self.density_resolution,
                    self.density_probes
                ),
            ),
            (
                "processes".into(),
                "S3 server (`nexus-load s3-server`, s3s-fs, plain HTTP), `nexus-backend` \
                 (s3:// store on it, default settings), `nexus-vmm serve` (default settings \
                 but the caps above, `--pick lru` for density), the load generator — all on \
                 this host"
                    .into(),
            ),
        ]
    }
}

/// Prints a progress line.
macro_rules! progress {
    ($plan:expr, $($arg:tt)*) => {
        if $plan.progress {
            eprintln!("compare: {}", format!($($arg)*));
        }
    };
}

/// Runs the comparison and writes its document; returns what was measured.
pub async fn compare(plan: Plan, stop: Arc<Stop>) -> Result<Comparison> {
    preflight(&plan)?;
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("nexus-compare-")
        .tempdir()
        .context("cannot create the run's directory")?;
    progress!(
        plan,
        "run directory (logs, snapshots, objects): {}",
        dir.path().display()
    );
    let result = run(&plan, dir.path(), &stop, started).await;
    if result.is_err() || plan.keep {
        let kept = dir.keep();
        eprintln!("compare: the run's directory is kept: {}", kept.display());
    }
    result
}

/// Fails early, and clearly, when this host cannot run the comparison.
fn preflight(plan: &Plan) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("the comparison runs VMs and needs /dev/kvm, readable and writable")?;
    if plan.paths.contains(&IoPath::Net) {
        // SAFETY: geteuid has no arguments and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            bail!(
                "the baseline (io = \"net\") needs root: the node daemon builds a network \
                 namespace, a veth and one tap per VM (CAP_NET_ADMIN, CAP_SYS_ADMIN), and this \
                 runs as uid {uid}. Run it as root, or pass --nexus-only to measure Nexus alone \
                 (the document then compares nothing)."
            );
        }
    } else {
        eprintln!(
            "compare: *** --nexus-only: the baseline is NOT measured; the document will have \
             Nexus's figures and no comparison ***"
        );
    }
    Ok(())
}

/// The S3 server and the backend, running for the whole comparison.
struct Storage {
    s3: Process,
    backend: Process,
    port: u16,
    socket: PathBuf,
}

/// Which daemon set-up a phase needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonKind {
    /// One VM on the node: every invocation of a function other than the last one's
    /// restores.
    Cold,
    /// Room for every case's VMs.
    Warm,
    /// A density probe of this many VMs, invocations spread over them with `--pick lru`.
    Density(u64),
}

/// A running daemon.
struct Daemon {
    process: Process,
    endpoint: Arc<Endpoint>,
}

/// What a run shares.
struct Run<'a> {
    plan: &'a Plan,
    dir: &'a Path,
    storage: Storage,
    nexus_vmm: PathBuf,
    functions_dir: PathBuf,
    density_dir: PathBuf,
}

async fn run(plan: &Plan, dir: &Path, stop: &Stop, started: Instant) -> Result<Comparison> {
    progress!(
        plan,
        "building (or finding) nexus-vmm, nexus-backend and the micro-guests…"
    );
    let nexus_vmm = nexus::guests::workspace_example("nexus-vmm")
        .context("cannot build the nexus-vmm example")?;
    let backend = nexus::guests::workspace_binary("nexus-backend", "nexus-backend")
        .context("cannot build nexus-backend")?;
    nexus::guests::build_bundled(plan.progress).context("cannot build the micro-guests")?;
    let storage = start_storage(plan, dir, &backend)?;
    let (functions_dir, density_dir) = write_functions(plan, dir)?;
    let run = Run {
        plan,
        dir,
        storage,
        nexus_vmm,
        functions_dir,
        density_dir,
    };
    let cases = plan.cases();
    let mut results: Vec<CaseResult> = cases
        .iter()
        .map(|(function, input)| CaseResult {
            function: function.clone(),
            input: input.label(),
            nexus: None,
            net: None,
            samples: Vec::new(),
        })
        .collect();

    // 1. Cold starts.
    {
        let daemon = run.daemon(DaemonKind::Cold).await?;
        for ((function, input), result) in cases.iter().zip(results.iter_mut()) {
            for &path in &plan.paths {
                check_stop(stop)?;
                let figures = cold(&run, &daemon, function, input, path).await?;
                set_path(result, path, figures);
            }
        }
    }
    // 2. Warm latency, CPU, exits: a daemon per case and path, so that no other
    //    function's parked VMs (their WAIT timeouts) run beside the measured loops.
    for ((function, input), result) in cases.iter().zip(results.iter_mut()) {
        for &path in &plan.paths {
            check_stop(stop)?;
            let mut daemon = run.daemon(DaemonKind::Warm).await?;
            let samples = warm(&run, &daemon, function, input, path, result).await?;
            daemon.process.check_alive()?;
            result.samples.push((path, samples));
        }
    }
    // 3. Density and memory per VM.
    let mut densities = Vec::new();
    for function in &plan.density_functions {
        for &path in &plan.paths {
            check_stop(stop)?;
            densities.push(search_density(&run, function, path, stop).await?);
        }
    }
    let comparison = Comparison {
        command: plan.command.clone(),
        date: utc_now(),
        machine: machine(),
        settings: plan.settings(),
        nexus_only: !plan.paths.contains(&IoPath::Net),
        cases: results,
        density: densities,
        slo_ms: SLO_MS,
        other_slos_ms: OTHER_SLOS_MS.to_vec(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    write_outputs(plan, &comparison)?;
    Ok(comparison)
}

fn check_stop(stop: &Stop) -> Result<()> {
    match stop.reason() {
        Some(reason) => bail!("stopped: {reason}"),
        None => Ok(()),
    }
}

fn set_path(result: &mut CaseResult, path: IoPath, figures: PathFigures) {
    match path {
        IoPath::Nexus => result.nexus = Some(figures),
        IoPath::Net => result.net = Some(figures),
    }
}

/// Text of `bytes` bytes: words of a small vocabulary, a line every dozen words (the same
/// bytes at every run).
pub fn input_text(bytes: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "nexus", "guest", "object", "store", "window", "ring", "backend", "snapshot", "restore",
        "tap", "packet", "function",
    ];
    let len = usize::try_from(bytes).unwrap_or(usize::MAX);
    let mut text = Vec::with_capacity(len + 16);
    let mut state: u32 = 0x1234_5678;
    let mut n = 0u32;
    while text.len() < len {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let word = WORDS[(state >> 16) as usize % WORDS.len()];
        text.extend_from_slice(word.as_bytes());
        n += 1;
        if n == 12 {
            n = 0;
            text.push(b'\n');
        } else {
            text.push(b' ');
        }
    }
    text.truncate(len);
    text
}

fn start_storage(plan: &Plan, dir: &Path, backend: &Path) -> Result<Storage> {
    let root = dir.join("s3");
    let inputs = root.join(BUCKET).join("inputs");
    std::fs::create_dir_all(&inputs).context("cannot create the bucket")?;
    for size in &plan.sizes {
        let key = CaseInput::Object(*size).key().unwrap_or_default();
        std::fs::write(root.join(BUCKET).join(&key), input_text(*size))
            .with_context(|| format!("cannot seed {key}"))?;
    }
    // The guests reach the server at the host's end of the daemon's veth: listen on every
    // address when they take part, on loopback otherwise.
    let listen = if plan.paths.contains(&IoPath::Net) {
        "0.0.0.0:0"
    } else {
        "127.0.0.1:0"
    };
    let mut command = Command::new(&plan.s3_server_exe);
    command
        .arg("s3-server")
        .arg("--root")
        .arg(&root)
        .args(["--listen", listen, "--access-key", ACCESS_KEY])
        .args(["--secret-key", SECRET_KEY])
        .env("RUST_LOG", "warn");
    let mut s3 = Process::spawn("S3 server", command, &dir.join("s3-server.log"))?;
    let line = s3.wait_for_line(s3::LISTENING, BACKEND_START)?;
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("no port in the S3 server's line {line:?}"))?;
    progress!(plan, "S3 server (s3s-fs) on port {port}, pid {}", s3.pid());

    let socket = dir.join("backend.sock");
    let mut command = Command::new(backend);
    command
        .arg("--listen")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("backend-state"))
        .args(["--store", &format!("s3://{BUCKET}")])
        .args(["--s3-endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--s3-region", "us-east-1", "--s3-allow-http"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RUST_LOG", "warn");
    let mut backend = Process::spawn("backend", command, &dir.join("backend.log"))?;
    backend.wait_for_path(&socket, BACKEND_START)?;
    progress!(plan, "nexus-backend (s3://{BUCKET}) pid {}", backend.pid());
    Ok(Storage {
        s3,
        backend,
        port,
        socket,
    })
}

/// The twin of a function, invoked between cold starts to evict it.
fn twin(name: &str) -> String {
    format!("{name}-cold")
}

/// A function's TOML on `path`.
fn function_toml(plan: &Plan, function: &str, path: IoPath, max_vms: u64) -> String {
    let limits = format!("\n[limits]\nmax_vms = {max_vms}\ntimeout_ms = 60000\n");
    match path {
        IoPath::Nexus => format!(
            "guest = \"{function}\"\nmemory_mib = {}\nwindow_mib = {}\n{limits}",
            plan.memory_mib, plan.window_mib
        ),
        IoPath::Net => format!(
            "guest = \"{function}-net\"\nio = \"net\"\nmemory_mib = {}\n{limits}",
            plan.memory_mib
        ),
    }
}

/// Writes the main function directory (every function on every path, and the twins) and
/// creates the density probes' one (written by each probe).
fn write_functions(plan: &Plan, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let main = dir.join("functions");
    let dense = dir.join("functions-density");
    std::fs::create_dir_all(&main)?;
    std::fs::create_dir_all(&dense)?;
    for function in &plan.functions {
        for &path in &plan.paths {
            let name = path.function_name(function);
            let toml = function_toml(plan, function, path, 8);
            std::fs::write(main.join(format!("{name}.toml")), &toml)?;
            std::fs::write(main.join(format!("{}.toml", twin(&name))), &toml)?;
        }
    }
    Ok((main, dense))
}

/// The subnet's second address (the host's end of the daemon's veth).
pub fn host_end(subnet: &str) -> Result<Ipv4Addr> {
    let (address, prefix) = subnet
        .split_once('/')
        .with_context(|| format!("{subnet:?} is not A.B.C.D/P"))?;
    let address: Ipv4Addr = address
        .parse()
        .with_context(|| format!("{subnet:?} is not A.B.C.D/P"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=28).contains(p))
        .with_context(|| format!("{subnet:?}: the prefix must be 8 to 28"))?;
    let network = u32::from(address) & (u32::MAX << (32 - prefix));
    Ok(Ipv4Addr::from(network + 2))
}

impl Run<'_> {
    /// Starts a daemon of `kind`; its snapshots are shared by every daemon of the run.
    async fn daemon(&self, kind: DaemonKind) -> Result<Daemon> {
        let plan = self.plan;
        let (functions, max_vms, label) = match kind {
            DaemonKind::Cold => (&self.functions_dir, 1, "cold"),
            DaemonKind::Warm => (&self.functions_dir, 64, "warm"),
            DaemonKind::Density(vms) => (&self.density_dir, vms, "density"),
        };
        let mut command = Command::new(&self.nexus_vmm);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--backend"])
            .arg(&self.storage.socket)
            .arg("--functions")
            .arg(functions)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--max-vms", &max_vms.to_string()])
            .env("RUST_LOG", "warn");
        match kind {
            // Every snapshot is taken here, before anything is measured; later daemons
            // reuse them from the shared --state-dir.
            DaemonKind::Cold => {
                command.arg("--prepare");
            }
            DaemonKind::Warm => {}
            DaemonKind::Density(_) => {
                command.args(["--pick", "lru"]);
            }
        }
        if plan.paths.contains(&IoPath::Net) {
            let host = host_end(&plan.net_subnet)?;
            command
                .args(["--net-subnet", &plan.net_subnet])
                .args([
                    "--net-s3-endpoint",
                    &format!("http://{host}:{}", self.storage.port),
                ])
                .args(["--net-s3-bucket", BUCKET])
                .args(["--net-s3-access-key", ACCESS_KEY])
                .args(["--net-s3-secret-key", SECRET_KEY]);
        }
        let log = self.dir.join(format!(
            "daemon-{label}-{}.log",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        ));
        let started = Instant::now();
        let mut process = Process::spawn("node daemon", command, &log)?;
        let line = process.wait_for_line("listening on http://", DAEMON_START)?;
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no address in the daemon's line {line:?}"))?;
        let endpoint = Endpoint::parse(&format!("http://{address}"))?;
        if kind == DaemonKind::Cold {
            progress!(
                plan,
                "node daemon ({label}, --max-vms {max_vms}) at {address}, pid {}, ready in {:.1} s",
                process.pid(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Daemon {
            process,
            endpoint: Arc::new(endpoint),
        })
    }

    fn cpu_meter(&self, daemon: &Daemon) -> CpuMeter {
        CpuMeter::new(vec![
            daemon.process.pid(),
            self.storage.backend.pid(),
            self.storage.s3.pid(),
        ])
    }
}

/// Cold starts of one case on one path.
async fn cold(
    run: &Run<'_>,
    daemon: &Daemon,
    function: &str,
    input: &CaseInput,
    path: IoPath,
) -> Result<PathFigures> {
    let plan = run.plan;
    let name = path.function_name(function);
    let twin = twin(&name);
    let request = input.request();
    let mut conn = Connection::new(Arc::clone(&daemon.endpoint), INVOCATION_TIMEOUT);
    let mut latencies = Vec::new();
    let mut restores = Vec::new();
    let mut figures = PathFigures::default();
    let mut seq = 0;
    for _ in 0..plan.cold_samples {
        for (target, measured) in [(&twin, false), (&name, true)] {
            seq += 1;
            let started = Instant::now();
            let result =
                api::invoke(&mut conn, &api::invocations_path(target), request.body(seq)).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match result {
                InvocationResult::Answered(answer) if answer.is_success() => {
                    if !measured {
                        continue;
                    }
                    if answer.start == Some(api::Start::Cold) {
                        latencies.push(ms);
                        restores.extend(answer.timings_ms.restore);
                    } else {
                        figures.cold_not_cold += 1;
                    }
                }
                other => {
                    figures.failed += 1;
                    if figures.first_error.is_none() {
                        figures.first_error =
                            Some(format!("{target} (cold): {}", describe(&other)));
                    }
                }
            }
        }
    }
    restores.sort_by(f64::total_cmp);
    figures.cold = LatencySummary::from_samples(&latencies);
    figures.cold_restore_p50_ms = percentile(&restores, 50.0);
    progress!(
        plan,
        "cold  {name:<16} {:<16} p50 {} ms  p99 {} ms  ({} cold, {} not cold, {} failed)",
        input.label(),
        fmt_opt(figures.cold.p50_ms),
        fmt_opt(figures.cold.p99_ms),
        latencies.len(),
        figures.cold_not_cold,
        figures.failed
    );
    if let Some(e) = &figures.first_error {
        eprintln!("compare: {e}");
    }
    Ok(figures)
}

fn describe(result: &InvocationResult) -> String {
    match result {
        InvocationResult::Answered(answer) => format!("outcome {}", answer.outcome),
        InvocationResult::Rejected { status, error } => format!("{status}: {error}"),
        InvocationResult::Transport { message, .. } => message.clone(),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), document::number)
}

fn first_error(tally: &Tally) -> Option<String> {
    tally
        .first_errors
        .iter()
        .next()
        .map(|(kind, e)| format!("{kind}: {e}"))
}

/// A scrape's `nexus_vm_exits_total` and `nexus_invocations_total` of `name`.
async fn exits_and_invocations(conn: &mut Connection, name: &str) -> Option<(f64, f64)> {
    let text = api::metrics(conn).await.ok()?;
    let m = Metrics::parse(&text);
    Some((
        m.sum("nexus_vm_exits_total", &[("function", name)])
            .unwrap_or(0.0),
        m.sum("nexus_invocations_total", &[("function", name)])
            .unwrap_or(0.0),
    ))
}

/// Warm latency (1 and 4 clients), CPU and exits of one case on one path; returns the
/// 1-client latency samples.
async fn warm(
    run: &Run<'_>,
    daemon: &Daemon,
    function: &str,
    input: &CaseInput,
    path: IoPath,
    result: &mut CaseResult,
) -> Result<Vec<f64>> {
    let plan = run.plan;
    let name = path.function_name(function);
    let workload = Arc::new(Workload {
        endpoint: Arc::clone(&daemon.endpoint),
        timeout: INVOCATION_TIMEOUT,
        path: api::invocations_path(&name),
        request: input.request(),
    });
    let quiet = |label: &str| Progress {
        label: label.to_string(),
        every: None,
    };
    let phase_stop = || Arc::new(Stop::default());
    let warmup = load::closed_loop(
        Arc::clone(&workload),
        4,
        Bounds {
            requests: Some(plan.warmup),
            duration: Some(Duration::from_secs(120)),
        },
        phase_stop(),
        quiet("warmup"),
    )
    .await;
    let bounds = Bounds {
        requests: None,
        duration: Some(plan.warm_duration),
    };
    let one = load::closed_loop(Arc::clone(&workload), 1, bounds, phase_stop(), quiet("1")).await;

    let meter = run.cpu_meter(daemon);
    let mut conn = Connection::new(Arc::clone(&daemon.endpoint), INVOCATION_TIMEOUT);
    let counters_before = exits_and_invocations(&mut conn, &name).await;
    let cpu_before = meter.sample()?;
    let four = load::closed_loop(Arc::clone(&workload), 4, bounds, phase_stop(), quiet("4")).await;
    let cpu_after = meter.sample()?;
    let counters_after = exits_and_invocations(&mut conn, &name).await;

    let mut figures = match path {
        IoPath::Nexus => result.nexus.take(),
        IoPath::Net => result.net.take(),
    }
    .unwrap_or_default();
    figures.warm_1 = LatencySummary::from_samples(&one.tally.success_latencies_ms);
    figures.warm_4 = LatencySummary::from_samples(&four.tally.success_latencies_ms);
    figures.throughput_4 = four.tally.succeeded() as f64 / four.elapsed.as_secs_f64().max(1e-9);
    figures.cpu = CpuUsage::between(cpu_before, cpu_after, cpu::ticks_per_second());
    if let (Some((e0, i0)), Some((e1, i1))) = (counters_before, counters_after) {
        let invocations = (i1 - i0).max(0.0);
        figures.cpu_invocations = invocations as u64;
        figures.exits_per_invocation = (invocations > 0.0).then(|| (e1 - e0) / invocations);
    } else {
        figures.cpu_invocations = four.tally.completed();
    }
    figures.cpu_ms_per_invocation = figures.cpu.ms_per_invocation(figures.cpu_invocations);
    figures.failed += warmup.tally.failed() + one.tally.failed() + four.tally.failed();
    if figures.first_error.is_none() {
        figures.first_error = [&warmup, &one, &four]
            .iter()
            .find_map(|phase| first_error(&phase.tally));
    }
    progress!(
        plan,
        "warm  {name:<16} {:<16} 1 client p50 {} p99 {} ms; 4 clients p50 {} p99 {} ms, {:.0}/s; \
         CPU {} ms/inv; exits {}/inv{}",
        input.label(),
        fmt_opt(figures.warm_1.p50_ms),
        fmt_opt(figures.warm_1.p99_ms),
        fmt_opt(figures.warm_4.p50_ms),
        fmt_opt(figures.warm_4.p99_ms),
        figures.throughput_4,
        fmt_opt(figures.cpu_ms_per_invocation),
        fmt_opt(figures.exits_per_invocation),
        if figures.failed > 0 {
            format!("; {} FAILED", figures.failed)
        } else {
            String::new()
        }
    );
    let samples = one.tally.success_latencies_ms.clone();
    set_path(result, path, figures);
    Ok(samples)
}

/// The density search of `function` on `path`.
async fn search_density(
    run: &Run<'_>,
    function: &str,
    path: IoPath,
    stop: &Stop,
) -> Result<DensityResult> {
    let plan = run.plan;
    let mut search = DensitySearch::new(
        plan.density_start,
        plan.density_max,
        plan.density_resolution,
        plan.density_probes,
    );
    let mut probes = Vec::new();
    while let Some(n) = search.next() {
        check_stop(stop)?;
        let probe = density_probe(run, function, path, n).await?;
        let pass = probe.clean && probe.latency.p99_ms.is_some_and(|p| p <= SLO_MS);
        progress!(
            plan,
            "density {:<14} N={n:<5} p99 {} ms, {} dropped, {} failed, {} cold, {} MiB/VM (host) → {}",
            path.function_name(function),
            fmt_opt(probe.latency.p99_ms),
            probe.dropped,
            probe.failed,
            probe.cold,
            fmt_opt(probe.host_bytes_per_vm.map(|b| b / 1048576.0)),
            if pass { "within the SLO" } else { "over" }
        );
        search.record(n, pass);
        probes.push(probe);
    }
    Ok(DensityResult {
        function: function.to_string(),
        path,
        rate: plan.density_rate,
        outcome: search.outcome(),
        probes,
    })
}

/// One probe: a fresh daemon parks `n` VMs, then the open loop runs over them.
async fn density_probe(
    run: &Run<'_>,
    function: &str,
    path: IoPath,
    n: u64,
) -> Result<DensityProbe> {
    let plan = run.plan;
    let name = path.function_name(function);
    // Exactly n VMs of the function: an invocation that finds them all busy waits for one
    // (its wait counts in its latency) instead of starting another.
    for entry in std::fs::read_dir(&run.density_dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::write(
        run.density_dir.join(format!("{name}.toml")),
        function_toml(plan, function, path, n),
    )?;
    let mut daemon = run.daemon(DaemonKind::Density(n)).await?;
    let mut conn = Connection::new(Arc::clone(&daemon.endpoint), Duration::from_secs(600));
    // The first probe of a run may take the function's snapshot: do it before measuring.
    api::warm(&mut conn, &name, 1)
        .await
        .with_context(|| format!("cannot park a VM of {name}"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node::sample(&mut conn, &name).await;
    let mut parked = 1;
    while parked < n {
        let count = (parked + PARK_STEP).min(n);
        match api::warm(&mut conn, &name, count).await {
            Ok(answer) => parked = answer.idle.max(count),
            Err(e) => {
                // The node cannot hold n VMs (descriptors, memory): that size fails.
                let error = format!("parked {parked} of {n}: {:#}", anyhow::Error::new(e));
                eprintln!("compare: density {name} N={n}: {error}");
                daemon.process.stop();
                return Ok(DensityProbe {
                    vms: n,
                    latency: LatencySummary::default(),
                    dropped: 0,
                    failed: 0,
                    cold: 0,
                    clean: false,
                    host_bytes_per_vm: None,
                    rss_bytes_per_vm: None,
                    error: Some(error),
                });
            }
        }
        daemon.process.check_alive()?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node::sample(&mut conn, &name).await;
    // The first VM was parked before the first sample: n − 1 VMs between them.
    let memory = PerVmMemory::between(&before, &after, n.saturating_sub(1));
    let workload = Arc::new(Workload {
        endpoint: Arc::clone(&daemon.endpoint),
        timeout: INVOCATION_TIMEOUT,
        path: api::invocations_path(&name),
        request: plan.density_input(function).request(),
    });
    // Every parked VM serves once first (least recently used first: each in turn), so the
    // probe measures VMs that have run before, not their first touches of restored pages.
    let _ = load::closed_loop(
        Arc::clone(&workload),
        1,
        Bounds {
            requests: Some(n),
            duration: Some(Duration::from_secs(120)),
        },
        Arc::new(Stop::default()),
        Progress {
            label: format!("density warm-up {name} N={n}"),
            every: None,
        },
    )
    .await;
    let phase = load::open_loop(
        workload,
        plan.density_rate,
        Arrivals::Poisson { seed: n },
        DENSITY_WORKERS,
        Bounds {
            requests: None,
            duration: Some(plan.density_duration),
        },
        Arc::new(Stop::default()),
        Progress {
            label: format!("density {name} N={n}"),
            every: None,
        },
    )
    .await;
    let tally = &phase.tally;
    let offered = tally.sent + tally.dropped;
    let clean = tally.failed() == 0 && tally.cold == 0 && tally.dropped * 100 <= offered;
    daemon.process.stop();
    Ok(DensityProbe {
        vms: n,
        latency: LatencySummary::from_samples(&tally.success_latencies_ms),
        dropped: tally.dropped,
        failed: tally.failed(),
        cold: tally.cold,
        clean,
        // One VM only: too few to say anything per VM.
        host_bytes_per_vm: memory.host_bytes.filter(|_| n > 1),
        rss_bytes_per_vm: memory.rss_bytes.filter(|_| n > 1),
        error: None,
    })
}

/// Writes comparison.md, the plots and results.json.
fn write_outputs(plan: &Plan, comparison: &Comparison) -> Result<()> {
    let plots_dir = plan.out.join("comparison");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("cannot create {}", plots_dir.display()))?;
    let plots = plots::draw_all(comparison, &plots_dir)?;
    let plots: Vec<(String, String)> = plots
        .into_iter()
        .map(|(title, file)| (title, format!("comparison/{file}")))
        .collect();
    let json = serde_json::to_string_pretty(comparison)?;
    std::fs::write(plots_dir.join("results.json"), json)?;
    let doc = plan.out.join("comparison.md");
    std::fs::write(&doc, document::render(comparison, &plots))
        .with_context(|| format!("cannot write {}", doc.display()))?;
    progress!(
        plan,
        "wrote {} and {} plots in {}",
        doc.display(),
        plots.len(),
        plots_dir.display()
    );
    Ok(())
}

/// The headline as text, for stdout.
pub fn headline_text(comparison: &Comparison) -> String {
    let mut out = String::new();
    for row in document::headline(comparison) {
        out.push_str(&format!(
            "{:<28} Nexus {:>10}  baseline {:>10}  {:>9}  (paper {:>6})  {}\n",
            row.figure,
            fmt_opt(row.nexus),
            fmt_opt(row.net),
            document::percent(row.delta()),
            row.paper,
            row.verdict().trim_matches('*')
        ));
    }
    out
}

/// The date and time now, UTC: `2026-12-04 18:30 UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM UTC` (the proleptic Gregorian calendar).
pub fn utc_date(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// The CPU model, its cores and the kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let mut argv = vec!["nexus-load", "compare"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        Plan::from_args(&args, PathBuf::from("/x"), "c".into()).unwrap()
    }

    #[test]
    fn presets() {
        let default = plan(&[]);
        assert_eq!(default.functions, FUNCTIONS);
        assert_eq!(default.sizes, [1024, 1 << 20]);
        assert_eq!(default.density_functions, ["wordcount"]);
        assert_eq!(default.paths, IoPath::BOTH);
        // 3 functions × 2 sizes + fibonacci inline.
        assert_eq!(default.cases().len(), 7);
        assert_eq!(default.window_mib, 8);

        let quick = plan(&["--quick", "--nexus-only", "--out", "/tmp/o"]);
        assert_eq!(quick.functions, ["wordcount"]);
        assert_eq!(quick.sizes, [1024]);
        assert_eq!(quick.paths, [IoPath::Nexus]);
        assert_eq!(quick.density_max, 4);
        assert_eq!(quick.out, PathBuf::from("/tmp/o"));

        let full = plan(&["--full"]);
        assert_eq!(full.sizes, [1024, 1 << 20, 4 << 20]);
        assert_eq!(full.density_functions, FUNCTIONS);
        assert_eq!(full.window_mib, 12);

        let fib = plan(&["--functions", "fibonacci"]);
        assert_eq!(fib.density_functions, ["fibonacci"]);
        assert_eq!(
            fib.cases(),
            [("fibonacci".to_string(), CaseInput::Inline(FIBONACCI_INPUT))]
        );
        assert!(
            crate::cli::Cli::try_parse_from(["nexus-load", "compare", "--quick", "--full"])
                .is_err()
        );
    }

    #[test]
    fn unknown_functions_are_refused() {
        let cli =
            crate::cli::Cli::try_parse_from(["nexus-load", "compare", "--functions", "hello"])
                .unwrap();
        let crate::cli::Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        let err = Plan::from_args(&args, PathBuf::new(), String::new()).unwrap_err();
        assert!(err.to_string().contains("\"hello\" is not one of"), "{err}");
    }

    #[test]
    fn function_files() {
        let p = plan(&["--quick"]);
        assert_eq!(
            function_toml(&p, "wordcount", IoPath::Nexus, 8),
            "guest = \"wordcount\"\nmemory_mib = 32\nwindow_mib = 8\n\n[limits]\nmax_vms = 8\ntimeout_ms = 60000\n"
        );
        assert_eq!(
            function_toml(&p, "aes", IoPath::Net, 3),
            "guest = \"aes-net\"\nio = \"net\"\nmemory_mib = 32\n\n[limits]\nmax_vms = 3\ntimeout_ms = 60000\n"
        );
        assert_eq!(IoPath::Net.function_name("aes"), "aes-net");
        assert_eq!(twin("aes-net"), "aes-net-cold");
    }

    #[test]
    fn inputs_and_labels() {
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(4 << 20), "4 MiB");
        assert_eq!(size_label(1000), "1000 B");
        assert_eq!(CaseInput::Object(1 << 20).key().unwrap(), "inputs/1mib.txt");
        assert_eq!(CaseInput::Inline("20").label(), "inline \"20\"");
        let text = input_text(5000);
        assert_eq!(text.len(), 5000);
        assert_eq!(text, input_text(5000));
        let words = text
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .count();
        assert!(words > 500, "{words}");
    }

    #[test]
    fn host_end_of_the_veth() {
        assert_eq!(
            host_end("10.200.0.0/16").unwrap(),
            Ipv4Addr::new(10, 200, 0, 2)
        );
        assert_eq!(
            host_end("10.9.8.77/24").unwrap(),
            Ipv4Addr::new(10, 9, 8, 2)
        );
        assert!(host_end("10.0.0.0").is_err());
        assert!(host_end("10.0.0.0/30").is_err());
    }

    /// `compare --quick` end to end: both paths, every phase, the document and the plots.
    /// It needs /dev/kvm and root (the baseline's taps) and fails saying which is missing;
    /// it is bounded at 15 minutes, and every process it starts is stopped on the way out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compare_quick_end_to_end() {
        const BOUND: Duration = Duration::from_secs(15 * 60);
        let out = tempfile::tempdir().unwrap();
        let mut p = plan(&["--quick", "-q"]);
        p.out = out.path().to_path_buf();
        p.progress = true;
        // The test binary is not nexus-load: the S3 server runs from the example's binary.
        p.s3_server_exe =
            nexus::guests::workspace_example("nexus-load").expect("the nexus-load example builds");
        let comparison = tokio::time::timeout(BOUND, compare(p, Arc::new(Stop::default())))
            .await
            .expect("compare --quick finishes within 15 minutes")
            .unwrap_or_else(|e| panic!("compare --quick failed: {e:#}"));

        assert!(!comparison.nexus_only);
        assert_eq!(comparison.cases.len(), 1);
        let case = &comparison.cases[0];
        for path in IoPath::BOTH {
            let f = case
                .path(path)
                .unwrap_or_else(|| panic!("{path:?} not measured"));
            assert_eq!(f.failed, 0, "{path:?}: {:?}", f.first_error);
            assert!(
                f.warm_1.samples > 0 && f.warm_4.samples > 0,
                "{path:?}: {f:?}"
            );
            assert!(f.cold.samples > 0, "{path:?}: no cold start: {f:?}");
            assert!(
                f.cpu_ms_per_invocation.is_some_and(|c| c > 0.0),
                "{path:?}: {f:?}"
            );
            assert!(
                f.exits_per_invocation.is_some_and(|e| e > 0.0),
                "{path:?}: {f:?}"
            );
        }
        assert_eq!(comparison.density.len(), 2);
        for d in &comparison.density {
            assert!(!d.probes.is_empty(), "{d:?}");
            assert!(d.probes.iter().all(|p| p.latency.samples > 0), "{d:?}");
        }

        let doc = std::fs::read_to_string(out.path().join("comparison.md")).unwrap();
        assert!(doc.contains("| Warm latency, median |"), "{doc}");
        assert!(!doc.contains("measured Nexus only"), "{doc}");
        let svgs: Vec<PathBuf> = std::fs::read_dir(out.path().join("comparison"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
            .collect();
        assert_eq!(svgs.len(), 3, "{svgs:?}");
        for svg in &svgs {
            let text = std::fs::read_to_string(svg).unwrap();
            assert!(text.starts_with("<svg"), "{}", svg.display());
            let name = svg.file_name().unwrap().to_string_lossy();
            assert!(
                doc.contains(&format!("(comparison/{name})")),
                "{name} not embedded"
            );
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("comparison/results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["cases"][0]["function"], "wordcount");
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400 + 3_661), "2000-02-29 01:01 UTC");
        assert_eq!(utc_date(1_796_400_000), "2026-12-04 16:00 UTC");
    }
}
