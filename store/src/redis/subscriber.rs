//! The node's one pub/sub connection: receives every message of the topics with local members
//! and hands them to the registry in offset order.
//!
//! Redis pub/sub is fire-and-forget: a message published while this connection is down is
//! simply not delivered to it. So the subscriber remembers, per topic, the cursor of the last
//! message it delivered; after a reconnect (and whenever a message arrives with an offset beyond
//! the next one) it reads the missed messages from the topic's history stream and delivers them
//! first. When that history is gone (Redis restarted empty: new epoch), the topic's members are
//! told plainly that they were not recovered. Never a silent gap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use channels::{Cursor, Envelope, Since, TopicKey};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::broker::{Command, Shared};
use super::envelope::{WireEnvelope, topic_of_channel};
use super::presence::{self, PresenceMsg};

/// Most messages read from history to fill one gap.
const GAP_FILL_LIMIT: usize = 100_000;
/// Messages read per history page while filling a gap.
const GAP_PAGE: usize = 1000;

/// Runs until the command channel closes (the broker was dropped).
pub(crate) async fn run(shared: Arc<Shared>, mut commands: mpsc::Receiver<Command>) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let pubsub = match shared.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "redis pub/sub: connect failed");
                // Answer waiting subscribers instead of leaving them until their timeout.
                while let Ok(cmd) = commands.try_recv() {
                    if let Command::Subscribe(_, ack) = cmd {
                        let _ = ack.send(Err(format!("redis unavailable: {e}")));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = shared.subs().keys().cloned().collect();
        let mut ok = true;
        for ch in &channels {
            if let Err(e) = sink.subscribe(ch).await {
                tracing::warn!(error = %e, "redis pub/sub: resubscribe failed");
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        if connected_before {
            shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                topics = channels.len(),
                "redis pub/sub: reconnected and resubscribed"
            );
            repair_all(&shared).await;
            for ch in &channels {
                if let Some(topic) = topic_of_channel(ch) {
                    load_presence(&shared, &topic).await;
                }
            }
            republish_own_presence(&shared).await;
        }
        connected_before = true;
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Subscribe(ch, ack)) => {
                        let res = sink.subscribe(&ch).await.map_err(|e| e.to_string());
                        let failed = res.is_err();
                        // Load the other nodes' presence after subscribing and before acking:
                        // diffs published meanwhile are queued on this connection and applied
                        // after the snapshot, so the merged view cannot keep a ghost.
                        if !failed && let Some(topic) = topic_of_channel(&ch) {
                            load_presence(&shared, &topic).await;
                        }
                        let _ = ack.send(res);
                        if failed {
                            break;
                        }
                    }
                    Some(Command::Unsubscribe(ch)) => {
                        // Still wanted again by a join that raced this leave: keep it.
                        if shared.subs().contains_key(&ch) {
                            continue;
                        }
                        if let Some(topic) = topic_of_channel(&ch) {
                            shared.presence.forget_topic(&shared.registry, &topic);
                        }
                        if sink.unsubscribe(&ch).await.is_err() {
                            break;
                        }
                    }
                },
                msg = stream.next() => match msg {
                    None => break,
                    Some(msg) => handle(&shared, &msg).await,
                },
            }
        }
        tracing::warn!("redis pub/sub: connection lost; reconnecting");
    }
}

async fn handle(shared: &Shared, msg: &redis::Msg) {
    let channel = msg.get_channel_name();
    let text: String = match msg.get_payload() {
        Ok(t) => t,
        Err(_) => {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if text.starts_with(r#"{"presence""#) {
        match (
            serde_json::from_str::<PresenceMsg>(&text),
            topic_of_channel(channel),
        ) {
            (Ok(p), Some(topic)) => {
                shared
                    .presence
                    .apply(&shared.registry, &topic, &shared.node_id, p)
            }
            _ => {
                shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let parsed = WireEnvelope::parse(&text).and_then(|w| w.into_envelope(&shared.node_id));
    let (env, origin) = match parsed {
        Ok(x) => x,
        Err(e) => {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel, error = %e, "redis: dropping a malformed message");
            return;
        }
    };
    // The channel decides the topic: a message must not reach members of another topic
    // because its envelope says so.
    if topic_of_channel(channel).as_ref() != Some(&env.topic) {
        shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(channel, topic = %env.topic, "redis: envelope topic does not match its channel");
        return;
    }
    let env = Arc::new(env);
    let last = shared.subs().get(channel).and_then(|s| s.last.clone());
    if let (Some(last), Some(cur)) = (&last, &env.cursor) {
        if last.epoch == cur.epoch && cur.offset <= last.offset {
            return; // already delivered (from history after a gap)
        }
        if last.epoch != cur.epoch || cur.offset > last.offset + 1 {
            fill_gap(shared, &env.topic, channel, last, Some(cur)).await;
        }
    }
    deliver(shared, channel, &env, origin);
}

fn deliver(shared: &Shared, channel: &str, env: &Arc<Envelope>, origin: Option<channels::ConnId>) {
    if let Some(c) = &env.cursor
        && let Some(sub) = shared.subs().get_mut(channel)
    {
        if sub
            .last
            .as_ref()
            .is_some_and(|l| l.epoch == c.epoch && c.offset <= l.offset)
        {
            return;
        }
        sub.last = Some(c.clone());
    }
    shared.registry.deliver(env, origin);
}

/// Delivers what was published after `last` (and before `upto`, when known) from history, page
/// by page. When that history is gone (a new epoch: Redis restarted empty), the topic's members
/// are told they were not recovered, and what the new history already holds is delivered.
async fn fill_gap(
    shared: &Shared,
    topic: &TopicKey,
    channel: &str,
    last: &Cursor,
    upto: Option<&Cursor>,
) {
    let mut after = Since::After(last.clone());
    let mut filled = 0usize;
    let mut told = false;
    loop {
        let page = match read_retrying(shared, topic, &after).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "redis: reading history to fill a gap failed");
                shared.registry.notify(
                    topic,
                    "error",
                    "History not recovered: messages may have been missed while Redis was unavailable",
                );
                if let Some(sub) = shared.subs().get_mut(channel) {
                    sub.last = None;
                }
                return;
            }
        };
        if !page.contiguous {
            if !told {
                told = true;
                shared.stats.lost_histories.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %topic, head = %page.head, "redis: history lost; members not recovered");
                shared.registry.notify(
                    topic,
                    "error",
                    &format!(
                        "History not recovered: messages published before the current history \
                         began are no longer available (current cursor {})",
                        page.head
                    ),
                );
            }
            if page.head.epoch.is_empty() {
                // No history at all yet: no position, and the next message is not a gap.
                if let Some(sub) = shared.subs().get_mut(channel) {
                    sub.last = None;
                }
                return;
            }
            if matches!(&after, Since::After(c) if c.epoch != page.head.epoch) {
                // A new epoch: deliver it from its start (happens once: `after` has no epoch
                // from here on).
                after = Since::Beginning;
                continue;
            }
            // Older than what this epoch retains: carry on from the oldest retained message.
            if page.messages.is_empty() {
                if let Some(sub) = shared.subs().get_mut(channel) {
                    sub.last = Some(page.head);
                }
                return;
            }
        }
        let n = page.messages.len();
        for env in page.messages {
            let Some(c) = env.cursor.clone() else {
                continue;
            };
            if upto.is_some_and(|u| c.epoch == u.epoch && c.offset >= u.offset) {
                return;
            }
            shared.stats.gap_fills.fetch_add(1, Ordering::Relaxed);
            deliver(shared, channel, &env, None);
            after = Since::After(c);
        }
        filled += n;
        if n < GAP_PAGE || filled >= GAP_FILL_LIMIT {
            return;
        }
    }
}

/// Reads a page of history, retrying a few times: right after Redis comes back, the shared
/// command connection fails its first command before it reconnects.
async fn read_retrying(
    shared: &Shared,
    topic: &TopicKey,
    after: &Since,
) -> Result<channels::history::Page, channels::BrokerError> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match shared.read(topic, after, GAP_PAGE).await {
            Ok(p) => return Ok(p),
            Err(e) if attempt >= 5 => return Err(e),
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, attempt, "redis: history read failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// After a reconnect: for every topic with a known position, deliver what was missed.
async fn repair_all(shared: &Shared) {
    let positions: Vec<(String, TopicKey, Cursor)> = shared
        .subs()
        .iter()
        .filter_map(|(ch, s)| s.last.clone().map(|l| (ch.clone(), s.topic.clone(), l)))
        .collect();
    for (channel, topic, last) in positions {
        fill_gap(shared, &topic, &channel, &last, None).await;
    }
}

/// Reads a topic's presence hash and makes this node's view of the other nodes' members match.
async fn load_presence(shared: &Shared, topic: &TopicKey) {
    let mut conn = shared.conn.clone();
    let mut entries: redis::RedisResult<Vec<(String, String)>> = Ok(Vec::new());
    // Retried: right after Redis comes back the command connection fails once, then reconnects.
    for attempt in 0..4u32 {
        entries = redis::cmd("HGETALL")
            .arg(presence::presence_key(topic))
            .query_async(&mut conn)
            .await;
        if entries.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
    }
    match entries {
        Ok(entries) => shared
            .presence
            .load(&shared.registry, topic, &shared.node_id, entries),
        Err(e) => tracing::warn!(topic = %topic, error = %e, "redis: loading presence failed"),
    }
}

/// After Redis came back (possibly empty), publishes this node's members' presence again.
async fn republish_own_presence(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for (topic, member, key, meta) in shared.presence.own_entries() {
        let mut res = Ok(());
        for attempt in 0..4u32 {
            res = presence::publish_join(
                &mut conn,
                &shared.presence_script,
                &shared.node_id,
                &topic,
                member,
                &key,
                &meta,
            )
            .await;
            if res.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
        }
        if let Err(e) = res {
            tracing::warn!(topic = %topic, error = %e, "redis: republishing presence failed");
        }
    }
}
