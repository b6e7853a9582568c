//! The local fan-out registry: which connections of this node are members of which topic.
//!
//! Everything a topic needs to stay consistent sits under one lock per topic: its members, its
//! presence, and each joining member's buffer of live messages while it catches up from history.
//! That makes "join, then history, then live with no gap and no duplicate" a matter of ordering
//! inside one critical section, whatever backend supplies history (DESIGN §4).
//!
//! Fan-out never awaits: a delivery encodes the message once per wire format (lazily, only for
//! formats some member uses) and pushes the shared bytes into each member's [`Outbox`]. A full
//! outbox closes that connection as a slow reader; nobody else waits for it.
//!
//! Lock order: shard map, then topic. Delivery takes the shard lock only to find the topic.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec::{self, Format, Outbound, Ref};
use crate::cursor::Cursor;
use crate::envelope::Envelope;
use crate::outbox::{Delta, OutFrame, Outbox, Pushed};
use crate::presence::{Diff, MemberId, PresencePayload, PresenceState, RefGen};
use crate::topic::TopicKey;

/// Identifies one connection on this node.
pub type ConnId = u64;

const SHARDS: usize = 32;

/// One connection's membership of one topic.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection.
    pub conn: ConnId,
    /// Where its frames go.
    pub outbox: Outbox,
    /// Its wire format.
    pub format: Format,
    /// The channel's join ref (pushed with `presence_state`).
    pub join_ref: Option<Ref>,
    /// `config.broadcast.self`: receives its own broadcasts.
    pub broadcast_self: bool,
    /// Receives `presence_state` and `presence_diff`.
    pub presence_enabled: bool,
}

#[derive(Debug)]
struct Slot {
    member: Member,
    /// `Some` while the member catches up from history: live messages wait here, in order.
    /// Bounded by the outbox's frame limit; beyond it the member is closed as a slow reader.
    pending: Option<Vec<Arc<Envelope>>>,
    /// After a catch-up, the last message the member got from history: a live copy of it (or of
    /// anything before it) that arrives later is skipped. A backend's history can be ahead of
    /// its live feed (Postgres: a committed row the feed has not read yet). Cleared once live
    /// delivery passes it.
    floor: Option<Cursor>,
}

#[derive(Debug, Default)]
struct TopicState {
    slots: Vec<Slot>,
    index: HashMap<ConnId, usize>,
    presence: PresenceState,
}

#[derive(Debug, Default)]
struct Topic {
    state: Mutex<TopicState>,
}

/// Counters the registry keeps (exported as metrics by the hub).
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Frames queued to members by fan-out.
    pub deliveries: AtomicU64,
    /// Connections closed because their outbox overflowed.
    pub slow_closes: AtomicU64,
    /// Publish time (the envelope's `time_ms`) to fan-out here, per message delivered to at
    /// least one local member.
    pub latency: crate::latency::LatencyBuckets,
}

/// The registry. One per node, shared by every connection.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<TopicKey, Arc<Topic>>>>,
    refs: RefGen,
    /// Delivery counters.
    pub stats: RegistryStats,
    /// Bound on a joining member's pending buffer (the outbox frame limit).
    pending_limit: usize,
    /// Where messages of terminal relay topics go (they have no members: see
    /// [`crate::terminal::registry`]).
    terminals: std::sync::OnceLock<Arc<crate::terminal::Terminals>>,
}

/// What a join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// This node had no member of the topic before: the broker should subscribe.
    pub first_local: bool,
}

/// What a leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The connection was a member.
    pub was_member: bool,
    /// It had tracked presence (now removed; other nodes must hear of it).
    pub had_presence: bool,
    /// No member of the topic is left on this node: the broker may unsubscribe.
    pub last_local: bool,
}

/// The connection is not a member of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a member of the topic")]
pub struct NotMember;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here never leave shared state half-updated on panic (each is a sequence
    // of pushes and map updates on data owned by the guard), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encodes one message per wire format, on first use, and shares the bytes.
struct Encoded<'a> {
    env: &'a Envelope,
    replayed: bool,
    wire_topic: String,
    v1: Option<Option<OutFrame>>,
    v2: Option<Option<OutFrame>>,
    sse: Option<Option<OutFrame>>,
}

impl<'a> Encoded<'a> {
    fn new(env: &'a Envelope, replayed: bool) -> Self {
        Self {
            env,
            replayed,
            wire_topic: env.topic.wire(),
            v1: None,
            v2: None,
            sse: None,
        }
    }

    fn frame(&mut self, format: Format) -> Option<OutFrame> {
        let slot = match format {
            Format::V1 => &mut self.v1,
            Format::V2 => &mut self.v2,
            Format::Sse => &mut self.sse,
        };
        slot.get_or_insert_with(|| {
            codec::encode_broadcast(
                format,
                &self.wire_topic,
                &self.env.event,
                &self.env.payload,
                self.env.cursor.as_ref(),
                self.replayed,
            )
        })
        .clone()
    }
}

/// A presence diff encoded once per format, on first use (a diff reaching only V2 members is
/// never encoded for V1 or SSE, and one reaching nobody is not encoded at all).
struct EncodedDiff {
    wire: String,
    payload: String,
    v1: Option<OutFrame>,
    v2: Option<OutFrame>,
    sse: Option<OutFrame>,
}

impl EncodedDiff {
    fn new(topic: &TopicKey, diff: &Diff) -> Self {
        Self {
            wire: topic.wire(),
            payload: diff.to_json(),
            v1: None,
            v2: None,
            sse: None,
        }
    }

    fn frame(&mut self, format: Format) -> OutFrame {
        let slot = match format {
            Format::V1 => &mut self.v1,
            Format::V2 => &mut self.v2,
            Format::Sse => &mut self.sse,
        };
        slot.get_or_insert_with(|| {
            codec::encode(
                format,
                Outbound {
                    join_ref: None,
                    msg_ref: None,
                    topic: &self.wire,
                    event: "presence_diff",
                    payload: &self.payload,
                },
            )
        })
        .clone()
    }
}

impl TopicState {
    fn slot_mut(&mut self, conn: ConnId) -> Option<&mut Slot> {
        let i = *self.index.get(&conn)?;
        self.slots.get_mut(i)
    }

    fn remove(&mut self, conn: ConnId) -> Option<Slot> {
        let i = self.index.remove(&conn)?;
        let slot = self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.member.conn, i);
        }
        Some(slot)
    }

    fn is_unused(&self) -> bool {
        self.slots.is_empty() && self.presence.is_empty()
    }
}

impl Registry {
    /// An empty registry. `pending_limit` bounds what a member buffers while catching up.
    pub fn new(pending_limit: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            refs: RefGen::default(),
            stats: RegistryStats::default(),
            pending_limit,
            terminals: std::sync::OnceLock::new(),
        }
    }

    fn shard(&self, topic: &TopicKey) -> &Mutex<HashMap<TopicKey, Arc<Topic>>> {
        let mut h = DefaultHasher::new();
        topic.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn topic(&self, topic: &TopicKey) -> Option<Arc<Topic>> {
        lock(self.shard(topic)).get(topic).cloned()
    }

    fn push(&self, member: &Member, frame: OutFrame) {
        match member.outbox.push(frame) {
            Pushed::Queued => {
                self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Overflowed => {
                self.stats.slow_closes.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Closed => {}
        }
    }

    /// Adds `member` to `topic` and, in the same critical section, queues `first` (the join
    /// reply) and the `presence_state` if presence is enabled, so no diff can overtake them.
    ///
    /// With `catch_up` the member starts buffering live messages until
    /// [`Registry::finish_catch_up`] hands it the history. A previous membership of the same
    /// connection is replaced.
    pub fn join(
        &self,
        topic: &TopicKey,
        member: Member,
        first: OutFrame,
        catch_up: bool,
    ) -> Joined {
        let mut shard = lock(self.shard(topic));
        let entry = shard.entry(topic.clone()).or_default().clone();
        let mut st = lock(&entry.state);
        drop(shard);
        let replaced = st.remove(member.conn).is_some();
        let first_local = st.slots.is_empty() && !replaced;
        self.push(&member, first);
        if member.presence_enabled {
            self.push_state(topic, &st, &member);
        }
        let conn = member.conn;
        let at = st.slots.len();
        st.index.insert(conn, at);
        st.slots.push(Slot {
            member,
            pending: catch_up.then(Vec::new),
            floor: None,
        });
        Joined { first_local }
    }

    fn push_state(&self, topic: &TopicKey, st: &TopicState, member: &Member) {
        let wire = topic.wire();
        let state = st.presence.state_json();
        let frame = codec::encode(
            member.format,
            Outbound {
                join_ref: member.join_ref.as_ref(),
                msg_ref: None,
                topic: &wire,
                event: "presence_state",
                payload: &state,
            },
        );
        self.push(member, frame);
    }

    /// Ends a member's catch-up: queues `history` (skipping anything at or before `after`), then
    /// the live messages buffered meanwhile that history did not already contain, and switches
    /// the member to live delivery, all under the topic lock so no live message can slip in
    /// between. Cursors of one epoch are compared by offset; messages without a cursor are never
    /// duplicates. History entries are marked `meta.replayed`.
    pub fn finish_catch_up(
        &self,
        topic: &TopicKey,
        conn: ConnId,
        history: &[Arc<Envelope>],
        after: Option<&Cursor>,
    ) -> Result<(), NotMember> {
        let entry = self.topic(topic).ok_or(NotMember)?;
        let mut st = lock(&entry.state);
        let slot = st.slot_mut(conn).ok_or(NotMember)?;
        let pending = slot.pending.take().unwrap_or_default();
        let member = slot.member.clone();
        let mut last = after.cloned();
        let st = &mut *st;
        let replayed = history.iter().map(|e| (e, true));
        let live = pending.iter().map(|e| (e, false));
        for (env, replayed) in replayed.chain(live) {
            if let Some(c) = &env.cursor {
                if last
                    .as_ref()
                    .is_some_and(|l| l.epoch == c.epoch && c.offset <= l.offset)
                {
                    continue;
                }
                last = Some(c.clone());
            }
            if let Some(frame) = Encoded::new(env, replayed).frame(member.format) {
                self.push(&member, frame);
            }
        }
        if let Some(slot) = st.slot_mut(conn) {
            slot.floor = last;
        }
        Ok(())
    }

    /// Queues one page of history to a member that is catching up (its live messages keep
    /// waiting in its pending buffer). Fails when it is no longer a catching-up member.
    pub fn catch_up_push(
        &self,
        topic: &TopicKey,
        conn: ConnId,
        history: &[Arc<Envelope>],
    ) -> Result<(), NotMember> {
        let entry = self.topic(topic).ok_or(NotMember)?;
        let mut st = lock(&entry.state);
        let slot = st.slot_mut(conn).ok_or(NotMember)?;
        if slot.pending.is_none() {
            return Err(NotMember);
        }
        let member = slot.member.clone();
        for env in history {
            if let Some(frame) = Encoded::new(env, true).frame(member.format) {
                self.push(&member, frame);
            }
        }
        Ok(())
    }

    /// Removes `conn` from `topic`, fanning out the presence leave of its meta if it had one.
    pub fn leave(&self, topic: &TopicKey, conn: ConnId) -> Left {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get(topic).cloned() else {
            return Left {
                was_member: false,
                had_presence: false,
                last_local: false,
            };
        };
        let mut st = lock(&entry.state);
        let was_member = st.remove(conn).is_some();
        let diff = st.presence.untrack(conn);
        let had_presence = diff.is_some();
        if let Some(diff) = diff {
            self.fan_out_diff(topic, &st, &diff);
        }
        let last_local = was_member && st.slots.is_empty();
        if st.is_unused() {
            shard.remove(topic);
        }
        Left {
            was_member,
            had_presence,
            last_local,
        }
    }

    /// Delivers a published message to every local member, except `origin` unless that member
    /// asked for its own broadcasts. Members catching up buffer it instead.
    pub fn deliver(&self, env: &Arc<Envelope>, origin: Option<ConnId>) {
        if env.topic.is_private()
            && env.topic.kind() == Some(crate::terminal::KIND)
            && let Some(t) = self.terminals.get()
        {
            return t.apply(env);
        }
        let Some(entry) = self.topic(&env.topic) else {
            return;
        };
        let mut st = lock(&entry.state);
        if env.time_ms > 0 && !st.slots.is_empty() {
            let now = crate::envelope::now_ms();
            self.stats
                .latency
                .observe_ms(now.saturating_sub(env.time_ms));
        }
        let mut enc = Encoded::new(env, false);
        let pending_limit = self.pending_limit;
        let delta = crate::chat::token_text(env);
        // Counted locally and added once: one shared atomic per member would bounce its cache
        // line between cores on every delivery.
        let (mut queued, mut overflowed) = (0u64, 0u64);
        for slot in st.slots.iter_mut() {
            if origin == Some(slot.member.conn) && !slot.member.broadcast_self {
                continue;
            }
            if let Some(floor) = &slot.floor
                && let Some(c) = &env.cursor
                && c.epoch == floor.epoch
            {
                if c.offset <= floor.offset {
                    continue;
                }
                slot.floor = None;
            }
            let m = &slot.member;
            if let Some(pending) = &mut slot.pending {
                if pending.len() >= pending_limit {
                    m.outbox.close(crate::outbox::CloseReason::Slow);
                    self.stats.slow_closes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                pending.push(env.clone());
                continue;
            }
            if let Some(frame) = enc.frame(m.format) {
                // Chat token deltas stay mergeable in the outbox (see `OutFrame::Delta`).
                let frame = match &delta {
                    Some(text) => {
                        let (encoded, binary) = frame.into_wire();
                        OutFrame::Delta(Box::new(Delta {
                            format: m.format,
                            topic: env.topic.clone(),
                            text: text.clone(),
                            cursor: env.cursor.clone(),
                            encoded: Some(encoded),
                            binary,
                        }))
                    }
                    None => frame,
                };
                match m.outbox.push(frame) {
                    Pushed::Queued => queued += 1,
                    Pushed::Overflowed => overflowed += 1,
                    Pushed::Closed => {}
                }
            }
        }
        self.stats.deliveries.fetch_add(queued, Ordering::Relaxed);
        if overflowed > 0 {
            self.stats
                .slow_closes
                .fetch_add(overflowed, Ordering::Relaxed);
        }
    }

    /// Tracks `payload` under `key` for member `conn` and fans the diff out. A member that had
    /// presence disabled is enabled first and sent the current `presence_state`, so its client
    /// has a state to apply the diff to.
    pub fn track(
        &self,
        topic: &TopicKey,
        conn: ConnId,
        key: &str,
        payload: PresencePayload,
    ) -> Result<(), NotMember> {
        let entry = self.topic(topic).ok_or(NotMember)?;
        let mut st = lock(&entry.state);
        let slot = st.slot_mut(conn).ok_or(NotMember)?;
        if !slot.member.presence_enabled {
            slot.member.presence_enabled = true;
            let member = slot.member.clone();
            self.push_state(topic, &st, &member);
        }
        let phx_ref = self.refs.next();
        if let Some(diff) = st.presence.track(conn as MemberId, key, payload, phx_ref) {
            self.fan_out_diff(topic, &st, &diff);
        }
        Ok(())
    }

    /// Whether `topic` already holds `limit` presence entries and `conn` has none (a track by
    /// `conn` would add one). Checked before [`Registry::track`]; two members tracking at the
    /// same instant may each pass, so the bound can be exceeded by the number of concurrent
    /// tracks, never more.
    pub fn presence_full(&self, topic: &TopicKey, conn: ConnId, limit: usize) -> bool {
        let Some(entry) = self.topic(topic) else {
            return false;
        };
        let st = lock(&entry.state);
        st.presence.len() >= limit && !st.presence.is_tracked(conn as MemberId)
    }

    /// Removes `conn`'s presence meta, if any, and fans the leave out. Returns whether there
    /// was one.
    pub fn untrack(&self, topic: &TopicKey, conn: ConnId) -> Result<bool, NotMember> {
        let entry = self.topic(topic).ok_or(NotMember)?;
        let mut st = lock(&entry.state);
        if !st.index.contains_key(&conn) {
            return Err(NotMember);
        }
        let diff = st.presence.untrack(conn as MemberId);
        let had = diff.is_some();
        if let Some(diff) = diff {
            self.fan_out_diff(topic, &st, &diff);
        }
        Ok(had)
    }

    /// Routes terminal relay topics to `terminals` (set once, by the node).
    pub fn set_terminals(&self, terminals: Arc<crate::terminal::Terminals>) {
        let _ = self.terminals.set(terminals);
    }

    /// Tracks presence for a member that is not a connection of this node: a server-side actor
    /// such as the build simulator's architect. `member` must not collide with connection ids
    /// (take one from `Node::next_conn_id`).
    pub fn track_detached(
        &self,
        topic: &TopicKey,
        member: MemberId,
        key: &str,
        payload: PresencePayload,
    ) {
        let mut shard = lock(self.shard(topic));
        let entry = shard.entry(topic.clone()).or_default().clone();
        let mut st = lock(&entry.state);
        drop(shard);
        let phx_ref = self.refs.next();
        if let Some(diff) = st.presence.track(member, key, payload, phx_ref) {
            self.fan_out_diff(topic, &st, &diff);
        }
    }

    /// Removes a detached member's presence (see [`Registry::track_detached`]).
    pub fn untrack_detached(&self, topic: &TopicKey, member: MemberId) {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get(topic).cloned() else {
            return;
        };
        let mut st = lock(&entry.state);
        if let Some(diff) = st.presence.untrack(member) {
            self.fan_out_diff(topic, &st, &diff);
        }
        if st.is_unused() {
            shard.remove(topic);
        }
    }

    fn fan_out_diff(&self, topic: &TopicKey, st: &TopicState, diff: &Diff) {
        if diff.is_empty() {
            return;
        }
        let mut enc = EncodedDiff::new(topic, diff);
        for slot in st.slots.iter().filter(|s| s.member.presence_enabled) {
            self.push(&slot.member, enc.frame(slot.member.format));
        }
    }

    /// Sends every local member of `topic` a `system` message (for example: history lost while
    /// they were live, so they were not recovered).
    pub fn notify(&self, topic: &TopicKey, status: &str, message: &str) {
        let Some(entry) = self.topic(topic) else {
            return;
        };
        let st = lock(&entry.state);
        for slot in &st.slots {
            let m = &slot.member;
            self.push(
                m,
                codec::system_frame(m.format, m.join_ref.as_ref(), topic, status, message),
            );
        }
    }

    /// Number of local members of `topic`.
    pub fn member_count(&self, topic: &TopicKey) -> usize {
        self.topic(topic).map_or(0, |t| lock(&t.state).slots.len())
    }

    /// Number of topics with local members or presence.
    pub fn topic_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Payload;
    use crate::outbox::OutboxLimits;
    use bytes::Bytes;
    use serde_json::json;

    fn topic() -> TopicKey {
        TopicKey::new("room", false).unwrap()
    }

    fn member(conn: ConnId, format: Format, presence: bool) -> Member {
        Member {
            conn,
            outbox: Outbox::new(OutboxLimits::default()),
            format,
            join_ref: Some(Ref::from_plain(&conn.to_string())),
            broadcast_self: false,
            presence_enabled: presence,
        }
    }

    fn reply() -> OutFrame {
        OutFrame::Text(Bytes::from_static(b"reply"))
    }

    fn env(offset: u64) -> Arc<Envelope> {
        Arc::new(Envelope {
            topic: topic(),
            event: "e".into(),
            payload: Payload::Json(Bytes::from(offset.to_string())),
            cursor: Some(Cursor::new("ep".into(), offset)),
            time_ms: 0,
        })
    }

    fn drain(m: &Member) -> Vec<OutFrame> {
        let mut v = Vec::new();
        m.outbox.drain(&mut v);
        v
    }

    /// Offsets of the broadcasts in `frames` (V1 text frames).
    fn offsets(frames: &[OutFrame]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| match f {
                OutFrame::Text(b) => serde_json::from_slice::<serde_json::Value>(b).ok(),
                OutFrame::Binary(_) | OutFrame::Delta(_) => None,
            })
            .filter(|v| v["event"] == "broadcast")
            .map(|v| v["payload"]["payload"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn reply_comes_first_and_broadcasts_are_shared_bytes() {
        let r = Registry::new(100);
        let (a, b) = (member(1, Format::V2, false), member(2, Format::V2, false));
        assert!(r.join(&topic(), a.clone(), reply(), false).first_local);
        assert!(!r.join(&topic(), b.clone(), reply(), false).first_local);
        r.deliver(&env(1), None);
        let (fa, fb) = (drain(&a), drain(&b));
        assert_eq!(fa[0], reply());
        let (OutFrame::Binary(x), OutFrame::Binary(y)) = (&fa[1], &fb[1]) else {
            panic!("V2 members get kind 4");
        };
        assert_eq!(
            x.as_ptr(),
            y.as_ptr(),
            "one encoding shared by both members"
        );
    }

    #[test]
    fn origin_is_skipped_unless_self_is_set() {
        let r = Registry::new(100);
        let a = member(1, Format::V1, false);
        let mut b = member(2, Format::V1, false);
        b.broadcast_self = true;
        r.join(&topic(), a.clone(), reply(), false);
        r.join(&topic(), b.clone(), reply(), false);
        r.deliver(&env(1), Some(1));
        r.deliver(&env(2), Some(2));
        assert_eq!(offsets(&drain(&a)), vec![2]);
        assert_eq!(offsets(&drain(&b)), vec![1, 2]);
    }

    #[test]
    fn catch_up_has_no_gap_and_no_duplicate() {
        let r = Registry::new(100);
        let m = member(1, Format::V1, false);
        r.join(&topic(), m.clone(), reply(), true);
        // Live messages 5 and 6 arrive while history (3..=5) is being read.
        r.deliver(&env(5), None);
        r.deliver(&env(6), None);
        assert_eq!(drain(&m), vec![reply()], "nothing live before the history");
        let after = Cursor::new("ep".into(), 2);
        r.finish_catch_up(&topic(), 1, &[env(3), env(4), env(5)], Some(&after))
            .unwrap();
        r.deliver(&env(7), None);
        assert_eq!(offsets(&drain(&m)), vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn live_copies_of_history_are_skipped_after_catch_up() {
        // A backend whose history is ahead of its live feed: the member gets 1..=3 from history,
        // then the feed delivers 2, 3 (already seen) and 4.
        let r = Registry::new(100);
        let m = member(1, Format::V1, false);
        r.join(&topic(), m.clone(), reply(), true);
        r.finish_catch_up(&topic(), 1, &[env(1), env(2), env(3)], None)
            .unwrap();
        for i in 2..=4 {
            r.deliver(&env(i), None);
        }
        r.deliver(&env(5), None);
        assert_eq!(offsets(&drain(&m)), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn catch_up_buffer_is_bounded() {
        let r = Registry::new(2);
        let m = member(1, Format::V1, false);
        r.join(&topic(), m.clone(), reply(), true);
        for i in 1..=3 {
            r.deliver(&env(i), None);
        }
        assert!(m.outbox.is_closed());
        assert_eq!(r.stats.slow_closes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn slow_member_is_closed_and_others_keep_receiving() {
        let r = Registry::new(100);
        let slow = Member {
            outbox: Outbox::new(OutboxLimits {
                max_frames: 3,
                max_bytes: 1 << 20,
            }),
            ..member(1, Format::V1, false)
        };
        let fast = member(2, Format::V1, false);
        r.join(&topic(), slow.clone(), reply(), false);
        r.join(&topic(), fast.clone(), reply(), false);
        for i in 1..=10 {
            r.deliver(&env(i), None);
            drain(&fast);
        }
        assert!(slow.outbox.is_closed());
        r.deliver(&env(11), None);
        assert_eq!(offsets(&drain(&fast)), vec![11]);
    }

    fn presence_events(frames: &[OutFrame]) -> Vec<serde_json::Value> {
        frames
            .iter()
            .filter_map(|f| match f {
                OutFrame::Text(b) => serde_json::from_slice::<serde_json::Value>(b).ok(),
                OutFrame::Binary(_) | OutFrame::Delta(_) => None,
            })
            .filter(|v| v[3].as_str().is_some_and(|e| e.starts_with("presence")))
            .collect()
    }

    #[test]
    fn presence_state_on_join_and_diffs_only_to_enabled_members() {
        let r = Registry::new(100);
        let a = member(1, Format::V2, true);
        let quiet = member(2, Format::V2, false);
        r.join(&topic(), a.clone(), reply(), false);
        r.join(&topic(), quiet.clone(), reply(), false);
        r.track(
            &topic(),
            1,
            "alice",
            json!({"s": 1}).as_object().cloned().unwrap(),
        )
        .unwrap();
        let got = presence_events(&drain(&a));
        assert_eq!(got[0][3], "presence_state");
        assert_eq!(got[0][0], "1", "presence_state carries the join ref");
        assert_eq!(got[1][3], "presence_diff");
        assert_eq!(got[1][0], serde_json::Value::Null);
        assert!(got[1][4]["joins"]["alice"].is_object());
        assert!(presence_events(&drain(&quiet)).is_empty());
        // A late joiner with presence gets the current state.
        let c = member(3, Format::V2, true);
        r.join(&topic(), c.clone(), reply(), false);
        let got = presence_events(&drain(&c));
        assert!(got[0][4]["alice"]["metas"][0]["phx_ref"].is_string());
        // Leaving removes the meta and tells the others.
        r.leave(&topic(), 1);
        let got = presence_events(&drain(&c));
        assert!(got[0][4]["leaves"]["alice"].is_object());
    }

    #[test]
    fn tracking_enables_presence_with_a_state_first() {
        let r = Registry::new(100);
        let quiet = member(2, Format::V2, false);
        r.join(&topic(), quiet.clone(), reply(), false);
        r.track(&topic(), 2, "k", json!({}).as_object().cloned().unwrap())
            .unwrap();
        let got = presence_events(&drain(&quiet));
        assert_eq!(got[0][3], "presence_state");
        assert_eq!(got[0][4], json!({}));
        assert_eq!(got[1][3], "presence_diff");
    }

    #[test]
    fn detached_presence_reaches_members_and_leaves() {
        let r = Registry::new(100);
        let viewer = member(1, Format::V2, true);
        r.join(&topic(), viewer.clone(), reply(), false);
        drain(&viewer);
        r.track_detached(
            &topic(),
            900,
            "architect",
            json!({"step": "plan"}).as_object().cloned().unwrap(),
        );
        let got = presence_events(&drain(&viewer));
        assert_eq!(got[0][4]["joins"]["architect"]["metas"][0]["step"], "plan");
        r.untrack_detached(&topic(), 900);
        let got = presence_events(&drain(&viewer));
        assert!(got[0][4]["leaves"]["architect"].is_object());
        // A late joiner of a topic with only a detached member still gets its state.
        r.leave(&topic(), 1);
        r.track_detached(
            &topic(),
            900,
            "architect",
            json!({"step": "x"}).as_object().cloned().unwrap(),
        );
        let late = member(2, Format::V2, true);
        r.join(&topic(), late.clone(), reply(), false);
        let got = presence_events(&drain(&late));
        assert_eq!(got[0][4]["architect"]["metas"][0]["step"], "x");
    }

    #[test]
    fn last_leave_frees_the_topic() {
        let r = Registry::new(100);
        r.join(&topic(), member(1, Format::V1, false), reply(), false);
        assert_eq!(r.topic_count(), 1);
        let left = r.leave(&topic(), 1);
        assert!(left.was_member && left.last_local);
        assert_eq!(r.topic_count(), 0);
        assert!(!r.leave(&topic(), 1).was_member);
        assert_eq!(
            r.track(&topic(), 1, "k", Default::default()),
            Err(NotMember)
        );
    }
}
