// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Performing one decoded request and writing its answer into the window.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nexus_ring::records::{
    EntryList, INVOCATION_CONTEXT_WITH_KEY_MAX_LEN, InvocationContext, LIST_PREFIX_SIZE,
    ObjectEntry,
};
use nexus_ring::{
    Command, LogLevel, Outcome, RESPONSE_HEADER_SIZE, Request, ResponseHeader, ResponseTarget,
    Status,
};

use crate::cpu_share::Metered;
use crate::error::{Error, InputFailure};
use crate::http::{HttpCall, HttpFailure};
use crate::invocations::{NextClaim, QueuedInvocation, RunningInvocation};
use crate::invoke::{InvocationInput, InvocationResult, InvokeError, InvokeRequest};
use crate::key_order::KeyTurn;
use crate::listing::{ListPage, Resume};
use crate::log_limit::escape_log_text;
use crate::session::Session;
use crate::store::{ObjectInfo, PutSource, StoreError, get_length};
use crate::tenant::{check_key, check_prefix};
use crate::tenant_state::Charge;
use crate::window::WindowMemory;
use crate::write_behind::{Durability, WriteBehindTicket};

/// Timeout of an INVOKE whose `arg0` is 0.
pub(crate) const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of a write-behind upload before it fails for good.
const UPLOAD_ATTEMPTS: u32 = 3;

/// An answer, before it is written: status, meta area bytes, and what was written to the
/// payload buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    status: Status,
    meta: Vec<u8>,
    /// The meta area holds text (a message or key) that may be cut at a character boundary.
    text: bool,
    payload_len: u32,
    total: u64,
    detail: u64,
}

impl Reply {
    /// `OK`, nothing written.
    pub(crate) fn ok() -> Self {
        Self {
            status: Status::Ok,
            meta: Vec::new(),
            text: false,
            payload_len: 0,
            total: 0,
            detail: 0,
        }
    }

    /// An error status with a message for humans.
    pub(crate) fn error(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            meta: message.into().into_bytes(),
            text: true,
            ..Self::ok()
        }
    }

    /// `UPLOAD_FAILED` naming `key`.
    fn upload_failed(key: &str, count: u64) -> Self {
        Self::error(Status::UploadFailed, key).detail(count)
    }

    fn from_store(error: &StoreError) -> Self {
        Self::error(error.status(), error.to_string())
    }

    fn from_http(failure: HttpFailure) -> Self {
        Self::error(failure.status, failure.message)
            .total(failure.total)
            .detail(failure.detail)
    }

    /// With these meta area bytes (a record).
    pub(crate) fn meta(mut self, meta: Vec<u8>) -> Self {
        self.meta = meta;
        self.text = false;
        self
    }

    /// With `n` bytes written to the payload buffers.
    pub(crate) fn payload(mut self, n: u32) -> Self {
        self.payload_len = n;
        self
    }

    /// With this `total`.
    pub(crate) fn total(mut self, total: u64) -> Self {
        self.total = total;
        self
    }

    /// With this `detail`.
    pub(crate) fn detail(mut self, detail: u64) -> Self {
        self.detail = detail;
        self
    }

    /// The status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> Status {
        self.status
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn cut_text(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    // Back up over continuation bytes (10xxxxxx) so no character is split.
    while end > 0 && text.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end -= 1;
    }
    &text[..end]
}

/// Writes `reply` as the answer to request `id` into `target`; returns the used length.
pub(crate) fn respond(
    window: &WindowMemory,
    id: u64,
    target: &ResponseTarget,
    reply: Reply,
) -> u32 {
    let capacity = target.meta_capacity() as usize;
    let meta: &[u8] = if reply.text {
        cut_text(&reply.meta, capacity)
    } else {
        &reply.meta
    };
    let mut header = ResponseHeader {
        id,
        status: reply.status,
        meta_len: meta.len() as u32,
        payload_len: reply.payload_len,
        total: reply.total,
        detail: reply.detail,
    };
    let mut meta_written = true;
    if target.check(&header).is_err() {
        log::error!("answer to request {id} does not fit its buffers: {header:?}");
        header = ResponseHeader::new(id, Status::Internal);
        meta_written = false;
    }
    if meta_written && !meta.is_empty() {
        let at = target.head.addr + RESPONSE_HEADER_SIZE as u64;
        if let Err(e) = window.write(at, meta) {
            log::error!("cannot write the answer to request {id}: {e}");
            header = ResponseHeader::new(id, Status::Internal);
        }
    }
    write_header(window, target.head.addr, &header)
}

/// Writes a response header at `addr`; returns the used length (0 if it could not be written).
pub(crate) fn write_header(window: &WindowMemory, addr: u64, header: &ResponseHeader) -> u32 {
    let written = header
        .to_bytes()
        .map_err(|e| e.to_string())
        .and_then(|bytes| window.write(addr, &bytes).map_err(|e| e.to_string()));
    match (written, header.used_len()) {
        (Ok(()), Ok(used)) => used,
        (Err(e), _) => {
            log::error!("cannot write a response header at {addr:#x}: {e}");
            0
        }
        (_, Err(e)) => {
            log::error!("bad response header: {e}");
            0
        }
    }
}

/// What was taken from the request while it was dispatched, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// The key segment, copied out once.
    pub(crate) key: Option<Vec<u8>>,
    /// The meta segment, copied out once.
    pub(crate) meta: Option<Vec<u8>>,
    /// The request's turn on its key.
    pub(crate) turn: Option<KeyTurn>,
    /// A write-behind PUT's ticket.
    pub(crate) write_behind: Option<WriteBehindTicket>,
    /// FLUSH and COMPLETE: the write-behind mark at arrival.
    pub(crate) mark: u64,
    /// NEXT: the VM's one outstanding `NEXT`, claimed at arrival (`None`: an earlier `NEXT`
    /// holds it).
    pub(crate) next: Option<NextClaim>,
}

/// A checked object key of the session's tenant.
fn object_key(session: &Session, bytes: Option<&[u8]>) -> Result<String, Reply> {
    let bytes = bytes.ok_or_else(|| Reply::error(Status::InvalidRequest, "no key"))?;
    let key = std::str::from_utf8(bytes)
        .map_err(|_| Reply::error(Status::InvalidRequest, "the key is not UTF-8"))?;
    check_key(key).map_err(|reason| Reply::error(Status::InvalidRequest, reason))?;
    if !session.tenant.allows(key) {
        return Err(Reply::error(
            Status::PermissionDenied,
            format!(
                "key `{key}` is outside prefix `{}` of tenant `{}`",
                session.tenant.prefix(),
                session.tenant.name()
            ),
        ));
    }
    Ok(key.to_owned())
}

/// Performs `request`, counting the payload it wrote into the window (and, for a `NEXT`, the
/// request itself: it counts once answered, with the invocation it delivers).
pub(crate) async fn execute(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: &Request,
    prepared: Prepared,
) -> Reply {
    // The tenant's request rate, over all its VMs (the invocation loop and LOG are not
    // charged: LOG has its own per-VM rate).
    if matches!(
        request.command(),
        Command::Get { .. }
            | Command::Put { .. }
            | Command::Head
            | Command::Delete
            | Command::List { .. }
            | Command::Http { .. }
            | Command::Invoke { .. }
    ) {
        if let Err(message) = session.tenant.take_request() {
            return Reply::error(Status::Throttled, message);
        }
    }
    let result = match request.command() {
        Command::Get { offset, max_len } => {
            get(session, window, request, prepared, offset, max_len).await
        }
        Command::Put { write_behind } => {
            put(session, window, request, prepared, write_behind).await
        }
        Command::Head => head(session, prepared).await,
        Command::Delete => delete(session, prepared).await,
        Command::List { max_entries } => {
            list(session, window, request, prepared, max_entries).await
        }
        Command::Flush { timeout_ms } => Ok(flush(session, prepared.mark, timeout_ms).await),
        Command::Log { level } => Ok(log_lines(session, window, request, level)),
        Command::Http { method, timeout_ms } => {
            http(session, window, request, prepared, method, timeout_ms).await
        }
        Command::Invoke {
            timeout_ms,
            asynchronous,
        } => invoke(session, window, request, prepared, timeout_ms, asynchronous).await,
        Command::Next { timeout_ms } => {
            next(session, window, request, prepared.next, timeout_ms).await
        }
        Command::Complete {
            invocation,
            outcome,
            stored,
        } => {
            let ending = Ending {
                number: invocation,
                outcome,
                stored,
            };
            complete(session, window, request, prepared.mark, ending).await
        }
    };
    let reply = result.unwrap_or_else(|reply| reply);
    // `payload_len` is exactly what was written to the payload buffers.
    session.count_in(reply.payload_len.into());
    if matches!(request.command(), Command::Next { .. }) {
        session.count_request();
    }
    reply
}

type OpResult = Result<Reply, Reply>;

async fn get(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
    mut prepared: Prepared,
    offset: u64,
    max_len: u64,
) -> OpResult {
    let key = object_key(session, prepared.key.as_deref())?;
    if let Some(turn) = prepared.turn.as_mut() {
        turn.ready().await;
    }
    let target = request.response.payload;
    // Every prefetch begun before this GET arrived has finished by its turn; one still
    // running began later and waits for this GET's turn, so it must not be waited for.
    if let Some(cached) = session.prefetch.fetched(&key) {
        let size = cached.len() as u64;
        let n = get_length(size, offset, max_len, target.total_len());
        if n > 0 {
            let start = offset as usize;
            window
                .write_stream(&target, 0, &cached[start..start + n as usize])
                .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
        }
        if offset.saturating_add(n.into()) >= size {
            session.prefetch.invalidate(&key);
        }
        log::debug!(
            "vm {}: GET {key} served from the prefetch cache",
            session.vm
        );
        return Ok(Reply::ok().payload(n).total(size));
    }
    let outcome = session
        .tenant
        .store()
        .get_into(&key, offset, max_len, window, target)
        .await
        .map_err(|e| Reply::from_store(&e))?;
    Ok(Reply::ok().payload(outcome.written).total(outcome.size))
}

async fn put(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: &Request,
    mut prepared: Prepared,
    write_behind: bool,
) -> OpResult {
    let key = object_key(session, prepared.key.as_deref())?;
    let len = u64::from(request.payload.total_len());
    let engine = &session.engine;
    let mut charged = None;
    if write_behind {
        if let (Some(mut ticket), Some(mut turn)) =
            (prepared.write_behind.take(), prepared.turn.take())
        {
            // The key's turn first: an acknowledged upload must not hold staging room while
            // it waits for an earlier request on its key, which may itself wait for staging
            // room (a synchronous PUT): neither would ever go on.
            turn.ready().await;
            let charge = charge_put(session, &key, len).await?;
            if ticket.reserve(len) && ticket.acknowledge(&key) {
                // Copy the payload out: the guest may reuse its buffers once we answer.
                let room = session.staging.reserve(len).await;
                let mut bytes = Vec::with_capacity(len as usize);
                if let Err(e) = window.copy_stream_out(&request.payload, 0, len as u32, &mut bytes)
                {
                    session.tenant.refund(charge);
                    // Answered with an error, not acknowledged after all.
                    ticket.finish(None);
                    return Err(Reply::error(Status::Internal, e.to_string()));
                }
                session.count_out(len);
                session.prefetch.invalidate(&key);
                let upload = engine.upload_started();
                let session = session.clone();
                let share = Arc::clone(&session.cpu);
                engine.runtime.spawn(Metered::new(share, async move {
                    let _room = room;
                    let _upload = upload;
                    // A panic fails this upload only: its ticket, dropped unfinished, reports
                    // it failed to the VM's next FLUSH.
                    crate::panics::counted(
                        "a write-behind upload",
                        upload_behind(&session, key, Bytes::from(bytes), turn, ticket, charge),
                    )
                    .await;
                }));
                return Ok(Reply::ok());
            }
            log::debug!(
                "vm {}: write-behind bounds reached ({} uploads, {} bytes); PUT {key} is done synchronously",
                session.vm,
                session.limits.write_behind_requests,
                session.limits.write_behind_bytes
            );
            prepared.turn = Some(turn);
            drop(ticket);
            charged = Some(charge);
        }
    }
    if let Some(turn) = prepared.turn.as_mut() {
        turn.ready().await;
    }
    let charge = match charged {
        Some(charge) => charge,
        None => charge_put(session, &key, len).await?,
    };
    session.prefetch.invalidate(&key);
    let result = session
        .tenant
        .store()
        .put(
            &key,
            PutSource::Window(window.clone(), Box::new(request.payload)),
            &session.staging,
        )
        .await;
    if result.is_err() {
        session.tenant.refund(charge);
    }
    match result {
        Ok(()) => {
            // The store read the payload straight out of the window.
            session.count_out(len);
            Ok(Reply::ok())
        }
        Err(StoreError::InvalidKey(reason)) => Err(Reply::error(Status::InvalidRequest, reason)),
        Err(e) => {
            log::warn!("vm {}: PUT {key} failed: {e}", session.vm);
            Err(Reply::upload_failed(&key, 1))
        }
    }
}

/// Charges a PUT of `len` bytes at `key` to its tenant's quota (finding the size of the
/// object it replaces first, if the quota counts bytes or objects).
async fn charge_put(session: &Session, key: &str, len: u64) -> Result<Charge, Reply> {
    if !session.tenant.counts_usage() {
        return Ok(Charge::default());
    }
    let old = match session.tenant.store().head(key).await {
        Ok(info) => Some(info.size),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(Reply::from_store(&e)),
    };
    session
        .tenant
        .charge_put(old, len)
        .map_err(|message| Reply::error(Status::PermissionDenied, message))
}

/// Uploads an acknowledged write-behind PUT, retrying transient failures, to the tenant's
/// store as configured when each attempt starts.
async fn upload_behind(
    session: &Session,
    key: String,
    bytes: Bytes,
    mut turn: KeyTurn,
    ticket: WriteBehindTicket,
    charge: Charge,
) {
    turn.ready().await;
    let mut attempt = 1;
    let failed = loop {
        match session
            .tenant
            .store()
            .put(&key, PutSource::Owned(bytes.clone()), &session.staging)
            .await
        {
            Ok(()) => break None,
            Err(e @ (StoreError::Unavailable(_) | StoreError::Internal(_)))
                if attempt < UPLOAD_ATTEMPTS =>
            {
                log::info!(
                    "vm {}: write-behind upload of {key} failed (attempt {attempt}), retrying: {e}",
                    session.vm
                );
                tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt))).await;
                attempt += 1;
            }
            Err(e) => {
                log::error!(
                    "vm {} tenant {}: write-behind upload of {key} failed for good: {e}",
                    session.vm,
                    session.tenant.name()
                );
                break Some(key.clone());
            }
        }
    };
    if failed.is_some() {
        session.tenant.refund(charge);
    }
    ticket.finish(failed);
    drop(turn);
}

async fn head(session: &Session, mut prepared: Prepared) -> OpResult {
    let key = object_key(session, prepared.key.as_deref())?;
    if let Some(turn) = prepared.turn.as_mut() {
        turn.ready().await;
    }
    let info = session
        .tenant
        .store()
        .head(&key)
        .await
        .map_err(|e| Reply::from_store(&e))?;
    let entry = ObjectEntry {
        size: info.size,
        last_modified_ms: info.last_modified_ms,
        key: "",
        etag: &info.etag,
    };
    let meta = entry
        .to_vec()
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    Ok(Reply::ok().meta(meta).total(info.size))
}

async fn delete(session: &Session, mut prepared: Prepared) -> OpResult {
    let key = object_key(session, prepared.key.as_deref())?;
    if let Some(turn) = prepared.turn.as_mut() {
        turn.ready().await;
    }
    session.prefetch.invalidate(&key);
    let store = session.tenant.store();
    // The quota is told what the DELETE removes (a HEAD first, only if it counts usage).
    let old = if session.tenant.counts_usage() {
        match store.head(&key).await {
            Ok(info) => Some(info.size),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(Reply::from_store(&e)),
        }
    } else {
        None
    };
    store
        .delete(&key)
        .await
        .map_err(|e| Reply::from_store(&e))?;
    session.tenant.deleted(old);
    Ok(Reply::ok())
}

fn entry_len(info: &ObjectInfo) -> usize {
    nexus_ring::records::OBJECT_ENTRY_FIXED_SIZE as usize + info.key.len() + info.etag.len()
}

async fn list(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
    prepared: Prepared,
    max_entries: u32,
) -> OpResult {
    let tenant = &session.tenant;
    let prefix = match prepared.key.as_deref() {
        None => tenant.prefix().to_owned(),
        Some(bytes) => {
            let prefix = std::str::from_utf8(bytes)
                .map_err(|_| Reply::error(Status::InvalidRequest, "the prefix is not UTF-8"))?;
            check_prefix(prefix).map_err(|reason| Reply::error(Status::InvalidRequest, reason))?;
            if !tenant.allows(prefix) {
                return Err(Reply::error(
                    Status::PermissionDenied,
                    format!(
                        "prefix `{prefix}` is outside prefix `{}` of tenant `{}`",
                        tenant.prefix(),
                        tenant.name()
                    ),
                ));
            }
            prefix.to_owned()
        }
    };
    // A token is a key, or a directory and `/` (see `listing`), in the prefix's directory.
    let base = &prefix[..prefix.rfind('/').map_or(0, |end| end + 1)];
    let token = match prepared.meta.as_deref() {
        None => None,
        Some(bytes) => {
            let token = std::str::from_utf8(bytes)
                .ok()
                .filter(|t| Resume::valid_token(t) && t.starts_with(base))
                .ok_or_else(|| {
                    Reply::error(
                        Status::InvalidRequest,
                        "the continuation token does not belong to this listing",
                    )
                })?;
            Some(token.to_owned())
        }
    };
    let max = match max_entries {
        0 => nexus_ring::limits::MAX_LIST_ENTRIES,
        n => n,
    } as usize;
    // Past its listing rate, a VM waits (no CPU) until it has paid its earlier pages back.
    let debt = session.list_rate.wait();
    if !debt.is_zero() {
        tokio::time::sleep(debt).await;
    }
    let ListPage {
        entries,
        next,
        looked,
    } = session
        .tenant
        .store()
        .list(
            &prefix,
            token.as_deref(),
            max,
            session.limits.list_scan_budget,
        )
        .await
        .map_err(|e| Reply::from_store(&e))?;
    session.list_rate.charge(looked);
    // A tenant with the empty prefix lists the whole store but the backend's own objects.
    let entries: Vec<ObjectInfo> = entries
        .into_iter()
        .filter(|e| tenant.allows(&e.key))
        .collect();
    log::debug!(
        "vm {}: LIST page of {} entries looked at {looked} (waited {debt:?} first)",
        session.vm,
        entries.len()
    );

    let target = request.response.payload;
    let capacity = target.total_len() as usize;
    let needed = entries
        .iter()
        .fold(LIST_PREFIX_SIZE as usize, |n, e| n + entry_len(e));
    let mut page = vec![0u8; needed.min(capacity)];
    let mut writer = EntryList::writer(&mut page);
    for info in &entries {
        let entry = ObjectEntry {
            size: info.size,
            last_modified_ms: info.last_modified_ms,
            key: &info.key,
            etag: &info.etag,
        };
        if writer.push(&entry).is_err() {
            break;
        }
    }
    let count = writer.count() as usize;
    let first_needs = LIST_PREFIX_SIZE as usize + entries.first().map_or(0, entry_len);
    if capacity < first_needs && count == 0 {
        return Err(Reply::error(
            Status::TooLarge,
            format!("a page with the next entry needs {first_needs} bytes of buffers"),
        )
        .total(first_needs as u64));
    }
    let len = writer
        .finish()
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    window
        .write_stream(&target, 0, &page[..len])
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    let mut reply = Reply::ok().payload(len as u32);
    // Resume after the last entry written if the buffers cut the page short, else where the
    // store stopped.
    let next = match count.checked_sub(1).and_then(|i| entries.get(i)) {
        Some(last) if count < entries.len() => Some(last.key.clone()),
        _ => next,
    };
    if let Some(next) = next {
        reply = reply.meta(next.into_bytes());
    }
    Ok(reply)
}

async fn flush(session: &Session, mark: u64, timeout_ms: u64) -> Reply {
    let wait = session.write_behind.wait(mark);
    let durability = if timeout_ms == 0 {
        wait.await
    } else {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
            Ok(durability) => durability,
            Err(_) => {
                return Reply::error(Status::Timeout, "write-behind uploads are still running");
            }
        }
    };
    match durability {
        Durability::Durable => Reply::ok(),
        Durability::Failed { key, count } => Reply::upload_failed(&key, count),
    }
}

/// LOG: one log record per request, if the VM's rate limit allows it (else `THROTTLED`), with
/// the text escaped to one line and cut to [`MAX_LOG_LEN`](nexus_ring::limits::MAX_LOG_LEN).
fn log_lines(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
    level: LogLevel,
) -> Reply {
    let now = tokio::time::Instant::now();
    let admitted = session.log_limit.admit(now);
    if let Some(dropped) = session.log_limit.report_due(now) {
        log::warn!(
            "vm {}: {dropped} LOG records dropped by the rate limit",
            session.vm
        );
    }
    if !admitted {
        let limits = &session.limits;
        return Reply::error(
            Status::Throttled,
            format!(
                "LOG is limited to {} records a second (bursts of {}) for this VM",
                limits.log_records_per_second, limits.log_burst
            ),
        );
    }
    let len = request
        .payload
        .total_len()
        .min(nexus_ring::limits::MAX_LOG_LEN);
    let mut bytes = Vec::new();
    if let Err(e) = window.copy_stream_out(&request.payload, 0, len, &mut bytes) {
        return Reply::error(Status::Internal, e.to_string());
    }
    session.count_out(bytes.len() as u64);
    let level = match level {
        LogLevel::Error => log::Level::Error,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Info => log::Level::Info,
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Trace => log::Level::Trace,
    };
    let invocation = session
        .invocations
        .current
        .load(std::sync::atomic::Ordering::Relaxed);
    let text = escape_log_text(
        &String::from_utf8_lossy(&bytes),
        nexus_ring::limits::MAX_LOG_LEN as usize,
    );
    log::log!(
        target: "nexus_backend::guest",
        level,
        "vm={} tenant={} invocation={invocation}: {text}",
        session.vm,
        session.tenant.name()
    );
    Reply::ok()
}

async fn copy_payload(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
) -> Result<(Bytes, crate::staging::StagingPermit), Reply> {
    let len = request.payload.total_len();
    let room = session.staging.reserve(len.into()).await;
    let mut bytes = Vec::with_capacity(len as usize);
    window
        .copy_stream_out(&request.payload, 0, len, &mut bytes)
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    session.count_out(len.into());
    Ok((Bytes::from(bytes), room))
}

async fn http(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
    prepared: Prepared,
    method: nexus_ring::HttpMethod,
    timeout_ms: u64,
) -> OpResult {
    let url = prepared
        .key
        .as_deref()
        .ok_or_else(|| Reply::error(Status::InvalidRequest, "no URL"))?;
    let tenant = session.tenant.now();
    let gateway = &tenant.http;
    // Everything is checked before a byte of the body leaves the window.
    let call = gateway
        .check(HttpCall {
            url,
            headers: prepared.meta.as_deref(),
            method,
            timeout_ms,
            body_len: request.payload.total_len(),
        })
        .map_err(Reply::from_http)?;
    let deadline = call.deadline;
    let exchange = async {
        let (body, room) = copy_payload(session, window, request).await?;
        gateway
            .send(call, body, room, window, &request.response)
            .await
            .map_err(Reply::from_http)
    };
    let answer = tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| Reply::error(Status::Timeout, "the HTTP request did not finish in time"))??;
    let mut reply = Reply::ok()
        .detail(answer.status.into())
        .payload(answer.written)
        .total(answer.total);
    if let Some(headers) = answer.headers {
        reply = reply.meta(headers);
    }
    Ok(reply)
}

async fn invoke(
    session: &Session,
    window: &WindowMemory,
    request: &Request,
    prepared: Prepared,
    timeout_ms: u64,
    asynchronous: bool,
) -> OpResult {
    let function = prepared
        .key
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| Reply::error(Status::InvalidRequest, "the function name is not UTF-8"))?
        .to_owned();
    let Some(invoker) = session.engine.invoker() else {
        return Err(Reply::error(
            Status::BackendUnavailable,
            "this backend has no invoker: functions cannot call other functions here",
        ));
    };
    let (input, _room) = copy_payload(session, window, request).await?;
    let call = invoker.invoke(InvokeRequest {
        caller_vm: session.vm.clone(),
        tenant: session.tenant.name().to_owned(),
        function,
        input,
        asynchronous,
    });
    let timeout = match timeout_ms {
        0 => DEFAULT_INVOKE_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let result = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Reply::error(Status::Timeout, "the callee did not finish in time"))?
        .map_err(|e| {
            let status = match e {
                InvokeError::NotFound(_) => Status::NotFound,
                InvokeError::PermissionDenied(_) => Status::PermissionDenied,
                InvokeError::Unavailable(_) => Status::BackendUnavailable,
            };
            Reply::error(status, e.to_string())
        })?;
    if asynchronous {
        return Ok(Reply::ok());
    }
    let target = request.response.payload;
    let n = get_length(result.output.len() as u64, 0, 0, target.total_len());
    window
        .write_stream(&target, 0, &result.output[..n as usize])
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    Ok(Reply::ok()
        .payload(n)
        .total(result.output.len() as u64)
        .detail(result.outcome.code()))
}

/// The input of a queued invocation: bytes the backend holds (inline, or prefetched during a
/// cold start), or an object read straight from the store into the window (one copy) when the
/// `NEXT` is answered.
enum Input {
    Bytes(Bytes),
    Object(String),
}

async fn resolve_input(session: &Session, input: &InvocationInput) -> Input {
    match input {
        InvocationInput::Bytes(bytes) => Input::Bytes(bytes.clone()),
        InvocationInput::Object(key) => match session.prefetch.lookup(key).await {
            Some(bytes) => {
                session.prefetch.invalidate(key);
                Input::Bytes(bytes)
            }
            None => Input::Object(key.clone()),
        },
    }
}

/// How writing an invocation's input into a `NEXT`'s buffers went.
enum InputWrite {
    /// Written: this many bytes.
    Done(u64),
    /// The input is this many bytes, more than the buffers hold.
    TooLarge(u64),
    /// The input cannot be read: the invocation fails.
    Failed(InputFailure, String),
    /// The backend failed to write it: the guest may ask again.
    Retry(String),
}

async fn write_input(
    session: &Session,
    window: &WindowMemory,
    target: nexus_ring::SegmentList,
    input: Input,
) -> InputWrite {
    let capacity = u64::from(target.total_len());
    match input {
        Input::Bytes(bytes) => {
            let size = bytes.len() as u64;
            if size > capacity {
                return InputWrite::TooLarge(size);
            }
            match window.write_stream(&target, 0, &bytes) {
                Ok(()) => InputWrite::Done(size),
                Err(e) => InputWrite::Retry(e.to_string()),
            }
        }
        // In order with the VM's requests on the key (a write-behind upload of it still
        // running, say). No HEAD first: the read says how large the object is (a too-large
        // one costs the bytes that fit, on this rare path).
        Input::Object(key) => {
            let mut turn = session.key_order.take_turn(&key);
            turn.ready().await;
            let store = session.tenant.store();
            match store.get_into(&key, 0, 0, window, target).await {
                Ok(got) if got.size > capacity => InputWrite::TooLarge(got.size),
                Ok(got) if u64::from(got.written) == got.size => InputWrite::Done(got.size),
                Ok(_) => InputWrite::Retry(format!("`{key}` changed while it was read")),
                Err(e) => {
                    let cause = match e {
                        StoreError::NotFound => InputFailure::NotFound,
                        StoreError::InvalidKey(_) => InputFailure::InvalidKey,
                        _ => InputFailure::Unavailable,
                    };
                    InputWrite::Failed(cause, e.to_string())
                }
            }
        }
    }
}

async fn next(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: &Request,
    claim: Option<NextClaim>,
    timeout_ms: u64,
) -> OpResult {
    // Held until the NEXT is answered (or cancelled: the future is dropped).
    let Some(_claim) = claim else {
        return Err(Reply::error(
            Status::InvalidRequest,
            "this VM already has a NEXT outstanding",
        ));
    };
    let invocations = &session.invocations;
    let deadline =
        (timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
    let target = request.response.payload;
    loop {
        let arrival = invocations.arrival();
        let Some(queued) = invocations.pop() else {
            match deadline {
                None => arrival.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                        return Err(Reply::error(Status::Timeout, "no invocation arrived"));
                    }
                }
            }
            continue;
        };
        let input = resolve_input(session, &queued.input).await;
        match write_input(session, window, target, input).await {
            InputWrite::Done(size) => return deliver(session, request, queued, size),
            InputWrite::TooLarge(size) => {
                invocations.push_front(queued);
                return Err(Reply::error(
                    Status::TooLarge,
                    format!("the invocation's input is {size} bytes"),
                )
                .total(size));
            }
            InputWrite::Failed(cause, reason) => {
                let key = match &queued.input {
                    InvocationInput::Object(key) => key.clone(),
                    InvocationInput::Bytes(_) => String::new(),
                };
                let _ = queued
                    .reply
                    .send(Err(Error::InputUnavailable { key, cause, reason }));
            }
            InputWrite::Retry(reason) => {
                // Give the invocation back: the guest can ask again.
                log::warn!(
                    "vm {}: cannot deliver invocation {}: {reason}",
                    session.vm,
                    queued.number
                );
                invocations.push_front(queued);
                return Err(Reply::error(Status::BackendUnavailable, reason));
            }
        }
    }
}

/// Hands invocation `queued`, whose `size`-byte input is in the window, to the guest.
fn deliver(session: &Session, request: &Request, queued: QueuedInvocation, size: u64) -> OpResult {
    let mut invocation = queued.invocation;
    // Only a guest that offered room for the output key understands it (protocol.md §5.2).
    // For any other, the key is the caller's business: the running invocation forgets it, so
    // that a `STORED` flag from that guest means nothing.
    if request.response.meta_capacity() < INVOCATION_CONTEXT_WITH_KEY_MAX_LEN {
        invocation.output_key = None;
    }
    let context = InvocationContext {
        invocation: queued.number,
        deadline_ms: invocation.deadline_ms,
        async_durability: invocation.async_durability,
        function: &invocation.function,
        request_id: &invocation.request_id,
        output_key: invocation.output_key.as_deref(),
    };
    let meta = context
        .to_vec()
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    log::debug!(
        "vm {}: invocation {} of {} delivered",
        session.vm,
        queued.number,
        invocation.function
    );
    session.invocations.start(
        queued.number,
        RunningInvocation {
            invocation,
            reply: queued.reply,
        },
    );
    Ok(Reply::ok().meta(meta).payload(size as u32).total(size))
}

/// What a COMPLETE reports.
struct Ending {
    number: u64,
    outcome: Outcome,
    /// The guest stored the result at the output key itself.
    stored: bool,
}

async fn complete(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: &Request,
    mark: u64,
    ending: Ending,
) -> OpResult {
    let Ending {
        number,
        outcome,
        stored,
    } = ending;
    let Some(running) = session.invocations.finish(number) else {
        return Err(Reply::error(
            Status::NotFound,
            format!("invocation {number} is not running in this VM"),
        ));
    };
    // The decoder refuses `STORED` with an error; a key the guest never saw was cleared on
    // delivery.
    let stored = stored && running.invocation.output_key.is_some();
    let stored_len = stored.then(|| u64::from(request.payload.total_len()));
    // A result the guest stored is read out of the window only if the caller wants it back.
    let output = if stored && !running.invocation.return_output {
        Bytes::new()
    } else {
        match copy_payload(session, window, request).await {
            Ok((output, room)) => {
                drop(room);
                output
            }
            Err(reply) => {
                let _ = running.reply.send(Err(Error::InputUnavailable {
                    key: String::new(),
                    cause: InputFailure::Unavailable,
                    reason: "the result could not be read".into(),
                }));
                return Err(reply);
            }
        }
    };
    let result = InvocationResult {
        outcome,
        output,
        stored_len,
    };
    if running.invocation.async_durability {
        let _ = running.reply.send(Ok(result));
    } else {
        // Report completion once the uploads made before COMPLETE are durable.
        let write_behind = session.write_behind.clone();
        let share = Arc::clone(&session.cpu);
        session.engine.runtime.spawn(Metered::new(
            share,
            crate::panics::counted("the wait for uploads before a COMPLETE", async move {
                let report = match write_behind.wait(mark).await {
                    Durability::Durable => Ok(result),
                    Durability::Failed { key, count } => Err(Error::UploadFailed { key, count }),
                };
                let _ = running.reply.send(report);
            }),
        ));
    }
    Ok(Reply::ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_character_boundaries() {
        assert_eq!(cut_text(b"hello", 10), b"hello");
        assert_eq!(cut_text(b"hello", 3), b"hel");
        let text = "aé".as_bytes(); // 'é' is 2 bytes
        assert_eq!(cut_text(text, 2), b"a");
        assert_eq!(cut_text(text, 0), b"");
        assert_eq!(
            Reply::error(Status::NotFound, "x").status(),
            Status::NotFound
        );
    }
}
