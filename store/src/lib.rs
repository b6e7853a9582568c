//! Backends behind the `channels` traits: Postgres and Redis implementations, and the choice of
//! the in-memory default when no URL is configured.
//!
//! Only the embedded default exists so far: `channels::MemoryBroker`. The Postgres outbox feed and
//! the Redis broker come with their issues; `hub` already goes through [`Backends`], so adding them
//! changes no transport code.

use std::sync::Arc;

use channels::node::{Node, NodeConfig};
use channels::{MemoryBroker, TokenVerifier};

/// The backends one hub process runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The node every transport shares.
    pub node: Arc<Node>,
    /// The in-memory broker, when that is the backend (for periodic history eviction).
    pub memory: Option<Arc<MemoryBroker>>,
}

impl Backends {
    /// The embedded default: one process, everything in memory.
    pub fn memory(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        history_size: usize,
    ) -> Self {
        let (node, broker) = Node::memory(config, verifier, history_size);
        Self {
            node,
            memory: Some(broker),
        }
    }
}
