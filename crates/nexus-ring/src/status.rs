// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Response statuses with stable numeric codes.

use core::fmt;

/// The outcome of a request: the `status` field of the response header.
///
/// The codes are stable: a code is never reused for another meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// The request succeeded.
    Ok = 0,
    /// The object, invocation or function does not exist.
    NotFound = 1,
    /// This VM's function may not do this (object, URL or callee outside its grants).
    PermissionDenied = 2,
    /// The request broke the protocol; the meta area holds a message.
    InvalidRequest = 3,
    /// Something does not fit: `total` is the payload capacity needed (or, for a request that
    /// is itself too large, the most the backend accepts), `detail` the meta capacity needed.
    TooLarge = 4,
    /// The storage service or remote peer could not be reached.
    BackendUnavailable = 5,
    /// An upload failed for good; the meta area holds the object key, `detail` the number of
    /// failed uploads.
    UploadFailed = 6,
    /// The operation's deadline passed.
    Timeout = 7,
    /// The backend failed in a way that is not the guest's fault.
    Internal = 8,
    /// The request header's version is not spoken by the backend; `detail` is the version the
    /// backend speaks.
    UnsupportedVersion = 9,
    /// The VM went over a rate limit the backend sets for it (such as LOG records per
    /// second); the request was not performed. The meta area holds a message. Trying again
    /// later may succeed.
    Throttled = 10,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::NotFound,
        Status::PermissionDenied,
        Status::InvalidRequest,
        Status::TooLarge,
        Status::BackendUnavailable,
        Status::UploadFailed,
        Status::Timeout,
        Status::Internal,
        Status::UnsupportedVersion,
        Status::Throttled,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The status with this wire code.
    pub const fn from_code(code: u16) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::PermissionDenied,
            3 => Status::InvalidRequest,
            4 => Status::TooLarge,
            5 => Status::BackendUnavailable,
            6 => Status::UploadFailed,
            7 => Status::Timeout,
            8 => Status::Internal,
            9 => Status::UnsupportedVersion,
            10 => Status::Throttled,
            _ => return None,
        })
    }

    /// Whether this is [`Status::Ok`].
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }

    /// The upper-case name used in the specification.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::PermissionDenied => "PERMISSION_DENIED",
            Status::InvalidRequest => "INVALID_REQUEST",
            Status::TooLarge => "TOO_LARGE",
            Status::BackendUnavailable => "BACKEND_UNAVAILABLE",
            Status::UploadFailed => "UPLOAD_FAILED",
            Status::Timeout => "TIMEOUT",
            Status::Internal => "INTERNAL",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Status::Throttled => "THROTTLED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_in_order() {
        for (index, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status.code() as usize, index);
            assert_eq!(Status::from_code(status.code()), Some(*status));
        }
        assert_eq!(Status::from_code(Status::ALL.len() as u16), None);
        assert_eq!(Status::Throttled.code(), 10);
        assert_eq!(Status::Throttled.name(), "THROTTLED");
    }
}
