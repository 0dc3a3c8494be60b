// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Object storage: the embedded file store and S3 through `object_store`.
//!
//! Payloads move with as few copies as the medium allows:
//!
//! - **file store**: GET opens the object's file and reads it straight into the window
//!   (`read(2)` into the mapped window: page cache → window, one copy); PUT writes from the
//!   window into a staging file, `fsync`s it, renames it into place and `fsync`s the
//!   directory (and, for every directory the PUT had to create, that directory's parent), so
//!   a PUT is atomic and durable before it is acknowledged.
//! - **S3**: GET streams the response body's chunks into the window as they arrive (nothing
//!   beyond the HTTP client's own buffers); PUT copies the window into the request body (one
//!   copy), in 8 MiB multipart parts for larger objects, so at most one part per upload is
//!   staged at a time.
//!
//! LIST walks in key order within a scan budget, holding at most a page or two of keys
//! (see [`crate::listing`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::StreamExt;
use nexus_ring::{SegmentList, Status};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::{StoreConfig, StoreUrl};
use crate::cpu_share::CpuShare;
use crate::error::{Error, Result, error_chain};
use crate::listing::{ListPage, Resume, walk_files};
use crate::staging::Staging;
use crate::tenant::STAGING_DIR;
use crate::window::{WindowError, WindowMemory};

/// Objects larger than this are uploaded to S3 in parts of this size.
pub(crate) const PART_SIZE: usize = 8 << 20;

/// Why a storage operation failed, as the guest will be told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// No such object.
    #[error("no such object")]
    NotFound,
    /// The store refused the backend's credentials for this object.
    #[error("the store refused access: {0}")]
    PermissionDenied(String),
    /// The store cannot represent the key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The store could not be reached or failed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The object cannot be stored there (e.g. a directory or a file stands in the way);
    /// retrying will not help.
    #[error("cannot store the object: {0}")]
    Conflict(String),
    /// The object is larger than the caller can take.
    #[error("the object is {0} bytes, more than fits")]
    TooLarge(u64),
    /// A create-only PUT found the object there already.
    #[error("the object exists already")]
    Exists,
    /// A backend failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The protocol status for this failure.
    pub(crate) fn status(&self) -> Status {
        match self {
            StoreError::NotFound => Status::NotFound,
            StoreError::PermissionDenied(_) => Status::PermissionDenied,
            StoreError::InvalidKey(_) => Status::InvalidRequest,
            StoreError::Unavailable(_) => Status::BackendUnavailable,
            StoreError::TooLarge(_) => Status::TooLarge,
            StoreError::Conflict(_) | StoreError::Exists | StoreError::Internal(_) => {
                Status::Internal
            }
        }
    }

    fn from_io(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory => StoreError::NotFound,
            io::ErrorKind::PermissionDenied => StoreError::PermissionDenied(error.to_string()),
            _ => StoreError::Unavailable(error.to_string()),
        }
    }

    /// What a guest is told of an object store error: a short cause. The error itself can
    /// name the endpoint, the bucket and carry the store's answer (XML bodies with key IDs),
    /// so it goes to the backend's log only.
    fn from_object_store(error: object_store::Error) -> Self {
        let mapped = match &error {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StoreError::Exists,
            object_store::Error::PermissionDenied { .. } => {
                StoreError::PermissionDenied("forbidden".into())
            }
            object_store::Error::Unauthenticated { .. } => {
                StoreError::PermissionDenied("not authenticated".into())
            }
            object_store::Error::InvalidPath { .. } => {
                StoreError::InvalidKey("the store cannot represent it".into())
            }
            other => StoreError::Unavailable(store_failure(other).into()),
        };
        let full = error_chain(&error);
        match mapped {
            StoreError::NotFound => log::debug!("object store: {full}"),
            _ => log::info!("object store request failed ({mapped}): {full}"),
        }
        mapped
    }
}

/// A short cause for an object store failure that is neither a missing object nor a refusal.
fn store_failure(error: &object_store::Error) -> &'static str {
    use object_store::client::{HttpError, HttpErrorKind};
    match error {
        object_store::Error::AlreadyExists { .. } => "the object already exists",
        object_store::Error::Precondition { .. } => "a precondition failed",
        object_store::Error::NotModified { .. } => "the object was not modified",
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            "the store does not support this operation"
        }
        _ => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
            while let Some(cause) = source {
                if let Some(http) = cause.downcast_ref::<HttpError>() {
                    return match http.kind() {
                        HttpErrorKind::Connect => "the store could not be reached",
                        HttpErrorKind::Timeout => "the store did not answer in time",
                        HttpErrorKind::Request | HttpErrorKind::Interrupted => {
                            "the connection to the store broke"
                        }
                        HttpErrorKind::Decode => "the store sent a bad response",
                        _ => "the store failed the request",
                    };
                }
                source = cause.source();
            }
            "the store failed the request"
        }
    }
}

impl From<WindowError> for StoreError {
    fn from(error: WindowError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

/// Metadata of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectInfo {
    /// The full key.
    pub(crate) key: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Last modification, Unix milliseconds (0: unknown).
    pub(crate) last_modified_ms: u64,
    /// Entity tag (at most 256 bytes; empty if unknown).
    pub(crate) etag: String,
}

/// What a GET wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GetOutcome {
    /// Bytes written to the response payload buffers.
    pub(crate) written: u32,
    /// The object's size.
    pub(crate) size: u64,
}

/// The bytes a GET writes: `min(size - offset, max_len (0: no limit), capacity)`, or 0 when
/// `offset >= size`.
pub(crate) fn get_length(size: u64, offset: u64, max_len: u64, capacity: u32) -> u32 {
    let available = size.saturating_sub(offset);
    let limit = if max_len == 0 { u64::MAX } else { max_len };
    // The result is at most `capacity`, a u32.
    available.min(limit).min(capacity.into()) as u32
}

/// Where a PUT's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum PutSource {
    /// Straight from the window (synchronous PUT): `len` bytes of the payload segments.
    Window(WindowMemory, Box<SegmentList>),
    /// The backend's own copy (write-behind PUT).
    Owned(Bytes),
}

impl PutSource {
    fn len(&self) -> u64 {
        match self {
            PutSource::Window(_, list) => list.total_len().into(),
            PutSource::Owned(bytes) => bytes.len() as u64,
        }
    }
}

/// The backend's one store, shared by every VM.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    /// `file:///DIR`.
    Local(Arc<LocalStore>),
    /// `s3://BUCKET`.
    Remote(Arc<dyn ObjectStore>),
}

impl Store {
    /// Opens the store. For S3 this builds the client (no request is made yet); it must run
    /// inside the tokio runtime.
    pub(crate) fn open(config: &StoreConfig) -> Result<Self> {
        match &config.url {
            StoreUrl::File(dir) => Ok(Store::Local(Arc::new(LocalStore::open(dir)?))),
            StoreUrl::S3 { bucket } => {
                let s3 = &config.s3;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(STORE_RETRY.clone());
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(endpoint) = builder
                    .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
                    .filter(|e| e.starts_with("http://"))
                {
                    builder = builder.with_allow_http(s3.http_allowed(&endpoint));
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                if let Some(token) = &s3.session_token {
                    builder = builder.with_token(token);
                }
                let store = builder.build().map_err(Error::ObjectStore)?;
                Ok(Store::Remote(Arc::new(store)))
            }
        }
    }

    /// The staging directory of a file store (the backend's own); `None` for S3.
    pub(crate) fn staging_dir(&self) -> Option<PathBuf> {
        match self {
            Store::Local(local) => Some(local.staging_dir.clone()),
            Store::Remote(_) => None,
        }
    }

    fn path(key: &str) -> std::result::Result<Path, StoreError> {
        Path::parse(key).map_err(|e| StoreError::InvalidKey(e.to_string()))
    }

    /// Reads bytes `offset..` of `key` (at most `max_len`, 0: no limit) straight into the
    /// response payload buffers `target`.
    pub(crate) async fn get_into(
        &self,
        key: &str,
        offset: u64,
        max_len: u64,
        window: &WindowMemory,
        target: SegmentList,
    ) -> std::result::Result<GetOutcome, StoreError> {
        match self {
            Store::Local(local) => {
                // A small object already in the page cache is read here, on the async
                // worker: a trip to the blocking pool would cost more than the read.
                if let Some(got) = local.get_cached_into(key, offset, max_len, window, &target)? {
                    return Ok(got);
                }
                let (local, key, window) = (local.clone(), key.to_owned(), window.clone());
                blocking(move || local.get_into(&key, offset, max_len, &window, &target)).await
            }
            Store::Remote(store) => {
                remote_get_into(store.as_ref(), key, offset, max_len, window, target).await
            }
        }
    }

    /// Stores `key` durably from `source`.
    pub(crate) async fn put(
        &self,
        key: &str,
        source: PutSource,
        staging: &Staging,
    ) -> std::result::Result<(), StoreError> {
        match self {
            Store::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.put(&key, &source)).await
            }
            Store::Remote(store) => remote_put(store.as_ref(), key, source, staging).await,
        }
    }

    /// Stores `key` durably from `bytes`; with `create`, only if no object `key` exists
    /// ([`StoreError::Exists`] otherwise): the file store links the staged file into place
    /// (atomic), S3 sends `If-None-Match: *` (object_store's `PutMode::Create`; atomic on
    /// AWS S3, a check before the write on s3s-fs).
    pub(crate) async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        create: bool,
    ) -> std::result::Result<(), StoreError> {
        match self {
            Store::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || {
                    if create {
                        local.put_new(&key, &bytes)
                    } else {
                        local.put(&key, &PutSource::Owned(bytes))
                    }
                })
                .await
            }
            Store::Remote(store) => {
                let mode = if create {
                    object_store::PutMode::Create
                } else {
                    object_store::PutMode::Overwrite
                };
                store
                    .put_opts(
                        &Self::path(key)?,
                        PutPayload::from(bytes),
                        object_store::PutOptions::from(mode),
                    )
                    .await
                    .map(drop)
                    .map_err(StoreError::from_object_store)
            }
        }
    }

    /// The object's metadata.
    pub(crate) async fn head(&self, key: &str) -> std::result::Result<ObjectInfo, StoreError> {
        match self {
            Store::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.head(&key)).await
            }
            Store::Remote(store) => {
                let meta = store
                    .head(&Self::path(key)?)
                    .await
                    .map_err(StoreError::from_object_store)?;
                Ok(info_of(meta))
            }
        }
    }

    /// Deletes the object; deleting a missing object succeeds.
    pub(crate) async fn delete(&self, key: &str) -> std::result::Result<(), StoreError> {
        match self {
            Store::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.delete(&key)).await
            }
            Store::Remote(store) => match store.delete(&Self::path(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StoreError::from_object_store(e)),
            },
        }
    }

    /// Up to `max` objects whose keys start with `prefix` and come after the continuation
    /// token `token` (see [`crate::listing`]), in ascending byte order, looking at no more
    /// than about `budget` objects or directory entries; the page's continuation token, if
    /// the listing may go on.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        token: Option<&str>,
        max: usize,
        budget: u32,
    ) -> std::result::Result<ListPage<ObjectInfo>, StoreError> {
        let resume = Resume::parse(token);
        let budget = u64::from(budget.max(1));
        match self {
            Store::Local(local) => {
                let (local, prefix) = (local.clone(), prefix.to_owned());
                blocking(move || local.list(&prefix, &resume, max, budget)).await
            }
            Store::Remote(_) if matches!(resume, Resume::AfterDir(_)) => {
                // Only the file store's walk hands out directory tokens. An S3 listing would
                // have to walk the whole directory to get past it, and a page cut short
                // inside it would hand out a token before the one it was given.
                Err(StoreError::InvalidKey(
                    "a directory token does not belong to this store's listings".into(),
                ))
            }
            Store::Remote(store) => remote_list(store.as_ref(), prefix, &resume, max, budget).await,
        }
    }

    /// The whole object, if it is at most `limit` bytes (prefetching).
    pub(crate) async fn fetch(
        &self,
        key: &str,
        limit: u64,
    ) -> std::result::Result<Bytes, StoreError> {
        match self {
            Store::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.fetch(&key, limit)).await
            }
            Store::Remote(store) => {
                let result = store
                    .get(&Self::path(key)?)
                    .await
                    .map_err(StoreError::from_object_store)?;
                if result.meta.size > limit {
                    return Err(StoreError::TooLarge(result.meta.size));
                }
                result.bytes().await.map_err(StoreError::from_object_store)
            }
        }
    }
}

/// How a failed S3 request is retried: 4 times, from 100 ms apart doubling up to 2 s, and
/// not past 15 s (object_store's default goes on for up to 3 minutes: a store out of reach
/// held every request that long rather than failing it).
static STORE_RETRY: std::sync::LazyLock<object_store::RetryConfig> =
    std::sync::LazyLock::new(|| object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(15),
    });

/// The most bytes a GET from the local store reads on the async worker, from the page cache.
const CACHED_READ_MAX: u64 = 256 << 10;

/// Runs blocking file I/O off the async workers.
async fn blocking<T, F>(f: F) -> std::result::Result<T, StoreError>
where
    F: FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(CpuShare::charging_blocking(f))
        .await
        .map_err(|e| {
            log::error!("file I/O task failed: {e}");
            StoreError::Internal("a file I/O task failed".into())
        })?
}

fn info_of(meta: object_store::ObjectMeta) -> ObjectInfo {
    let mut etag = meta.e_tag.unwrap_or_default();
    if etag.len() > nexus_ring::limits::MAX_ETAG_LEN as usize {
        etag.clear();
    }
    ObjectInfo {
        key: meta.location.as_ref().to_owned(),
        size: meta.size,
        last_modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
        etag,
    }
}

async fn remote_get_into(
    store: &dyn ObjectStore,
    key: &str,
    offset: u64,
    max_len: u64,
    window: &WindowMemory,
    target: SegmentList,
) -> std::result::Result<GetOutcome, StoreError> {
    let path = Store::path(key)?;
    let capacity = target.total_len();
    let want = get_length(u64::MAX, offset, max_len, capacity);
    if want == 0 {
        let meta = store
            .head(&path)
            .await
            .map_err(StoreError::from_object_store)?;
        return Ok(GetOutcome {
            written: 0,
            size: meta.size,
        });
    }
    let options = GetOptions {
        range: Some(GetRange::Bounded(
            offset..offset.saturating_add(want.into()),
        )),
        ..GetOptions::default()
    };
    let result = match store.get_opts(&path, options).await {
        Ok(result) => result,
        Err(error @ object_store::Error::NotFound { .. }) => {
            return Err(StoreError::from_object_store(error));
        }
        Err(error) => {
            // A range that starts at or after the end is refused by S3; the protocol answers
            // it with 0 bytes and the object's size.
            return match store.head(&path).await {
                Ok(meta) if offset >= meta.size => Ok(GetOutcome {
                    written: 0,
                    size: meta.size,
                }),
                Ok(_) => Err(StoreError::from_object_store(error)),
                Err(head_error) => Err(StoreError::from_object_store(head_error)),
            };
        }
    };
    let size = result.meta.size;
    let expected = get_length(size, offset, max_len, capacity);
    let mut written: u32 = 0;
    let mut body = result.into_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StoreError::from_object_store)?;
        let room = (expected - written) as usize;
        let take = chunk.len().min(room);
        window.write_stream(&target, written, &chunk[..take])?;
        written += take as u32;
        if written == expected {
            break;
        }
    }
    if written != expected {
        return Err(StoreError::Unavailable(format!(
            "the object changed while it was read ({written} of {expected} bytes arrived)"
        )));
    }
    Ok(GetOutcome { written, size })
}

/// Copies `len` bytes at `offset` of `source` into an upload body.
fn body_part(
    source: &PutSource,
    offset: u64,
    len: usize,
) -> std::result::Result<Bytes, StoreError> {
    match source {
        PutSource::Owned(bytes) => {
            let start = offset as usize;
            Ok(bytes.slice(start..start + len))
        }
        PutSource::Window(window, list) => {
            let mut out = Vec::with_capacity(len);
            window.copy_stream_out(list, offset as u32, len as u32, &mut out)?;
            Ok(Bytes::from(out))
        }
    }
}

async fn remote_put(
    store: &dyn ObjectStore,
    key: &str,
    source: PutSource,
    staging: &Staging,
) -> std::result::Result<(), StoreError> {
    let path = Store::path(key)?;
    let len = source.len();
    let copies = matches!(source, PutSource::Window(..));
    if len <= PART_SIZE as u64 {
        let _room = if copies {
            Some(staging.reserve(len).await)
        } else {
            None
        };
        let body = body_part(&source, 0, len as usize)?;
        store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(StoreError::from_object_store)?;
        return Ok(());
    }
    let mut upload = store
        .put_multipart(&path)
        .await
        .map_err(StoreError::from_object_store)?;
    let mut offset = 0u64;
    let result = async {
        while offset < len {
            let part = (len - offset).min(PART_SIZE as u64) as usize;
            let _room = if copies {
                Some(staging.reserve(part as u64).await)
            } else {
                None
            };
            let body = body_part(&source, offset, part)?;
            upload
                .put_part(PutPayload::from(body))
                .await
                .map_err(StoreError::from_object_store)?;
            offset += part as u64;
        }
        upload
            .complete()
            .await
            .map_err(StoreError::from_object_store)
    }
    .await;
    if let Err(error) = result {
        if let Err(abort) = upload.abort().await {
            log::warn!("could not abort the multipart upload of {key}: {abort}");
        }
        return Err(error);
    }
    Ok(())
}

/// A page of an S3 listing. S3 lists keys in ascending byte order, so the listing stops at
/// the first key past the prefix, after `max + 1` keys, or after `budget` objects (resuming
/// after the last one looked at).
async fn remote_list(
    store: &dyn ObjectStore,
    prefix: &str,
    resume: &Resume,
    max: usize,
    budget: u64,
) -> std::result::Result<ListPage<ObjectInfo>, StoreError> {
    // object_store lists whole path segments: list the prefix's directory, filter by bytes.
    let dir = match prefix.rfind('/') {
        Some(end) if end > 0 => Some(Store::path(&prefix[..end])?),
        _ => None,
    };
    let mut stream = match resume.start_after() {
        Some(after) => store.list_with_offset(dir.as_ref(), &Store::path(after)?),
        None => store.list(dir.as_ref()),
    };
    let mut entries: Vec<ObjectInfo> = Vec::new();
    let mut looked = 0u64;
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(StoreError::from_object_store)?;
        looked += 1;
        let key = meta.location.as_ref().to_owned();
        if key.as_str() > prefix && !key.starts_with(prefix) {
            break;
        }
        if key.starts_with(prefix) && resume.before_key(&key) {
            if entries.len() == max {
                let next = entries.last().map(|last| last.key.clone());
                return Ok(ListPage {
                    entries,
                    next,
                    looked,
                });
            }
            entries.push(info_of(meta));
        }
        if looked >= budget {
            return Ok(ListPage {
                entries,
                next: Some(key),
                looked,
            });
        }
    }
    Ok(ListPage {
        entries,
        next: None,
        looked,
    })
}

/// A failure to put a file in place: a conflict with what is there (permanent), or not.
fn conflict_or_unavailable(error: &io::Error) -> StoreError {
    match error.kind() {
        io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::DirectoryNotEmpty
        | io::ErrorKind::AlreadyExists => StoreError::Conflict(error.to_string()),
        _ => StoreError::Unavailable(error.to_string()),
    }
}

/// The embedded store: objects are files under a directory.
#[derive(Debug)]
pub(crate) struct LocalStore {
    root: PathBuf,
    staging_dir: PathBuf,
    next_temp: AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) the store directory and its staging directory.
    pub(crate) fn open(root: &FsPath) -> Result<Self> {
        let staging_dir = root.join(STAGING_DIR);
        fs::create_dir_all(&staging_dir).map_err(|source| Error::StoreDir {
            path: root.to_owned(),
            source,
        })?;
        // Leftovers of uploads interrupted by a crash are garbage; staging files are named
        // `<pid>-<n>`, so those of a backend still running on this directory are kept.
        if let Ok(entries) = fs::read_dir(&staging_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let owner = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .map(|(pid, _)| pid);
                let alive = owner.is_some_and(|pid| {
                    pid.parse::<u32>().is_ok() && FsPath::new("/proc").join(pid).exists()
                });
                if !alive {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            staging_dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// The file of a (checked) key.
    fn file_of(&self, key: &str) -> std::result::Result<PathBuf, StoreError> {
        crate::tenant::check_key(key).map_err(|reason| StoreError::InvalidKey(reason.into()))?;
        Ok(self.root.join(key))
    }

    fn open_object(&self, key: &str) -> std::result::Result<(File, fs::Metadata), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.file_of(key)?)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => StoreError::NotFound,
                _ => StoreError::from_io(e),
            })?;
        let meta = file.metadata().map_err(StoreError::from_io)?;
        if !meta.is_file() {
            return Err(StoreError::NotFound);
        }
        Ok((file, meta))
    }

    /// [`get_into`](Self::get_into) if there are at most [`CACHED_READ_MAX`] bytes to read and
    /// all of them are in the page cache, without waiting for the disk for them (`None`
    /// otherwise: read it the normal way). Opening the file may still touch the disk for a
    /// cold inode.
    fn get_cached_into(
        &self,
        key: &str,
        offset: u64,
        max_len: u64,
        window: &WindowMemory,
        target: &SegmentList,
    ) -> std::result::Result<Option<GetOutcome>, StoreError> {
        let (file, meta) = self.open_object(key)?;
        let size = meta.len();
        let written = get_length(size, offset, max_len, target.total_len());
        if u64::from(written) > CACHED_READ_MAX {
            return Ok(None);
        }
        let pieces = target
            .cover(0, written)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut at = offset;
        for piece in pieces {
            if !window
                .read_from_cached_file(piece, &file, at)
                .map_err(StoreError::from)?
            {
                return Ok(None);
            }
            at = at.saturating_add(u64::from(piece.len));
        }
        Ok(Some(GetOutcome { written, size }))
    }

    fn get_into(
        &self,
        key: &str,
        offset: u64,
        max_len: u64,
        window: &WindowMemory,
        target: &SegmentList,
    ) -> std::result::Result<GetOutcome, StoreError> {
        let (mut file, meta) = self.open_object(key)?;
        let size = meta.len();
        let written = get_length(size, offset, max_len, target.total_len());
        if written > 0 {
            file.seek(SeekFrom::Start(offset))
                .map_err(StoreError::from_io)?;
            let pieces = target
                .cover(0, written)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            for piece in pieces {
                window
                    .read_from_file(piece, &mut file)
                    .map_err(|e| match e {
                        WindowError::Memory { .. } => StoreError::Unavailable(format!(
                            "the object changed while it was read: {e}"
                        )),
                        other => other.into(),
                    })?;
            }
        }
        Ok(GetOutcome { written, size })
    }

    fn temp_file(&self) -> std::result::Result<(PathBuf, File), StoreError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.staging_dir.join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot create a staging file: {e}")))?;
        Ok((path, file))
    }

    fn put(&self, key: &str, source: &PutSource) -> std::result::Result<(), StoreError> {
        let target = self.file_of(key)?;
        let (temp, mut file) = self.temp_file()?;
        let result = (|| {
            match source {
                PutSource::Owned(bytes) => file.write_all(bytes).map_err(StoreError::from_io)?,
                PutSource::Window(window, list) => {
                    for segment in list.iter() {
                        window.write_to_file(*segment, &mut file)?;
                    }
                }
            }
            file.sync_all().map_err(StoreError::from_io)?;
            let parent = target.parent().unwrap_or(&self.root);
            let created = self.create_dirs(parent)?;
            fs::rename(&temp, &target).map_err(|e| conflict_or_unavailable(&e))?;
            // The object's entry, then the entry of every directory made for it.
            sync_dir(parent)?;
            for dir in &created {
                sync_dir(dir.parent().unwrap_or(&self.root))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// [`put`](Self::put) of `bytes` if no object `key` exists: the staged file is hard-linked
    /// into place, which fails if the name is taken.
    fn put_new(&self, key: &str, bytes: &[u8]) -> std::result::Result<(), StoreError> {
        let target = self.file_of(key)?;
        let (temp, mut file) = self.temp_file()?;
        let result = (|| {
            file.write_all(bytes).map_err(StoreError::from_io)?;
            file.sync_all().map_err(StoreError::from_io)?;
            let parent = target.parent().unwrap_or(&self.root);
            let created = self.create_dirs(parent)?;
            fs::hard_link(&temp, &target).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => StoreError::Exists,
                _ => conflict_or_unavailable(&e),
            })?;
            sync_dir(parent)?;
            for dir in &created {
                sync_dir(dir.parent().unwrap_or(&self.root))?;
            }
            Ok(())
        })();
        let _ = fs::remove_file(&temp);
        result
    }

    /// Creates the directories of `dir` that are missing, outermost first; the ones it found
    /// missing (a concurrent PUT may have made some of them meanwhile: their parents need a
    /// sync all the same before this PUT is acknowledged).
    fn create_dirs(&self, dir: &FsPath) -> std::result::Result<Vec<PathBuf>, StoreError> {
        let mut missing = Vec::new();
        let mut at = dir;
        while at != self.root {
            match fs::metadata(at) {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(StoreError::Conflict(format!(
                        "{} is not a directory",
                        at.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at.to_owned()),
                Err(e) => return Err(conflict_or_unavailable(&e)),
            }
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
        missing.reverse();
        for dir in &missing {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(conflict_or_unavailable(&e)),
            }
        }
        Ok(missing)
    }

    fn info(key: &str, meta: &fs::Metadata) -> ObjectInfo {
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        ObjectInfo {
            key: key.to_owned(),
            size: meta.len(),
            last_modified_ms: u64::try_from(modified.as_millis()).unwrap_or(0),
            etag: format!(
                "{:x}-{:x}-{:x}",
                meta.ino(),
                modified.as_nanos(),
                meta.len()
            ),
        }
    }

    fn head(&self, key: &str) -> std::result::Result<ObjectInfo, StoreError> {
        let (_, meta) = self.open_object(key)?;
        Ok(Self::info(key, &meta))
    }

    fn delete(&self, key: &str) -> std::result::Result<(), StoreError> {
        let path = self.file_of(key)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(e) => return Err(StoreError::from_io(e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::from_io(e)),
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn fetch(&self, key: &str, limit: u64) -> std::result::Result<Bytes, StoreError> {
        let (mut file, meta) = self.open_object(key)?;
        if meta.len() > limit {
            return Err(StoreError::TooLarge(meta.len()));
        }
        let mut out = Vec::with_capacity(meta.len() as usize);
        io::Read::read_to_end(&mut file, &mut out).map_err(StoreError::from_io)?;
        Ok(Bytes::from(out))
    }

    fn list(
        &self,
        prefix: &str,
        resume: &Resume,
        max: usize,
        budget: u64,
    ) -> std::result::Result<ListPage<ObjectInfo>, StoreError> {
        walk_files(&self.root, prefix, resume, max, budget, Self::info).map_err(StoreError::from_io)
    }
}

/// `fsync`s a directory, so the entries made in it last.
fn sync_dir(dir: &FsPath) -> std::result::Result<(), StoreError> {
    #[cfg(test)]
    tests::SYNCED.with(|synced| synced.borrow_mut().push(dir.to_owned()));
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::from_io)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        /// Directories this thread `fsync`ed, in order.
        pub(super) static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn a_put_syncs_the_parent_of_every_directory_it_makes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = LocalStore::open(root).unwrap();
        let put = |key: &str| {
            SYNCED.with(|synced| synced.borrow_mut().clear());
            let result = store.put(key, &PutSource::Owned(Bytes::from_static(b"x")));
            (result, SYNCED.with(|synced| synced.take()))
        };
        let (result, synced) = put("a/b/c/obj");
        result.unwrap();
        // The object's directory, then the parents of `a`, `a/b` and `a/b/c`.
        assert_eq!(
            synced,
            vec![
                root.join("a/b/c"),
                root.to_owned(),
                root.join("a"),
                root.join("a/b")
            ]
        );
        // Directories that exist need no more than the object's own.
        let (result, synced) = put("a/b/other");
        result.unwrap();
        assert_eq!(synced, vec![root.join("a/b")]);
        let (result, synced) = put("a/b/d/e");
        result.unwrap();
        assert_eq!(synced, vec![root.join("a/b/d"), root.join("a/b")]);
        let (result, synced) = put("top");
        result.unwrap();
        assert_eq!(synced, vec![root.to_owned()]);
        // A file where a directory should be is a conflict, and nothing is left behind.
        let (result, _) = put("a/b/other/x");
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        let (result, _) = put("top/deeper/x");
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        assert_eq!(&store.fetch("a/b/c/obj", 10).unwrap()[..], b"x");
        assert_eq!(fs::read_dir(root.join(STAGING_DIR)).unwrap().count(), 0);
    }

    /// A directory token (only the file store hands them out) is refused by an S3 listing:
    /// a page cut short by the scan budget inside the directory handed out a token before
    /// the one it was given, and the next page listed keys again.
    #[tokio::test]
    async fn a_remote_listing_refuses_directory_tokens() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        for key in ["t/a.b", "t/a/b", "t/b"] {
            memory
                .put(&Path::parse(key).unwrap(), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let store = Store::Remote(memory);
        let page = store.list("t/", Some("t/a.b"), 10, 1).await.unwrap();
        assert_eq!(page.next.as_deref(), Some("t/a/b"), "a key token goes on");
        let refused = store.list("t/", Some("t/a/"), 10, 1).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidKey(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn get_lengths() {
        assert_eq!(get_length(10_000, 0, 0, 4096), 4096);
        assert_eq!(get_length(10_000, 4096, 0, 8192), 10_000 - 4096);
        assert_eq!(get_length(10, 3, 4, 100), 4);
        assert_eq!(get_length(10, 10, 0, 100), 0);
        assert_eq!(get_length(10, 11, 0, 100), 0);
        assert_eq!(get_length(0, 0, 0, 100), 0);
        assert_eq!(get_length(u64::MAX, u64::MAX - 1, 0, u32::MAX), 1);
    }

    #[test]
    fn local_gets_into_a_window_small_from_the_cache_and_large_the_slow_way() {
        use nexus_ring::SegmentRef;
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::open(dir.path()).unwrap());
        let big: Vec<u8> = (0..(CACHED_READ_MAX as u32 + 4096))
            .map(|i| (i % 251) as u8)
            .collect();
        local
            .put(
                "small",
                &PutSource::Owned(Bytes::from_static(b"hello, window")),
            )
            .unwrap();
        local
            .put("big", &PutSource::Owned(Bytes::from(big.clone())))
            .unwrap();
        let store = Store::Local(local);
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 1 << 20)]).unwrap();
        let window = WindowMemory::new(Arc::new(mem)).unwrap();
        // Two segments, so that a read spans them.
        let target = SegmentList::from_slice(&[
            SegmentRef::new(0x10_0000, 5),
            SegmentRef::new(0x18_0000, 0x7_0000),
        ])
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let got = store
                .get_into("small", 2, 0, &window, target)
                .await
                .unwrap();
            assert_eq!((got.written, got.size), (11, 13));
            assert_eq!(
                window.copy_out(SegmentRef::new(0x10_0000, 5)).unwrap(),
                b"llo, "
            );
            assert_eq!(
                window.copy_out(SegmentRef::new(0x18_0000, 6)).unwrap(),
                b"window"
            );
            let got = store.get_into("big", 1, 0, &window, target).await.unwrap();
            assert_eq!(got.size, big.len() as u64);
            assert_eq!(got.written as usize, big.len() - 1);
            let mut read = window.copy_out(SegmentRef::new(0x10_0000, 5)).unwrap();
            read.extend(
                window
                    .copy_out(SegmentRef::new(0x18_0000, got.written - 5))
                    .unwrap(),
            );
            assert_eq!(read, &big[1..]);
            assert!(matches!(
                store.get_into("missing", 0, 0, &window, target).await,
                Err(StoreError::NotFound)
            ));
        });
    }

    #[test]
    fn create_only_puts_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        let key = "nexus-system/snapshots/f/i/manifest";
        let outcomes: Vec<_> = (0..8u8)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || (i, store.put_new(key, &[i; 100])))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let winners: Vec<u8> = outcomes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        for (_, r) in &outcomes {
            assert!(matches!(r, Ok(()) | Err(StoreError::Exists)), "{r:?}");
        }
        assert_eq!(&store.fetch(key, 1000).unwrap()[..], &[winners[0]; 100][..]);
        // The losers' staged files are gone.
        assert_eq!(
            std::fs::read_dir(dir.path().join(STAGING_DIR))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn local_store_round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for key in ["b/2", "b/1", "a", "b.x", "c/d/e"] {
            store
                .put(key, &PutSource::Owned(Bytes::from(key.as_bytes().to_vec())))
                .unwrap();
        }
        assert_eq!(&store.fetch("b/1", 100).unwrap()[..], b"b/1");
        assert!(matches!(
            store.fetch("b/1", 2),
            Err(StoreError::TooLarge(3))
        ));
        assert!(matches!(store.head("b"), Err(StoreError::NotFound)));
        assert!(matches!(store.head("zz"), Err(StoreError::NotFound)));
        assert!(matches!(store.head("a/x"), Err(StoreError::NotFound)));
        assert_eq!(store.head("c/d/e").unwrap().size, 5);

        let keys = |prefix: &str, token: Option<&str>, max: usize| {
            let page = store
                .list(prefix, &Resume::parse(token), max, 100_000)
                .unwrap();
            let keys = page.entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
            (keys, page.next)
        };
        assert_eq!(
            keys("", None, 10),
            (
                vec![
                    "a".into(),
                    "b.x".into(),
                    "b/1".into(),
                    "b/2".into(),
                    "c/d/e".into()
                ],
                None
            )
        );
        assert_eq!(
            keys("b", None, 2),
            (vec!["b.x".into(), "b/1".into()], Some("b/1".into()))
        );
        assert_eq!(keys("b", Some("b/1"), 2), (vec!["b/2".into()], None));
        assert_eq!(keys("c/d/", None, 10), (vec!["c/d/e".into()], None));
        assert_eq!(keys("zz/", None, 10), (vec![], None));

        store.delete("b/1").unwrap();
        store.delete("b/1").unwrap();
        store.delete("nothing/here").unwrap();
        store.delete("b").unwrap(); // a directory, not an object
        assert!(matches!(store.head("b/1"), Err(StoreError::NotFound)));
        assert!(store.head("b/2").is_ok());
        // Nothing is left behind in the staging directory.
        assert_eq!(
            fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn object_store_errors_reach_guests_sanitised() {
        use object_store::client::{HttpError, HttpErrorKind};
        let internals = [
            "http://10.1.2.3:9000",
            "secret-bucket",
            "AKIAEXAMPLEKEYID",
            "<Error>",
        ];
        let upstream = |kind| object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                kind,
                io::Error::other(
                    "error sending request for url \
                     (http://10.1.2.3:9000/secret-bucket/k?X-Amz-Credential=AKIAEXAMPLEKEYID)",
                ),
            )),
        };
        let cases = [
            (
                StoreError::from_object_store(upstream(HttpErrorKind::Connect)),
                Status::BackendUnavailable,
                "storage unavailable: the store could not be reached",
            ),
            (
                StoreError::from_object_store(upstream(HttpErrorKind::Timeout)),
                Status::BackendUnavailable,
                "storage unavailable: the store did not answer in time",
            ),
            (
                StoreError::from_object_store(object_store::Error::Generic {
                    store: "S3",
                    source: "Received redirect without LOCATION, this normally indicates an \
                             incorrectly configured region: <Error><Code>PermanentRedirect\
                             </Code><BucketName>secret-bucket</BucketName></Error>"
                        .into(),
                }),
                Status::BackendUnavailable,
                "storage unavailable: the store failed the request",
            ),
            (
                StoreError::from_object_store(object_store::Error::PermissionDenied {
                    path: "secret-bucket/k".into(),
                    source: "<Error><Code>AccessDenied</Code><AWSAccessKeyId>\
                             AKIAEXAMPLEKEYID</AWSAccessKeyId></Error>"
                        .into(),
                }),
                Status::PermissionDenied,
                "the store refused access: forbidden",
            ),
            (
                StoreError::from_object_store(object_store::Error::Unauthenticated {
                    path: "secret-bucket/k".into(),
                    source: "InvalidAccessKeyId AKIAEXAMPLEKEYID".into(),
                }),
                Status::PermissionDenied,
                "the store refused access: not authenticated",
            ),
            (
                StoreError::from_object_store(object_store::Error::NotFound {
                    path: "secret-bucket/k".into(),
                    source: "http://10.1.2.3:9000 said 404".into(),
                }),
                Status::NotFound,
                "no such object",
            ),
        ];
        for (error, status, message) in cases {
            let text = error.to_string();
            assert_eq!((error.status(), text.as_str()), (status, message));
            for internal in internals {
                assert!(!text.contains(internal), "{text}");
            }
        }
    }
}
