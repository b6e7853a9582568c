//! The set of open connections on this node, so the node can close them all at once.
//!
//! Shutdown goes through each connection's outbox rather than a cancellation future polled by
//! every connection task: closing an outbox wakes its writer exactly once, while a shared token
//! would be polled (and locked) on every event of every connection, and its waiter would sit in
//! every idle connection's memory. Draining in batches ([`Connections::close_some`]) uses the
//! same set.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::outbox::{CloseReason, Outbox};
use crate::registry::ConnId;

/// Open connections and whether the node is closing.
#[derive(Debug, Default)]
pub struct Connections {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<ConnId, Outbox>,
    /// Set once the node closes: connections registering afterwards are closed at once.
    closing: Option<CloseReason>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Insert/remove/iterate only: nothing is left half-done by a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection; closes it right away if the node is already closing.
    pub fn register(&self, id: ConnId, outbox: &Outbox) {
        let mut st = self.lock();
        match &st.closing {
            Some(reason) => outbox.close(reason.clone()),
            None => {
                st.open.insert(id, outbox.clone());
            }
        }
    }

    /// Removes a connection that ended.
    pub fn unregister(&self, id: ConnId) {
        self.lock().open.remove(&id);
    }

    /// Closes every open connection (and any that registers later) with `reason`. Returns how
    /// many were open.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let mut st = self.lock();
        st.closing = Some(reason.clone());
        for outbox in st.open.values() {
            outbox.close(reason.clone());
        }
        st.open.len()
    }

    /// Starts closing: connections registering from now on are closed at once with `reason`,
    /// the open ones stay until [`Connections::close_some`] or [`Connections::close_all`].
    /// Returns how many are open.
    pub fn stop_accepting(&self, reason: CloseReason) -> usize {
        let mut st = self.lock();
        st.closing = Some(reason);
        st.open.len()
    }

    /// Closes up to `n` open connections with the closing reason (draining in batches); they
    /// leave the set at once, so the next batch takes others. Returns how many were closed.
    pub fn close_some(&self, n: usize) -> usize {
        let mut st = self.lock();
        let Some(reason) = st.closing.clone() else {
            return 0;
        };
        let ids: Vec<ConnId> = st.open.keys().take(n).copied().collect();
        for id in &ids {
            if let Some(outbox) = st.open.remove(id) {
                outbox.close(reason.clone());
            }
        }
        ids.len()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;

    #[test]
    fn draining_closes_in_batches_and_refuses_newcomers() {
        let c = Connections::default();
        let boxes: Vec<Outbox> = (0..5)
            .map(|_| Outbox::new(OutboxLimits::default()))
            .collect();
        for (i, b) in boxes.iter().enumerate() {
            c.register(i as ConnId, b);
        }
        assert_eq!(
            c.close_some(2),
            0,
            "nothing is closed before draining starts"
        );
        assert_eq!(c.stop_accepting(CloseReason::Shutdown), 5);
        assert!(boxes.iter().all(|b| !b.is_closed()), "open ones stay open");
        let late = Outbox::new(OutboxLimits::default());
        c.register(9, &late);
        assert!(
            late.is_closed(),
            "a connection arriving while draining is closed at once"
        );
        assert_eq!(c.close_some(2), 2);
        assert_eq!(boxes.iter().filter(|b| b.is_closed()).count(), 2);
        assert_eq!(c.close_some(2), 2);
        assert_eq!(c.close_some(2), 1);
        assert_eq!(c.close_some(2), 0);
        assert!(boxes.iter().all(Outbox::is_closed));
    }

    #[test]
    fn close_all_reaches_open_and_late_connections() {
        let c = Connections::default();
        let a = Outbox::new(OutboxLimits::default());
        c.register(1, &a);
        assert_eq!(c.close_all(CloseReason::Shutdown), 1);
        assert!(a.is_closed());
        let late = Outbox::new(OutboxLimits::default());
        c.register(2, &late);
        assert!(
            late.is_closed(),
            "a connection registering during shutdown is closed too"
        );
        c.unregister(1);
        assert!(c.is_empty());
    }
}
