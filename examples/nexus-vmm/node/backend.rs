//! The node's client of the backend's control socket for what is the node's business:
//! invocations, `parked`, `stats`, `detach`, published snapshots (a VM's own device speaks `attach`/`hint` on
//! its own connection, `nexus_io::ControlClient`).
//!
//! Event-driven: one connection carries every request in flight, each with a tag; a reader
//! task hands each reply to the request waiting for it. An invocation's result comes back
//! once, as raw bytes after its reply line (`"binary":true`), and an inline input goes as
//! raw bytes after the request line (`{"binary":N}`): no thread per call, no polling, no
//! base64. A request is written whole even if its caller stops waiting (the write is a task
//! of its own), so that the stream stays in step. A connection the backend closed (it
//! restarted) fails the requests in flight on it and is replaced by the next request.
//!
//! A refusal carries the backend's [`ErrorCode`], so that the node can tell its caller's
//! mistakes (an input object that does not exist) from the backend's failures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nexus_ring::control::{
    BackendStats, ControlInput, ControlLine, ControlReply, ControlRequest, ErrorCode,
    MAX_BINARY_INPUT, encode_request,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

/// Why a request to the backend failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached, or the connection broke before the reply: the
    /// request may not have been performed.
    #[error("the backend's control socket failed: {0}")]
    Connection(String),
    /// The backend answered with an error; `code` says whose fault it is (absent from
    /// backends older than the codes).
    #[error("{message}")]
    Refused {
        /// The backend's code.
        code: Option<ErrorCode>,
        /// The backend's message.
        message: String,
    },
    /// The reply was not what the protocol says.
    #[error("the backend sent a malformed reply: {0}")]
    Malformed(String),
}

impl BackendError {
    /// Whether the request never got an answer because the connection failed.
    pub fn is_connection(&self) -> bool {
        matches!(self, BackendError::Connection(_))
    }

    /// The backend's code of a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            BackendError::Refused { code, .. } => *code,
            _ => None,
        }
    }
}

/// What an invocation produced, as the backend reports it.
#[derive(Debug, Clone, Default)]
pub struct Invoked {
    /// The reply's figures (outcome, timings, bytes moved…).
    pub reply: ControlReply,
    /// The function's result (empty if it was only stored).
    pub output: Bytes,
}

impl Invoked {
    /// `success` or `error`.
    pub fn outcome(&self) -> &str {
        self.reply.outcome.as_deref().unwrap_or("error")
    }
}

/// The input of an invocation, as the node sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeInput {
    /// An object of the VM's tenant.
    Key(String),
    /// These bytes (sent raw after the request line, at most [`MAX_BINARY_INPUT`]).
    Bytes(Bytes),
}

/// One invocation for the backend.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The VM.
    pub vm: String,
    /// Its input.
    pub input: InvokeInput,
    /// Store the result here (then it is not sent back).
    pub output: Option<String>,
    /// The request id of the invocation context.
    pub request_id: String,
    /// Whether a result stored at `output` is sent back too.
    pub return_output: bool,
}

type Waiter = oneshot::Sender<Result<(ControlReply, Bytes), BackendError>>;

/// One connection: its writer, and the requests waiting for a reply on it.
#[derive(Debug)]
struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiting: Arc<Mutex<Option<HashMap<u64, Waiter>>>>,
}

/// The client (cheap to clone).
#[derive(Debug, Clone)]
pub struct BackendClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    next_tag: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BackendClient {
    /// A client of the backend listening on `socket` (it connects on first use).
    pub fn new(socket: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                socket,
                connection: tokio::sync::Mutex::new(None),
                next_tag: AtomicU64::new(1),
            }),
        }
    }

    /// Runs one invocation; resolves once the function completed and its uploads (and the
    /// result, if it is to be stored) are durable.
    pub async fn invoke(&self, request: InvokeRequest) -> Result<Invoked, BackendError> {
        let stored = request.output.is_some();
        let return_output = request.return_output;
        let (input, payload) = match request.input {
            InvokeInput::Key(key) => (ControlInput::Key(key), None),
            InvokeInput::Bytes(bytes) => {
                let len = bytes.len() as u64;
                if len > MAX_BINARY_INPUT {
                    return Err(BackendError::Refused {
                        code: Some(ErrorCode::Invalid),
                        message: format!(
                            "an inline input may be at most {MAX_BINARY_INPUT} bytes ({len} given)"
                        ),
                    });
                }
                (ControlInput::Binary(len), Some(bytes))
            }
        };
        let (reply, output) = self
            .request_with(
                ControlRequest::Invoke {
                    vm: request.vm,
                    input,
                    output: request.output,
                    function: None,
                    request_id: (!request.request_id.is_empty()).then_some(request.request_id),
                    return_output: stored.then_some(return_output),
                    binary: Some(true),
                },
                payload,
            )
            .await?;
        if reply.outcome.is_none() {
            return Err(BackendError::Malformed(
                "an invoke reply without its outcome".into(),
            ));
        }
        Ok(Invoked { reply, output })
    }

    /// Resolves once VM `vm` is parked in `NEXT` (at most `timeout`).
    pub async fn parked(&self, vm: &str, timeout: Duration) -> Result<(), BackendError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.request(ControlRequest::Parked {
            vm: vm.to_owned(),
            timeout_ms: Some(timeout_ms),
        })
        .await
        .map(drop)
    }

    /// The backend's figures.
    pub async fn stats(&self) -> Result<BackendStats, BackendError> {
        let (reply, _) = self.request(ControlRequest::Stats {}).await?;
        reply
            .stats
            .ok_or_else(|| BackendError::Malformed("a stats reply without its figures".into()))
    }

    /// Drops VM `vm`'s session (its pending invocation fails).
    pub async fn detach(&self, vm: &str) -> Result<(), BackendError> {
        self.request(ControlRequest::Detach { vm: vm.to_owned() })
            .await
            .map(drop)
    }

    /// Resets VM `vm` between two invocations without detaching it: the backend fails what
    /// it still has queued or running for it and forgets what it prefetched for it.
    pub async fn reset(&self, vm: &str) -> Result<(), BackendError> {
        self.request(ControlRequest::Reset { vm: vm.to_owned() })
            .await
            .map(drop)
    }

    /// Stores file `name` of the published snapshot of `function` with `identity` through
    /// the backend (`create`: only if it does not exist; a refusal with
    /// [`ErrorCode::Exists`] otherwise).
    pub async fn snapshot_put(
        &self,
        function: &str,
        identity: &str,
        name: &str,
        bytes: Bytes,
        create: bool,
    ) -> Result<(), BackendError> {
        self.request_with(
            ControlRequest::SnapshotPut {
                function: function.to_owned(),
                identity: identity.to_owned(),
                name: name.to_owned(),
                len: bytes.len() as u64,
                create: create.then_some(true),
            },
            Some(bytes),
        )
        .await
        .map(drop)
    }

    /// Reads file `name` of the published snapshot of `function` with `identity` (a refusal
    /// with [`ErrorCode::NotFound`] if there is none).
    pub async fn snapshot_get(
        &self,
        function: &str,
        identity: &str,
        name: &str,
    ) -> Result<Bytes, BackendError> {
        let (reply, bytes) = self
            .request(ControlRequest::SnapshotGet {
                function: function.to_owned(),
                identity: identity.to_owned(),
                name: name.to_owned(),
            })
            .await?;
        if !reply.binary() {
            return Err(BackendError::Malformed(
                "a snapshot_get reply without its bytes".into(),
            ));
        }
        Ok(bytes)
    }

    /// Sends `request` with a fresh tag and waits for its reply (and the bytes after it).
    async fn request(
        &self,
        request: ControlRequest,
    ) -> Result<(ControlReply, Bytes), BackendError> {
        self.request_with(request, None).await
    }

    /// [`request`](Self::request), with `payload` sent after the line (a binary input).
    async fn request_with(
        &self,
        request: ControlRequest,
        payload: Option<Bytes>,
    ) -> Result<(ControlReply, Bytes), BackendError> {
        let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let line = encode_request(&request, Some(tag));
        let connection = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = lock(&connection.waiting);
            let Some(waiting) = waiting.as_mut() else {
                return Err(BackendError::Connection("the connection closed".into()));
            };
            waiting.insert(tag, tx);
        }
        // A task of its own: a request cut in the middle (its caller gave up) would put the
        // stream out of step.
        let writing = Arc::clone(&connection);
        let sent = tokio::spawn(async move {
            let mut writer = writing.writer.lock().await;
            writer.write_all(&line).await?;
            if let Some(payload) = payload {
                writer.write_all(&payload).await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = sent {
            self.forget(&connection).await;
            return Err(BackendError::Connection(e.to_string()));
        }
        let (reply, output) = rx
            .await
            .map_err(|_| BackendError::Connection("the connection closed".into()))??;
        if !reply.ok {
            return Err(BackendError::Refused {
                code: reply.code,
                message: reply.error.unwrap_or_default(),
            });
        }
        Ok((reply, output))
    }

    /// The live connection, made if there is none.
    async fn connection(&self) -> Result<Arc<Connection>, BackendError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| lock(&c.waiting).is_some()) {
            return Ok(Arc::clone(connection));
        }
        let stream = UnixStream::connect(&self.inner.socket).await.map_err(|e| {
            BackendError::Connection(format!("{}: {e}", self.inner.socket.display()))
        })?;
        let (reader, writer) = stream.into_split();
        let connection = Arc::new(Connection {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Arc::new(Mutex::new(Some(HashMap::new()))),
        });
        tokio::spawn(read_replies(reader, Arc::clone(&connection.waiting)));
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Drops `connection` (its waiters fail) so that the next request makes a new one.
    async fn forget(&self, connection: &Arc<Connection>) {
        fail_all(&connection.waiting, "the connection failed");
        let mut slot = self.inner.connection.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            *slot = None;
        }
    }
}

fn fail_all(waiting: &Mutex<Option<HashMap<u64, Waiter>>>, why: &str) {
    if let Some(waiting) = lock(waiting).take() {
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(BackendError::Connection(why.into())));
        }
    }
}

/// Hands every reply on `reader` to the request waiting for its tag, until the connection
/// ends; then fails whatever still waits.
async fn read_replies(reader: OwnedReadHalf, waiting: Arc<Mutex<Option<HashMap<u64, Waiter>>>>) {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break "the backend closed the connection".to_owned(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
        let reply = match ControlLine::parse(line.strip_suffix(b"\n").unwrap_or(&line)) {
            Ok(ControlLine::Reply(reply)) => reply,
            // Events go to the connection that attached a VM; this one attaches none.
            Ok(ControlLine::Event(event)) => {
                log::debug!("backend event on the node's connection: {event:?}");
                continue;
            }
            Err(e) => break format!("a malformed line from the backend: {e}"),
        };
        let mut output = Vec::new();
        if reply.binary() {
            let len = reply.output_len.unwrap_or(0);
            if let Err(e) = (&mut reader).take(len).read_to_end(&mut output).await {
                break e.to_string();
            }
            if output.len() as u64 != len {
                break "the connection closed in the middle of a result".to_owned();
            }
        }
        let Some(tag) = reply.tag else {
            log::warn!("an untagged reply on the node's connection: {reply:?}");
            continue;
        };
        let waiter = lock(&waiting).as_mut().and_then(|w| w.remove(&tag));
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok((reply, Bytes::from(output))));
        }
    };
    log::debug!("the node's backend connection ended: {why}");
    fail_all(&waiting, &why);
}
