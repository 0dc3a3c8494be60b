// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user frontend: one session with the backend's per-VM socket.
//!
//! The memory table holds exactly one region, the I/O window, so the backend can reach the
//! VM's rings and buffers and nothing else of it (a window in a slab comes with its offset in
//! the slab's memfd).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use log::{debug, warn};
use nexus_kvm::WindowRegion;
use nexus_kvm::virtio_mmio::QueueConfig;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result};

/// The request queue's index.
const REQUEST_QUEUE: usize = 0;

fn vhost_error(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { request, source }
}

/// A vhost-user session with the backend.
pub(crate) struct VhostSession {
    /// The connection. `Frontend` is an `Arc` around it and `AsRawFd`: the device watches
    /// its descriptor for hang-ups, and the backend monitor holds a clone, not a duplicate.
    frontend: Frontend,
    /// `VHOST_USER_F_PROTOCOL_FEATURES` was negotiated, so rings start disabled.
    protocol_features: bool,
    /// `REPLY_ACK` was negotiated: every message waits for the backend's answer.
    reply_ack: bool,
    /// The ring the backend last accepted on this session (its addresses are the
    /// window's, checked then).
    accepted: Option<QueueConfig>,
    ring_started: bool,
}

impl std::fmt::Debug for VhostSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostSession")
            .field("protocol_features", &self.protocol_features)
            .field("ring_started", &self.ring_started)
            .finish_non_exhaustive()
    }
}

impl VhostSession {
    /// Sets a session up on `stream`, the VM's connection the backend handed over on
    /// `attach`: owner, features (the guest's `features` that the backend offers), protocol
    /// features (`REPLY_ACK` if offered), and the memory table — the window alone.
    pub(crate) fn connect(
        stream: UnixStream,
        features: u64,
        window: &WindowRegion,
        timeout: Duration,
    ) -> Result<Self> {
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(Error::VhostConnect)?;
        let mut frontend = Frontend::from_stream(stream, 1);

        frontend.set_owner().map_err(vhost_error("SET_OWNER"))?;
        let offered = frontend
            .get_features()
            .map_err(vhost_error("GET_FEATURES"))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let missing = features & !offered;
        if missing != 0 {
            warn!("nexus-io: the backend does not offer features {missing:#x} the guest accepted");
        }
        let acked = offered & (features | protocol_bit);
        let protocol_features = acked & protocol_bit != 0;
        let mut reply_ack = false;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost_error("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(wanted)
                .map_err(vhost_error("SET_PROTOCOL_FEATURES"))?;
            reply_ack = !wanted.is_empty();
        }
        frontend
            .set_features(acked)
            .map_err(vhost_error("SET_FEATURES"))?;
        if reply_ack {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let region = VhostUserMemoryRegionInfo::from_guest_region(window.region())
            .map_err(vhost_error("SET_MEM_TABLE"))?;
        // A window in a slab ([`nexus_kvm::memory::WindowSlabs`]) starts at a non-zero
        // `mmap_offset` of a memfd shared with other windows: the backend maps that range.
        debug_assert_eq!(region.mmap_offset, window.memfd_offset());
        frontend
            .set_mem_table(&[region])
            .map_err(vhost_error("SET_MEM_TABLE"))?;
        debug!("nexus-io: vhost-user session (features {acked:#x}, reply-ack {reply_ack})");
        Ok(VhostSession {
            frontend,
            protocol_features,
            reply_ack,
            accepted: None,
            ring_started: false,
        })
    }

    /// The connection: its descriptor is the one to watch for hang-ups, and a clone shares
    /// it rather than duplicate it.
    pub(crate) fn frontend(&self) -> &Frontend {
        &self.frontend
    }

    /// Starts the request queue: size, addresses (the VMM's addresses of the window
    /// mapping), `base` (0 for a fresh ring; the used ring's `idx` when resuming a restored
    /// one, so the backend pops again what the guest made available and was never used), the
    /// call and kick eventfds, enable.
    pub(crate) fn start_ring(
        &mut self,
        queue: &QueueConfig,
        base: u16,
        window: &WindowRegion,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<()> {
        let host = |gpa: u64| -> Result<u64> {
            let offset = gpa
                .checked_sub(window.base().0)
                .ok_or(Error::RingOutsideWindow {
                    area: "ring",
                    addr: gpa,
                    len: 0,
                })?;
            let ptr = window
                .region()
                .get_host_address(MemoryRegionAddress(offset))
                .map_err(|_| Error::RingOutsideWindow {
                    area: "ring",
                    addr: gpa,
                    len: 0,
                })?;
            Ok(ptr as u64)
        };
        let ring = VringConfigData {
            queue_max_size: queue.max_size,
            queue_size: queue.size,
            flags: 0,
            desc_table_addr: host(queue.desc_table)?,
            used_ring_addr: host(queue.used_ring)?,
            avail_ring_addr: host(queue.avail_ring)?,
            log_addr: None,
        };
        // Restarting the ring the backend accepted before on this session (a reset to a
        // snapshot): the size, addresses, base, call and kick eventfds are sent without
        // waiting for each answer — messages are handled in order, and these were accepted
        // with the same values — and only the last message (the enable, or the kick without
        // protocol features) is answered. A first start waits for every
        // answer, so that a refused ring is reported by the message at fault.
        let restart = self.reply_ack && self.accepted == Some(*queue);
        self.accepted = None;
        let f = &mut self.frontend;
        if restart {
            f.set_hdr_flags(VhostUserHeaderFlag::empty());
        }
        let started = (|| {
            f.set_vring_num(REQUEST_QUEUE, queue.size)
                .map_err(vhost_error("SET_VRING_NUM"))?;
            f.set_vring_addr(REQUEST_QUEUE, &ring)
                .map_err(vhost_error("SET_VRING_ADDR"))?;
            f.set_vring_base(REQUEST_QUEUE, base)
                .map_err(vhost_error("SET_VRING_BASE"))?;
            f.set_vring_call(REQUEST_QUEUE, call)
                .map_err(vhost_error("SET_VRING_CALL"))
        })();
        // The kick too, when the enable follows and is answered.
        if restart && !self.protocol_features {
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let kicked = started.and_then(|()| {
            f.set_vring_kick(REQUEST_QUEUE, kick)
                .map_err(vhost_error("SET_VRING_KICK"))
        });
        if restart {
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        kicked?;
        self.ring_started = true;
        if self.protocol_features {
            f.set_vring_enable(REQUEST_QUEUE, true)
                .map_err(vhost_error("SET_VRING_ENABLE"))?;
        }
        if self.reply_ack {
            self.accepted = Some(*queue);
        }
        Ok(())
    }

    /// Stops the request queue (`GET_VRING_BASE`), if it was started.
    pub(crate) fn stop_ring(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.ring_started) {
            return Ok(());
        }
        self.frontend
            .get_vring_base(REQUEST_QUEUE)
            .map(drop)
            .map_err(vhost_error("GET_VRING_BASE"))
    }
}
