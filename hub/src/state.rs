//! Shared application state handed to every route and transport.

use std::sync::Arc;

use channels::Node;
use store::Backends;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::JwtVerifier;
use crate::config::Config;

/// Cheap to clone; everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Configuration the process started with.
    pub config: Arc<Config>,
    /// The channel node (registry, broker, verifier).
    pub node: Arc<Node>,
    /// The backends (kept for background maintenance such as history eviction).
    pub backends: Backends,
    /// Verifies client tokens on connect and on REST calls.
    pub verifier: Arc<JwtVerifier>,
    /// Cancelled when the hub shuts down: every connection task watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them (bounded by the drain timeout).
    pub tasks: TaskTracker,
}

impl AppState {
    /// State on the embedded in-memory default with the given token secret.
    pub fn memory(config: Config, secret: &str) -> Self {
        let verifier = Arc::new(JwtVerifier::hs256(secret.as_bytes()));
        let backends =
            Backends::memory(config.node_config(), verifier.clone(), config.history_size);
        Self {
            node: backends.node.clone(),
            backends,
            verifier,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }
}
