// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Invocations: what the node daemon queues for a VM (NEXT/COMPLETE), and the hook through
//! which a function calls another one (INVOKE).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use nexus_ring::Outcome;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// One invocation of the function running in a VM, as the node daemon describes it. The
/// backend numbers it and hands it to the VM's next `NEXT` request as an invocation context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The function's name (1 to 256 bytes).
    pub function: String,
    /// The platform's request id, for logs (at most 256 bytes; may be empty).
    pub request_id: String,
    /// Unix time in milliseconds by which the function must complete (0: none).
    pub deadline_ms: u64,
    /// The caller accepts completion before the function's write-behind uploads are durable.
    pub async_durability: bool,
    /// Where the caller wants the result stored (an object key of the VM's tenant), if
    /// anywhere. A guest that understands the field receives it in its invocation context and
    /// may store the result there itself ([`InvocationResult::stored_len`]).
    pub output_key: Option<String>,
    /// With an output key: whether the caller wants the result's bytes back too. When not,
    /// and the guest stored the result itself, the backend does not read it out of the
    /// window at all ([`InvocationResult::output`] is then empty). Without an output key the
    /// result always comes back.
    pub return_output: bool,
}

/// The input of an invocation, delivered in the payload of the VM's `NEXT` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvocationInput {
    /// Inline bytes.
    Bytes(Bytes),
    /// An object of the VM's tenant: the backend starts prefetching it when the invocation is
    /// queued and writes it into the window when the VM asks for its next invocation.
    Object(String),
}

/// How an invocation ended: what the function reported with `COMPLETE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvocationResult {
    /// Success (the output is the result) or error (the output is the error document).
    pub outcome: Outcome,
    /// The function's result or error document. Empty for a result the guest stored at the
    /// output key when the caller did not want it back ([`Invocation::return_output`]).
    pub output: Bytes,
    /// `Some(length)` when the guest stored the result (of that many bytes) at the
    /// invocation's output key itself (COMPLETE flag `STORED`, for an invocation whose
    /// context carried the key): whoever asked for the key must not store it again. Always
    /// `None` for an error.
    pub stored_len: Option<u64>,
}

/// The result of [`Backend::invoke`](crate::Backend::invoke): resolves once the function
/// completed and (unless the invocation asked for asynchronous durability) every write-behind
/// upload it made before completing is durable.
///
/// It fails with [`Error::UploadFailed`] (naming the object) if such an upload failed for
/// good, with [`Error::InputUnavailable`] if the input object could not be read, and with
/// [`Error::VmDetached`] if the VM went away first. Dropping it withdraws the invocation if
/// the VM has not taken it yet.
#[derive(Debug)]
pub struct PendingInvocation {
    pub(crate) number: u64,
    pub(crate) vm: String,
    pub(crate) result: oneshot::Receiver<Result<InvocationResult>>,
}

impl PendingInvocation {
    /// The backend's number for this invocation (the guest sees it in its invocation context).
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl Future for PendingInvocation {
    type Output = Result<InvocationResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let vm = self.vm.clone();
        Pin::new(&mut self.result)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(Error::VmDetached(vm))))
    }
}

/// A function's call of another function (the `INVOKE` op), as handed to the [`Invoker`].
#[derive(Clone, Debug)]
pub struct InvokeRequest {
    /// The calling VM.
    pub caller_vm: String,
    /// The calling VM's tenant.
    pub tenant: String,
    /// The callee's name.
    pub function: String,
    /// The callee's input.
    pub input: Bytes,
    /// The caller does not wait for the result (answer once accepted).
    pub asynchronous: bool,
}

/// Why an invocation through the [`Invoker`] did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No such function (`NOT_FOUND`).
    #[error("no such function: {0}")]
    NotFound(String),
    /// The caller may not invoke it (`PERMISSION_DENIED`).
    #[error("not allowed: {0}")]
    PermissionDenied(String),
    /// The function could not be run now (`BACKEND_UNAVAILABLE`).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Runs function invocations on behalf of functions (`INVOKE`). The node daemon registers
/// one with [`Backend::set_invoker`](crate::Backend::set_invoker); without one, `INVOKE`
/// answers `BACKEND_UNAVAILABLE`.
pub trait Invoker: Send + Sync + 'static {
    /// Runs `request`. For an asynchronous request, resolve as soon as it is accepted (with
    /// an empty result). The backend applies the caller's timeout.
    fn invoke(
        &self,
        request: InvokeRequest,
    ) -> BoxFuture<'static, std::result::Result<InvocationResult, InvokeError>>;
}
