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
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::invoke::{Invocation, InvocationInput};
use crate::server::Backend;

pub use nexus_ring::control::{
    CONNECTION_FD, ControlEvent, ControlInput, ControlReply, ControlRequest,
    DEFAULT_PARKED_TIMEOUT_MS, InvokeTimings, MAX_LINE,
};

/// Parses one request line (without its `\n`): its tag, if any, and the request; the error
/// says what is wrong.
pub fn parse_request(line: &str) -> Result<(Option<u64>, ControlRequest), String> {
    nexus_ring::control::decode_request(line).map_err(|e| e.to_string())
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
        // Untagged requests are answered in order, one at a time; tagged ones concurrently.
        let mut sequential: Option<Pending> = None;
        let mut tagged: FuturesUnordered<Pending> = FuturesUnordered::new();
        loop {
            let reading = sequential.is_none() && tagged.len() < MAX_TAGGED;
            tokio::select! {
                answer = async { sequential.as_mut().expect("guarded").await }, if sequential.is_some() => {
                    sequential = None;
                    if !self.answered(&mut writer, &mut attached, answer).await {
                        break;
                    }
                }
                Some(answer) = tagged.next(), if !tagged.is_empty() => {
                    if !self.answered(&mut writer, &mut attached, answer).await {
                        break;
                    }
                }
                event = event_rx.recv() => {
                    let Some(event) = event else { continue };
                    if writer.write_all(event.to_line().as_bytes()).await.is_err() {
                        break;
                    }
                }
                read = read_line(&mut reader, &mut line), if reading => {
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
                            let text = String::from_utf8_lossy(&line);
                            let parsed = parse_request(text.trim_end_matches('\n'));
                            line.clear();
                            let (tag, request) = match parsed {
                                Ok(parsed) => parsed,
                                Err(message) => {
                                    let reply = ControlReply::error(message);
                                    if writer.write_all(reply.to_line().as_bytes()).await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                            };
                            let backend = self.clone();
                            let events = events.clone();
                            let pending: Pending = Box::pin(async move {
                                let mut answer = backend.control_request(request, peer, events).await;
                                answer.reply.tag = tag;
                                answer
                            });
                            match tag {
                                Some(_) => tagged.push(pending),
                                None => sequential = Some(pending),
                            }
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

    /// Writes an answer and keeps the connection's VMs up to date; `false` if the
    /// connection is gone.
    async fn answered(
        &self,
        writer: &mut OwnedWriteHalf,
        attached: &mut Vec<(String, u64)>,
        answer: Answer,
    ) -> bool {
        if let Some(vm) = &answer.detached {
            attached.retain(|(v, _)| v != vm);
        }
        if let Some(entry) = answer.attached.clone() {
            attached.push(entry);
        }
        send_answer(writer, answer).await.is_ok()
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
        request: ControlRequest,
        peer: Peer,
        events: mpsc::UnboundedSender<ControlEvent>,
    ) -> Answer {
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
                        ..Answer::default()
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
                binary,
            } => {
                let invocation = Invocation {
                    function: function.unwrap_or_else(|| "function".into()),
                    request_id: request_id.unwrap_or_default(),
                    deadline_ms: 0,
                    async_durability: false,
                };
                let input = match input {
                    ControlInput::Key(key) => InvocationInput::Object(key),
                    ControlInput::Inline(text) => InvocationInput::Bytes(Bytes::from(text)),
                };
                let stored_only = return_output == Some(false) && output.is_some();
                let binary = binary == Some(true);
                match self
                    .control_invoke(
                        &vm,
                        invocation,
                        input,
                        output.as_deref(),
                        stored_only,
                        binary,
                    )
                    .await
                {
                    Ok((reply, payload)) => Answer {
                        reply,
                        payload,
                        ..Answer::default()
                    },
                    Err(message) => Answer::reply(ControlReply::error(message)),
                }
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
        binary: bool,
    ) -> Result<(ControlReply, Option<Bytes>), String> {
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
        if let (Some(key), true) = (output, success) {
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
        let (text, encoding, payload) = match std::str::from_utf8(&result.output) {
            // Stored at `output`, and the caller asked not to have it back.
            _ if success && stored_only => (None, "none", None),
            _ if binary => (
                None,
                nexus_ring::control::BINARY,
                Some(result.output.clone()),
            ),
            Ok(text) => (Some(text.to_owned()), "utf8", None),
            Err(_) => (
                Some(nexus_ring::control::base64(&result.output)),
                "base64",
                None,
            ),
        };
        let reply = ControlReply {
            outcome: Some(if success { "success" } else { "error" }.into()),
            output_len: Some(result.output.len() as u64),
            output: text,
            output_encoding: Some(encoding.into()),
            timings: Some(timings),
            bytes_in: Some(moved.bytes_in),
            bytes_out: Some(moved.bytes_out),
            requests: Some(moved.requests),
            ..ControlReply::ok()
        };
        Ok((reply, payload))
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

/// A request's answer and what it did to the connection's VMs.
#[derive(Default)]
struct Answer {
    reply: ControlReply,
    /// The vhost-user connection to hand over with the reply (`attach`).
    connection: Option<std::os::unix::net::UnixStream>,
    /// Raw bytes that follow the reply line (an invoke's result, `binary`).
    payload: Option<Bytes>,
    attached: Option<(String, u64)>,
    detached: Option<String>,
}

/// A request being served.
type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Tagged requests one connection may have in flight; past it, its next line waits.
const MAX_TAGGED: usize = 4096;

impl Answer {
    fn reply(reply: ControlReply) -> Self {
        Self {
            reply,
            ..Self::default()
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
        writer.write_all(line.as_bytes()).await?;
        if let Some(payload) = answer.payload {
            writer.write_all(&payload).await?;
        }
        return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_their_tags() {
        assert_eq!(
            parse_request(r#"{"op":"hint","vm":"a","key":"in/x","tag":4}"#),
            Ok((
                Some(4),
                ControlRequest::Hint {
                    vm: "a".into(),
                    key: "in/x".into()
                }
            ))
        );
        assert!(
            parse_request(r#"{"op":"attach","vm":"a"}"#)
                .unwrap_err()
                .starts_with("bad request")
        );
    }
}
