// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The exit events of a vhost-user daemon's worker threads, closed once the daemon is gone.
//!
//! vhost-user-backend 0.24 registers the consumer half of
//! [`VhostUserBackend::exit_event`](vhost_user_backend::VhostUserBackend::exit_event) with
//! its worker's epoll through `into_raw_fd()` and never closes it, so every daemon would leak
//! one eventfd — and the backend makes a daemon for every frontend connection of every VM, so
//! a long-running backend would run out of descriptors. [`ExitEvents`] makes the pairs,
//! remembers the consumers' descriptors, and closes them in [`close`](ExitEvents::close),
//! which the backend calls only after the daemon is dropped (its handler's `Drop` joins the
//! worker threads and closes their epolls first).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// The exit events handed to one daemon.
#[derive(Debug, Default)]
pub(crate) struct ExitEvents {
    consumers: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// A new exit event, for `VhostUserBackend::exit_event`.
    pub(crate) fn pair(&self) -> io::Result<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer.as_raw_fd());
        Ok((consumer, notifier))
    }

    /// Closes every consumer handed out. Call it once the daemon they were handed to is
    /// dropped, and only then.
    pub(crate) fn close(&self) {
        let consumers =
            std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|p| p.into_inner()));
        for fd in consumers {
            // SAFETY: `fd` is the descriptor of a consumer that `pair` handed to the daemon,
            // whose worker (vhost-user-backend 0.24, `VringEpollHandler::new`) took it with
            // `into_raw_fd()` as soon as it received it and never closes it; the daemon —
            // and with it the worker thread and its epoll, the only users of `fd` — is gone
            // (the caller's contract), so nothing else owns `fd` and taking ownership to
            // close it closes nothing but that eventfd. The exact version is pinned in
            // Cargo.toml for this reason.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}
