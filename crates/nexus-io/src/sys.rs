// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! poll(2): the only `unsafe` code of this crate.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// The peer closed the connection, or the descriptor is in error.
pub(crate) const HANGUP: i16 = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
/// Readable.
pub(crate) const READABLE: i16 = libc::POLLIN;

/// One descriptor to wait on, borrowed from its owner for the duration of the poll.
#[derive(Debug)]
pub(crate) struct PollFd<'a> {
    fd: RawFd,
    events: i16,
    revents: i16,
    owner: PhantomData<&'a ()>,
}

impl<'a> PollFd<'a> {
    /// Waits for `events` on `owner`'s descriptor (`POLLHUP`, `POLLERR` and `POLLNVAL` are
    /// always reported).
    pub(crate) fn new<F: AsRawFd + ?Sized>(owner: &'a F, events: i16) -> Self {
        PollFd {
            fd: owner.as_raw_fd(),
            events,
            revents: 0,
            owner: PhantomData,
        }
    }

    /// Whether any of `events` happened.
    pub(crate) fn has(&self, events: i16) -> bool {
        self.revents & events != 0
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: forever). Returns how many
/// are ready; an interrupted wait is an `Interrupted` error.
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let mut raw: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_millis()).unwrap_or(i32::MAX),
    };
    // SAFETY: `raw` is a valid, exclusively borrowed array of `raw.len()` pollfd structs, the
    // only memory the kernel reads and writes (just the `revents` fields). Every descriptor in
    // it belongs to an owner that `fds` borrows, so it stays open until the call returns (and
    // a descriptor closed anyway is reported as POLLNVAL, never a memory error).
    let n = unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for (p, r) in fds.iter_mut().zip(&raw) {
        p.revents = r.revents;
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn reports_data_hangup_and_timeout() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let mut fds = [PollFd::new(&b, HANGUP)];
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(20))).unwrap(), 0);
        assert!(start.elapsed() >= Duration::from_millis(15));
        // Data alone is not a hang-up.
        a.write_all(b"x").unwrap();
        let mut fds = [PollFd::new(&b, HANGUP)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
        let mut fds = [PollFd::new(&b, READABLE)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        assert!(fds[0].has(READABLE));
        drop(a);
        let mut fds = [PollFd::new(&b, HANGUP)];
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert!(fds[0].has(HANGUP));
    }
}
