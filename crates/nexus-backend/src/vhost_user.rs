// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM's vhost-user connection: the handshake on vhost's protocol types, served by the
//! shared [`EventLoop`](crate::event_loop::EventLoop) — no thread of its own.
//!
//! The connection is one end of a socket pair the backend made on `attach` and handed to the
//! attaching process; nobody else can speak vhost-user for the VM. The backend offers one
//! queue, `VIRTIO_F_VERSION_1`, the nexus-io feature bits and `REPLY_ACK`, and nothing more:
//! the memory table must hold exactly one region (the VM's I/O window); indirect descriptors,
//! event index, multiqueue, configuration space, inflight tracking, dirty logging and
//! postcopy are refused.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_ring::device as contract;
use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VhostError, GpuBackend, Result as VhostResult,
    VhostUserBackendReqHandlerMut,
};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::cpu_share::CpuShare;
use crate::device::{FEATURES, RequestRing};
use crate::error::error_chain;
use crate::event_loop::{Channel, Handled};
use crate::session::Session;
use crate::sync::lock;
use crate::window::WindowMemory;
use crate::window_map::map_window;

/// How long one vhost-user message may take to arrive once its first byte has: a frontend
/// that sends half a message cannot hold an event-loop thread for longer.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed messages in a row after which the connection is closed.
const MAX_FAILED_MESSAGES: u32 = 64;

/// One attached VM's vhost-user connection and request queue.
pub(crate) struct VmChannel {
    id: u64,
    session: Arc<Session>,
    ring: Arc<RequestRing>,
    /// The endpoint, which owns the connection (the VM's only descriptor for it here).
    endpoint: Mutex<BackendReqHandler<Mutex<Handshake>>>,
    /// The connection's descriptor (owned by `endpoint`, open as long as `self` is), for
    /// epoll and to shut it without taking the endpoint's lock.
    connection: RawFd,
    failed: AtomicU32,
}

impl std::fmt::Debug for VmChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmChannel")
            .field("id", &self.id)
            .field("vm", &self.session.vm)
            .finish_non_exhaustive()
    }
}

impl VmChannel {
    /// The channel of `ring`'s VM over `stream`, the backend's end of the pair.
    pub(crate) fn new(
        id: u64,
        session: Arc<Session>,
        ring: Arc<RequestRing>,
        stream: UnixStream,
    ) -> io::Result<Arc<Self>> {
        stream.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        stream.set_write_timeout(Some(MESSAGE_TIMEOUT))?;
        let handshake = Handshake::new(Arc::clone(&ring));
        let endpoint = BackendReqHandler::from_stream(stream, Arc::new(Mutex::new(handshake)));
        let connection = endpoint.as_raw_fd();
        Ok(Arc::new(Self {
            id,
            session,
            ring,
            endpoint: Mutex::new(endpoint),
            connection,
            failed: AtomicU32::new(0),
        }))
    }
}

impl Channel for VmChannel {
    fn id(&self) -> u64 {
        self.id
    }

    fn connection_fd(&self) -> RawFd {
        self.connection
    }

    fn kick_fd(&self) -> Option<RawFd> {
        self.ring.kick_fd()
    }

    /// Reads and answers one message.
    fn handle_message(&self) -> Handled {
        let result = lock(&self.endpoint).handle_request();
        match result {
            Ok(()) => {
                self.failed.store(0, Ordering::Relaxed);
                Handled::Continue
            }
            Err(
                VhostError::Disconnected
                | VhostError::PartialMessage
                | VhostError::SocketBroken(_)
                | VhostError::SocketError(_)
                | VhostError::SocketRetry(_),
            ) => Handled::Closed,
            Err(e) => {
                let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if failed == 1 {
                    log::info!("vm {}: vhost-user request refused: {e}", self.session.vm);
                }
                if failed >= MAX_FAILED_MESSAGES {
                    log::warn!(
                        "vm {}: closing the vhost-user connection after {failed} refused requests in a row",
                        self.session.vm
                    );
                    Handled::Closed
                } else {
                    Handled::Continue
                }
            }
        }
    }

    fn handle_kick(&self) -> Option<RawFd> {
        self.ring.kicked()
    }

    fn cpu(&self) -> &CpuShare {
        &self.session.cpu
    }

    /// The frontend closed the connection: the queue stops (the VM stays attached until it
    /// is detached; a new `attach` replaces it).
    fn disconnected(&self) {
        log::info!("vm {}: vhost-user frontend disconnected", self.session.vm);
        self.ring.stop();
    }

    fn panicked(&self, message: &str) {
        self.ring
            .fail_panicked("handling a vhost-user message or kick", message);
    }

    /// Closes the connection (the event loop no longer watches it).
    fn close(&self) {
        // SAFETY: `shutdown(2)` takes a descriptor and flags and touches no memory of ours.
        // The descriptor is the connection's, owned by `self.endpoint`, so it is open (and
        // still the connection) for as long as `self` lives; shutting it does not close it.
        let _ = unsafe { libc::shutdown(self.connection, libc::SHUT_RDWR) };
        self.ring.stop();
    }
}

/// The window's place in the frontend's address space, to translate ring addresses.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    user_addr: u64,
    size: u64,
    guest_phys_addr: u64,
}

impl Mapping {
    fn to_gpa(self, user: u64) -> Option<u64> {
        let offset = user.checked_sub(self.user_addr)?;
        (offset < self.size).then(|| self.guest_phys_addr + offset)
    }
}

/// The vhost-user requests of one connection.
struct Handshake {
    ring: Arc<RequestRing>,
    owner: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    mapping: Option<Mapping>,
}

fn refused(what: &'static str) -> VhostError {
    VhostError::InvalidOperation(what)
}

fn queue_index(index: u32) -> VhostResult<()> {
    if index == 0 {
        Ok(())
    } else {
        Err(VhostError::InvalidParam)
    }
}

impl Handshake {
    fn new(ring: Arc<RequestRing>) -> Self {
        Self {
            ring,
            owner: false,
            acked_features: 0,
            acked_protocol_features: 0,
            mapping: None,
        }
    }
}

impl VhostUserBackendReqHandlerMut for Handshake {
    fn set_owner(&mut self) -> VhostResult<()> {
        if self.owner {
            return Err(refused("the connection has an owner already"));
        }
        self.owner = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.owner = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        self.ring.stop();
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        Err(refused("RESET_DEVICE is not offered"))
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(FEATURES)
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !FEATURES != 0 {
            return Err(refused("features that were not offered"));
        }
        self.acked_features = features;
        // With VHOST_USER_F_PROTOCOL_FEATURES the ring starts disabled (SET_VRING_ENABLE).
        let protocol = vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES;
        self.ring.set_enabled(features & protocol.bits() == 0);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(refused("postcopy is not offered"));
        }
        // Exactly one region: the window. Anything more would be more of the VM than the
        // backend may see.
        let ([region], [file]) = (ctx, files.as_slice()) else {
            return Err(refused("the memory table must hold exactly the I/O window"));
        };
        let size = region.memory_size;
        if size == 0
            || region.guest_phys_addr.checked_add(size).is_none()
            || region.user_addr.checked_add(size).is_none()
            || usize::try_from(size).is_err()
        {
            return Err(VhostError::InvalidParam);
        }
        // The window is mapped without keeping the memfd: it is closed (with `files`) on
        // return, and the backend holds no descriptor for the VM's memory.
        let mapped = map_window(file, region.mmap_offset, size).map_err(|e| {
            VhostError::ReqHandlerError(io::Error::new(
                io::ErrorKind::InvalidInput,
                error_chain(&e),
            ))
        })?;
        drop(files);
        let guest_region = GuestRegionMmap::new(mapped, GuestAddress(region.guest_phys_addr))
            .ok_or(VhostError::InvalidParam)?;
        let memory = GuestMemoryMmap::from_regions(vec![guest_region])
            .map_err(|e| VhostError::ReqHandlerError(io::Error::other(e)))?;
        let window = WindowMemory::new(Arc::new(memory)).ok_or(VhostError::InvalidParam)?;
        self.mapping = Some(Mapping {
            user_addr: region.user_addr,
            size,
            guest_phys_addr: region.guest_phys_addr,
        });
        self.ring.set_window(window);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        queue_index(index)?;
        let size = u16::try_from(num).map_err(|_| VhostError::InvalidParam)?;
        if size == 0 || !size.is_power_of_two() || size > contract::QUEUE_SIZE_MAX {
            return Err(VhostError::InvalidParam);
        }
        self.ring.set_size(size)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        queue_index(index)?;
        if !flags.is_empty() {
            return Err(refused("dirty logging is not offered"));
        }
        let mapping = self
            .mapping
            .ok_or(refused("SET_VRING_ADDR before the memory table"))?;
        let translate = |user| mapping.to_gpa(user).ok_or(VhostError::InvalidParam);
        self.ring.set_addresses(
            translate(descriptor)?,
            translate(available)?,
            translate(used)?,
        )
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        queue_index(index)?;
        let base = u16::try_from(base).map_err(|_| VhostError::InvalidParam)?;
        self.ring.set_base(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        queue_index(index)?;
        let next_avail = self.ring.stop();
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        queue_index(index.into())?;
        self.ring.set_kick(fd);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        queue_index(index.into())?;
        self.ring.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        // Queue faults are reported on the control connection that attached the VM
        // (docs/nexus-io.md); the descriptor is not kept.
        queue_index(index.into())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !VhostUserProtocolFeatures::REPLY_ACK.bits() != 0 {
            return Err(refused("protocol features that were not offered"));
        }
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(u64::from(contract::NUM_QUEUES))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        queue_index(index)?;
        self.ring.set_enabled(enable);
        Ok(())
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        Err(refused("the configuration space is the VMM's"))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        Err(refused("the configuration space is the VMM's"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(refused("GPU sockets are not offered"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(refused("shared objects are not offered"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        Err(refused("inflight tracking is not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VhostResult<()> {
        Err(refused("inflight tracking is not offered"))
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Err(refused("memory slots are not offered"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        Err(refused("memory slots are not offered"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        Err(refused("memory slots are not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(refused("device state transfer is not offered"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(refused("device state transfer is not offered"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(refused("shared memory regions are not offered"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostResult<()> {
        Err(refused("dirty logging is not offered"))
    }
}
