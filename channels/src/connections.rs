//! The set of open connections on this node, so the node can close them all at once.
//!
//! Shutdown goes through each connection's outbox rather than a cancellation future polled by
//! every connection task: closing an outbox wakes its writer exactly once, while a shared token
//! would be polled (and locked) on every event of every connection, and its waiter would sit in
//! every idle connection's memory. Later, draining in batches uses the same set.

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
