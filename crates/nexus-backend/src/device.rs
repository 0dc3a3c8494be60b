// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user backend of one VM's nexus-io device: pops request chains, decodes them
//! against the window, and hands them to the shared engine.

use std::io;
use std::sync::{Arc, RwLock};

use nexus_ring::{Command, Decoder, Rejection, Request, ResponseHeader};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::ops::{self, Prepared};
use crate::session::{Completion, Session};
use crate::window::WindowMemory;

/// Device feature bit 0: the WAIT register exists (implemented by the VMM's device model).
pub const NEXUS_F_WAIT: u64 = 1 << 0;
/// Device feature bit 1: the backend accepts write-behind PUTs.
pub const NEXUS_F_WRITE_BEHIND: u64 = 1 << 1;
/// The one request queue's largest size.
pub const QUEUE_SIZE_MAX: usize = 256;

/// The virtio features the backend offers.
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | NEXUS_F_WAIT
    | NEXUS_F_WRITE_BEHIND
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// One VM's device, shared between its vhost-user connection thread and its vring worker.
#[derive(Clone, Debug)]
pub(crate) struct NexusDevice {
    session: Arc<Session>,
    window: Arc<RwLock<Option<WindowMemory>>>,
}

impl NexusDevice {
    pub(crate) fn new(session: Arc<Session>) -> Self {
        Self {
            session,
            window: Arc::new(RwLock::new(None)),
        }
    }

    fn window(&self) -> Option<WindowMemory> {
        self.window
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Drains the queue: with notifications off, take every available chain; turn them back
    /// on and go again if more arrived meanwhile.
    fn process_queue(&self, vring: &VringRwLock) {
        let Some(window) = self.window() else {
            log::warn!("vm {}: kick before the memory table", self.session.vm);
            return;
        };
        loop {
            if let Err(e) = vring.disable_notification() {
                log::warn!("vm {}: cannot disable notifications: {e}", self.session.vm);
            }
            self.drain(vring, &window);
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::warn!("vm {}: the request queue is broken: {e}", self.session.vm);
                    break;
                }
            }
        }
    }

    fn drain(&self, vring: &VringRwLock, window: &WindowMemory) {
        let decoder = Decoder::new(window.window());
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(window.memory().clone());
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let completion = Completion {
                session: self.session.clone(),
                vring: vring.clone(),
                head,
                epoch: self.session.epoch(),
            };
            match decoder.decode_chain(chain) {
                Ok(request) => dispatch(&self.session, window, request, completion),
                Err(rejection) => refuse(&self.session, window, &rejection, completion),
            }
        }
    }
}

/// Answers a refused chain with an error in its response head when it has one, or returns
/// it with used length 0.
fn refuse(session: &Session, window: &WindowMemory, rejection: &Rejection, completion: Completion) {
    log::debug!("vm {}: {rejection}", session.vm);
    session.count_request();
    let used = match (rejection.response_header(), rejection.response) {
        (Some(header), Some(head)) => {
            let message = rejection.to_string();
            let capacity = head
                .len
                .saturating_sub(nexus_ring::RESPONSE_HEADER_SIZE as u32);
            let text = message.as_bytes();
            let mut len = text.len().min(capacity as usize);
            while len > 0 && text.get(len).is_some_and(|b| b & 0xC0 == 0x80) {
                len -= 1;
            }
            let meta_at = head.addr + nexus_ring::RESPONSE_HEADER_SIZE as u64;
            let header = if len > 0 && window.write(meta_at, &text[..len]).is_ok() {
                ResponseHeader {
                    meta_len: len as u32,
                    ..header
                }
            } else {
                header
            };
            ops::write_header(window, head.addr, &header)
        }
        _ => 0,
    };
    completion.finish(used);
}

/// Takes what must be taken in arrival order (segment copies, key turns, write-behind
/// tickets, FLUSH marks), then runs the request on the engine.
fn dispatch(
    session: &Arc<Session>,
    window: &WindowMemory,
    request: Request,
    completion: Completion,
) {
    let inflight = session.inflight();
    // A NEXT counts once answered (`ops::execute`): it may park for long, and belongs to the
    // invocation it delivers.
    if !matches!(request.command(), Command::Next { .. }) {
        session.count_request();
    }
    let copy = |segment: Option<nexus_ring::SegmentRef>| match segment {
        Some(segment) => window.copy_out(segment).map(Some),
        None => Ok(None),
    };
    let (key, meta) = match (copy(request.key), copy(request.meta)) {
        (Ok(key), Ok(meta)) => (key, meta),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("vm {}: {e}", session.vm);
            let reply = ops::Reply::error(nexus_ring::Status::Internal, e.to_string());
            let used = ops::respond(window, request.id(), &request.response, reply);
            completion.finish(used);
            return;
        }
    };
    let mut prepared = Prepared {
        key,
        meta,
        ..Prepared::default()
    };
    match request.command() {
        Command::Get { .. } | Command::Head | Command::Delete | Command::Put { .. } => {
            if let Some(key) = prepared
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            {
                prepared.turn = Some(session.take_turn(key));
            }
            if matches!(request.command(), Command::Put { write_behind: true }) {
                prepared.write_behind = Some(session.write_behind.register());
            }
        }
        Command::Flush { .. } | Command::Complete { .. } => {
            prepared.mark = session.write_behind.mark();
        }
        _ => {}
    }
    let session = session.clone();
    let window = window.clone();
    session.engine.runtime.clone().spawn(async move {
        let _inflight = inflight;
        let epoch = completion.epoch;
        let reply = tokio::select! {
            reply = ops::execute(&session, &window, &request, prepared) => reply,
            () = session.cancelled(epoch) => {
                log::debug!("vm {}: request {} cancelled", session.vm, request.id());
                return;
            }
        };
        let used = ops::respond(&window, request.id(), &request.response, reply);
        completion.finish(used);
    });
}

impl VhostUserBackend for NexusDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE_MAX
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        // EVENT_IDX is not offered; a frontend cannot enable it.
        if enabled {
            log::warn!("vm {}: EVENT_IDX enabled but not offered", self.session.vm);
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let window = WindowMemory::new(mem.memory().into_inner());
        match &window {
            Some(w) => log::info!(
                "vm {}: I/O window {:#x}+{:#x}",
                self.session.vm,
                w.window().base(),
                w.window().size()
            ),
            None => log::warn!("vm {}: the memory table is empty", self.session.vm),
        }
        *self
            .window
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = window;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("vm {}: cannot create the exit event: {e}", self.session.vm);
                None
            }
        }
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        self.session.stop_queue();
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Never fail here: an error would stop this VM's worker thread for good.
        match (device_event, vrings.first()) {
            (0, Some(vring)) => self.process_queue(vring),
            _ => log::warn!(
                "vm {}: unexpected device event {device_event}",
                self.session.vm
            ),
        }
        Ok(())
    }
}
