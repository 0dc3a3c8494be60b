// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Thread-start hooks of the VMM side's threads.
//!
//! The VMM's crates start threads of their own: vCPU threads and [`VcpuPool`] workers, the
//! pool's monitor, and device threads (nexus-io's backend monitor, nexus-net's event loop,
//! nexus-snapshot's page-fault handler and prefetcher). A binary that wants to prepare each
//! such thread before it runs anything — install a seccomp filter for its kind, say — sets a
//! hook per [`ThreadRole`]; every such thread calls its role's hook first. With no hook set
//! (the default) nothing is called.
//!
//! [`VcpuPool`]: crate::pool::VcpuPool

use std::sync::{Arc, PoisonError, RwLock};

/// A thread-start hook: called first on each new thread of its role.
pub type ThreadStart = Arc<dyn Fn() + Send + Sync>;

/// The roles of the VMM side's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// A vCPU's own thread ([`Vcpu::spawn`](crate::vcpu::Vcpu::spawn)) or a
    /// [`VcpuPool`](crate::pool::VcpuPool) worker.
    Vcpu,
    /// A [`VcpuPool`](crate::pool::VcpuPool)'s monitor.
    PoolMonitor,
    /// A device's thread: event loops, page-fault handlers, prefetchers.
    Device,
}

static HOOKS: RwLock<[Option<ThreadStart>; 3]> = RwLock::new([None, None, None]);

fn index(role: ThreadRole) -> usize {
    match role {
        ThreadRole::Vcpu => 0,
        ThreadRole::PoolMonitor => 1,
        ThreadRole::Device => 2,
    }
}

/// Sets (or, with `None`, clears) the hook threads of `role` started from now on call first.
pub fn set_thread_start(role: ThreadRole, hook: Option<ThreadStart>) {
    let mut hooks = HOOKS.write().unwrap_or_else(PoisonError::into_inner);
    hooks[index(role)] = hook;
}

/// Calls `role`'s hook, if one is set: each thread of that role does, first thing.
pub fn thread_started(role: ThreadRole) {
    let hook = HOOKS.read().unwrap_or_else(PoisonError::into_inner)[index(role)].clone();
    if let Some(hook) = hook {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn hooks_run_on_their_role_only() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        thread_started(ThreadRole::PoolMonitor);
        set_thread_start(
            ThreadRole::PoolMonitor,
            Some(Arc::new(|| {
                CALLS.fetch_add(1, Ordering::SeqCst);
            })),
        );
        std::thread::spawn(|| thread_started(ThreadRole::PoolMonitor))
            .join()
            .unwrap();
        thread_started(ThreadRole::Device);
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        set_thread_start(ThreadRole::PoolMonitor, None);
        thread_started(ThreadRole::PoolMonitor);
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    }
}
