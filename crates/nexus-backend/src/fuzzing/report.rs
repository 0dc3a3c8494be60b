// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a fuzzing run reports.

use std::collections::BTreeMap;

use nexus_ring::{Op, Status};

/// What a run saw: answers by op and status, and the steps that could not be taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    answers: BTreeMap<(u16, u16), usize>,
    /// Steps taken.
    pub steps: usize,
    /// Requests the guest could not send (every slot busy, or a layout nexus-ring refuses),
    /// and node calls the backend would refuse.
    pub skipped: usize,
    /// Invocations whose result the node received.
    pub invocations_completed: usize,
}

impl Report {
    /// How many `op` requests were answered with `status`.
    pub fn answers(&self, op: Op, status: Status) -> usize {
        self.answers
            .get(&(op.code(), status.code()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn count(&mut self, op: Op, status: Status) {
        *self.answers.entry((op.code(), status.code())).or_default() += 1;
    }
}
