// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A client of the backend's control socket (`docs/nexus-io.md`, "The backend's control
//! socket"): one JSON object per line, one reply line per request.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::debug;
use serde::{Deserialize, Serialize};

use crate::sys::recv_with_fd;
use crate::{Error, Result};

/// Longest reply line accepted (an `invoke` reply carries the function's result).
const MAX_REPLY_LEN: u64 = 192 << 20;

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request<'a> {
    Attach {
        vm: &'a str,
        tenant: &'a str,
    },
    Hint {
        vm: &'a str,
        key: &'a str,
    },
    Detach {
        vm: &'a str,
    },
    Invoke {
        vm: &'a str,
        input: InvokeInput<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        return_output: Option<bool>,
    },
    Parked {
        vm: &'a str,
        timeout_ms: u64,
    },
    Stats,
}

/// The input of an [`ControlClient::invoke`].
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvokeInput<'a> {
    /// An object of the VM's tenant.
    Key(&'a str),
    /// Inline text.
    Inline(&'a str),
}

/// The backend's answer to `invoke`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvokeReply {
    /// `success` or `error`.
    pub outcome: String,
    /// Length of the function's result.
    pub output_len: u64,
    /// The result: text, or base64 if `output_encoding` says so.
    pub output: String,
    /// `utf8` or `base64`.
    pub output_encoding: String,
    /// Where the invocation spent its time (microseconds, by name).
    pub timings: std::collections::BTreeMap<String, u64>,
    /// Payload bytes the backend wrote into the VM's window during the invocation (its
    /// input, GET data, …); 0 from a backend that does not report it.
    #[serde(default)]
    pub bytes_in: u64,
    /// Payload bytes the backend read out of the VM's window during the invocation (PUT
    /// data, the result, …); 0 from a backend that does not report it.
    #[serde(default)]
    pub bytes_out: u64,
    /// Ring requests the VM made during the invocation, its `NEXT` and `COMPLETE` included;
    /// 0 from a backend that does not report it.
    #[serde(default)]
    pub requests: u64,
}

/// The backend's answer to `stats`: what it is doing now and has done since it started.
///
/// The backend's own type has the same fields; a field this version does not know is
/// ignored, and one the backend does not send is 0.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct BackendStats {
    /// The backend's process ID.
    pub pid: u32,
    /// VMs attached now.
    pub vms: u64,
    /// Ring requests being served now, over all VMs (a parked `NEXT` counts).
    pub in_flight: u64,
    /// Invocations queued and not yet taken by a `NEXT`, over all VMs.
    pub queued_invocations: u64,
    /// Acknowledged write-behind uploads not yet durable.
    pub uploads_pending: u64,
    /// Payload bytes written into VM windows since the backend started.
    pub bytes_in: u64,
    /// Payload bytes read out of VM windows since the backend started.
    pub bytes_out: u64,
    /// Ring requests served since the backend started.
    pub requests: u64,
    /// The backend's resident set, in bytes.
    pub rss_bytes: u64,
    /// The backend's user plus system CPU time, in seconds.
    pub cpu_seconds: f64,
}

impl Request<'_> {
    fn name(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "attach",
            Request::Hint { .. } => "hint",
            Request::Detach { .. } => "detach",
            Request::Invoke { .. } => "invoke",
            Request::Parked { .. } => "parked",
            Request::Stats => "stats",
        }
    }
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    connection: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    stats: Option<BackendStats>,
    #[serde(flatten)]
    invoked: Option<InvokeReply>,
}

/// An unsolicited line from the backend about a VM this connection attached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// The guest broke a ring rule; the backend stopped serving the VM's request queue until
    /// the guest resets the device.
    QueueBroken {
        /// The VM.
        vm: String,
        /// What the guest did, as the backend saw it.
        reason: String,
    },
}

/// Handles the events of a connection (see [`ControlClient::set_event_handler`]).
pub type EventHandler = Box<dyn Fn(ControlEvent) + Send + Sync>;

/// What has been read of the connection and not yet used.
#[derive(Default)]
struct Inbox {
    buffer: Vec<u8>,
    /// Descriptors that came with the data (an `attach` reply's connection).
    files: VecDeque<OwnedFd>,
    /// Events read before a handler was set.
    early: Vec<ControlEvent>,
}

/// The connection and its reader, shared with the device's backend monitor (which watches
/// it for hang-ups and reads the events that arrive while no request is in flight).
struct Shared {
    stream: Arc<UnixStream>,
    inbox: Mutex<Inbox>,
    handler: Mutex<Option<EventHandler>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// A connection to the backend's control socket.
///
/// The device keeps one open for the life of the VM (the backend treats its closing as the
/// VM going away); a node daemon may open its own to send prefetch hints and invocations.
#[derive(Debug)]
pub struct ControlClient {
    shared: Arc<Shared>,
}

/// The half of a [`ControlClient`] that the backend monitor holds: it reads events.
#[derive(Debug, Clone)]
pub(crate) struct EventReader {
    shared: Arc<Shared>,
}

impl EventReader {
    /// Reads whatever complete lines have arrived, without waiting, and hands the events to
    /// the handler. `Err` if the connection is closed.
    pub(crate) fn pump(&self) -> std::io::Result<()> {
        let mut inbox = lock(&self.shared.inbox);
        let closed = fill(&self.shared.stream, &mut inbox, false)?;
        while let Some(line) = take_line(&mut inbox.buffer) {
            handle_unsolicited(&self.shared, &mut inbox, &line);
        }
        if closed {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads once into the inbox (`wait`: block up to the socket's timeout; else only what is
/// there). Returns whether the peer closed the connection.
fn fill(stream: &UnixStream, inbox: &mut Inbox, wait: bool) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 << 10];
    match recv_with_fd(stream, &mut chunk, !wait) {
        Ok((0, _)) => Ok(true),
        Ok((n, file)) => {
            inbox.buffer.extend_from_slice(&chunk[..n]);
            inbox.files.extend(file);
            if inbox.buffer.len() as u64 > MAX_REPLY_LEN {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a control line longer than the limit",
                ));
            }
            Ok(false)
        }
        Err(e) if !wait && e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first complete line of `buffer`, without its `\n`, removed from it.
fn take_line(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buffer.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buffer.drain(..=end).collect();
    line.pop();
    Some(line)
}

/// A line that is no reply: an event (handled), or something unexpected (dropped).
fn handle_unsolicited(shared: &Shared, inbox: &mut Inbox, line: &[u8]) {
    match serde_json::from_slice::<ControlEvent>(line) {
        Ok(event) => match lock(&shared.handler).as_ref() {
            Some(handler) => handler(event),
            None => inbox.early.push(event),
        },
        Err(_) => debug!(
            "nexus-io: unexpected line on the control connection: {}",
            String::from_utf8_lossy(line)
        ),
    }
}

/// Whether `line` is an event line rather than a reply.
fn is_event(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .is_some_and(|v| v.get("event").is_some())
}

impl ControlClient {
    /// Connects to `path`. Every later request fails rather than wait longer than `timeout`
    /// for the backend.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let connect_error = |source| Error::ControlConnect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_error)?;
        Ok(Self::from_stream(stream))
    }

    /// A client over `stream`, a connection to the control socket made by the caller (its
    /// timeouts are the caller's).
    pub fn from_stream(stream: UnixStream) -> Self {
        ControlClient {
            shared: Arc::new(Shared {
                stream: Arc::new(stream),
                inbox: Mutex::default(),
                handler: Mutex::default(),
            }),
        }
    }

    /// `attach`: attaches VM `vm` to tenant `tenant`; returns the VM's vhost-user
    /// connection, which the backend hands over with its reply (the VMM is its frontend).
    pub fn attach(&mut self, vm: &str, tenant: &str) -> Result<UnixStream> {
        let (reply, file) = self.request_with_fd(&Request::Attach { vm, tenant })?;
        match (reply.connection.as_deref(), file) {
            (Some("fd"), Some(fd)) => Ok(UnixStream::from(fd)),
            _ => Err(Error::ControlReply {
                op: "attach",
                source: None,
            }),
        }
    }

    /// Hands every event the backend sends on this connection (about the VMs it attached)
    /// to `handler`, including those that arrived before.
    pub fn set_event_handler(&self, handler: EventHandler) {
        let early = std::mem::take(&mut lock(&self.shared.inbox).early);
        for event in early {
            handler(event);
        }
        *lock(&self.shared.handler) = Some(handler);
    }

    /// The event reader the backend monitor holds.
    pub(crate) fn event_reader(&self) -> EventReader {
        EventReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// `hint`: the next invocation of VM `vm` will read object `key`.
    pub fn hint(&mut self, vm: &str, key: &str) -> Result<()> {
        self.request(&Request::Hint { vm, key }).map(drop)
    }

    /// `detach`: drops VM `vm`'s session.
    pub fn detach(&mut self, vm: &str) -> Result<()> {
        self.request(&Request::Detach { vm }).map(drop)
    }

    /// `invoke`: runs one invocation on VM `vm` and waits for it to complete (give the
    /// connection a timeout long enough). `output` stores the result there; `request_id`
    /// is passed in the invocation context.
    pub fn invoke(
        &mut self,
        vm: &str,
        input: InvokeInput<'_>,
        output: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<InvokeReply> {
        self.invoke_request(Request::Invoke {
            vm,
            input,
            output,
            request_id,
            return_output: None,
        })
    }

    /// `invoke` with the result stored at `output` and left out of the reply (which still
    /// carries its length, and the error document if the function failed): for a caller
    /// that needs the result stored, not sent back. A large result then costs no encoding
    /// and no copy through the control socket.
    pub fn invoke_stored(
        &mut self,
        vm: &str,
        input: InvokeInput<'_>,
        output: &str,
        request_id: Option<&str>,
    ) -> Result<InvokeReply> {
        self.invoke_request(Request::Invoke {
            vm,
            input,
            output: Some(output),
            request_id,
            return_output: Some(false),
        })
    }

    fn invoke_request(&mut self, request: Request<'_>) -> Result<InvokeReply> {
        let reply = self.request(&request)?;
        reply.invoked.ok_or(Error::ControlReply {
            op: "invoke",
            source: None,
        })
    }

    /// `parked`: waits (at most `timeout`) until VM `vm` has a `NEXT` parked.
    pub fn parked(&mut self, vm: &str, timeout: Duration) -> Result<()> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.request(&Request::Parked { vm, timeout_ms }).map(drop)
    }

    /// `stats`: the backend's figures (VMs, queue depth, traffic totals, memory, CPU time).
    pub fn stats(&mut self) -> Result<BackendStats> {
        let reply = self.request(&Request::Stats)?;
        reply.stats.ok_or(Error::ControlReply {
            op: "stats",
            source: None,
        })
    }

    /// The connection (to watch it for hang-ups).
    pub(crate) fn stream(&self) -> &Arc<UnixStream> {
        &self.shared.stream
    }

    fn request(&mut self, request: &Request<'_>) -> Result<Reply> {
        self.request_with_fd(request).map(|(reply, _)| reply)
    }

    /// Sends `request`; its reply, and the descriptor that came with it.
    fn request_with_fd(&mut self, request: &Request<'_>) -> Result<(Reply, Option<OwnedFd>)> {
        let op = request.name();
        let mut line = serde_json::to_vec(request).map_err(|e| Error::ControlReply {
            op,
            source: Some(e),
        })?;
        line.push(b'\n');
        let mut inbox = lock(&self.shared.inbox);
        // Descriptors of an earlier reply nobody took are stale.
        inbox.files.clear();
        (&*self.shared.stream)
            .write_all(&line)
            .map_err(Error::ControlIo)?;
        let reply = loop {
            match take_line(&mut inbox.buffer) {
                Some(line) if is_event(&line) => {
                    handle_unsolicited(&self.shared, &mut inbox, &line);
                }
                Some(line) => break line,
                None => {
                    if fill(&self.shared.stream, &mut inbox, true).map_err(Error::ControlIo)? {
                        return Err(Error::ControlClosed);
                    }
                }
            }
        };
        let file = inbox.files.pop_front();
        // Events that came in the same read as the reply.
        while let Some(line) = take_line(&mut inbox.buffer) {
            handle_unsolicited(&self.shared, &mut inbox, &line);
        }
        drop(inbox);
        let reply: Reply = serde_json::from_slice(&reply).map_err(|e| Error::ControlReply {
            op,
            source: Some(e),
        })?;
        if !reply.ok {
            return Err(Error::ControlRefused {
                op,
                message: reply.error.unwrap_or_default(),
            });
        }
        Ok((reply, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    /// A reply line that carries the descriptor of a socket pair's end (the attach reply);
    /// the server keeps the other end and sends `PING` on it.
    const WITH_FD: &str = "+";

    fn serve(
        replies: &'static [&'static str],
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let writer = stream;
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line);
                match reply.strip_prefix(WITH_FD) {
                    Some(reply) => {
                        let (ours, theirs) = UnixStream::pair().unwrap();
                        let n = writer
                            .send_with_fd(reply.as_bytes(), theirs.as_raw_fd())
                            .unwrap();
                        assert_eq!(n, reply.len());
                        (&ours).write_all(b"PING").unwrap();
                    }
                    None => (&writer).write_all(reply.as_bytes()).unwrap(),
                }
            }
            seen
        });
        (dir, path, handle)
    }

    #[test]
    fn invoke_stored_asks_for_no_output() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true,\"outcome\":\"success\",\"output_len\":4096,\"output\":\"\",\"output_encoding\":\"none\",\"timings\":{}}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        let reply = c
            .invoke_stored("1", InvokeInput::Key("in/x"), "out/y", Some("r"))
            .unwrap();
        assert_eq!(
            (
                reply.output_len,
                reply.output.as_str(),
                reply.output_encoding.as_str()
            ),
            (4096, "", "none")
        );
        assert_eq!(
            server.join().unwrap()[0],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"key\":\"in/x\"},\"output\":\"out/y\",\"request_id\":\"r\",\"return_output\":false}\n"
        );
    }

    #[test]
    fn invoke_and_parked() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true}\n",
            "{\"ok\":true,\"outcome\":\"success\",\"output_len\":3,\"output\":\"42\\n\",\"output_encoding\":\"utf8\",\"timings\":{\"function_us\":7},\"bytes_in\":105,\"bytes_out\":3,\"requests\":4}\n",
            "{\"ok\":true}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        c.parked("1", Duration::from_millis(250)).unwrap();
        let reply = c
            .invoke("1", InvokeInput::Key("in/x"), Some("out/y"), None)
            .unwrap();
        assert_eq!(reply.outcome, "success");
        assert_eq!(reply.output, "42\n");
        assert_eq!(reply.output_len, 3);
        assert_eq!(reply.timings["function_us"], 7);
        assert_eq!(
            (reply.bytes_in, reply.bytes_out, reply.requests),
            (105, 3, 4)
        );
        // A bare `ok` is not an invoke reply.
        assert!(matches!(
            c.invoke("1", InvokeInput::Inline("hi"), None, Some("r")),
            Err(Error::ControlReply { op: "invoke", .. })
        ));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            "{\"op\":\"parked\",\"vm\":\"1\",\"timeout_ms\":250}\n"
        );
        assert_eq!(
            seen[1],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"key\":\"in/x\"},\"output\":\"out/y\"}\n"
        );
        assert_eq!(
            seen[2],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"inline\":\"hi\"},\"request_id\":\"r\"}\n"
        );
    }

    #[test]
    fn events_reach_the_handler_wherever_they_arrive() {
        let (_dir, path, server) = serve(&[
            "{\"event\":\"queue_broken\",\"vm\":\"1\",\"reason\":\"a loop\"}\n{\"ok\":true}\n",
            "{\"ok\":true}\n{\"event\":\"queue_broken\",\"vm\":\"1\",\"reason\":\"later\"}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        // Before a handler exists, events wait; the reply after one is still the reply.
        c.hint("1", "k").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        c.set_event_handler(Box::new(move |e| sink.lock().unwrap().push(e)));
        assert_eq!(
            *seen.lock().unwrap(),
            [ControlEvent::QueueBroken {
                vm: "1".into(),
                reason: "a loop".into()
            }]
        );
        c.hint("1", "k").unwrap();
        // The second event came after the reply: the monitor's reader takes it.
        let reader = c.event_reader();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().len() < 2 {
            // The server may have closed already: the lines before the close still count.
            let _ = reader.pump();
            assert!(std::time::Instant::now() < deadline, "the event never came");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            seen.lock().unwrap()[1],
            ControlEvent::QueueBroken {
                vm: "1".into(),
                reason: "later".into()
            }
        );
        server.join().unwrap();
        // The server is gone: the reader says so.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reader.pump().is_ok() {
            assert!(std::time::Instant::now() < deadline, "no hang-up seen");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stats_and_older_backends() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true,\"stats\":{\"pid\":4242,\"vms\":2,\"in_flight\":1,\"queued_invocations\":3,\"uploads_pending\":4,\"bytes_in\":5000,\"bytes_out\":600,\"requests\":70,\"rss_bytes\":8192,\"cpu_seconds\":1.25,\"a_later_field\":[1]}}\n",
            "{\"ok\":true,\"stats\":{\"pid\":9}}\n",
            "{\"ok\":true}\n",
            "{\"ok\":true,\"outcome\":\"error\",\"output_len\":0,\"output\":\"\",\"output_encoding\":\"utf8\",\"timings\":{}}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.stats().unwrap(),
            BackendStats {
                pid: 4242,
                vms: 2,
                in_flight: 1,
                queued_invocations: 3,
                uploads_pending: 4,
                bytes_in: 5000,
                bytes_out: 600,
                requests: 70,
                rss_bytes: 8192,
                cpu_seconds: 1.25,
            }
        );
        // Fields the backend does not send are 0.
        assert_eq!(
            c.stats().unwrap(),
            BackendStats {
                pid: 9,
                ..BackendStats::default()
            }
        );
        assert!(matches!(
            c.stats(),
            Err(Error::ControlReply { op: "stats", .. })
        ));
        // An invoke reply without the traffic fields (an older backend) still parses.
        let reply = c.invoke("1", InvokeInput::Inline("x"), None, None).unwrap();
        assert_eq!(reply.outcome, "error");
        assert_eq!((reply.bytes_in, reply.bytes_out, reply.requests), (0, 0, 0));
        let seen = server.join().unwrap();
        assert_eq!(seen[0], "{\"op\":\"stats\"}\n");
        assert_eq!(seen[2], "{\"op\":\"stats\"}\n");
    }

    #[test]
    fn speaks_json_lines() {
        let (_dir, path, server) = serve(&[
            "+{\"ok\":true,\"connection\":\"fd\"}\n",
            "{\"ok\":true}\n",
            "{\"ok\":false,\"error\":\"VM 1 is not attached\"}\n",
            "{\"ok\":true}\n",
            "not json\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        // The VM's connection arrives with the attach reply.
        let mut connection = c.attach("1", "t").unwrap();
        let mut ping = [0u8; 4];
        connection.read_exact(&mut ping).unwrap();
        assert_eq!(&ping, b"PING");
        c.hint("1", "in/x").unwrap();
        let e = c.detach("1").unwrap_err();
        assert!(
            matches!(&e, Error::ControlRefused { op: "detach", message } if message == "VM 1 is not attached")
        );
        // An attach reply without a connection is malformed.
        assert!(matches!(
            c.attach("1", "t"),
            Err(Error::ControlReply { op: "attach", .. })
        ));
        assert!(matches!(c.detach("1"), Err(Error::ControlReply { .. })));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            "{\"op\":\"attach\",\"vm\":\"1\",\"tenant\":\"t\"}\n"
        );
        assert_eq!(seen[1], "{\"op\":\"hint\",\"vm\":\"1\",\"key\":\"in/x\"}\n");
        assert_eq!(seen[2], "{\"op\":\"detach\",\"vm\":\"1\"}\n");
        // The server is gone.
        assert!(matches!(
            c.hint("1", "k"),
            Err(Error::ControlClosed | Error::ControlIo(_))
        ));
    }
}
