//! The scenarios and what they share.
//!
//! A scenario is one file with `async fn run(&Args, Arc<Ctx>) -> Result<Report>`: it opens a
//! [`crowd`] of connections, drives the run, and fills a [`Report`]. Adding one means a file
//! here, a variant in [`crate::args::Scenario`] and an arm in [`run`]. The building blocks
//! beside the scenarios: [`crowd`] (many connections, bounded opening; WebSocket members or
//! any other kind of task, such as [`sse`]'s event-stream readers), [`publisher`] (paced
//! kind-3 broadcasts), [`inserter`] (paced rows inserted into Postgres), [`subscriber`]
//! (latency, duplicates and order per connection), [`Window`] (the measured stretch of a run).
//! [`terminal`] stands apart: a handful of terminal connections (and a PTY agent) timed one
//! keystroke or one output frame at a time.

pub mod churn;
pub mod crowd;
pub mod fanout;
pub mod flood;
pub mod flooder;
pub mod idle;
pub mod inserter;
pub mod mixed;
pub mod pg_feed;
pub mod presence;
pub mod publisher;
pub mod rooms;
pub mod sse;
pub mod subscriber;
pub mod terminal;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::args::{Common, FanoutArgs, IdleArgs, Scenario};
use crate::live::Live;
use crate::proc::{self, Procs, Sample};
use crate::report::{Num, Report};
use crate::session::Dial;
use crate::target::Target;
use crate::{clock, token};

/// File descriptors a process needs beyond its connections (stdio, epoll, /proc reads, slack).
const FD_RESERVE: u64 = 64;

/// How often delivery progress is checked while waiting for stragglers.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// What every connection task of a run shares.
#[derive(Debug)]
pub struct Ctx {
    /// The flags shared by all scenarios.
    pub common: Common,
    /// Endpoints, used round-robin.
    pub targets: Vec<Target>,
    /// Source addresses, used round-robin (empty: let the kernel choose).
    pub src_ips: Vec<IpAddr>,
    /// Live counters for progress and end-of-phase waits.
    pub live: Arc<Live>,
    /// Tells every connection to close; fired at the end of a run or on Ctrl-C.
    pub stop: CancellationToken,
    /// Fired by Ctrl-C only; `stop` is its child, and so is the `stop` of every [`Ctx::part`],
    /// so a scenario made of several runs (`flood`, `mixed`) is interrupted whichever is going.
    interrupt: CancellationToken,
    /// Set when Ctrl-C cut the run short, so the report says so.
    pub interrupted: AtomicBool,
    /// The server processes, when `--server-pid` was given.
    pub server: Option<Procs>,
    /// This process, for the client's own CPU use.
    pub own: Option<Procs>,
    /// Distinguishes this process's masking-key seeds from other loadtest processes'.
    seed_base: u64,
}

impl Ctx {
    /// Resolves endpoints, mints (with `role`) or takes the token and checks that `conns`
    /// connections (WebSocket and database) fit the open-file limit.
    pub fn new(common: &Common, conns: usize, role: &str) -> anyhow::Result<Arc<Self>> {
        Self::build(common, conns, role, CancellationToken::new())
    }

    /// A context for one part of a scenario made of several runs (`mixed`'s parts at once,
    /// `flood`'s second run after the first stopped): its own flags, role, counters and stop
    /// signal, interrupted by the same Ctrl-C as this one.
    pub fn part(&self, common: &Common, conns: usize, role: &str) -> anyhow::Result<Arc<Self>> {
        Self::build(common, conns, role, self.interrupt.clone())
    }

    fn build(
        common: &Common,
        conns: usize,
        role: &str,
        interrupt: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let token = match (&common.token, &common.jwt_secret) {
            (Some(t), _) => t.clone(),
            (None, Some(secret)) => token::mint(
                secret.as_bytes(),
                role,
                // No `sub`: the load's clients share one key, as a project's browsers share its
                // anon key, so the hub's per-user limits (connections, messages) do not apply
                // to a crowd that stands for many users.
                "",
                clock::unix_secs(),
                common.duration.as_secs() + 600,
            )?,
            (None, None) => {
                bail!("no credentials: pass --token or --jwt-secret (or HUB_JWT_SECRET)")
            }
        };
        let targets = common
            .url
            .iter()
            .map(|u| Target::parse(u, &token))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let needed = conns as u64 + FD_RESERVE;
        if let Some(limit) = proc::open_files_limit() {
            if needed > limit {
                bail!(
                    "{conns} connections need about {needed} open files but this process may open \
                     {limit}; split the run over several loadtest processes (each with its share \
                     of --conns) or raise `ulimit -n`"
                );
            }
        }
        let server = if common.server_pid.is_empty() {
            None
        } else {
            Some(Procs::new(common.server_pid.clone()).context("--server-pid")?)
        };
        Ok(Arc::new(Self {
            common: common.clone(),
            targets,
            src_ips: common
                .src_ips
                .as_ref()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            live: Arc::new(Live::default()),
            stop: interrupt.child_token(),
            interrupt,
            interrupted: AtomicBool::new(false),
            server,
            own: Procs::own().ok(),
            seed_base: clock::now_ns() ^ (u64::from(std::process::id()) << 32),
        }))
    }

    /// Whether Ctrl-C was pressed.
    pub fn is_interrupted(&self) -> bool {
        self.interrupt.is_cancelled()
    }

    /// How connection number `index` dials: endpoints and source addresses round-robin.
    pub fn dial(&self, index: usize, read_buf: usize) -> Dial<'_> {
        let src = (!self.src_ips.is_empty()).then(|| self.src_ips[index % self.src_ips.len()]);
        Dial {
            target: &self.targets[index % self.targets.len()],
            src,
            connect_timeout: self.common.connect_timeout,
            join_timeout: self.common.join_timeout,
            read_buf,
            seed: self
                .seed_base
                .wrapping_add((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// The server's figures now, if watched (a vanished process reads as not measured).
    pub fn server_sample(&self) -> Option<Sample> {
        self.server.as_ref().and_then(|p| p.sample().ok())
    }

    /// This process's figures now.
    pub fn own_sample(&self) -> Option<Sample> {
        self.own.as_ref().and_then(|p| p.sample().ok())
    }

    /// Sleeps for `d` unless the run is stopped first; returns false when stopped.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// Runs one scenario to its end (or Ctrl-C) and returns its report.
pub async fn run(scenario: Scenario) -> anyhow::Result<Report> {
    clock::init();
    let role = match &scenario {
        // sse: the publishers' role (chat topics take `token` events from the service role
        // only); its streams mint their own ordinary-user token.
        // terminal: the host's role, which may also drive any terminal.
        Scenario::PgFeed(_) | Scenario::Sse(_) | Scenario::Terminal(_) => token::SERVICE_ROLE,
        // mixed: each part mints its own (see `mixed.rs`); this one is only for the checks.
        Scenario::Idle(_)
        | Scenario::Fanout(_)
        | Scenario::Rooms(_)
        | Scenario::Multinode(_)
        | Scenario::Flood(_)
        | Scenario::Churn(_)
        | Scenario::Presence(_)
        | Scenario::Mixed(_) => token::AUTHENTICATED,
    };
    let ctx = Ctx::new(scenario.common(), scenario.sockets(), role)?;
    let on_signal = ctx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: closing connections and reporting what was measured");
            on_signal.interrupted.store(true, Ordering::Relaxed);
            on_signal.interrupt.cancel();
        }
    });
    let mut report = match &scenario {
        Scenario::Idle(a) => idle::run(a, ctx.clone()).await?,
        Scenario::Fanout(a) => fanout::run(a, ctx.clone()).await?,
        Scenario::PgFeed(a) => pg_feed::run(a, ctx.clone()).await?,
        Scenario::Sse(a) => sse::run(a, ctx.clone()).await?,
        Scenario::Terminal(a) => terminal::run(a, ctx.clone()).await?,
        Scenario::Rooms(a) => rooms::run(a, ctx.clone()).await?,
        Scenario::Multinode(a) => {
            let mut r = fanout::run(a, ctx.clone()).await?;
            r.set_scenario("multinode");
            r
        }
        Scenario::Flood(a) => flood::run(a, ctx.clone()).await?,
        Scenario::Churn(a) => churn::run(a, ctx.clone()).await?,
        Scenario::Presence(a) => presence::run(a, ctx.clone()).await?,
        Scenario::Mixed(a) => mixed::run(a, ctx.clone()).await?,
    };
    if let Scenario::Idle(IdleArgs { spread, .. })
    | Scenario::Fanout(FanoutArgs { spread, .. })
    | Scenario::Multinode(FanoutArgs { spread, .. }) = &scenario
    {
        report.param("conns", spread.conns);
        report.param("topics", spread.topics);
        report.param("topic_prefix", spread.topic_prefix.clone());
    }
    add_common(&mut report, &ctx);
    Ok(report)
}

/// Parameters every report carries.
fn add_common(report: &mut Report, ctx: &Ctx) {
    let c = &ctx.common;
    report.param("urls", c.url.clone());
    report.param("concurrency", c.concurrency);
    report.param("duration_s", c.duration.as_secs_f64());
    report.param("src_ips", ctx.src_ips.len());
    report.param("server_pids", c.server_pid.clone());
    report.param("pid", std::process::id());
    if ctx.interrupted.load(Ordering::Relaxed) {
        report.set_interrupted();
    }
}

/// RSS difference in bytes (may be negative when the server returned memory).
pub fn rss_delta(before: Option<Sample>, after: Option<Sample>) -> Num {
    match (before, after) {
        (Some(b), Some(a)) => Num::Float(a.rss as f64 - b.rss as f64),
        _ => Num::Missing,
    }
}

/// CPU seconds between two samples.
pub fn cpu_delta(before: Option<Sample>, after: Option<Sample>) -> Num {
    match (before, after) {
        (Some(b), Some(a)) => Num::Float(a.cpu.saturating_sub(b.cpu).as_secs_f64()),
        _ => Num::Missing,
    }
}

/// An RSS sample as a figure.
pub fn rss(sample: Option<Sample>) -> Num {
    sample.map_or(Num::Missing, |s| Num::Int(s.rss))
}

/// Waits until the live delivery counter reaches `expected` or `deadline` passes (or the run is
/// stopped); returns when it stopped waiting.
pub async fn drain(ctx: &Ctx, expected: u64, deadline: Instant) -> Instant {
    loop {
        let now = Instant::now();
        if Live::get(&ctx.live.delivered) >= expected || now >= deadline || ctx.stop.is_cancelled()
        {
            return now;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Times and samples bracketing the measured stretch of a run (first message due to the last
/// delivery or the end of the grace period).
#[derive(Debug, Default)]
pub struct Window {
    /// First message due (or, without a local publisher, first message received).
    pub start: Option<Instant>,
    /// Last message written (or start plus `--duration`).
    pub publish_end: Option<Instant>,
    /// Every expected delivery arrived, or the grace period ran out.
    pub drain_end: Option<Instant>,
    /// `start` on [`clock`], to compare with the receivers' receive times.
    pub start_ns: Option<u64>,
    /// Server figures at those moments.
    pub cpu_start: Option<Sample>,
    /// Server figures when publishing ended.
    pub cpu_publish_end: Option<Sample>,
    /// Server figures when draining ended.
    pub cpu_end: Option<Sample>,
    /// Our own figures and the whole machine's busy time at start and end.
    own_start: Option<Sample>,
    own_end: Option<Sample>,
    machine_start: Option<Duration>,
    machine_end: Option<Duration>,
}

impl Window {
    /// Samples the server, this process and the machine at the start.
    pub fn mark_start(&mut self, ctx: &Ctx) {
        self.cpu_start = ctx.server_sample();
        self.own_start = ctx.own_sample();
        self.machine_start = proc::machine_busy();
    }

    /// Samples them again at the end.
    pub fn mark_end(&mut self, ctx: &Ctx) {
        self.cpu_end = ctx.server_sample();
        self.own_end = ctx.own_sample();
        self.machine_end = proc::machine_busy();
    }

    /// Server CPU seconds over the window.
    pub fn server_cpu(&self) -> Num {
        cpu_delta(self.cpu_start, self.cpu_end)
    }

    /// This process's CPU seconds over the window.
    pub fn own_cpu(&self) -> Num {
        cpu_delta(self.own_start, self.own_end)
    }

    /// From start to the end of draining, seconds.
    pub fn drain_s(&self) -> Option<f64> {
        match (self.start, self.drain_end) {
            (Some(s), Some(e)) => Some(e.saturating_duration_since(s).as_secs_f64()),
            _ => None,
        }
    }

    /// The delivery figures every publish-and-receive scenario reports: `unique` deliveries,
    /// the last received at `last_rx_ns` (on [`clock`]), counted in `units` (per second, per
    /// CPU-second: `("msgs/s", "msgs/cpu-s")`). Returns deliveries per server CPU-second.
    pub fn report_delivery(
        &self,
        r: &mut Report,
        unique: u64,
        last_rx_ns: u64,
        units: (&'static str, &'static str),
    ) -> Num {
        let delivery_s = match self.start_ns {
            Some(s) if last_rx_ns > s => Some((last_rx_ns - s) as f64 / 1e9),
            _ => None,
        };
        r.figure(
            "delivery_s",
            "first publish to last delivery",
            delivery_s.map_or(Num::Missing, Num::Float),
            "s",
        );
        r.figure(
            "deliveries_per_s",
            "deliveries per second",
            delivery_s.map_or(Num::Missing, |d| Num::float(unique as f64 / d)),
            units.0,
        );
        let cpu = self.server_cpu();
        r.figure("server_cpu_s", "server CPU, publish to drain", cpu, "s");
        r.figure(
            "server_cpu_pct",
            "server CPU utilisation then",
            match (cpu.as_f64(), self.drain_s()) {
                (Some(c), Some(d)) => Num::float(c / d * 100.0),
                _ => Num::Missing,
            },
            "%",
        );
        r.figure(
            "server_cpu_publish_s",
            "server CPU while publishing",
            cpu_delta(self.cpu_start, self.cpu_publish_end),
            "s",
        );
        let per_cpu = cpu
            .as_f64()
            .map_or(Num::Missing, |c| Num::float(unique as f64 / c));
        r.figure(
            "deliveries_per_cpu_s",
            "deliveries per server CPU-second",
            per_cpu,
            units.1,
        );
        r.figure(
            "client_cpu_window_s",
            "loadtest CPU, publish to drain",
            self.own_cpu(),
            "s",
        );
        r.figure(
            "other_cpu_s",
            "other processes' CPU then",
            self.other_cpu(),
            "s",
        );
        per_cpu
    }

    /// CPU seconds other processes used during the window: the machine's busy time minus the
    /// server's and ours. Large values mean the figures were taken on a busy machine (or, for
    /// pg-feed, include the database's work).
    pub fn other_cpu(&self) -> Num {
        let (Some(a), Some(b)) = (self.machine_start, self.machine_end) else {
            return Num::Missing;
        };
        let machine = b.saturating_sub(a).as_secs_f64();
        match (self.server_cpu().as_f64(), self.own_cpu().as_f64()) {
            (Some(server), Some(own)) => Num::Float((machine - server - own).max(0.0)),
            _ => Num::Missing,
        }
    }
}
