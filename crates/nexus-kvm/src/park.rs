// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Parking a vCPU whose device access would block, instead of blocking its thread.
//!
//! Some device registers answer only once something happens outside the VM — nexus-io's
//! WAIT register returns when the backend has completed a request. A vCPU on a thread of its
//! own simply blocks in the device's read. A vCPU run by a [`VcpuPool`](crate::pool::VcpuPool)
//! must not: thousands of idle VMs would hold thousands of threads. So a device asks, with
//! [`wait_mode`], how the current vCPU thread wants it to wait:
//!
//! - [`WaitMode::Block`] (a vCPU on its own thread, the default): block, as before;
//! - [`WaitMode::Park`] (a pool worker): if the access cannot complete now, describe what
//!   would complete it with [`park`] and return at once. The vCPU then leaves its thread with
//!   the MMIO read still pending in KVM; the pool watches the descriptors and, when one is
//!   ready or the deadline passes, repeats the same read on a worker thread (where the device
//!   may park again) and completes it with the value it returns;
//! - [`WaitMode::Now`] (a vCPU being stopped): answer with what is there now.
//!
//! Everything here is per thread: a device's read runs on the vCPU's thread.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::Instant;

/// How a device that would block a vCPU's access should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Block the calling thread (a vCPU on a thread of its own).
    #[default]
    Block,
    /// Do not block: if the access cannot complete yet, call [`park`] and return.
    Park,
    /// Do not block and do not park: answer with what is there now.
    Now,
}

/// What readiness of a descriptor ends a park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The descriptor is readable (an eventfd signalled).
    Readable,
    /// The peer hung up (a connection), or an error.
    HangUp,
}

/// What completes a parked access: any of the descriptors ready, or the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkRequest {
    /// Descriptors to watch. They must stay open while the vCPU is parked: they belong to
    /// the device, which the parked vCPU's buses keep alive.
    pub fds: Vec<(RawFd, Readiness)>,
    /// When to repeat the access even if nothing is ready (`None`: never).
    pub deadline: Option<Instant>,
}

thread_local! {
    static MODE: Cell<WaitMode> = const { Cell::new(WaitMode::Block) };
    static REQUEST: RefCell<Option<ParkRequest>> = const { RefCell::new(None) };
}

/// How the current thread's vCPU wants a blocking device access to wait.
pub fn wait_mode() -> WaitMode {
    MODE.with(Cell::get)
}

/// Asks to park the current vCPU until `request` is satisfied, then repeat the access. The
/// caller returns from its read at once; the value it returns is not used. Ignored (with a
/// debug message) unless [`wait_mode`] is [`WaitMode::Park`].
pub fn park(request: ParkRequest) {
    if wait_mode() != WaitMode::Park {
        log::debug!("a device asked to park a vCPU that does not park");
        return;
    }
    REQUEST.with(|r| *r.borrow_mut() = Some(request));
}

/// Sets the current thread's wait mode; returns the previous one.
pub(crate) fn set_mode(mode: WaitMode) -> WaitMode {
    MODE.with(|m| m.replace(mode))
}

/// The park request the last access made, if any (taken).
pub(crate) fn take_request() -> Option<ParkRequest> {
    REQUEST.with(|r| r.borrow_mut().take())
}

/// Blocks the calling thread until `request` is satisfied — a descriptor ready, the deadline
/// passed — or a signal interrupts the wait (a vCPU being stopped is kicked with one).
pub(crate) fn wait_blocking(request: &ParkRequest) {
    let mut fds: Vec<libc::pollfd> = request
        .fds
        .iter()
        .map(|&(fd, readiness)| libc::pollfd {
            fd,
            events: match readiness {
                Readiness::Readable => libc::POLLIN,
                // POLLHUP and POLLERR are always reported.
                Readiness::HangUp => 0,
            },
            revents: 0,
        })
        .collect();
    let timeout = match request.deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
        }
        None => -1,
    };
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures that poll may write
    // `revents` into; the descriptors are the device's, open while its vCPU waits.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            log::warn!("A parked vCPU cannot poll its device: {e}");
        }
    }
}

/// Sets the current thread's wait mode for its lifetime, then puts the previous one back.
pub(crate) struct ModeGuard(WaitMode);

impl ModeGuard {
    pub(crate) fn set(mode: WaitMode) -> Self {
        ModeGuard(set_mode(mode))
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        set_mode(self.0);
        // A request left by an access that did not reach the vCPU loop is stale.
        take_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_park_request_is_kept_only_in_park_mode() {
        let request = ParkRequest {
            fds: vec![(3, Readiness::Readable)],
            deadline: None,
        };
        assert_eq!(wait_mode(), WaitMode::Block);
        park(request.clone());
        assert_eq!(take_request(), None);
        {
            let _mode = ModeGuard::set(WaitMode::Park);
            park(request.clone());
            assert_eq!(take_request(), Some(request.clone()));
            assert_eq!(take_request(), None);
            park(request);
        }
        assert_eq!(wait_mode(), WaitMode::Block);
        assert_eq!(take_request(), None, "the guard drops a stale request");
    }
}
