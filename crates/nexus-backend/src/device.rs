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
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::exit_events::ExitEvents;
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
    exits: Arc<ExitEvents>,
}

impl NexusDevice {
    /// The device of `session`; the exit events of its daemon's workers come from `exits`.
    pub(crate) fn new(session: Arc<Session>, exits: Arc<ExitEvents>) -> Self {
        Self {
            session,
            window: Arc::new(RwLock::new(None)),
            exits,
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
        // In arrival order, like the key turns: the tasks may run in any order.
        Command::Next { .. } => prepared.next = session.claim_next(),
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
        match self.exits.pair() {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_ring::{RESPONSE_HEADER_SIZE, RequestLayout, SegmentRef, Status};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::config::{BackendConfig, S3Options, StoreConfig, StoreUrl};
    use crate::engine::Engine;
    use crate::tenant::Tenant;

    const WINDOW_BASE: u64 = 0xC000_0000;
    const DESC_TABLE: u64 = WINDOW_BASE;
    const AVAIL_RING: u64 = WINDOW_BASE + 0x1000;
    const USED_RING: u64 = WINDOW_BASE + 0x2000;
    const QUEUE_SIZE: u16 = 16;
    const RESPONSE_META: u32 = 536;

    /// Lays out `NEXT` number `n` (request id `n + 1`) as chain `2n` and makes it available;
    /// returns the chain's head and its response head's address.
    fn make_next_available(mem: &GuestMemoryMmap, n: u16) -> (u16, u64) {
        let header = WINDOW_BASE + 0x4000 + u64::from(n) * 0x1000;
        let response_head =
            SegmentRef::new(header + 0x100, RESPONSE_HEADER_SIZE as u32 + RESPONSE_META);
        let layout = RequestLayout {
            header,
            key: None,
            meta: None,
            payload: &[],
            response_head,
            response_payload: &[],
        };
        let command = Command::Next { timeout_ms: 60_000 };
        let bytes = layout
            .header(u64::from(n) + 1, command)
            .unwrap()
            .to_bytes()
            .unwrap();
        mem.write_slice(&bytes, GuestAddress(header)).unwrap();
        let head = 2 * n;
        let descriptors: Vec<_> = layout.descriptors().collect();
        assert_eq!(descriptors.len(), 2);
        for (i, d) in (head..).zip(&descriptors) {
            let at = GuestAddress(DESC_TABLE + u64::from(i) * 16);
            let next_flag = if i == head { 1u16 } else { 0 };
            let write_flag = if d.writable { 2u16 } else { 0 };
            mem.write_obj(d.addr, at).unwrap();
            mem.write_obj(d.len, GuestAddress(at.0 + 8)).unwrap();
            mem.write_obj(next_flag | write_flag, GuestAddress(at.0 + 12))
                .unwrap();
            mem.write_obj(i + 1, GuestAddress(at.0 + 14)).unwrap();
        }
        mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * u64::from(n)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(AVAIL_RING + 2)).unwrap();
        (head, response_head.addr)
    }

    /// Of two `NEXT`s popped together, the first parks and the second is refused, whatever
    /// order the runtime runs their tasks in: the claim is taken when a request is popped.
    /// (It was taken in the task, and two runtime threads picking the tasks up at once let
    /// the later `NEXT` park now and then while the earlier one was refused.)
    #[test]
    fn the_first_of_two_nexts_holds_the_claim_before_any_task_runs() {
        let dir = tempfile::tempdir().unwrap();
        // A runtime nobody drives yet: dispatched tasks wait until the test runs them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = StoreConfig {
            url: StoreUrl::File(dir.path().to_owned()),
            s3: S3Options::default(),
        };
        let config = BackendConfig::new(store, dir.path().to_owned());
        let engine = Arc::new(Engine::new(&config, runtime.handle().clone()).unwrap());
        let tenant = Arc::new(Tenant::new("default", "").unwrap());
        let session = Arc::new(Session::new("vm-1", tenant, engine));
        let device = NexusDevice::new(session.clone(), Arc::default());

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(WINDOW_BASE), 1 << 20)]).unwrap();
        device
            .update_memory(GuestMemoryAtomic::new(mem.clone()))
            .unwrap();
        let vring = VringRwLock::new(GuestMemoryAtomic::new(mem.clone()), QUEUE_SIZE).unwrap();
        vring.set_queue_size(QUEUE_SIZE);
        vring
            .set_queue_info(DESC_TABLE, AVAIL_RING, USED_RING)
            .unwrap();
        vring.set_queue_ready(true);
        let (_, _) = make_next_available(&mem, 0);
        let (second, second_response) = make_next_available(&mem, 1);

        device.process_queue(&vring);
        assert!(
            session
                .invocations
                .next_outstanding
                .load(std::sync::atomic::Ordering::Acquire),
            "the first NEXT popped holds the claim before its task runs"
        );

        let used_idx = || -> u16 { mem.read_obj(GuestAddress(USED_RING + 2)).unwrap() };
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                while used_idx() == 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the second NEXT is answered at once");
        });
        assert_eq!(used_idx(), 1, "the first NEXT stays parked");
        let used_id: u32 = mem.read_obj(GuestAddress(USED_RING + 4)).unwrap();
        assert_eq!(used_id, u32::from(second));
        let mut raw = [0u8; RESPONSE_HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(second_response))
            .unwrap();
        let answer = ResponseHeader::decode(&raw).unwrap();
        assert_eq!(answer.id, 2);
        assert_eq!(answer.status, Status::InvalidRequest);
        assert!(session.invocations.parked());
        // Dropping the runtime drops the parked NEXT's task, and its claim with it.
        drop(runtime);
        assert!(!session.invocations.parked());
    }
}
