//! The Redis broker: publish through the script, history from the topic's stream, and
//! subscription of topics that have local members.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use channels::history::Page;
use channels::presence::{MemberId, PresencePayload};
use channels::{
    Broker, BrokerError, Cursor, Envelope, Payload, Publication, Registry, Since, TopicKey,
};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::envelope::{WireEnvelope, channel_of, keys_of};
use super::presence::{self, PresenceState};
use super::subscriber;

/// How long a join waits for Redis to confirm a subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands queued to the subscriber task; subscribers wait when it is full.
const COMMAND_QUEUE: usize = 1024;

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Entries kept in each topic's history stream. Default 1000.
    pub history_size: usize,
    /// Lifetime of a topic's keys after its last publish. Default 24 h.
    pub history_ttl: Duration,
}

/// Counters (exported as metrics by the hub).
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Pub/sub reconnects.
    pub reconnects: AtomicU64,
    /// Messages fetched from history to fill a gap in the live stream.
    pub gap_fills: AtomicU64,
    /// Topics whose history was lost while members were live (told "not recovered").
    pub lost_histories: AtomicU64,
    /// Messages received that were not valid envelopes.
    pub malformed: AtomicU64,
}

/// A subscribed topic.
#[derive(Debug)]
pub(crate) struct Sub {
    pub topic: TopicKey,
    /// Local joins that asked for it.
    pub refs: usize,
    /// Cursor of the last message delivered from it, to detect gaps and duplicates.
    pub last: Option<Cursor>,
}

/// A request to the subscriber task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe(String, oneshot::Sender<Result<(), String>>),
    Unsubscribe(String),
}

pub(crate) struct Shared {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    pub script: redis::Script,
    pub presence_script: redis::Script,
    pub reap_script: redis::Script,
    pub presence: PresenceState,
    pub registry: Arc<Registry>,
    pub node_id: Arc<str>,
    pub config: RedisConfig,
    pub subs: Mutex<HashMap<String, Sub>>,
    pub stats: Arc<RedisStats>,
}

impl Shared {
    pub fn subs(&self) -> MutexGuard<'_, HashMap<String, Sub>> {
        // Map updates only: a panic cannot leave an entry half-written.
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest `limit` messages after `after` (one page of a catch-up).
    pub async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let [seq_key, epoch_key, hist_key] = keys_of(topic);
        let mut conn = self.conn.clone();
        let (epoch, head): (Option<String>, Option<u64>) = redis::pipe()
            .get(&epoch_key)
            .get(&seq_key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let head = head.unwrap_or(0);
        let epoch: Arc<str> = epoch.unwrap_or_default().into();
        let head_cursor = Cursor::new(epoch.clone(), head);
        let after = match after {
            Since::Beginning => 0,
            Since::After(c) if epoch.is_empty() || c.epoch != epoch || c.offset > head => {
                return Ok(Page {
                    messages: Vec::new(),
                    contiguous: false,
                    head: head_cursor,
                });
            }
            Since::After(c) => c.offset,
        };
        if epoch.is_empty() || limit == 0 {
            return Ok(Page {
                messages: Vec::new(),
                contiguous: after >= head,
                head: head_cursor,
            });
        }
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&hist_key)
            .arg(format!("({after}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let messages = self.parse_entries(topic, &entries);
        let first = messages
            .first()
            .and_then(|e| e.cursor.as_ref().map(|c| c.offset));
        let contiguous = match first {
            Some(f) => f == after + 1,
            None => after >= head,
        };
        Ok(Page {
            messages,
            contiguous,
            head: head_cursor,
        })
    }

    fn parse_entries(
        &self,
        topic: &TopicKey,
        entries: &[(String, Vec<(String, String)>)],
    ) -> Vec<Arc<Envelope>> {
        let mut messages = Vec::with_capacity(entries.len());
        for (_, fields) in entries {
            let Some((_, text)) = fields.iter().find(|(k, _)| k == "e") else {
                continue;
            };
            match WireEnvelope::parse(text).and_then(|w| w.into_envelope(&self.node_id)) {
                Ok((env, _)) => messages.push(Arc::new(env)),
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "skipping a malformed history entry")
                }
            }
        }
        messages
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The Redis broker of one node.
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node_id", &self.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects and starts the subscriber task, which delivers to `registry`.
    pub async fn connect(
        config: RedisConfig,
        registry: Arc<Registry>,
        node_id: Arc<str>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let conn = ConnectionManager::new(client.clone()).await?;
        let shared = Arc::new(Shared {
            client,
            conn,
            script: redis::Script::new(super::PUBLISH_SCRIPT),
            presence_script: redis::Script::new(presence::PRESENCE_SCRIPT),
            reap_script: redis::Script::new(presence::REAP_SCRIPT),
            presence: PresenceState::default(),
            registry,
            node_id,
            config,
            subs: Mutex::new(HashMap::new()),
            stats: Arc::new(RedisStats::default()),
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let subscriber = tokio::spawn(subscriber::run(shared.clone(), rx));
        let heartbeat = tokio::spawn(heartbeat(shared.clone()));
        // One handle stops both: the subscriber ends with the broker's command channel, the
        // heartbeat is aborted with the returned handle.
        let task = tokio::spawn(async move {
            let _ = subscriber.await;
            heartbeat.abort();
        });
        Ok((
            Self {
                shared,
                commands: tx,
            },
            task,
        ))
    }

    /// Removes this node's presence everywhere at once (graceful shutdown), instead of letting
    /// the others reap it after [`presence::DEAD_AFTER`].
    pub async fn close(&self) {
        let mut conn = self.shared.conn.clone();
        let id = &*self.shared.node_id;
        let res: redis::RedisResult<i64> = self
            .shared
            .reap_script
            .key(presence::NODES_KEY)
            .key(presence::node_topics_key(id))
            .arg(id)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "redis: removing this node's presence failed");
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<RedisStats> {
        self.shared.stats.clone()
    }

    /// A command connection (presence and other Redis-side state share it).
    pub fn connection(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }

    /// Epoch candidate for a topic that has none: 10 random base-36 characters after `r`.
    fn new_epoch() -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut n = rand::random::<u64>();
        let mut s = String::from("r");
        for _ in 0..10 {
            s.push(ALPHABET[(n % 36) as usize] as char);
            n /= 36;
        }
        s
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, p: Publication) -> Result<Option<Cursor>, BrokerError> {
        let [seq_key, epoch_key, hist_key] = keys_of(&p.topic);
        let (json, b64) = match &p.payload {
            Payload::Json(b) => (String::from_utf8_lossy(b).into_owned(), String::new()),
            Payload::Binary(b) => (
                String::new(),
                base64::engine::general_purpose::STANDARD.encode(b),
            ),
        };
        let origin = p
            .origin
            .map(|c| format!("{}:{c}", self.shared.node_id))
            .unwrap_or_default();
        let cfg = &self.shared.config;
        let compact = channels::chat::is_chat(&p.topic)
            && &*p.event == "done"
            && channels::chat::compacts(&Envelope {
                topic: p.topic.clone(),
                event: p.event.clone(),
                payload: p.payload.clone(),
                cursor: None,
                time_ms: 0,
            });
        let mut conn = self.shared.conn.clone();
        let (offset, epoch): (u64, String) = self
            .shared
            .script
            .key(seq_key)
            .key(epoch_key)
            .key(hist_key)
            .arg(channel_of(&p.topic))
            .arg(p.topic.name())
            .arg(if p.topic.is_private() { "1" } else { "0" })
            .arg(&*p.event)
            .arg(json)
            .arg(b64)
            .arg(origin)
            .arg(Self::new_epoch())
            .arg(if channels::chat::is_chat(&p.topic) {
                crate::MEMORY_CHAT_HISTORY.max(cfg.history_size)
            } else {
                cfg.history_size
            })
            .arg(cfg.history_ttl.as_secs().max(1))
            .arg(if compact { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Some(Cursor::new(epoch.into(), offset)))
    }

    async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        self.shared.read(topic, after, limit).await
    }

    async fn replay(
        &self,
        topic: &TopicKey,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Envelope>>, BrokerError> {
        // The stream is keyed by offset, not time: read the retained tail and filter by time.
        let rec = self
            .history(topic, &Since::Beginning, self.shared.config.history_size)
            .await?;
        let mut out: Vec<_> = rec
            .messages
            .into_iter()
            .filter(|e| e.time_ms >= since_ms)
            .collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }

    async fn subscribe(&self, topic: &TopicKey) -> Result<(), BrokerError> {
        let channel = channel_of(topic);
        {
            let mut subs = self.shared.subs();
            let sub = subs.entry(channel.clone()).or_insert_with(|| Sub {
                topic: topic.clone(),
                refs: 0,
                last: None,
            });
            sub.refs += 1;
            if sub.refs > 1 {
                return Ok(());
            }
        }
        // First local member: subscribe before the join goes on to read history, so nothing
        // published in between is missed. If Redis is down the entry stays, and the subscriber
        // task subscribes it when it reconnects.
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(channel, ack))
            .await
            .map_err(|_| BrokerError::Unavailable("subscriber task stopped".into()))?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BrokerError::Unavailable(e)),
            Ok(Err(_)) => Err(BrokerError::Unavailable("subscriber task stopped".into())),
            Err(_) => Err(BrokerError::Unavailable("subscribe timed out".into())),
        }
    }

    async fn presence_track(
        &self,
        topic: &TopicKey,
        member: MemberId,
        key: &str,
        meta: &PresencePayload,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        shared.presence.own_track(topic, member, key, meta);
        let mut conn = shared.conn.clone();
        presence::publish_join(
            &mut conn,
            &shared.presence_script,
            &shared.node_id,
            topic,
            member,
            key,
            meta,
        )
        .await
        .map_err(unavailable)
    }

    async fn presence_untrack(
        &self,
        topic: &TopicKey,
        member: MemberId,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        shared.presence.own_untrack(topic, member);
        let mut conn = shared.conn.clone();
        presence::publish_leave(
            &mut conn,
            &shared.presence_script,
            &shared.node_id,
            topic,
            member,
        )
        .await
        .map_err(unavailable)
    }

    async fn unsubscribe(&self, topic: &TopicKey) -> Result<(), BrokerError> {
        let channel = channel_of(topic);
        {
            let mut subs = self.shared.subs();
            let Some(sub) = subs.get_mut(&channel) else {
                return Ok(());
            };
            sub.refs = sub.refs.saturating_sub(1);
            if sub.refs > 0 {
                return Ok(());
            }
            subs.remove(&channel);
        }
        self.commands
            .send(Command::Unsubscribe(channel))
            .await
            .map_err(|_| BrokerError::Unavailable("subscriber task stopped".into()))
    }
}

/// Heartbeats this node and reaps nodes that stopped, every [`presence::HEARTBEAT`].
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(presence::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut conn = shared.conn.clone();
        let now = channels::envelope::now_ms();
        let dead_before = now.saturating_sub(presence::DEAD_AFTER.as_millis() as u64);
        let res: redis::RedisResult<((), Vec<String>)> = redis::pipe()
            .zadd(presence::NODES_KEY, &*shared.node_id, now)
            .cmd("ZRANGEBYSCORE")
            .arg(presence::NODES_KEY)
            .arg("-inf")
            .arg(dead_before)
            .query_async(&mut conn)
            .await;
        let dead = match res {
            Ok(((), dead)) => dead,
            Err(e) => {
                tracing::debug!(error = %e, "redis: heartbeat failed");
                continue;
            }
        };
        for node in dead.into_iter().filter(|n| *n != *shared.node_id) {
            let reaped: redis::RedisResult<i64> = shared
                .reap_script
                .key(presence::NODES_KEY)
                .key(presence::node_topics_key(&node))
                .arg(&node)
                .invoke_async(&mut conn)
                .await;
            match reaped {
                Ok(n) if n >= 0 => {
                    tracing::info!(node, entries = n, "redis: reaped a silent node's presence")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(node, error = %e, "redis: reaping a silent node failed"),
            }
        }
    }
}
