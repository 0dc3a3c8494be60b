// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! poll(2) and recvmsg(2): the only `unsafe` code of this crate.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
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

/// Reads into `buf` from `stream`, with the descriptor that came with the data if one did
/// (`SCM_RIGHTS`; it is close-on-exec). `nonblocking`: only what is there now
/// (`WouldBlock` if nothing is). Returns the bytes read (0: the peer closed).
pub(crate) fn recv_with_fd(
    stream: &UnixStream,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for one descriptor's control message (CMSG_SPACE(sizeof(int)) is 24 on Linux);
    // u64s keep it aligned for cmsghdr.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points at `iov` (which covers exactly `buf`, borrowed mutably) and at
    // `control`, both alive for the call; the kernel writes only into them and into `msg`.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut file = None;
    // SAFETY: `msg` was filled by recvmsg above; CMSG_FIRSTHDR/NXTHDR only read within
    // `msg_control`/`msg_controllen`, which the kernel set to what it wrote into `control`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a non-null header inside `control` (see above).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the data of an SCM_RIGHTS message is `count` descriptors, within
                // `control`; read unaligned, as CMSG_DATA gives no alignment promise.
                let fd = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i))
                };
                // SAFETY: the kernel installed `fd` in this process for us: we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // One descriptor is expected; any more are closed here.
                if file.is_none() {
                    file = Some(owned);
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n as usize, file))
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
