//! The Lambda Invoke API: `POST /2015-03-31/functions/{name}/invocations` with Lambda's
//! semantics, so that AWS SDK clients invoke the node's functions unchanged (their endpoint
//! pointed at the node).
//!
//! - The body is the function's input bytes (it may be empty); the answer's body is the
//!   function's output bytes (`Content-Type: application/json`, as Lambda says whatever the
//!   bytes are). A function that reports an error is answered 200 with
//!   `X-Amz-Function-Error: Unhandled` and its error document; so is a function stopped at its
//!   timeout (`{"errorType":"Sandbox.Timedout","errorMessage":"RequestId: … Error: Task timed
//!   out after N.00 seconds"}`) or whose VM crashed (`Runtime.ExitError`).
//! - `X-Amz-Invocation-Type`: `RequestResponse` (default); `Event`, queued in memory and
//!   answered 202 with an empty body (at most [`MAX_EVENT_PAYLOAD`] bytes; 429 when
//!   [`EVENT_QUEUE_EVENTS`] events or [`EVENT_QUEUE_BYTES`] bytes wait already), run by
//!   [`EVENT_WORKERS`] background tasks through [`Node::invoke`]; `DryRun`, answered 204 once
//!   the function is known to exist.
//! - The function may be named by its name, a partial ARN (`ACCOUNT:function:NAME`) or a full
//!   ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`), each with an optional `:QUALIFIER`,
//!   or with `?Qualifier=`: only `$LATEST` exists (anything else is 404).
//! - Errors are Lambda's: a JSON body `{"Type":"User"|"Service","message":"…"}` and the
//!   exception's name in `x-amzn-ErrorType` (how botocore and the other SDKs pick the
//!   exception class): 404 `ResourceNotFoundException`, 400
//!   `InvalidRequestContentException`/`InvalidParameterValueException`, 413
//!   `RequestTooLargeException` (a synchronous payload over [`MAX_PAYLOAD`]), 429
//!   `TooManyRequestsException` (with `Reason` and `Retry-After`), 500 `ServiceException`
//!   (the node or its backend failed).
//! - Every answer carries `x-amzn-RequestId` (also the invocation's request id, which the
//!   function sees); successful synchronous ones `X-Amz-Executed-Version: $LATEST`.
//!
//! The SigV4 `Authorization` header is checked only with `--lambda-keys-file`
//! ([`auth`](super::auth)): then an unsigned call is refused 403
//! `MissingAuthenticationTokenException`, one by an unknown key 403
//! `UnrecognizedClientException`, a wrong signature (or one more than 15 minutes off) 403
//! `InvalidSignatureException`; otherwise it is accepted and not checked. `X-Amz-Log-Type: Tail` and
//! `X-Amz-Client-Context` are ignored. Queued events live in this process's memory only: those
//! still queued when the node stops are dropped (logged, and counted in
//! `nexus_lambda_events_dropped_total`).

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::Semaphore;

use super::auth::{LambdaKeys, SignedRequest};
use super::http::{BodyError, read_body_limited};
use super::vm::Input;
use super::{Invocation, Node, NodeError};

/// The API version in the path of every Lambda API call.
pub const API_VERSION: &str = "2015-03-31";
/// The largest synchronous payload, Lambda's: 6 MB (6,291,456 bytes).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// The largest payload of an `Event` invocation (Lambda's historical asynchronous limit,
/// 256 KiB): queued events are held in memory.
pub const MAX_EVENT_PAYLOAD: usize = 256 << 10;
/// Events that may wait in the queue at once.
pub const EVENT_QUEUE_EVENTS: usize = 1024;
/// Payload bytes that may wait in the queue at once.
pub const EVENT_QUEUE_BYTES: usize = 64 << 20;
/// Background tasks that run queued events (each runs one invocation at a time).
pub const EVENT_WORKERS: usize = 4;
/// The version every answer says ran: functions have no versions here.
const LATEST: &str = "$LATEST";
/// The region and account of ARNs the node makes up for its messages.
const LOCAL_ARN_PREFIX: &str = "arn:aws:lambda:local:000000000000:function:";

type Answer = Response<Full<Bytes>>;

/// One queued `Event` invocation.
#[derive(Debug)]
struct Event {
    function: String,
    payload: Bytes,
    request_id: String,
}

/// The queued events, and a permit per event for the workers to wait on.
#[derive(Debug)]
struct EventQueue {
    events: Mutex<Queued>,
    ready: Semaphore,
}

#[derive(Debug, Default)]
struct Queued {
    events: VecDeque<Event>,
    bytes: usize,
}

impl Default for EventQueue {
    fn default() -> Self {
        Self {
            events: Mutex::default(),
            ready: Semaphore::new(0),
        }
    }
}

impl EventQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next event; `None` once the queue is closed.
    async fn pop(&self) -> Option<Event> {
        loop {
            self.ready.acquire().await.ok()?.forget();
            let mut queued = self.lock();
            if let Some(event) = queued.events.pop_front() {
                queued.bytes -= event.payload.len();
                return Some(event);
            }
        }
    }
}

/// The Lambda API of a node: its event queue and the tasks that run it.
#[derive(Debug)]
pub struct Lambda {
    node: Node,
    queue: Arc<EventQueue>,
    ids: RandomState,
    /// The keys whose SigV4 signatures are taken, if calls must be signed.
    keys: Option<Arc<LambdaKeys>>,
}

/// How the function to invoke was named.
#[derive(Debug, PartialEq, Eq)]
struct FunctionRef {
    /// The function's name.
    name: String,
    /// The ARN to name it by in messages.
    arn: String,
    /// The qualifier given with the name, if any.
    qualifier: Option<String>,
}

/// How the caller wants the function invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

/// An error answer's parts.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    /// The exception's name (`x-amzn-ErrorType`).
    kind: &'static str,
    /// `User` (the caller's fault) or `Service`.
    fault: &'static str,
    message: String,
    /// `TooManyRequestsException`'s `Reason`.
    reason: Option<&'static str>,
}

impl ApiError {
    fn user(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            fault: "User",
            message: message.into(),
            reason: None,
        }
    }

    fn service(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "ServiceException",
            fault: "Service",
            message: message.into(),
            reason: None,
        }
    }

    fn throttled(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason),
            ..Self::user(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                message,
            )
        }
    }

    fn not_found(arn: &str) -> Self {
        Self::user(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {arn}"),
        )
    }

    fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::user(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    fn answer(&self, request_id: &str) -> Answer {
        let mut body = json!({"Type": self.fault, "message": self.message});
        if let Some(reason) = self.reason {
            body["Reason"] = json!(reason);
        }
        let mut answer = answer(
            self.status,
            request_id,
            Bytes::from(body.to_string()),
            "application/json",
        );
        let headers = answer.headers_mut();
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        if self.reason.is_some() {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        answer
    }
}

/// An answer with `body`, its content type and the request id.
fn answer(status: StatusCode, request_id: &str, body: Bytes, content_type: &str) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, value);
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

impl Lambda {
    /// The Lambda API of `node`; starts the event workers on the current runtime. With
    /// `keys`, every call must carry a valid SigV4 signature by one of them.
    pub fn start(node: Node, keys: Option<Arc<LambdaKeys>>) -> Self {
        let queue = Arc::new(EventQueue::default());
        for _ in 0..EVENT_WORKERS {
            tokio::spawn(run_events(node.clone(), Arc::clone(&queue)));
        }
        Self {
            node,
            queue,
            ids: RandomState::new(),
            keys,
        }
    }

    /// Stops taking events and drops those still queued (logged and counted); the workers
    /// end after the invocation each is running.
    pub fn close(&self) {
        self.queue.ready.close();
        let dropped: Vec<Event> = self.queue.lock().events.drain(..).collect();
        for event in &dropped {
            self.node.metrics().event_dropped(&event.function);
        }
        if !dropped.is_empty() {
            log::warn!(
                "lambda: {} queued event invocation(s) dropped at shutdown",
                dropped.len()
            );
        }
    }

    /// A fresh request id (a random UUID, version 4 in form).
    fn request_id(&self) -> String {
        let mut hasher = self.ids.build_hasher();
        hasher.write_u64(NEXT_ID.fetch_add(1, Ordering::Relaxed) as u64);
        let a = hasher.finish();
        hasher.write_u64(a);
        let b = hasher.finish();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// Serves one call of the Invoke API for the function named `name` in the path.
    pub async fn invoke(
        &self,
        request: Request<Incoming>,
        name: &str,
        body_timeout: Duration,
    ) -> Answer {
        let request_id = self.request_id();
        match self.serve(request, name, body_timeout, &request_id).await {
            Ok(answer) => answer,
            Err(e) => {
                log::debug!("lambda {request_id}: {} {}", e.kind, e.message);
                e.answer(&request_id)
            }
        }
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        name: &str,
        body_timeout: Duration,
        request_id: &str,
    ) -> Result<Answer, ApiError> {
        if request.method() != Method::POST {
            return Err(ApiError::user(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowedException",
                format!("{} is not allowed here: invoke with POST", request.method()),
            ));
        }
        let (parts, body) = request.into_parts();
        // Signed calls: the signature covers the body, which is read first, and checked
        // before anything of the call is looked at.
        let (body, signed) = match &self.keys {
            None => (Some(body), None),
            Some(keys) => {
                let kind = invocation_type(&parts.headers)?;
                let payload = read_payload(body, kind, body_timeout).await?;
                keys.verify(
                    &SignedRequest {
                        method: parts.method.as_str(),
                        path: parts.uri.path(),
                        query: parts.uri.query(),
                        headers: &parts.headers,
                        body: &payload,
                    },
                    SystemTime::now(),
                )
                .map_err(|e| {
                    let (status, kind, message) = e.answer_parts();
                    ApiError::user(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                        kind,
                        message,
                    )
                })?;
                (None, Some(payload))
            }
        };
        let function = parse_function_name(&percent_decode(name))?;
        let qualifier = query_qualifier(parts.uri.query())?;
        check_qualifier(&function, qualifier.as_deref())?;
        if !self.node.has_function(&function.name) {
            return Err(ApiError::not_found(&function.arn));
        }
        let kind = invocation_type(&parts.headers)?;
        let payload = match (signed, body) {
            (Some(payload), _) => payload,
            (None, Some(body)) => read_payload(body, kind, body_timeout).await?,
            (None, None) => Bytes::new(),
        };
        match kind {
            InvocationType::DryRun => Ok(answer(
                StatusCode::NO_CONTENT,
                request_id,
                Bytes::new(),
                "application/json",
            )),
            InvocationType::Event => {
                self.enqueue(Event {
                    function: function.name,
                    payload,
                    request_id: request_id.to_owned(),
                })?;
                Ok(answer(
                    StatusCode::ACCEPTED,
                    request_id,
                    Bytes::new(),
                    "application/json",
                ))
            }
            InvocationType::RequestResponse => self.run(&function.name, payload, request_id).await,
        }
    }

    /// Runs a synchronous invocation and answers with its result, or its error as a
    /// function error where Lambda reports one so.
    async fn run(&self, name: &str, payload: Bytes, request_id: &str) -> Result<Answer, ApiError> {
        let invocation = Invocation {
            input: Input::Inline(payload),
            output_key: None,
            request_id: request_id.to_owned(),
        };
        let (body, function_error) = match self.node.invoke(name, invocation).await {
            Ok(result) => (result.raw_output.clone(), result.outcome != "success"),
            Err(NodeError::Timeout(limit)) => (
                error_document(
                    "Sandbox.Timedout",
                    &format!(
                        "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                        limit.as_secs_f64()
                    ),
                ),
                true,
            ),
            Err(NodeError::Crashed(why)) => (
                error_document(
                    "Runtime.ExitError",
                    &format!("RequestId: {request_id} Error: Runtime exited: {why}"),
                ),
                true,
            ),
            Err(e) => return Err(api_error(name, e)),
        };
        let mut answer = answer(StatusCode::OK, request_id, body, "application/json");
        let headers = answer.headers_mut();
        headers.insert("x-amz-executed-version", HeaderValue::from_static(LATEST));
        if function_error {
            headers.insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
        }
        Ok(answer)
    }

    /// Queues an event, within the queue's bounds.
    fn enqueue(&self, event: Event) -> Result<(), ApiError> {
        let metrics = self.node.metrics();
        if self.queue.ready.is_closed() {
            return Err(ApiError::service("the node is shutting down"));
        }
        let function = event.function.clone();
        {
            let mut queued = self.queue.lock();
            let full = if queued.events.len() >= EVENT_QUEUE_EVENTS {
                Some(format!("{EVENT_QUEUE_EVENTS} events"))
            } else if queued.bytes + event.payload.len() > EVENT_QUEUE_BYTES {
                Some(format!("{} bytes of payloads", queued.bytes))
            } else {
                None
            };
            if let Some(held) = full {
                drop(queued);
                metrics.event_refused(&function);
                return Err(ApiError::throttled(
                    "EventQueueFull",
                    format!("the node's event queue holds {held} already"),
                ));
            }
            queued.bytes += event.payload.len();
            queued.events.push_back(event);
            // Counted before a worker can take it.
            metrics.event_queued(&function);
        }
        self.queue.ready.add_permits(1);
        Ok(())
    }
}

/// Numbers the request ids made in this process (with the hasher's random keys).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Reads a call's payload, within the limit of its invocation type.
async fn read_payload(
    body: Incoming,
    kind: InvocationType,
    body_timeout: Duration,
) -> Result<Bytes, ApiError> {
    let limit = match kind {
        InvocationType::Event => MAX_EVENT_PAYLOAD,
        InvocationType::RequestResponse | InvocationType::DryRun => MAX_PAYLOAD,
    };
    read_body_limited(body, limit, body_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => ApiError::user(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                ),
            ),
            BodyError::TimedOut(timeout) => ApiError::user(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!("the payload did not arrive within {} s", timeout.as_secs()),
            ),
            BodyError::Broken(e) => ApiError::user(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!("Could not read the request body: {e}"),
            ),
        })
}

/// One event worker: runs queued events one at a time until the queue closes.
async fn run_events(node: Node, queue: Arc<EventQueue>) {
    while let Some(event) = queue.pop().await {
        node.metrics().event_started();
        let invocation = Invocation {
            input: Input::Inline(event.payload),
            output_key: None,
            request_id: event.request_id.clone(),
        };
        let outcome = match node.invoke(&event.function, invocation).await {
            Ok(result) if result.outcome == "success" => "success",
            Ok(_) => "error",
            Err(e) => {
                log::warn!(
                    "lambda: event {} of {} failed: {e}",
                    event.request_id,
                    event.function
                );
                match e {
                    NodeError::Timeout(_) => "timeout",
                    NodeError::Crashed(_) => "crash",
                    _ => "failed",
                }
            }
        };
        node.metrics().event_done(&event.function, outcome);
    }
}

/// Lambda's error document for a failure it reports as the function's.
fn error_document(kind: &str, message: &str) -> Bytes {
    Bytes::from(json!({"errorType": kind, "errorMessage": message}).to_string())
}

/// The API error for a node's refusal of a synchronous invocation.
fn api_error(name: &str, e: NodeError) -> ApiError {
    match e {
        NodeError::NotFound(_) | NodeError::ObjectNotFound(_) => {
            ApiError::not_found(&format!("{LOCAL_ARN_PREFIX}{name}"))
        }
        NodeError::BadRequest(message) => ApiError::user(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            message,
        ),
        NodeError::TooManyRequests(message) => {
            ApiError::throttled("ConcurrentInvocationLimitExceeded", message)
        }
        e @ (NodeError::Unavailable(_)
        | NodeError::Backend(_)
        | NodeError::Store(_)
        | NodeError::Timeout(_)
        | NodeError::Crashed(_)
        | NodeError::Panicked(_)) => ApiError::service(e.to_string()),
    }
}

/// `X-Amz-Invocation-Type`.
fn invocation_type(headers: &hyper::HeaderMap) -> Result<InvocationType, ApiError> {
    let Some(value) = headers.get("x-amz-invocation-type") else {
        return Ok(InvocationType::RequestResponse);
    };
    match value.to_str().unwrap_or("") {
        "RequestResponse" => Ok(InvocationType::RequestResponse),
        "Event" => Ok(InvocationType::Event),
        "DryRun" => Ok(InvocationType::DryRun),
        other => Err(ApiError::invalid_parameter(format!(
            "Unsupported invocation type `{other}`: use RequestResponse, Event or DryRun"
        ))),
    }
}

/// The `Qualifier` of the query string, if one is given.
fn query_qualifier(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut qualifier = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "Qualifier" {
            let value = percent_decode(value);
            if !valid_qualifier(&value) {
                return Err(ApiError::invalid_parameter(format!(
                    "Invalid qualifier `{value}`"
                )));
            }
            qualifier = Some(value);
        }
    }
    Ok(qualifier)
}

/// Only `$LATEST` exists; a qualifier in the name and one in the query must agree.
fn check_qualifier(function: &FunctionRef, query: Option<&str>) -> Result<(), ApiError> {
    let qualifier = match (function.qualifier.as_deref(), query) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid_parameter(
                "The derived qualifier from the function name does not match the specified qualifier.",
            ));
        }
        (Some(q), _) | (None, Some(q)) => q,
        (None, None) => return Ok(()),
    };
    if qualifier == LATEST {
        Ok(())
    } else {
        Err(ApiError::not_found(&format!(
            "{}:{qualifier}",
            function.arn
        )))
    }
}

fn valid_qualifier(q: &str) -> bool {
    (1..=128).contains(&q.len())
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$_-".contains(&b))
}

fn valid_name(name: &str) -> bool {
    (1..=140).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Parses a function name as Lambda accepts it: `NAME`, `ACCOUNT:function:NAME` or
/// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME`, each optionally followed by
/// `:QUALIFIER`.
fn parse_function_name(given: &str) -> Result<FunctionRef, ApiError> {
    let invalid = || {
        ApiError::invalid_parameter(format!(
            "Invalid function name `{given}`: give a name, a partial ARN \
             (ACCOUNT:function:NAME) or an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME), \
             optionally with :QUALIFIER"
        ))
    };
    let parts: Vec<&str> = given.split(':').collect();
    let account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    let (prefix, name, qualifier) = match parts.as_slice() {
        [name] => (None, *name, None),
        [name, qualifier] => (None, *name, Some(*qualifier)),
        [acct, "function", name] if account(acct) => (Some(("local", *acct)), *name, None),
        [acct, "function", name, qualifier] if account(acct) => {
            (Some(("local", *acct)), *name, Some(*qualifier))
        }
        [
            "arn",
            partition,
            "lambda",
            region,
            acct,
            "function",
            name,
            rest @ ..,
        ] if partition.starts_with("aws") && account(acct) && rest.len() <= 1 => {
            (Some((*region, *acct)), *name, rest.first().copied())
        }
        _ => return Err(invalid()),
    };
    if !valid_name(name) || qualifier.is_some_and(|q| !valid_qualifier(q)) {
        return Err(invalid());
    }
    let arn = match prefix {
        None => format!("{LOCAL_ARN_PREFIX}{name}"),
        Some((region, account)) => format!("arn:aws:lambda:{region}:{account}:function:{name}"),
    };
    Ok(FunctionRef {
        name: name.to_owned(),
        arn,
        qualifier: qualifier.map(str::to_owned),
    })
}

/// Decodes `%XX` escapes (SDKs escape `:` and `$` in the function name and the qualifier);
/// a malformed escape is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_partial_and_full_arns() {
        let f = parse_function_name("wordcount").unwrap();
        assert_eq!(
            (f.name.as_str(), f.qualifier, f.arn.as_str()),
            (
                "wordcount",
                None,
                "arn:aws:lambda:local:000000000000:function:wordcount"
            )
        );
        let f = parse_function_name("wordcount:$LATEST").unwrap();
        assert_eq!(f.qualifier.as_deref(), Some("$LATEST"));
        let f = parse_function_name("123456789012:function:wc").unwrap();
        assert_eq!(f.name, "wc");
        let f = parse_function_name("123456789012:function:wc:v2").unwrap();
        assert_eq!(
            (f.name.as_str(), f.qualifier.as_deref()),
            ("wc", Some("v2"))
        );
        let f = parse_function_name("arn:aws:lambda:eu-west-1:123456789012:function:wc").unwrap();
        assert_eq!(
            (f.name.as_str(), f.arn.as_str()),
            ("wc", "arn:aws:lambda:eu-west-1:123456789012:function:wc")
        );
        let f =
            parse_function_name("arn:aws-cn:lambda:cn-north-1:123456789012:function:wc:$LATEST")
                .unwrap();
        assert_eq!(f.qualifier.as_deref(), Some("$LATEST"));
        for bad in [
            "",
            "a:b:c",
            "12345:function:wc",
            "arn:aws:s3:eu-west-1:123456789012:function:wc",
            "arn:aws:lambda:eu-west-1:123456789012:layer:wc",
            "arn:aws:lambda:eu-west-1:123456789012:function:wc:1:2",
            "wc:a b",
            "w/c",
        ] {
            assert!(parse_function_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qualifiers_other_than_latest_do_not_exist() {
        let f = parse_function_name("wc").unwrap();
        assert!(check_qualifier(&f, None).is_ok());
        assert!(check_qualifier(&f, Some("$LATEST")).is_ok());
        let e = check_qualifier(&f, Some("prod")).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.kind),
            (404, "ResourceNotFoundException")
        );
        assert!(e.message.ends_with("function:wc:prod"), "{}", e.message);
        let f = parse_function_name("wc:$LATEST").unwrap();
        assert!(check_qualifier(&f, Some("$LATEST")).is_ok());
        let e = check_qualifier(&f, Some("prod")).unwrap_err();
        assert_eq!(e.kind, "InvalidParameterValueException");
        assert_eq!(
            query_qualifier(Some("Qualifier=%24LATEST"))
                .unwrap()
                .as_deref(),
            Some("$LATEST")
        );
        assert_eq!(query_qualifier(Some("x=1")).unwrap(), None);
        assert!(query_qualifier(Some("Qualifier=a%20b")).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("arn%3Aaws%3Alambda%3Ax%3A1%3Afunction%3Awc"),
            "arn:aws:lambda:x:1:function:wc"
        );
        assert_eq!(percent_decode("%24LATEST"), "$LATEST");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn error_answers_have_lambdas_shape() {
        let answer = ApiError::throttled("EventQueueFull", "full").answer("req-1");
        assert_eq!(answer.status(), 429);
        let headers = answer.headers();
        assert_eq!(headers["x-amzn-errortype"], "TooManyRequestsException");
        assert_eq!(headers["x-amzn-requestid"], "req-1");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["content-type"], "application/json");
    }
}
