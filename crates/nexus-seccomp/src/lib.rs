// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Seccomp filters per thread kind for the Nexus hypervisor's processes.
//!
//! Every thread of the VMM / node daemon (`nexus-vmm`) and of the shared backend
//! (`nexus-backend`) is one [`ThreadKind`]; each kind has one allowlist filter, built with
//! [`seccompiler`], that lets through the system calls that kind of thread makes and traps
//! every other one. The libraries that spawn threads know nothing of seccomp: each takes an
//! optional thread-start hook, and the binaries pass [`thread_start`] of the right kind.
//!
//! - [`install`] applies a kind's filter to the **calling thread only** (no TSYNC), after
//!   `PR_SET_NO_NEW_PRIVS`. Linux stacks filters and a thread inherits its creator's: a
//!   thread can only add restrictions. A filter of the kind the thread already runs under
//!   (inherited from its creator, a pool worker that started another worker, say) is not
//!   stacked again, so chains stay short; [`current_kind`] tells which kind that is.
//! - A forbidden system call raises `SIGSYS` (`SeccompAction::Trap`). The reporter, a
//!   `SIGSYS` handler installed once per process, writes one line to standard error —
//!   `nexus: seccomp: thread <name> (kind <kind>) made forbidden syscall <nr> (<name>) args
//!   <a0>, <a1>, <a2>` (the call's first three arguments: an ioctl's request is `<a1>`) —
//!   then restores the default action and raises `SIGSYS` again, so the process dies by
//!   `SIGSYS`.
//! - Filters are built for x86_64, the architecture Nexus runs on.
//!
//! The allowlists, with the reason for each system call, are in the `filters` module; the
//! crate's `unsafe` code (the `prctl`/`sigaction` calls and the signal handler) in `sys`.

#![deny(missing_docs)]

mod filters;
mod sys;

use std::sync::Arc;

pub use filters::syscall_name;

/// The kinds of thread of Nexus's processes, one filter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread (`nexus-kvm`: a vCPU's own thread or a `VcpuPool` worker): `KVM_RUN`
    /// and the few other KVM ioctls its exits need, parking, device register accesses.
    Vcpu,
    /// The `VcpuPool` monitor: watches running vCPUs, kicks them, starts workers.
    VcpuMonitor,
    /// A device / event thread: the nexus-io event handler, the nexus-net event loop, the
    /// nexus-snapshot page-fault handler and prefetcher.
    Device,
    /// The node daemon's control plane: its HTTP / scheduler runtime and blocking pool (VM
    /// start and stop, snapshots, the network plane, which runs `ip`), and its main thread.
    /// It creates every other kind of thread of the node, so its filter allows all they do.
    NodeApi,
    /// The backend's engine: its tokio runtime (storage, HTTP, invocations, the control
    /// connections' tasks), its blocking pool, and the main thread that serves the control
    /// socket.
    BackendEngine,
    /// The backend's vhost-user event-loop threads.
    BackendEventLoop,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::VcpuMonitor,
        ThreadKind::Device,
        ThreadKind::NodeApi,
        ThreadKind::BackendEngine,
        ThreadKind::BackendEventLoop,
    ];

    /// The kind's name, as the SIGSYS report prints it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VcpuMonitor => "vcpu-monitor",
            ThreadKind::Device => "device",
            ThreadKind::NodeApi => "node-api",
            ThreadKind::BackendEngine => "backend-engine",
            ThreadKind::BackendEventLoop => "backend-event-loop",
        }
    }

    /// The kind of `name` (as [`name`](Self::name) spells it).
    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// A small number of the kind, carried by its filter's marker (see `sys::probe`).
    fn id(self) -> u32 {
        match self {
            ThreadKind::Vcpu => 1,
            ThreadKind::VcpuMonitor => 2,
            ThreadKind::Device => 3,
            ThreadKind::NodeApi => 4,
            ThreadKind::BackendEngine => 5,
            ThreadKind::BackendEventLoop => 6,
        }
    }

    fn from_id(id: u32) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.id() == id)
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter could not be built (a rule seccompiler refuses: a bug of this crate).
    #[error("cannot build the seccomp filter of thread kind {0}")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// The SIGSYS reporter could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Reporter(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of thread kind {0}")]
    Install(ThreadKind, #[source] seccompiler::Error),
}

/// A `Result` of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The BPF program of `kind`'s filter (the allowlist; traps everything else).
pub fn program(kind: ThreadKind) -> Result<seccompiler::BpfProgram> {
    filters::allowlist(kind)
}

/// Installs `kind`'s filter on the calling thread (only: threads it creates afterwards
/// inherit it; threads that exist already do not get it).
///
/// First installs the SIGSYS reporter (once per process) and sets `no_new_privs` (a
/// requirement of unprivileged filters, and what makes an `execve` unable to gain
/// privileges). Does nothing if the thread already runs under `kind`'s filter.
pub fn install(kind: ThreadKind) -> Result<()> {
    if current_kind() == Some(kind) {
        return Ok(());
    }
    let allow = filters::allowlist(kind)?;
    let marker = filters::marker(kind)?;
    sys::install_reporter().map_err(Error::Reporter)?;
    sys::set_no_new_privs().map_err(Error::NoNewPrivs)?;
    seccompiler::apply_filter(&marker).map_err(|e| Error::Install(kind, e))?;
    seccompiler::apply_filter(&allow).map_err(|e| Error::Install(kind, e))?;
    Ok(())
}

/// The kind of filter the calling thread runs under (the last installed), if any.
pub fn current_kind() -> Option<ThreadKind> {
    sys::probe().and_then(ThreadKind::from_id)
}

/// A thread-start hook for the libraries' thread spawns (`Arc<dyn Fn() + Send + Sync>`):
/// installs `kind`'s filter on the thread that calls it. A thread that cannot be filtered
/// must not run unfiltered: the hook then reports the error on standard error and aborts.
pub fn thread_start(kind: ThreadKind) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        if let Err(e) = install(kind) {
            let mut message = format!("nexus: seccomp: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            std::process::abort();
        }
    })
}
