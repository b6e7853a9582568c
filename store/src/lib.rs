//! Backends behind the `channels` traits, and the choice between them.
//!
//! - Without `DATABASE_URL`: the embedded default, everything in memory
//!   ([`channels::MemoryBroker`], [`channels::sessions::MemorySessionStore`]).
//! - With `DATABASE_URL`: build sessions and `build:` topics live in Postgres ([`pg`]): the
//!   outbox is their history and cursor, a LISTEN/NOTIFY feed delivers them. Other topics stay
//!   on the fast broker: Redis when `REDIS_URL` is set (several nodes share one set of
//!   channels, [`redis`]), memory otherwise.
//!
//! The hub only sees [`Backends`]; the choice is made here once.

pub mod pg;
pub mod redis;

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

/// Messages kept per chat topic (by the in-memory default and in Redis): a chat stream's history is the whole
/// stream until `done` compacts it to one entry, because the late joiner's `snapshot` and the
/// full text added to `done` are folded from it. With the general history size (1000 by
/// default) a longer answer would lose its beginning from both.
pub const MEMORY_CHAT_HISTORY: usize = 100_000;

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
    /// Redis could not be reached.
    #[error("cannot connect to Redis: {0}")]
    Redis(String),
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
    /// Redis URL; `None` for a single node.
    pub redis_url: Option<String>,
    /// Lifetime of a Redis topic's history after its last message. Default 24 h.
    pub redis_history_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            history_size: 1000,
            ownership_ttl: Duration::from_secs(5),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            pool_size: 8,
            redis_url: None,
            redis_history_ttl: Duration::from_secs(24 * 3600),
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
    /// The Redis side, when configured.
    pub redis: Option<Redis>,
}

/// Handles of the Redis backend.
#[derive(Debug, Clone)]
pub struct Redis {
    /// The broker (also removes this node's presence on close).
    pub broker: redis::RedisBroker,
    /// Counters.
    pub stats: Arc<redis::RedisStats>,
    /// The subscriber and heartbeat tasks.
    pub task: Arc<JoinHandle<()>>,
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

/// One backend's answer to a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `postgres` or `redis`.
    pub backend: &'static str,
    /// `None` when it answered; otherwise why not.
    pub error: Option<String>,
    /// How long the check took, milliseconds.
    pub millis: u64,
}

impl Readiness {
    async fn of(
        backend: &'static str,
        timeout: Duration,
        check: impl std::future::Future<Output = Result<(), String>>,
    ) -> Self {
        let start = std::time::Instant::now();
        let error = match tokio::time::timeout(timeout, check).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
        };
        Self {
            backend,
            error,
            millis: start.elapsed().as_millis() as u64,
        }
    }
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
                .with_kind_capacity("build", MEMORY_BUILD_HISTORY)
                .with_kind_capacity(channels::chat::KIND, MEMORY_CHAT_HISTORY),
        );
        // Through the router even with one broker: it is where chat streams get their full
        // text on `done`.
        let broker: Arc<dyn Broker> = Arc::new(KindRouter::new(memory.clone()));
        let sessions: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new(broker.clone()));
        let build: Arc<dyn channels::kinds::ChannelKind> =
            Arc::new(BuildKind::new(sessions.clone(), store.ownership_ttl));
        let kinds = Kinds::new(config.ungranted)
            .with("build", build.clone())
            .with(
                channels::terminal::KIND,
                Arc::new(channels::kinds::TerminalKind::new(build)),
            );
        let node = Node::new(config, verifier, registry, broker, kinds);
        Self {
            node,
            sessions,
            memory,
            postgres: None,
            redis: None,
        }
    }

    /// Connects what `store` configures: Postgres when a URL is given (migrations applied, feed
    /// started) for build sessions and `build:` topics, Redis when a URL is given for every other
    /// topic (several nodes share them), the in-memory default for whatever is not configured.
    pub async fn connect(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        store: &StoreConfig,
    ) -> Result<Self, StoreError> {
        if store.database_url.is_none() && store.redis_url.is_none() {
            return Ok(Self::memory(config, verifier, store));
        }
        let node_id = node_id();
        let registry = Arc::new(Registry::new(config.outbox.max_frames));
        let memory = Arc::new(
            MemoryBroker::new(registry.clone(), store.history_size)
                .with_kind_capacity("build", MEMORY_BUILD_HISTORY)
                .with_kind_capacity(channels::chat::KIND, MEMORY_CHAT_HISTORY),
        );
        let mut fast: Arc<dyn Broker> = memory.clone();
        let mut redis_side = None;
        if let Some(url) = &store.redis_url {
            let cfg = redis::RedisConfig {
                url: url.clone(),
                history_size: store.history_size,
                history_ttl: store.redis_history_ttl,
            };
            let (broker, task) =
                redis::RedisBroker::connect(cfg, registry.clone(), node_id.clone())
                    .await
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
            fast = Arc::new(broker.clone());
            redis_side = Some(Redis {
                stats: broker.stats(),
                broker,
                task: Arc::new(task),
            });
        }
        let mut router = KindRouter::new(fast.clone());
        let mut feed = None;
        let sessions: Arc<dyn SessionStore> = match &store.database_url {
            Some(url) => {
                let pool = pg::connect(url, store.pool_size).await?;
                let epoch = pg::epoch(&pool).await?;
                let durable: Arc<dyn Broker> = Arc::new(pg::PgBroker::new(
                    pool.clone(),
                    epoch.clone(),
                    node_id.clone(),
                ));
                router = router.route("build", durable);
                let mut f =
                    pg::Feed::new(pool.clone(), url.clone(), registry.clone(), epoch, node_id);
                f.prepare()
                    .await
                    .map_err(|e| StoreError::Connect(e.to_string()))?;
                feed = Some((f, pool.clone()));
                Arc::new(pg::PgSessionStore::new(pool))
            }
            None => Arc::new(MemorySessionStore::new(fast.clone())),
        };
        let broker: Arc<dyn Broker> = Arc::new(router);
        // Rows `hub.publish()`ed for topics whose history lives in the fast broker are
        // re-published through the router, so they get those topics' cursors.
        let postgres = feed.map(|(f, pool)| {
            let stats = f.stats.clone();
            let shared = redis_side.is_some();
            let task = tokio::spawn(f.forward_to(broker.clone(), shared).run());
            Postgres {
                pool,
                feed: stats,
                feed_task: Arc::new(task),
                retention: store.outbox_retention,
            }
        });
        let build: Arc<dyn channels::kinds::ChannelKind> =
            Arc::new(BuildKind::new(sessions.clone(), store.ownership_ttl));
        let kinds = Kinds::new(config.ungranted)
            .with("build", build.clone())
            .with(
                channels::terminal::KIND,
                Arc::new(channels::kinds::TerminalKind::new(build)),
            );
        let node = Node::new(config, verifier, registry, broker, kinds);
        Ok(Self {
            node,
            sessions,
            memory,
            postgres,
            redis: redis_side,
        })
    }

    /// Whether each configured backend answers now: Postgres a `select 1`, Redis a `PING`,
    /// each within `timeout`. The embedded default has nothing to check (an empty list).
    pub async fn ready(&self, timeout: Duration) -> Vec<Readiness> {
        let mut out = Vec::new();
        if let Some(pg) = &self.postgres {
            let check = sqlx::query("select 1").execute(&pg.pool);
            out.push(
                Readiness::of("postgres", timeout, async {
                    check.await.map(|_| ()).map_err(|e| e.to_string())
                })
                .await,
            );
        }
        if let Some(r) = &self.redis {
            let mut conn = r.broker.connection();
            out.push(
                Readiness::of("redis", timeout, async move {
                    ::redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await,
            );
        }
        out
    }

    /// Stops background work (the feed). In-flight REST and channel work has finished by then.
    pub async fn close(&self) {
        if let Some(r) = &self.redis {
            r.broker.close().await;
            r.task.abort();
        }
        if let Some(pg) = &self.postgres {
            pg.feed_task.abort();
            pg.pool.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels::auth::{Principal, TokenError};
    use channels::{Payload, Publication, Since, TopicKey};

    #[derive(Debug)]
    struct NoTokens;

    impl TokenVerifier for NoTokens {
        fn verify(&self, _: &str) -> Result<Principal, TokenError> {
            Err(TokenError::Missing)
        }
    }

    fn publication(topic: &TopicKey, event: &str, json: String) -> Publication {
        Publication {
            topic: topic.clone(),
            event: event.into(),
            payload: Payload::Json(bytes::Bytes::from(json)),
            origin: None,
        }
    }

    /// A chat answer longer than the general history size keeps its whole text: in the late
    /// joiner's snapshot and in the `done` it compacts to.
    #[tokio::test]
    async fn memory_chat_streams_keep_their_whole_text_past_the_history_size() {
        let store = StoreConfig {
            history_size: 10,
            ..StoreConfig::default()
        };
        let backends = Backends::memory(NodeConfig::default(), Arc::new(NoTokens), &store);
        let broker = backends.node.broker.clone();
        let topic = TopicKey::new("chat:long", false).expect("topic");
        let mut full = String::new();
        for k in 0..50 {
            let text = format!("t{k} ");
            full.push_str(&text);
            let json = serde_json::json!({ "text": text }).to_string();
            broker
                .publish(publication(&topic, "token", json))
                .await
                .expect("publish a token");
        }
        let so_far = channels::chat::snapshot_of(broker.as_ref(), &topic)
            .await
            .expect("snapshot");
        assert_eq!(so_far.text, full, "the snapshot folds every token");
        broker
            .publish(publication(&topic, "done", "{}".into()))
            .await
            .expect("publish done");
        let page = broker
            .read(&topic, &Since::Beginning, 100)
            .await
            .expect("read the history");
        assert_eq!(page.messages.len(), 1, "compacted to the done");
        let Payload::Json(done) = &page.messages[0].payload else {
            panic!("done is JSON");
        };
        let done: serde_json::Value = serde_json::from_slice(done).expect("done JSON");
        assert_eq!(done["text"], full.as_str(), "done carries the whole text");
    }
}
