// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Operations, their typed arguments and their segment rules.

use core::fmt;

use crate::error::{Error, Result};
use crate::limits::{
    MAX_FUNCTION_NAME_LEN, MAX_KEY_LEN, MAX_LIST_ENTRIES, MAX_LOG_LEN, MAX_META_LEN,
    MAX_PAYLOAD_LEN, MAX_TOKEN_LEN, MAX_URL_LEN,
};
use crate::records::{INVOCATION_CONTEXT_MAX_LEN, OBJECT_INFO_MAX_LEN};

/// Flag bits of the request header, per op. A bit an op does not define must be 0.
pub mod flags {
    /// COMPLETE: the function failed; the payload is its error document.
    pub const COMPLETE_ERROR: u32 = 1 << 0;
    /// COMPLETE: the result (still the payload) is already stored at the invocation's output
    /// key, by a PUT this guest made before the COMPLETE; the backend does not store it
    /// again. Only with a success ([`COMPLETE_ERROR`] clear).
    pub const COMPLETE_STORED: u32 = 1 << 1;
    /// PUT: write-behind. The backend copies the payload out of the window and answers at
    /// once; the upload happens later. FLUSH waits for it.
    pub const PUT_WRITE_BEHIND: u32 = 1 << 0;
    /// INVOKE: asynchronous. Answered once the invocation is accepted; no result comes back.
    pub const INVOKE_ASYNC: u32 = 1 << 0;
}

/// An operation: the `op` field of the request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Op {
    /// Wait for the next invocation. The response meta area receives the
    /// [`InvocationContext`](crate::records::InvocationContext), the payload buffers its input.
    Next = 1,
    /// Report the current invocation's result (or, with [`flags::COMPLETE_ERROR`], its error).
    Complete = 2,
    /// Read an object, whole or a byte range, straight into the response payload buffers.
    Get = 3,
    /// Write an object from the payload segments; synchronous, or write-behind with
    /// [`flags::PUT_WRITE_BEHIND`].
    Put = 4,
    /// Read an object's metadata (size, modification time, entity tag).
    Head = 5,
    /// Delete an object.
    Delete = 6,
    /// List objects under a prefix, one page at a time.
    List = 7,
    /// Call another function.
    Invoke = 8,
    /// Make an HTTP request through the backend's shared client.
    Http = 9,
    /// Wait until every write-behind upload of this VM is durable.
    Flush = 10,
    /// Send function log lines to the host.
    Log = 11,
}

/// What an op allows in each part of the chain. Lengths are in bytes, both bounds inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRules {
    /// Least key length (0: the key segment may be absent).
    pub key_min: u32,
    /// Greatest key length (0: no key segment).
    pub key_max: u32,
    /// Greatest request meta length (0: no meta segment).
    pub meta_max: u32,
    /// Least request payload length.
    pub payload_min: u32,
    /// Greatest request payload length (0: no payload segments).
    pub payload_max: u32,
    /// Whether response payload buffers may follow the response head.
    pub response_payload: bool,
    /// Least capacity of the response meta area.
    pub response_meta_min: u32,
}

impl OpRules {
    const NONE: OpRules = OpRules {
        key_min: 0,
        key_max: 0,
        meta_max: 0,
        payload_min: 0,
        payload_max: 0,
        response_payload: false,
        response_meta_min: 0,
    };
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Op; 11] = [
        Op::Next,
        Op::Complete,
        Op::Get,
        Op::Put,
        Op::Head,
        Op::Delete,
        Op::List,
        Op::Invoke,
        Op::Http,
        Op::Flush,
        Op::Log,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The op with this wire code.
    pub const fn from_code(code: u16) -> Option<Op> {
        Some(match code {
            1 => Op::Next,
            2 => Op::Complete,
            3 => Op::Get,
            4 => Op::Put,
            5 => Op::Head,
            6 => Op::Delete,
            7 => Op::List,
            8 => Op::Invoke,
            9 => Op::Http,
            10 => Op::Flush,
            11 => Op::Log,
            _ => return None,
        })
    }

    /// The upper-case name used in the specification.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Next => "NEXT",
            Op::Complete => "COMPLETE",
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Head => "HEAD",
            Op::Delete => "DELETE",
            Op::List => "LIST",
            Op::Invoke => "INVOKE",
            Op::Http => "HTTP",
            Op::Flush => "FLUSH",
            Op::Log => "LOG",
        }
    }

    /// The flag bits this op defines.
    pub const fn allowed_flags(self) -> u32 {
        match self {
            Op::Complete => flags::COMPLETE_ERROR | flags::COMPLETE_STORED,
            Op::Put => flags::PUT_WRITE_BEHIND,
            Op::Invoke => flags::INVOKE_ASYNC,
            _ => 0,
        }
    }

    /// The segment rules of this op (see the table in `docs/protocol.md`).
    pub const fn rules(self) -> OpRules {
        match self {
            Op::Next => OpRules {
                response_payload: true,
                response_meta_min: INVOCATION_CONTEXT_MAX_LEN,
                ..OpRules::NONE
            },
            Op::Complete => OpRules {
                payload_max: MAX_PAYLOAD_LEN,
                ..OpRules::NONE
            },
            Op::Get => OpRules {
                key_min: 1,
                key_max: MAX_KEY_LEN,
                response_payload: true,
                ..OpRules::NONE
            },
            Op::Put => OpRules {
                key_min: 1,
                key_max: MAX_KEY_LEN,
                payload_max: MAX_PAYLOAD_LEN,
                ..OpRules::NONE
            },
            Op::Head => OpRules {
                key_min: 1,
                key_max: MAX_KEY_LEN,
                response_meta_min: OBJECT_INFO_MAX_LEN,
                ..OpRules::NONE
            },
            Op::Delete => OpRules {
                key_min: 1,
                key_max: MAX_KEY_LEN,
                ..OpRules::NONE
            },
            Op::List => OpRules {
                key_max: MAX_KEY_LEN,
                meta_max: MAX_TOKEN_LEN,
                response_payload: true,
                response_meta_min: MAX_TOKEN_LEN,
                ..OpRules::NONE
            },
            Op::Invoke => OpRules {
                key_min: 1,
                key_max: MAX_FUNCTION_NAME_LEN,
                payload_max: MAX_PAYLOAD_LEN,
                response_payload: true,
                ..OpRules::NONE
            },
            Op::Http => OpRules {
                key_min: 1,
                key_max: MAX_URL_LEN,
                meta_max: MAX_META_LEN,
                payload_max: MAX_PAYLOAD_LEN,
                response_payload: true,
                ..OpRules::NONE
            },
            Op::Flush => OpRules {
                response_meta_min: MAX_KEY_LEN,
                ..OpRules::NONE
            },
            Op::Log => OpRules {
                payload_min: 1,
                payload_max: MAX_LOG_LEN,
                ..OpRules::NONE
            },
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An HTTP method (HTTP `arg0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HttpMethod {
    /// `GET`
    Get = 1,
    /// `HEAD`
    Head = 2,
    /// `POST`
    Post = 3,
    /// `PUT`
    Put = 4,
    /// `DELETE`
    Delete = 5,
    /// `PATCH`
    Patch = 6,
    /// `OPTIONS`
    Options = 7,
}

impl HttpMethod {
    /// Every method, in code order.
    pub const ALL: [HttpMethod; 7] = [
        HttpMethod::Get,
        HttpMethod::Head,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Delete,
        HttpMethod::Patch,
        HttpMethod::Options,
    ];

    /// The wire code.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The method with this wire code.
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => HttpMethod::Get,
            2 => HttpMethod::Head,
            3 => HttpMethod::Post,
            4 => HttpMethod::Put,
            5 => HttpMethod::Delete,
            6 => HttpMethod::Patch,
            7 => HttpMethod::Options,
            _ => return None,
        })
    }

    /// The method token, as sent on the wire by HTTP.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Options => "OPTIONS",
        }
    }
}

/// A log level (LOG `arg0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    /// Errors.
    Error = 0,
    /// Warnings.
    Warn = 1,
    /// Information.
    Info = 2,
    /// Debugging detail.
    Debug = 3,
    /// Tracing detail.
    Trace = 4,
}

impl LogLevel {
    /// Every level, in code order.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The wire code.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The level with this wire code.
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            4 => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// How a function invocation ended: COMPLETE's error flag, INVOKE's response `detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// The function returned a result.
    Success = 0,
    /// The function failed; the payload is its error document.
    Error = 1,
}

impl Outcome {
    /// The wire code (INVOKE response `detail`).
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The outcome with this wire code.
    pub const fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Outcome::Success),
            1 => Some(Outcome::Error),
            _ => None,
        }
    }
}

/// An op with its typed arguments: the `op`, `flags`, `arg0` and `arg1` header fields.
///
/// Each command maps to exactly one `(op, flags, arg0, arg1)` tuple; fields an op does not use
/// must be zero on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// NEXT. `arg0` = `timeout_ms` (0: wait as long as it takes).
    Next {
        /// How long the backend may park the request before answering TIMEOUT.
        timeout_ms: u64,
    },
    /// COMPLETE. `arg0` = `invocation`; flag [`flags::COMPLETE_ERROR`] when `outcome` is
    /// [`Outcome::Error`], flag [`flags::COMPLETE_STORED`] when `stored` (never with an
    /// error: such a header is refused).
    Complete {
        /// The invocation number from the invocation context.
        invocation: u64,
        /// Whether the payload is a result or an error document.
        outcome: Outcome,
        /// The guest stored the result at the invocation's output key itself.
        stored: bool,
    },
    /// GET. `arg0` = `offset`, `arg1` = `max_len` (0: as much as the buffers hold).
    Get {
        /// First byte of the object to read.
        offset: u64,
        /// Most bytes to read; 0 means no limit beyond the response buffers' capacity.
        max_len: u64,
    },
    /// PUT. Flag [`flags::PUT_WRITE_BEHIND`] when `write_behind`.
    Put {
        /// Answer once the payload is copied, upload later.
        write_behind: bool,
    },
    /// HEAD.
    Head,
    /// DELETE.
    Delete,
    /// LIST. `arg0` = `max_entries` (0: [`MAX_LIST_ENTRIES`]).
    List {
        /// Most entries in the page, at most [`MAX_LIST_ENTRIES`].
        max_entries: u32,
    },
    /// INVOKE. `arg0` = `timeout_ms` (0: the backend's default); flag
    /// [`flags::INVOKE_ASYNC`] when `asynchronous`.
    Invoke {
        /// How long to wait for the callee's result.
        timeout_ms: u64,
        /// Do not wait for the result.
        asynchronous: bool,
    },
    /// HTTP. `arg0` = method code, `arg1` = `timeout_ms` (0: the backend's default).
    Http {
        /// The request method.
        method: HttpMethod,
        /// How long to wait for the response.
        timeout_ms: u64,
    },
    /// FLUSH. `arg0` = `timeout_ms` (0: wait as long as it takes).
    Flush {
        /// How long to wait for durability before answering TIMEOUT.
        timeout_ms: u64,
    },
    /// LOG. `arg0` = level code.
    Log {
        /// The level of every line in the payload.
        level: LogLevel,
    },
}

impl Command {
    /// The op of this command.
    pub const fn op(&self) -> Op {
        match self {
            Command::Next { .. } => Op::Next,
            Command::Complete { .. } => Op::Complete,
            Command::Get { .. } => Op::Get,
            Command::Put { .. } => Op::Put,
            Command::Head => Op::Head,
            Command::Delete => Op::Delete,
            Command::List { .. } => Op::List,
            Command::Invoke { .. } => Op::Invoke,
            Command::Http { .. } => Op::Http,
            Command::Flush { .. } => Op::Flush,
            Command::Log { .. } => Op::Log,
        }
    }

    /// The `(flags, arg0, arg1)` header fields of this command.
    pub const fn raw(&self) -> (u32, u64, u64) {
        const fn bit(set: bool, flag: u32) -> u32 {
            if set { flag } else { 0 }
        }
        match *self {
            Command::Next { timeout_ms } => (0, timeout_ms, 0),
            Command::Complete {
                invocation,
                outcome,
                stored,
            } => (
                bit(matches!(outcome, Outcome::Error), flags::COMPLETE_ERROR)
                    | bit(stored, flags::COMPLETE_STORED),
                invocation,
                0,
            ),
            Command::Get { offset, max_len } => (0, offset, max_len),
            Command::Put { write_behind } => (bit(write_behind, flags::PUT_WRITE_BEHIND), 0, 0),
            Command::Head | Command::Delete => (0, 0, 0),
            Command::List { max_entries } => (0, max_entries as u64, 0),
            Command::Invoke {
                timeout_ms,
                asynchronous,
            } => (bit(asynchronous, flags::INVOKE_ASYNC), timeout_ms, 0),
            Command::Http { method, timeout_ms } => (0, method.code(), timeout_ms),
            Command::Flush { timeout_ms } => (0, timeout_ms, 0),
            Command::Log { level } => (0, level.code(), 0),
        }
    }

    /// Rebuilds a command from its header fields, refusing undefined flags and arguments.
    pub fn from_raw(op: Op, flags: u32, arg0: u64, arg1: u64) -> Result<Self> {
        if flags & !op.allowed_flags() != 0 {
            return Err(Error::InvalidFlags { op, flags });
        }
        let bad = |index: u8, value: u64| Error::InvalidArgument { op, index, value };
        // Ops that do not use arg1 require it to be zero; likewise arg0.
        let uses_arg1 = matches!(op, Op::Get | Op::Http);
        if !uses_arg1 && arg1 != 0 {
            return Err(bad(1, arg1));
        }
        let set = flags != 0;
        let command = match op {
            Op::Next => Command::Next { timeout_ms: arg0 },
            // A result stored at the output key is a success's.
            Op::Complete if flags == flags::COMPLETE_ERROR | flags::COMPLETE_STORED => {
                return Err(Error::InvalidFlags { op, flags });
            }
            Op::Complete => Command::Complete {
                invocation: arg0,
                outcome: if flags & flags::COMPLETE_ERROR != 0 {
                    Outcome::Error
                } else {
                    Outcome::Success
                },
                stored: flags & flags::COMPLETE_STORED != 0,
            },
            Op::Get => Command::Get {
                offset: arg0,
                max_len: arg1,
            },
            Op::Put | Op::Head | Op::Delete if arg0 != 0 => return Err(bad(0, arg0)),
            Op::Put => Command::Put { write_behind: set },
            Op::Head => Command::Head,
            Op::Delete => Command::Delete,
            Op::List => match u32::try_from(arg0) {
                Ok(max_entries) if max_entries <= MAX_LIST_ENTRIES => Command::List { max_entries },
                _ => return Err(bad(0, arg0)),
            },
            Op::Invoke => Command::Invoke {
                timeout_ms: arg0,
                asynchronous: set,
            },
            Op::Http => Command::Http {
                method: HttpMethod::from_code(arg0).ok_or(bad(0, arg0))?,
                timeout_ms: arg1,
            },
            Op::Flush => Command::Flush { timeout_ms: arg0 },
            Op::Log => Command::Log {
                level: LogLevel::from_code(arg0).ok_or(bad(0, arg0))?,
            },
        };
        Ok(command)
    }
}
