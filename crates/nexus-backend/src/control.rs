// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket: JSON lines from the VMM and the node daemon (`docs/nexus-io.md`).
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"attach","vm":"ID","tenant":"NAME"}` | `{"ok":true,"connection":"fd"}` with the VM's vhost-user connection attached (`SCM_RIGHTS`) |
//! | `{"op":"hint","vm":"ID","key":"KEY"}` | `{"ok":true}` |
//! | `{"op":"detach","vm":"ID"}` | `{"ok":true}` |
//! | `{"op":"invoke","vm":"ID","input":{"key":"K"}\|{"inline":"TEXT"},"output":"KEY"?,"return_output":false?}` | `{"ok":true,"outcome":…,"output_len":N,"output":…,"output_encoding":…,"timings":{…},"bytes_in":N,"bytes_out":N,"requests":N}` once the function completed |
//! | `{"op":"parked","vm":"ID","timeout_ms":N?}` | `{"ok":true}` once a `NEXT` of the VM is parked |
//! | `{"op":"stats"}` | `{"ok":true,"stats":{"pid":N,"vms":N,"in_flight":N,…}}` ([`BackendStats`]) |
//! | anything else | `{"ok":false,"error":"MESSAGE"}` |
//!
//! A connection that closes detaches the VMs it attached (and that are still attached by it).
//! The backend may also send, between replies, event lines about the VMs a connection
//! attached ([`ControlEvent`]): `{"event":"queue_broken","vm":"ID","reason":"…"}`.
//!
//! Only peers the configuration allows ([`ControlAccess`](crate::ControlAccess)) are served,
//! checked with `SO_PEERCRED`; a VM is reached only by peers of the user that attached it.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::invoke::{Invocation, InvocationInput};
use crate::server::Backend;
use crate::stats::BackendStats;

/// How long `parked` waits by default.
pub const DEFAULT_PARKED_TIMEOUT_MS: u64 = 30_000;

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 << 10;

/// One control request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// Run one invocation on VM `vm` (its next `NEXT` receives it); reply when the function
    /// completed and its write-behind uploads — and `output`, if given — are durable.
    Invoke {
        /// The VM's ID.
        vm: String,
        /// The input: an object of the VM's tenant or inline text.
        input: ControlInput,
        /// Store the function's result at this key (under the tenant's rules).
        #[serde(default)]
        output: Option<String>,
        /// The function's name in the invocation context (default `function`).
        #[serde(default)]
        function: Option<String>,
        /// The request id in the invocation context (default empty).
        #[serde(default)]
        request_id: Option<String>,
        /// `false`: leave a successful result stored at `output` out of the reply (`output`
        /// is then empty and `output_encoding` is `none`; `output_len` stays). Default `true`.
        #[serde(default)]
        return_output: Option<bool>,
    },
    /// Reply once VM `vm` has a `NEXT` parked, waiting for an invocation.
    Parked {
        /// The VM's ID.
        vm: String,
        /// Give up after this long ([`DEFAULT_PARKED_TIMEOUT_MS`] if absent).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Report [`BackendStats`]: VMs, queue depth, traffic totals, memory and CPU time.
    Stats {},
}

impl ControlRequest {
    /// The VM the request names, if it names one.
    pub fn vm(&self) -> Option<&str> {
        match self {
            ControlRequest::Attach { vm, .. }
            | ControlRequest::Hint { vm, .. }
            | ControlRequest::Detach { vm }
            | ControlRequest::Invoke { vm, .. }
            | ControlRequest::Parked { vm, .. } => Some(vm),
            ControlRequest::Stats {} => None,
        }
    }
}

/// The input of a control `invoke`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlInput {
    /// `{"key":"K"}`: an object of the VM's tenant (prefetched at once).
    Key(String),
    /// `{"inline":"TEXT"}`: the bytes of this text.
    Inline(String),
}

/// Where an `invoke` spent its time, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeTimings {
    /// From the request to the guest's `NEXT` being answered with the invocation.
    pub next_served_us: u64,
    /// From then to the function's `COMPLETE`.
    pub function_us: u64,
    /// From `COMPLETE` to its write-behind uploads being durable.
    pub durable_us: u64,
    /// Storing `output` (0 without one).
    pub output_store_us: u64,
    /// From the request to the reply.
    pub total_us: u64,
}

/// One control reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// `"fd"` (attach): the VM's vhost-user connection is the descriptor passed with this
    /// line (`SCM_RIGHTS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `success` or `error` (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The length of the function's result (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_len: Option<u64>,
    /// The function's result: the text if it is UTF-8, else base64 (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `utf8` or `base64`: how `output` is encoded (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<String>,
    /// Where the invocation spent its time (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<InvokeTimings>,
    /// Payload bytes the backend wrote into the VM's window during the invocation: its input
    /// delivered by `NEXT`, GET data, LIST pages, HTTP and INVOKE results (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Payload bytes the backend read out of the VM's window during the invocation: PUT data
    /// (write-behind included), the `COMPLETE` result, LOG text, HTTP and INVOKE bodies
    /// (invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Ring requests of the VM served during the invocation, its `NEXT` and `COMPLETE`
    /// included (invoke).
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
            connection: None,
            error: None,
            outcome: None,
            output_len: None,
            output: None,
            output_encoding: None,
            timings: None,
            bytes_in: None,
            bytes_out: None,
            requests: None,
            stats: None,
        }
    }

    /// `{"ok":false,"error":MESSAGE}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::ok()
        }
    }

    /// The reply as one line of JSON, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"internal error"}"#.to_owned());
        line.push('\n');
        line
    }
}

/// Parses one request line (without its `\n`); the error says what is wrong.
pub fn parse_request(line: &str) -> Result<ControlRequest, String> {
    serde_json::from_str(line.trim_end_matches('\r')).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("malformed line: {e}")
        } else {
            format!("bad request: {e}")
        }
    })
}

impl Backend {
    /// Serves control connections from `listener` until `shutdown` resolves.
    pub async fn serve_control<F>(&self, listener: UnixListener, shutdown: F)
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut failures = crate::server::Backoff::default();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if failures.count > 0 {
                            log::info!(
                                "control socket: accepting again after {} failures",
                                failures.count
                            );
                            failures = crate::server::Backoff::default();
                        }
                        let backend = self.clone();
                        tokio::spawn(async move { backend.control_connection(stream).await });
                    }
                    // Out of descriptors, accept fails at once and again while the connection
                    // waits in the backlog: back off, and say so once per streak.
                    Err(e) => {
                        let pause = failures.next();
                        if failures.count == 1 {
                            log::warn!("control socket: accept failed (backing off): {e}");
                        }
                        tokio::time::sleep(pause).await;
                    }
                },
            }
        }
    }

    async fn control_connection(self, mut stream: UnixStream) {
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
            },
            Err(e) => {
                log::info!("control connection without peer credentials refused: {e}");
                return;
            }
        };
        if let Err(reason) = self.peer_allowed(peer) {
            self.refuse_peer(&mut stream, peer, &reason).await;
            return;
        }
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let (events, mut event_rx) = mpsc::unbounded_channel::<ControlEvent>();
        let mut attached: Vec<(String, u64)> = Vec::new();
        let mut line = Vec::new();
        let mut running: Option<Pin<Box<dyn Future<Output = Answer> + Send>>> = None;
        loop {
            tokio::select! {
                answer = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                    running = None;
                    if let Some(vm) = &answer.detached {
                        attached.retain(|(v, _)| v != vm);
                    }
                    if let Some(entry) = answer.attached.clone() {
                        attached.push(entry);
                    }
                    if send_answer(&mut writer, answer).await.is_err() {
                        break;
                    }
                }
                event = event_rx.recv() => {
                    let Some(event) = event else { continue };
                    if writer.write_all(event.to_line().as_bytes()).await.is_err() {
                        break;
                    }
                }
                read = read_line(&mut reader, &mut line), if running.is_none() => {
                    match read {
                        Ok(Line::Closed) => break,
                        Err(e) => {
                            log::info!("control connection failed: {e}");
                            break;
                        }
                        Ok(Line::TooLong) => {
                            let reply = ControlReply::error(format!("line longer than {MAX_LINE} bytes"));
                            let _ = writer.write_all(reply.to_line().as_bytes()).await;
                            break;
                        }
                        Ok(Line::Complete) => {
                            let text = String::from_utf8_lossy(&line).trim_end_matches('\n').to_owned();
                            line.clear();
                            let backend = self.clone();
                            let events = events.clone();
                            running = Some(Box::pin(async move {
                                backend.control_request(&text, peer, events).await
                            }));
                        }
                    }
                }
            }
        }
        // The VMM's connection closing means its VMs went away.
        for (vm, id) in attached {
            let backend = self.clone();
            let _ = tokio::task::spawn_blocking(move || backend.detach_if(&vm, id)).await;
        }
    }

    /// Tells a peer it may not use the socket (once per streak in the log).
    async fn refuse_peer(&self, stream: &mut UnixStream, peer: Peer, reason: &str) {
        let refusals = self
            .shared
            .refused_peers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if refusals == 0 || refusals.is_power_of_two() {
            log::warn!(
                "control socket: refused uid {} gid {} ({} refusal(s) so far): {reason}",
                peer.uid,
                peer.gid,
                refusals + 1
            );
        }
        let reply = ControlReply::error(format!("Permission denied: {reason}"));
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stream.write_all(reply.to_line().as_bytes()),
        )
        .await;
    }

    async fn control_request(
        &self,
        line: &str,
        peer: Peer,
        events: mpsc::UnboundedSender<ControlEvent>,
    ) -> Answer {
        let request = match parse_request(line) {
            Ok(request) => request,
            Err(message) => return Answer::reply(ControlReply::error(message)),
        };
        log::debug!("control: {request:?}");
        if let Some(vm) = request.vm() {
            if !matches!(request, ControlRequest::Attach { .. }) {
                if let Err(e) = self.check_owner(vm, peer) {
                    return Answer::reply(ControlReply::error(e.to_string()));
                }
            }
        }
        match request {
            ControlRequest::Attach { vm, tenant } => {
                match self.attach_tracked(&vm, &tenant, Some(peer), Some(events)) {
                    Ok((connection, id)) => Answer {
                        reply: ControlReply {
                            connection: Some(CONNECTION_FD.into()),
                            ..ControlReply::ok()
                        },
                        connection: Some(connection),
                        attached: Some((vm, id)),
                        detached: None,
                    },
                    Err(e) => Answer::reply(ControlReply::error(e.to_string())),
                }
            }
            ControlRequest::Hint { vm, key } => Answer::reply(match self.hint(&vm, &key) {
                Ok(()) => ControlReply::ok(),
                Err(e) => ControlReply::error(e.to_string()),
            }),
            ControlRequest::Detach { vm } => {
                let backend = self.clone();
                let name = vm.clone();
                let reply = match tokio::task::spawn_blocking(move || backend.detach(&name)).await {
                    Ok(Ok(())) => ControlReply::ok(),
                    Ok(Err(e)) => ControlReply::error(e.to_string()),
                    Err(e) => ControlReply::error(format!("detach failed: {e}")),
                };
                Answer {
                    detached: reply.ok.then_some(vm),
                    ..Answer::reply(reply)
                }
            }
            ControlRequest::Invoke {
                vm,
                input,
                output,
                function,
                request_id,
                return_output,
            } => {
                let invocation = Invocation {
                    function: function.unwrap_or_else(|| "function".into()),
                    request_id: request_id.unwrap_or_default(),
                    deadline_ms: 0,
                    async_durability: false,
                    output_key: output.clone(),
                    return_output: return_output != Some(false),
                };
                let input = match input {
                    ControlInput::Key(key) => InvocationInput::Object(key),
                    ControlInput::Inline(text) => InvocationInput::Bytes(Bytes::from(text)),
                };
                let stored_only = return_output == Some(false) && output.is_some();
                Answer::reply(
                    self.control_invoke(&vm, invocation, input, output.as_deref(), stored_only)
                        .await
                        .unwrap_or_else(ControlReply::error),
                )
            }
            ControlRequest::Parked { vm, timeout_ms } => {
                let timeout = timeout_ms.unwrap_or(DEFAULT_PARKED_TIMEOUT_MS);
                let deadline = Instant::now() + Duration::from_millis(timeout);
                Answer::reply(loop {
                    match self.next_parked(&vm) {
                        Ok(true) => break ControlReply::ok(),
                        Ok(false) if Instant::now() >= deadline => {
                            break ControlReply::error(format!(
                                "VM `{vm}` did not park in NEXT within {timeout} ms"
                            ));
                        }
                        Ok(false) => tokio::time::sleep(Duration::from_millis(2)).await,
                        Err(e) => break ControlReply::error(e.to_string()),
                    }
                })
            }
            ControlRequest::Stats {} => Answer::reply(ControlReply {
                stats: Some(self.stats()),
                ..ControlReply::ok()
            }),
        }
    }

    async fn control_invoke(
        &self,
        vm: &str,
        invocation: Invocation,
        input: InvocationInput,
        output: Option<&str>,
        stored_only: bool,
    ) -> Result<ControlReply, String> {
        let start = Instant::now();
        // Held to the end, the session keeps counting even if the VM is detached meanwhile.
        let session = self.session(vm).map_err(|e| e.to_string())?;
        let before = session.traffic();
        let pending = self
            .invoke(vm, invocation, input)
            .map_err(|e| e.to_string())?;
        let number = pending.number();
        let result = pending.await;
        let durable = Instant::now();
        // One invocation at a time per VM: what moved meanwhile is this invocation's.
        let moved = session.traffic().since(before);
        let times = self.invocation_times(vm, number);
        let result = result.map_err(|e| e.to_string())?;
        let success = result.outcome == nexus_ring::Outcome::Success;
        let mut output_store_us = 0;
        // A guest that stored the result at the key itself (durably: COMPLETE waited for its
        // upload) said so; for any other, store it here.
        if let (Some(key), true, None) = (output, success, result.stored_len) {
            let t = Instant::now();
            self.store_output(vm, key, result.output.clone()).await?;
            output_store_us = micros(t.elapsed());
        }
        let (delivered, completed) = times.unwrap_or((start, None));
        let completed = completed.unwrap_or(durable);
        let timings = InvokeTimings {
            next_served_us: micros(delivered.saturating_duration_since(start)),
            function_us: micros(completed.saturating_duration_since(delivered)),
            durable_us: micros(durable.saturating_duration_since(completed)),
            output_store_us,
            total_us: micros(start.elapsed()),
        };
        let (text, encoding) = match std::str::from_utf8(&result.output) {
            // Stored at `output`, and the caller asked not to have it back.
            _ if success && stored_only => (String::new(), "none"),
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (base64(&result.output), "base64"),
        };
        Ok(ControlReply {
            outcome: Some(if success { "success" } else { "error" }.into()),
            // A result the guest stored is not read back unless it is wanted.
            output_len: Some(result.stored_len.unwrap_or(result.output.len() as u64)),
            output: Some(text),
            output_encoding: Some(encoding.into()),
            timings: Some(timings),
            bytes_in: Some(moved.bytes_in),
            bytes_out: Some(moved.bytes_out),
            requests: Some(moved.requests),
            ..ControlReply::ok()
        })
    }
}

/// Who is on the other end of a control connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The peer's user ID.
    pub(crate) uid: u32,
    /// The peer's group ID.
    pub(crate) gid: u32,
}

/// An unsolicited line on the control connection that attached a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// The guest broke a ring rule: the backend stopped serving the VM's request queue until
    /// the guest resets the device (`{"event":"queue_broken","vm":"ID","reason":"…"}`).
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
        let value = match self {
            ControlEvent::QueueBroken { vm, reason } => serde_json::json!({
                "event": "queue_broken",
                "vm": vm,
                "reason": reason,
            }),
        };
        let mut line = value.to_string();
        line.push('\n');
        line
    }
}

/// The value of `connection` in an `attach` reply: the connection is the descriptor that
/// came with the line.
pub const CONNECTION_FD: &str = "fd";

/// A request's answer and what it did to the connection's VMs.
struct Answer {
    reply: ControlReply,
    /// The vhost-user connection to hand over with the reply (`attach`).
    connection: Option<std::os::unix::net::UnixStream>,
    attached: Option<(String, u64)>,
    detached: Option<String>,
}

impl Answer {
    fn reply(reply: ControlReply) -> Self {
        Self {
            reply,
            connection: None,
            attached: None,
            detached: None,
        }
    }
}

/// How a read of one request line ended.
enum Line {
    Complete,
    Closed,
    TooLong,
}

/// Reads one line into `line` (which keeps what an interrupted read took: cancel safe).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::Closed
            } else {
                Line::Complete
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if line.len() > MAX_LINE + 1 || (!done && line.len() > MAX_LINE) {
            return Ok(Line::TooLong);
        }
        if done {
            return Ok(Line::Complete);
        }
    }
}

/// A socket's descriptor, to pass descriptors on it (`SCM_RIGHTS`).
struct RawSocket(RawFd);

impl ScmSocket for RawSocket {
    fn socket_fd(&self) -> RawFd {
        self.0
    }
}

/// Writes `answer`'s reply line, with its connection's descriptor attached if it has one.
async fn send_answer(writer: &mut OwnedWriteHalf, answer: Answer) -> std::io::Result<()> {
    let line = answer.reply.to_line();
    let Some(connection) = answer.connection else {
        return writer.write_all(line.as_bytes()).await;
    };
    let socket: &UnixStream = writer.as_ref();
    let bytes = line.as_bytes();
    let sent = loop {
        socket.writable().await?;
        let attempt = socket.try_io(Interest::WRITABLE, || {
            RawSocket(socket.as_raw_fd())
                .send_with_fd(bytes, connection.as_raw_fd())
                .map_err(std::io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // Our end closes with `connection`: the peer holds the only other copy.
    drop(connection);
    writer.write_all(&bytes[sent..]).await
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(r#"{"op":"attach","vm":"vm1","tenant":"t"}"#),
            Ok(ControlRequest::Attach {
                vm: "vm1".into(),
                tenant: "t".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"vm":"a","key":"in/x","op":"hint"}"#),
            Ok(ControlRequest::Hint {
                vm: "a".into(),
                key: "in/x".into()
            })
        );
        assert_eq!(
            parse_request("{\"op\":\"detach\",\"vm\":\"a\"}\r"),
            Ok(ControlRequest::Detach { vm: "a".into() })
        );
        assert_eq!(
            parse_request(r#"{"op":"invoke","vm":"a","input":{"key":"in/x"},"output":"out/y"}"#),
            Ok(ControlRequest::Invoke {
                vm: "a".into(),
                input: ControlInput::Key("in/x".into()),
                output: Some("out/y".into()),
                function: None,
                request_id: None,
                return_output: None,
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"invoke","vm":"a","input":{"inline":"hi"}}"#),
            Ok(ControlRequest::Invoke {
                vm: "a".into(),
                input: ControlInput::Inline("hi".into()),
                output: None,
                function: None,
                request_id: None,
                return_output: None,
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"parked","vm":"a"}"#),
            Ok(ControlRequest::Parked {
                vm: "a".into(),
                timeout_ms: None
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"stats"}"#),
            Ok(ControlRequest::Stats {})
        );
        assert_eq!(
            parse_request(
                r#"{"op":"invoke","vm":"a","input":{"key":"k"},"output":"o","return_output":false}"#
            ),
            Ok(ControlRequest::Invoke {
                vm: "a".into(),
                input: ControlInput::Key("k".into()),
                output: Some("o".into()),
                function: None,
                request_id: None,
                return_output: Some(false),
            })
        );
        assert!(parse_request(r#"{"op":"invoke","vm":"a","input":{"blob":"x"}}"#).is_err());
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"op":"launch","vm":"a"}"#,
            r#"{"op":"attach","vm":"a"}"#,
            r#"{"op":"attach","vm":"a","tenant":"t","extra":1}"#,
            r#"{"op":"detach","vm":7}"#,
            r#"["detach"]"#,
            r#"{"op":"detach","vm":"a"} trailing"#,
            r#"{"op":"stats","vm":"a"}"#,
        ] {
            let error = parse_request(bad).unwrap_err();
            assert!(!error.is_empty(), "{bad}");
        }
        assert!(
            parse_request("{")
                .unwrap_err()
                .starts_with("malformed line")
        );
        assert!(
            parse_request(r#"{"op":"nope"}"#)
                .unwrap_err()
                .starts_with("bad request")
        );
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
    fn replies() {
        assert_eq!(ControlReply::ok().to_line(), "{\"ok\":true}\n");
        assert_eq!(
            ControlReply::error("Unknown tenant `x`").to_line(),
            "{\"ok\":false,\"error\":\"Unknown tenant `x`\"}\n"
        );
        let attach = ControlReply {
            connection: Some(CONNECTION_FD.into()),
            ..ControlReply::ok()
        };
        assert_eq!(attach.to_line(), "{\"ok\":true,\"connection\":\"fd\"}\n");
        assert_eq!(
            ControlEvent::QueueBroken {
                vm: "vm1".into(),
                reason: "loop".into()
            }
            .to_line(),
            "{\"event\":\"queue_broken\",\"reason\":\"loop\",\"vm\":\"vm1\"}\n"
        );
        let invoked = ControlReply {
            bytes_in: Some(5),
            bytes_out: Some(7),
            requests: Some(3),
            ..ControlReply::ok()
        };
        assert_eq!(
            invoked.to_line(),
            "{\"ok\":true,\"bytes_in\":5,\"bytes_out\":7,\"requests\":3}\n"
        );
        let stats = ControlReply {
            stats: Some(BackendStats {
                pid: 42,
                vms: 1,
                rss_bytes: 4096,
                cpu_seconds: 0.25,
                ..BackendStats::default()
            }),
            ..ControlReply::ok()
        };
        assert_eq!(
            stats.to_line(),
            "{\"ok\":true,\"stats\":{\"pid\":42,\"vms\":1,\"in_flight\":0,\
             \"queued_invocations\":0,\"uploads_pending\":0,\"bytes_in\":0,\"bytes_out\":0,\
             \"requests\":0,\"rss_bytes\":4096,\"cpu_seconds\":0.25}}\n"
        );
    }
}
