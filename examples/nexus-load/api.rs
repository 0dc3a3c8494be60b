//! The node daemon's HTTP API as the load generator uses it: request and answer types, and
//! one function per call.
//!
//! Answers are decoded tolerantly: fields the load generator does not read are ignored, and
//! the ones it does read default when absent, so a daemon that adds fields keeps working.

use std::fmt;

use hyper::Method;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use crate::http::{self, Connection, Response};
use crate::stats::InvocationResult;

/// Errors of a control call (health, function, warm, metrics).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request did not get an answer.
    #[error("{method} {path} failed")]
    Transport {
        /// HTTP method.
        method: Method,
        /// API path.
        path: String,
        /// The HTTP layer's error.
        #[source]
        source: http::Error,
    },
    /// The daemon answered with an error status.
    #[error("the daemon answered {status} to {method} {path}: {error}")]
    Daemon {
        /// HTTP method.
        method: Method,
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The daemon's error.
        error: ApiError,
    },
    /// The daemon answered 200 with a body that is not the expected JSON.
    #[error("the daemon's answer to {method} {path} is not the expected JSON")]
    Decode {
        /// HTTP method.
        method: Method,
        /// API path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The daemon's error, when the daemon answered with one.
    pub fn daemon_error(&self) -> Option<(u16, &ApiError)> {
        match self {
            Error::Daemon { status, error, .. } => Some((*status, error)),
            _ => None,
        }
    }
}

/// Result of a control call.
pub type Result<T> = std::result::Result<T, Error>;

/// The daemon's JSON error (`{"error":"TYPE","message":"…"}`), or what stood in its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The error type (`ResourceNotFound`, `TooManyRequests`…), or `HTTP <status>` when the
    /// body was not the daemon's JSON error.
    pub error: String,
    /// The daemon's message (or the body's text).
    pub message: String,
    /// The body as received (trimmed, at most [`ApiError::MAX_BODY`] bytes), printed so a
    /// user sees exactly what the daemon said.
    #[serde(skip)]
    pub body: String,
}

impl ApiError {
    /// Longest body kept, in bytes.
    pub const MAX_BODY: usize = 1000;

    /// Reads the error out of an error answer's body.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Wire {
            error: String,
            #[serde(default)]
            message: String,
        }
        let text = truncate(String::from_utf8_lossy(body).trim(), Self::MAX_BODY);
        match serde_json::from_slice::<Wire>(body) {
            Ok(wire) => ApiError {
                error: wire.error,
                message: wire.message,
                body: text,
            },
            Err(_) => ApiError {
                error: format!("HTTP {status}"),
                message: if text.is_empty() {
                    "(empty body)".to_string()
                } else {
                    text.clone()
                },
                body: text,
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.body.is_empty() {
            write!(f, "{}: {}", self.error, self.message)
        } else {
            f.write_str(&self.body)
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Where an invocation's input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An object key in the backend's store (`"input_key"`).
    Key(String),
    /// Inline text (`"input"`).
    Inline(String),
}

/// The body of `POST /v1/functions/{name}/invocations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationRequest {
    /// The input.
    pub input: Input,
    /// Where the output goes (`"output_key"`); `{seq}` is replaced by the invocation's
    /// sequence number so concurrent invocations can write distinct keys.
    pub output_key: Option<String>,
}

impl InvocationRequest {
    /// The JSON body of invocation number `seq`.
    pub fn body(&self, seq: u64) -> Bytes {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            input_key: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            input: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            output_key: Option<String>,
        }
        let (input_key, input) = match &self.input {
            Input::Key(key) => (Some(key.as_str()), None),
            Input::Inline(text) => (None, Some(text.as_str())),
        };
        let wire = Wire {
            input_key,
            input,
            output_key: self
                .output_key
                .as_ref()
                .map(|k| k.replace("{seq}", &seq.to_string())),
        };
        // Strings and options only: serialising cannot fail.
        Bytes::from(serde_json::to_vec(&wire).unwrap_or_default())
    }
}

/// How the VM that ran an invocation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// A VM was started (or restored) for this invocation.
    Cold,
    /// A parked VM ran it.
    Warm,
    /// A value this load generator does not know.
    #[serde(other)]
    Other,
}

impl Start {
    fn from_header(value: &str) -> Option<Start> {
        match value.trim().to_ascii_lowercase().as_str() {
            "cold" => Some(Start::Cold),
            "warm" => Some(Start::Warm),
            _ => None,
        }
    }
}

/// The server-side timings of an invocation (the total, and a cold start's restore).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Timings {
    /// Total time the daemon spent on the invocation, in milliseconds.
    #[serde(default)]
    pub total: Option<f64>,
    /// A cold start's restore (attach and hint included), in milliseconds.
    #[serde(default)]
    pub restore: Option<f64>,
}

/// A 200 answer to an invocation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InvocationAnswer {
    /// Cold or warm start (falls back to the `X-Nexus-Start` header when absent).
    #[serde(default)]
    pub start: Option<Start>,
    /// `success` (assumed when absent: the status was 200).
    #[serde(default = "success")]
    pub outcome: String,
    /// The function's output (not used; logged with `RUST_LOG=trace`).
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// The VM that ran the invocation.
    #[serde(default)]
    pub vm: Option<String>,
    /// VM exits the invocation caused.
    #[serde(default)]
    pub vm_exits: u64,
    /// Bytes the function read.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes the function wrote.
    #[serde(default)]
    pub bytes_out: u64,
    /// Server-side timings.
    #[serde(default)]
    pub timings_ms: Timings,
}

fn success() -> String {
    "success".to_string()
}

impl InvocationAnswer {
    /// Whether the invocation succeeded.
    pub fn is_success(&self) -> bool {
        self.outcome == "success"
    }
}

/// A function's VM counts in `GET /v1/functions/{name}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct VmCounts {
    /// VMs parked and ready.
    #[serde(default)]
    pub idle: u64,
    /// VMs running an invocation.
    #[serde(default)]
    pub busy: u64,
}

/// One function as `GET /v1/functions/{name}` describes it (only what is read here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FunctionInfo {
    /// The function's name.
    #[serde(default)]
    pub name: String,
    /// Its VMs.
    #[serde(default)]
    pub vms: VmCounts,
}

/// The answer to `POST /v1/functions/{name}/warm`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WarmAnswer {
    /// VMs started by this request.
    #[serde(default)]
    pub started: u64,
    /// VMs idle when the daemon answered.
    #[serde(default)]
    pub idle: u64,
    /// How long the daemon took, in milliseconds.
    #[serde(default)]
    pub elapsed_ms: f64,
}

/// The answer to `GET /healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Health {
    /// `ok` when the daemon is healthy.
    #[serde(default)]
    pub status: String,
}

/// `/v1/functions/{name}` with the name percent-encoded for a URI path.
pub fn function_path(function: &str) -> String {
    let mut path = String::from("/v1/functions/");
    for byte in function.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// Sends a control call and returns its 200 answer's body, or the daemon's error.
async fn call(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<Response> {
    let response = conn
        .send(method.clone(), path, body)
        .await
        .map_err(|source| Error::Transport {
            method: method.clone(),
            path: path.to_string(),
            source,
        })?;
    if response.status == 200 {
        Ok(response)
    } else {
        Err(Error::Daemon {
            method,
            path: path.to_string(),
            status: response.status,
            error: ApiError::from_body(response.status, &response.body),
        })
    }
}

/// Sends a control call and decodes its 200 answer as `T`.
async fn call_json<T: for<'de> Deserialize<'de>>(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<T> {
    let response = call(conn, method.clone(), path, body).await?;
    serde_json::from_slice(&response.body).map_err(|source| Error::Decode {
        method,
        path: path.to_string(),
        source,
    })
}

/// `GET /healthz`.
pub async fn health(conn: &mut Connection) -> Result<Health> {
    call_json(conn, Method::GET, "/healthz", None).await
}

/// `GET /v1/functions/{name}`.
pub async fn function(conn: &mut Connection, function: &str) -> Result<FunctionInfo> {
    call_json(conn, Method::GET, &function_path(function), None).await
}

/// `POST /v1/functions/{name}/warm` with `{"count":count}`.
pub async fn warm(conn: &mut Connection, function: &str, count: u64) -> Result<WarmAnswer> {
    let body = Bytes::from(serde_json::json!({ "count": count }).to_string());
    let path = format!("{}/warm", function_path(function));
    call_json(conn, Method::POST, &path, Some(body)).await
}

/// `GET /metrics`, as text.
pub async fn metrics(conn: &mut Connection) -> Result<String> {
    let response = call(conn, Method::GET, "/metrics", None).await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// Sends one invocation (`path` from [`invocations_path`]) and classifies how it ended.
pub async fn invoke(conn: &mut Connection, path: &str, body: Bytes) -> InvocationResult {
    let response = match conn.send(Method::POST, path, Some(body)).await {
        Ok(response) => response,
        Err(e) => {
            return InvocationResult::Transport {
                kind: e.kind(),
                message: format!("{:#}", anyhow::Error::new(e)),
            };
        }
    };
    if response.status != 200 {
        return InvocationResult::Rejected {
            status: response.status,
            error: ApiError::from_body(response.status, &response.body),
        };
    }
    match serde_json::from_slice::<InvocationAnswer>(&response.body) {
        Ok(mut answer) => {
            if answer.start.is_none() {
                answer.start = response
                    .start_header
                    .as_deref()
                    .and_then(Start::from_header);
            }
            log::trace!("invocation answer: {answer:?}");
            InvocationResult::Answered(Box::new(answer))
        }
        Err(e) => InvocationResult::Rejected {
            status: 200,
            error: ApiError {
                error: "UndecodableAnswer".to_string(),
                message: format!(
                    "{e}: {}",
                    truncate(String::from_utf8_lossy(&response.body).trim(), 200)
                ),
                body: String::new(),
            },
        },
    }
}

/// `/v1/functions/{name}/invocations`.
pub fn invocations_path(function: &str) -> String {
    format!("{}/invocations", function_path(function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies() {
        let by_key = InvocationRequest {
            input: Input::Key("in/a.txt".to_string()),
            output_key: Some("out/{seq}.txt".to_string()),
        };
        assert_eq!(
            by_key.body(7),
            Bytes::from_static(br#"{"input_key":"in/a.txt","output_key":"out/7.txt"}"#)
        );
        let inline = InvocationRequest {
            input: Input::Inline("a \"b\"".to_string()),
            output_key: None,
        };
        assert_eq!(
            inline.body(0),
            Bytes::from_static(br#"{"input":"a \"b\""}"#)
        );
    }

    #[test]
    fn decodes_answers_tolerantly() {
        let answer: InvocationAnswer = serde_json::from_str(
            r#"{"start":"cold","outcome":"success","output":"3 words","vm":"wordcount-1",
                "vm_exits":12,"bytes_in":100,"bytes_out":8,
                "timings_ms":{"total":41.5,"restore":30.0},"extra":true}"#,
        )
        .unwrap();
        assert_eq!(answer.start, Some(Start::Cold));
        assert!(answer.is_success());
        assert_eq!(answer.vm_exits, 12);
        assert_eq!(answer.timings_ms.total, Some(41.5));
        assert_eq!(answer.timings_ms.restore, Some(30.0));

        let minimal: InvocationAnswer = serde_json::from_str("{}").unwrap();
        assert!(minimal.is_success());
        assert_eq!(minimal.start, None);

        let odd: InvocationAnswer = serde_json::from_str(r#"{"start":"restored"}"#).unwrap();
        assert_eq!(odd.start, Some(Start::Other));
        assert_eq!(Start::from_header(" Warm "), Some(Start::Warm));
    }

    #[test]
    fn reads_daemon_errors() {
        let e = ApiError::from_body(
            404,
            br#"{"error":"ResourceNotFound","message":"no function x"}"#,
        );
        assert_eq!(e.error, "ResourceNotFound");
        assert_eq!(e.message, "no function x");
        assert_eq!(
            e.to_string(),
            r#"{"error":"ResourceNotFound","message":"no function x"}"#
        );

        let e = ApiError::from_body(502, b"Bad Gateway\n");
        assert_eq!(e.error, "HTTP 502");
        assert_eq!(e.message, "Bad Gateway");

        let e = ApiError::from_body(500, b"");
        assert_eq!(e.message, "(empty body)");

        let long = "é".repeat(ApiError::MAX_BODY);
        let e = ApiError::from_body(500, long.as_bytes());
        assert!(e.body.len() <= ApiError::MAX_BODY + "…".len());
    }

    #[test]
    fn function_paths_are_encoded() {
        assert_eq!(function_path("wordcount"), "/v1/functions/wordcount");
        assert_eq!(function_path("a b/c"), "/v1/functions/a%20b%2Fc");
        assert_eq!(invocations_path("f"), "/v1/functions/f/invocations");
    }
}
