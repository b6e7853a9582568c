//! Backends behind the `channels` traits, and the choice between them.
//!
//! - Without `DATABASE_URL`: the embedded default, everything in memory
//!   ([`channels::MemoryBroker`], [`channels::sessions::MemorySessionStore`]).
//! - With `DATABASE_URL`: build sessions and `build:` topics live in Postgres ([`pg`]): the
//!   outbox is their history and cursor, a LISTEN/NOTIFY feed delivers them. Other topics stay
//!   on the fast in-memory broker (Redis, for several nodes, comes with its issue).
//!
//! The hub only sees [`Backends`]; the choice is made here once.

pub mod pg;

use std::sync::Arc;
use std::time::Duration;

use channels::broker::KindRouter;
use channels::kinds::{BuildKind, Kinds};
use channels::node::{Node, NodeConfig};
use channels::sessions::{MemorySessionStore, SessionStore};
use channels::{Broker, MemoryBroker, Registry, TokenVerifier};
use tokio::task::JoinHandle;

/// Messages kept per build topic by the in-memory default (a build's whole timeline).
pub const MEMORY_BUILD_HISTORY: usize = 100_000;

/// Why the backends could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The configuration is unusable (a malformed URL).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be reached.
    #[error("cannot connect to Postgres: {0}")]
    Connect(String),
    /// The migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(String),
}

/// Backend configuration (filled from the hub's command line).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Postgres URL; `None` for the in-memory default.
    pub database_url: Option<String>,
    /// Messages kept per topic by the in-memory history. Default 1000.
    pub history_size: usize,
    /// How long build-session ownership lookups are cached. Default 5 s.
    pub ownership_ttl: Duration,
    /// Outbox rows older than this are deleted. Default 7 days.
    pub outbox_retention: Duration,
    /// Postgres pool size. Default 8.
    pub pool_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            history_size: 1000,
            ownership_ttl: Duration::from_secs(5),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            pool_size: 8,
        }
    }
}

/// The backends one hub process runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The node every transport shares.
    pub node: Arc<Node>,
    /// Build sessions and timelines.
    pub sessions: Arc<dyn SessionStore>,
    /// The in-memory broker (history eviction runs on it).
    pub memory: Arc<MemoryBroker>,
    /// The Postgres side, when configured.
    pub postgres: Option<Postgres>,
}

/// Handles of the Postgres backend.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// The pool (REST reads, publishes, history).
    pub pool: sqlx::PgPool,
    /// Feed counters.
    pub feed: Arc<pg::FeedStats>,
    /// The feed task; aborted when the hub stops.
    pub feed_task: Arc<JoinHandle<()>>,
    /// Outbox retention.
    pub retention: Duration,
}

/// A random id for this process, so rows it publishes can be recognised as its own.
fn node_id() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

impl Backends {
    /// The embedded default: one process, everything in memory.
    pub fn memory(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        store: &StoreConfig,
    ) -> Self {
        let registry = Arc::new(Registry::new(config.outbox.max_frames));
        let memory = Arc::new(
            MemoryBroker::new(registry.clone(), store.history_size)
                .with_kind_capacity("build", MEMORY_BUILD_HISTORY),
        );
        let broker: Arc<dyn Broker> = memory.clone();
        let sessions: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new(broker.clone()));
        let kinds = Kinds::default().with(
            "build",
            Arc::new(BuildKind::new(sessions.clone(), store.ownership_ttl)),
        );
        let node = Node::new(config, verifier, registry, broker, kinds);
        Self {
            node,
            sessions,
            memory,
            postgres: None,
        }
    }

    /// Connects what `store` configures: Postgres when a URL is given (migrations applied, feed
    /// started), the in-memory default otherwise.
    pub async fn connect(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        store: &StoreConfig,
    ) -> Result<Self, StoreError> {
        let Some(url) = store.database_url.clone() else {
            return Ok(Self::memory(config, verifier, store));
        };
        let pool = pg::connect(&url, store.pool_size).await?;
        let epoch = pg::epoch(&pool).await?;
        let node_id = node_id();
        let registry = Arc::new(Registry::new(config.outbox.max_frames));
        let memory = Arc::new(MemoryBroker::new(registry.clone(), store.history_size));
        let durable: Arc<dyn Broker> = Arc::new(pg::PgBroker::new(
            pool.clone(),
            epoch.clone(),
            node_id.clone(),
        ));
        let broker: Arc<dyn Broker> =
            Arc::new(KindRouter::new(memory.clone()).route("build", durable));
        let sessions: Arc<dyn SessionStore> = Arc::new(pg::PgSessionStore::new(pool.clone()));
        let kinds = Kinds::default().with(
            "build",
            Arc::new(BuildKind::new(sessions.clone(), store.ownership_ttl)),
        );
        let feed = pg::Feed::new(pool.clone(), url, registry.clone(), epoch, node_id);
        let stats = feed.stats.clone();
        let feed_task = tokio::spawn(feed.run());
        let node = Node::new(config, verifier, registry, broker, kinds);
        Ok(Self {
            node,
            sessions,
            memory,
            postgres: Some(Postgres {
                pool,
                feed: stats,
                feed_task: Arc::new(feed_task),
                retention: store.outbox_retention,
            }),
        })
    }

    /// Stops background work (the feed). In-flight REST and channel work has finished by then.
    pub async fn close(&self) {
        if let Some(pg) = &self.postgres {
            pg.feed_task.abort();
            pg.pool.close().await;
        }
    }
}
