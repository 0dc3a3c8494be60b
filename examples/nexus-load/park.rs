//! `nexus-load park`: park growing pools of idle VMs and measure what each costs.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::api;
use crate::cli::ParkConfig;
use crate::http::Connection;
use crate::load::{self, Bounds, Progress, Stop, Workload};
use crate::node::{self, PerVmMemory};
use crate::report::{ParkReport, ParkRow, ParkStop, WarmFigures};
use crate::run::preflight;
use crate::stats::LatencySummary;

/// The function's idle VMs, as the daemon reports them.
async fn idle_vms(control: &mut Connection, function: &str) -> Result<u64> {
    let info = api::function(control, function)
        .await
        .with_context(|| format!("cannot read function {function:?}'s VM counts"))?;
    Ok(info.vms.idle)
}

/// The next warm request's count: `step` more than `reached`, at most `target`.
pub fn next_count(reached: u64, step: u64, target: u64) -> u64 {
    reached.saturating_add(step).min(target)
}

/// Runs `nexus-load park`, returning its report. The daemon not reaching a size is not an
/// error: the report says where it stopped and why.
pub async fn park(config: ParkConfig, stop: Arc<Stop>) -> Result<ParkReport> {
    let function = config.function.as_str();
    let mut control = Connection::new(Arc::clone(&config.endpoint), config.timeout);
    preflight(&mut control, function).await?;
    // Warm requests can take long (they answer once every VM is parked): their own timeout.
    let mut warm_conn = Connection::new(Arc::clone(&config.endpoint), config.warm_timeout);
    let workload = Arc::new(Workload {
        endpoint: Arc::clone(&config.endpoint),
        timeout: config.timeout,
        path: api::invocations_path(function),
        request: config.request.clone(),
    });

    let mut report = ParkReport {
        mode: "park",
        url: config.endpoint.url.clone(),
        function: function.to_string(),
        step: config.step,
        invocations: config.invocations,
        concurrency: config.concurrency,
        ..ParkReport::default()
    };

    for &target in &config.sizes {
        if stop.is_set() {
            break;
        }
        let idle_before = idle_vms(&mut control, function).await?;
        let before = node::sample(&mut control, function).await;
        let started = Instant::now();
        let mut reached = idle_before;
        let mut failure = None;

        while reached < target {
            let count = next_count(reached, config.step, target);
            let step_started = Instant::now();
            let answer = tokio::select! {
                answer = api::warm(&mut warm_conn, function, count) => answer,
                () = stop.wait() => break,
            };
            match answer {
                Ok(answer) => {
                    reached = answer.idle;
                    if config.progress.is_some() {
                        eprintln!(
                            "park N={target}: {reached}/{target} idle, {} started in {:.2} s ({:.1} s for this size)",
                            answer.started,
                            step_started.elapsed().as_secs_f64(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    if answer.idle < count {
                        failure = Some(ParkStop {
                            target_vms: target,
                            reached_vms: reached,
                            status: None,
                            daemon_error: None,
                            message: format!(
                                "asked for {count} idle VMs, the daemon answered with only {} idle",
                                answer.idle
                            ),
                        });
                    }
                }
                Err(e) => {
                    // How far it got: ask the daemon, keep the last answer if it cannot say.
                    reached = match api::function(&mut control, function).await {
                        Ok(info) => info.vms.idle,
                        Err(_) => reached,
                    };
                    let (status, daemon_error) = match e.daemon_error() {
                        Some((status, error)) => (Some(status), Some(error.clone())),
                        None => (None, None),
                    };
                    let message = format!("{:#}", anyhow::Error::new(e));
                    if config.progress.is_some() {
                        eprintln!("park N={target}: stopped at {reached}/{target} idle: {message}");
                    }
                    failure = Some(ParkStop {
                        target_vms: target,
                        reached_vms: reached,
                        status,
                        daemon_error,
                        message,
                    });
                }
            }
            if failure.is_some() {
                break;
            }
        }
        let park_seconds = started.elapsed().as_secs_f64();
        let after = node::sample(&mut control, function).await;
        let per_vm = PerVmMemory::between(&before, &after, reached.saturating_sub(idle_before));
        let mut row = ParkRow {
            target_vms: target,
            reached_vms: reached,
            idle_before,
            park_seconds,
            rss_bytes_per_vm: per_vm.rss_bytes,
            host_bytes_per_vm: per_vm.host_bytes,
            node_rss_bytes: after.node_rss(),
            warm: None,
        };

        if failure.is_none() && !stop.is_set() && config.invocations > 0 {
            let phase = load::closed_loop(
                Arc::clone(&workload),
                config.concurrency,
                Bounds {
                    requests: Some(config.invocations),
                    duration: None,
                },
                Arc::clone(&stop),
                Progress {
                    label: format!("park N={target} invocations"),
                    every: config.progress,
                },
            )
            .await;
            let t = &phase.tally;
            row.warm = Some(WarmFigures {
                invocations: t.sent,
                succeeded: t.succeeded(),
                failed: t.failed(),
                latency_ms: LatencySummary::from_samples(&t.success_latencies_ms),
                cold_fraction: t.cold_fraction(),
                errors: t.first_errors.clone(),
            });
            if config.progress.is_some() {
                eprintln!(
                    "park N={target}: {} warm invocations in {:.2} s, {} failed, {} cold",
                    t.completed(),
                    phase.elapsed.as_secs_f64(),
                    t.failed(),
                    t.cold
                );
            }
        }
        report.rows.push(row);
        if failure.is_some() {
            report.stopped = failure;
            break;
        }
    }
    report.stopped_early = stop.reason().map(|r| r.to_string());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_steps() {
        assert_eq!(next_count(0, 50, 100), 50);
        assert_eq!(next_count(50, 50, 100), 100);
        assert_eq!(next_count(80, 50, 100), 100);
        assert_eq!(next_count(u64::MAX - 1, 50, u64::MAX), u64::MAX);
    }
}
