//! A mock node daemon for the tests: the HTTP API of `nexus-vmm serve` as `nexus-load`
//! uses it, over real HTTP/1.1 on a loopback port, with a pool model simple enough to
//! predict the figures.
//!
//! Function `wordcount` exists; every other name is unknown (404). An invocation runs warm
//! on an idle VM when there is one (the VM parks again afterwards) and cold otherwise (the
//! new VM then parks). `POST /warm` parks VMs up to a cap, beyond which it answers 429.
//! `/metrics` reports 100 MiB + 1 MiB per VM for the daemon and 10 MiB + 256 KiB per VM for
//! the backend, so memory per parked VM is exactly 1.25 MiB.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// The only function the mock knows.
pub const FUNCTION: &str = "wordcount";
const MIB: u64 = 1024 * 1024;

/// The mock's pool.
#[derive(Debug, Default)]
struct Pool {
    idle: u64,
    busy: u64,
    total_vms: u64,
    invocations: u64,
    cold: u64,
}

/// A running mock daemon.
#[derive(Debug)]
pub struct MockDaemon {
    /// Where it listens.
    pub addr: SocketAddr,
    pool: Arc<Mutex<Pool>>,
    connections: Arc<AtomicU64>,
}

impl MockDaemon {
    /// Starts a mock whose invocations take `delay` and whose pool holds at most `cap` VMs.
    pub async fn start(delay: Duration, cap: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Mutex::new(Pool::default()));
        let connections = Arc::new(AtomicU64::new(0));
        let (p, c) = (Arc::clone(&pool), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let pool = Arc::clone(&p);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let pool = Arc::clone(&pool);
                        async move { Ok::<_, Infallible>(handle(req, pool, delay, cap).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockDaemon {
            addr,
            pool,
            connections,
        }
    }

    /// The URL to give `nexus-load`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Invocations answered so far.
    pub fn invocations(&self) -> u64 {
        self.pool.lock().unwrap().invocations
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    answer(status, json!({ "error": kind, "message": message }))
}

async fn handle(
    req: Request<Incoming>,
    pool: Arc<Mutex<Pool>>,
    delay: Duration,
    cap: u64,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["healthz"]) => answer(StatusCode::OK, json!({ "status": "ok" })),
        (Method::GET, ["metrics"]) => {
            let p = pool.lock().unwrap();
            let text = format!(
                "# HELP nexus_vmm_resident_bytes Resident memory.\n\
                 # TYPE nexus_vmm_resident_bytes gauge\n\
                 nexus_vmm_resident_bytes {}\n\
                 nexus_backend_resident_bytes {}\n\
                 nexus_vmm_cpu_seconds_total {}\n\
                 nexus_backend_cpu_seconds_total {}\n\
                 nexus_vms{{function=\"{FUNCTION}\",state=\"idle\"}} {}\n\
                 nexus_vms{{function=\"{FUNCTION}\",state=\"busy\"}} {}\n\
                 nexus_invocations_total{{function=\"{FUNCTION}\",outcome=\"success\",start=\"cold\"}} {}\n\
                 nexus_invocations_total{{function=\"{FUNCTION}\",outcome=\"success\",start=\"warm\"}} {}\n",
                100 * MIB + p.total_vms * MIB,
                10 * MIB + p.total_vms * MIB / 4,
                p.invocations as f64 * 0.001,
                p.invocations as f64 * 0.0005,
                p.idle,
                p.busy,
                p.cold,
                p.invocations - p.cold,
            );
            Response::new(Full::new(Bytes::from(text)))
        }
        (_, ["v1", "functions", name, ..]) if *name != FUNCTION => error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("function {name} is not registered"),
        ),
        (Method::GET, ["v1", "functions", _]) => {
            let p = pool.lock().unwrap();
            answer(
                StatusCode::OK,
                json!({ "name": FUNCTION, "vms": { "idle": p.idle, "busy": p.busy } }),
            )
        }
        (Method::POST, ["v1", "functions", _, "warm"]) => {
            let Some(count) = body["count"].as_u64() else {
                return error(StatusCode::BAD_REQUEST, "InvalidRequest", "count missing");
            };
            let mut p = pool.lock().unwrap();
            let before = p.idle;
            let room = cap.saturating_sub(p.total_vms);
            let wanted = count.saturating_sub(p.idle);
            let started = wanted.min(room);
            p.idle += started;
            p.total_vms += started;
            if started < wanted {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    &format!("VM cap {cap} reached with {} idle", p.idle),
                );
            }
            answer(
                StatusCode::OK,
                json!({ "function": FUNCTION, "started": p.idle - before, "idle": p.idle, "elapsed_ms": 1.5 }),
            )
        }
        (Method::POST, ["v1", "functions", _, "invocations"]) => {
            if body["input"].as_str().is_none() && body["input_key"].as_str().is_none() {
                return error(StatusCode::BAD_REQUEST, "InvalidRequest", "no input");
            }
            let cold = {
                let mut p = pool.lock().unwrap();
                let cold = p.idle == 0;
                if cold {
                    p.total_vms += 1;
                } else {
                    p.idle -= 1;
                }
                p.busy += 1;
                cold
            };
            tokio::time::sleep(delay).await;
            {
                let mut p = pool.lock().unwrap();
                p.busy -= 1;
                p.idle += 1;
                p.invocations += 1;
                p.cold += u64::from(cold);
            }
            let start = if cold { "cold" } else { "warm" };
            let mut response = answer(
                StatusCode::OK,
                json!({
                    "start": start, "outcome": "success", "output": "2 words", "vm": "vm-1",
                    "vm_exits": 4, "bytes_in": 11, "bytes_out": 7,
                    "timings_ms": { "total": if cold { 20.0 } else { 1.0 }, "run": 0.5 }
                }),
            );
            response
                .headers_mut()
                .insert("x-nexus-start", start.parse().unwrap());
            response
        }
        _ => error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such route"),
    }
}

/// End-to-end tests of both modes against the mock.
mod tests {
    use super::*;
    use crate::api::{Input, InvocationRequest};
    use crate::cli::{ParkConfig, RunConfig};
    use crate::http::Endpoint;
    use crate::load::{self, Bounds, Progress, Stop, StopReason, Workload};
    use crate::{park, run};

    fn request() -> InvocationRequest {
        InvocationRequest {
            input: Input::Inline("hello world".to_string()),
            output_key: None,
        }
    }

    fn workload(mock: &MockDaemon, function: &str) -> Arc<Workload> {
        Arc::new(Workload {
            endpoint: Arc::new(Endpoint::parse(&mock.url()).unwrap()),
            timeout: Duration::from_secs(10),
            path: crate::api::invocations_path(function),
            request: request(),
        })
    }

    fn quiet(label: &str) -> Progress {
        Progress {
            label: label.to_string(),
            every: None,
        }
    }

    fn run_config(url: &str, function: &str) -> RunConfig {
        RunConfig {
            endpoint: Arc::new(Endpoint::parse(url).unwrap()),
            function: function.to_string(),
            timeout: Duration::from_secs(10),
            request: request(),
            rate: None,
            concurrency: 3,
            bounds: Bounds {
                requests: Some(60),
                duration: None,
            },
            warmup: 0,
            json: false,
            progress: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_keeps_one_connection_per_worker() {
        let mock = MockDaemon::start(Duration::from_millis(1), 1000).await;
        let bounds = Bounds {
            requests: Some(200),
            duration: None,
        };
        let stop = Arc::new(Stop::default());
        let phase = load::closed_loop(workload(&mock, FUNCTION), 4, bounds, stop, quiet("t")).await;
        let t = &phase.tally;
        assert_eq!(t.sent, 200);
        assert_eq!(t.completed(), 200);
        assert_eq!(t.succeeded(), 200, "{:?}", t.first_errors);
        assert_eq!(t.cold + t.warm, 200);
        assert!(t.cold >= 1 && t.cold <= 4, "cold {}", t.cold);
        assert_eq!(phase.connections_opened, 4);
        assert_eq!(mock.connections(), 4);
        assert_eq!(mock.invocations(), 200);
        assert_eq!(t.mean_vm_exits(), Some(4.0));
        assert!(phase.stopped_early.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_schedules_exactly_and_drops_when_busy() {
        // Fast daemon: every scheduled invocation finds a worker.
        let mock = MockDaemon::start(Duration::from_millis(1), 1000).await;
        let bounds = Bounds {
            requests: None,
            duration: Some(Duration::from_millis(500)),
        };
        let stop = Arc::new(Stop::default());
        let phase = load::open_loop(
            workload(&mock, FUNCTION),
            200.0,
            load::Arrivals::Uniform,
            4,
            bounds,
            stop,
            quiet("t"),
        )
        .await;
        let t = &phase.tally;
        assert_eq!(t.sent + t.dropped, 100);
        assert_eq!(t.completed(), t.sent);
        assert!(phase.max_schedule_lag.is_some());

        // Slow daemon, one worker: most of the schedule is dropped, not delayed.
        let slow = MockDaemon::start(Duration::from_millis(100), 1000).await;
        let bounds = Bounds {
            requests: Some(50),
            duration: None,
        };
        let stop = Arc::new(Stop::default());
        let started = std::time::Instant::now();
        let phase = load::open_loop(
            workload(&slow, FUNCTION),
            500.0,
            load::Arrivals::Uniform,
            1,
            bounds,
            stop,
            quiet("t"),
        )
        .await;
        let t = &phase.tally;
        assert_eq!(t.sent + t.dropped, 50);
        assert!(t.dropped >= 40, "dropped {}", t.dropped);
        assert_eq!(t.completed(), t.sent);
        // 50 at 500/s is 0.1 s of schedule plus the last invocation: not 50 × 100 ms.
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_while_idle_is_reopened() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server that answers one request per connection, keep-alive in its headers,
        // then closes the connection as a daemon's idle timeout would.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"status":"ok"}"#;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let endpoint = Arc::new(Endpoint::parse(&format!("http://{addr}")).unwrap());
        let mut conn = crate::http::Connection::new(endpoint, Duration::from_secs(5));
        for _ in 0..3 {
            crate::api::health(&mut conn).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(conn.opened(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_reports_figures_from_the_daemon() {
        let mock = MockDaemon::start(Duration::from_millis(1), 1000).await;
        let mut config = run_config(&mock.url(), FUNCTION);
        config.warmup = 6;
        let report = run::run(config, Arc::new(Stop::default())).await.unwrap();
        assert_eq!(report.sent, 60);
        assert_eq!(report.succeeded, 60);
        assert_eq!(report.outcomes["200 success"], 60);
        // The warm-up took the cold starts.
        assert_eq!(report.cold_fraction, Some(0.0));
        assert_eq!(report.server_total_ms_mean, Some(1.0));
        assert_eq!(report.bytes_in_mean, Some(11.0));
        assert_eq!(report.latency_ms.samples, 60);
        assert!(report.throughput_rps.unwrap() > 0.0);
        let node = report.node;
        assert!(node.daemon_rss_bytes.is_some() && node.backend_rss_bytes.is_some());
        let cpu = node.daemon_cpu_seconds.unwrap();
        assert!((cpu - 0.060).abs() < 1e-9, "daemon CPU {cpu}");
        assert!(node.daemon_cpu_cores.is_some());
        assert!(node.host_mem_available_drop_bytes.is_some());
        assert_eq!(node.daemon_invocations, Some(60.0));
        assert_eq!(node.daemon_cold_invocations, Some(0.0));
        assert_eq!((node.idle_vms, node.busy_vms), (Some(3.0), Some(0.0)));
        assert!(report.to_text().contains("200 success"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_function_shows_the_daemons_error() {
        let mock = MockDaemon::start(Duration::from_millis(1), 1000).await;
        let err = run::run(run_config(&mock.url(), "nope"), Arc::new(Stop::default()))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("function \"nope\" is unknown to the daemon"),
            "{text}"
        );
        assert!(
            text.contains(r#"404 to GET /v1/functions/nope: {"error":"ResourceNotFound","message":"function nope is not registered"}"#),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_daemon_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = run::run(
            run_config(&format!("http://{addr}"), FUNCTION),
            Arc::new(Stop::default()),
        )
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("does not answer its health check"), "{text}");
        assert!(
            text.contains(&format!("daemon not reachable at {addr}")),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejected_invocations_stop_the_run() {
        let mock = MockDaemon::start(Duration::from_millis(1), 1000).await;
        let stop = Arc::new(Stop::default());
        let bounds = Bounds {
            requests: Some(1000),
            duration: None,
        };
        let wl = Arc::new(Workload {
            path: "/v1/functions/nope/invocations".to_string(),
            ..Arc::try_unwrap(workload(&mock, FUNCTION)).unwrap()
        });
        let phase = load::closed_loop(wl, 2, bounds, Arc::clone(&stop), quiet("t")).await;
        assert!(phase.tally.sent <= 2, "sent {}", phase.tally.sent);
        assert!(matches!(
            phase.stopped_early,
            Some(StopReason::Rejected { status: 404, .. })
        ));
        assert_eq!(
            phase.tally.first_errors["404 ResourceNotFound"],
            "function nope is not registered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn park_measures_each_size_and_stops_at_the_cap() {
        let mock = MockDaemon::start(Duration::from_millis(1), 120).await;
        let config = ParkConfig {
            endpoint: Arc::new(Endpoint::parse(&mock.url()).unwrap()),
            function: FUNCTION.to_string(),
            timeout: Duration::from_secs(10),
            warm_timeout: Duration::from_secs(10),
            request: request(),
            sizes: vec![50, 100, 200, 400],
            step: 30,
            invocations: 40,
            concurrency: 4,
            json: false,
            progress: None,
        };
        let report = park::park(config, Arc::new(Stop::default())).await.unwrap();
        assert_eq!(report.rows.len(), 3, "{report:#?}");
        let first = &report.rows[0];
        assert_eq!(
            (first.target_vms, first.reached_vms, first.idle_before),
            (50, 50, 0)
        );
        assert_eq!(first.rss_bytes_per_vm, Some(1.25 * MIB as f64));
        assert!(first.host_bytes_per_vm.is_some());
        let warm = first.warm.as_ref().unwrap();
        assert_eq!((warm.invocations, warm.succeeded, warm.failed), (40, 40, 0));
        assert_eq!(warm.cold_fraction, Some(0.0));
        assert_eq!(warm.latency_ms.samples, 40);

        let second = &report.rows[1];
        assert_eq!((second.reached_vms, second.idle_before), (100, 50));
        assert_eq!(second.rss_bytes_per_vm, Some(1.25 * MIB as f64));

        let third = &report.rows[2];
        assert_eq!((third.target_vms, third.reached_vms), (200, 120));
        assert!(third.warm.is_none());
        let stop = report.stopped.as_ref().unwrap();
        assert_eq!(
            (stop.target_vms, stop.reached_vms, stop.status),
            (200, 120, Some(429))
        );
        assert_eq!(stop.daemon_error.as_ref().unwrap().error, "TooManyRequests");
        assert!(
            stop.message.contains("VM cap 120 reached"),
            "{}",
            stop.message
        );
        let text = report.to_text();
        assert!(
            text.contains("STOPPED at N=200: the daemon reached 120 idle VMs"),
            "{text}"
        );
    }
}
