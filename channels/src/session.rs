//! One connection's protocol state machine: joins, leaves, broadcasts, presence, token refresh.
//!
//! Transport-agnostic: the transport decodes frames into [`Inbound`] messages and calls
//! [`Session::handle`]; everything the session sends goes into the connection's [`Outbox`]. The
//! transport also calls [`Session::on_timer`] at [`Session::next_deadline`] (token expiry, delayed
//! join errors) and [`Session::close`] when the connection ends. No socket I/O happens here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::auth::{Principal, TokenError, now_secs};
use crate::broker::Publication;
use crate::codec::{
    self, Body, Format, Inbound, Outbound, Ref, json_string, reply_payload, system_frame,
};
use crate::cursor::{Cursor, Since};
use crate::envelope::{MAX_EVENT_LEN, Payload};
use crate::kinds::Access;
use crate::limits::Bucket;
use crate::node::Node;
use crate::outbox::{OutFrame, Outbox};
use crate::registry::{ConnId, Member, NotMember};
use crate::topic::{TopicError, TopicKey, WIRE_PREFIX};
use crate::user_connections::UserClaim;

/// Most join error replies waiting for their delay; beyond this they are sent at once, so a
/// client looping on bad joins cannot grow this queue.
const MAX_DELAYED: usize = 100;

/// One joined channel.
#[derive(Debug)]
struct Channel {
    key: TopicKey,
    /// [`name_hash`] of the key's name: [`Session::find`] compares it before the names, because
    /// a publisher joined to 100 topics named alike (`chat:run-0001`, …) would otherwise compare
    /// dozens of common prefixes on every message.
    name_hash: u64,
    join_ref: Option<Ref>,
    ack: bool,
    /// `config.presence.key`; `None` until needed when the client left it empty, then a UUID.
    presence_key: Option<Box<str>>,
    /// Hash of the token this channel is authorised by (join `access_token` or the connect
    /// token), to recognise an unchanged `access_token` push without keeping the token itself.
    token: u64,
    /// When that token expires.
    expires_at: Instant,
    /// Who the channel acts as (the token's claims), for write and presence checks.
    principal: Arc<Principal>,
}

/// The state of one connection.
#[derive(Debug)]
pub struct Session {
    node: Arc<Node>,
    conn: ConnId,
    format: Format,
    outbox: Outbox,
    connect_token: u64,
    connect_principal: Arc<Principal>,
    /// Joined channels. A short vector rather than a map: most connections join one or two
    /// topics and the limit is small, so a linear search is cheap and an idle connection
    /// carries fewer bytes.
    channels: Vec<Channel>,
    delayed: VecDeque<(Instant, OutFrame)>,
    /// [`NodeConfig::joins_per_sec`](crate::NodeConfig::joins_per_sec) for this connection.
    join_bucket: Bucket,
    /// [`NodeConfig::messages_per_sec`](crate::NodeConfig::messages_per_sec) for this connection.
    message_bucket: Bucket,
    /// This connection's slot among its user's connections, released when the session ends.
    user_claim: Option<Box<UserClaim>>,
}

/// The join payload: `{"config": {...}, "access_token": "..."}`. Every part is optional and
/// loosely typed, as the real server casts what it can and proceeds (PROTOCOL §2.2).
#[derive(Debug, Default, Deserialize)]
struct JoinPayload {
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    access_token: Option<Value>,
    #[serde(default)]
    user_token: Option<Value>,
}

/// `true`, or the strings `"true"` (Supabase's `FlexibleBoolean`).
fn flex_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// A usable token value: a string that is not a Supabase `sb_` key.
fn token_value(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::String(s)) if !s.is_empty() && !s.starts_with("sb_") => Some(s),
        _ => None,
    }
}

/// FNV-1a over the binding's JSON: a stable numeric id per `postgres_changes` binding (the real
/// server uses `phash2` of the params; the client only needs the same number in both places).
fn binding_id(binding: &Value) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in binding.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Identifies a token without keeping it: JWTs are a few hundred bytes, and a session only needs
/// to recognise "the same token again". A collision could only make the hub skip re-verifying a
/// token and keep the channel's current, already verified authorisation.
fn token_hash(token: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(token)
}

fn instant_of(exp: u64) -> Instant {
    let now = now_secs();
    Instant::now() + Duration::from_secs(exp.saturating_sub(now))
}

/// What a resume or replay asks for.
#[derive(Debug)]
enum CatchUp {
    Resume {
        since: Since,
        limit: usize,
    },
    Replay {
        since_ms: u64,
        limit: usize,
    },
    /// Chat streams: one `snapshot` of the text so far instead of every delta.
    Snapshot,
}

/// Chat streams catch up with a snapshot when the reader has no cursor to resume from (a plain
/// join, or `since: "0"`); with a cursor they replay the deltas it missed.
fn chat_catch_up(key: &TopicKey, catch_up: Option<CatchUp>) -> Option<CatchUp> {
    if !crate::chat::is_chat(key) {
        return catch_up;
    }
    match catch_up {
        None
        | Some(CatchUp::Resume {
            since: Since::Beginning,
            ..
        }) => Some(CatchUp::Snapshot),
        other => other,
    }
}

impl Session {
    /// A session for a connection authenticated with `connect_token`.
    pub fn new(
        node: Arc<Node>,
        format: Format,
        outbox: Outbox,
        connect_token: &str,
        connect_principal: Principal,
    ) -> Self {
        let conn = node.next_conn_id();
        node.connections.register(conn, &outbox);
        Self {
            conn,
            node,
            format,
            outbox,
            connect_token: token_hash(connect_token),
            connect_principal: Arc::new(connect_principal),
            channels: Vec::new(),
            delayed: VecDeque::new(),
            join_bucket: Bucket::new(),
            message_bucket: Bucket::new(),
            user_claim: None,
        }
    }

    /// Keeps `claim` (from [`Node::user_connections`]) for as long as this session lives.
    pub fn hold(&mut self, claim: Option<UserClaim>) {
        self.user_claim = claim.map(Box::new);
    }

    /// This connection's id.
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The connection's wire format.
    pub fn format(&self) -> Format {
        self.format
    }

    fn find(&self, topic: &str) -> Option<usize> {
        let name = topic.strip_prefix(WIRE_PREFIX)?;
        let hash = name_hash(name);
        self.channels
            .iter()
            .position(|c| c.name_hash == hash && c.key.name() == name)
    }

    /// Number of joined channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn send(&self, msg: Outbound<'_>) {
        // The session's own frames obey the same bound as fan-out: a client that never reads
        // its replies is a slow reader like any other.
        self.outbox.push(codec::encode(self.format, msg));
    }

    fn reply(&self, m: &Inbound, status: &str, response: &str) {
        self.send(Outbound {
            join_ref: m.join_ref.as_ref(),
            msg_ref: m.msg_ref.as_ref(),
            topic: &m.topic,
            event: "phx_reply",
            payload: &reply_payload(status, response),
        });
    }

    fn reply_reason(&self, m: &Inbound, reason: &str) {
        self.reply(
            m,
            "error",
            &format!(r#"{{"reason":{}}}"#, json_string(reason)),
        );
    }

    fn system(&self, join_ref: Option<&Ref>, key: &TopicKey, status: &str, message: &str) {
        self.outbox
            .push(system_frame(self.format, join_ref, key, status, message));
    }

    fn lifecycle(&self, join_ref: Option<&Ref>, topic: &str, event: &str) {
        self.send(Outbound {
            join_ref,
            msg_ref: join_ref,
            topic,
            event,
            payload: "{}",
        });
    }

    /// Handles one inbound message.
    pub async fn handle(&mut self, m: Inbound) {
        self.node.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if m.topic == "phoenix" {
            if m.event == "heartbeat" {
                self.reply(&m, "ok", "{}");
            } else {
                self.reply_reason(&m, "unmatched topic");
            }
            return;
        }
        if m.event == "phx_join" {
            return self.join(m).await;
        }
        if self.find(&m.topic).is_none() {
            // Phoenix answers a leave of an unknown topic with ok, anything else with an error.
            if m.event == "phx_leave" {
                self.reply(&m, "ok", "{}");
            } else {
                self.reply_reason(&m, "unmatched topic");
            }
            return;
        }
        if matches!(m.event.as_str(), "broadcast" | "presence")
            && let Some(i) = self.find(&m.topic)
            && self.over_message_limit(i)
        {
            // Supabase shuts the channel down rather than refusing single pushes (PROTOCOL §6.2).
            self.node.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return self
                .close_channel(&m.topic, "Too many messages per second")
                .await;
        }
        match m.event.as_str() {
            "phx_leave" => {
                self.reply(&m, "ok", "{}");
                if let Some(ch) = self.leave_channel(&m.topic).await {
                    self.lifecycle(ch.join_ref.as_ref(), &m.topic, "phx_close");
                }
            }
            "broadcast" => self.broadcast(m).await,
            "presence" => self.presence(m).await,
            "access_token" => self.access_token(m).await,
            other => {
                let reason = format!(
                    "UnknownEvent: {}",
                    other.chars().take(64).collect::<String>()
                );
                self.reply_reason(&m, &reason);
            }
        }
    }

    /// Whether a broadcast or presence push on channel `i` is over this connection's or this
    /// user's message rate (the service role is exempt).
    fn over_message_limit(&mut self, i: usize) -> bool {
        let principal = &self.channels[i].principal;
        if principal.is_service() {
            return false;
        }
        let rate = self.node.config.messages_per_sec;
        let now = Instant::now().into_std();
        if self
            .message_bucket
            .take(now, rate, rate.saturating_mul(2))
            .is_err()
        {
            return true;
        }
        match &principal.sub {
            Some(sub) => self.node.user_messages.check(sub).is_err(),
            None => false,
        }
    }

    fn join_error(&mut self, m: &Inbound, reason: &str) {
        let frame = self.join_error_frame(m, reason);
        let delay = self.node.config.join_error_delay;
        if delay.is_zero() || self.delayed.len() >= MAX_DELAYED {
            self.outbox.push(frame);
        } else {
            self.delayed.push_back((Instant::now() + delay, frame));
        }
    }

    fn join_error_frame(&self, m: &Inbound, reason: &str) -> OutFrame {
        let payload = reply_payload("error", &format!(r#"{{"reason":{}}}"#, json_string(reason)));
        codec::encode(
            self.format,
            Outbound {
                join_ref: m.join_ref.as_ref(),
                msg_ref: m.msg_ref.as_ref(),
                topic: &m.topic,
                event: "phx_reply",
                payload: &payload,
            },
        )
    }

    async fn join(&mut self, m: Inbound) {
        if !m.topic.starts_with(WIRE_PREFIX) {
            return self.reply_reason(&m, "unmatched topic");
        }
        let cfg = &self.node.config;
        let (rate, burst) = (cfg.joins_per_sec, cfg.join_burst);
        let over_connection = self
            .join_bucket
            .take(Instant::now().into_std(), rate, burst)
            .is_err();
        // The user's bucket spans their connections (and reconnections); it is only drawn
        // from when the connection's own bucket allowed the join.
        let over_user = !over_connection
            && !self.connect_principal.is_service()
            && self
                .connect_principal
                .sub
                .as_deref()
                .is_some_and(|sub| self.node.user_joins.check(sub).is_err());
        if over_connection || over_user {
            // Answered at once (not after the join error delay) and followed by a disconnect,
            // as Supabase does (PROTOCOL §6.1): a client in a join loop must stop, not retry.
            self.node.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let frame =
                self.join_error_frame(&m, "ClientJoinRateLimitReached: Too many joins per second");
            self.outbox.push(frame);
            self.outbox.close(crate::outbox::CloseReason::Server {
                code: 1001,
                reason: "Too many joins per second".into(),
            });
            return;
        }
        let payload: JoinPayload = match &m.body {
            Body::Json(raw) => serde_json::from_str(raw.get()).unwrap_or_default(),
            Body::UserBroadcast { .. } => JoinPayload::default(),
        };
        let config = payload.config.unwrap_or(Value::Null);
        let private = flex_bool(config.get("private"));
        let key = match TopicKey::from_wire(&m.topic, private) {
            Ok(k) => k,
            Err(e @ (TopicError::NameRequired | TopicError::TooLong | TopicError::NotRealtime)) => {
                return self.join_error(&m, &e.to_string());
            }
        };
        let (token, principal) = match token_value(
            payload
                .access_token
                .as_ref()
                .or(payload.user_token.as_ref()),
        ) {
            Some(t) => match self.node.verifier.verify(t) {
                Ok(p) => (token_hash(t), Arc::new(p)),
                Err(e) => return self.join_error(&m, &e.reason()),
            },
            None => {
                let now = now_secs();
                if self.connect_principal.exp <= now {
                    let e = TokenError::Expired {
                        secs_ago: now - self.connect_principal.exp,
                    };
                    return self.join_error(&m, &e.reason());
                }
                (self.connect_token, self.connect_principal.clone())
            }
        };
        if let Err(denied) = self
            .node
            .kinds
            .authorize(&principal, &key, Access::Read)
            .await
        {
            return self.join_error(&m, &denied.0);
        }
        let broadcast = config.get("broadcast");
        let catch_up = match parse_catch_up(broadcast, &self.node.config) {
            Ok(c) => chat_catch_up(&key, c),
            Err(reason) => return self.join_error(&m, &reason),
        };
        let replacing = self.find(&m.topic).is_some();
        if !replacing && self.channels.len() >= self.node.config.max_channels {
            return self.join_error(&m, "ChannelRateLimitReached: Too many channels");
        }
        if replacing && let Some(old) = self.leave_channel(&m.topic).await {
            // The client ignores this close (its join ref is outdated), as with Phoenix.
            self.lifecycle(old.join_ref.as_ref(), &m.topic, "phx_close");
        }

        let presence = config.get("presence");
        let presence_enabled = flex_bool(presence.and_then(|p| p.get("enabled")));
        let presence_key = match presence.and_then(|p| p.get("key")) {
            Some(Value::String(k)) if !k.is_empty() => Some(k.as_str().into()),
            Some(Value::Number(n)) => Some(n.to_string().into()),
            _ => None,
        };
        let bindings: Vec<Value> = match config.get("postgres_changes") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    if let Value::Object(o) = &mut b {
                        let id = binding_id(&Value::Object(o.clone()));
                        o.insert("id".into(), Value::from(id));
                    }
                    b
                })
                .collect(),
            _ => Vec::new(),
        };
        let response = serde_json::json!({ "postgres_changes": bindings }).to_string();
        let reply = codec::encode(
            self.format,
            Outbound {
                join_ref: m.join_ref.as_ref(),
                msg_ref: m.msg_ref.as_ref(),
                topic: &m.topic,
                event: "phx_reply",
                payload: &reply_payload("ok", &response),
            },
        );
        let member = Member {
            conn: self.conn,
            outbox: self.outbox.clone(),
            format: self.format,
            join_ref: m.join_ref.clone(),
            broadcast_self: flex_bool(broadcast.and_then(|b| b.get("self"))),
            presence_enabled,
        };
        let channel = Channel {
            name_hash: name_hash(key.name()),
            key,
            join_ref: m.join_ref.clone(),
            ack: flex_bool(broadcast.and_then(|b| b.get("ack"))),
            presence_key,
            expires_at: instant_of(principal.exp),
            token,
            principal,
        };
        self.enter(channel, member, reply, catch_up).await;
    }

    /// Makes an admitted member live: subscribes (before joining, so a cross-node broker
    /// delivers everything published from now on before the history read), joins the registry
    /// with `first` as the first frame, records the channel, and starts the catch-up.
    async fn enter(
        &mut self,
        channel: Channel,
        member: Member,
        first: OutFrame,
        catch_up: Option<CatchUp>,
    ) {
        let key = channel.key.clone();
        let join_ref = channel.join_ref.clone();
        let subscribed = self.node.broker.subscribe(&key).await;
        self.node
            .registry
            .join(&key, member, first, catch_up.is_some());
        self.node.stats.joins.fetch_add(1, Ordering::Relaxed);
        if self.channels.capacity() == 0 {
            // Most connections join one topic: do not let the first push reserve four slots.
            self.channels.reserve_exact(1);
        }
        self.channels.push(channel);
        if let Err(e) = subscribed {
            tracing::warn!(topic = %key, error = %e, "broker subscribe failed");
            self.system(
                join_ref.as_ref(),
                &key,
                "error",
                "Cross-node delivery is unavailable; messages from other nodes may be missed",
            );
        }
        if let Some(c) = catch_up {
            // A task of its own: a long catch-up waits for the client to read (outbox room),
            // and the connection task that drains the outbox must keep running meanwhile.
            let job = CatchUpJob {
                node: self.node.clone(),
                outbox: self.outbox.clone(),
                format: self.format,
                conn: self.conn,
                key,
                join_ref,
            };
            tokio::spawn(job.run(c));
        }
    }

    /// Joins `key` as a read-only stream (SSE): authorised for reading with the connection's
    /// token, resuming after `since` when given. `first` is the stream's first bytes. Errors are
    /// the refusal reason (`Unauthorized: …`).
    pub async fn join_stream(
        &mut self,
        key: TopicKey,
        since: Option<Since>,
        first: OutFrame,
    ) -> Result<(), String> {
        let principal = self.connect_principal.clone();
        self.node
            .kinds
            .authorize(&principal, &key, Access::Read)
            .await
            .map_err(|d| d.0)?;
        let member = Member {
            conn: self.conn,
            outbox: self.outbox.clone(),
            format: self.format,
            join_ref: None,
            broadcast_self: false,
            presence_enabled: false,
        };
        let channel = Channel {
            name_hash: name_hash(key.name()),
            key,
            join_ref: None,
            ack: false,
            presence_key: None,
            expires_at: instant_of(principal.exp),
            token: self.connect_token,
            principal,
        };
        let limit = self.node.config.resume_limit;
        let catch_up = since.map(|since| CatchUp::Resume { since, limit });
        let catch_up = chat_catch_up(&channel.key, catch_up);
        self.enter(channel, member, first, catch_up).await;
        Ok(())
    }

    async fn leave_channel(&mut self, topic: &str) -> Option<Channel> {
        let i = self.find(topic)?;
        let ch = self.channels.swap_remove(i);
        if self.node.registry.leave(&ch.key, self.conn).had_presence {
            self.share_untrack(&ch.key).await;
        }
        // Every join subscribed once (the broker counts), so every leave unsubscribes once.
        if let Err(e) = self.node.broker.unsubscribe(&ch.key).await {
            tracing::warn!(topic = %ch.key, error = %e, "broker unsubscribe failed");
        }
        Some(ch)
    }

    async fn share_untrack(&self, topic: &TopicKey) {
        if let Err(e) = self.node.broker.presence_untrack(topic, self.conn).await {
            tracing::warn!(topic = %topic, error = %e, "sharing a presence leave failed");
        }
    }

    async fn broadcast(&mut self, m: Inbound) {
        let Some(ch) = self.find(&m.topic).map(|i| &self.channels[i]) else {
            return;
        };
        let (key, ack, principal, token) = (ch.key.clone(), ch.ack, ch.principal.clone(), ch.token);
        let (event, payload) = match extract_broadcast(&m.body) {
            Ok(x) => x,
            Err(reason) => return self.reply_reason(&m, reason),
        };
        if event.len() > MAX_EVENT_LEN {
            return self.reply_reason(&m, "InvalidBroadcast: event names are limited to 255 bytes");
        }
        if payload.len() > self.node.config.max_payload_bytes {
            // The ack error realtime-js resolves as 'error' (PROTOCOL §3.2).
            return self.reply(&m, "error", r#"{"error":"payload_size_exceeded"}"#);
        }
        let payload = if crate::chat::is_chat(&key) && event == "input" && !principal.is_service() {
            // User input to a chat's backend worker: any reader may send it, within the
            // per-user limit; the worker learns who sent it.
            let user = principal
                .sub
                .clone()
                .unwrap_or_else(|| format!("token:{token:016x}"));
            if let Err(wait) = self.node.chat_inputs.check(&user) {
                let reason = format!(
                    "RateLimitExceeded: Too many chat messages (limit {}); retry in {} s",
                    self.node.chat_inputs.describe(),
                    wait.as_secs().max(1)
                );
                return self.reply_reason(&m, &reason);
            }
            match crate::chat::input_payload(&payload, &user) {
                Some(p) => p,
                None => {
                    return self
                        .reply_reason(&m, "InvalidBroadcast: chat input must be a JSON object");
                }
            }
        } else {
            if let Err(denied) = self
                .node
                .kinds
                .authorize(&principal, &key, Access::Write)
                .await
            {
                return self.reply_reason(&m, &denied.0);
            }
            payload
        };
        let publication = Publication {
            topic: key.clone(),
            event: event.into(),
            payload,
            origin: Some(self.conn),
        };
        match self.node.broker.publish(publication).await {
            Ok(_) if ack => self.reply(&m, "ok", "{}"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %key, error = %e, "publish failed");
                self.reply_reason(&m, "BroadcastFailed: the message could not be published");
            }
        }
    }

    async fn presence(&mut self, m: Inbound) {
        let Some(i) = self.find(&m.topic) else {
            return;
        };
        let Body::Json(raw) = &m.body else {
            return self.reply(&m, "error", "{}");
        };
        #[derive(Deserialize)]
        struct PresencePush {
            event: Option<String>,
            payload: Option<Value>,
        }
        let Ok(push) = serde_json::from_str::<PresencePush>(raw.get()) else {
            return self.reply_reason(&m, "Presence message must be an object");
        };
        match push.event.map(|e| e.to_lowercase()).as_deref() {
            Some("track") if raw.get().len() > self.node.config.max_presence_bytes => {
                self.node.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                self.close_channel(&m.topic, "Track message size exceeded")
                    .await;
            }
            Some("track")
                if self.node.registry.presence_full(
                    &self.channels[i].key,
                    self.conn,
                    self.node.config.max_presence_entries,
                ) =>
            {
                self.reply_reason(
                    &m,
                    "PresenceLimitReached: Too many presence entries on this topic",
                );
            }
            Some("track") => {
                let payload = match push.payload {
                    Some(Value::Object(o)) => o,
                    None => Map::new(),
                    Some(_) => {
                        return self.reply_reason(&m, "Presence track payload must be a map");
                    }
                };
                let (topic, principal) = (
                    self.channels[i].key.clone(),
                    self.channels[i].principal.clone(),
                );
                if let Err(denied) = self
                    .node
                    .kinds
                    .authorize(&principal, &topic, Access::Presence)
                    .await
                {
                    return self.reply_reason(&m, &denied.0);
                }
                let registry = &self.node.registry;
                let ch = &mut self.channels[i];
                let key = ch
                    .presence_key
                    .get_or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
                let shared = payload.clone();
                let key = key.to_string();
                match registry.track(&ch.key, self.conn, &key, payload) {
                    Ok(()) => {
                        self.reply(&m, "ok", "{}");
                        let broker = &self.node.broker;
                        if let Err(e) = broker
                            .presence_track(&topic, self.conn, &key, &shared)
                            .await
                        {
                            tracing::warn!(topic = %topic, error = %e, "sharing presence failed");
                        }
                    }
                    Err(_) => self.reply(&m, "error", "{}"),
                }
            }
            Some("untrack") => {
                let topic = self.channels[i].key.clone();
                match self.node.registry.untrack(&topic, self.conn) {
                    Ok(had) => {
                        self.reply(&m, "ok", "{}");
                        if had {
                            self.share_untrack(&topic).await;
                        }
                    }
                    Err(_) => self.reply(&m, "error", "{}"),
                }
            }
            _ => self.reply_reason(&m, "Unknown presence event; expected track or untrack"),
        }
    }

    async fn access_token(&mut self, m: Inbound) {
        let Body::Json(raw) = &m.body else { return };
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let Some(token) = token_value(value.get("access_token")) else {
            return;
        };
        let Some(i) = self.find(&m.topic) else {
            return;
        };
        let hash = token_hash(token);
        if self.channels[i].token == hash {
            return;
        }
        match self.node.verifier.verify(token) {
            Ok(p) => {
                // New claims may carry fewer rights (RLS re-evaluation in the real server).
                let key = self.channels[i].key.clone();
                if self
                    .node
                    .kinds
                    .authorize(&p, &key, Access::Read)
                    .await
                    .is_err()
                {
                    let message = format!(
                        "You no longer have permission to read from this Channel topic: {}",
                        key.name()
                    );
                    return self.close_channel(&m.topic, &message).await;
                }
                let ch = &mut self.channels[i];
                ch.token = hash;
                ch.expires_at = instant_of(p.exp);
                ch.principal = Arc::new(p);
            }
            Err(e) => self.close_channel(&m.topic, &e.to_string()).await,
        }
    }

    /// Closes a channel the way the real server shuts one down: a `system` error, then
    /// `phx_close` (PROTOCOL §2.7). The client reports CLOSED and does not rejoin. An event
    /// stream gets the `system` event only: it has no Phoenix channel to close, and it ends.
    async fn close_channel(&mut self, topic: &str, message: &str) {
        if let Some(ch) = self.leave_channel(topic).await {
            self.system(ch.join_ref.as_ref(), &ch.key, "error", message);
            if self.format != Format::Sse {
                self.lifecycle(ch.join_ref.as_ref(), topic, "phx_close");
            }
        }
    }

    /// The next moment [`Session::on_timer`] has work: a token expiry or a delayed reply.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.channels.iter().map(|c| c.expires_at).min();
        let delayed = self.delayed.front().map(|(t, _)| *t);
        match (expiry, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends delayed replies that are due and closes channels whose token expired.
    pub async fn on_timer(&mut self) {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, frame)) = self.delayed.pop_front() {
                self.outbox.push(frame);
            }
        }
        let expired: Vec<(String, Instant)> = self
            .channels
            .iter()
            .filter(|c| c.expires_at <= now)
            .map(|c| (c.key.wire(), c.expires_at))
            .collect();
        for (topic, at) in expired {
            let secs = now.saturating_duration_since(at).as_secs();
            let e = TokenError::Expired { secs_ago: secs };
            self.close_channel(&topic, &e.to_string()).await;
        }
    }

    /// A `system` message with `status` and `message` for every joined channel, for the
    /// transport to send just before it closes the connection (these bypass the outbox, which
    /// may be full or closed).
    pub fn notices(&self, status: &str, message: &str) -> Vec<OutFrame> {
        self.channels
            .iter()
            .map(|ch| system_frame(self.format, ch.join_ref.as_ref(), &ch.key, status, message))
            .collect()
    }

    /// Leaves every channel (presence leaves go out to the other members). Call once when the
    /// connection ends, whatever the reason.
    pub async fn close(&mut self) {
        let topics: Vec<String> = self.channels.iter().map(|c| c.key.wire()).collect();
        for t in topics {
            self.leave_channel(&t).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.node.connections.unregister(self.conn);
        // A transport that forgot `close()` must not leave members behind.
        for ch in &self.channels {
            self.node.registry.leave(&ch.key, self.conn);
        }
    }
}

/// Catching a joining member up from history: pages through it oldest first, never more than
/// the outbox can take, then switches the member to live delivery (`Registry::finish_catch_up`
/// drops live duplicates of what history already gave).
struct CatchUpJob {
    node: Arc<Node>,
    outbox: Outbox,
    format: Format,
    conn: ConnId,
    key: TopicKey,
    join_ref: Option<Ref>,
}

impl CatchUpJob {
    fn system(&self, message: &str) {
        self.outbox.push(system_frame(
            self.format,
            self.join_ref.as_ref(),
            &self.key,
            "error",
            message,
        ));
    }

    async fn run(self, c: CatchUp) {
        let after = match c {
            CatchUp::Replay { since_ms, limit } => self.replay(since_ms, limit).await,
            CatchUp::Resume { since, limit } => self.resume(since, limit).await,
            CatchUp::Snapshot => self.snapshot().await,
        };
        let Ok(after) = after else {
            return; // no longer catching up (left, replaced, or the connection closed)
        };
        // The member may have been replaced or left meanwhile; then there is nothing to finish.
        let _ = self
            .node
            .registry
            .finish_catch_up(&self.key, self.conn, &[], after.as_ref());
    }

    /// Folds the whole retained stream into one `snapshot` event (chat).
    async fn snapshot(&self) -> Result<Option<Cursor>, NotMember> {
        let snap = match crate::chat::snapshot_of(self.node.broker.as_ref(), &self.key).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(topic = %self.key, error = %e, "history read failed");
                self.system("History not recovered: history is unavailable");
                return Ok(None);
            }
        };
        if snap.is_empty() {
            return Ok(None);
        }
        let env = snap.envelope(&self.key);
        self.node
            .registry
            .catch_up_push(&self.key, self.conn, std::slice::from_ref(&env))?;
        Ok(snap.cursor)
    }

    async fn replay(&self, since_ms: u64, limit: usize) -> Result<Option<Cursor>, NotMember> {
        match self.node.broker.replay(&self.key, since_ms, limit).await {
            Ok(msgs) => {
                self.node
                    .registry
                    .catch_up_push(&self.key, self.conn, &msgs)?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(topic = %self.key, error = %e, "replay failed");
                self.system("UnableToReplayMessages: history is unavailable");
                Ok(None)
            }
        }
    }

    async fn resume(&self, since: Since, limit: usize) -> Result<Option<Cursor>, NotMember> {
        let page_size = (self.outbox.max_frames() / 2).clamp(1, 256);
        let broker = &self.node.broker;
        let mut after = since;
        let mut delivered = 0usize;
        let mut first = true;
        let mut told = false;
        loop {
            let page = match broker.read(&self.key, &after, page_size).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(topic = %self.key, error = %e, "history read failed");
                    self.system("History not recovered: history is unavailable");
                    break;
                }
            };
            if !page.contiguous && crate::chat::is_chat(&self.key) {
                // A chat reader whose cursor is gone gets the text so far instead.
                return self.snapshot().await;
            }
            if !page.contiguous && !told {
                told = true;
                self.system(&format!(
                    "History not recovered: messages after the given cursor are no longer all \
                     retained (current cursor {})",
                    page.head
                ));
            }
            if first {
                first = false;
                // A client limit keeps the newest messages: skip ahead when more were missed.
                let from = match &after {
                    Since::After(c) if c.epoch == page.head.epoch => c.offset,
                    _ => 0,
                };
                if page.head.offset.saturating_sub(from) > limit as u64 {
                    if !told {
                        told = true;
                        self.system(&format!(
                            "History not recovered: more than {limit} messages were missed; \
                             replaying the newest {limit} (current cursor {})",
                            page.head
                        ));
                    }
                    after = Since::After(Cursor::new(
                        page.head.epoch.clone(),
                        page.head.offset - limit as u64,
                    ));
                    continue;
                }
            }
            let n = page.messages.len().min(limit - delivered);
            if n == 0 {
                break;
            }
            self.outbox.room(n).await;
            if self.outbox.is_closed() {
                return Err(NotMember);
            }
            let batch = &page.messages[..n];
            self.node
                .registry
                .catch_up_push(&self.key, self.conn, batch)?;
            delivered += n;
            if let Some(c) = batch.last().and_then(|e| e.cursor.clone()) {
                after = Since::After(c);
            }
            if n < page_size || delivered >= limit {
                break;
            }
        }
        Ok(match after {
            Since::After(c) => Some(c),
            Since::Beginning => None,
        })
    }
}

fn parse_catch_up(
    broadcast: Option<&Value>,
    config: &crate::node::NodeConfig,
) -> Result<Option<CatchUp>, String> {
    let Some(b) = broadcast else { return Ok(None) };
    let limit_of = |v: &Value, default: usize, max: usize| -> usize {
        v.get("limit")
            .and_then(Value::as_u64)
            .map_or(default, |l| (l as usize).min(max))
    };
    if let Some(resume) = b.get("resume").filter(|r| !r.is_null()) {
        let since = match resume.get("since") {
            Some(Value::String(s)) => Since::parse(s)
                .map_err(|e| format!("InvalidJoinPayload: broadcast.resume.since: {e}"))?,
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Since::Beginning,
            _ => {
                return Err(
                    "InvalidJoinPayload: broadcast.resume.since must be \"0\" or a cursor \
                            \"<epoch>:<offset>\""
                        .into(),
                );
            }
        };
        let limit = limit_of(resume, config.resume_limit, config.resume_limit).max(1);
        return Ok(Some(CatchUp::Resume { since, limit }));
    }
    if let Some(replay) = b.get("replay").filter(|r| !r.is_null()) {
        let Some(since_ms) = replay.get("since").and_then(Value::as_u64) else {
            return Err(
                "InvalidJoinPayload: broadcast.replay.since must be a timestamp in milliseconds"
                    .into(),
            );
        };
        let limit = limit_of(replay, config.replay_limit, config.replay_limit);
        return Ok(Some(CatchUp::Replay { since_ms, limit }));
    }
    Ok(None)
}

/// The user event and payload of a broadcast push, from a kind-3 frame or the JSON form
/// `{"type":"broadcast","event":…,"payload":…}`.
fn extract_broadcast(body: &Body) -> Result<(String, Payload), &'static str> {
    match body {
        Body::UserBroadcast { event, payload } => Ok((event.clone(), payload.clone())),
        Body::Json(raw) => {
            #[derive(Deserialize)]
            struct Json<'a> {
                event: Option<String>,
                #[serde(borrow)]
                payload: Option<&'a RawValue>,
            }
            let j: Json<'_> = serde_json::from_str(raw.get())
                .map_err(|_| "InvalidBroadcast: payload must be an object with a string event")?;
            let event = j
                .event
                .ok_or("InvalidBroadcast: payload must be an object with a string event")?;
            let payload = j.payload.map_or("{}", RawValue::get);
            Ok((
                event,
                Payload::Json(Bytes::copy_from_slice(payload.as_bytes())),
            ))
        }
    }
}

/// FNV-1a over a topic name: a few cycles for a short name, and only ever compared within one
/// connection's channels (a collision costs one extra string compare, nothing else).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenError;
    use crate::node::NodeConfig;
    use crate::outbox::OutboxLimits;

    #[derive(Debug)]
    struct NoTokens;

    impl crate::auth::TokenVerifier for NoTokens {
        fn verify(&self, _: &str) -> Result<Principal, TokenError> {
            Err(TokenError::Missing)
        }
    }

    /// An event stream whose token expired gets the `system` notice and no Phoenix `phx_close`
    /// (it has no channel to close; the transport ends the stream).
    #[tokio::test]
    async fn an_expired_event_stream_gets_the_notice_without_phx_close() {
        let (node, _broker) = Node::memory(NodeConfig::default(), Arc::new(NoTokens), 10);
        let outbox = Outbox::new(OutboxLimits::default());
        let principal = Principal {
            role: "anon".into(),
            sub: None,
            exp: now_secs(),
            share_session: None,
            grants: None,
        };
        let mut session = Session::new(node, Format::Sse, outbox.clone(), "t", principal);
        let topic = TopicKey::new("room:exp", false).unwrap();
        let first = OutFrame::Text(Bytes::from_static(b"retry: 1\n\n"));
        session.join_stream(topic, None, first).await.unwrap();
        session.on_timer().await;
        assert_eq!(session.channel_count(), 0, "the expired stream was closed");
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        let text: Vec<String> = frames
            .into_iter()
            .map(|f| String::from_utf8(f.into_wire().0.to_vec()).unwrap())
            .collect();
        assert_eq!(text.len(), 2, "the preamble and the notice: {text:?}");
        assert!(
            text[1].starts_with("event: system\n") && text[1].contains("expired"),
            "{text:?}"
        );
    }
}
