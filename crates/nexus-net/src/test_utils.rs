// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test support (feature `test-utils`): hold the process's event loop, to make several
//! devices ready at once and watch the order in which they are served.

use crate::event_loop::{EventLoop, LoopHold};

/// The process's event loop, held inside a turn: no device of the process is served until
/// this is dropped; then every device that became ready meanwhile is served in turns, in the
/// order its events came.
#[derive(Debug)]
pub struct EventLoopHold(#[allow(dead_code)] LoopHold);

/// Holds the process's event loop (see [`EventLoopHold`]). Fails if the loop does not reach
/// the hold within 10 s.
pub fn hold_event_loop() -> std::io::Result<EventLoopHold> {
    Ok(EventLoopHold(EventLoop::get()?.hold()?))
}
