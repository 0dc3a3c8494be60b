// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The status codes of the C ABI, the crate's error type, and the per-thread last error
//! message.

use std::cell::RefCell;
use std::ffi::{CString, c_char};

/// What a `nexus_*` call returned: `NEXUS_STATUS_OK`, or why it failed.
///
/// The first group mirrors the statuses the backend answers with (`nexus_guest::Error`'s
/// first group); the second are the client's own. Values are stable: new codes are only
/// ever added at the end. `nexus_last_error_message()` has the details of the last failure
/// on the calling thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexusStatus {
    /// Success.
    Ok = 0,
    /// No such object.
    NotFound = 1,
    /// The key is outside what this VM's tenant may access.
    AccessDenied = 2,
    /// The backend refused the request as malformed.
    InvalidRequest = 3,
    /// Something does not fit the backend's limits.
    TooLarge = 4,
    /// The store (or the backend itself) cannot be reached.
    BackendUnavailable = 5,
    /// A write-behind upload failed for good (reported by `nexus_flush`).
    UploadFailed = 6,
    /// The operation's deadline passed.
    Timeout = 7,
    /// The backend failed in a way that is not the caller's fault.
    Internal = 8,
    /// The backend speaks another protocol version.
    UnsupportedVersion = 9,
    /// Over a rate limit; try again later.
    Throttled = 10,
    /// An argument is invalid: a NULL pointer, a key that is not UTF-8, a key too long.
    InvalidArgument = 11,
    /// The caller's buffer is smaller than the object (the needed size is reported).
    BufferTooSmall = 12,
    /// A payload is larger than the device accepts in one request (`nexus_max_payload`).
    PayloadTooLarge = 13,
    /// The I/O window has no free buffer (or descriptors) of the size needed right now.
    OutOfWindowMemory = 14,
    /// The device or the window cannot be used (none, bad mapping, negotiation failed).
    Device = 15,
    /// A response broke the protocol, or the device broke the virtqueue protocol.
    Protocol = 16,
    /// Opening a connection failed (socket, attach, vhost-user set-up, `/dev/mem`).
    Connect = 17,
    /// This library was built without the transport asked for.
    Unsupported = 18,
    /// The library panicked (a bug); the handle must be closed.
    Panic = 19,
    /// Any other failure.
    Other = 20,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client (or the backend through it) failed.
    #[error("{}", .0.report())]
    Nexus(#[from] nexus_guest::Error),
    /// An argument is invalid.
    #[error("Invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The caller's buffer cannot hold the object.
    #[error("The object has {needed} bytes, the buffer holds {capacity}")]
    BufferTooSmall {
        /// The object's size.
        needed: u64,
        /// The buffer's capacity.
        capacity: u64,
    },
    /// The transport was not built into this library.
    #[error("This libnexus was built without {0}")]
    Unsupported(&'static str),
    /// Opening the transport failed.
    #[error("Cannot connect: {0}")]
    Connect(String),
    /// A previous call on the handle panicked.
    #[error("A previous call on this handle panicked; close it")]
    Poisoned,
    /// This call panicked.
    #[error("Panic in libnexus: {0}")]
    Panic(String),
}

/// The result type of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The status code the C caller sees.
    pub fn status(&self) -> NexusStatus {
        use nexus_guest::Error as E;
        match self {
            Error::Nexus(e) => match e {
                E::NotFound(_) => NexusStatus::NotFound,
                E::PermissionDenied(_) => NexusStatus::AccessDenied,
                E::InvalidRequest(_) => NexusStatus::InvalidRequest,
                E::TooLarge { .. } => NexusStatus::TooLarge,
                E::BackendUnavailable(_) => NexusStatus::BackendUnavailable,
                E::UploadFailed { .. } => NexusStatus::UploadFailed,
                E::Timeout(_) => NexusStatus::Timeout,
                E::Internal(_) => NexusStatus::Internal,
                E::UnsupportedVersion { .. } => NexusStatus::UnsupportedVersion,
                E::Throttled(_) => NexusStatus::Throttled,
                E::NoDevice
                | E::NoWindow
                | E::BadMapping { .. }
                | E::NotNexusDevice { .. }
                | E::FeatureNegotiation { .. }
                | E::QueueUnavailable { .. }
                | E::DeviceNeedsReset { .. }
                | E::WindowMismatch { .. }
                | E::WindowTooSmall { .. }
                | E::DeviceInUse => NexusStatus::Device,
                E::RingFull { .. } | E::OutOfWindowMemory { .. } => NexusStatus::OutOfWindowMemory,
                E::PayloadTooLarge { .. } | E::ObjectTooLarge { .. } => {
                    NexusStatus::PayloadTooLarge
                }
                E::Encode(_) => NexusStatus::InvalidArgument,
                E::Protocol(_)
                | E::UnexpectedReply(_)
                | E::Refused { .. }
                | E::QueueCorrupt(_)
                | E::QueueBroken => NexusStatus::Protocol,
                _ => NexusStatus::Other,
            },
            Error::InvalidArgument(_) => NexusStatus::InvalidArgument,
            Error::BufferTooSmall { .. } => NexusStatus::BufferTooSmall,
            Error::Unsupported(_) => NexusStatus::Unsupported,
            Error::Connect(_) => NexusStatus::Connect,
            Error::Poisoned | Error::Panic(_) => NexusStatus::Panic,
        }
    }
}

impl NexusStatus {
    /// A static, NUL-terminated description of the code.
    pub fn describe(self) -> &'static [u8] {
        match self {
            NexusStatus::Ok => b"success\0",
            NexusStatus::NotFound => b"no such object\0",
            NexusStatus::AccessDenied => b"access denied\0",
            NexusStatus::InvalidRequest => b"the backend refused the request as malformed\0",
            NexusStatus::TooLarge => b"too large for the backend\0",
            NexusStatus::BackendUnavailable => b"the backend or its store is unavailable\0",
            NexusStatus::UploadFailed => b"a write-behind upload failed\0",
            NexusStatus::Timeout => b"timed out\0",
            NexusStatus::Internal => b"backend internal error\0",
            NexusStatus::UnsupportedVersion => b"unsupported protocol version\0",
            NexusStatus::Throttled => b"throttled\0",
            NexusStatus::InvalidArgument => b"invalid argument\0",
            NexusStatus::BufferTooSmall => b"buffer too small\0",
            NexusStatus::PayloadTooLarge => b"payload larger than the device accepts\0",
            NexusStatus::OutOfWindowMemory => b"no free I/O window memory\0",
            NexusStatus::Device => b"the nexus-io device or window cannot be used\0",
            NexusStatus::Protocol => b"protocol error\0",
            NexusStatus::Connect => b"cannot connect\0",
            NexusStatus::Unsupported => b"not built into this library\0",
            NexusStatus::Panic => b"internal panic in libnexus\0",
            NexusStatus::Other => b"other error\0",
        }
    }

    /// The code for a raw value (`Other` for an unknown one).
    pub fn from_raw(code: i32) -> NexusStatus {
        const ALL: [NexusStatus; 21] = [
            NexusStatus::Ok,
            NexusStatus::NotFound,
            NexusStatus::AccessDenied,
            NexusStatus::InvalidRequest,
            NexusStatus::TooLarge,
            NexusStatus::BackendUnavailable,
            NexusStatus::UploadFailed,
            NexusStatus::Timeout,
            NexusStatus::Internal,
            NexusStatus::UnsupportedVersion,
            NexusStatus::Throttled,
            NexusStatus::InvalidArgument,
            NexusStatus::BufferTooSmall,
            NexusStatus::PayloadTooLarge,
            NexusStatus::OutOfWindowMemory,
            NexusStatus::Device,
            NexusStatus::Protocol,
            NexusStatus::Connect,
            NexusStatus::Unsupported,
            NexusStatus::Panic,
            NexusStatus::Other,
        ];
        usize::try_from(code)
            .ok()
            .and_then(|i| ALL.get(i).copied())
            .unwrap_or(NexusStatus::Other)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// `error` and its sources, as `error: cause: …`.
#[cfg_attr(not(any(feature = "loopback", feature = "linux")), allow(dead_code))]
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Records `error` as the calling thread's last error.
pub(crate) fn set_last_error(error: &Error) {
    let text = error.to_string().replace('\0', " ");
    let text = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// The calling thread's last error message; valid until the thread's next failing call.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_statuses_map() {
        for code in 0..21 {
            assert_eq!(NexusStatus::from_raw(code) as i32, code);
            assert_eq!(NexusStatus::from_raw(code).describe().last(), Some(&0));
        }
        assert_eq!(NexusStatus::from_raw(-1), NexusStatus::Other);
        assert_eq!(NexusStatus::from_raw(99), NexusStatus::Other);
        let not_found = Error::from(nexus_guest::Error::NotFound("k".into()));
        assert_eq!(not_found.status(), NexusStatus::NotFound);
        assert_eq!(not_found.to_string(), "Not found: k");
        let denied = Error::from(nexus_guest::Error::PermissionDenied(String::new()));
        assert_eq!(denied.status(), NexusStatus::AccessDenied);
        let full = Error::from(nexus_guest::Error::RingFull { needed: 3, free: 1 });
        assert_eq!(full.status(), NexusStatus::OutOfWindowMemory);
    }

    #[test]
    fn the_last_error_is_per_thread() {
        set_last_error(&Error::InvalidArgument("key is NULL"));
        // SAFETY: last_error() points at this thread's NUL-terminated message.
        let text = unsafe { std::ffi::CStr::from_ptr(last_error()) };
        assert_eq!(text.to_str().unwrap(), "Invalid argument: key is NULL");
        std::thread::spawn(|| {
            // SAFETY: as above, on the new thread (empty).
            let text = unsafe { std::ffi::CStr::from_ptr(last_error()) };
            assert!(text.to_bytes().is_empty());
        })
        .join()
        .unwrap();
    }
}
