//! Command-line interface: `loadtest <scenario> [flags]`.
//!
//! Every scenario shares [`Common`] (where to connect, how many connections, how long, what to
//! measure, what to expect) and adds its own knobs. The parsers for the less obvious values
//! (address ranges, durations) are plain functions so they can be unit-tested.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Largest `--conns` one process accepts; far above what one process's open-file limit allows,
/// it only guards against typos that would spawn millions of tasks.
pub const MAX_CONNS: usize = 1_000_000;

/// Largest number of messages one fan-out run may publish (`--rate` × `--duration`).
pub const MAX_MESSAGES: u64 = 10_000_000;

/// Memory one process may spend on per-subscriber "seen" bitsets.
pub const MAX_SEEN_BYTES: u64 = 1 << 30;

/// Largest `--size`: one message must fit in a single WebSocket frame the hub accepts.
pub const MAX_SIZE: usize = 1 << 20;

/// Longest run any scenario accepts, so a mistyped unit cannot hold connections for days.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Load generator for the hub's Supabase Realtime (Phoenix V2) WebSocket endpoint.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios. Each one is bounded in connections, messages and time and stops by itself.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Open and join many idle connections; measure open/join rate and server RSS per connection.
    Idle(IdleArgs),
    /// One publisher, many subscribers: delivery ratio, publish→receive latency, server CPU.
    Fanout(FanoutArgs),
    /// Rows inserted into `build_events` → viewers of `build:<session>`: delivery ratio,
    /// insert→receive latency, commit times, server CPU. Needs the hub's database.
    PgFeed(PgFeedArgs),
    /// Server-sent event streams (`GET /v1/sse/{topic}`) fed by WebSocket publishers: idle cost
    /// per stream, or delivery, order and publish→receive latency.
    Sse(SseArgs),
    /// Terminals (`GET /v1/terminal/{id}`): keystroke→echo round trip through the hub and a real
    /// PTY agent, or host output fanned out to viewers (throughput, every byte in order).
    Terminal(TerminalArgs),
    /// Many rooms, each with its members and its own message rate (a `fanout` run over
    /// `--rooms` topics): delivery, publish→receive latency, server CPU.
    Rooms(RoomsArgs),
    /// `fanout` with the subscribers spread over two or more hub URLs (nodes sharing channels
    /// over Redis): the figures of `fanout` plus delivery per node.
    Multinode(FanoutArgs),
    /// Abuse: a quiet `fanout` run, then the same run with one client flooding joins and
    /// messages far above its limits; the crowd's p99 in both and their ratio, and what the
    /// hub refused the flooder.
    Flood(FloodArgs),
    /// Connections that keep coming and going (connect, join, stay, leave, close) at a set
    /// rate: open/join/leave latency under churn, failures, server memory left behind.
    Churn(ChurnArgs),
    /// Presence storms: trackers tracking and untracking in turn while watchers follow the
    /// diffs: track→diff latency, diffs delivered, and that every watcher ends with exactly the
    /// presence state the trackers left.
    Presence(PresenceArgs),
    /// A blend run at once in one process: rooms (WebSocket fan-out), chat token streams over
    /// SSE, connection churn, presence storms and terminal output; each part's figures and
    /// checks.
    Mixed(MixedArgs),
}

impl Scenario {
    /// The flags every scenario shares.
    pub fn common(&self) -> &Common {
        match self {
            Self::Idle(a) => &a.common,
            Self::Fanout(a) => &a.common,
            Self::PgFeed(a) => &a.common,
            Self::Sse(a) => &a.common,
            Self::Terminal(a) => &a.common,
            Self::Rooms(a) => &a.common,
            Self::Multinode(a) => &a.common,
            Self::Flood(a) => &a.common,
            Self::Churn(a) => &a.common,
            Self::Presence(a) => &a.common,
            Self::Mixed(a) => &a.common,
        }
    }

    /// Connections this process opens: WebSocket connections, plus database connections for
    /// pg-feed (one per inserter and one for setup).
    pub fn sockets(&self) -> usize {
        match self {
            Self::Idle(a) => a.spread.conns,
            Self::Fanout(a) => a.spread.conns + usize::from(a.publishers),
            Self::PgFeed(a) => a
                .sessions
                .saturating_mul(a.viewers)
                .saturating_add(a.inserters + 1),
            Self::Sse(a) => a.conns.saturating_add(a.publishers()),
            Self::Terminal(a) => match a.mode {
                TerminalMode::Echo => 1,
                TerminalMode::Output => a.viewers.saturating_add(1),
            },
            Self::Rooms(a) => a.rooms.saturating_mul(a.members).saturating_add(1),
            Self::Multinode(a) => a.spread.conns + usize::from(a.publishers),
            // The flooder reconnects, but holds one socket at a time.
            Self::Flood(a) => a.spread.conns + 2,
            Self::Churn(a) => a.in_flight(),
            Self::Presence(a) => a.topics.saturating_mul(a.watchers + a.trackers),
            // Parts run at once; each checks its own share when it starts.
            Self::Mixed(a) => a.sockets(),
        }
    }
}

/// Flags shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket endpoint(s), comma separated; connections are spread round-robin over them.
    /// `apikey` and `vsn=2.0.0` are appended to the query.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:4000/realtime/v1/websocket"
    )]
    pub url: Vec<String>,

    /// A ready JWT to send as `apikey`; otherwise one is minted from `--jwt-secret`.
    #[arg(long, env = "HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// HS256 secret to mint the `apikey` JWT with (role `authenticated`; `service_role` for
    /// pg-feed).
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Connections being opened or joined at the same time. Keep it below the server's listen
    /// backlog (128 with tokio's `TcpListener::bind`): connects beyond it overflow the SYN queue
    /// and are retried by the kernel only after 1 s, which then dominates connect times.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,

    /// How long to hold (idle), publish (fanout) or insert (pg-feed), e.g. `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Client source addresses, e.g. `127.0.0.1-127.0.0.20` or `127.0.0.2,127.0.0.3`; spreads
    /// connections over more (source address, port) pairs than one address has.
    #[arg(long, value_parser = parse_src_ips)]
    pub src_ips: Option<SrcIps>,

    /// Server process id(s) whose RSS and CPU are read from /proc (summed); repeat or comma list.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Fail (exit code 3) when the scenario's main latency p99 exceeds this many milliseconds
    /// (fanout: publish→receive; pg-feed: insert→receive; idle: join).
    #[arg(long)]
    pub expect_p99: Option<f64>,

    /// Fail (exit code 3) when delivered/expected (fanout, pg-feed) or joined/requested (idle) is
    /// below this ratio, e.g. `1.0`.
    #[arg(long)]
    pub expect_delivered: Option<f64>,

    /// Limit for TCP connect plus WebSocket handshake of one connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Limit for the `phx_join` reply of one connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// Heartbeat period (the server closes connections silent for 60 s).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Runtime worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Progress display: overwritten line on a terminal, plain lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// How many connections a crowd scenario opens and over which topics (idle, fanout).
#[derive(Debug, Clone, Args)]
pub struct Spread {
    /// Connections this process opens (subscribers, for fanout). Split larger runs over several
    /// processes, each with its share.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,

    /// Number of topics the connections are spread over (`realtime:<prefix>-<k>`).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,

    /// Topic name prefix; processes sharing a run must use the same one.
    #[arg(long, default_value = "loadtest")]
    pub topic_prefix: String,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Overwrite one line when stderr is a terminal, print plain lines otherwise.
    Auto,
    /// Always plain lines.
    Plain,
    /// No progress output.
    Off,
}

/// Flags of the `idle` scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,

    /// Connections and topics.
    #[command(flatten)]
    pub spread: Spread,

    /// Longest wait for the server's RSS to stop growing after the last join.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Connections opened (and settled) before the measured ones, so the marginal RSS per
    /// connection leaves out one-off costs (runtime threads, allocator arenas, table growth).
    /// Default: a tenth of `--conns`; 0 measures from the server's state at start.
    #[arg(long)]
    pub warmup: Option<usize>,

    /// Fail (exit code 3) when server RSS growth per joined connection exceeds this many bytes.
    #[arg(long)]
    pub expect_rss_per_conn: Option<f64>,

    /// Fail (exit code 3) when fewer connections than this opened and joined per second.
    #[arg(long)]
    pub expect_rate: Option<f64>,
}

/// Flags of the `fanout` scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,

    /// Subscribers (`--conns`) and their topics.
    #[command(flatten)]
    pub spread: Spread,

    /// Messages per second published, in total over all topics (round-robin).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,

    /// Payload size in bytes (the JSON text `{"t":…,"s":…,"p":"xx…"}`).
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// Publisher connections in this process: 1, or 0 to only subscribe (the publisher then runs
    /// in another process with the same `--rate`, `--duration`, `--topics` and `--topic-prefix`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub publishers: u8,

    /// How long to wait for stragglers after publishing ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Subscriber-only processes (`--publishers 0`): longest wait for the first message.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub start_timeout: Duration,

    /// Broadcast event name.
    #[arg(long, default_value = "lt")]
    pub event: String,

    /// Fail (exit code 3) when the server delivered fewer messages than this per CPU-second.
    #[arg(long)]
    pub expect_per_cpu: Option<f64>,

    /// Add one abusive client while publishing: joins per second it sends, each on a new topic
    /// (the hub allows 10/s per connection). 0: no flooder. See `scenarios/flooder.rs`.
    #[arg(long, default_value_t = 0)]
    pub flood_joins: u64,

    /// The flooder's broadcasts per second on its own topic (the hub allows 1,000/s per
    /// connection). 0: none.
    #[arg(long, default_value_t = 0)]
    pub flood_messages: u64,
}

/// Flags of the `rooms` scenario.
#[derive(Debug, Clone, Args)]
pub struct RoomsArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,

    /// Rooms (topics `realtime:<prefix>-<k>`). One publisher connection joins every room, so at
    /// most the hub's channels per connection (100 by default).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,

    /// Members joined to each room.
    #[arg(long, default_value_t = 100)]
    pub members: usize,

    /// Messages per second published in each room.
    #[arg(long, default_value_t = 10)]
    pub rate: u64,

    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// How long to wait for stragglers after publishing ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Broadcast event name.
    #[arg(long, default_value = "lt")]
    pub event: String,

    /// Topic name prefix.
    #[arg(long, default_value = "rooms")]
    pub topic_prefix: String,

    /// Fail (exit code 3) when the server delivered fewer messages than this per CPU-second.
    #[arg(long)]
    pub expect_per_cpu: Option<f64>,
}

/// Largest `--rooms`: the publisher joins every room on one connection, and the hub allows 100
/// channels per connection by default.
pub const MAX_ROOMS: usize = 100;

impl RoomsArgs {
    /// The `fanout` run this is: members × rooms subscribers over `rooms` topics, the rate
    /// summed over rooms (the publisher goes round-robin, so each room gets `rate`).
    pub fn fanout(&self) -> FanoutArgs {
        let spread = Spread {
            conns: self.rooms * self.members,
            topics: self.rooms,
            topic_prefix: self.topic_prefix.clone(),
        };
        let mut f = FanoutArgs::one_publisher(
            &self.common,
            spread,
            self.rate * self.rooms as u64,
            (self.size, self.grace, &self.event),
        );
        f.expect_per_cpu = self.expect_per_cpu;
        f
    }
}

impl FanoutArgs {
    /// A run with one publisher in this process and no flooder; `payload` is `--size`,
    /// `--grace` and `--event`. The scenarios built on `fanout` (`rooms`, `flood`) start here.
    pub fn one_publisher(
        common: &Common,
        spread: Spread,
        rate: u64,
        payload: (usize, Duration, &str),
    ) -> Self {
        let (size, grace, event) = payload;
        Self {
            common: common.clone(),
            spread,
            rate,
            size,
            publishers: 1,
            grace,
            start_timeout: Duration::from_secs(60),
            event: event.to_owned(),
            expect_per_cpu: None,
            flood_joins: 0,
            flood_messages: 0,
        }
    }
}

/// Flags of the `flood` scenario.
#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// Shared flags; `--duration` is each run's (quiet, then flooded). `--expect-p99` and
    /// `--expect-delivered` apply to the crowd in both runs.
    #[command(flatten)]
    pub common: Common,

    /// The well-behaved crowd (`--conns`, 1,000 in the security issue) and its topics.
    #[command(flatten)]
    pub spread: Spread,

    /// Messages per second published to the crowd, over all its topics.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,

    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// How long to wait for stragglers after publishing ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Broadcast event name.
    #[arg(long, default_value = "lt")]
    pub event: String,

    /// The flooder's joins per second, each on a new topic (the hub allows 10/s).
    #[arg(long, default_value_t = 1000)]
    pub joins: u64,

    /// The flooder's broadcasts per second (the hub allows 1,000/s per connection).
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,

    /// Fail (exit code 3) when the crowd's p99 under the flood is more than this many times
    /// its quiet p99 (the security issue asks for 2).
    #[arg(long)]
    pub expect_ratio: Option<f64>,
}

impl FloodArgs {
    /// One of the two runs: the same crowd and publisher on topics of their own, with the
    /// flooder or without.
    pub fn phase(&self, flooded: bool) -> FanoutArgs {
        let suffix = if flooded { "flooded" } else { "quiet" };
        let spread = Spread {
            conns: self.spread.conns,
            topics: self.spread.topics,
            topic_prefix: format!("{}-{suffix}", self.spread.topic_prefix),
        };
        let mut f = FanoutArgs::one_publisher(
            &self.common,
            spread,
            self.rate,
            (self.size, self.grace, &self.event),
        );
        if flooded {
            f.flood_joins = self.joins;
            f.flood_messages = self.messages;
        }
        f
    }
}

/// Flags of the `churn` scenario.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Shared flags; `--duration` is how long new connections are started. `--expect-p99`
    /// applies to connect+join, `--expect-delivered` to cycles completed / started.
    #[command(flatten)]
    pub common: Common,

    /// Connection cycles started per second (each: connect, join, stay, leave, close). The hub
    /// admits 1,000 new connections per second per client address: spread higher rates over
    /// `--src-ips`.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,

    /// How long each connection stays joined before it leaves.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub stay: Duration,

    /// Topics the cycles join, round-robin (`realtime:<prefix>-<k>`).
    #[arg(long, default_value_t = 10)]
    pub topics: usize,

    /// Topic name prefix.
    #[arg(long, default_value = "churn")]
    pub topic_prefix: String,

    /// Longest wait for the server's RSS to settle after the last cycle.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Fail (exit code 3) when the server's RSS grew by more than this many bytes over the run
    /// (after settling): memory the connections left behind.
    #[arg(long)]
    pub expect_rss_growth: Option<f64>,
}

impl ChurnArgs {
    /// Most cycles that can be open at once: those started within one stay plus the connect
    /// and join timeouts. More than that are skipped (and counted), never queued.
    pub fn in_flight(&self) -> usize {
        let span = self.stay + self.common.connect_timeout + self.common.join_timeout;
        let n = (self.rate as f64 * span.as_secs_f64()).ceil() as usize;
        n.clamp(1, CHURN_MAX_IN_FLIGHT)
    }
}

/// Most churn cycles one process holds open at once (about its open-file limit here).
pub const CHURN_MAX_IN_FLIGHT: usize = 19_000;

/// Flags of the `presence` scenario.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Shared flags; `--duration` is how long the storm lasts. `--expect-p99` applies to
    /// track→diff, `--expect-delivered` to presence changes seen / expected.
    #[command(flatten)]
    pub common: Common,

    /// Topics (`realtime:<prefix>-<k>`), each with its trackers and watchers.
    #[arg(long, default_value_t = 10)]
    pub topics: usize,

    /// Connections per topic that track and untrack in turn, each under its own key.
    #[arg(long, default_value_t = 10)]
    pub trackers: usize,

    /// Connections per topic that only follow the presence state and diffs.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,

    /// Presence changes (a track or an untrack) per second on each topic, spread over its
    /// trackers.
    #[arg(long, default_value_t = 20)]
    pub rate: u64,

    /// Topic name prefix. Default `presence-<pid>`: fresh topics each run.
    #[arg(long)]
    pub topic_prefix: Option<String>,

    /// How long to wait for the last diffs after the storm.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
}

/// Flags of the `mixed` scenario.
#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    /// Shared flags; every part runs for `--duration`, all at once.
    #[command(flatten)]
    pub common: Common,

    /// Rooms part: rooms (0: no rooms part).
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,

    /// Rooms part: members per room.
    #[arg(long, default_value_t = 40)]
    pub members: usize,

    /// Rooms part: messages per second in each room.
    #[arg(long, default_value_t = 5)]
    pub room_rate: u64,

    /// SSE part: chat streams, each read by one `EventSource`-like reader (0: no SSE part).
    #[arg(long, default_value_t = 500)]
    pub streams: usize,

    /// SSE part: tokens per second on each stream.
    #[arg(long, default_value_t = 20)]
    pub token_rate: u64,

    /// Churn part: connection cycles per second (0: no churn part).
    #[arg(long, default_value_t = 100)]
    pub churn_rate: u64,

    /// Presence part: topics, each with 10 trackers and 20 watchers (0: no presence part).
    #[arg(long, default_value_t = 5)]
    pub presence_topics: usize,

    /// Presence part: changes per second on each topic.
    #[arg(long, default_value_t = 10)]
    pub presence_rate: u64,

    /// Terminal part: viewers of one terminal whose host this process plays (0: no terminal
    /// part).
    #[arg(long, default_value_t = 5)]
    pub terminal_viewers: usize,

    /// Terminal part: the host's output rate, MB/s (10^6 bytes), in 4 KiB frames.
    #[arg(long, default_value_t = 1.0)]
    pub terminal_mbps: f64,
}

impl MixedArgs {
    /// Connections of every part together.
    pub fn sockets(&self) -> usize {
        let rooms = self.rooms_part().map_or(0, |r| r.rooms * r.members + 1);
        let sse = self.sse_part().map_or(0, |s| s.conns + s.publishers());
        let churn = self.churn_part().map_or(0, |c| c.in_flight());
        let presence = self
            .presence_part()
            .map_or(0, |p| p.topics * (p.trackers + p.watchers));
        let terminal = self.terminal_part().map_or(0, |t| t.viewers + 1);
        rooms + sse + churn + presence + terminal
    }

    /// Every part's common flags: this run's, without its own progress line (the parts run at
    /// once) and without the thresholds, which each part sets for itself.
    fn part_common(&self) -> Common {
        let mut c = self.common.clone();
        c.progress = ProgressMode::Off;
        c.json = None;
        c.expect_p99 = None;
        c.expect_delivered = None;
        c
    }

    /// The rooms part, unless `--rooms 0`.
    pub fn rooms_part(&self) -> Option<RoomsArgs> {
        (self.rooms > 0 && self.members > 0).then(|| RoomsArgs {
            common: self.part_common(),
            rooms: self.rooms,
            members: self.members,
            rate: self.room_rate,
            size: 100,
            grace: Duration::from_secs(5),
            event: "lt".into(),
            topic_prefix: format!("mixed-{}-rooms", std::process::id()),
            expect_per_cpu: None,
        })
    }

    /// The SSE part, unless `--streams 0`: chat topics, one reader each.
    pub fn sse_part(&self) -> Option<SseArgs> {
        (self.streams > 0).then(|| SseArgs {
            common: self.part_common(),
            mode: SseMode::Topics,
            conns: self.streams,
            topics: Some(self.streams),
            topic_prefix: Some(format!("mixed-{}-sse", std::process::id())),
            kind: SseKind::Chat,
            rate: self.token_rate,
            size: 100,
            publishers: None,
            channels_per_publisher: 100,
            event: "lt".into(),
            auth: crate::sse::Auth::Query,
            grace: Duration::from_secs(5),
            settle: Duration::from_secs(10),
            warmup: None,
            expect_rss_per_conn: None,
            expect_rate: None,
            expect_per_cpu: None,
            expect_duplicates: None,
            expect_in_order: false,
        })
    }

    /// The churn part, unless `--churn-rate 0`.
    pub fn churn_part(&self) -> Option<ChurnArgs> {
        (self.churn_rate > 0).then(|| ChurnArgs {
            common: self.part_common(),
            rate: self.churn_rate,
            stay: Duration::from_secs(1),
            topics: 10,
            topic_prefix: format!("mixed-{}-churn", std::process::id()),
            settle: Duration::ZERO,
            expect_rss_growth: None,
        })
    }

    /// The terminal part, unless `--terminal-viewers 0`: host output to viewers at a set rate.
    pub fn terminal_part(&self) -> Option<TerminalArgs> {
        (self.terminal_viewers > 0).then(|| TerminalArgs {
            common: self.part_common(),
            mode: TerminalMode::Output,
            id: Some(format!("mixed-{}-term", std::process::id())),
            agent: None,
            agent_cmd: DEFAULT_AGENT_CMD.into(),
            ready: DEFAULT_READY.into(),
            ready_timeout: Duration::from_secs(10),
            interval: Duration::ZERO,
            count: 1,
            warmup: 0,
            echo_timeout: Duration::from_secs(2),
            viewers: self.terminal_viewers,
            chunk: 4096,
            host_rate: Some(self.terminal_mbps),
            window: 1 << 20,
            grace: Duration::from_secs(5),
            expect_mbps: None,
        })
    }

    /// The presence part, unless `--presence-topics 0`.
    pub fn presence_part(&self) -> Option<PresenceArgs> {
        (self.presence_topics > 0).then(|| PresenceArgs {
            common: self.part_common(),
            topics: self.presence_topics,
            trackers: 10,
            watchers: 20,
            rate: self.presence_rate,
            topic_prefix: Some(format!("mixed-{}-presence", std::process::id())),
            grace: Duration::from_secs(5),
        })
    }
}

/// Flags of the `pg-feed` scenario.
#[derive(Debug, Clone, Args)]
pub struct PgFeedArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,

    /// The database the hub serves from, e.g. `postgres://postgres@127.0.0.1:5432/hub`. Sessions
    /// are created and rows inserted there; the hub must have applied its migrations to it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Build sessions created for the run; each is one topic `build:<id>`.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,

    /// Viewers (WebSocket connections) joined to each session's topic.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,

    /// Rows inserted per second in total, round-robin over the sessions, each in its own
    /// transaction.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,

    /// Database connections inserting concurrently, each taking the next due row, so one slow
    /// commit does not hold up the schedule.
    #[arg(long, default_value_t = 4)]
    pub inserters: usize,

    /// How long to wait for stragglers after inserting ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Keep the sessions and their events instead of deleting them at the end.
    #[arg(long)]
    pub keep: bool,

    /// Fail (exit code 3) when more duplicate deliveries than this arrived, e.g. `0`.
    #[arg(long)]
    pub expect_duplicates: Option<u64>,
}

/// Flags of the `sse` scenario.
#[derive(Debug, Clone, Args)]
pub struct SseArgs {
    /// Shared flags. `--url` names the hub: its WebSocket endpoint carries the publishers, and
    /// the streams go to `GET /v1/sse/…` on the same host and port.
    #[command(flatten)]
    pub common: Common,

    /// What to measure: `idle` streams (open rate, server RSS per stream), `fanout` (many
    /// streams per topic) or `topics` (one stream per topic).
    #[arg(long, value_enum, default_value_t = SseMode::Fanout)]
    pub mode: SseMode,

    /// Event streams this process opens.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,

    /// Topics the streams are spread over, round-robin. Default: 1, or `--conns` with
    /// `--mode topics` (which needs one topic per stream).
    #[arg(long)]
    pub topics: Option<usize>,

    /// Topic names are `<prefix>-<k>` (rooms) or `chat:<prefix>-<k>`. Default `sse-<pid>`, fresh
    /// topics each run, so a chat reader does not start with an earlier run's snapshot.
    #[arg(long)]
    pub topic_prefix: Option<String>,

    /// Topic kind: `chat` streams `token` events whose payload is exactly `{"text":…}` (the send
    /// stamp rides inside the text, so the hub may merge a slow reader's deltas and every
    /// merged token is still counted and timed); `room` streams `--event` events with the
    /// fanout payload `{"t":…,"s":…,"p":…}`.
    #[arg(long, value_enum, default_value_t = SseKind::Chat)]
    pub kind: SseKind,

    /// Events per second published on each topic.
    #[arg(long, default_value_t = 20)]
    pub rate: u64,

    /// Payload size in bytes (the JSON text).
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// Publisher connections (WebSocket, service role), each publishing for its share of the
    /// topics (round-robin), so each topic has one publisher and one order. Default: enough for
    /// every topic at `--channels-per-publisher` topics each.
    #[arg(long)]
    pub publishers: Option<usize>,

    /// Topics one publisher connection joins: at most the hub's `--max-channels` (100).
    #[arg(long, default_value_t = 100)]
    pub channels_per_publisher: usize,

    /// Event name on room topics (chat topics publish `token`).
    #[arg(long, default_value = "lt")]
    pub event: String,

    /// How streams present their token: `query` (`?access_token=`, as `EventSource` does) or
    /// `header` (`Authorization: Bearer`).
    #[arg(long, value_enum, default_value_t = crate::sse::Auth::Query)]
    pub auth: crate::sse::Auth,

    /// How long to wait for stragglers after publishing ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Idle: longest wait for the server's RSS to stop growing after the last stream opened.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Idle: streams opened (and settled) before the measured ones, so the marginal RSS per
    /// stream leaves out one-off costs. Default: a tenth of `--conns`.
    #[arg(long)]
    pub warmup: Option<usize>,

    /// Idle: fail (exit code 3) when server RSS growth per stream exceeds this many bytes.
    #[arg(long)]
    pub expect_rss_per_conn: Option<f64>,

    /// Idle: fail (exit code 3) when fewer streams than this opened per second.
    #[arg(long)]
    pub expect_rate: Option<f64>,

    /// Fail (exit code 3) when the server delivered fewer events than this per CPU-second.
    #[arg(long)]
    pub expect_per_cpu: Option<f64>,

    /// Fail (exit code 3) when more duplicate deliveries than this arrived, e.g. `0`.
    #[arg(long)]
    pub expect_duplicates: Option<u64>,

    /// Fail (exit code 3) when any stream saw an event id (cursor) that did not increase, or a
    /// token older than one it had already seen.
    #[arg(long)]
    pub expect_in_order: bool,
}

/// Flags of the `terminal` scenario.
#[derive(Debug, Clone, Args)]
pub struct TerminalArgs {
    /// Shared flags. `--url` names the hub: terminals are `GET /v1/terminal/{id}` on its host
    /// and port. The token (minted or `--token`) must be the service role: it hosts, and it may
    /// drive a terminal that is not a build session's.
    #[command(flatten)]
    pub common: Common,

    /// What to measure: `echo` (keystroke→echo round trip through a PTY agent) or `output`
    /// (this process hosts and floods `--viewers` viewers).
    #[arg(long, value_enum, default_value_t = TerminalMode::Echo)]
    pub mode: TerminalMode,

    /// Terminal id. Default `lt-<pid>`: a fresh terminal each run, so no earlier run's
    /// scrollback or driver is in the way.
    #[arg(long)]
    pub id: Option<String>,

    /// Echo: the `hub` binary to start `hub terminal-agent` with, hosting `--agent-cmd` on
    /// `--id` (stopped at the end). Without it an agent must already host `--id`.
    #[arg(long)]
    pub agent: Option<PathBuf>,

    /// Echo: the shell command the started agent runs (`sh -c`). It must echo every byte it
    /// reads, unchanged, and print `--ready` once it does.
    #[arg(long, default_value = DEFAULT_AGENT_CMD)]
    pub agent_cmd: String,

    /// Echo: typing starts once the terminal's output contains this text (the program is then
    /// in raw mode; a key typed earlier would be echoed by the line discipline and again by
    /// the program). Empty: start at once.
    #[arg(long, default_value = DEFAULT_READY)]
    pub ready: String,

    /// Echo: longest wait for the host to connect and print `--ready`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Echo: time between keystrokes; `0ms` types the next key as soon as the last one's echo
    /// arrived (back to back), `30ms` is typing pace.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub interval: Duration,

    /// Echo: measured keystrokes.
    #[arg(long, default_value_t = 5000)]
    pub count: u64,

    /// Echo: keystrokes typed before the measured ones (the first makes this viewer the driver;
    /// all of them warm caches and connections up).
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,

    /// Echo: a keystroke whose echo has not arrived after this long is counted lost.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub echo_timeout: Duration,

    /// Output: viewers reading the terminal.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,

    /// Output: bytes per output frame the host writes (at most the hub's terminal frame limit,
    /// 64 KiB by default).
    #[arg(long, default_value_t = 16 * 1024)]
    pub chunk: usize,

    /// Output: cap on the host's output rate in MB/s (10^6 bytes); default: as fast as the hub
    /// takes it.
    #[arg(long)]
    pub host_rate: Option<f64>,

    /// Output: the host writes only while it is at most this many bytes ahead of the slowest
    /// viewer (0: no limit). The hub does not slow a host down for its viewers: it closes a
    /// viewer whose queue passes `HUB_OUTBOX_BYTES` (4 MiB) as slow, and a resume that far back
    /// is beyond the 256 KiB scrollback. Held below that, the run measures what the hub can
    /// deliver to every viewer; `0` shows what a host faster than its viewers does to them.
    #[arg(long, default_value_t = 1 << 20)]
    pub window: u64,

    /// Output: how long to wait for viewers to catch up after the host stops writing.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Output: fail (exit code 3) when viewers received fewer MB/s (10^6 bytes) than this, in
    /// total.
    #[arg(long)]
    pub expect_mbps: Option<f64>,
}

/// The echo program the `terminal` scenario's agent runs by default: raw mode without the line
/// discipline's echo, so every byte comes back from `cat`, once, unchanged.
pub const DEFAULT_AGENT_CMD: &str = "stty raw -echo && echo lt-ready && exec cat";

/// What [`DEFAULT_AGENT_CMD`] prints once it is in raw mode.
pub const DEFAULT_READY: &str = "lt-ready";

/// Largest `--chunk`: the hub's default terminal frame limit.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Most keystrokes one echo run may type.
pub const MAX_KEYSTROKES: u64 = 1_000_000;

/// Most viewers of one output run (the terminal registry scans its viewers per output frame).
pub const MAX_VIEWERS: usize = 1000;

/// What the `terminal` scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TerminalMode {
    /// Keystroke → echo round trip through the hub and a PTY agent.
    Echo,
    /// Host output to many viewers: throughput and completeness.
    Output,
}

impl SseArgs {
    /// Topics in use: `--topics`, else 1, or one per stream with `--mode topics`.
    pub fn topics(&self) -> usize {
        match (self.topics, self.mode) {
            (Some(t), _) => t,
            (None, SseMode::Topics) => self.conns,
            (None, _) => 1,
        }
    }

    /// Publisher connections: none when idle; `--publishers`, else as few as the topics need.
    pub fn publishers(&self) -> usize {
        if self.mode == SseMode::Idle {
            return 0;
        }
        self.publishers.unwrap_or_else(|| {
            self.topics()
                .div_ceil(self.channels_per_publisher.max(1))
                .max(1)
        })
    }
}

/// What the `sse` scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SseMode {
    /// Open and hold streams; server RSS per stream.
    Idle,
    /// Streams spread over few topics (default one); publish→receive latency and delivery.
    Fanout,
    /// One stream per topic; the same figures with many topics.
    Topics,
}

/// The topic kind the `sse` scenario streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SseKind {
    /// `chat:<prefix>-<k>`, `token` events `{"text":"~<seq>.<ns>|x…"}`.
    Chat,
    /// `<prefix>-<k>`, fanout payloads.
    Room,
}

/// Most concurrent inserting connections (`--inserters`).
pub const MAX_INSERTERS: usize = 64;

/// Client source addresses, used round-robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrcIps(pub Vec<IpAddr>);

/// Most addresses one `--src-ips` value may expand to (a whole /16 of loopback).
const MAX_SRC_IPS: usize = 65_536;

/// Parses `A-B` (an inclusive IPv4 range), `A,B,C`, or a mix (`A-B,C`).
pub fn parse_src_ips(s: &str) -> Result<SrcIps, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi {
                return Err(format!("range {part} runs backwards"));
            }
            if (hi - lo) as usize >= MAX_SRC_IPS || out.len() + ((hi - lo) as usize) >= MAX_SRC_IPS
            {
                return Err(format!("more than {MAX_SRC_IPS} addresses"));
            }
            out.extend((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            let ip: IpAddr = part.parse().map_err(|e| format!("{part:?}: {e}"))?;
            if out.len() >= MAX_SRC_IPS {
                return Err(format!("more than {MAX_SRC_IPS} addresses"));
            }
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(SrcIps(out))
}

/// Parses `1.5s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional unit (ms, s, m, h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("{s:?}: out of range (0 to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks the limits clap cannot express; returns a message naming the flag.
pub fn validate(scenario: &Scenario) -> Result<(), String> {
    let c = scenario.common();
    if c.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if c.url.is_empty() {
        return Err("--url needs at least one endpoint".into());
    }
    if c.heartbeat.is_zero() {
        return Err("--heartbeat must be positive".into());
    }
    if c.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    match scenario {
        Scenario::Idle(a) => validate_spread(&a.spread, false),
        Scenario::Fanout(f) => validate_fanout(f),
        Scenario::PgFeed(p) => validate_pg_feed(p),
        Scenario::Sse(a) => validate_sse(a),
        Scenario::Terminal(a) => validate_terminal(a),
        Scenario::Rooms(a) => validate_rooms(a),
        Scenario::Multinode(f) => {
            if f.common.url.len() < 2 {
                return Err("multinode needs two or more --url endpoints (comma separated)".into());
            }
            validate_fanout(f)
        }
        Scenario::Flood(a) => {
            if a.joins == 0 && a.messages == 0 {
                return Err("--joins and --messages cannot both be 0: nothing would flood".into());
            }
            if a.expect_ratio.is_some_and(|r| r.is_nan() || r <= 0.0) {
                return Err("--expect-ratio must be positive".into());
            }
            validate_fanout(&a.phase(true))
        }
        Scenario::Churn(a) => validate_churn(a),
        Scenario::Presence(a) => validate_presence(a),
        Scenario::Mixed(a) => validate_mixed(a),
    }
}

fn validate_rooms(a: &RoomsArgs) -> Result<(), String> {
    if a.rooms == 0 || a.members == 0 {
        return Err("--rooms and --members must be at least 1".into());
    }
    if a.rooms > MAX_ROOMS {
        return Err(format!(
            "--rooms is at most {MAX_ROOMS}: one publisher joins every room, and the hub allows \
             {MAX_ROOMS} channels per connection (run several processes with their own \
             --topic-prefix for more)"
        ));
    }
    validate_fanout(&a.fanout())
}

fn validate_churn(a: &ChurnArgs) -> Result<(), String> {
    if a.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    if a.topics == 0 {
        return Err("--topics must be at least 1".into());
    }
    if messages_total(a.rate, a.common.duration) > MAX_CONNS as u64 * 10 {
        return Err(format!(
            "--rate × --duration is at most {} cycles per run",
            MAX_CONNS * 10
        ));
    }
    Ok(())
}

fn validate_presence(a: &PresenceArgs) -> Result<(), String> {
    if a.topics == 0 || a.trackers == 0 || a.watchers == 0 {
        return Err("--topics, --trackers and --watchers must be at least 1".into());
    }
    if a.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    if a.topics.saturating_mul(a.trackers + a.watchers) > MAX_CONNS {
        return Err(format!("at most {MAX_CONNS} connections per process"));
    }
    if messages_total(a.rate, a.common.duration).saturating_mul(a.topics as u64) > MAX_MESSAGES {
        return Err(format!(
            "--rate × --duration × --topics is at most {MAX_MESSAGES} presence changes"
        ));
    }
    Ok(())
}

fn validate_mixed(a: &MixedArgs) -> Result<(), String> {
    let mut parts = 0;
    if let Some(r) = a.rooms_part() {
        validate_rooms(&r).map_err(|e| format!("rooms part: {e}"))?;
        parts += 1;
    }
    if let Some(s) = a.sse_part() {
        validate_sse(&s).map_err(|e| format!("sse part: {e}"))?;
        parts += 1;
    }
    if let Some(c) = a.churn_part() {
        validate_churn(&c).map_err(|e| format!("churn part: {e}"))?;
        parts += 1;
    }
    if let Some(p) = a.presence_part() {
        validate_presence(&p).map_err(|e| format!("presence part: {e}"))?;
        parts += 1;
    }
    if let Some(t) = a.terminal_part() {
        validate_terminal(&t).map_err(|e| format!("terminal part: {e}"))?;
        parts += 1;
    }
    if parts == 0 {
        return Err("every part is switched off: nothing to run".into());
    }
    Ok(())
}

/// `--conns` and `--topics`; `--conns 0` only when this process publishes.
fn validate_spread(s: &Spread, publishes: bool) -> Result<(), String> {
    if s.conns == 0 && !publishes {
        return Err("--conns must be at least 1".into());
    }
    if s.conns > MAX_CONNS {
        return Err(format!("--conns is at most {MAX_CONNS} per process"));
    }
    if s.topics == 0 || s.topics > s.conns.max(1) {
        return Err("--topics must be between 1 and --conns".into());
    }
    Ok(())
}

fn validate_fanout(f: &FanoutArgs) -> Result<(), String> {
    let s = &f.spread;
    validate_spread(s, f.publishers > 0)?;
    if f.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    let total = messages_total(f.rate, f.common.duration);
    if total > MAX_MESSAGES {
        return Err(format!(
            "--rate × --duration is {total} messages; at most {MAX_MESSAGES} per run"
        ));
    }
    if f.size > MAX_SIZE {
        return Err(format!("--size is at most {MAX_SIZE} bytes"));
    }
    if f.event.is_empty() || f.event.len() > 255 {
        return Err("--event must be 1 to 255 bytes".into());
    }
    // Each subscriber keeps one bit per message of its topic to find duplicates.
    let bytes = seen_bytes(total, s.topics, s.conns);
    if bytes > MAX_SEEN_BYTES {
        return Err(format!(
            "--conns × --rate × --duration / --topics needs {} MiB of duplicate-tracking bits; \
             at most {} MiB per process (split the run or shorten it)",
            bytes >> 20,
            MAX_SEEN_BYTES >> 20
        ));
    }
    Ok(())
}

fn validate_pg_feed(p: &PgFeedArgs) -> Result<(), String> {
    if p.sessions == 0 || p.viewers == 0 {
        return Err("--sessions and --viewers must be at least 1".into());
    }
    let conns = p.sessions.saturating_mul(p.viewers);
    if conns > MAX_CONNS {
        return Err(format!(
            "--sessions × --viewers is at most {MAX_CONNS} connections per process"
        ));
    }
    if p.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    let total = messages_total(p.rate, p.common.duration);
    if total > MAX_MESSAGES {
        return Err(format!(
            "--rate × --duration is {total} rows; at most {MAX_MESSAGES} per run"
        ));
    }
    if p.inserters == 0 || p.inserters > MAX_INSERTERS {
        return Err(format!("--inserters must be between 1 and {MAX_INSERTERS}"));
    }
    let bytes = seen_bytes(total, p.sessions, conns);
    if bytes > MAX_SEEN_BYTES {
        return Err(format!(
            "--sessions × --viewers × --rate × --duration / --sessions needs {} MiB of \
             duplicate-tracking bits; at most {} MiB per process",
            bytes >> 20,
            MAX_SEEN_BYTES >> 20
        ));
    }
    Ok(())
}

fn validate_sse(a: &SseArgs) -> Result<(), String> {
    if a.conns == 0 || a.conns > MAX_CONNS {
        return Err(format!("--conns must be between 1 and {MAX_CONNS}"));
    }
    let topics = a.topics();
    if topics == 0 || topics > a.conns {
        return Err("--topics must be between 1 and --conns".into());
    }
    if a.mode == SseMode::Topics && topics != a.conns {
        return Err("--mode topics opens one stream per topic: leave --topics out".into());
    }
    if let Some(p) = &a.topic_prefix {
        // `chat:` + prefix + `-<k>` must stay a valid topic (at most 246 bytes of name).
        if p.is_empty() || p.len() > 200 {
            return Err("--topic-prefix must be 1 to 200 bytes".into());
        }
    }
    if a.mode == SseMode::Idle {
        return Ok(());
    }
    if a.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    let per_topic = messages_total(a.rate, a.common.duration);
    let total = per_topic.saturating_mul(topics as u64);
    if total > MAX_MESSAGES {
        return Err(format!(
            "--rate × --topics × --duration is {total} events; at most {MAX_MESSAGES} per run"
        ));
    }
    if a.size > MAX_SIZE {
        return Err(format!("--size is at most {MAX_SIZE} bytes"));
    }
    if a.event.is_empty() || a.event.len() > 255 {
        return Err("--event must be 1 to 255 bytes".into());
    }
    if a.channels_per_publisher == 0 {
        return Err("--channels-per-publisher must be at least 1".into());
    }
    let needed = topics.div_ceil(a.channels_per_publisher);
    let p = a.publishers();
    if p < needed || p > topics {
        return Err(format!(
            "--publishers must be between {needed} (--topics / --channels-per-publisher) and \
             --topics ({topics}): each topic has exactly one publisher"
        ));
    }
    let bytes = seen_bytes(total, topics, a.conns);
    if bytes > MAX_SEEN_BYTES {
        return Err(format!(
            "--conns × --rate × --duration needs {} MiB of duplicate-tracking bits; at most {} \
             MiB per process",
            bytes >> 20,
            MAX_SEEN_BYTES >> 20
        ));
    }
    Ok(())
}

fn validate_terminal(a: &TerminalArgs) -> Result<(), String> {
    if let Some(id) = &a.id {
        // The hub takes 1 to 200 bytes; the id also goes into a URL path unescaped.
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
        if id.is_empty() || id.len() > 200 || !id.chars().all(ok) {
            return Err("--id must be 1 to 200 letters, digits, '-', '_', '.' or ':'".into());
        }
    }
    match a.mode {
        TerminalMode::Echo => {
            if a.count == 0 || a.count.saturating_add(a.warmup) > MAX_KEYSTROKES {
                return Err(format!(
                    "--count must be at least 1 and --count + --warmup at most {MAX_KEYSTROKES}"
                ));
            }
            if a.echo_timeout.is_zero() {
                return Err("--echo-timeout must be positive".into());
            }
        }
        TerminalMode::Output => {
            if a.viewers == 0 || a.viewers > MAX_VIEWERS {
                return Err(format!("--viewers must be between 1 and {MAX_VIEWERS}"));
            }
            if a.chunk == 0 || a.chunk > MAX_CHUNK {
                return Err(format!("--chunk must be between 1 and {MAX_CHUNK} bytes"));
            }
            if a.host_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err("--host-rate must be a positive number of MB/s".into());
            }
            if a.common.duration.is_zero() {
                return Err("--duration must be positive".into());
            }
        }
    }
    Ok(())
}

/// Bytes of "seen" bits when `conns` receivers share `total` messages spread over `topics`.
fn seen_bytes(total: u64, topics: usize, conns: usize) -> u64 {
    let bits_per_conn = total.div_ceil(topics.max(1) as u64);
    bits_per_conn.div_ceil(8).saturating_mul(conns as u64)
}

/// Messages a publisher sends in a run: `rate × duration`, rounded down.
pub fn messages_total(rate: u64, duration: Duration) -> u64 {
    (rate as f64 * duration.as_secs_f64()).floor() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges_expand_inclusively() {
        let ips = parse_src_ips("127.0.0.1-127.0.0.3").unwrap().0;
        assert_eq!(
            ips,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        let ips = parse_src_ips("127.0.0.250-127.0.1.1").unwrap().0;
        assert_eq!(ips.len(), 8, "ranges cross octet boundaries");
    }

    #[test]
    fn ip_lists_and_mixes() {
        let ips = parse_src_ips("127.0.0.5, 127.0.0.7-127.0.0.8,::1")
            .unwrap()
            .0;
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], "::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_src_ips("127.0.0.9").unwrap().0.len(), 1);
    }

    #[test]
    fn bad_ip_lists_are_refused() {
        for bad in [
            "",
            ",",
            "127.0.0.3-127.0.0.1",
            "127.0.0.x",
            "127.0.0.1-",
            "10.0.0.0-10.255.255.255",
        ] {
            assert!(parse_src_ips(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "10x", "-1s", "100h", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_parses_a_fanout_run() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "fanout",
            "--conns",
            "1000",
            "--rate",
            "1000",
            "--size",
            "100",
            "--duration",
            "10s",
            "--src-ips",
            "127.0.0.1-127.0.0.20",
            "--server-pid",
            "12,13",
            "--url",
            "ws://127.0.0.1:4000/realtime/v1/websocket,ws://127.0.0.1:4001/realtime/v1/websocket",
            "--expect-p99",
            "50",
        ])
        .unwrap();
        let Scenario::Fanout(f) = &cli.scenario else {
            panic!("fanout expected");
        };
        assert_eq!(f.spread.conns, 1000);
        assert_eq!(f.common.url.len(), 2);
        assert_eq!(f.common.server_pid, vec![12, 13]);
        assert_eq!(f.common.src_ips.as_ref().unwrap().0.len(), 20);
        assert_eq!(f.common.expect_p99, Some(50.0));
        assert!(validate(&cli.scenario).is_ok());
    }

    #[test]
    fn validation_bounds_the_run() {
        let parse = |args: &[&str]| {
            let mut all = vec!["loadtest"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().scenario
        };
        assert!(validate(&parse(&["idle", "--conns", "0"])).is_err());
        assert!(validate(&parse(&["idle", "--conns", "10", "--topics", "11"])).is_err());
        assert!(validate(&parse(&["fanout", "--rate", "1000000", "--duration", "1h"])).is_err());
        assert!(validate(&parse(&["fanout", "--size", "2000000"])).is_err());
        assert!(validate(&parse(&["fanout", "--conns", "0"])).is_ok());
        assert!(Cli::try_parse_from(["loadtest", "fanout", "--publishers", "2"]).is_err());
    }

    #[test]
    fn cli_parses_a_pg_feed_run() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "pg-feed",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/lt",
            "--sessions",
            "100",
            "--viewers",
            "10",
            "--rate",
            "1000",
            "--inserters",
            "4",
            "--duration",
            "10s",
            "--expect-p99",
            "3",
            "--expect-duplicates",
            "0",
            "--keep",
        ])
        .unwrap();
        let Scenario::PgFeed(p) = &cli.scenario else {
            panic!("pg-feed expected");
        };
        assert_eq!(
            (p.sessions, p.viewers, p.rate, p.inserters),
            (100, 10, 1000, 4)
        );
        assert_eq!(p.expect_duplicates, Some(0));
        assert!(p.keep);
        assert_eq!(cli.scenario.sockets(), 1000 + 4 + 1);
        assert!(validate(&cli.scenario).is_ok());
        // The crowd flags of idle and fanout do not apply here.
        assert!(
            Cli::try_parse_from(["loadtest", "pg-feed", "--database-url", "x", "--conns", "5"])
                .is_err()
        );
    }

    #[test]
    fn pg_feed_validation_bounds_the_run() {
        let parse = |args: &[&str]| {
            let mut all = vec!["loadtest", "pg-feed", "--database-url", "postgres://h/db"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().scenario
        };
        assert!(validate(&parse(&[])).is_ok());
        assert!(validate(&parse(&["--sessions", "0"])).is_err());
        assert!(validate(&parse(&["--viewers", "0"])).is_err());
        assert!(validate(&parse(&["--rate", "0"])).is_err());
        assert!(validate(&parse(&["--inserters", "0"])).is_err());
        assert!(validate(&parse(&["--inserters", "65"])).is_err());
        assert!(validate(&parse(&["--sessions", "2000", "--viewers", "1000"])).is_err());
        assert!(validate(&parse(&["--rate", "100000", "--duration", "1h"])).is_err());
    }

    #[test]
    fn sse_defaults_and_bounds() {
        let parse = |args: &[&str]| {
            let mut all = vec!["loadtest", "sse"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().scenario
        };
        let sc = parse(&["--mode", "topics", "--conns", "5000", "--rate", "20"]);
        let Scenario::Sse(a) = &sc else {
            panic!("sse expected")
        };
        assert_eq!((a.topics(), a.publishers()), (5000, 50));
        assert_eq!(sc.sockets(), 5050);
        assert!(validate(&sc).is_ok());
        let sc = parse(&["--mode", "idle", "--conns", "5000"]);
        let Scenario::Sse(a) = &sc else {
            panic!("sse expected")
        };
        assert_eq!((a.topics(), a.publishers()), (1, 0));
        assert!(validate(&sc).is_ok());
        let sc = parse(&["--conns", "1000", "--rate", "50", "--kind", "room"]);
        let Scenario::Sse(a) = &sc else {
            panic!("sse expected")
        };
        assert_eq!((a.topics(), a.publishers(), a.kind), (1, 1, SseKind::Room));
        assert!(validate(&sc).is_ok());

        for bad in [
            &["--conns", "0"][..],
            &["--topics", "101"],
            &["--mode", "topics", "--topics", "5"],
            &["--rate", "0"],
            &["--topics", "100", "--publishers", "101"],
            &["--conns", "500", "--topics", "500", "--publishers", "4"],
            &["--channels-per-publisher", "0"],
            &[
                "--conns",
                "5000",
                "--topics",
                "5000",
                "--rate",
                "1000",
                "--duration",
                "60s",
            ],
            &["--topic-prefix", ""],
        ] {
            assert!(validate(&parse(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn terminal_defaults_and_bounds() {
        let parse = |args: &[&str]| {
            let mut all = vec!["loadtest", "terminal"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().scenario
        };
        let sc = parse(&[]);
        let Scenario::Terminal(a) = &sc else {
            panic!("terminal expected")
        };
        assert_eq!(
            (a.mode, a.count, a.interval),
            (TerminalMode::Echo, 5000, Duration::ZERO)
        );
        assert_eq!(a.agent_cmd, DEFAULT_AGENT_CMD);
        assert_eq!(sc.sockets(), 1);
        assert!(validate(&sc).is_ok());
        let sc = parse(&["--mode", "output", "--viewers", "10", "--chunk", "16384"]);
        assert_eq!(sc.sockets(), 11);
        assert!(validate(&sc).is_ok());
        for bad in [
            &["--count", "0"][..],
            &["--count", "2000000"],
            &["--echo-timeout", "0s"],
            &["--id", ""],
            &["--id", "a/b"],
            &["--mode", "output", "--viewers", "0"],
            &["--mode", "output", "--chunk", "65537"],
            &["--mode", "output", "--host-rate", "0"],
            &["--mode", "output", "--duration", "0s"],
        ] {
            assert!(validate(&parse(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn totals_round_down() {
        assert_eq!(messages_total(1000, Duration::from_secs(10)), 10_000);
        assert_eq!(messages_total(3, Duration::from_millis(500)), 1);
    }
}
