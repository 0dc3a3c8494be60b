// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Thread-start hooks of the backend's threads.
//!
//! A binary that wants to prepare each of the backend's threads before it runs anything —
//! install a seccomp filter for its kind, say — sets a hook per [`ThreadRole`]:
//!
//! - [`ThreadRole::Engine`]: every thread of the runtime [`run`](crate::run) builds (its
//!   workers and blocking threads, through tokio's `on_thread_start`), and the thread that
//!   calls [`run`](crate::run), which serves the control socket, once the backend is set up
//!   (just before it starts serving). A caller that builds its own runtime passes
//!   [`engine_thread_start`] to its builder's `on_thread_start`.
//! - [`ThreadRole::EventLoop`]: each vhost-user event-loop thread, first thing.
//!
//! With no hook set (the default) nothing is called.

use std::sync::{Arc, PoisonError, RwLock};

/// A thread-start hook: called first on each new thread of its role.
pub type ThreadStart = Arc<dyn Fn() + Send + Sync>;

/// The roles of the backend's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The I/O engine: the tokio runtime's threads and the control thread.
    Engine,
    /// A vhost-user event-loop thread.
    EventLoop,
}

static HOOKS: RwLock<[Option<ThreadStart>; 2]> = RwLock::new([None, None]);

fn index(role: ThreadRole) -> usize {
    match role {
        ThreadRole::Engine => 0,
        ThreadRole::EventLoop => 1,
    }
}

/// Sets (or, with `None`, clears) the hook threads of `role` started from now on call first.
pub fn set_thread_start(role: ThreadRole, hook: Option<ThreadStart>) {
    let mut hooks = HOOKS.write().unwrap_or_else(PoisonError::into_inner);
    hooks[index(role)] = hook;
}

/// Calls `role`'s hook, if one is set.
pub fn thread_started(role: ThreadRole) {
    let hook = HOOKS.read().unwrap_or_else(PoisonError::into_inner)[index(role)].clone();
    if let Some(hook) = hook {
        hook();
    }
}

/// The engine's hook as a tokio `on_thread_start` callback (calls whatever hook is set when
/// each thread starts).
pub fn engine_thread_start() -> impl Fn() + Send + Sync + 'static {
    || thread_started(ThreadRole::Engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_engine_runtime_calls_the_engine_hook_on_its_threads() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        set_thread_start(
            ThreadRole::Engine,
            Some(Arc::new(|| {
                CALLS.fetch_add(1, Ordering::SeqCst);
            })),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(engine_thread_start())
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::task::spawn_blocking(|| ()).await.unwrap();
        });
        drop(runtime);
        // Two workers and at least one blocking thread; the event loop's hook is not called.
        thread_started(ThreadRole::EventLoop);
        assert!(CALLS.load(Ordering::SeqCst) >= 3);
        set_thread_start(ThreadRole::Engine, None);
    }
}
