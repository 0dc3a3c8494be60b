// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket: JSON lines from the VMM and the node daemon (`docs/nexus-io.md`).
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"attach","vm":"ID","tenant":"NAME"}` | `{"ok":true,"connection":"fd"}` with the VM's vhost-user connection attached (`SCM_RIGHTS`) |
//! | `{"op":"hint","vm":"ID","key":"KEY"}` | `{"ok":true}` |
//! | `{"op":"detach","vm":"ID"}` | `{"ok":true}` |
//! | `{"op":"invoke","vm":"ID","input":{"key":"K"}\|{"inline":"TEXT"}\|{"binary":N},"output":"KEY"?,"return_output":false?,"binary":true?}` (with `{"binary":N}`, N raw bytes of input follow the line) | `{"ok":true,"outcome":…,"output_len":N,"output":…,"output_encoding":…,"timings":{…},"bytes_in":N,"bytes_out":N,"requests":N}` once the function completed (with `"binary":true`, the result's raw bytes follow it) |
//! | `{"op":"parked","vm":"ID","timeout_ms":N?}` | `{"ok":true}` once a `NEXT` of the VM is parked |
//! | `{"op":"stats"}` | `{"ok":true,"stats":{"pid":N,"vms":N,"in_flight":N,…}}` ([`BackendStats`]) |
//! | `{"op":"reload"}` | `{"ok":true}` once the configuration file was re-read and applied ([`Backend::reload_config`](crate::Backend::reload_config)); a bad file is refused `invalid` with its file, line and key; only the backend's own user and root may |
//! | `{"op":"snapshot_put","function":"F","identity":"I","name":"N","len":L,"create":true?}` (L raw bytes follow the line) | `{"ok":true}` once `nexus-system/snapshots/F/I/N` is durable; with `create`, `exists` if it was there ([`crate::snapshots`]) |
//! | `{"op":"snapshot_get","function":"F","identity":"I","name":"N"}` | `{"ok":true,"output_len":L,"output_encoding":"binary"}` and the L bytes of the file |
//! | anything else | `{"ok":false,"error":"MESSAGE","code":"CODE"}` |
//!
//! Every refusal carries an [`ErrorCode`] (`code`) that says whose fault it is: an input
//! object that does not exist is `not_found`, a bad or forbidden key `invalid`, a VM that is
//! not attached `unknown_vm`, a failing store `unavailable`.
//!
//! A binary input is read off the connection as it arrives, at most [`MAX_BINARY_INPUT`]
//! bytes (a request that announces more is refused and the connection closed, since the
//! stream cannot be resynchronised) and at most [`MAX_HELD_INPUT`] bytes held for one
//! connection's invocations in flight at once: past that, the input is read and dropped and
//! the request refused `throttled`.
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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::invoke::{Invocation, InvocationInput};
use crate::peer::Peer;
use crate::server::Backend;

pub use nexus_ring::control::{
    CONNECTION_FD, ControlEvent, ControlInput, ControlReply, ControlRequest,
    DEFAULT_PARKED_TIMEOUT_MS, ErrorCode, InvokeTimings, MAX_BINARY_INPUT, MAX_LINE,
};

use crate::error::{Error, InputFailure};

/// Binary input bytes one control connection may hold for its invocations in flight; past
/// it, further binary inputs are refused `throttled` until earlier invocations end.
pub const MAX_HELD_INPUT: u64 = 64 << 20;

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
        let mut failures = Backoff::default();
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
                            failures = Backoff::default();
                        }
                        let backend = self.clone();
                        tokio::spawn(crate::panics::counted(
                            "a control connection",
                            async move { backend.control_connection(stream).await },
                        ));
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
        let mut reader = BufReader::with_capacity(64 << 10, reader);
        let (events, mut event_rx) = mpsc::unbounded_channel::<ControlEvent>();
        let mut attached: Vec<(String, u64)> = Vec::new();
        let mut line = Vec::new();
        // An invoke whose binary input is being read, and the input bytes the connection's
        // invocations in flight hold.
        let mut incoming: Option<Incoming> = None;
        let mut held: u64 = 0;
        // Untagged requests are answered in order, one at a time; tagged ones concurrently.
        let mut sequential: Option<Pending> = None;
        let mut tagged: FuturesUnordered<Pending> = FuturesUnordered::new();
        loop {
            let reading = sequential.is_none() && tagged.len() < MAX_TAGGED;
            tokio::select! {
                answer = async { sequential.as_mut().expect("guarded").await }, if sequential.is_some() => {
                    sequential = None;
                    held = held.saturating_sub(answer.held);
                    if !self.answered(&mut writer, &mut attached, answer).await {
                        break;
                    }
                }
                Some(answer) = tagged.next(), if !tagged.is_empty() => {
                    held = held.saturating_sub(answer.held);
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
                read = read_next(&mut reader, &mut line, &mut incoming), if reading => {
                    let next = match read {
                        Ok(Read::Line(Line::Closed)) | Ok(Read::InputCut) => break,
                        Err(e) => {
                            log::info!("control connection failed: {e}");
                            break;
                        }
                        Ok(Read::Line(Line::TooLong)) => {
                            let reply = ControlReply::refused(
                                ErrorCode::Invalid,
                                format!("line longer than {MAX_LINE} bytes"),
                            );
                            let _ = writer.write_all(reply.to_line().as_bytes()).await;
                            break;
                        }
                        Ok(Read::Line(Line::Complete)) => {
                            let text = String::from_utf8_lossy(&line);
                            let parsed = parse_request(text.trim_end_matches('\n'));
                            line.clear();
                            match parsed {
                                Ok((tag, request)) => self.admit(tag, request, &mut incoming, &mut held),
                                Err(message) => Next::Refuse(None, ControlReply::refused(ErrorCode::Invalid, message)),
                            }
                        }
                        Ok(Read::InputComplete) => match incoming.take() {
                            Some(Incoming { tag, request, input, refusal: None, .. }) => {
                                Next::Serve(tag, request, Some(Bytes::from(input)))
                            }
                            Some(Incoming { tag, refusal: Some(reply), .. }) => Next::Refuse(tag, reply),
                            None => continue,
                        },
                    };
                    let (tag, request, input) = match next {
                        Next::Wait => continue,
                        Next::Close(reply) => {
                            let _ = writer.write_all(reply.to_line().as_bytes()).await;
                            break;
                        }
                        Next::Refuse(tag, mut reply) => {
                            reply.tag = tag;
                            if writer.write_all(reply.to_line().as_bytes()).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Next::Serve(tag, request, input) => (tag, request, input),
                    };
                    let backend = self.clone();
                    let events = events.clone();
                    let input_len = input.as_ref().map_or(0, |i| i.len() as u64);
                    let pending: Pending = Box::pin(async move {
                        let mut answer = backend.control_request(request, input, peer, events).await;
                        answer.reply.tag = tag;
                        answer.held = input_len;
                        answer
                    });
                    match tag {
                        Some(_) => tagged.push(pending),
                        None => sequential = Some(pending),
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

    /// What to do with a request just read: serve it, or first read the binary input that
    /// follows its line (into `incoming`, counted in `held`), or refuse it.
    fn admit(
        &self,
        tag: Option<u64>,
        request: ControlRequest,
        incoming: &mut Option<Incoming>,
        held: &mut u64,
    ) -> Next {
        let len = request.payload_len();
        if len == 0 {
            return Next::Serve(tag, request, None);
        }
        if len > MAX_BINARY_INPUT {
            return Next::Close(ControlReply {
                tag,
                ..ControlReply::refused(
                    ErrorCode::Invalid,
                    format!(
                        "a binary input may be at most {MAX_BINARY_INPUT} bytes ({len} announced)"
                    ),
                )
            });
        }
        let refusal = if held.saturating_add(len) > MAX_HELD_INPUT {
            Some(ControlReply::refused(
                ErrorCode::Throttled,
                format!(
                    "this connection holds {} bytes of binary input already (at most \
                     {MAX_HELD_INPUT}); try again once earlier invocations end",
                    *held
                ),
            ))
        } else {
            *held = held.saturating_add(len);
            None
        };
        let input = match refusal {
            // Bounded by MAX_BINARY_INPUT above.
            None => Vec::with_capacity(usize::try_from(len).unwrap_or(0)),
            Some(_) => Vec::new(),
        };
        *incoming = Some(Incoming {
            tag,
            request,
            input,
            remaining: len,
            refusal,
        });
        Next::Wait
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
    async fn refuse_peer(&self, stream: &mut UnixStream, peer: Peer, reason: &Error) {
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
        let reply =
            ControlReply::refused(ErrorCode::Forbidden, format!("Permission denied: {reason}"));
        // Answer, then take what the peer sent already (a little, for a second at most)
        // before closing: a socket closed with unread bytes resets the connection, and the
        // peer would lose the answer.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(reply.to_line().as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = MAX_LINE;
            while left > 0 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            std::io::Result::Ok(())
        })
        .await;
    }

    /// Serves one request; `input` is the binary input that followed its line, if any.
    async fn control_request(
        &self,
        request: ControlRequest,
        input: Option<Bytes>,
        peer: Peer,
        events: mpsc::UnboundedSender<ControlEvent>,
    ) -> Answer {
        log::debug!("control: {request:?}");
        if let Some(vm) = request.vm() {
            if !matches!(request, ControlRequest::Attach { .. }) {
                if let Err(e) = self.check_owner(vm, peer) {
                    return Answer::reply(refusal(&e));
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
                    Err(e) => Answer::reply(refusal(&e)),
                }
            }
            ControlRequest::Hint { vm, key } => Answer::reply(match self.hint(&vm, &key) {
                Ok(()) => ControlReply::ok(),
                Err(e) => refusal(&e),
            }),
            ControlRequest::Detach { vm } => {
                let backend = self.clone();
                let name = vm.clone();
                let reply = match tokio::task::spawn_blocking(move || backend.detach(&name)).await {
                    Ok(Ok(())) => ControlReply::ok(),
                    Ok(Err(e)) => refusal(&e),
                    Err(e) => {
                        ControlReply::refused(ErrorCode::Internal, format!("detach failed: {e}"))
                    }
                };
                Answer {
                    detached: reply.ok.then_some(vm),
                    ..Answer::reply(reply)
                }
            }
            ControlRequest::Reset { vm } => Answer::reply(match self.reset(&vm) {
                Ok(()) => ControlReply::ok(),
                Err(e) => refusal(&e),
            }),
            ControlRequest::Invoke {
                vm,
                input: described,
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
                    output_key: output.clone(),
                    return_output: return_output != Some(false),
                };
                let input = match (described, input) {
                    (ControlInput::Key(key), _) => InvocationInput::Object(key),
                    (ControlInput::Inline(text), _) => InvocationInput::Bytes(Bytes::from(text)),
                    (ControlInput::Binary(_), Some(bytes)) => InvocationInput::Bytes(bytes),
                    (ControlInput::Binary(0), None) => InvocationInput::Bytes(Bytes::new()),
                    (ControlInput::Binary(_), None) => {
                        return Answer::reply(ControlReply::refused(
                            ErrorCode::Internal,
                            "the binary input was not read",
                        ));
                    }
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
                    Err(reply) => Answer::reply(reply),
                }
            }
            ControlRequest::Parked { vm, timeout_ms } => {
                let timeout = timeout_ms.unwrap_or(DEFAULT_PARKED_TIMEOUT_MS);
                let deadline = Instant::now() + Duration::from_millis(timeout);
                Answer::reply(loop {
                    match self.next_parked(&vm) {
                        Ok(true) => break ControlReply::ok(),
                        Ok(false) if Instant::now() >= deadline => {
                            break ControlReply::refused(
                                ErrorCode::Unavailable,
                                format!("VM `{vm}` did not park in NEXT within {timeout} ms"),
                            );
                        }
                        Ok(false) => tokio::time::sleep(Duration::from_millis(2)).await,
                        Err(e) => break refusal(&e),
                    }
                })
            }
            ControlRequest::Stats {} => Answer::reply(ControlReply {
                stats: Some(self.stats()),
                ..ControlReply::ok()
            }),
            ControlRequest::Reload {} => {
                if !peer.is_backend_user() && peer.uid != 0 {
                    return Answer::reply(ControlReply::refused(
                        ErrorCode::Forbidden,
                        format!(
                            "uid {} may not reload the configuration: only the backend's own user and root may",
                            peer.uid
                        ),
                    ));
                }
                let backend = self.clone();
                let result = tokio::task::spawn_blocking(move || backend.reload_config()).await;
                Answer::reply(match result {
                    Ok(Ok(())) => ControlReply::ok(),
                    Ok(Err(e)) => ControlReply::refused(ErrorCode::Invalid, e.to_string()),
                    Err(e) if e.is_panic() => {
                        let message = crate::panics::message(&*e.into_panic());
                        crate::panics::record_task("a reload by the control op", &message);
                        ControlReply::refused(
                            ErrorCode::Internal,
                            format!("the reload panicked: {message}"),
                        )
                    }
                    Err(e) => ControlReply::refused(
                        ErrorCode::Internal,
                        format!("the reload failed: {e}"),
                    ),
                })
            }
            ControlRequest::SnapshotPut {
                function,
                identity,
                name,
                len,
                create,
            } => {
                let bytes = match input {
                    Some(bytes) => bytes,
                    None if len == 0 => Bytes::new(),
                    None => {
                        return Answer::reply(ControlReply::refused(
                            ErrorCode::Internal,
                            "the file's bytes were not read",
                        ));
                    }
                };
                Answer::reply(
                    self.snapshot_put(&function, &identity, &name, bytes, create == Some(true))
                        .await,
                )
            }
            ControlRequest::SnapshotGet {
                function,
                identity,
                name,
            } => {
                let (reply, payload) = self.snapshot_get(&function, &identity, &name).await;
                Answer {
                    reply,
                    payload,
                    ..Answer::default()
                }
            }
        }
    }

    /// Runs one invocation; a refusal is the reply to send, its code set.
    async fn control_invoke(
        &self,
        vm: &str,
        invocation: Invocation,
        input: InvocationInput,
        output: Option<&str>,
        stored_only: bool,
        binary: bool,
    ) -> Result<(ControlReply, Option<Bytes>), ControlReply> {
        let start = Instant::now();
        // Held to the end, the session keeps counting even if the VM is detached meanwhile.
        let session = self.session(vm).map_err(|e| refusal(&e))?;
        // An output key the result could not be stored at is refused before the function
        // runs, not after.
        if let Some(key) = output {
            session
                .tenant
                .check_object_key(key)
                .map_err(|e| refusal(&e))?;
        }
        let before = session.traffic();
        let pending = self
            .invoke(vm, invocation, input)
            .map_err(|e| refusal(&e))?;
        let number = pending.number();
        let result = pending.await;
        let durable = Instant::now();
        // One invocation at a time per VM: what moved meanwhile is this invocation's.
        let moved = session.traffic().since(before);
        let times = self.invocation_times(vm, number);
        let result = result.map_err(|e| refusal(&e))?;
        let success = result.outcome == nexus_ring::Outcome::Success;
        let mut output_store_us = 0;
        // A guest that stored the result at the key itself (durably: COMPLETE waited for its
        // upload) said so; for any other, store it here.
        if let (Some(key), true, None) = (output, success, result.stored_len) {
            let t = Instant::now();
            self.store_output(vm, key, result.output.clone())
                .await
                .map_err(|message| ControlReply::refused(ErrorCode::Unavailable, message))?;
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
            // A result the guest stored is not read back unless it is wanted.
            output_len: Some(result.stored_len.unwrap_or(result.output.len() as u64)),
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

/// The code of a refusal for `error`.
fn error_code(error: &Error) -> ErrorCode {
    match error {
        Error::UnknownTenant(_) => ErrorCode::NotFound,
        Error::InvalidVmId(_)
        | Error::VmAlreadyAttached(_)
        | Error::InvalidKey { .. }
        | Error::KeyNotPermitted { .. } => ErrorCode::Invalid,
        Error::UnknownVm(_) | Error::VmDetached(_) => ErrorCode::UnknownVm,
        Error::VmReset(_) => ErrorCode::Unavailable,
        Error::TenantNotPermitted { .. }
        | Error::NotVmOwner { .. }
        | Error::PeerNotAllowed { .. } => ErrorCode::Forbidden,
        Error::InputUnavailable { cause, .. } => match cause {
            InputFailure::Context | InputFailure::InvalidKey => ErrorCode::Invalid,
            InputFailure::NotFound => ErrorCode::NotFound,
            InputFailure::Unavailable => ErrorCode::Unavailable,
        },
        Error::UploadFailed { .. } | Error::ObjectStore(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// The reply refusing a request for `error`.
fn refusal(error: &Error) -> ControlReply {
    ControlReply::refused(error_code(error), error.to_string())
}

/// A request's answer and what it did to the connection's VMs.
#[derive(Default)]
struct Answer {
    reply: ControlReply,
    /// The vhost-user connection to hand over with the reply (`attach`).
    connection: Option<std::os::unix::net::UnixStream>,
    /// Raw bytes that follow the reply line (an invoke's result, `binary`).
    payload: Option<Bytes>,
    /// Binary input bytes the request held while it was served.
    held: u64,
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

/// How a read of the connection ended: a line, or the binary input being read.
enum Read {
    Line(Line),
    /// The binary input of `incoming` is complete.
    InputComplete,
    /// The connection closed in the middle of a binary input.
    InputCut,
}

/// An `invoke` whose binary input is being read off the connection.
struct Incoming {
    tag: Option<u64>,
    request: ControlRequest,
    /// What arrived so far (nothing is kept of an input read only to be skipped).
    input: Vec<u8>,
    /// Bytes still to come.
    remaining: u64,
    /// The reply to send once a refused request's input has been skipped.
    refusal: Option<ControlReply>,
}

/// What the connection does with the request just read.
enum Next {
    /// Serve it, with its binary input if it had one.
    Serve(Option<u64>, ControlRequest, Option<Bytes>),
    /// Answer it with this refusal (and the tag).
    Refuse(Option<u64>, ControlReply),
    /// Read its binary input first.
    Wait,
    /// Answer it with this refusal and close the connection.
    Close(ControlReply),
}

/// Reads the binary input being received if there is one, else the next line (cancel safe,
/// as both of its parts are).
async fn read_next<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    incoming: &mut Option<Incoming>,
) -> std::io::Result<Read> {
    match incoming {
        None => read_line(reader, line).await.map(Read::Line),
        Some(incoming) => Ok(if read_input(reader, incoming).await? {
            Read::InputComplete
        } else {
            Read::InputCut
        }),
    }
}

/// Reads the rest of `incoming`'s binary input, keeping it unless the request was refused;
/// `false` if the connection closed first. Cancel safe: what a read took is recorded before
/// the next await.
async fn read_input<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    incoming: &mut Incoming,
) -> std::io::Result<bool> {
    while incoming.remaining > 0 {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let take = usize::try_from(incoming.remaining)
            .unwrap_or(usize::MAX)
            .min(available.len());
        if incoming.refusal.is_none() {
            incoming.input.extend_from_slice(&available[..take]);
        }
        reader.consume(take);
        incoming.remaining -= take as u64;
    }
    Ok(true)
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

/// A streak of failed attempts and the pause before the next: 100 ms, doubling up to 5 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Failures in the streak so far.
    pub(crate) count: u32,
}

impl Backoff {
    /// Counts one more failure and returns how long to wait before trying again.
    pub(crate) fn next(&mut self) -> Duration {
        self.count = self.count.saturating_add(1);
        let exponent = (self.count - 1).min(6);
        Duration::from_millis(100 << exponent).min(Duration::from_secs(5))
    }
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

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.count, 9);
    }
}
