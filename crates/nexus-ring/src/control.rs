// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend's control protocol (feature `control`): the one definition of its requests,
//! replies, events and figures, used by the backend (`nexus-backend`), the VMM's device
//! (`nexus-io`) and node daemons. `docs/nexus-io.md` ("The backend's control socket") is the
//! prose.
//!
//! Each message is a line of JSON. A request may carry a `tag` beside its `op`: tagged
//! requests of one connection are served concurrently and their replies carry the same tag,
//! in whatever order they finish; untagged requests are answered in order. An `invoke` with
//! `"binary":true` is answered by a reply line with `"output_encoding":"binary"` followed by
//! exactly `output_len` raw bytes of the result (no base64, no JSON escaping). Symmetrically,
//! an `invoke` whose input is `{"binary":N}` ([`ControlInput::Binary`]) is followed by exactly
//! N raw bytes of input after its request line (at most [`MAX_BINARY_INPUT`]). A refused
//! request's reply carries a machine-readable [`ErrorCode`] in `code` beside its `error`
//! text. An `attach`
//! reply carries the VM's vhost-user connection as an `SCM_RIGHTS` descriptor. Between
//! replies, the backend may send event lines ([`ControlEvent`]) to the connection that
//! attached a VM.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 << 10;
/// How long `parked` waits by default, in milliseconds.
pub const DEFAULT_PARKED_TIMEOUT_MS: u64 = 30_000;
/// The value of an `attach` reply's `connection`: the connection is the descriptor that came
/// with the line.
pub const CONNECTION_FD: &str = "fd";
/// The value of `output_encoding` when the result follows the reply line as raw bytes.
pub const BINARY: &str = "binary";
/// The largest binary input ([`ControlInput::Binary`]) a backend accepts after one request
/// line; a request that announces more is refused and its connection closed (the stream
/// cannot be trusted to be in step any more).
pub const MAX_BINARY_INPUT: u64 = 16 << 20;

/// The control operations with a line of what each does (for `--help` and the docs).
pub const OPS: &[(&str, &str)] = &[
    (
        "attach",
        "attach VM `vm` to `tenant`; its vhost-user connection comes back with the reply",
    ),
    (
        "hint",
        "prefetch object `key` for VM `vm` (its next invocation reads it)",
    ),
    ("detach", "drop VM `vm`'s session"),
    (
        "reset",
        "drop what VM `vm`'s invocations left in the backend (prefetched objects, queued and running invocations); the VM stays attached",
    ),
    (
        "invoke",
        "run one invocation on VM `vm`; the reply comes once it completed and its uploads are durable",
    ),
    (
        "parked",
        "reply once VM `vm` waits in NEXT for an invocation",
    ),
    (
        "stats",
        "the backend's figures: VMs, queue depth, traffic, memory, CPU",
    ),
    (
        "reload",
        "re-read the configuration file: tenants' stores, limits, quotas, HTTP allow-lists and control access are replaced, attached VMs stay; a bad file is refused and the old configuration kept (the backend's own user, or root, only)",
    ),
    (
        "snapshot_put",
        "store file `name` of a published snapshot of `function` (`len` raw bytes follow the line) under the system prefix; `create`: only if it does not exist yet",
    ),
    (
        "snapshot_get",
        "read file `name` of a published snapshot of `function`; its raw bytes follow the reply",
    ),
];

/// The key prefix of the objects the backend keeps for itself (published snapshots): no
/// tenant may read, write or list under it, and no tenant's prefix may overlap it.
pub const SYSTEM_PREFIX: &str = "nexus-system/";

/// The largest file a `snapshot_put` carries (the binary input limit).
pub const MAX_SNAPSHOT_FILE: u64 = MAX_BINARY_INPUT;

/// Whether `part` may be one segment of a published snapshot's key (a function name, an
/// identity, a file name): 1 to 128 ASCII letters, digits, `-`, `_` or `.`, and not `.` or
/// `..`.
pub fn valid_snapshot_segment(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 128
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The object key of file `name` of the snapshot of `function` with `identity`:
/// `nexus-system/snapshots/{function}/{identity}/{name}`, if every part is a valid segment
/// ([`valid_snapshot_segment`]).
pub fn snapshot_key(function: &str, identity: &str, name: &str) -> Option<String> {
    if [function, identity, name]
        .iter()
        .all(|part| valid_snapshot_segment(part))
    {
        Some(alloc::format!(
            "{SYSTEM_PREFIX}snapshots/{function}/{identity}/{name}"
        ))
    } else {
        None
    }
}

/// One control request (its `op` field names the variant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlRequest {
    /// Attach VM `vm` to tenant `tenant`; its vhost-user connection comes back with the reply.
    Attach {
        /// The VM's ID.
        vm: String,
        /// The tenant's name.
        tenant: String,
    },
    /// Prefetch object `key` for VM `vm`.
    Hint {
        /// The VM's ID.
        vm: String,
        /// The object key.
        key: String,
    },
    /// Drop VM `vm`'s session.
    Detach {
        /// The VM's ID.
        vm: String,
    },
    /// Drop what VM `vm`'s invocations left in the backend, between two invocations, without
    /// detaching it (a per-invocation isolation mode): its prefetched objects (hints and
    /// invocation inputs) and its queued and running invocations (their callers get an
    /// error). The VM's connection, its queue and a parked `NEXT` stay; acknowledged
    /// write-behind uploads still complete and report as before.
    Reset {
        /// The VM's ID.
        vm: String,
    },
    /// Run one invocation on VM `vm` (its next `NEXT` receives it); reply when the function
    /// completed and its write-behind uploads — and `output`, if given — are durable.
    Invoke {
        /// The VM's ID.
        vm: String,
        /// The input: an object of the VM's tenant or inline text.
        input: ControlInput,
        /// Store the function's result at this key (under the tenant's rules).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// The function's name in the invocation context (default `function`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        function: Option<String>,
        /// The request id in the invocation context (default empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// `false`: leave a successful result stored at `output` out of the reply. Default
        /// `true`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        return_output: Option<bool>,
        /// `true`: the result follows the reply line as raw bytes ([`BINARY`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<bool>,
    },
    /// Reply once VM `vm` has a `NEXT` parked, waiting for an invocation.
    Parked {
        /// The VM's ID.
        vm: String,
        /// Give up after this long ([`DEFAULT_PARKED_TIMEOUT_MS`] if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Report [`BackendStats`].
    Stats {},
    /// Re-read the backend's configuration file and apply it to its tenants (as SIGHUP
    /// does); refused with the file, line and key at fault if the file is bad.
    Reload {},
    /// Store file `name` of the published snapshot of `function` with `identity` under
    /// [`SYSTEM_PREFIX`] ([`snapshot_key`]); its `len` raw bytes follow the request line (at
    /// most [`MAX_SNAPSHOT_FILE`]). With `create`, only if no such object exists: a second
    /// publisher is refused [`ErrorCode::Exists`].
    #[serde(rename = "snapshot_put")]
    SnapshotPut {
        /// The function's name.
        function: String,
        /// What the snapshot was taken of (a digest).
        identity: String,
        /// The file's name.
        name: String,
        /// The bytes that follow the line.
        len: u64,
        /// Store it only if it does not exist yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create: Option<bool>,
    },
    /// Read file `name` of the published snapshot of `function` with `identity`: the reply
    /// has `"output_encoding":"binary"` and is followed by its `output_len` raw bytes; a file
    /// that does not exist is refused [`ErrorCode::NotFound`].
    #[serde(rename = "snapshot_get")]
    SnapshotGet {
        /// The function's name.
        function: String,
        /// What the snapshot was taken of (a digest).
        identity: String,
        /// The file's name.
        name: String,
    },
}

impl ControlRequest {
    /// The VM the request names, if it names one.
    pub fn vm(&self) -> Option<&str> {
        match self {
            ControlRequest::Attach { vm, .. }
            | ControlRequest::Hint { vm, .. }
            | ControlRequest::Detach { vm }
            | ControlRequest::Reset { vm }
            | ControlRequest::Invoke { vm, .. }
            | ControlRequest::Parked { vm, .. } => Some(vm),
            ControlRequest::Stats {}
            | ControlRequest::Reload {}
            | ControlRequest::SnapshotPut { .. }
            | ControlRequest::SnapshotGet { .. } => None,
        }
    }

    /// How many raw bytes follow the request's line: the length of a binary input
    /// ([`ControlInput::Binary`]), else 0.
    pub fn payload_len(&self) -> u64 {
        match self {
            ControlRequest::Invoke {
                input: ControlInput::Binary(len),
                ..
            } => *len,
            ControlRequest::SnapshotPut { len, .. } => *len,
            _ => 0,
        }
    }

    /// The request's `op`.
    pub fn op(&self) -> &'static str {
        match self {
            ControlRequest::Attach { .. } => "attach",
            ControlRequest::Hint { .. } => "hint",
            ControlRequest::Detach { .. } => "detach",
            ControlRequest::Reset { .. } => "reset",
            ControlRequest::Invoke { .. } => "invoke",
            ControlRequest::Parked { .. } => "parked",
            ControlRequest::Stats {} => "stats",
            ControlRequest::Reload {} => "reload",
            ControlRequest::SnapshotPut { .. } => "snapshot_put",
            ControlRequest::SnapshotGet { .. } => "snapshot_get",
        }
    }
}

/// The input of a control `invoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlInput {
    /// `{"key":"K"}`: an object of the VM's tenant (prefetched at once).
    Key(String),
    /// `{"inline":"TEXT"}`: the bytes of this text (it travels in the request line, so it is
    /// bounded by [`MAX_LINE`] and must be UTF-8).
    Inline(String),
    /// `{"binary":N}`: the N raw bytes that follow the request line (any bytes, at most
    /// [`MAX_BINARY_INPUT`]); the symmetric of a binary result.
    Binary(u64),
}

/// Why a request was refused, for programs (`code` of a refused reply; the `error` text is
/// for people). Each names who is at fault, so that a client can tell its caller's mistakes
/// from the backend's failures. A code this version does not know reads as
/// [`ErrorCode::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `not_found`: something the request names does not exist — an invocation's input
    /// object, an `attach`'s tenant. The caller's mistake.
    NotFound,
    /// `invalid`: the request is malformed or asks for what it may not — a bad object key, a
    /// key outside the tenant's prefix, a bad VM ID or request id, a binary input over
    /// [`MAX_BINARY_INPUT`], an unknown op. The caller's mistake.
    Invalid,
    /// `unknown_vm`: the VM named is not attached (any more): it was detached, or the
    /// backend restarted since it was attached.
    UnknownVm,
    /// `forbidden`: the peer may not act on this VM or tenant (another user attached the VM;
    /// the tenant does not list the peer).
    Forbidden,
    /// `throttled`: a limit of the backend refused the request for now (binary inputs held
    /// for one connection); the same request may succeed later.
    Throttled,
    /// `unavailable`: the store or a VM could not do it now (the store failed or is out of
    /// reach, an upload failed, a VM did not park in time); retrying may help.
    Unavailable,
    /// `internal`: anything else.
    Internal,
    /// `exists`: a `snapshot_put` with `create` found the object there already (another
    /// publisher was first).
    Exists,
    /// A code of a later version.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::UnknownVm => "unknown_vm",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Throttled => "throttled",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Exists => "exists",
            ErrorCode::Other => "other",
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an `invoke` spent its time, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InvokeTimings {
    /// From the request to the guest's `NEXT` being answered with the invocation.
    pub next_served_us: u64,
    /// From then to the function's `COMPLETE`.
    pub function_us: u64,
    /// From `COMPLETE` to its write-behind uploads being durable.
    pub durable_us: u64,
    /// Storing `output` (0 without one, or when the function stored it itself).
    pub output_store_us: u64,
    /// From the request to the reply.
    pub total_us: u64,
}

/// What the backend is doing now and has done since it started (`stats`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStats {
    /// The backend's process ID.
    pub pid: u32,
    /// VMs attached now.
    pub vms: u64,
    /// Ring requests being served now, over all VMs (the backend's queue depth; a `NEXT`
    /// parked waiting for an invocation counts).
    pub in_flight: u64,
    /// Invocations queued and not yet taken by a `NEXT`, over all VMs.
    pub queued_invocations: u64,
    /// Acknowledged write-behind uploads not yet durable.
    pub uploads_pending: u64,
    /// Payload bytes written into VM windows since the backend started (GET data, `NEXT`
    /// inputs, LIST pages, HTTP and INVOKE results), detached VMs included.
    pub bytes_in: u64,
    /// Payload bytes read out of VM windows since the backend started (PUT data, `COMPLETE`
    /// results, LOG text, HTTP and INVOKE bodies), detached VMs included.
    pub bytes_out: u64,
    /// Ring requests served since the backend started, detached VMs included.
    pub requests: u64,
    /// The process's resident set, in bytes (0 if unknown).
    pub rss_bytes: u64,
    /// User plus system CPU time of the process, in seconds (0 if unknown).
    pub cpu_seconds: f64,
    /// Panics caught while serving one VM since the backend started (each failed that VM
    /// only; 0 from older backends).
    pub panics: u64,
    /// Each tenant's quota usage, sorted by name (empty from backends that do not say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantStats>,
}

/// One tenant's figures in [`BackendStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantStats {
    /// The tenant's name.
    pub name: String,
    /// Bytes stored under the tenant, as its quota counts them (0 unless it has a bytes or
    /// objects quota).
    pub bytes: u64,
    /// Objects stored under the tenant, likewise.
    pub objects: u64,
    /// Requests of its VMs refused for a quota since the backend started.
    pub quota_refusals: u64,
}

/// One control reply. A client treats every field but `ok` as optional (older backends may
/// not send one) and ignores fields it does not know.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The request's tag, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u64>,
    /// [`CONNECTION_FD`] (attach): the VM's vhost-user connection came with this line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What went wrong, for programs (a refused request; absent from older backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// `success` or `error` (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The length of the function's result (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_len: Option<u64>,
    /// The function's result as text (`utf8`) or base64 (`base64`); absent with [`BINARY`]
    /// (the bytes follow the line) or `none` (stored, not returned) (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// How the result is carried: `utf8`, `base64`, [`BINARY`] or `none` (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<String>,
    /// Where the invocation spent its time (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<InvokeTimings>,
    /// Payload bytes the backend wrote into the VM's window during the invocation (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Payload bytes the backend read out of the VM's window during the invocation (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Ring requests of the VM served during the invocation (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// The backend's figures (stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<BackendStats>,
}

impl ControlReply {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// `{"ok":false,"error":MESSAGE}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }

    /// `{"ok":false,"error":MESSAGE,"code":CODE}`.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::error(message)
        }
    }

    /// Whether the result follows the line as raw bytes.
    pub fn binary(&self) -> bool {
        self.output_encoding.as_deref() == Some(BINARY)
    }

    /// The reply as one line of JSON, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| String::from(r#"{"ok":false,"error":"internal error"}"#));
        line.push('\n');
        line
    }
}

/// An unsolicited line on the control connection that attached a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// The guest broke a ring rule: the backend stopped serving the VM's request queue until
    /// the guest resets the device.
    QueueBroken {
        /// The VM.
        vm: String,
        /// What the guest did.
        reason: String,
    },
}

impl ControlEvent {
    /// The event as one line of JSON, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// A line the backend sent: a reply, or an event.
#[allow(
    clippy::large_enum_variant,
    reason = "replies are the common case; no box for them"
)]
#[derive(Clone, Debug, PartialEq)]
pub enum ControlLine {
    /// A reply to a request.
    Reply(ControlReply),
    /// An event about a VM the connection attached.
    Event(ControlEvent),
}

impl ControlLine {
    /// Parses one line the backend sent (without its `\n`). An event line of a kind this
    /// version does not know is an error, as is a malformed line.
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(line)?;
        if value.get("event").is_some() {
            serde_json::from_value(value).map(ControlLine::Event)
        } else {
            serde_json::from_value(value).map(ControlLine::Reply)
        }
    }
}

/// Encodes `request` as a line (with its `\n`), tagged if `tag` is given.
pub fn encode_request(request: &ControlRequest, tag: Option<u64>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Tagged<'a> {
        #[serde(flatten)]
        request: &'a ControlRequest,
        #[serde(skip_serializing_if = "Option::is_none")]
        tag: Option<u64>,
    }
    let mut line = serde_json::to_vec(&Tagged { request, tag }).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Why a request line was refused.
#[derive(Debug)]
pub enum RequestError {
    /// Not JSON (or cut short).
    Malformed(serde_json::Error),
    /// JSON, but not a request this version knows.
    Invalid(serde_json::Error),
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::Malformed(e) => write!(f, "malformed line: {e}"),
            RequestError::Invalid(e) => write!(f, "bad request: {e}"),
        }
    }
}

/// Parses one request line (without its `\n`): its tag, if any, and the request.
pub fn decode_request(line: &str) -> Result<(Option<u64>, ControlRequest), RequestError> {
    let mut value: serde_json::Value =
        serde_json::from_str(line.trim_end_matches('\r')).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                RequestError::Malformed(e)
            } else {
                RequestError::Invalid(e)
            }
        })?;
    let tag = match value.as_object_mut().and_then(|o| o.remove("tag")) {
        None => None,
        Some(tag) => Some(serde_json::from_value::<u64>(tag).map_err(RequestError::Invalid)?),
    };
    let request = serde_json::from_value(value).map_err(RequestError::Invalid)?;
    Ok((tag, request))
}

/// Standard base64 with padding (how a non-UTF-8 result travels in a JSON reply).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let symbol = |n: u32, shift: u32| {
        let index = n.checked_shr(shift).unwrap_or(0) & 63;
        char::from(ALPHABET.get(index as usize).copied().unwrap_or(b'='))
    };
    let mut out = String::with_capacity(bytes.len().div_ceil(3).saturating_mul(4));
    for chunk in bytes.chunks(3) {
        let (a, b, c) = (chunk.first(), chunk.get(1), chunk.get(2));
        let byte = |x: Option<&u8>| u32::from(x.copied().unwrap_or(0));
        let n = (byte(a) << 16) | (byte(b) << 8) | byte(c);
        out.push(symbol(n, 18));
        out.push(symbol(n, 12));
        out.push(if b.is_some() { symbol(n, 6) } else { '=' });
        out.push(if c.is_some() { symbol(n, 0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::string::ToString;

    #[test]
    fn requests_round_trip_with_and_without_tags() {
        let invoke = ControlRequest::Invoke {
            vm: "vm-1".into(),
            input: ControlInput::Key("in/x".into()),
            output: Some("out/y".into()),
            function: None,
            request_id: Some("r".into()),
            return_output: Some(false),
            binary: Some(true),
        };
        let line = encode_request(&invoke, Some(7));
        let text = core::str::from_utf8(&line).unwrap();
        assert!(text.ends_with('\n') && text.contains("\"tag\":7"), "{text}");
        assert_eq!(
            decode_request(text.trim_end()).unwrap(),
            (Some(7), invoke.clone())
        );
        let line = encode_request(&invoke, None);
        let (tag, back) = decode_request(core::str::from_utf8(&line).unwrap().trim_end()).unwrap();
        assert_eq!((tag, back), (None, invoke));
        assert_eq!(
            decode_request(r#"{"op":"stats"}"#).unwrap(),
            (None, ControlRequest::Stats {})
        );
        assert_eq!(
            decode_request("{\"op\":\"detach\",\"vm\":\"a\"}\r")
                .unwrap()
                .1,
            ControlRequest::Detach { vm: "a".into() }
        );
        assert_eq!(
            decode_request(r#"{"op":"reset","vm":"a"}"#).unwrap().1,
            ControlRequest::Reset { vm: "a".into() }
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"op":"launch","vm":"a"}"#,
            r#"{"op":"attach","vm":"a"}"#,
            r#"{"op":"attach","vm":"a","tenant":"t","extra":1}"#,
            r#"{"op":"detach","vm":7}"#,
            r#"{"op":"reset"}"#,
            r#"{"op":"stats","vm":"a"}"#,
            r#"{"op":"stats","tag":"seven"}"#,
            r#"["detach"]"#,
        ] {
            assert!(decode_request(bad).is_err(), "{bad}");
        }
        assert!(
            decode_request("{")
                .unwrap_err()
                .to_string()
                .starts_with("malformed line")
        );
        assert!(
            decode_request(r#"{"op":"nope"}"#)
                .unwrap_err()
                .to_string()
                .starts_with("bad request")
        );
    }

    #[test]
    fn replies_and_events() {
        assert_eq!(ControlReply::ok().to_line(), "{\"ok\":true}\n");
        assert_eq!(
            ControlReply::error("Unknown tenant `x`").to_line(),
            "{\"ok\":false,\"error\":\"Unknown tenant `x`\"}\n"
        );
        let reply = ControlReply {
            tag: Some(3),
            outcome: Some("success".into()),
            output_len: Some(5),
            output_encoding: Some(BINARY.into()),
            ..ControlReply::ok()
        };
        assert!(reply.binary());
        let line = reply.to_line();
        assert_eq!(
            ControlLine::parse(line.trim_end().as_bytes()).unwrap(),
            ControlLine::Reply(reply)
        );
        let event = ControlEvent::QueueBroken {
            vm: "vm1".into(),
            reason: "loop".into(),
        };
        assert_eq!(
            event.to_line(),
            "{\"event\":\"queue_broken\",\"vm\":\"vm1\",\"reason\":\"loop\"}\n"
        );
        assert_eq!(
            ControlLine::parse(event.to_line().trim_end().as_bytes()).unwrap(),
            ControlLine::Event(event)
        );
        // Fields this version does not know are ignored; missing ones are absent.
        let line = br#"{"ok":true,"stats":{"pid":9,"later":[1]},"later":2}"#;
        let ControlLine::Reply(reply) = ControlLine::parse(line).unwrap() else {
            panic!("a reply")
        };
        assert_eq!(reply.stats.unwrap().pid, 9);
        assert!(ControlLine::parse(br#"{"event":"unknown_kind"}"#).is_err());
    }

    #[test]
    fn binary_inputs_and_error_codes() {
        let invoke = ControlRequest::Invoke {
            vm: "vm-1".into(),
            input: ControlInput::Binary(6),
            output: None,
            function: None,
            request_id: None,
            return_output: None,
            binary: Some(true),
        };
        assert_eq!(invoke.payload_len(), 6);
        let line = encode_request(&invoke, Some(2));
        let text = core::str::from_utf8(&line).unwrap();
        assert!(text.contains(r#""input":{"binary":6}"#), "{text}");
        assert_eq!(decode_request(text.trim_end()).unwrap(), (Some(2), invoke));
        assert_eq!(ControlRequest::Stats {}.payload_len(), 0);
        let key = ControlRequest::Invoke {
            vm: "a".into(),
            input: ControlInput::Key("k".into()),
            output: None,
            function: None,
            request_id: None,
            return_output: None,
            binary: None,
        };
        assert_eq!(key.payload_len(), 0);
        for bad in [
            r#"{"op":"invoke","vm":"a","input":{"binary":-1}}"#,
            r#"{"op":"invoke","vm":"a","input":{"binary":"6"}}"#,
            r#"{"op":"invoke","vm":"a","input":{"binary":6,"key":"k"}}"#,
        ] {
            assert!(decode_request(bad).is_err(), "{bad}");
        }

        let refused = ControlReply::refused(ErrorCode::NotFound, "no such object");
        assert_eq!(
            refused.to_line(),
            "{\"ok\":false,\"error\":\"no such object\",\"code\":\"not_found\"}\n"
        );
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Invalid,
            ErrorCode::UnknownVm,
            ErrorCode::Forbidden,
            ErrorCode::Throttled,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Exists,
        ] {
            let line = ControlReply::refused(code, "x").to_line();
            assert!(
                line.contains(&alloc::format!("\"code\":\"{code}\"")),
                "{line}"
            );
            let ControlLine::Reply(reply) = ControlLine::parse(line.trim_end().as_bytes()).unwrap()
            else {
                panic!("a reply")
            };
            assert_eq!(reply.code, Some(code));
        }
        // A code of a later version is read, as `other`; a reply without one has none.
        let ControlLine::Reply(reply) =
            ControlLine::parse(br#"{"ok":false,"error":"x","code":"later"}"#).unwrap()
        else {
            panic!("a reply")
        };
        assert_eq!(reply.code, Some(ErrorCode::Other));
        let ControlLine::Reply(reply) = ControlLine::parse(br#"{"ok":false,"error":"x"}"#).unwrap()
        else {
            panic!("a reply")
        };
        assert_eq!(reply.code, None);
    }

    #[test]
    fn snapshot_requests_and_keys() {
        let (tag, request) = decode_request(
            r#"{"op":"snapshot_put","function":"f","identity":"ab12","name":"state","len":7,"create":true,"tag":2}"#,
        )
        .unwrap();
        assert_eq!(tag, Some(2));
        assert_eq!(request.payload_len(), 7);
        assert_eq!(request.vm(), None);
        let (_, get) = decode_request(
            r#"{"op":"snapshot_get","function":"f","identity":"ab12","name":"state"}"#,
        )
        .unwrap();
        assert_eq!(get.payload_len(), 0);
        assert_eq!(get.op(), "snapshot_get");
        assert_eq!(
            snapshot_key("wc-1", "ab12", "manifest").as_deref(),
            Some("nexus-system/snapshots/wc-1/ab12/manifest")
        );
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert_eq!(snapshot_key(bad, "i", "n"), None, "{bad}");
            assert_eq!(snapshot_key("f", bad, "n"), None, "{bad}");
            assert_eq!(snapshot_key("f", "i", bad), None, "{bad}");
        }
        assert!(snapshot_key(&"x".repeat(129), "i", "n").is_none());
    }

    #[test]
    fn base64_encodes() {
        for (raw, encoded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe", "//4="),
        ] {
            assert_eq!(base64(raw), encoded);
        }
    }

    #[test]
    fn every_request_is_listed_in_ops() {
        let requests = [
            ControlRequest::Attach {
                vm: "a".into(),
                tenant: "t".into(),
            },
            ControlRequest::Hint {
                vm: "a".into(),
                key: "k".into(),
            },
            ControlRequest::Detach { vm: "a".into() },
            ControlRequest::Reset { vm: "a".into() },
            ControlRequest::Invoke {
                vm: "a".into(),
                input: ControlInput::Inline("x".into()),
                output: None,
                function: None,
                request_id: None,
                return_output: None,
                binary: None,
            },
            ControlRequest::Parked {
                vm: "a".into(),
                timeout_ms: None,
            },
            ControlRequest::Stats {},
            ControlRequest::Reload {},
            ControlRequest::SnapshotPut {
                function: "f".into(),
                identity: "i".into(),
                name: "n".into(),
                len: 3,
                create: Some(true),
            },
            ControlRequest::SnapshotGet {
                function: "f".into(),
                identity: "i".into(),
                name: "n".into(),
            },
        ];
        assert_eq!(requests.len(), OPS.len());
        for request in &requests {
            // The op a request is encoded with is the one OPS documents.
            let line = encode_request(request, None);
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(value["op"], request.op());
            assert!(
                OPS.iter().any(|(op, _)| *op == request.op()),
                "{}",
                request.op()
            );
        }
    }
}
