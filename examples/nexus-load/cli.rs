//! Command-line arguments, and their checked conversion into each mode's configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::api::{Input, InvocationRequest};
use crate::http::Endpoint;
use crate::load::Bounds;

const HOST_NOTE: &str = "nexus-load must run on the same host as the daemon: the host memory \
figures (MemAvailable) come from this host's /proc/meminfo, and so include nexus-load's own \
memory and the kernel memory KVM allocates for the VMs.";

/// Load generator for the Nexus node daemon (`nexus-vmm serve`).
#[derive(Debug, Parser)]
#[command(
    name = "nexus-load",
    version,
    about = "Load generator for the Nexus node daemon (nexus-vmm serve): latency, throughput, cold starts and density",
    after_help = HOST_NOTE
)]
pub struct Cli {
    /// The mode.
    #[command(subcommand)]
    pub command: Command,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Invoke a function under load and report latency, throughput, cold starts and the
    /// node's memory and CPU.
    ///
    /// With --rate, an open loop: invocations are sent at scheduled times whatever the
    /// daemon's latency; one whose time comes while all --concurrency workers are busy is
    /// dropped and counted, never delayed. Without --rate, a closed loop: --concurrency
    /// workers each send their next invocation as soon as the previous one is answered.
    /// Each worker keeps one HTTP/1.1 keep-alive connection. Progress goes to stderr, the
    /// report to stdout. Ctrl-C ends the run early and still prints the report.
    #[command(after_help = HOST_NOTE)]
    Run(RunArgs),
    /// Measure density: park growing pools of idle VMs and report memory per parked VM and
    /// warm-invocation latency at each size.
    ///
    /// For each size N of --vms, in ascending order: read /metrics and /proc/meminfo, ask
    /// the daemon to warm the function's pool to N idle VMs (in steps of --step, so
    /// progress shows and a failure shows how far it got), read memory again, then run
    /// --invocations warm invocations across the pool. Stops at the first size the daemon
    /// cannot reach, reporting how far it got and the daemon's error.
    #[command(after_help = HOST_NOTE)]
    Park(ParkArgs),
    /// Compare Nexus with the in-guest networking baseline on this host, and write
    /// docs/comparison.md and its plots.
    ///
    /// Starts its own S3 server, backend and node daemons (logs in a temporary directory),
    /// registers every function twice (io = "nexus" and io = "net"), and measures warm
    /// latency (1 and 4 clients), cold starts, host CPU and VM exits per invocation, memory
    /// per parked VM and density at a p99 SLO. Needs /dev/kvm, and root for the baseline
    /// (or --nexus-only). About 7 minutes on 2 cores; --quick takes one or two.
    Compare(crate::compare::CompareArgs),
    /// Serve an S3-compatible store (s3s-fs) over a directory, as its own process: the
    /// object store of `compare`.
    S3Server(crate::compare::s3::S3ServerArgs),
}

/// The daemon and the function, shared by both modes.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The daemon's base URL (plain HTTP).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The function to invoke.
    #[arg(long, short = 'f', value_name = "NAME")]
    pub function: String,
    /// Per-request timeout for invocations (e.g. 500ms, 30s, 2m); a timed-out invocation
    /// counts as failed and its connection is re-opened.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The invocation's input and output, shared by both modes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct InputArgs {
    /// Read the input from this object key in the backend's store.
    #[arg(long, value_name = "KEY")]
    pub input_key: Option<String>,
    /// Pass this text inline as the input.
    #[arg(long, value_name = "TEXT")]
    pub input: Option<String>,
}

/// How the report is shown, shared by both modes.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Interval between progress lines on stderr.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub progress: Duration,
    /// No progress lines on stderr (warnings and errors still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Arguments of `nexus-load run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Write each invocation's output to this key; `{seq}` in it is replaced by the
    /// invocation's sequence number.
    #[arg(long, value_name = "KEY")]
    pub output_key: Option<String>,
    /// Open loop at this many invocations per second (omit for a closed loop).
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Workers, each with one keep-alive connection: the most invocations in flight.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Stop sending after this long (e.g. 30s, 500ms, 2m); 10s when neither --duration
    /// nor --requests is given.
    #[arg(long, short = 'd', value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many invocations (in the open loop: scheduled ones, dropped
    /// included).
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Invocations to send first, closed loop on the same workers, not counted in the
    /// report (they take the cold starts a fresh pool needs).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `nexus-load park`.
#[derive(Debug, Args)]
pub struct ParkArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Write each invocation's output to this key; `{seq}` in it is replaced by the
    /// invocation's sequence number.
    #[arg(long, value_name = "KEY")]
    pub output_key: Option<String>,
    /// Pool sizes to park, comma-separated (taken in ascending order).
    #[arg(long, value_name = "N,N,…", required = true, value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..))]
    pub vms: Vec<u64>,
    /// VMs added per warm request.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub step: u64,
    /// Warm invocations to run at each size (0 to only measure memory).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub invocations: u64,
    /// Workers (and connections) for the warm invocations.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Timeout of each warm request (one step of --step VMs).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub warm_timeout: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Reads a duration: a number followed by `ms`, `s`, `m` or `h` (`500ms`, `30s`, `1.5m`,
/// `2h`). It must be greater than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let usage = || {
        format!("{text:?} is not a duration: expected a number followed by ms, s, m or h, e.g. 30s")
    };
    if number.is_empty() {
        return Err(usage());
    }
    let value: f64 = number.parse().map_err(|_| usage())?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write e.g. {text}s or {text}ms"
            ));
        }
        _ => return Err(usage()),
    };
    let duration = Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| usage())?;
    if duration.is_zero() {
        return Err(format!("{text:?}: the duration must be greater than zero"));
    }
    Ok(duration)
}

/// Reads an open-loop rate: a finite number of invocations per second, greater than zero.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: expected a number of invocations per second greater than zero"
        )),
    }
}

/// The invocation both modes send, from their arguments.
fn invocation(input: InputArgs, output_key: Option<String>) -> anyhow::Result<InvocationRequest> {
    let input = match (input.input_key, input.input) {
        (Some(key), None) => Input::Key(key),
        (None, Some(text)) => Input::Inline(text),
        // clap's group already enforces exactly one.
        _ => bail!("give exactly one of --input-key and --input"),
    };
    Ok(InvocationRequest { input, output_key })
}

/// How progress is shown: every `progress`, unless quiet.
fn progress_every(output: &OutputArgs) -> Option<Duration> {
    (!output.quiet).then_some(output.progress)
}

/// The checked configuration of `nexus-load run`.
#[derive(Debug)]
pub struct RunConfig {
    /// The daemon.
    pub endpoint: Arc<Endpoint>,
    /// The function.
    pub function: String,
    /// Per-invocation timeout.
    pub timeout: Duration,
    /// What each invocation sends.
    pub request: InvocationRequest,
    /// Open-loop rate, or `None` for a closed loop.
    pub rate: Option<f64>,
    /// Workers.
    pub concurrency: usize,
    /// When the measured phase ends.
    pub bounds: Bounds,
    /// Warm-up invocations.
    pub warmup: u64,
    /// Print JSON.
    pub json: bool,
    /// Progress interval, or `None` for quiet.
    pub progress: Option<Duration>,
}

/// When neither --duration nor --requests is given.
pub const DEFAULT_RUN_DURATION: Duration = Duration::from_secs(10);

impl TryFrom<RunArgs> for RunConfig {
    type Error = anyhow::Error;

    fn try_from(args: RunArgs) -> anyhow::Result<Self> {
        let endpoint = Endpoint::parse(&args.target.url).context("bad --url")?;
        let duration = match (args.duration, args.requests) {
            (None, None) => Some(DEFAULT_RUN_DURATION),
            (d, _) => d,
        };
        Ok(RunConfig {
            endpoint: Arc::new(endpoint),
            function: args.target.function,
            timeout: args.target.timeout,
            request: invocation(args.input, args.output_key)?,
            rate: args.rate,
            concurrency: args.concurrency as usize,
            bounds: Bounds {
                requests: args.requests,
                duration,
            },
            warmup: args.warmup,
            json: args.output.json,
            progress: progress_every(&args.output),
        })
    }
}

/// The checked configuration of `nexus-load park`.
#[derive(Debug)]
pub struct ParkConfig {
    /// The daemon.
    pub endpoint: Arc<Endpoint>,
    /// The function.
    pub function: String,
    /// Per-invocation timeout.
    pub timeout: Duration,
    /// Per-warm-request timeout.
    pub warm_timeout: Duration,
    /// What each invocation sends.
    pub request: InvocationRequest,
    /// Pool sizes, ascending, without duplicates.
    pub sizes: Vec<u64>,
    /// VMs per warm request.
    pub step: u64,
    /// Warm invocations per size.
    pub invocations: u64,
    /// Workers for them.
    pub concurrency: usize,
    /// Print JSON.
    pub json: bool,
    /// Progress interval, or `None` for quiet.
    pub progress: Option<Duration>,
}

impl TryFrom<ParkArgs> for ParkConfig {
    type Error = anyhow::Error;

    fn try_from(args: ParkArgs) -> anyhow::Result<Self> {
        let endpoint = Endpoint::parse(&args.target.url).context("bad --url")?;
        Ok(ParkConfig {
            endpoint: Arc::new(endpoint),
            function: args.target.function,
            timeout: args.target.timeout,
            warm_timeout: args.warm_timeout,
            request: invocation(args.input, args.output_key)?,
            sizes: pool_sizes(args.vms),
            step: args.step,
            invocations: args.invocations,
            concurrency: args.concurrency as usize,
            json: args.output.json,
            progress: progress_every(&args.output),
        })
    }
}

/// `sizes` ascending, without duplicates.
pub fn pool_sizes(mut sizes: Vec<u64>) -> Vec<u64> {
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        for bad in ["", "s", "-1s", "1x", "1.2.3s", "1e3s", "ms30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_arguments() {
        let cli = Cli::try_parse_from([
            "nexus-load",
            "run",
            "--function",
            "wordcount",
            "--input-key",
            "in.txt",
            "--rate",
            "100",
            "-c",
            "8",
            "-n",
            "500",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let config = RunConfig::try_from(args).unwrap();
        assert_eq!(config.endpoint.authority, "127.0.0.1:8080");
        assert_eq!(config.rate, Some(100.0));
        assert_eq!(config.concurrency, 8);
        assert_eq!(
            config.bounds,
            Bounds {
                requests: Some(500),
                duration: None
            }
        );
        assert_eq!(config.request.input, Input::Key("in.txt".to_string()));
        assert_eq!(config.progress, Some(Duration::from_secs(5)));

        let cli =
            Cli::try_parse_from(["nexus-load", "run", "-f", "f", "--input", "hi", "-q"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let config = RunConfig::try_from(args).unwrap();
        assert_eq!(config.bounds.duration, Some(DEFAULT_RUN_DURATION));
        assert_eq!(config.progress, None);
    }

    #[test]
    fn input_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["nexus-load", "run", "-f", "f"]).is_err());
        assert!(
            Cli::try_parse_from([
                "nexus-load",
                "run",
                "-f",
                "f",
                "--input",
                "a",
                "--input-key",
                "b"
            ])
            .is_err()
        );
    }

    #[test]
    fn park_arguments() {
        let cli = Cli::try_parse_from([
            "nexus-load",
            "park",
            "-f",
            "wordcount",
            "--input",
            "x",
            "--vms",
            "2000,100,500,100",
        ])
        .unwrap();
        let Command::Park(args) = cli.command else {
            panic!("not park")
        };
        let config = ParkConfig::try_from(args).unwrap();
        assert_eq!(config.sizes, vec![100, 500, 2000]);
        assert_eq!(config.step, 50);
        assert_eq!(config.invocations, 1000);
        assert!(
            Cli::try_parse_from([
                "nexus-load",
                "park",
                "-f",
                "f",
                "--input",
                "x",
                "--vms",
                "0"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["nexus-load", "park", "-f", "f", "--input", "x"]).is_err());
    }

    #[test]
    fn bad_url_is_reported() {
        let cli = Cli::try_parse_from([
            "nexus-load",
            "run",
            "-f",
            "f",
            "--input",
            "x",
            "--url",
            "https://h",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let err = RunConfig::try_from(args).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "bad --url: invalid daemon URL \"https://h\": scheme \"https\" is not supported, use http://"
        );
    }
}
