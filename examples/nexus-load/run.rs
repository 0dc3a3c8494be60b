//! `nexus-load run`: invoke a function under load and report what it cost.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::api;
use crate::cli::RunConfig;
use crate::http::{Connection, Endpoint};
use crate::load::{self, Bounds, PhaseResult, Progress, Stop, Workload};
use crate::node::{self, NodeUsage};
use crate::report::RunReport;
use crate::stats::{LatencySummary, ratio};

/// Checks the daemon is up and knows `function`, with the daemon's own error when it does
/// not.
pub async fn preflight(control: &mut Connection, function: &str) -> Result<api::FunctionInfo> {
    let endpoint = control.endpoint().url.clone();
    let health = api::health(control)
        .await
        .with_context(|| format!("the daemon at {endpoint} does not answer its health check"))?;
    if health.status != "ok" {
        log::warn!(
            "the daemon's health status is {:?}, not \"ok\"",
            health.status
        );
    }
    match api::function(control, function).await {
        Ok(info) => Ok(info),
        Err(e) if e.daemon_error().is_some_and(|(status, _)| status == 404) => {
            Err(anyhow::Error::new(e)
                .context(format!("function {function:?} is unknown to the daemon")))
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot look up function {function:?}")))
        }
    }
}

/// Runs `nexus-load run`, returning its report (which says when and why the run stopped
/// early; the caller decides what that means for the exit status).
pub async fn run(config: RunConfig, stop: Arc<Stop>) -> Result<RunReport> {
    let mut control = Connection::new(Arc::clone(&config.endpoint), config.timeout);
    preflight(&mut control, &config.function).await?;

    let workload = Arc::new(Workload {
        endpoint: Arc::clone(&config.endpoint),
        timeout: config.timeout,
        path: api::invocations_path(&config.function),
        request: config.request.clone(),
    });

    if config.warmup > 0 {
        let warmup = load::closed_loop(
            Arc::clone(&workload),
            config.concurrency,
            Bounds {
                requests: Some(config.warmup),
                duration: None,
            },
            Arc::clone(&stop),
            Progress {
                label: "warmup".to_string(),
                every: config.progress,
            },
        )
        .await;
        let t = &warmup.tally;
        if config.progress.is_some() {
            eprintln!(
                "warmup: {} invocations in {:.2} s: {} succeeded ({} cold), {} failed",
                t.completed(),
                warmup.elapsed.as_secs_f64(),
                t.succeeded(),
                t.cold,
                t.failed()
            );
        }
        if let Some(reason) = warmup.stopped_early {
            bail!("warm-up stopped: {reason}");
        }
    }

    let before = node::sample(&mut control, &config.function).await;
    let progress = Progress {
        label: "run".to_string(),
        every: config.progress,
    };
    let phase = match config.rate {
        Some(rate) => {
            load::open_loop(
                workload,
                rate,
                load::Arrivals::Uniform,
                config.concurrency,
                config.bounds,
                Arc::clone(&stop),
                progress,
            )
            .await
        }
        None => {
            load::closed_loop(
                workload,
                config.concurrency,
                config.bounds,
                Arc::clone(&stop),
                progress,
            )
            .await
        }
    };
    let after = node::sample(&mut control, &config.function).await;
    Ok(build_report(
        &config,
        &config.endpoint,
        phase,
        NodeUsage::between(&before, &after),
    ))
}

/// The report of a measured phase.
pub fn build_report(
    config: &RunConfig,
    endpoint: &Endpoint,
    phase: PhaseResult,
    node: NodeUsage,
) -> RunReport {
    let t = &phase.tally;
    let elapsed_s = phase.elapsed.as_secs_f64();
    RunReport {
        mode: "run",
        url: endpoint.url.clone(),
        function: config.function.clone(),
        loop_kind: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: config.rate,
        concurrency: config.concurrency,
        duration_limit_s: config.bounds.duration.map(|d| d.as_secs_f64()),
        request_limit: config.bounds.requests,
        warmup: config.warmup,
        elapsed_s,
        sent: t.sent,
        dropped: t.dropped,
        completed: t.completed(),
        succeeded: t.succeeded(),
        failed: t.failed(),
        outcomes: t.outcomes.clone(),
        errors: t.first_errors.clone(),
        throughput_rps: ratio(t.completed() as f64, elapsed_s),
        success_rps: ratio(t.succeeded() as f64, elapsed_s),
        latency_ms: LatencySummary::from_samples(&t.success_latencies_ms),
        cold_fraction: t.cold_fraction(),
        cold: t.cold,
        warm: t.warm,
        server_total_ms_mean: t.mean_server_total_ms(),
        vm_exits_mean: t.mean_vm_exits(),
        bytes_in_mean: t.mean_bytes_in(),
        bytes_out_mean: t.mean_bytes_out(),
        node,
        connections_opened: phase.connections_opened,
        max_schedule_lag_ms: phase.max_schedule_lag.map(|d| d.as_secs_f64() * 1000.0),
        stopped_early: phase.stopped_early.map(|r| r.to_string()),
    }
}
