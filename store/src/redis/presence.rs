//! Presence across nodes.
//!
//! Each topic has a hash `hub:{<tid>}:presence` of `<node>:<member>` → `{"key","meta"}`, owned
//! by the node the member is connected to. A node changes its entries and publishes the diff on
//! the topic's channel in one script (`presence.lua`), so every node's merged view follows the
//! hash. Remote members appear in the local registry as detached members, which gives joiners the
//! merged `presence_state` and local members every remote join and leave once.
//!
//! Nodes heartbeat into `hub:nodes` (a sorted set of last-seen times). Any node that sees
//! another silent for [`DEAD_AFTER`] reaps it (`reap.lua`: once, whoever wins the `ZREM`),
//! removing its entries and publishing their leaves, so a node that dies has its members' presence
//! removed everywhere within about 10 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use channels::presence::{MemberId, PresencePayload};
use channels::{Registry, TopicKey};
use serde::{Deserialize, Serialize};

use super::envelope::{channel_of, tid};

/// How often a node heartbeats and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent this long is considered dead and reaped.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);

/// The `presence.lua` script.
pub const PRESENCE_SCRIPT: &str = include_str!("presence.lua");
/// The `reap.lua` script.
pub const REAP_SCRIPT: &str = include_str!("reap.lua");

/// Key of a topic's presence hash.
pub fn presence_key(topic: &TopicKey) -> String {
    format!("hub:{{{}}}:presence", tid(topic))
}

/// Key of the set of topics where `node` has presence entries.
pub fn node_topics_key(node: &str) -> String {
    format!("hub:node:{node}:topics")
}

/// The sorted set of node heartbeats.
pub const NODES_KEY: &str = "hub:nodes";

/// A presence message on a topic channel.
#[derive(Debug, Deserialize)]
pub struct PresenceMsg {
    /// `join` or `leave`.
    pub presence: String,
    /// `<node>:<member>`.
    pub member: String,
    /// Presence key (join only).
    #[serde(default)]
    pub key: Option<String>,
    /// Tracked payload (join only).
    #[serde(default)]
    pub meta: Option<PresencePayload>,
}

/// A hash entry's value.
#[derive(Debug, Deserialize)]
struct Entry {
    key: String,
    meta: PresencePayload,
}

/// This node's presence bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct PresenceState {
    /// Remote member (`<node>:<member>` on a topic) → its local detached member id.
    remote: Mutex<HashMap<(TopicKey, String), MemberId>>,
    /// This node's own tracked members, to publish again if Redis lost them.
    own: Mutex<HashMap<(TopicKey, MemberId), (String, PresencePayload)>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Map updates only: a panic cannot leave an entry half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Detached ids for remote members live in the upper half of the id space, away from
/// connection ids (which count up from 1).
const REMOTE_ID_BASE: u64 = 1 << 62;

impl PresenceState {
    fn local_id(&self, topic: &TopicKey, member: &str) -> MemberId {
        *lock(&self.remote)
            .entry((topic.clone(), member.to_owned()))
            .or_insert_with(|| REMOTE_ID_BASE + self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Applies a presence message from another node.
    pub fn apply(&self, registry: &Registry, topic: &TopicKey, node_id: &str, msg: PresenceMsg) {
        if msg
            .member
            .rsplit_once(':')
            .is_some_and(|(node, _)| node == node_id)
        {
            return; // our own, already applied locally
        }
        match msg.presence.as_str() {
            "join" => {
                let (Some(key), Some(meta)) = (msg.key, msg.meta) else {
                    return;
                };
                let id = self.local_id(topic, &msg.member);
                registry.track_detached(topic, id, &key, meta);
            }
            "leave" => {
                let id = lock(&self.remote).remove(&(topic.clone(), msg.member));
                if let Some(id) = id {
                    registry.untrack_detached(topic, id);
                }
            }
            _ => {}
        }
    }

    /// Replaces this node's view of `topic`'s remote members with the hash's content (`entries`
    /// = HGETALL). Members no longer in the hash leave; new or changed ones join.
    pub fn load(
        &self,
        registry: &Registry,
        topic: &TopicKey,
        node_id: &str,
        entries: Vec<(String, String)>,
    ) {
        let mut seen = Vec::new();
        for (member, value) in entries {
            if member
                .rsplit_once(':')
                .is_some_and(|(node, _)| node == node_id)
            {
                continue;
            }
            let Ok(entry) = serde_json::from_str::<Entry>(&value) else {
                tracing::warn!(topic = %topic, member, "redis: skipping a malformed presence entry");
                continue;
            };
            let id = self.local_id(topic, &member);
            registry.track_detached(topic, id, &entry.key, entry.meta);
            seen.push(member);
        }
        let gone: Vec<MemberId> = {
            let mut remote = lock(&self.remote);
            let stale: Vec<(TopicKey, String)> = remote
                .keys()
                .filter(|(t, m)| t == topic && !seen.contains(m))
                .cloned()
                .collect();
            stale
                .into_iter()
                .filter_map(|k| remote.remove(&k))
                .collect()
        };
        for id in gone {
            registry.untrack_detached(topic, id);
        }
    }

    /// Forgets remote members of a topic this node no longer follows.
    pub fn forget_topic(&self, registry: &Registry, topic: &TopicKey) {
        let gone: Vec<MemberId> = {
            let mut remote = lock(&self.remote);
            let keys: Vec<_> = remote.keys().filter(|(t, _)| t == topic).cloned().collect();
            keys.into_iter().filter_map(|k| remote.remove(&k)).collect()
        };
        for id in gone {
            registry.untrack_detached(topic, id);
        }
    }

    /// Records an own member's presence (for republishing after a Redis restart).
    pub fn own_track(&self, topic: &TopicKey, member: MemberId, key: &str, meta: &PresencePayload) {
        lock(&self.own).insert((topic.clone(), member), (key.to_owned(), meta.clone()));
    }

    /// Forgets an own member's presence.
    pub fn own_untrack(&self, topic: &TopicKey, member: MemberId) {
        lock(&self.own).remove(&(topic.clone(), member));
    }

    /// Own presences, to publish again.
    pub fn own_entries(&self) -> Vec<(TopicKey, MemberId, String, PresencePayload)> {
        lock(&self.own)
            .iter()
            .map(|((t, m), (k, p))| (t.clone(), *m, k.clone(), p.clone()))
            .collect()
    }
}

/// A presence message as published. Field order matters: receivers recognise presence messages
/// by their `{"presence"` prefix (struct fields serialise in declaration order).
#[derive(Serialize)]
struct PresenceOut<'a> {
    presence: &'a str,
    member: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a PresencePayload>,
}

/// The `join` message and hash value of an own member.
pub fn join_parts(
    node_id: &str,
    member: MemberId,
    key: &str,
    meta: &PresencePayload,
) -> (String, String, String) {
    let member = format!("{node_id}:{member}");
    let entry = serde_json::json!({ "key": key, "meta": meta }).to_string();
    let msg = serde_json::to_string(&PresenceOut {
        presence: "join",
        member: &member,
        key: Some(key),
        meta: Some(meta),
    })
    .unwrap_or_default();
    (member, entry, msg)
}

/// The `leave` message of an own member.
pub fn leave_parts(node_id: &str, member: MemberId) -> (String, String) {
    let member = format!("{node_id}:{member}");
    let msg = serde_json::to_string(&PresenceOut {
        presence: "leave",
        member: &member,
        key: None,
        meta: None,
    })
    .unwrap_or_default();
    (member, msg)
}

/// Runs the presence script for an own member's join.
pub async fn publish_join(
    conn: &mut redis::aio::ConnectionManager,
    script: &redis::Script,
    node_id: &str,
    topic: &TopicKey,
    member: MemberId,
    key: &str,
    meta: &PresencePayload,
) -> redis::RedisResult<()> {
    let (member, entry, msg) = join_parts(node_id, member, key, meta);
    script
        .key(presence_key(topic))
        .key(node_topics_key(node_id))
        .arg("join")
        .arg(member)
        .arg(entry)
        .arg(channel_of(topic))
        .arg(tid(topic))
        .arg(msg)
        .invoke_async::<redis::Value>(conn)
        .await
        .map(|_| ())
}

/// Runs the presence script for an own member's leave.
pub async fn publish_leave(
    conn: &mut redis::aio::ConnectionManager,
    script: &redis::Script,
    node_id: &str,
    topic: &TopicKey,
    member: MemberId,
) -> redis::RedisResult<()> {
    let (member, msg) = leave_parts(node_id, member);
    script
        .key(presence_key(topic))
        .arg("leave")
        .arg(member)
        .arg(channel_of(topic))
        .arg(msg)
        .invoke_async::<redis::Value>(conn)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_messages_start_with_their_marker_and_parse_back() {
        let meta: PresencePayload = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        let (member, entry, msg) = join_parts("n1", 7, "alice", &meta);
        assert_eq!(member, "n1:7");
        assert!(msg.starts_with(r#"{"presence":"join""#), "{msg}");
        let back: PresenceMsg = serde_json::from_str(&msg).unwrap();
        assert_eq!(back.key.as_deref(), Some("alice"));
        assert_eq!(back.meta, Some(meta));
        assert!(entry.contains(r#""key":"alice""#));
        let (_, leave) = leave_parts("n1", 7);
        assert_eq!(leave, r#"{"presence":"leave","member":"n1:7"}"#);
    }
}
