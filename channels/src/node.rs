//! The node: what every connection on this process shares (registry, broker, token verifier,
//! limits). Like centrifuge's `Node`, it is the one object transports need.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::TokenVerifier;
use crate::broker::{Broker, MemoryBroker};
use crate::connections::Connections;
use crate::kinds::Kinds;
use crate::outbox::OutboxLimits;
use crate::registry::{ConnId, Registry};

/// Limits and defaults of the channel protocol. Plain data with documented defaults; the hub
/// fills it from its command line.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Channels one connection may have joined at once. Default 100 (Supabase's
    /// `max_channels_per_client`).
    pub max_channels: usize,
    /// Largest broadcast payload accepted, in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Largest presence `track` push, in bytes. Default 64 KiB. Beyond it the channel is shut
    /// down with "Track message size exceeded", as Supabase does.
    pub max_presence_bytes: usize,
    /// Presence entries one topic may hold (members tracking, on every node). Default 10,000;
    /// a `track` that would add one more is refused with `PresenceLimitReached` (updating an
    /// existing entry always works).
    pub max_presence_entries: usize,
    /// Most messages a resume delivers from history (a join's `limit` may ask for fewer).
    /// Default: no limit beyond what the topic's history keeps (a build's whole timeline).
    pub resume_limit: usize,
    /// Most messages a Supabase `broadcast.replay` delivers. Default 25, as Supabase.
    pub replay_limit: usize,
    /// Delay before a join error reply, damping client retry loops. Default 1 s (Supabase: 5 s).
    pub join_error_delay: Duration,
    /// Bounds of each connection's outbox.
    pub outbox: OutboxLimits,
    /// Chat `input` messages one user may send per hour. Default 100 (seed 003).
    pub chat_input_per_hour: u32,
    /// Joins per second one connection may make, refilling a bucket of `join_burst`. Default 10
    /// per second with bursts of 200, so a client rejoining all its channels after a reconnect
    /// is not refused. Exceeding it answers `ClientJoinRateLimitReached: Too many joins per
    /// second` and disconnects the socket, as Supabase does. 0: no limit.
    pub joins_per_sec: u32,
    /// Burst of [`NodeConfig::joins_per_sec`].
    pub join_burst: u32,
    /// Joins per second one user (JWT `sub`) may make across all their connections, in bursts
    /// of ten times that. Default 100 (bursts of 1,000: five tabs rejoining 100 channels each
    /// after a network blip). The per-connection bucket restarts with every new socket; this
    /// one does not, so a client that reconnects to get a fresh join burst still gets no more
    /// than this. Exceeding it is answered like the per-connection limit. The service role and
    /// tokens without `sub` are not counted. 0: no limit.
    pub user_joins_per_sec: u32,
    /// Connections one user (JWT `sub`) may have open on this node at once. Default 100; the
    /// service role and tokens without `sub` are not counted. 0: no limit.
    pub connections_per_user: u32,
    /// Messages (broadcast and presence pushes) per second one connection may send, in bursts of
    /// twice that. Default 1,000. Exceeding it closes the channel pushed on with a `system`
    /// error "Too many messages per second" then `phx_close`, as Supabase does. The service role
    /// is exempt (backends publish at whatever rate their streams need). 0: no limit.
    pub messages_per_sec: u32,
    /// The same across all connections of one user (JWT `sub`; tokens without one, like a
    /// project's shared anon key, are limited per connection only). Default 2,000. 0: no limit.
    pub user_messages_per_sec: u32,
    /// Terminal scrollback, per-user limit and idle lifetime.
    pub terminal: crate::terminal::TerminalConfig,
    /// What a token without a `grants` claim reaches on rooms and chat streams (open by default,
    /// like Supabase's public channels).
    pub ungranted: crate::kinds::Ungranted,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            max_channels: 100,
            max_payload_bytes: 1 << 20,
            max_presence_bytes: 64 << 10,
            max_presence_entries: 10_000,
            resume_limit: usize::MAX,
            replay_limit: 25,
            join_error_delay: Duration::from_secs(1),
            outbox: OutboxLimits::default(),
            chat_input_per_hour: 100,
            joins_per_sec: 10,
            join_burst: 200,
            user_joins_per_sec: 100,
            connections_per_user: 100,
            messages_per_sec: 1000,
            user_messages_per_sec: 2000,
            terminal: crate::terminal::TerminalConfig::default(),
            ungranted: crate::kinds::Ungranted::Open,
        }
    }
}

/// Process-wide counters (exported as metrics by the hub).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Successful joins since start.
    pub joins: AtomicU64,
    /// Messages received from clients since start.
    pub messages_in: AtomicU64,
    /// Joins and messages refused by a rate limit since start.
    pub rate_limited: AtomicU64,
}

/// Shared state of one hub process.
#[derive(Debug)]
pub struct Node {
    /// Local members of every topic.
    pub registry: Arc<Registry>,
    /// Publishing and history.
    pub broker: Arc<dyn Broker>,
    /// Verifies tokens of joins and `access_token` pushes.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Who may read, write and track presence, per topic kind.
    pub kinds: Kinds,
    /// Protocol limits.
    pub config: NodeConfig,
    /// Counters.
    pub stats: NodeStats,
    /// Every open connection.
    pub connections: Connections,
    /// Chat input per user (`sub`, or the token for users without one).
    pub chat_inputs: crate::limits::KeyedLimiter,
    /// Messages per second per user (`sub`), see [`NodeConfig::user_messages_per_sec`].
    pub user_messages: crate::limits::KeyedLimiter,
    /// Joins per second per user (`sub`), see [`NodeConfig::user_joins_per_sec`].
    pub user_joins: crate::limits::KeyedLimiter,
    /// Open connections per user, see [`NodeConfig::connections_per_user`].
    pub user_connections: Arc<crate::user_connections::UserConnections>,
    /// Terminals relayed by this node.
    pub terminals: Arc<crate::terminal::Terminals>,
    next_conn: AtomicU64,
}

impl Node {
    /// A node on the embedded default: in-memory broker keeping `history_size` messages per topic.
    pub fn memory(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        history_size: usize,
    ) -> (Arc<Self>, Arc<MemoryBroker>) {
        let registry = Arc::new(Registry::new(config.outbox.max_frames));
        let broker = Arc::new(MemoryBroker::new(registry.clone(), history_size));
        let node = Self::new(config, verifier, registry, broker.clone(), Kinds::default());
        (node, broker)
    }

    /// A node over any broker delivering to `registry`, authorising with `kinds`.
    pub fn new(
        config: NodeConfig,
        verifier: Arc<dyn TokenVerifier>,
        registry: Arc<Registry>,
        broker: Arc<dyn Broker>,
        kinds: Kinds,
    ) -> Arc<Self> {
        let chat_inputs = crate::limits::KeyedLimiter::per_hour(config.chat_input_per_hour);
        let user_messages = crate::limits::KeyedLimiter::per_second_burst(
            config.user_messages_per_sec,
            config.user_messages_per_sec.saturating_mul(2),
        );
        let user_joins = crate::limits::KeyedLimiter::per_second_burst(
            config.user_joins_per_sec,
            config.user_joins_per_sec.saturating_mul(10),
        );
        Arc::new(Self {
            chat_inputs,
            user_messages,
            user_joins,
            user_connections: crate::user_connections::UserConnections::new(
                config.connections_per_user,
            ),
            terminals: {
                let t = Arc::new(crate::terminal::Terminals::new(
                    config.terminal,
                    Arc::downgrade(&registry),
                ));
                registry.set_terminals(t.clone());
                t
            },
            registry,
            broker,
            verifier,
            kinds,
            config,
            stats: NodeStats::default(),
            connections: Connections::default(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
