//! The driver's one error type.

use alloc::string::String;

use nexus_ring::Status;

/// Why a request, or bringing up the device, failed.
///
/// The first group mirrors the statuses of the protocol (`docs/protocol.md` §6): the backend
/// answered the request with that status; the `String` is its message (the meta area, UTF-8,
/// possibly empty). The second group are the driver's own errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `NOT_FOUND`: no such object, invocation or function.
    #[error("Not found: {0}")]
    NotFound(String),
    /// `PERMISSION_DENIED`: outside this function's grants.
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    /// `INVALID_REQUEST`: the backend refused the request as malformed.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// `TOO_LARGE`: something does not fit.
    #[error(
        "Too large: {message} (payload capacity needed: {needed}, meta capacity needed: {meta_needed})"
    )]
    TooLarge {
        /// The backend's message.
        message: String,
        /// Payload capacity needed (or the most the backend accepts), from `total`.
        needed: u64,
        /// Meta capacity needed, from `detail`; 0 if that was not the problem.
        meta_needed: u64,
    },
    /// `BACKEND_UNAVAILABLE`: the storage service or remote peer could not be reached — or
    /// the device has no backend connection at all (the WAIT register read `0xFFFF_FFFF`;
    /// every request in flight then fails with this error and the device is set up again
    /// before the next request).
    #[error("Backend unavailable: {0}")]
    BackendUnavailable(String),
    /// `UPLOAD_FAILED`: an upload failed for good.
    #[error("Upload of {key:?} failed ({failed} failed upload(s))")]
    UploadFailed {
        /// The key of the (first) object that could not be stored.
        key: String,
        /// How many uploads failed, from `detail`.
        failed: u64,
    },
    /// `TIMEOUT`: the operation's deadline passed.
    #[error("Timed out: {0}")]
    Timeout(String),
    /// `INTERNAL`: the backend failed in a way that is not the guest's fault.
    #[error("Backend internal error: {0}")]
    Internal(String),
    /// `UNSUPPORTED_VERSION`: the backend does not speak this protocol version.
    #[error("The backend speaks protocol version {backend_version}, not ours")]
    UnsupportedVersion {
        /// The version the backend speaks, from `detail`.
        backend_version: u64,
    },
    /// `THROTTLED`: the VM went over a rate limit the backend sets for it (such as LOG
    /// records per second); the request was not performed, and may be tried again later.
    #[error("Throttled: {0}")]
    Throttled(String),

    /// The VM has no nexus-io device (boot-info `device_base` is 0).
    #[error("The VM has no nexus-io device")]
    NoDevice,
    /// The VM has no I/O window (boot-info `window_base` is 0).
    #[error("The VM has no I/O window")]
    NoWindow,
    /// The device's register block or the window cannot be used (null, misaligned, too
    /// small, or not addressable).
    #[error("Invalid {what} mapping at {addr:#x} (+{size:#x})")]
    BadMapping {
        /// `"register"` or `"window"`.
        what: &'static str,
        /// Address of the mapping.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The register block is not a virtio-mmio version 2 nexus-io device.
    #[error("Not a nexus-io device: magic {magic:#x}, version {version}, device id {device_id:#x}")]
    NotNexusDevice {
        /// `MagicValue` (must be `nexus_ring::mmio::MAGIC`, "virt").
        magic: u32,
        /// `Version` (must be 2).
        version: u32,
        /// `DeviceID` (must be `nexus_ring::device::DEVICE_ID`).
        device_id: u32,
    },
    /// Feature negotiation failed: `VIRTIO_F_VERSION_1` or `NEXUS_F_WAIT` not offered, or the
    /// device refused `FEATURES_OK`.
    #[error("Feature negotiation failed (device offers {offered:#x})")]
    FeatureNegotiation {
        /// The feature bits the device offered.
        offered: u64,
    },
    /// The device's queue 0 cannot be set up (no queue, or it is already live).
    #[error("The device's request queue is unavailable (QueueNumMax {max}, QueueReady {ready})")]
    QueueUnavailable {
        /// `QueueNumMax`.
        max: u32,
        /// `QueueReady`.
        ready: u32,
    },
    /// The device set `DEVICE_NEEDS_RESET` (or `FAILED`) while being set up.
    #[error("The device needs a reset (status {status:#x})")]
    DeviceNeedsReset {
        /// The `Status` register.
        status: u32,
    },
    /// The window the device reports in its config space is not the one this driver maps.
    #[error(
        "The device's window {device_base:#x}+{device_size:#x} is not the mapped window {mapped_base:#x}+{mapped_size:#x}"
    )]
    WindowMismatch {
        /// `window_base` in the device's config space.
        device_base: u64,
        /// `window_size` in the device's config space.
        device_size: u64,
        /// The mapped window's base.
        mapped_base: u64,
        /// The mapped window's size.
        mapped_size: u64,
    },
    /// The window cannot hold the rings and a useful amount of buffers.
    #[error("The I/O window of {size} bytes is too small: at least {needed} needed")]
    WindowTooSmall {
        /// The window's size.
        size: u64,
        /// The least size the driver accepts.
        needed: u64,
    },
    /// Not enough free descriptors in the request queue for this chain.
    #[error("The request queue is full: {needed} descriptors needed, {free} free")]
    RingFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// No free window buffer of this size.
    #[error("No free window buffer of {requested} bytes (largest free block: {largest} bytes)")]
    OutOfWindowMemory {
        /// Bytes requested.
        requested: u64,
        /// The largest free block.
        largest: u64,
    },
    /// A request payload is larger than the device accepts (`max_payload`).
    #[error("A payload of {len} bytes exceeds the device's limit of {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: u64,
        /// The device's `max_payload`.
        max: u64,
    },
    /// `get` of an object larger than the biggest buffer the driver could offer; read it in
    /// pieces with `get_range`.
    #[error("The object has {size} bytes, more than the {capacity} that fit one request")]
    ObjectTooLarge {
        /// The object's size.
        size: u64,
        /// The buffer that was offered.
        capacity: u64,
    },
    /// The request cannot be encoded (a key too long, a header list too big, …); nothing was
    /// sent.
    #[error("The request cannot be encoded")]
    Encode(#[source] nexus_ring::Error),
    /// A response failed the driver's checks (magic, version, id echo, lengths within what
    /// was offered, records); the request must be taken as not performed.
    #[error("Protocol error in the response")]
    Protocol(#[source] nexus_ring::Error),
    /// A response passed the protocol checks but makes no sense for the request (an unknown
    /// INVOKE outcome, an HTTP status beyond 65535, …).
    #[error("Unexpected response: {0}")]
    UnexpectedReply(&'static str),
    /// The device returned the chain with used length 0 (it refused it with nowhere to put
    /// an answer), or with a used length shorter than a response header.
    #[error("The device returned the request with used length {used_len}, without a response")]
    Refused {
        /// The used length.
        used_len: u32,
    },
    /// The device broke the virtqueue protocol (used index jumped, unknown descriptor id);
    /// it was reset.
    #[error("The device broke the virtqueue protocol: {0}")]
    QueueCorrupt(&'static str),
    /// The backend stopped serving the request queue because a request broke a ring rule
    /// (the device showed `DEVICE_NEEDS_RESET`); every request in flight failed and the
    /// device was reset, so the next request sets it up again.
    #[error("The backend stopped serving the request queue; the device was reset")]
    QueueBroken,
    /// The runtime's device handle was already taken.
    #[error("The nexus-io device is already in use")]
    DeviceInUse,
    /// The in-guest network fabric (feature `net`) failed in a way that is not one of the
    /// statuses above: the device, the stack, or an answer that is not HTTP or S3 as
    /// spoken here. (Failing to reach the server is `BackendUnavailable`, as on the
    /// nexus-io path.)
    #[cfg(feature = "net")]
    #[error("Network error")]
    Net(#[source] crate::net::NetError),
}

/// The result type of the driver.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// The error for a non-`OK` response: its status, meta area (`message`), `total` and
    /// `detail`. `None` for [`Status::Ok`].
    pub fn from_status(status: Status, meta: &[u8], total: u64, detail: u64) -> Option<Self> {
        let message = String::from_utf8_lossy(meta).into_owned();
        Some(match status {
            Status::Ok => return None,
            Status::NotFound => Error::NotFound(message),
            Status::PermissionDenied => Error::PermissionDenied(message),
            Status::InvalidRequest => Error::InvalidRequest(message),
            Status::TooLarge => Error::TooLarge {
                message,
                needed: total,
                meta_needed: detail,
            },
            Status::BackendUnavailable => Error::BackendUnavailable(message),
            Status::UploadFailed => Error::UploadFailed {
                key: message,
                failed: detail,
            },
            Status::Timeout => Error::Timeout(message),
            Status::Internal => Error::Internal(message),
            Status::UnsupportedVersion => Error::UnsupportedVersion {
                backend_version: detail,
            },
            Status::Throttled => Error::Throttled(message),
        })
    }

    /// The protocol status this error mirrors, if it is one of them.
    pub fn status(&self) -> Option<Status> {
        Some(match self {
            Error::NotFound(_) => Status::NotFound,
            Error::PermissionDenied(_) => Status::PermissionDenied,
            Error::InvalidRequest(_) => Status::InvalidRequest,
            Error::TooLarge { .. } => Status::TooLarge,
            Error::BackendUnavailable(_) => Status::BackendUnavailable,
            Error::UploadFailed { .. } => Status::UploadFailed,
            Error::Timeout(_) => Status::Timeout,
            Error::Internal(_) => Status::Internal,
            Error::UnsupportedVersion { .. } => Status::UnsupportedVersion,
            Error::Throttled(_) => Status::Throttled,
            _ => return None,
        })
    }

    /// The error a request in flight gets when the device has lost its backend.
    pub(crate) fn backend_lost() -> Self {
        Error::BackendUnavailable(String::from("the device has no backend connection"))
    }
}

/// An error with its chain of sources, displayed as `error: cause: …` (from
/// [`Error::report`]).
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a Error);

impl core::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = core::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl Error {
    /// Displays the error with its sources (`Protocol error in the response: bad magic …`).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn statuses_round_trip_and_reports_show_causes() {
        for status in Status::ALL {
            match Error::from_status(status, b"m", 1, 2) {
                None => assert_eq!(status, Status::Ok),
                Some(error) => assert_eq!(error.status(), Some(status)),
            }
        }
        assert_eq!(Error::RingFull { needed: 1, free: 0 }.status(), None);
        let error = Error::Protocol(nexus_ring::Error::IdMismatch {
            expected: 1,
            found: 2,
        });
        assert_eq!(
            error.report().to_string(),
            "Protocol error in the response: response id 2 does not match request id 1"
        );
    }
}
