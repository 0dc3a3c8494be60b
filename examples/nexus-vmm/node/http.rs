//! The node's HTTP API (HTTP/1.1, JSON), after the Lambda Invoke API where it fits.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/functions/{name}/invocations` with `{"input_key":"K"}` or `{"input":"TEXT"}`, optional `"output_key"`, `"request_id"` | 200 with the result and timings ([`InvocationResult`]); headers `X-Nexus-Start: cold\|warm`, `X-Nexus-Request-Id` |
//! | `POST /v1/functions/{name}/warm` with `{"count":N}` | 200 once N VMs of the function are parked |
//! | `GET /v1/functions`, `GET /v1/functions/{name}` | the functions, their settings and VMs |
//! | `GET /healthz` | 200 `{"status":"ok",…}`, 503 if the backend does not answer |
//! | `GET /readyz` | 200 once the node serves its functions; 503 while it starts, when the backend does not answer, and from the moment it drains ([`Agent`]) |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /2015-03-31/functions/{name}/invocations` | the Lambda Invoke API ([`lambda`](super::lambda)) |
//!
//! Errors are `{"error":"TYPE","message":"…"}`: 400 `InvalidRequest` (a malformed body, a bad
//! key), 404 `ResourceNotFound` (no such function, or no such input object), 405
//! `MethodNotAllowed`, 413 `RequestTooLarge`, 429 `TooManyRequests`, 502 `FunctionError` (the
//! function completed with an error: the answer also carries its result fields),
//! `FunctionCrashed` and `BackendError` (the backend failed), 503 `ServiceUnavailable`, 504
//! `FunctionTimeout`.
//!
//! With a bearer token ([`ApiAuth`]), every `/v1` request (and `/metrics` if asked) needs
//! `Authorization: Bearer <token>`: 401 `Unauthorized` (with `WWW-Authenticate: Bearer`)
//! without one, 403 `Forbidden` with another. `/healthz` and `/readyz` stay open.
//!
//! Every answer carries `X-Nexus-Node: NAME`. At the first SIGTERM or SIGINT the node
//! *drains* ([`serve`]): it goes on answering, but new invocations are refused (503 with
//! `Retry-After`) while those in flight finish, up to a deadline; then it stops.

use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::auth::{ApiAuth, BearerError};
use super::lambda::Lambda;
use super::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use super::vm::Input;
use super::{Invocation, InvocationResult, Node, NodeError};

/// The largest inline input, in bytes: Lambda's limit on a synchronous payload (it travels
/// to the backend as raw bytes after the request line).
pub const MAX_INLINE_INPUT: usize = 6 * 1024 * 1024;
/// The largest request body of `/v1` (an inline input as a JSON string, and the rest).
pub const MAX_BODY: usize = 8 << 20;
/// How much of a body over its limit is read and dropped before the refusal is sent, so
/// that a client still sending is not cut off before it reads the answer.
const MAX_DRAIN: usize = 16 << 20;

/// The body of an invocation request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    input_key: Option<String>,
    input: Option<String>,
    output_key: Option<String>,
    #[serde(default)]
    request_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmBody {
    count: usize,
}

type Answer = Response<Full<Bytes>>;

fn json_answer(status: StatusCode, body: &serde_json::Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_answer(status: StatusCode, kind: &str, message: &str) -> Answer {
    json_answer(status, &json!({"error": kind, "message": message}))
}

fn node_error(e: &NodeError) -> Answer {
    let (status, kind) = match e {
        NodeError::NotFound(_) | NodeError::ObjectNotFound(_) => {
            (StatusCode::NOT_FOUND, "ResourceNotFound")
        }
        NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
        NodeError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
        NodeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        NodeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "FunctionTimeout"),
        NodeError::Crashed(_) => (StatusCode::BAD_GATEWAY, "FunctionCrashed"),
        NodeError::Backend(_) => (StatusCode::BAD_GATEWAY, "BackendError"),
        NodeError::Store(_) => (StatusCode::BAD_GATEWAY, "StoreError"),
        NodeError::Panicked(_) => (StatusCode::INTERNAL_SERVER_ERROR, "NodePanic"),
    };
    error_answer(status, kind, &e.to_string())
}

/// Parses an invocation body.
fn parse_invocation(body: &[u8]) -> Result<Invocation, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body must be a JSON object with `input_key` or `input`".into());
    }
    let body: InvokeBody =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}"))?;
    let input = match (body.input_key, body.input) {
        (Some(key), None) if !key.is_empty() => Input::Key(key),
        (None, Some(text)) if text.len() <= MAX_INLINE_INPUT => Input::Inline(text.into()),
        (None, Some(text)) => {
            return Err(format!(
                "an inline input may be at most {MAX_INLINE_INPUT} bytes ({} given): store it \
                 and pass `input_key`",
                text.len()
            ));
        }
        (Some(_), Some(_)) => return Err("give `input_key` or `input`, not both".into()),
        (Some(_), None) => return Err("`input_key` is empty".into()),
        (None, None) => return Err("give `input_key` or `input`".into()),
    };
    if body.request_id.len() > 200 {
        return Err("`request_id` may be at most 200 bytes".into());
    }
    Ok(Invocation {
        input,
        output_key: body.output_key,
        request_id: body.request_id,
    })
}

fn invocation_answer(result: &InvocationResult) -> Answer {
    let value = serde_json::to_value(result).unwrap_or_else(|_| json!({}));
    let mut answer = if result.outcome == "success" {
        json_answer(StatusCode::OK, &value)
    } else {
        let mut body = value;
        if let Some(map) = body.as_object_mut() {
            map.insert("error".into(), json!("FunctionError"));
            map.insert(
                "message".into(),
                json!(format!(
                    "the function reported an error: {}",
                    result.output.as_deref().unwrap_or("")
                )),
            );
        }
        json_answer(StatusCode::BAD_GATEWAY, &body)
    };
    let headers = answer.headers_mut();
    headers.insert("x-nexus-start", HeaderValue::from_static(result.start));
    if let Ok(id) = HeaderValue::from_str(&result.request_id) {
        headers.insert("x-nexus-request-id", id);
    }
    if result.outcome != "success" {
        headers.insert(
            "x-nexus-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    answer
}

/// Bounds on the API's connections, so that slow or idle clients cannot hold the node's
/// descriptors (which its VMs need).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (also the idle time allowed
    /// between requests of a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The node starts: it serves no invocation yet.
const STARTING: u8 = 0;
/// The node serves its functions.
const READY: u8 = 1;
/// The node drains: it finishes the invocations in flight and takes no new one.
const DRAINING: u8 = 2;

/// What a load balancer in front of the node relies on: the node's name on every answer,
/// whether it is ready (`GET /readyz`), and the count of invocations in flight that a drain
/// waits for.
#[derive(Debug)]
pub struct Agent {
    name: HeaderValue,
    phase: AtomicU8,
    /// Why the node is not ready yet, while it starts.
    starting: Mutex<String>,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One invocation in flight, counted until it is dropped.
struct InFlight(Arc<Agent>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Agent {
    /// An agent for the node called `name` (its `X-Nexus-Node`), starting; `None` if the
    /// name cannot be a header's value.
    pub fn new(name: &str) -> Option<Self> {
        let name = HeaderValue::from_str(name)
            .ok()
            .filter(|_| !name.is_empty())?;
        Some(Self {
            name,
            phase: AtomicU8::new(STARTING),
            starting: Mutex::new("starting".into()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.name.to_str().unwrap_or_default()
    }

    /// While the node starts, says what it waits for (what `/readyz` answers).
    pub fn starting(&self, reason: impl Into<String>) {
        *self.starting.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
    }

    /// The node serves its functions from now on (unless it drains already).
    pub fn ready(&self) {
        let _ = self
            .phase
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Starts the drain: from now on `/readyz` is 503 and new invocations are refused.
    /// Returns the invocations in flight.
    pub fn drain(&self) -> usize {
        self.phase.store(DRAINING, Ordering::SeqCst);
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether the node drains.
    pub fn draining(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == DRAINING
    }

    /// Invocations in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts an invocation in, or says why the node refuses it.
    fn enter(self: &Arc<Self>) -> Result<InFlight, String> {
        // Counted before the phase is read: a drain that starts after this sees it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        match self.phase.load(Ordering::SeqCst) {
            READY => Ok(guard),
            DRAINING => Err("the node is draining: it takes no new invocation".into()),
            _ => Err(format!(
                "the node is starting ({}): it serves no invocation yet",
                self.starting.lock().unwrap_or_else(|e| e.into_inner())
            )),
        }
    }

    /// Resolves once no invocation is in flight.
    async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The answer of `GET /readyz`.
    async fn readiness(&self, node: &Node) -> Answer {
        match self.phase.load(Ordering::SeqCst) {
            READY => match node.backend_stats().await {
                Ok(_) => json_answer(
                    StatusCode::OK,
                    &json!({"status": "ready", "node": self.name(), "functions": node.function_names().len()}),
                ),
                Err(e) => json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unready", "node": self.name(), "reason": format!("the backend does not answer: {e}")}),
                ),
            },
            DRAINING => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining", "node": self.name(), "reason": "the node is draining", "in_flight": self.in_flight()}),
            ),
            _ => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "starting", "node": self.name(), "reason": *self.starting.lock().unwrap_or_else(|e| e.into_inner())}),
            ),
        }
    }
}

/// How long a refused caller is told to wait before it tries again, in seconds: the
/// balancer in front has taken the node out by then, or it has started.
const RETRY_AFTER: &str = "1";

/// The refusal of an invocation the node does not take now (starting, draining): 503 with
/// `Retry-After`, in the shape of the API asked.
fn refusal(lambda_api: bool, message: &str) -> Answer {
    let mut answer = if lambda_api {
        let mut answer = json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"Type": "Service", "message": message}),
        );
        answer.headers_mut().insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ServiceException"),
        );
        answer
    } else {
        error_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    };
    answer.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER),
    );
    answer
}

/// The refusal of a request without the right bearer token: 401 with `WWW-Authenticate`
/// when it carries none, 403 when it carries another.
fn bearer_refusal(error: Option<BearerError>) -> Answer {
    match error {
        Some(BearerError::Wrong) => error_answer(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the bearer token is not the node's",
        ),
        _ => {
            let mut answer = error_answer(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this node's API needs `Authorization: Bearer <token>`",
            );
            answer.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            answer
        }
    }
}

/// How the node stops: at the first signal it drains, for at most `timeout`; a second
/// signal ends the drain at once.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// The longest the invocations in flight are waited for.
    pub timeout: Duration,
}

/// Why a request's body was not read.
#[derive(Debug)]
pub(super) enum BodyError {
    /// It did not arrive in time.
    TimedOut(Duration),
    /// It is longer than the limit.
    TooLarge(usize),
    /// The connection failed.
    Broken(String),
}

/// Reads a request's body, at most `limit` bytes, within `timeout`. A body over the limit is
/// read on (and dropped) up to [`MAX_DRAIN`] bytes, so that the client can read the refusal.
pub(super) async fn read_body_limited(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = async move {
        let mut body = body;
        let mut kept = bytes::BytesMut::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                kept.extend_from_slice(&data);
            } else if seen > limit.saturating_add(MAX_DRAIN) {
                break;
            }
        }
        if seen > limit {
            return Err(BodyError::TooLarge(limit));
        }
        Ok(kept.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut(timeout)))
}

async fn read_body(request: Request<Incoming>, timeout: Duration) -> Result<Bytes, Answer> {
    read_body_limited(request.into_body(), MAX_BODY, timeout)
        .await
        .map_err(|e| match e {
            BodyError::TimedOut(timeout) => error_answer(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                &format!("the body did not arrive within {} s", timeout.as_secs()),
            ),
            BodyError::TooLarge(limit) => error_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                &format!("the body may be at most {limit} bytes"),
            ),
            BodyError::Broken(e) => error_answer(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("cannot read the body: {e}"),
            ),
        })
}

async fn route(
    node: Node,
    lambda: Arc<Lambda>,
    agent: Arc<Agent>,
    auth: &ApiAuth,
    request: Request<Incoming>,
    body_timeout: Duration,
) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Invocations (and warm-ups) are counted in flight, and refused while the node is not
    // ready; the guard lives until the answer is made.
    let lambda_api = matches!(
        segments.as_slice(),
        [super::lambda::API_VERSION, "functions", _, "invocations"]
    );
    let gated = method == Method::POST
        && (lambda_api
            || matches!(
                segments.as_slice(),
                ["v1", "functions", _, "invocations" | "warm"]
            ));
    // The bearer token, where asked for: before anything else, draining included.
    let protected = matches!(segments.first(), Some(&"v1"))
        || (auth.metrics && segments.as_slice() == ["metrics"]);
    let denied = auth
        .bearer
        .as_ref()
        .filter(|_| protected)
        .and_then(|token| token.check(request.headers()).err());
    let in_flight = (gated && denied.is_none()).then(|| agent.enter());
    let answer = match (&method, segments.as_slice()) {
        _ if denied.is_some() => bearer_refusal(denied),
        _ if matches!(in_flight, Some(Err(_))) => {
            let message = match &in_flight {
                Some(Err(message)) => message.as_str(),
                _ => "",
            };
            refusal(lambda_api, message)
        }
        (_, [super::lambda::API_VERSION, "functions", name, "invocations"]) => {
            let name = (*name).to_owned();
            lambda.invoke(request, &name, body_timeout).await
        }
        (&Method::GET, ["healthz"]) => match node.backend_stats().await {
            Ok(_) => json_answer(
                StatusCode::OK,
                &json!({"status": "ok", "vms": node.vm_total(), "functions": node.function_names().len(), "backend": "ok"}),
            ),
            Err(e) => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "degraded", "vms": node.vm_total(), "backend": e.to_string()}),
            ),
        },
        (&Method::GET, ["readyz"]) => agent.readiness(&node).await,
        (&Method::GET, ["metrics"]) => {
            let text = node.metrics().render(&node.gauges().await);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        (&Method::GET, ["v1", "functions"]) => {
            let functions: Vec<_> = node
                .function_names()
                .iter()
                .filter_map(|name| node.function_info(name).ok())
                .collect();
            json_answer(StatusCode::OK, &json!({ "functions": functions }))
        }
        (&Method::GET, ["v1", "functions", name]) => match node.function_info(name) {
            Ok(info) => json_answer(StatusCode::OK, &json!(info)),
            Err(e) => node_error(&e),
        },
        (&Method::POST, ["v1", "functions", name, "invocations"]) => {
            let name = (*name).to_owned();
            match read_body(request, body_timeout).await {
                Err(answer) => answer,
                Ok(body) => match parse_invocation(&body) {
                    Err(message) => {
                        if node.function_info(&name).is_err() {
                            node_error(&NodeError::NotFound(name))
                        } else {
                            error_answer(StatusCode::BAD_REQUEST, "InvalidRequest", &message)
                        }
                    }
                    Ok(invocation) => match node.invoke(&name, invocation).await {
                        Ok(result) => invocation_answer(&result),
                        Err(e) => node_error(&e),
                    },
                },
            }
        }
        (&Method::POST, ["v1", "functions", name, "warm"]) => {
            let name = (*name).to_owned();
            match read_body(request, body_timeout).await {
                Err(answer) => answer,
                Ok(body) => match serde_json::from_slice::<WarmBody>(&body) {
                    Err(e) => error_answer(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequest",
                        &format!("the body must be {{\"count\":N}}: {e}"),
                    ),
                    Ok(warm) => {
                        let start = std::time::Instant::now();
                        match node
                            .warm(&name, warm.count)
                            .await
                            .and_then(|started| Ok((started, node.function_info(&name)?)))
                        {
                            Ok((started, info)) => json_answer(
                                StatusCode::OK,
                                &json!({
                                    "function": info.name,
                                    "started": started,
                                    "idle": info.vms.idle,
                                    "busy": info.vms.busy,
                                    "elapsed_ms": start.elapsed().as_secs_f64() * 1e3,
                                }),
                            ),
                            Err(e) => node_error(&e),
                        }
                    }
                },
            }
        }
        (_, ["healthz"] | ["readyz"] | ["metrics"] | ["v1", "functions", ..]) => error_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error_answer(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("no such resource: {path}"),
        ),
    };
    drop(in_flight);
    let mut answer = answer;
    let headers = answer.headers_mut();
    headers.insert("x-nexus-node", agent.name.clone());
    if agent.draining() {
        // A kept-alive client (a balancer's pooled connection) goes elsewhere next time.
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = answer.status();
    if status.is_client_error() || status.is_server_error() {
        if path.ends_with("/invocations")
            && status != StatusCode::BAD_GATEWAY
            && status != StatusCode::GATEWAY_TIMEOUT
        {
            node.metrics().rejected(status.as_u16());
        }
        log::info!("{method} {path} → {status}");
    } else {
        log::debug!("{method} {path} → {status}");
    }
    answer
}

/// Serves the HTTP API on `listener` within `limits` until the node has drained: the first
/// message on `signals` starts the drain (`agent` refuses new invocations from then on), which
/// ends once no invocation is in flight and every connection has closed, or at `drain`'s
/// deadline, or at a second message. Then drops the Lambda API's queued events (counted and
/// logged). Returns the invocations still in flight (cut short if the process ends).
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    agent: Arc<Agent>,
    drain: Drain,
    signals: mpsc::Receiver<&'static str>,
    auth: ApiAuth,
) -> usize {
    let lambda = Arc::new(Lambda::start(node.clone(), auth.lambda.clone()));
    let left = serve_until(
        node,
        Arc::clone(&lambda),
        Arc::new(auth),
        listener,
        limits,
        agent,
        drain,
        signals,
    )
    .await;
    lambda.close();
    left
}

/// What woke the accept loop.
enum Event {
    Signal(Option<&'static str>),
    Deadline,
    Drained,
    Accepted(
        (
            Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
        ),
    ),
}

/// Why the accept loop ended.
enum End {
    /// No invocation in flight any more.
    Drained,
    /// The deadline, a second signal, or a failed listener: stop now.
    Now,
}

#[allow(clippy::too_many_arguments)]
async fn serve_until(
    node: Node,
    lambda: Arc<Lambda>,
    auth: Arc<ApiAuth>,
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    agent: Arc<Agent>,
    drain: Drain,
    mut signals: mpsc::Receiver<&'static str>,
) -> usize {
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    // Told to every connection when the drain is over: idle ones close, one answering
    // finishes its answer first.
    let (closing, closed) = watch::channel(false);
    let mut signals_open = true;
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let end = loop {
        // A free slot first: at the cap, connections wait in the kernel's backlog and cost
        // the node no descriptor.
        let accept = async {
            let slot = Arc::clone(&slots).acquire_owned().await;
            (slot, listener.accept().await)
        };
        let draining = deadline.is_some();
        let event = tokio::select! {
            signal = signals.recv(), if signals_open => Event::Signal(signal),
            () = async { deadline.as_mut().expect("draining").await }, if draining => {
                Event::Deadline
            }
            () = agent.drained(), if draining => Event::Drained,
            accepted = accept => Event::Accepted(accepted),
        };
        let (slot, accepted) = match (event, draining) {
            (Event::Accepted(accepted), _) => accepted,
            (Event::Signal(None), _) => {
                signals_open = false;
                continue;
            }
            (Event::Signal(Some(signal)), false) => {
                let in_flight = agent.drain();
                log::warn!(
                    "{signal}: draining: {in_flight} invocation(s) in flight, new ones refused; \
                     stopping once they end, at most in {:.1} s",
                    drain.timeout.as_secs_f64()
                );
                deadline = Some(Box::pin(tokio::time::sleep(drain.timeout)));
                continue;
            }
            (Event::Signal(Some(signal)), true) => {
                log::warn!("{signal} again: the drain ends now");
                break End::Now;
            }
            (Event::Deadline, _) => break End::Now,
            (Event::Drained, _) => break End::Drained,
        };
        let Ok(slot) = slot else {
            break End::Now;
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                let lambda = Arc::clone(&lambda);
                let agent = Arc::clone(&agent);
                let auth = Arc::clone(&auth);
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = service_fn(move |request| {
                        let node = node.clone();
                        let lambda = Arc::clone(&lambda);
                        let agent = Arc::clone(&agent);
                        let auth = Arc::clone(&auth);
                        async move {
                            Ok::<_, Infallible>(
                                route(node, lambda, agent, &auth, request, limits.body_timeout)
                                    .await,
                            )
                        }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        closed = async { closed.wait_for(|closed| *closed).await.is_ok() } => {
                            let _ = closed;
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        log::debug!("HTTP connection: {e}");
                    }
                });
            }
            Err(e) => {
                log::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let _ = closing.send(true);
    if matches!(end, End::Drained) {
        // The last answers are written and the connections closed before the process ends.
        let remaining = deadline.as_ref().map_or(Duration::ZERO, |d| {
            d.deadline()
                .saturating_duration_since(tokio::time::Instant::now())
        });
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(remaining, slots.acquire_many(all))
            .await
            .is_err()
        {
            log::warn!("drain: connections still open at the deadline are cut");
        }
        log::warn!("drained: no invocation in flight");
    }
    let left = agent.in_flight();
    if left > 0 {
        log::warn!("drain: stopping with {left} invocation(s) in flight: they are cut short");
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_counts_invocations_and_refuses_them_unless_ready() {
        assert!(Agent::new("").is_none());
        assert!(Agent::new("bad\nname").is_none());
        let agent = Arc::new(Agent::new("host-1").unwrap());
        assert_eq!(agent.name(), "host-1");
        agent.starting("waiting for the backend");
        let refused = agent.enter().map(|_| ()).unwrap_err();
        assert!(refused.contains("waiting for the backend"), "{refused}");
        assert_eq!(agent.in_flight(), 0);
        agent.ready();
        let first = agent.enter().unwrap();
        let second = agent.enter().unwrap();
        assert_eq!(agent.in_flight(), 2);
        assert_eq!(agent.drain(), 2);
        assert!(agent.draining());
        // A drain is for good: ready() does not undo it.
        agent.ready();
        let refused = agent.enter().map(|_| ()).unwrap_err();
        assert!(refused.contains("draining"), "{refused}");
        assert_eq!(agent.in_flight(), 2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            drop(first);
            let waiting = tokio::time::timeout(Duration::from_millis(50), agent.drained());
            assert!(waiting.await.is_err(), "drained with one in flight");
            let drained = agent.drained();
            drop(second);
            tokio::time::timeout(Duration::from_secs(5), drained)
                .await
                .expect("drained once none is in flight");
        });
    }

    #[test]
    fn invocation_bodies() {
        let i = parse_invocation(br#"{"input_key":"in/a.txt","output_key":"out/b"}"#).unwrap();
        assert_eq!(i.input, Input::Key("in/a.txt".into()));
        assert_eq!(i.output_key.as_deref(), Some("out/b"));
        let i = parse_invocation(br#"{"input":"one two","request_id":"r-1"}"#).unwrap();
        assert_eq!(i.input, Input::Inline(Bytes::from_static(b"one two")));
        assert_eq!(i.request_id, "r-1");
        for (bad, needle) in [
            (&b""[..], "JSON object"),
            (b"  \n", "JSON object"),
            (b"{", "malformed"),
            (b"[1]", "malformed"),
            (b"{}", "give `input_key` or `input`"),
            (br#"{"input_key":"a","input":"b"}"#, "not both"),
            (br#"{"input_key":""}"#, "empty"),
            (br#"{"input_key":"a","inptu":"b"}"#, "unknown field"),
            (br#"{"input_key":7}"#, "malformed"),
        ] {
            let e = parse_invocation(bad).unwrap_err();
            assert!(
                e.contains(needle),
                "{:?}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!("{{\"input\":\"{}\"}}", "x".repeat(MAX_INLINE_INPUT + 1));
        assert!(
            parse_invocation(big.as_bytes())
                .unwrap_err()
                .contains("at most")
        );
    }
}
