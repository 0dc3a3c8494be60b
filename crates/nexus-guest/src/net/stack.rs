// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The TCP/IP stack: smoltcp over a [`Link`], polled from an executor-free loop.
//!
//! [`NetStack`] owns the link, the smoltcp interface (a static IPv4 address, prefix and
//! default gateway) and the sockets. [`Net`] shares it (`Rc<RefCell<…>>`: one vCPU, no
//! interrupts) between the HTTP client, the invocation server and the function.
//!
//! Blocking is *poll, then wait*: poll the interface (receive everything the device has,
//! then send what the sockets want), ring the doorbells, check what the caller waits for,
//! and only if the poll made no progress sleep in the link's WAIT register until a frame
//! arrives or a transmission completes. Tuning, as a competent baseline would have it:
//!
//! - Nagle off on every socket (requests are written whole; nothing is worth delaying);
//! - receive and transmit buffers of [`NetConfig::tcp_buffer`] (256 KiB by default), which
//!   smoltcp advertises with window scaling;
//! - no delayed-ACK timer: the WAIT register has no per-read timeout, so a 10 ms timer could
//!   sleep for the device's whole timeout; ACKs still go out once per poll, after the whole
//!   batch of received frames, so a burst is acknowledged by one segment;
//! - checksums as negotiated with the device (see [`VirtioNet`](super::VirtioNet)).
//!
//! The stack's random numbers (initial sequence numbers, ephemeral ports) come from a seed;
//! [`NetStack::reseed`] replaces it after a snapshot restore and drops every connection
//! (their peers knew the VM before the snapshot). A stack that watches the VM generation
//! record ([`NetStack::watch_generation`], `docs/micro-guest-abi.md`) does so by itself: at
//! every poll it reads the record's generation (a memory read), and when it changed — the VM
//! was restored — it reseeds with the hardware's entropy mixed with the record's seed and
//! takes the record's address and gateway, if it gives them, before it handles a frame.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, Ipv4Cidr};

use super::config::NetConfig;
use super::entropy::{SplitMix, hardware_seed, mix};
use super::error::{NetError, Result};
use super::link::{Clock, Link};
use super::transport::{Connector, Transport};
use crate::generation::{Generation, GenerationSource};

/// How long [`Net::connect`] waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection waits for the peer to send or accept data.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// First port of the ephemeral range (IANA's dynamic ports).
const EPHEMERAL_START: u16 = 49152;

/// The stack's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Polls of the interface.
    pub polls: u64,
    /// Waits on the link (WAIT register reads, for the virtio-net link).
    pub waits: u64,
    /// TCP connections opened.
    pub connects: u64,
    /// Connections accepted by listeners.
    pub accepts: u64,
    /// Reseeds.
    pub reseeds: u64,
    /// New VM generations taken (restores noticed: each reseeded, and re-addressed if the
    /// record said so).
    pub renewals: u64,
}

/// The stack: link, interface and sockets.
pub struct NetStack<L: Link> {
    link: L,
    iface: Interface,
    sockets: SocketSet<'static>,
    clock: Box<dyn Clock>,
    config: NetConfig,
    ports: SplitMix,
    /// Bumped by every reseed: handles of an older epoch are gone.
    epoch: u64,
    /// Sockets closed by their owners, removed once the close is done.
    closing: Vec<SocketHandle>,
    /// Whether the last poll changed anything.
    progressed: bool,
    /// The VM generation record, if the stack watches one, and the generation it runs in.
    generation: Option<Box<dyn GenerationSource>>,
    generation_seen: u64,
    stats: StackStats,
}

impl<L: Link> fmt::Debug for NetStack<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetStack")
            .field("config", &self.config)
            .field("epoch", &self.epoch)
            .field("generation", &self.generation_seen)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<L: Link> NetStack<L> {
    /// A stack over `link` with the address of `config`, timed by `clock`, its random
    /// numbers from `seed`.
    pub fn new(mut link: L, config: NetConfig, clock: Box<dyn Clock>, seed: u64) -> Self {
        let iface = Self::interface(&mut link, &config, clock.now(), seed);
        Self {
            link,
            iface,
            sockets: SocketSet::new(Vec::new()),
            clock,
            config,
            ports: SplitMix::new(mix(seed, 0x706F_7274)),
            epoch: 0,
            closing: Vec::new(),
            progressed: false,
            generation: None,
            generation_seen: 0,
            stats: StackStats::default(),
        }
    }

    /// Watches the VM generation record of `source`: the generation it holds now is the one
    /// the stack runs in; from then on every [`poll`](Self::poll) checks it first and takes a
    /// new one ([`renew`](Self::renew)).
    pub fn watch_generation(&mut self, source: Box<dyn GenerationSource>) {
        self.generation_seen = source.read().map_or(0, |record| record.generation);
        self.generation = Some(source);
    }

    /// The VM generation the stack runs in (0 at boot, or without a record).
    pub fn generation(&self) -> u64 {
        self.generation_seen
    }

    /// Takes a new VM generation: the record's address (and prefix) and gateway when it
    /// gives them, then a reseed from the hardware's entropy mixed with the record's seed —
    /// every connection and listening socket dropped (see [`reseed`](Self::reseed)).
    pub fn renew(&mut self, record: &Generation) {
        if let Some((address, prefix_len)) = record.address {
            self.config.address = address;
            self.config.prefix_len = prefix_len;
        }
        if let Some(gateway) = record.gateway {
            self.config.gateway = Some(gateway);
        }
        let extra = mix(self.config.seed.unwrap_or(0), record.seed);
        self.reseed(hardware_seed(extra));
        self.generation_seen = record.generation;
        self.stats.renewals += 1;
    }

    /// Reads the generation record, if watched, and renews on a new generation; whether it
    /// did.
    fn check_generation(&mut self) -> bool {
        let record = match &self.generation {
            Some(source) => source.read(),
            None => return false,
        };
        match record.filter(|r| r.generation != self.generation_seen) {
            Some(record) => {
                self.renew(&record);
                true
            }
            None => false,
        }
    }

    fn interface(link: &mut L, config: &NetConfig, now: Instant, seed: u64) -> Interface {
        let mac = EthernetAddress(link.mac());
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, link, now);
        let cidr = IpCidr::Ipv4(Ipv4Cidr::new(config.address, config.prefix_len));
        iface.update_ip_addrs(|addrs| {
            // One address: the list has room for it.
            let _ = addrs.push(cidr);
        });
        if let Some(gateway) = config.gateway {
            // Fails only when the route table is full; it is empty.
            let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        }
        iface
    }

    /// The link (its driver's counters, for one).
    pub fn link(&self) -> &L {
        &self.link
    }

    /// The link, mutable.
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The stack's counters.
    pub fn stats(&self) -> StackStats {
        self.stats
    }

    /// Monotonic time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Wall-clock time, Unix milliseconds, if known.
    pub fn unix_time_ms(&self) -> Option<u64> {
        self.clock.unix_time_ms()
    }

    /// The reseed epoch (handles of an older one are gone).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Polls the interface once (everything received, then everything the sockets want to
    /// send), rings the link's doorbells and removes sockets whose close is done. Returns
    /// whether anything may have changed. A watched generation record is checked first: a
    /// poll that takes a new generation does only that.
    pub fn poll(&mut self) -> Result<bool> {
        if self.check_generation() {
            // No frame is handled in the poll that renewed: the callers see the new epoch
            // first and listen again (the server does), so that a connection to the new
            // address that is already waiting finds the port open at the next poll.
            self.stats.polls += 1;
            self.progressed = true;
            return Ok(true);
        }
        self.stats.polls += 1;
        let now = self.clock.now();
        let result = self.iface.poll(now, &mut self.link, &mut self.sockets);
        self.link.flush()?;
        self.progressed = result == smoltcp::iface::PollResult::SocketStateChanged;
        self.reap_closed();
        Ok(self.progressed)
    }

    /// Waits for the link unless the last poll made progress and a socket wants to be
    /// polled again at once.
    pub fn wait(&mut self) -> Result<()> {
        let now = self.clock.now();
        let delay = self.iface.poll_delay(now, &self.sockets);
        if self.progressed && delay == Some(Duration::ZERO) {
            return Ok(());
        }
        self.stats.waits += 1;
        // The device sleeps no longer than the stack's next timer (a retransmission, say):
        // with no timer due, a parked guest wakes only for a frame or the device's timeout.
        self.link.hint_wait(delay.map(|d| d.total_millis()));
        self.link.wait()
    }

    fn reap_closed(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&handle| {
            let socket = sockets.get::<tcp::Socket<'_>>(handle);
            let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(handle);
            }
            !done
        });
    }

    /// Replaces the random seed — after a snapshot restore, so that VMs restored from one
    /// snapshot do not reuse initial sequence numbers and ephemeral ports — and drops every
    /// socket without a word to the peers (their connections belong to the VM that was
    /// snapshotted; a reset from each clone would break them for all). Their handles go
    /// stale: connections report [`NetError::Stale`], listeners open anew.
    pub fn reseed(&mut self, seed: u64) {
        let now = self.clock.now();
        self.iface = Self::interface(&mut self.link, &self.config, now, seed);
        self.ports = SplitMix::new(mix(seed, 0x706F_7274));
        let handles: Vec<SocketHandle> = self.sockets.iter().map(|(h, _)| h).collect();
        for handle in handles {
            self.sockets.remove(handle);
        }
        self.closing.clear();
        self.epoch += 1;
        self.stats.reseeds += 1;
    }

    /// A new TCP socket, tuned (buffers, Nagle off, no delayed ACK).
    fn new_socket(&mut self) -> SocketHandle {
        let size = self.config.tcp_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        self.sockets.add(socket)
    }

    /// The TCP socket `handle` of epoch `epoch`; [`NetError::Stale`] after a reseed.
    pub fn tcp(&mut self, handle: SocketHandle, epoch: u64) -> Result<&mut tcp::Socket<'static>> {
        if epoch != self.epoch {
            return Err(NetError::Stale);
        }
        Ok(self.sockets.get_mut::<tcp::Socket<'static>>(handle))
    }

    /// The socket of `connection` (tests look at its tuning).
    #[cfg(test)]
    pub(crate) fn tcp_for_test(
        &mut self,
        connection: &TcpConnection<L>,
    ) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(connection.handle)
    }

    /// An ephemeral port no socket uses.
    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let port = EPHEMERAL_START + (self.ports.next_u64() % 16384) as u16;
            let used = self.sockets.iter().any(|(_, socket)| match socket {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    tcp.local_endpoint().is_some_and(|e| e.port == port)
                        || tcp.listen_endpoint().port == port
                }
                #[allow(unreachable_patterns)]
                _ => false,
            });
            if !used {
                return port;
            }
        }
    }

    /// Starts connecting to `remote`; returns the socket (see [`Net::connect`]).
    fn start_connect(&mut self, remote: IpEndpoint) -> Result<SocketHandle> {
        let handle = self.new_socket();
        let port = self.ephemeral_port();
        let cx = self.iface.context();
        let socket = self.sockets.get_mut::<tcp::Socket<'static>>(handle);
        if let Err(error) = socket.connect(cx, remote, port) {
            self.sockets.remove(handle);
            return Err(NetError::Connect(match error {
                tcp::ConnectError::InvalidState => "socket busy",
                tcp::ConnectError::Unaddressable => "address unreachable",
            }));
        }
        self.stats.connects += 1;
        Ok(handle)
    }

    /// Closes socket `handle` (a FIN after what was queued), removing it once done.
    fn close(&mut self, handle: SocketHandle, epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        let socket = self.sockets.get_mut::<tcp::Socket<'static>>(handle);
        socket.close();
        self.closing.push(handle);
    }

    /// Removes socket `handle` at once, resetting its connection.
    fn abort(&mut self, handle: SocketHandle, epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        self.sockets.get_mut::<tcp::Socket<'static>>(handle).abort();
        // The reset goes out with the next poll; then the socket is closed and removed.
        self.closing.push(handle);
    }
}

/// The stack, shared by its users (one vCPU, no interrupts: a `RefCell` suffices).
pub struct Net<L: Link>(Rc<RefCell<NetStack<L>>>);

impl<L: Link> Clone for Net<L> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<L: Link> fmt::Debug for Net<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.try_borrow() {
            Ok(stack) => stack.fmt(f),
            Err(_) => f.write_str("Net(<in use>)"),
        }
    }
}

impl<L: Link> Net<L> {
    /// Shares `stack`.
    pub fn new(stack: NetStack<L>) -> Self {
        Self(Rc::new(RefCell::new(stack)))
    }

    /// Runs `f` on the stack. Panics if called from inside another `with` (a bug: the
    /// network's blocking calls never nest).
    pub fn with<T>(&self, f: impl FnOnce(&mut NetStack<L>) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }

    /// Polls and waits until `ready` returns `Some`, or `timeout` passes
    /// ([`NetError::Timeout`] naming `what`).
    pub fn block_until<T>(
        &self,
        timeout: Option<Duration>,
        what: &'static str,
        mut ready: impl FnMut(&mut NetStack<L>) -> Result<Option<T>>,
    ) -> Result<T> {
        let mut stack = self.0.borrow_mut();
        let deadline = timeout.map(|t| stack.now() + t);
        loop {
            stack.poll()?;
            if let Some(value) = ready(&mut stack)? {
                return Ok(value);
            }
            if deadline.is_some_and(|d| stack.now() >= d) {
                return Err(NetError::Timeout(what));
            }
            stack.wait()?;
        }
    }

    /// Polls once (lets the stack answer ARP, acknowledge, retransmit) without blocking.
    pub fn poll(&self) -> Result<bool> {
        self.0.borrow_mut().poll()
    }

    /// See [`NetStack::reseed`].
    pub fn reseed(&self, seed: u64) {
        self.0.borrow_mut().reseed(seed)
    }

    /// Opens a TCP connection to `address:port` (waits for the handshake).
    pub fn connect(&self, address: Ipv4Addr, port: u16) -> Result<TcpConnection<L>> {
        let (handle, epoch) = self.with(|stack| {
            let handle = stack.start_connect(IpEndpoint::new(address.into(), port))?;
            Ok::<_, NetError>((handle, stack.epoch))
        })?;
        let connection = TcpConnection {
            net: self.clone(),
            handle,
            epoch,
            timeout: IO_TIMEOUT,
        };
        self.block_until(Some(CONNECT_TIMEOUT), "TCP connect", |stack| {
            let socket = stack.tcp(handle, epoch)?;
            match socket.state() {
                tcp::State::Established => Ok(Some(())),
                tcp::State::SynSent | tcp::State::SynReceived => Ok(None),
                _ => Err(NetError::ConnectionReset),
            }
        })?;
        Ok(connection)
    }

    /// A listening socket on `port`.
    pub fn listen(&self, port: u16) -> Result<TcpListener<L>> {
        let mut listener = TcpListener {
            net: self.clone(),
            port,
            sockets: Vec::new(),
        };
        listener.refill()?;
        Ok(listener)
    }

    /// A new socket listening on `port`, and its epoch.
    fn listen_socket(&self, port: u16) -> Result<(SocketHandle, u64)> {
        self.with(|stack| {
            let handle = stack.new_socket();
            if stack
                .sockets
                .get_mut::<tcp::Socket<'static>>(handle)
                .listen(port)
                .is_err()
            {
                stack.sockets.remove(handle);
                return Err(NetError::Listen(port));
            }
            Ok((handle, stack.epoch))
        })
    }
}

/// A TCP connection of the stack; closed (FIN) when dropped.
#[derive(Debug)]
pub struct TcpConnection<L: Link> {
    net: Net<L>,
    handle: SocketHandle,
    epoch: u64,
    timeout: Duration,
}

impl<L: Link> TcpConnection<L> {
    /// The socket and its epoch.
    pub(crate) fn id(&self) -> (SocketHandle, u64) {
        (self.handle, self.epoch)
    }

    /// Sets how long a send or receive waits for the peer (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The connection's state.
    pub fn state(&self) -> Result<tcp::State> {
        self.net
            .with(|stack| stack.tcp(self.handle, self.epoch).map(|s| s.state()))
    }

    /// Resets the connection at once (instead of closing it gracefully on drop).
    pub fn abort(mut self) {
        self.net.with(|stack| stack.abort(self.handle, self.epoch));
        // No epoch is ever this one: the drop that follows leaves the socket alone.
        self.epoch = u64::MAX;
    }
}

impl<L: Link> Drop for TcpConnection<L> {
    fn drop(&mut self) {
        if let Ok(mut stack) = self.net.0.try_borrow_mut() {
            stack.close(self.handle, self.epoch);
        }
    }
}

impl<L: Link> Transport for TcpConnection<L> {
    fn send(&mut self, mut data: &[u8]) -> Result<()> {
        let (handle, epoch) = (self.handle, self.epoch);
        while !data.is_empty() {
            let sent = self
                .net
                .block_until(Some(self.timeout), "TCP send", |stack| {
                    let socket = stack.tcp(handle, epoch)?;
                    if !socket.may_send() {
                        return Err(NetError::ConnectionClosed("the peer closed the connection"));
                    }
                    match socket.send_slice(data) {
                        Ok(0) => Ok(None),
                        Ok(n) => Ok(Some(n)),
                        Err(_) => Err(NetError::ConnectionClosed("cannot send")),
                    }
                })?;
            data = &data[sent..];
            // Put what was queued on the wire before queueing more.
            self.net.poll()?;
        }
        Ok(())
    }

    fn recv(&mut self, consume: &mut dyn FnMut(&[u8]) -> usize) -> Result<usize> {
        let (handle, epoch) = (self.handle, self.epoch);
        self.net
            .block_until(Some(self.timeout), "TCP receive", |stack| {
                let socket = stack.tcp(handle, epoch)?;
                if socket.can_recv() {
                    let taken = socket
                        .recv(|bytes| {
                            let n = consume(bytes).min(bytes.len());
                            (n, n)
                        })
                        .map_err(|_| NetError::ConnectionClosed("cannot receive"))?;
                    return Ok(Some(taken));
                }
                if !socket.may_recv() {
                    return match socket.state() {
                        // A reset, not an orderly close.
                        tcp::State::Closed if socket.remote_endpoint().is_none() => {
                            Err(NetError::ConnectionReset)
                        }
                        _ => Ok(Some(0)),
                    };
                }
                Ok(None)
            })
    }

    fn flush(&mut self) -> Result<()> {
        let (handle, epoch) = (self.handle, self.epoch);
        self.net
            .block_until(Some(self.timeout), "TCP flush", |stack| {
                let socket = stack.tcp(handle, epoch)?;
                if socket.send_queue() == 0 {
                    return Ok(Some(()));
                }
                if !socket.may_send() && socket.state() == tcp::State::Closed {
                    return Err(NetError::ConnectionReset);
                }
                Ok(None)
            })
    }

    fn is_reusable(&mut self) -> bool {
        // Let the stack take in a FIN or reset that may have arrived while idle.
        if self.net.poll().is_err() {
            return false;
        }
        self.net.with(|stack| {
            stack.tcp(self.handle, self.epoch).is_ok_and(|socket| {
                socket.state() == tcp::State::Established && socket.recv_queue() == 0
            })
        })
    }
}

/// Listening sockets per listener: smoltcp has no accept queue (a listening socket
/// becomes the connection), so a listener keeps this many sockets listening, and a client
/// that connects while another connection is being served is not refused. Each socket has
/// its buffers from the start (smoltcp cannot grow them), so the backlog is kept small.
pub const LISTEN_BACKLOG: usize = 2;

/// A listening TCP port.
#[derive(Debug)]
pub struct TcpListener<L: Link> {
    net: Net<L>,
    port: u16,
    /// The sockets listening (or connected and not yet accepted), with their epoch.
    sockets: Vec<(SocketHandle, u64)>,
}

impl<L: Link> TcpListener<L> {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Refills the backlog (after accepts, or a reseed that dropped the sockets).
    fn refill(&mut self) -> Result<()> {
        let epoch = self.net.with(|stack| stack.epoch);
        self.sockets.retain(|&(_, e)| e == epoch);
        while self.sockets.len() < LISTEN_BACKLOG {
            let socket = self.net.listen_socket(self.port)?;
            self.sockets.push(socket);
        }
        Ok(())
    }

    /// Checks the listening sockets (inside a poll loop): takes the first that is
    /// connected, resets those whose handshake failed.
    pub(crate) fn ready(&mut self, stack: &mut NetStack<L>) -> Result<Option<(SocketHandle, u64)>> {
        let port = self.port;
        for index in 0..self.sockets.len() {
            let (handle, epoch) = self.sockets[index];
            let Ok(socket) = stack.tcp(handle, epoch) else {
                continue;
            };
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => {}
                tcp::State::Established | tcp::State::CloseWait => {
                    self.sockets.remove(index);
                    stack.stats.accepts += 1;
                    return Ok(Some((handle, epoch)));
                }
                // The peer gave up during the handshake: listen again.
                _ => {
                    socket.abort();
                    socket.listen(port).map_err(|_| NetError::Listen(port))?;
                }
            }
        }
        Ok(None)
    }

    /// The connection of `(handle, epoch)`, taken from the backlog.
    pub(crate) fn connection(&self, (handle, epoch): (SocketHandle, u64)) -> TcpConnection<L> {
        TcpConnection {
            net: self.net.clone(),
            handle,
            epoch,
            timeout: IO_TIMEOUT,
        }
    }

    /// The stack.
    pub(crate) fn net(&self) -> &Net<L> {
        &self.net
    }

    /// Prepares for [`ready`](Self::ready) checks: refills the backlog.
    pub(crate) fn prepare(&mut self) -> Result<()> {
        self.refill()
    }

    /// Waits for a connection (for ever when `timeout` is `None`).
    pub fn accept(&mut self, timeout: Option<Duration>) -> Result<TcpConnection<L>> {
        self.refill()?;
        let net = self.net.clone();
        let pair = net.block_until(timeout, "TCP accept", |stack| self.ready(stack))?;
        Ok(self.connection(pair))
    }
}

impl<L: Link> Drop for TcpListener<L> {
    fn drop(&mut self) {
        if let Ok(mut stack) = self.net.0.try_borrow_mut() {
            for (handle, epoch) in self.sockets.drain(..) {
                stack.abort(handle, epoch);
            }
        }
    }
}

/// Opens connections to one server through the stack (the HTTP client's [`Connector`]).
#[derive(Debug)]
pub struct StackConnector<L: Link> {
    net: Net<L>,
    address: Ipv4Addr,
    port: u16,
}

impl<L: Link> StackConnector<L> {
    /// Connections to `address:port` through `net`.
    pub fn new(net: &Net<L>, address: Ipv4Addr, port: u16) -> Self {
        Self {
            net: net.clone(),
            address,
            port,
        }
    }
}

impl<L: Link> Connector for StackConnector<L> {
    type Connection = TcpConnection<L>;

    fn connect(&mut self) -> Result<TcpConnection<L>> {
        self.net.connect(self.address, self.port)
    }
}
