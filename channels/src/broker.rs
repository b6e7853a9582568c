//! The broker: where publications get their cursor, are kept for resume, and reach every node.
//!
//! [`MemoryBroker`] is the embedded default (single node, no Redis, no Postgres), not a mock: it
//! numbers messages per topic, keeps each topic's [`HistoryRing`], and hands every message to the
//! local [`Registry`] in offset order. The Redis and Postgres brokers (crate `store`) implement the
//! same trait and pass the same conformance tests.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::cursor::{Cursor, Since};
use crate::envelope::{Envelope, Payload, now_ms};
use crate::history::{HistoryRing, Page, Recovery};
use crate::presence::{MemberId, PresencePayload};
use crate::registry::{ConnId, Registry};
use crate::topic::TopicKey;

/// A message to publish; the broker assigns its cursor.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Target topic.
    pub topic: TopicKey,
    /// Broadcast event name.
    pub event: Arc<str>,
    /// User payload.
    pub payload: Payload,
    /// The publishing connection on this node, so it can be skipped unless it asked for `self`.
    pub origin: Option<ConnId>,
}

/// A backend failure. The message is for logs; clients get a generic error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backend could not be reached or refused the operation.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Publishing, history and cross-node subscription, as one trait because every backend does the
/// three together (the Redis script numbers, stores and publishes in one step).
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Publishes: assigns the next cursor, keeps the message in history, and delivers it to every
    /// member on every node. Returns the cursor when the backend numbers messages.
    async fn publish(&self, publication: Publication) -> Result<Option<Cursor>, BrokerError>;

    /// The oldest `limit` messages after `after`: one page of a catch-up, which pages through a
    /// history of any length without holding it in memory at once.
    async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError>;

    /// Messages after `since`, at most `limit`, with whether that is all of them: when more were
    /// missed than `limit`, the newest `limit` (and `recovered: false`). Built on
    /// [`Broker::read`], so every backend has the same semantics.
    async fn history(
        &self,
        topic: &TopicKey,
        since: &Since,
        limit: usize,
    ) -> Result<Recovery, BrokerError> {
        let first = self.read(topic, since, limit).await?;
        let after = match since {
            Since::After(c) if c.epoch == first.head.epoch => c.offset,
            _ => 0,
        };
        let reached = first
            .messages
            .last()
            .and_then(|e| e.cursor.as_ref())
            .map_or(after, |c| c.offset);
        if reached >= first.head.offset || !first.contiguous && first.messages.len() < limit {
            return Ok(Recovery {
                messages: first.messages,
                recovered: first.contiguous,
                head: first.head,
            });
        }
        // More were missed than `limit`: the newest `limit`.
        let from = first.head.offset.saturating_sub(limit as u64);
        let newest = Since::After(Cursor::new(first.head.epoch.clone(), from));
        let page = self.read(topic, &newest, limit).await?;
        Ok(Recovery {
            messages: page.messages,
            recovered: false,
            head: page.head,
        })
    }

    /// Supabase `broadcast.replay`: the newest `limit` messages published at or after `since_ms`.
    async fn replay(
        &self,
        topic: &TopicKey,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Envelope>>, BrokerError>;

    /// The first local member joined `topic`: start receiving it from other nodes.
    async fn subscribe(&self, _topic: &TopicKey) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The last local member left `topic`.
    async fn unsubscribe(&self, _topic: &TopicKey) -> Result<(), BrokerError> {
        Ok(())
    }

    /// A local member tracked presence (already applied to the local registry): share it with
    /// the other nodes. Single-node brokers need nothing.
    async fn presence_track(
        &self,
        _topic: &TopicKey,
        _member: MemberId,
        _key: &str,
        _meta: &PresencePayload,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// A local member's presence ended (untrack, leave or disconnect).
    async fn presence_untrack(
        &self,
        _topic: &TopicKey,
        _member: MemberId,
    ) -> Result<(), BrokerError> {
        Ok(())
    }
}

const SHARDS: usize = 32;

#[derive(Debug)]
struct TopicHistory {
    ring: HistoryRing,
    last_used: Instant,
}

/// The in-process broker.
pub struct MemoryBroker {
    registry: Arc<Registry>,
    capacity: usize,
    /// History size per topic kind where it differs from `capacity` (build timelines keep more).
    kind_capacity: HashMap<String, usize>,
    shards: Vec<Mutex<HashMap<TopicKey, Arc<Mutex<TopicHistory>>>>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section below is a map lookup/insert or a ring append: a panic cannot leave
    // them half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh epoch: 10 random base-36 characters.
fn new_epoch() -> Arc<str> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = rand::random::<u64>();
    let s: String = (0..10)
        .map(|_| {
            let c = ALPHABET[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect();
    s.into()
}

impl MemoryBroker {
    /// A broker that keeps the last `capacity` messages of each topic and delivers to `registry`.
    pub fn new(registry: Arc<Registry>, capacity: usize) -> Self {
        Self {
            registry,
            capacity,
            kind_capacity: HashMap::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Keeps `capacity` messages for topics of `kind` (`build` for `build:…`).
    pub fn with_kind_capacity(mut self, kind: &str, capacity: usize) -> Self {
        self.kind_capacity.insert(kind.to_owned(), capacity);
        self
    }

    fn history_of(&self, topic: &TopicKey) -> Arc<Mutex<TopicHistory>> {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        let mut shard = lock(&self.shards[(h.finish() as usize) % SHARDS]);
        shard
            .entry(topic.clone())
            .or_insert_with(|| {
                let capacity = topic
                    .kind()
                    .and_then(|k| self.kind_capacity.get(k))
                    .copied()
                    .unwrap_or(self.capacity);
                Arc::new(Mutex::new(TopicHistory {
                    ring: HistoryRing::new(new_epoch(), capacity),
                    last_used: Instant::now(),
                }))
            })
            .clone()
    }

    /// Publishes synchronously (the memory broker never waits).
    pub fn publish_now(&self, p: Publication) -> Cursor {
        let history = self.history_of(&p.topic);
        let mut h = lock(&history);
        let cursor = h.ring.next_cursor();
        let env = Arc::new(Envelope {
            topic: p.topic,
            event: p.event,
            payload: p.payload,
            cursor: Some(cursor.clone()),
            time_ms: now_ms(),
        });
        h.ring.append(env.clone());
        if crate::chat::compacts(&env) {
            h.ring.compact();
        }
        h.last_used = Instant::now();
        // Delivered under the history lock so every member sees this topic in offset order.
        self.registry.deliver(&env, p.origin);
        cursor
    }

    /// Forgets the history of topics that had no publish or join for `idle` and have no local
    /// member. A topic created again later gets a new epoch, so old cursors are reported as not
    /// recovered instead of pointing into the new numbering.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut evicted = 0;
        for shard in &self.shards {
            lock(shard).retain(|topic, h| {
                let keep = now.duration_since(lock(h).last_used) < idle
                    || self.registry.member_count(topic) > 0;
                evicted += usize::from(!keep);
                keep
            });
        }
        evicted
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, publication: Publication) -> Result<Option<Cursor>, BrokerError> {
        Ok(Some(self.publish_now(publication)))
    }

    async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let history = self.history_of(topic);
        let h = lock(&history);
        Ok(h.ring.read(after, limit))
    }

    async fn replay(
        &self,
        topic: &TopicKey,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Envelope>>, BrokerError> {
        let history = self.history_of(topic);
        let h = lock(&history);
        Ok(h.ring.since_time(since_ms, limit))
    }
}

/// Sends each topic kind to its own broker: durable kinds (build timelines) to Postgres, the rest
/// to the fast default. Every publication of one topic goes to one broker, so a topic has one
/// cursor space.
#[derive(Debug)]
pub struct KindRouter {
    routes: HashMap<String, Arc<dyn Broker>>,
    default: Arc<dyn Broker>,
}

impl KindRouter {
    /// Routes everything to `default` until [`KindRouter::route`] says otherwise.
    pub fn new(default: Arc<dyn Broker>) -> Self {
        Self {
            routes: HashMap::new(),
            default,
        }
    }

    /// Sends topics of `kind` to `broker`.
    pub fn route(mut self, kind: &str, broker: Arc<dyn Broker>) -> Self {
        self.routes.insert(kind.to_owned(), broker);
        self
    }

    fn of(&self, topic: &TopicKey) -> &Arc<dyn Broker> {
        topic
            .kind()
            .and_then(|k| self.routes.get(k))
            .unwrap_or(&self.default)
    }
}

#[async_trait]
impl Broker for KindRouter {
    async fn publish(&self, mut publication: Publication) -> Result<Option<Cursor>, BrokerError> {
        let broker = self.of(&publication.topic);
        if crate::chat::is_chat(&publication.topic) && &*publication.event == "done" {
            // The stream compacts to its `done`, so `done` must carry the whole text.
            let text = crate::chat::text_so_far(broker.as_ref(), &publication.topic).await?;
            publication.payload = crate::chat::completed_done(&publication.payload, &text);
        }
        broker.publish(publication).await
    }

    async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        self.of(topic).read(topic, after, limit).await
    }

    async fn replay(
        &self,
        topic: &TopicKey,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Envelope>>, BrokerError> {
        self.of(topic).replay(topic, since_ms, limit).await
    }

    /// Routed kinds subscribe on their broker for messages and on the default one too: presence
    /// always travels through the default (cluster) broker, whatever carries the messages.
    async fn subscribe(&self, topic: &TopicKey) -> Result<(), BrokerError> {
        let routed = self.of(topic);
        if !Arc::ptr_eq(routed, &self.default) {
            routed.subscribe(topic).await?;
        }
        self.default.subscribe(topic).await
    }

    async fn unsubscribe(&self, topic: &TopicKey) -> Result<(), BrokerError> {
        let routed = self.of(topic);
        if !Arc::ptr_eq(routed, &self.default) {
            routed.unsubscribe(topic).await?;
        }
        self.default.unsubscribe(topic).await
    }

    async fn presence_track(
        &self,
        topic: &TopicKey,
        member: MemberId,
        key: &str,
        meta: &PresencePayload,
    ) -> Result<(), BrokerError> {
        self.default.presence_track(topic, member, key, meta).await
    }

    async fn presence_untrack(
        &self,
        topic: &TopicKey,
        member: MemberId,
    ) -> Result<(), BrokerError> {
        self.default.presence_untrack(topic, member).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publication(n: u32) -> Publication {
        Publication {
            topic: TopicKey::new("t", false).unwrap(),
            event: "e".into(),
            payload: Payload::Json(Bytes::from(n.to_string())),
            origin: None,
        }
    }

    #[tokio::test]
    async fn numbers_messages_and_serves_history() {
        let b = MemoryBroker::new(Arc::new(Registry::new(10)), 3);
        let topic = TopicKey::new("t", false).unwrap();
        let mut cursors = Vec::new();
        for i in 0..5 {
            cursors.push(b.publish(publication(i)).await.unwrap().unwrap());
        }
        assert_eq!(
            cursors.iter().map(|c| c.offset).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let rec = b
            .history(&topic, &Since::After(cursors[1].clone()), 10)
            .await
            .unwrap();
        assert_eq!(rec.messages.len(), 3);
        assert!(rec.recovered);
        assert_eq!(rec.head, cursors[4]);
    }

    #[tokio::test]
    async fn eviction_changes_the_epoch() {
        let b = MemoryBroker::new(Arc::new(Registry::new(10)), 3);
        let first = b.publish(publication(1)).await.unwrap().unwrap();
        assert_eq!(b.evict_idle(Duration::ZERO), 1);
        let second = b.publish(publication(2)).await.unwrap().unwrap();
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 1);
    }
}
