// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Per-key request ordering: a VM's requests on one key — `GET`, `HEAD`, `DELETE`, `PUT`,
//! the write-behind upload a `PUT` leaves behind, a prefetch, the read of an invocation's
//! input — take effect in the order the guest made them available, whatever order the
//! runtime runs their tasks in. Each takes its turn when it is dispatched (in arrival order)
//! and waits for it before it touches the store; requests on other keys do not wait.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sync::lock;

/// The table is swept of finished turns when it grows past this.
const SWEEP: usize = 1024;

/// One VM's last turn on each key.
#[derive(Debug, Default)]
pub(crate) struct KeyOrder {
    last: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl KeyOrder {
    /// Takes a request's turn on `key`: it runs after every earlier request of this VM on
    /// the same key has finished.
    pub(crate) fn take_turn(&self, key: &str) -> KeyTurn {
        let (done, rx) = watch::channel(());
        let mut last = lock(&self.last);
        if last.len() >= SWEEP {
            last.retain(|_, earlier| earlier.has_changed().is_ok());
        }
        let after = last.insert(key.to_owned(), rx);
        KeyTurn { after, _done: done }
    }
}

/// A request's place in its key's order; the next request on the key runs once this is
/// dropped.
#[derive(Debug)]
pub(crate) struct KeyTurn {
    after: Option<watch::Receiver<()>>,
    _done: watch::Sender<()>,
}

impl KeyTurn {
    /// Waits until every earlier request on the key has finished.
    pub(crate) async fn ready(&mut self) {
        if let Some(mut earlier) = self.after.take() {
            // Nothing is ever sent: `changed` returns once the earlier turn is dropped.
            while earlier.changed().await.is_ok() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn key_turns_run_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let keys = KeyOrder::default();
        let first = keys.take_turn("k");
        let mut second = keys.take_turn("k");
        let mut other = keys.take_turn("j");
        other.ready().await; // another key does not wait
        let handle = {
            let order = order.clone();
            tokio::spawn(async move {
                second.ready().await;
                lock(&order).push(2);
            })
        };
        tokio::task::yield_now().await;
        lock(&order).push(1);
        drop(first);
        handle.await.unwrap();
        assert_eq!(*lock(&order), vec![1, 2]);
    }

    #[tokio::test]
    async fn finished_turns_are_swept() {
        let keys = KeyOrder::default();
        for n in 0..SWEEP {
            drop(keys.take_turn(&format!("k{n}")));
        }
        let _held = keys.take_turn("held");
        assert_eq!(lock(&keys.last).len(), 1, "the finished turns went");
        let mut after = keys.take_turn("held");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), after.ready())
                .await
                .is_err(),
            "a turn still held is kept"
        );
    }
}
