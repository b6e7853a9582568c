//! Command-line and environment configuration. Every flag has an `HUB_…` environment equivalent
//! and a documented default; README's configuration table lists them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use channels::{NodeConfig, OutboxLimits};
use clap::Parser;
use store::StoreConfig;

use crate::auth::{JwtSettings, JwtVerifier, KeyError, PublicKey};

/// The hub's configuration (the flags of `hub` without a subcommand; see [`crate::cli::Cli`]).
#[derive(Debug, Clone, Parser)]
#[command(name = "hub")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HUB_ADDR", default_value = "127.0.0.1:4000")]
    pub addr: SocketAddr,

    /// HS256 secret that signs client JWTs. When unset, a random development secret is generated
    /// and development tokens are printed.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWT algorithms accepted, comma-separated: HS256, HS384, HS512 (signed with the secret),
    /// RS256, RS384, RS512, ES256, ES384 (verified with --jwt-public-key / --jwt-jwks). Tokens
    /// with any other `alg` (and `none`, which cannot be configured) are refused. Share tokens
    /// the hub issues are HS256: keep it in the list to use them.
    #[arg(
        long,
        env = "HUB_JWT_ALGORITHMS",
        default_value = "HS256",
        value_delimiter = ','
    )]
    pub jwt_algorithms: Vec<String>,

    /// PEM files with RSA or EC public keys for RS*/ES* tokens (comma-separated).
    #[arg(long, env = "HUB_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<PathBuf>,

    /// A JWKS file (`{"keys": [...]}`) with RSA/EC public keys; a token's `kid` picks its key.
    #[arg(long, env = "HUB_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// A JWKS URL (http:// or https://), e.g. an identity provider's
    /// `/.well-known/jwks.json`: fetched at start (the hub does not start without it), then
    /// refreshed; a token's `kid` picks its key.
    #[arg(long, env = "HUB_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS URL is fetched again.
    #[arg(long, env = "HUB_JWT_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// Least time between two JWKS fetches. A token naming an unknown `kid` triggers an early
    /// fetch (keys rotated), at most this often, so made-up `kid`s cannot flood the provider.
    #[arg(long, env = "HUB_JWT_JWKS_COOLDOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_jwks_cooldown: Duration,

    /// A PEM file with extra CA certificates trusted for the JWKS URL (besides the system's).
    #[arg(long, env = "HUB_JWT_JWKS_CA")]
    pub jwt_jwks_ca: Option<PathBuf>,

    /// Accepted `aud` values (comma-separated); when set, a token without one of them is refused.
    #[arg(long, env = "HUB_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Accepted `iss` values (comma-separated); when set, a token without one of them is refused.
    #[arg(long, env = "HUB_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Clock-skew allowance for a token's `nbf` (`exp` is enforced exactly: an open channel
    /// closes the moment its token expires).
    #[arg(long, env = "HUB_JWT_LEEWAY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Verified tokens remembered, so a reconnect storm does not verify one token thousands of
    /// times (0: verify every time).
    #[arg(long, env = "HUB_JWT_CACHE_SIZE", default_value_t = crate::auth::DEFAULT_CACHE_SIZE)]
    pub jwt_cache_size: usize,

    /// Postgres URL. When set, build sessions and `build:` topics are stored in Postgres (migrations
    /// are applied at start); when unset, everything lives in memory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis URL. When set, every topic except `build:` goes through Redis, so several hub
    /// nodes share one set of channels, presence and history.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Lifetime of a Redis topic's history after its last message (Redis only).
    #[arg(long, env = "HUB_REDIS_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub redis_history_ttl: Duration,

    /// Delete outbox rows older than this (Postgres only).
    #[arg(long, env = "HUB_OUTBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,

    /// Cache build-session ownership lookups this long (a deleted session stops being readable
    /// within this time).
    #[arg(long, env = "HUB_OWNERSHIP_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ownership_ttl: Duration,

    /// Close a WebSocket that sends nothing (not even a heartbeat) for this long.
    #[arg(long, env = "HUB_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Joins per second one connection may make (bursts up to --join-burst); beyond it the join
    /// is refused with `ClientJoinRateLimitReached` and the socket closed (0: no limit).
    #[arg(long, env = "HUB_JOINS_PER_SEC", default_value_t = 10)]
    pub joins_per_sec: u32,

    /// Joins one connection may make at once before --joins-per-sec applies.
    #[arg(long, env = "HUB_JOIN_BURST", default_value_t = 200)]
    pub join_burst: u32,

    /// Joins per second one user (JWT `sub`) may make across all their connections and
    /// reconnections, in bursts of ten times that; the service role and tokens without `sub`
    /// are not counted (0: no limit).
    #[arg(long, env = "HUB_USER_JOINS_PER_SEC", default_value_t = 100)]
    pub user_joins_per_sec: u32,

    /// WebSocket and SSE connections one user (JWT `sub`) may have open on this node; beyond it
    /// the upgrade is refused with 429. The service role and tokens without `sub` are not
    /// counted (0: no limit).
    #[arg(long, env = "HUB_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub connections_per_user: u32,

    /// New connections per second from one IP address (bursts of twice that); beyond it the
    /// hub answers 429 with `Retry-After` before reading the request (0: no limit).
    #[arg(long, env = "HUB_CONNECTIONS_PER_SEC_PER_IP", default_value_t = 1000)]
    pub connections_per_sec_per_ip: u32,

    /// Browser origins allowed to open WebSockets and SSE streams and to call the REST API
    /// (comma-separated, e.g. `https://app.example.com`); requests without an `Origin` header
    /// (servers, CLIs) are always allowed. Empty: any origin.
    #[arg(long, env = "HUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Broadcast and presence pushes per second per connection (bursts of twice that); beyond
    /// it the channel is closed with "Too many messages per second". The service role is exempt
    /// (0: no limit).
    #[arg(long, env = "HUB_MESSAGES_PER_SEC", default_value_t = 1000)]
    pub messages_per_sec: u32,

    /// Refuse rooms and chat streams to tokens without a `grants` claim (the service role
    /// excepted). Without this flag such tokens reach any room, like Supabase's public channels;
    /// a token that carries grants reaches only what they name either way.
    #[arg(long, env = "HUB_REQUIRE_TOPIC_GRANTS")]
    pub require_topic_grants: bool,

    /// The same across all connections of one user (JWT `sub`) (0: no limit).
    #[arg(long, env = "HUB_USER_MESSAGES_PER_SEC", default_value_t = 2000)]
    pub user_messages_per_sec: u32,

    /// Largest presence `track` push, in bytes; beyond it the channel is closed with "Track
    /// message size exceeded".
    #[arg(long, env = "HUB_MAX_PRESENCE_BYTES", default_value_t = 64 * 1024)]
    pub max_presence_bytes: usize,

    /// Presence entries one topic may hold; a track that would add one more is refused with
    /// `PresenceLimitReached`.
    #[arg(long, env = "HUB_MAX_PRESENCE_ENTRIES", default_value_t = 10_000)]
    pub max_presence_entries: usize,

    /// REST requests one user (JWT `sub`) may make per hour (seed 003); beyond it 429 with
    /// `Retry-After`. The service role is exempt (0: no limit).
    #[arg(long, env = "HUB_REST_REQUESTS_PER_HOUR", default_value_t = 1000)]
    pub rest_requests_per_hour: u32,

    /// Chat `input` messages one user may send per hour (0: no limit).
    #[arg(long, env = "HUB_CHAT_INPUT_PER_HOUR", default_value_t = 100)]
    pub chat_input_per_hour: u32,

    /// Bytes of output each terminal keeps for viewers that (re)connect.
    #[arg(long, env = "HUB_TERMINAL_SCROLLBACK", default_value_t = 256 * 1024)]
    pub terminal_scrollback: usize,

    /// Terminals one user may have open at once (seed 003).
    #[arg(long, env = "HUB_TERMINALS_PER_USER", default_value_t = 5)]
    pub terminals_per_user: usize,

    /// Free a terminal that has had no host and no viewers for this long.
    #[arg(long, env = "HUB_TERMINAL_IDLE_FREE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub terminal_idle_free: Duration,

    /// Input frames one terminal viewer may send per second (bursts up to this many).
    #[arg(long, env = "HUB_TERMINAL_INPUT_PER_SEC", default_value_t = 10_000)]
    pub terminal_input_per_sec: u32,

    /// Largest terminal frame (input, output or control), in bytes.
    #[arg(long, env = "HUB_TERMINAL_MAX_FRAME", default_value_t = 64 * 1024)]
    pub terminal_max_frame: usize,

    /// Send an SSE stream a heartbeat comment this often.
    #[arg(long, env = "HUB_SSE_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_heartbeat: Duration,

    /// Largest WebSocket frame or message a client may send, in bytes.
    #[arg(long, env = "HUB_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    pub max_frame_bytes: usize,

    /// Largest broadcast payload, in bytes (WebSocket and REST).
    #[arg(long, env = "HUB_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,

    /// Channels one connection may have joined at once.
    #[arg(long, env = "HUB_MAX_CHANNELS", default_value_t = 100)]
    pub max_channels: usize,

    /// Messages kept per topic for resume (in-memory history ring).
    #[arg(long, env = "HUB_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// Forget the history of a topic with no members after this long without messages.
    #[arg(long, env = "HUB_HISTORY_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Frames a connection's outbox holds before the connection is closed as a slow reader.
    #[arg(long, env = "HUB_OUTBOX_MESSAGES", default_value_t = 1024)]
    pub outbox_messages: usize,

    /// Bytes a connection's outbox holds before the connection is closed as a slow reader.
    #[arg(long, env = "HUB_OUTBOX_BYTES", default_value_t = 4 << 20)]
    pub outbox_bytes: usize,

    /// Delay before a join error reply (damps client retry loops; Supabase uses 5 s).
    #[arg(long, env = "HUB_JOIN_ERROR_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub join_error_delay: Duration,

    /// On shutdown, the window over which open connections are told "Server requested
    /// disconnect" and closed, in batches spread evenly across it, so a fleet restart does not
    /// send every client back at the same instant. 0: all at once.
    #[arg(long, env = "HUB_DRAIN_WINDOW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// On shutdown, how long to wait (after the drain window) for connections to close before
    /// exiting anyway.
    #[arg(long, env = "HUB_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Run the built-in simulated orchestrator for every session `POST /sessions` creates (seed
    /// 004 §6, no real provisioning). A deployment whose real orchestrator writes
    /// `build_sessions`/`build_events` itself sets this to `false`.
    #[arg(long, env = "HUB_SIMULATE_BUILDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub simulate_builds: bool,

    /// Pause between the simulated orchestrator's steps.
    #[arg(long, env = "HUB_SIMULATE_STEP_DELAY", default_value = "400ms", value_parser = humantime::parse_duration)]
    pub simulate_step_delay: Duration,

    /// Simulated builds running at once; `POST /sessions` answers 429 beyond this.
    #[arg(long, env = "HUB_SIMULATE_MAX_BUILDS", default_value_t = 100)]
    pub simulate_max_builds: usize,

    /// Lifetime of the JWT `POST /sessions/token` issues for a share token.
    #[arg(long, env = "HUB_SHARE_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub share_token_ttl: Duration,

    /// Log format: `text` or `json`. Filter with `RUST_LOG` (default `info`).
    #[arg(long, env = "HUB_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// A configuration for tests: ephemeral port, a fixed secret, no join error delay, simulated
    /// builds stepping every 10 ms.
    pub fn for_tests(secret: &str) -> Self {
        let mut c = Self::parse_from(["hub", "--addr", "127.0.0.1:0"]);
        // Backends only when a test asks for them, whatever DATABASE_URL / REDIS_URL say.
        c.database_url = None;
        c.redis_url = None;
        c.jwt_secret = Some(secret.to_owned());
        c.join_error_delay = Duration::ZERO;
        // Shutdown tests expect every connection closed at once; `tests/ops.rs` sets a window.
        c.drain_window = Duration::ZERO;
        c.simulate_builds = true;
        c.simulate_step_delay = Duration::from_millis(10);
        c
    }

    /// The token rules derived from this configuration, with `secret` as the HMAC secret (the
    /// configured one, or the generated development secret). Reads the key files.
    pub fn jwt_settings(&self, secret: &[u8]) -> Result<JwtSettings, KeyError> {
        let mut algorithms = Vec::new();
        for name in &self.jwt_algorithms {
            let alg = crate::auth::parse_algorithm(name)?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let mut public_keys = Vec::new();
        for path in &self.jwt_public_key {
            public_keys.push(PublicKey::from_pem_file(path)?);
        }
        if let Some(path) = &self.jwt_jwks {
            public_keys.extend(PublicKey::from_jwks_file(path)?);
        }
        Ok(JwtSettings {
            algorithms,
            secret: secret.to_vec(),
            public_keys,
            remote_keys: Vec::new(),
            remote: self.jwt_jwks_url.is_some(),
            audiences: self.jwt_audience.clone(),
            issuers: self.jwt_issuer.clone(),
            leeway: self.jwt_leeway,
            cache_size: self.jwt_cache_size,
        })
    }

    /// The verifier these settings describe.
    pub fn jwt_verifier(&self, secret: &[u8]) -> Result<JwtVerifier, KeyError> {
        JwtVerifier::new(self.jwt_settings(secret)?)
    }

    /// The backend settings derived from this configuration.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            database_url: self.database_url.clone(),
            history_size: self.history_size,
            ownership_ttl: self.ownership_ttl,
            outbox_retention: self.outbox_retention,
            redis_url: self.redis_url.clone(),
            redis_history_ttl: self.redis_history_ttl,
            ..StoreConfig::default()
        }
    }

    /// The channel protocol limits derived from this configuration.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            max_channels: self.max_channels,
            max_payload_bytes: self.max_payload_bytes,
            join_error_delay: self.join_error_delay,
            chat_input_per_hour: self.chat_input_per_hour,
            joins_per_sec: self.joins_per_sec,
            join_burst: self.join_burst,
            user_joins_per_sec: self.user_joins_per_sec,
            max_presence_bytes: self.max_presence_bytes,
            max_presence_entries: self.max_presence_entries,
            connections_per_user: self.connections_per_user,
            messages_per_sec: self.messages_per_sec,
            user_messages_per_sec: self.user_messages_per_sec,
            ungranted: if self.require_topic_grants {
                channels::kinds::Ungranted::Closed
            } else {
                channels::kinds::Ungranted::Open
            },
            terminal: channels::terminal::TerminalConfig {
                scrollback: self.terminal_scrollback,
                per_user: self.terminals_per_user,
                idle_free: self.terminal_idle_free,
            },
            outbox: OutboxLimits {
                max_frames: self.outbox_messages,
                max_bytes: self.outbox_bytes,
            },
            ..NodeConfig::default()
        }
    }
}
