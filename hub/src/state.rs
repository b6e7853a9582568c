//! Shared application state handed to every route and transport.

use std::sync::Arc;

use channels::Node;
use channels::sessions::SessionStore;
use store::Backends;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::JwtVerifier;
use crate::config::Config;
use crate::simulate::Simulator;

/// Cheap to clone; everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Configuration the process started with.
    pub config: Arc<Config>,
    /// The channel node (registry, broker, verifier).
    pub node: Arc<Node>,
    /// The backends (kept for background maintenance such as history eviction).
    pub backends: Backends,
    /// Build sessions and timelines.
    pub sessions: Arc<dyn SessionStore>,
    /// The token secret, for tokens the hub issues itself (share-token exchange).
    pub secret: Arc<[u8]>,
    /// Verifies client tokens on connect and on REST calls.
    pub verifier: Arc<JwtVerifier>,
    /// Cancelled when the hub shuts down: every connection task watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them (bounded by the drain timeout).
    pub tasks: TaskTracker,
    /// Runs simulated builds for new sessions; `None` with `--simulate-builds false`.
    pub simulator: Option<Simulator>,
}

impl AppState {
    /// State on the embedded in-memory default with the given token secret (ignores
    /// `database_url`; tests use it to get a hub without any I/O at start).
    pub fn memory(config: Config, secret: &str) -> Self {
        let verifier = Arc::new(JwtVerifier::hs256(secret.as_bytes()));
        let backends = Backends::memory(config.node_config(), verifier, &config.store_config());
        Self::with_backends(config, secret, backends)
    }

    /// State on the backends the configuration names: Postgres when `database_url` is set
    /// (connects and migrates), memory otherwise.
    pub async fn connect(config: Config, secret: &str) -> Result<Self, store::StoreError> {
        let verifier = Arc::new(JwtVerifier::hs256(secret.as_bytes()));
        let backends =
            Backends::connect(config.node_config(), verifier, &config.store_config()).await?;
        Ok(Self::with_backends(config, secret, backends))
    }

    fn with_backends(config: Config, secret: &str, backends: Backends) -> Self {
        let simulator = config
            .simulate_builds
            .then(|| Simulator::new(config.simulate_max_builds, config.simulate_step_delay));
        Self {
            simulator,
            node: backends.node.clone(),
            sessions: backends.sessions.clone(),
            backends,
            verifier: Arc::new(JwtVerifier::hs256(secret.as_bytes())),
            secret: Arc::from(secret.as_bytes()),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }
}
