//! Shared application state handed to every route and transport.

use std::sync::Arc;

use anyhow::Context as _;
use channels::Node;
use channels::sessions::SessionStore;
use store::Backends;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtVerifier, KeyError};
use crate::config::Config;
use crate::jwks::{JwksSource, RefreshTiming};
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
    /// REST requests per hour per user (`--rest-requests-per-hour`).
    pub rest_quota: Arc<crate::api::rate_limit::Quota>,
    /// New connections per second per IP address (`--connections-per-sec-per-ip`).
    pub conn_rate: Arc<channels::limits::KeyedLimiter>,
    /// When the process started (`GET /version`).
    pub started: std::time::Instant,
    /// Set when draining begins (readiness turns 503 before connections are closed).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// State on the embedded in-memory default with the given token secret (ignores
    /// `database_url`; tests use it to get a hub without any I/O at start). Fails only when the
    /// token settings do (a key file that cannot be read, an algorithm without a key).
    pub fn memory(config: Config, secret: &str) -> Result<Self, KeyError> {
        if let Some(url) = &config.jwt_jwks_url {
            return Err(KeyError::Jwks {
                url: url.clone(),
                reason: "a JWKS URL is fetched at start: use AppState::connect".into(),
            });
        }
        let verifier = Arc::new(config.jwt_verifier(secret.as_bytes())?);
        let backends = Backends::memory(
            config.node_config(),
            verifier.clone(),
            &config.store_config(),
        );
        Ok(Self::with_backends(config, verifier, backends))
    }

    /// State on the backends the configuration names: Postgres when `database_url` is set
    /// (connects and migrates), memory otherwise.
    pub async fn connect(config: Config, secret: &str) -> anyhow::Result<Self> {
        let mut settings = config
            .jwt_settings(secret.as_bytes())
            .context("loading the JWT settings")?;
        let mut jwks = None;
        if let Some(url) = &config.jwt_jwks_url {
            let source = JwksSource::new(url, config.jwt_jwks_ca.as_deref())?;
            let (body, keys) = source.fetch().await?;
            tracing::info!(url = %url, keys = keys.len(), "fetched the JWKS");
            settings.remote_keys = keys;
            jwks = Some((source, body));
        }
        let verifier = Arc::new(JwtVerifier::new(settings).context("checking the JWT settings")?);
        let backends = Backends::connect(
            config.node_config(),
            verifier.clone(),
            &config.store_config(),
        )
        .await
        .context("starting the backends")?;
        let timing = RefreshTiming {
            every: config.jwt_jwks_refresh,
            cooldown: config.jwt_jwks_cooldown,
        };
        let state = Self::with_backends(config, verifier, backends);
        if let Some((source, body)) = jwks {
            tokio::spawn(crate::jwks::refresh(
                source,
                state.verifier.clone(),
                timing,
                body,
                state.shutdown.clone(),
            ));
        }
        Ok(state)
    }

    fn with_backends(config: Config, verifier: Arc<JwtVerifier>, backends: Backends) -> Self {
        let simulator = config
            .simulate_builds
            .then(|| Simulator::new(config.simulate_max_builds, config.simulate_step_delay));
        let rest_quota = Arc::new(crate::api::rate_limit::Quota::new(
            config.rest_requests_per_hour,
            std::time::Duration::from_secs(3600),
        ));
        let conn_rate = Arc::new(channels::limits::KeyedLimiter::per_second_burst(
            config.connections_per_sec_per_ip,
            config.connections_per_sec_per_ip.saturating_mul(2),
        ));
        Self {
            conn_rate,
            rest_quota,
            simulator,
            node: backends.node.clone(),
            sessions: backends.sessions.clone(),
            backends,
            secret: Arc::from(verifier.secret()),
            verifier,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: std::time::Instant::now(),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Whether the hub has begun draining (see [`crate::server`]).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}
