// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's link to the backend: the control connection, the vhost-user session and the
//! monitor watching both.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use nexus_kvm::WindowRegion;
use nexus_kvm::virtio_mmio::QueueConfig;
use vmm_sys_util::eventfd::EventFd;

use crate::control::{ControlClient, ControlEvent, EventHandler, SharedControl};
use crate::event_handler::{LinkState, Monitor};
use crate::frontend::VhostSession;
use crate::sys::{HANGUP, PollFd, poll};
use crate::{Error, Result, error_chain};

/// How long the device waits for the backend to answer one request before giving up.
pub(crate) const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Who the device is to the backend.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) control_socket: PathBuf,
    pub(crate) vm_id: String,
    pub(crate) tenant: String,
}

/// What a started ring needs.
pub(crate) struct RingSetup<'a> {
    pub(crate) features: u64,
    pub(crate) queue: &'a QueueConfig,
    /// The ring's base: 0 for a fresh ring, the used `idx` for a restored one.
    pub(crate) base: u16,
    pub(crate) window: &'a WindowRegion,
    pub(crate) kick: &'a EventFd,
    pub(crate) call: &'a EventFd,
}

#[derive(Debug)]
struct Session {
    vhost: VhostSession,
    /// Stopped before `vhost` closes (see [`BackendLink::drop_session`]).
    monitor: Option<Monitor>,
}

/// The control connection (kept across sessions, as long as it lives) and the current
/// vhost-user session.
#[derive(Debug, Default)]
pub(crate) struct BackendLink {
    control: Option<ControlClient>,
    /// Where the control connection comes from when it is shared with other devices.
    shared: Option<SharedControl>,
    /// The VM this link attached, while its handler is on the control connection: on a
    /// shared connection, closing nothing detaches it, so the link does.
    attached: Option<String>,
    session: Option<Session>,
    /// The vhost-user connection of an `attach` sent before the device took the control
    /// connection over ([`BackendLink::adopt`]).
    adopted: Option<UnixStream>,
}

pub(crate) fn hung_up(connection: &dyn AsRawFd) -> bool {
    let mut fds = [PollFd::new(connection, HANGUP)];
    match poll(&mut fds, Some(Duration::ZERO)) {
        Ok(_) => fds[0].has(HANGUP),
        Err(_) => true,
    }
}

impl BackendLink {
    /// The two connections, if there is a session: control, vhost-user.
    pub(crate) fn connections(&self) -> Option<[&dyn AsRawFd; 2]> {
        let control = self.control.as_ref()?;
        let session = self.session.as_ref()?;
        Some([&**control.stream(), session.vhost.frontend()])
    }

    /// Whether there is a session and neither connection has hung up.
    fn alive(&self) -> bool {
        self.connections()
            .is_some_and(|fds| fds.into_iter().all(|fd| !hung_up(fd)))
    }

    /// Starts the request queue on the backend, first (re)connecting unless the current
    /// session is alive, and records the outcome in `state`.
    pub(crate) fn start(
        &mut self,
        identity: &Identity,
        ring: &RingSetup<'_>,
        state: &Arc<LinkState>,
    ) -> Result<()> {
        if !(state.connected() && self.alive()) {
            if let Err(e) = self.connect(identity, ring, state) {
                state.set_connected(false);
                return Err(e);
            }
        }
        let session = self.session.as_mut().expect("connected");
        let started =
            session
                .vhost
                .start_ring(ring.queue, ring.base, ring.window, ring.kick, ring.call);
        if started.is_err() {
            self.drop_session();
            state.set_connected(false);
            return started;
        }
        state.set_connected(true);
        // The monitor may have seen a hang-up before we said we were connected.
        if !self.alive() {
            state.set_connected(false);
        }
        Ok(())
    }

    /// Takes over `control`, on which the caller already sent `attach` for this VM and got
    /// `connection` back (for example to send a prefetch `hint` before the device existed);
    /// the next [`start`](Self::start) uses `connection` without attaching again.
    /// Takes the control connection from `shared` from now on (see [`SharedControl`]).
    pub(crate) fn share(&mut self, shared: SharedControl) {
        self.shared = Some(shared);
    }

    pub(crate) fn adopt(&mut self, control: ControlClient, connection: UnixStream) {
        self.drop_session();
        self.control = Some(control);
        self.adopted = Some(connection);
    }

    fn connect(
        &mut self,
        identity: &Identity,
        ring: &RingSetup<'_>,
        state: &Arc<LinkState>,
    ) -> Result<()> {
        self.drop_session();
        let connection = match self.adopted.take() {
            Some(connection) => connection,
            None => self.attach(identity)?,
        };
        let attached = (|| {
            let vhost =
                VhostSession::connect(connection, ring.features, ring.window, BACKEND_TIMEOUT)?;
            let control = self.control.as_ref().expect("attached");
            control.set_vm_event_handler(&identity.vm_id, event_handler(identity, state));
            // Shared with the monitor, not duplicated: a device holds each connection once.
            let monitor = Monitor::start(
                Arc::clone(control.stream()),
                control.event_reader(),
                vhost.frontend().clone(),
                Arc::clone(state),
            )?;
            Ok(Session {
                vhost,
                monitor: Some(monitor),
            })
        })();
        match attached {
            Ok(session) => {
                info!("nexus-io: VM {} attached to the backend", identity.vm_id);
                self.session = Some(session);
                self.attached = Some(identity.vm_id.clone());
                Ok(())
            }
            Err(e) => {
                // The backend holds a session for this VM that we cannot use: drop it.
                if let Some(control) = self.control.as_mut() {
                    let _ = control.detach(&identity.vm_id);
                }
                Err(e)
            }
        }
    }

    /// Sends `attach`, on the current control connection if it is alive (after a `detach`
    /// of whatever session the backend still has for this VM), else on a new one.
    fn attach(&mut self, identity: &Identity) -> Result<UnixStream> {
        if let Some(control) = self.control.as_mut() {
            if hung_up(&**control.stream()) {
                self.control = None;
            } else {
                match control.detach(&identity.vm_id) {
                    Ok(()) | Err(Error::ControlRefused { .. }) => {}
                    Err(e) => {
                        debug!(
                            "nexus-io: dropping the control connection: {}",
                            error_chain(&e)
                        );
                        self.control = None;
                    }
                }
            }
        }
        if self.control.is_none() {
            self.control = Some(match &self.shared {
                Some(shared) => shared.client()?,
                None => ControlClient::connect(&identity.control_socket, BACKEND_TIMEOUT)?,
            });
        }
        let control = self.control.as_mut().expect("connected above");
        let attached = control.attach(&identity.vm_id, &identity.tenant);
        if let Err(e) = &attached {
            if !matches!(e, Error::ControlRefused { .. }) {
                self.control = None;
            }
        }
        attached
    }

    /// Stops the request queue if the session is alive; drops the session otherwise.
    pub(crate) fn stop(&mut self, state: &LinkState) {
        if !(state.connected() && self.alive()) {
            self.drop_session();
            state.set_connected(false);
            return;
        }
        let session = self.session.as_mut().expect("alive");
        if let Err(e) = session.vhost.stop_ring() {
            warn!(
                "nexus-io: cannot stop the request queue: {}",
                error_chain(&e)
            );
            self.drop_session();
            state.set_connected(false);
        }
    }

    /// Ends the vhost-user session (the control connection stays, if alive).
    pub(crate) fn drop_session(&mut self) {
        if let Some(mut session) = self.session.take() {
            // Stop watching before closing, so the close is not taken for a loss.
            drop(session.monitor.take());
            drop(session);
        }
    }
}

/// What the device does with its control connection's events: a queue it broke needs a
/// reset.
fn event_handler(identity: &Identity, state: &Arc<LinkState>) -> EventHandler {
    let vm = identity.vm_id.clone();
    let state = Arc::clone(state);
    Box::new(move |event| match event {
        ControlEvent::QueueBroken { vm: broken, reason } if broken == vm => {
            state.queue_broken(&reason);
        }
        ControlEvent::QueueBroken { vm: other, .. } => {
            debug!("nexus-io: an event for VM {other} on VM {vm}'s connection ignored");
        }
    })
}

impl Drop for BackendLink {
    fn drop(&mut self) {
        self.drop_session();
        if let (Some(control), Some(vm)) = (self.control.as_mut(), self.attached.take()) {
            control.remove_vm_event_handler(&vm);
            // Others keep a shared connection open: say that this VM went away.
            let detach = self.shared.as_ref().is_some_and(|s| !s.is_closing());
            if detach && !hung_up(&**control.stream()) {
                if let Err(e) = control.detach(&vm) {
                    debug!("nexus-io: cannot detach VM {vm}: {}", error_chain(&e));
                }
            }
        }
    }
}
