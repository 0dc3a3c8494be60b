// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's client of the backend's control socket (`docs/nexus-io.md`, "The backend's
//! control socket"; the protocol's types are `nexus_ring::control`'s): what a VMM needs for
//! its VMs — `attach` (the VM's vhost-user connection comes back with the reply), `hint`,
//! `detach` — and the events the backend sends about them. Invocations are a node daemon's
//! business, not the device's.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::debug;
use nexus_ring::control::{
    CONNECTION_FD, ControlLine, ControlReply, ControlRequest, encode_request,
};

use crate::sys::{HANGUP, PollFd, poll, recv_with_fd};
use crate::{Error, Result};

/// Longest line accepted from the backend.
const MAX_REPLY_LEN: u64 = 1 << 20;

pub use nexus_ring::control::ControlEvent;

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
    /// The handlers of the VMs whose devices share the connection, by VM.
    vm_handlers: Mutex<HashMap<String, EventHandler>>,
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
///
/// A clone shares the connection: requests of clones are serialized (each holds the
/// connection for its exchange), and the events about a VM go to that VM's device. Many
/// devices can share one through a [`SharedControl`].
#[derive(Debug, Clone)]
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
    match ControlLine::parse(line) {
        Ok(ControlLine::Event(event)) => {
            if let Some(handler) = lock(&shared.vm_handlers).get(event_vm(&event)) {
                return handler(event);
            }
            match lock(&shared.handler).as_ref() {
                Some(handler) => handler(event),
                None => inbox.early.push(event),
            }
        }
        _ => debug!(
            "nexus-io: unexpected line on the control connection: {}",
            String::from_utf8_lossy(line)
        ),
    }
}

/// The VM an event is about.
fn event_vm(event: &ControlEvent) -> &str {
    match event {
        ControlEvent::QueueBroken { vm, .. } => vm,
    }
}

/// Whether `line` is an event line rather than a reply (an event of a kind this version
/// does not know is one too).
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
                vm_handlers: Mutex::default(),
            }),
        }
    }

    /// `attach`: attaches VM `vm` to tenant `tenant`; returns the VM's vhost-user
    /// connection, which the backend hands over with its reply (the VMM is its frontend).
    pub fn attach(&mut self, vm: &str, tenant: &str) -> Result<UnixStream> {
        let request = ControlRequest::Attach {
            vm: vm.to_owned(),
            tenant: tenant.to_owned(),
        };
        let (reply, file) = self.request_with_fd(&request)?;
        match (reply.connection.as_deref(), file) {
            (Some(CONNECTION_FD), Some(fd)) => Ok(UnixStream::from(fd)),
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

    /// Hands the events about VM `vm` to `handler` (before any handler of
    /// [`set_event_handler`](Self::set_event_handler)), including those that arrived before.
    pub(crate) fn set_vm_event_handler(&self, vm: &str, handler: EventHandler) {
        let early = {
            let mut inbox = lock(&self.shared.inbox);
            let (mine, others) = std::mem::take(&mut inbox.early)
                .into_iter()
                .partition(|event| event_vm(event) == vm);
            inbox.early = others;
            mine
        };
        for event in early {
            handler(event);
        }
        lock(&self.shared.vm_handlers).insert(vm.to_owned(), handler);
    }

    /// Drops VM `vm`'s handler.
    pub(crate) fn remove_vm_event_handler(&self, vm: &str) {
        lock(&self.shared.vm_handlers).remove(vm);
    }

    /// Whether the backend closed the connection (or it failed).
    pub fn hung_up(&self) -> bool {
        let mut fds = [PollFd::new(&*self.shared.stream, HANGUP)];
        match poll(&mut fds, Some(Duration::ZERO)) {
            Ok(_) => fds[0].has(HANGUP),
            Err(_) => true,
        }
    }

    /// The event reader the backend monitor holds.
    pub(crate) fn event_reader(&self) -> EventReader {
        EventReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// `hint`: the next invocation of VM `vm` will read object `key`.
    pub fn hint(&mut self, vm: &str, key: &str) -> Result<()> {
        let request = ControlRequest::Hint {
            vm: vm.to_owned(),
            key: key.to_owned(),
        };
        self.request(&request).map(drop)
    }

    /// `detach`: drops VM `vm`'s session.
    pub fn detach(&mut self, vm: &str) -> Result<()> {
        self.request(&ControlRequest::Detach { vm: vm.to_owned() })
            .map(drop)
    }

    /// The connection (to watch it for hang-ups).
    pub(crate) fn stream(&self) -> &Arc<UnixStream> {
        &self.shared.stream
    }

    fn request(&mut self, request: &ControlRequest) -> Result<ControlReply> {
        self.request_with_fd(request).map(|(reply, _)| reply)
    }

    /// Sends `request`; its reply, and the descriptor that came with it.
    fn request_with_fd(
        &mut self,
        request: &ControlRequest,
    ) -> Result<(ControlReply, Option<OwnedFd>)> {
        let op = request.op();
        let line = encode_request(request, None);
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
        let reply: ControlReply =
            serde_json::from_slice(&reply).map_err(|e| Error::ControlReply {
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

/// One control connection for many devices (every VM of a node daemon, say), instead of
/// one each: a process with thousands of VMs holds one descriptor for it. Give it to each
/// device ([`NexusIo::share_control`](crate::NexusIo::share_control)) and use
/// [`client`](Self::client) for the `attach` and `hint` sent before a restored device takes
/// over.
///
/// The backend detaches the VMs a connection attached when it closes, so a process that dies
/// still loses its VMs; a device on a shared connection detaches its VM itself when it is
/// dropped. Once the backend closed the connection (it restarted), the next
/// [`client`](Self::client) makes a new one, shared again.
#[derive(Debug, Clone)]
pub struct SharedControl {
    path: PathBuf,
    timeout: Duration,
    current: Arc<Mutex<Option<ControlClient>>>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl SharedControl {
    /// Connections to the control socket at `path`, with `timeout` for each request (as
    /// [`ControlClient::connect`]); the first is made on first use.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        SharedControl {
            path: path.to_owned(),
            timeout,
            current: Arc::default(),
            closing: Arc::default(),
        }
    }

    /// Says that every VM on the connection is going away at once (the process is about to
    /// end, say): devices dropped from now on do not detach their VMs one by one, since the
    /// connection's closing, once the last of them is gone, detaches them all.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The backend's control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection (a clone sharing it): the current one unless the backend closed it,
    /// else a new one.
    pub fn client(&self) -> Result<ControlClient> {
        let mut current = lock(&self.current);
        if let Some(client) = current.as_ref().filter(|c| !c.hung_up()) {
            return Ok(client.clone());
        }
        *current = None;
        let client = ControlClient::connect(&self.path, self.timeout)?;
        Ok(current.insert(client).clone())
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
    fn a_shared_connection_is_reused_until_the_backend_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let shared = SharedControl::new(&path, Duration::from_secs(5));
        let a = shared.client().unwrap();
        let (first, _) = listener.accept().unwrap();
        let b = shared.client().unwrap();
        assert!(Arc::ptr_eq(a.stream(), b.stream()));
        assert!(!a.hung_up());
        drop(first);
        assert!(a.hung_up() && b.hung_up());
        let c = shared.client().unwrap();
        let (_second, _) = listener.accept().unwrap();
        assert!(!Arc::ptr_eq(a.stream(), c.stream()));
        assert!(!c.hung_up());
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
