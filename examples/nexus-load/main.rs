//! `nexus-load`: the load generator for the Nexus node daemon (`nexus-vmm serve`).
//!
//! Modes: `run` invokes a function under an open or closed loop and reports latency,
//! throughput, cold starts and the node's memory and CPU; `park` parks growing pools of
//! idle VMs and reports memory per parked VM and warm latency at each size; `compare`
//! measures Nexus against the in-guest networking baseline on this host and writes
//! docs/comparison.md (with `s3-server`, the object store it starts). See
//! `nexus-load --help`.
//!
//! Progress goes to stderr, the report to stdout (a table, or one JSON object with
//! `--json`). Exit status: 0 when the report was printed, 1 on an error (the daemon not
//! reachable, an unknown function, the daemon rejecting the invocation, a run in which no
//! invocation succeeded), 2 for bad arguments, 130 after Ctrl-C (the report so far is still
//! printed).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;

mod api;
mod cli;
mod compare;
mod http;
mod load;
mod metrics;
mod node;
mod park;
mod report;
mod run;
mod stats;

#[cfg(test)]
mod mock;

use cli::{Cli, Command, ParkConfig, RunConfig};
use load::{Stop, StopReason};

/// Worker threads of the runtime: enough to keep the load generator's own latency low
/// without taking the cores the daemon is measured on.
const WORKER_THREADS: usize = 2;

/// Exit status after Ctrl-C, as shells report a SIGINT.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexus-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = Arc::new(Stop::default());
        spawn_ctrl_c(Arc::clone(&stop));
        match cli.command {
            Command::Run(args) => {
                let config = RunConfig::try_from(args)?;
                let json = config.json;
                let report = run::run(config, Arc::clone(&stop)).await?;
                emit(json, &report, report::RunReport::to_text)?;
                let code = finish(&stop)?;
                if report.succeeded == 0 && report.completed > 0 {
                    anyhow::bail!(
                        "no invocation succeeded ({} failed: see the first error of each kind above)",
                        report.failed
                    );
                }
                Ok(code)
            }
            Command::Compare(args) => {
                let exe = std::env::current_exe().context("cannot find this executable")?;
                let words: Vec<String> = std::env::args().skip(1).collect();
                let command = format!(
                    "cargo run --release --example nexus-load -- {}",
                    words.join(" ")
                );
                let plan = compare::Plan::from_args(&args, exe, command)?;
                let comparison = compare::compare(plan, Arc::clone(&stop)).await?;
                print!("{}", compare::headline_text(&comparison));
                finish(&stop)
            }
            Command::S3Server(args) => {
                compare::s3::serve(args).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Park(args) => {
                let config = ParkConfig::try_from(args)?;
                let json = config.json;
                let report = park::park(config, Arc::clone(&stop)).await?;
                emit(json, &report, report::ParkReport::to_text)?;
                finish(&stop)
            }
        }
    })
}

/// The exit status once the report is printed: why the phases stopped early decides it.
fn finish(stop: &Stop) -> Result<ExitCode> {
    match stop.reason() {
        None => Ok(ExitCode::SUCCESS),
        Some(StopReason::Interrupted) => Ok(ExitCode::from(INTERRUPTED)),
        Some(reason @ StopReason::Rejected { .. }) => Err(anyhow::anyhow!("{reason}")),
    }
}

/// The first Ctrl-C stops the phases (in-flight invocations are awaited, then the report
/// is printed); a second one exits at once.
fn spawn_ctrl_c(stop: Arc<Stop>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            log::warn!("cannot listen for Ctrl-C: it will end nexus-load without a report");
            return;
        }
        eprintln!(
            "nexus-load: interrupted, finishing in-flight invocations (Ctrl-C again to quit)"
        );
        stop.trigger(StopReason::Interrupted);
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(i32::from(INTERRUPTED));
        }
    });
}

/// Prints the report on stdout: one JSON object, or the text.
fn emit<R: Serialize>(json: bool, report: &R, text: impl FnOnce(&R) -> String) -> Result<()> {
    if json {
        let line = serde_json::to_string(report).context("cannot serialise the report")?;
        println!("{line}");
    } else {
        print!("{}", text(report));
    }
    Ok(())
}
