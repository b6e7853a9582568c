//! `sse`: `--conns` server-sent event streams (`GET /v1/sse/{topic}`, see [`crate::sse`]).
//!
//! Three modes:
//! - `idle`: open the streams (spread over `--src-ips`), wait until each has its `200` and the
//!   `retry:` preamble (the hub answers only once the reader has joined), measure the server's
//!   RSS growth per stream as [`super::idle`] does (a warm-up crowd first, then the marginal
//!   growth of the rest, after the RSS settles), hold for `--duration`, close.
//! - `fanout`: streams spread over `--topics` (default one), `--rate` events per second on each
//!   topic for `--duration`; delivered/expected, duplicates, order, publish→receive latency,
//!   deliveries per server CPU-second.
//! - `topics`: the same with one stream per topic (`--topics` = `--conns`).
//!
//! Publishing goes through WebSocket publishers, as in [`super::fanout`]: service-role
//! connections (chat topics only take `token` events from the service role) sending kind-3
//! binary broadcasts, paced by [`super::publisher`]. One connection may join at most the hub's
//! `--max-channels` topics (100 by default, `channels/src/session.rs`), so the topics are dealt
//! round-robin to `ceil(topics / --channels-per-publisher)` connections (50 for 5,000 topics),
//! each publishing `--rate` × its topics per second. Each topic has exactly one publisher, so
//! its order is that publisher's order. The REST broadcast endpoint would do as well for few
//! topics but costs an HTTP request per message (or per batch) and a JSON parse on both sides,
//! which at 100k events/s on two shared cores is load the run is not meant to measure.
//!
//! Payloads carry the send time and the per-topic sequence number. Room topics use fanout's
//! `{"t":…,"s":…,"p":…}`. Chat `token` payloads must be exactly `{"text":…}` for the hub to
//! merge a slow reader's queued deltas into one event, so the stamp rides inside the text
//! (`~<seq>.<ns>|xxx…`, [`crate::payload::build_text`]); a merged event's text is the
//! concatenation of its tokens' texts, so every token is still found, counted and timed. Chat is
//! the default because it is what the streams exist for (an LLM answer, token by token); `room`
//! measures plain fan-out without the per-member delta work.
//!
//! Order is checked twice per stream: event ids (the hub's cursors) must increase, and token
//! sequence numbers must not go back (merged deltas skip ids, which is expected; a repeated or
//! smaller id is not).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;

use super::crowd::{Crowd, Member, OpenStats, Slot, open_limit};
use super::idle::{add_cpu, per_conn, settle};
use super::publisher::{self, Body, Plan, Published};
use super::subscriber::Subscriber;
use super::{Ctx, Window, cpu_delta, drain, rss, rss_delta};
use crate::args::{SseArgs, SseKind, SseMode};
use crate::client::WsConn;
use crate::live::Live;
use crate::metrics::{ShardedHist, Summary};
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::{self, CLOSE_GRACE, End, OpenError, Receiver as _};
use crate::sse::{self, Block, Sink};
use crate::{clock, payload, token};

/// Initial read buffer of an idle stream: the preamble and heartbeats fit; it grows if an
/// event needs more.
const IDLE_READ_BUF: usize = 512;

/// Initial read buffer of a streaming reader: a few dozen 100-byte events, so a reader that
/// falls behind catches up with few reads.
const READ_BUF: usize = 8 * 1024;

/// Initial read buffer of a publisher, which only gets heartbeat replies.
const PUB_READ_BUF: usize = 1024;

/// Latency histogram shards: more than the runtime's worker threads.
const LATENCY_SHARDS: usize = 16;

/// Messages a publisher aims to write per system call: with thousands of topics a publisher
/// sends thousands of messages a second, and one write per message (or per 1 ms tick) would
/// cost the server as many reads and both sides as many wake-ups.
const PER_WRITE: u64 = 10;

/// Coarsest publisher tick: a low-rate publisher writes each message at most this late.
const MAX_TICK: Duration = Duration::from_millis(5);

/// Runs the scenario.
pub async fn run(args: &SseArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let setup = Setup::new(args, &ctx)?;
    let mut report = match args.mode {
        SseMode::Idle => idle(args, &ctx, &setup).await?,
        SseMode::Fanout | SseMode::Topics => stream(args, &ctx, &setup).await?,
    };
    let r = &mut report;
    r.param("mode", format!("{:?}", args.mode).to_lowercase());
    r.param("kind", format!("{:?}", args.kind).to_lowercase());
    r.param("conns", args.conns);
    r.param("topics", setup.names.len());
    r.param("topic_prefix", setup.prefix.clone());
    r.param("auth", format!("{:?}", args.auth).to_lowercase());
    Ok(report)
}

/// Topic names and the request each stream writes.
#[derive(Debug)]
struct Setup {
    prefix: String,
    /// Channel names (without `realtime:`), by topic number.
    names: Vec<String>,
    /// The request for topic `k` on endpoint `t`: `requests[t][k]`.
    requests: Arc<Vec<Vec<Vec<u8>>>>,
}

impl Setup {
    fn new(args: &SseArgs, ctx: &Ctx) -> anyhow::Result<Self> {
        let prefix = args
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("sse-{}", std::process::id()));
        let names: Vec<String> = (0..args.topics())
            .map(|k| match args.kind {
                SseKind::Chat => format!("chat:{prefix}-{k}"),
                SseKind::Room => format!("{prefix}-{k}"),
            })
            .collect();
        let token = reader_token(ctx)?;
        let requests = ctx
            .targets
            .iter()
            .map(|t| {
                names
                    .iter()
                    .map(|n| sse::request(&t.host, n, &token, args.auth))
                    .collect()
            })
            .collect();
        Ok(Self {
            prefix,
            names,
            requests: Arc::new(requests),
        })
    }
}

/// The streams' token: `--token` as given, else one minted for an ordinary user (role
/// `authenticated`): readers need no more, and the publishers' service role would hide a read
/// rule that refused ordinary users.
fn reader_token(ctx: &Ctx) -> anyhow::Result<String> {
    let c = &ctx.common;
    match (&c.token, &c.jwt_secret) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(secret)) => token::mint(
            secret.as_bytes(),
            token::AUTHENTICATED,
            "", // no `sub`: the readers stand for many users (see `Ctx::new`)
            clock::unix_secs(),
            c.duration.as_secs() + 600,
        ),
        (None, None) => bail!("no credentials: pass --token or --jwt-secret (or HUB_JWT_SECRET)"),
    }
}

/// One stream task: wait for an opening slot, open (200 and preamble), report, read until the
/// run stops, close.
async fn reader<S: Sink + Send>(
    slot: Slot<S>,
    requests: Arc<Vec<Vec<Vec<u8>>>>,
    read_buf: usize,
) -> Member<S> {
    let Slot {
        ctx,
        index,
        topic,
        gate,
        reporter,
        mut stop,
        mut rx,
    } = slot;
    let request = &requests[index % requests.len()][topic];
    let opened = tokio::select! {
        biased;
        _ = &mut stop => Err(OpenError::Cancelled),
        r = async {
            // The semaphore is never closed, so acquiring only fails if it were.
            let _permit = gate.acquire().await.map_err(|_| OpenError::Cancelled)?;
            sse::open(ctx.dial(index, read_buf), request, &ctx.live).await
        } => r,
    };
    let mut conn = match opened {
        Ok((conn, times)) => {
            reporter.opened(topic, times).await;
            conn
        }
        Err(e) => {
            reporter.failed(e.to_string()).await;
            return Member {
                index,
                rx,
                end: None,
                closed_clean: false,
            };
        }
    };
    let end = sse::hold(&mut conn, &mut stop, &ctx.live, &mut rx).await;
    let closed_clean = if end == End::Cancelled {
        conn.close(CLOSE_GRACE).await
    } else {
        Live::add(&ctx.live.dropped, 1);
        false
    };
    Member {
        index,
        rx,
        end: Some(end),
        closed_clean,
    }
}

/// An idle stream's sink: it only counts what arrives (heartbeat comments, stray events).
#[derive(Debug, Default, Clone, Copy)]
struct IdleSink {
    comments: u64,
    events: u64,
}

impl Sink for IdleSink {
    fn block(&mut self, b: &Block<'_>) {
        self.comments += u64::from(b.comments);
        self.events += u64::from(b.data.is_some());
    }
}

/// A streaming reader's sink: stamps into a [`Subscriber`] (latency, duplicates, sequence
/// order), plus what only an event stream has (ids, merged deltas, other events, comments).
#[derive(Debug)]
struct ReaderSink {
    sub: Subscriber,
    kind: SseKind,
    /// The name of our events: `token`, or `--event` on rooms.
    ours: Arc<str>,
    /// Events of ours.
    events: u64,
    /// Chat events carrying more than one token (the hub merged queued deltas).
    merged: u64,
    /// Events of other names (a chat `snapshot`, a `system` notice).
    other: u64,
    /// Comment lines (heartbeats).
    comments: u64,
    /// Events of ours without a cursor id.
    no_id: u64,
    /// Events whose id did not increase.
    id_regressions: u64,
    /// Times the id's epoch changed (history lost on the server).
    epoch_changes: u64,
    epoch: Vec<u8>,
    /// Offset of the newest id seen; 0 before the first (offsets start at 1).
    last_offset: u64,
}

impl ReaderSink {
    fn new(sub: Subscriber, kind: SseKind, ours: Arc<str>) -> Self {
        Self {
            sub,
            kind,
            ours,
            events: 0,
            merged: 0,
            other: 0,
            comments: 0,
            no_id: 0,
            id_regressions: 0,
            epoch_changes: 0,
            epoch: Vec::new(),
            last_offset: 0,
        }
    }

    /// Checks that ids increase within one epoch.
    fn check_id(&mut self, id: Option<&[u8]>) {
        let Some((epoch, offset)) = id.and_then(sse::cursor) else {
            self.no_id += 1;
            return;
        };
        if epoch != self.epoch.as_slice() {
            if !self.epoch.is_empty() {
                self.epoch_changes += 1;
            }
            self.epoch.clear();
            self.epoch.extend_from_slice(epoch);
            self.last_offset = 0;
        }
        if offset <= self.last_offset {
            self.id_regressions += 1;
        } else {
            self.last_offset = offset;
        }
    }
}

impl Sink for ReaderSink {
    fn batch_start(&mut self) {
        self.sub.batch_start();
    }

    fn block(&mut self, b: &Block<'_>) {
        self.comments += u64::from(b.comments);
        let Some(data) = b.data else {
            return;
        };
        if b.name() != self.ours.as_bytes() {
            self.other += 1;
            return;
        }
        self.events += 1;
        self.check_id(b.id);
        match self.kind {
            SseKind::Room => self.sub.stamped(payload::scan(data)),
            SseKind::Chat => {
                let sub = &mut self.sub;
                let n = payload::scan_text(data, |st| sub.stamped(Some(st)));
                match n {
                    0 => self.sub.stamped(None),
                    1 => {}
                    _ => self.merged += 1,
                }
            }
        }
    }

    fn batch_done(&mut self, live: &Live) {
        self.sub.batch_done(live);
    }
}

/// `--mode idle`.
async fn idle(args: &SseArgs, ctx: &Arc<Ctx>, setup: &Setup) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let topics = setup.names.len();
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        args.conns as u64,
    );
    let server_before = ctx.server_sample();
    let own_before = ctx.own_sample();
    let spawn = |first: usize, n: usize| {
        let requests = setup.requests.clone();
        Crowd::spawn_with(
            ctx,
            first,
            topics,
            vec![IdleSink::default(); n],
            move |slot| reader(slot, requests.clone(), IDLE_READ_BUF),
        )
    };

    // Warm-up crowd: its RSS growth includes the server's one-off costs; the main crowd's
    // growth over it is the marginal cost of a stream.
    let warmup = args.warmup.unwrap_or(args.conns / 10).min(args.conns);
    let mut warm = None;
    let mut server_mid = None;
    let mut cpu_open = Some(Duration::ZERO);
    if warmup > 0 {
        ctx.live.set_phase("warming up");
        let mut crowd = spawn(0, warmup);
        let opens = crowd.opened(open_limit(ctx, warmup)).await?;
        cpu_open = add_cpu(cpu_open, server_before, ctx.server_sample());
        ctx.live.set_phase("settling");
        server_mid = settle(ctx, args.settle).await;
        warm = Some((crowd, opens));
    }

    ctx.live.set_phase("opening");
    let main = args.conns - warmup;
    let cpu_main_start = ctx.server_sample();
    let mut crowd = spawn(warmup, main);
    let mut opens = crowd.opened(open_limit(ctx, main)).await?;
    let main_opened = opens.joined;
    cpu_open = add_cpu(cpu_open, cpu_main_start, ctx.server_sample());
    let server_opened = ctx.server_sample();
    let mut warm_crowd = None;
    if let Some((crowd, warm_opens)) = warm {
        opens.absorb(warm_opens)?;
        warm_crowd = Some(crowd);
    }

    ctx.live.set_phase("settling");
    let server_settled = settle(ctx, args.settle).await.or(server_opened);

    ctx.live.set_phase("holding");
    let t_hold = Instant::now();
    ctx.sleep(c.duration).await;
    let held_for = t_hold.elapsed();
    let server_held = ctx.server_sample();
    let open_at_end = Live::get(&ctx.live.joined) - Live::get(&ctx.live.dropped);

    ctx.live.set_phase("closing");
    let t_close = Instant::now();
    ctx.stop.cancel();
    let (mut members, mut lost) = crowd.finish().await;
    if let Some(w) = warm_crowd {
        let (more, more_lost) = w.finish().await;
        members.extend(more);
        lost += more_lost;
    }
    let close_time = t_close.elapsed();
    progress.stop().await;
    let server_closed = ctx.server_sample();
    let own_after = ctx.own_sample();

    let mut r = Report::new("sse");
    r.param("settle_limit_s", args.settle.as_secs_f64());
    r.param("warmup", warmup);
    open_figures(&mut r, args.conns, &opens);
    r.figure(
        "open_s",
        "open phase (200 + retry:)",
        Num::Float(opens.elapsed.as_secs_f64()),
        "s",
    );
    r.figure(
        "server_cpu_open_s",
        "server CPU while opening",
        cpu_open.map_or(Num::Missing, |d| Num::Float(d.as_secs_f64())),
        "s",
    );
    r.figure(
        "server_rss_before",
        "server RSS before",
        rss(server_before),
        "bytes",
    );
    r.figure(
        "server_rss_warm",
        "server RSS after warm-up",
        rss(server_mid),
        "bytes",
    );
    r.figure(
        "server_rss_opened",
        "server RSS opened+settled",
        rss(server_settled),
        "bytes",
    );
    let growth = rss_delta(server_before, server_settled);
    r.figure("server_rss_growth", "server RSS growth", growth, "bytes");
    r.figure(
        "rss_per_stream",
        "server RSS per stream",
        per_conn(growth, opens.joined),
        "bytes",
    );
    r.figure(
        "rss_per_stream_marginal",
        "server RSS per stream after warm-up",
        per_conn(rss_delta(server_mid, server_settled), main_opened),
        "bytes",
    );
    r.figure(
        "hold_s",
        "held for",
        Num::Float(held_for.as_secs_f64()),
        "s",
    );
    r.figure(
        "streams_open_at_end",
        "streams open at end of hold",
        Num::Int(open_at_end),
        "",
    );
    r.figure(
        "server_rss_held",
        "server RSS end of hold",
        rss(server_held),
        "bytes",
    );
    let comments: u64 = members.iter().map(|m| m.rx.comments).sum();
    let events: u64 = members.iter().map(|m| m.rx.events).sum();
    r.figure(
        "heartbeats",
        "heartbeat comments received",
        Num::Int(comments),
        "",
    );
    r.figure("events", "events received", Num::Int(events), "");
    r.figure(
        "close_s",
        "close phase",
        Num::Float(close_time.as_secs_f64()),
        "s",
    );
    let clean = members.iter().filter(|m| m.closed_clean).count() as u64;
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(clean),
        "",
    );
    r.figure(
        "server_rss_closed",
        "server RSS after close",
        rss(server_closed),
        "bytes",
    );
    r.figure(
        "client_cpu_s",
        "loadtest CPU (whole run)",
        cpu_delta(own_before, own_after),
        "s",
    );
    r.latency("connect", "connect+200", Summary::of(&opens.connect));
    r.latency("preamble", "200→retry:", Summary::of(&opens.join));
    r.errors(&opens.errors);
    member_errors(&mut r, &members, "dropped while held");
    r.error("task did not end in time", lost);
    if warmup > 0 {
        r.note("RSS per stream after warm-up: growth over the main crowd / its streams");
    }

    if let Some(limit) = c.expect_p99 {
        r.check("p99 connect+200", p99(&opens.connect), limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        let ratio = r.get("opened_ratio").and_then(Num::as_f64);
        r.check("opened/requested", ratio, limit, false, "");
    }
    if let Some(limit) = args.expect_rss_per_conn {
        let key = if warmup > 0 {
            "rss_per_stream_marginal"
        } else {
            "rss_per_stream"
        };
        let v = r.get(key).and_then(Num::as_f64);
        r.check("server RSS per stream", v, limit, true, " bytes");
    }
    if let Some(limit) = args.expect_rate {
        r.check(
            "opened per second",
            Some(opens.rate()),
            limit,
            false,
            " streams/s",
        );
    }
    Ok(r)
}

/// The open figures both modes report.
fn open_figures(r: &mut Report, requested: usize, opens: &OpenStats) {
    r.figure(
        "streams_requested",
        "streams requested",
        Num::Int(requested as u64),
        "",
    );
    r.figure(
        "streams_opened",
        "streams opened",
        Num::Int(opens.joined),
        "",
    );
    r.figure(
        "streams_failed",
        "streams failed",
        Num::Int(opens.failed()),
        "",
    );
    r.figure(
        "opened_ratio",
        "opened / requested",
        Num::ratio(opens.joined, requested as u64),
        "",
    );
    r.figure(
        "open_rate",
        "opened per second",
        Num::float(opens.rate()),
        "streams/s",
    );
}

/// Error counts of members that ended other than by our stop.
fn member_errors<R>(r: &mut Report, members: &[Member<R>], what: &str) {
    for m in members {
        if let Some(end) = m.end.as_ref().filter(|e| **e != End::Cancelled) {
            r.error(format!("{what}: {}", end.key()), 1);
        }
    }
}

/// p99 of a histogram in ms, when it has samples.
fn p99(h: &crate::metrics::Hist) -> Option<f64> {
    (!h.is_empty()).then(|| Summary::of(h).p99_ms)
}

/// The publishing plans: topic `k` goes to publisher `k % publishers`, which publishes
/// `--rate` events per second on each of its topics.
fn plans(args: &SseArgs, names: &[String]) -> Vec<Plan> {
    let p = args.publishers().max(1);
    let (body, event) = match args.kind {
        SseKind::Chat => (Body::ChatText, "token"),
        SseKind::Room => (Body::Flat, args.event.as_str()),
    };
    (0..p)
        .map(|j| {
            let mine: Vec<String> = (j..names.len())
                .step_by(p)
                .map(|k| format!("realtime:{}", names[k]))
                .collect();
            let rate = args.rate.saturating_mul(mine.len() as u64);
            let tick = Duration::from_secs_f64(PER_WRITE as f64 / rate.max(1) as f64);
            Plan::new(Arc::new(mine), rate, args.common.duration, args.size, event)
                .with_body(body)
                .with_tick(tick.min(MAX_TICK))
        })
        .collect()
}

/// Events planned per topic number, from the plans of [`plans`].
fn planned_per_topic(plans: &[Plan], topics: usize) -> Vec<u64> {
    let p = plans.len().max(1);
    let mut planned = vec![0; topics];
    for (j, plan) in plans.iter().enumerate() {
        for local in 0..plan.topics.len() {
            if let Some(slot) = planned.get_mut(j + local * p) {
                *slot = plan.per_topic(local);
            }
        }
    }
    planned
}

/// Opens and joins every publisher (at most `--concurrency` at a time); publisher `j` dials as
/// connection `first_index + j` and joins its plan's topics in order.
async fn open_publishers(
    ctx: &Arc<Ctx>,
    plans: &[Plan],
    first_index: usize,
) -> (Vec<WsConn>, BTreeMap<String, u64>) {
    let gate = Arc::new(Semaphore::new(ctx.common.concurrency));
    let handles: Vec<_> = plans
        .iter()
        .enumerate()
        .map(|(j, plan)| {
            let (ctx, gate, topics) = (ctx.clone(), gate.clone(), plan.topics.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.map_err(|_| OpenError::Cancelled)?;
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let dial = ctx.dial(first_index + j, PUB_READ_BUF);
                // Bounded: connect timeout plus one join timeout per topic.
                session::open(dial, &ctx.live, &names)
                    .await
                    .map(|(conn, _)| conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(plans.len());
    let mut errors = BTreeMap::new();
    for h in handles {
        match h.await {
            Ok(Ok(conn)) => {
                Live::add(&ctx.live.joined, 1);
                conns.push(conn);
            }
            Ok(Err(e)) => *errors.entry(format!("publisher: {e}")).or_default() += 1,
            Err(e) => *errors.entry(format!("publisher task: {e}")).or_default() += 1,
        }
    }
    (conns, errors)
}

/// Publishes every plan at once, each on its own connection; returns the connections and what
/// each published. Bounded by `publish` itself (`--duration` plus its overrun limit, or stop).
async fn publish_all(
    ctx: &Arc<Ctx>,
    conns: Vec<WsConn>,
    plans: &[Plan],
) -> (Vec<(WsConn, Published)>, u64) {
    let handles: Vec<_> = conns
        .into_iter()
        .zip(plans.iter().cloned())
        .map(|(mut conn, plan)| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let c = &ctx.common;
                let p =
                    publisher::publish(&mut conn, &plan, &ctx.stop, &ctx.live, c.heartbeat).await;
                (conn, p)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut failed = 0;
    for h in handles {
        match h.await {
            Ok(x) => out.push(x),
            Err(_) => failed += 1,
        }
    }
    (out, failed)
}

/// Closes publisher connections concurrently; returns how many closes the server answered.
async fn close_all(conns: Vec<WsConn>) -> u64 {
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(c.close(CLOSE_GRACE)))
        .collect();
    let mut clean = 0;
    for h in handles {
        clean += u64::from(matches!(h.await, Ok(true)));
    }
    clean
}

/// `--mode fanout` and `--mode topics`.
async fn stream(args: &SseArgs, ctx: &Arc<Ctx>, setup: &Setup) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let topics = setup.names.len();
    let plans = plans(args, &setup.names);
    let planned = planned_per_topic(&plans, topics);
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        (args.conns + plans.len()) as u64,
    );
    let server_start = ctx.server_sample();
    let own_start = ctx.own_sample();

    ctx.live.set_phase("opening streams");
    let latency = Arc::new(ShardedHist::new(LATENCY_SHARDS)?);
    let ours: Arc<str> = Arc::from(match args.kind {
        SseKind::Chat => "token",
        SseKind::Room => args.event.as_str(),
    });
    let sinks = (0..args.conns)
        .map(|i| {
            let k = i % topics;
            let sub = Subscriber::new(
                Arc::from(setup.names[k].as_str()),
                planned[k],
                latency.clone(),
            );
            ReaderSink::new(sub, args.kind, ours.clone())
        })
        .collect();
    let requests = setup.requests.clone();
    let mut crowd = Crowd::spawn_with(ctx, 0, topics, sinks, move |slot| {
        reader(slot, requests.clone(), READ_BUF)
    });
    let opens = crowd.opened(open_limit(ctx, args.conns)).await?;
    let server_opened = ctx.server_sample();
    let expected: u64 = opens
        .per_topic
        .iter()
        .zip(&planned)
        .map(|(n, p)| n * p)
        .sum();

    let mut r = Report::new("sse");
    ctx.live.set_phase("joining publishers");
    let (conns, pub_errors) = open_publishers(ctx, &plans, args.conns).await;
    r.errors(&pub_errors);
    let mut window = Window::default();
    let mut publishers = Vec::new();
    let mut published = Vec::new();
    if conns.len() == plans.len() {
        ctx.live.set_phase("publishing");
        window.mark_start(ctx);
        let (done, failed) = publish_all(ctx, conns, &plans).await;
        r.error("publisher task failed", failed);
        window.start = done.iter().map(|(_, p)| p.started).min();
        window.start_ns = done.iter().map(|(_, p)| p.started_ns).min();
        window.publish_end = done.iter().map(|(_, p)| p.started + p.elapsed).max();
        window.cpu_publish_end = ctx.server_sample();
        for (conn, p) in done {
            publishers.push(conn);
            published.push(p);
        }
    } else {
        r.error("not every publisher joined: nothing published", 1);
        publishers = conns;
    }

    if let Some(publish_end) = window.publish_end {
        ctx.live.set_phase("draining");
        let deadline = publish_end.max(Instant::now()) + args.grace;
        window.drain_end = Some(drain(ctx, expected, deadline).await);
        window.mark_end(ctx);
    }

    ctx.live.set_phase("closing");
    ctx.stop.cancel();
    let publishers_clean = close_all(publishers).await;
    let (members, lost) = crowd.finish().await;
    progress.stop().await;
    let server_end = ctx.server_sample();
    let own_end = ctx.own_sample();

    let latency = latency.merged()?;
    let t = Totals::of(&members);
    r.param("rate_per_topic", args.rate);
    r.param("size", args.size);
    r.param("publishers", plans.len());
    r.param("channels_per_publisher", args.channels_per_publisher);
    r.param("event", ours.to_string());
    r.param("grace_s", args.grace.as_secs_f64());
    open_figures(&mut r, args.conns, &opens);
    r.figure(
        "publishers",
        "publisher connections",
        Num::Int(plans.len() as u64),
        "",
    );
    let planned_total: u64 = plans.iter().map(|p| p.total).sum();
    r.figure(
        "events_planned",
        "events planned (all topics)",
        Num::Int(planned_total),
        "",
    );
    let sent = if published.is_empty() {
        Num::Missing
    } else {
        Num::Int(published.iter().map(|p| p.sent).sum())
    };
    r.figure("events_sent", "events published", sent, "");
    r.figure("expected", "deliveries expected", Num::Int(expected), "");
    r.figure("delivered", "delivered (distinct)", Num::Int(t.unique), "");
    let ratio = Num::ratio(t.unique, expected);
    r.figure("delivered_ratio", "delivered / expected", ratio, "");
    r.figure("duplicates", "duplicates", Num::Int(t.duplicates), "");
    r.figure(
        "out_of_order",
        "tokens out of order",
        Num::Int(t.out_of_order),
        "",
    );
    r.figure(
        "id_regressions",
        "ids not increasing",
        Num::Int(t.id_regressions),
        "",
    );
    r.figure(
        "epoch_changes",
        "id epoch changes",
        Num::Int(t.epoch_changes),
        "",
    );
    r.figure("no_id", "events without id", Num::Int(t.no_id), "");
    r.figure("events", "events received", Num::Int(t.events), "");
    r.figure(
        "merged_events",
        "events carrying merged tokens",
        Num::Int(t.merged),
        "",
    );
    r.figure(
        "other_events",
        "other events (snapshot, system)",
        Num::Int(t.other),
        "",
    );
    r.figure(
        "unexpected",
        "unreadable or unplanned tokens",
        Num::Int(t.unexpected),
        "",
    );
    r.figure("heartbeats", "heartbeat comments", Num::Int(t.comments), "");
    r.figure(
        "events_per_read",
        "events per stream socket read",
        Num::float(t.events as f64 / t.reads as f64),
        "",
    );
    let publish_s = published
        .iter()
        .map(|p| p.elapsed.as_secs_f64())
        .reduce(f64::max)
        .map_or(Num::Missing, Num::Float);
    r.figure("publish_s", "publishing took", publish_s, "s");
    let per_cpu =
        window.report_delivery(&mut r, t.unique, t.last_rx_ns, ("events/s", "events/cpu-s"));
    r.figure(
        "server_rss_start",
        "server RSS at start",
        rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_opened",
        "server RSS streams open",
        rss(server_opened),
        "bytes",
    );
    r.figure(
        "server_rss_drained",
        "server RSS after delivery",
        rss(window.cpu_end),
        "bytes",
    );
    r.figure(
        "server_rss_end",
        "server RSS after close",
        rss(server_end),
        "bytes",
    );
    r.figure(
        "client_cpu_s",
        "loadtest CPU (whole run)",
        cpu_delta(own_start, own_end),
        "s",
    );
    let clean = members.iter().filter(|m| m.closed_clean).count() as u64 + publishers_clean;
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(clean),
        "",
    );
    r.latency("publish_receive", "publish→receive", Summary::of(&latency));
    r.latency("connect", "connect+200", Summary::of(&opens.connect));
    r.latency("preamble", "200→retry:", Summary::of(&opens.join));
    r.note("publish→receive is per token; a merged chat event counts each token it carries");
    r.errors(&opens.errors);
    for p in &published {
        if let Some(e) = &p.error {
            r.error(e.clone(), 1);
        }
    }
    member_errors(&mut r, &members, "stream dropped");
    r.error("task did not end in time", lost);

    if let Some(limit) = c.expect_p99 {
        r.check("p99 publish→receive", p99(&latency), limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        r.check("delivered/expected", ratio.as_f64(), limit, false, "");
    }
    if let Some(limit) = args.expect_per_cpu {
        r.check(
            "deliveries per server CPU-second",
            per_cpu.as_f64(),
            limit,
            false,
            "",
        );
    }
    if let Some(limit) = args.expect_duplicates {
        r.check(
            "duplicates",
            Some(t.duplicates as f64),
            limit as f64,
            true,
            "",
        );
    }
    if args.expect_in_order {
        let bad = t.id_regressions + t.out_of_order;
        r.check(
            "ids not increasing + tokens out of order",
            Some(bad as f64),
            0.0,
            true,
            "",
        );
    }
    Ok(r)
}

/// What every stream saw, summed.
#[derive(Debug, Default)]
struct Totals {
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    reads: u64,
    last_rx_ns: u64,
    events: u64,
    merged: u64,
    other: u64,
    comments: u64,
    no_id: u64,
    id_regressions: u64,
    epoch_changes: u64,
}

impl Totals {
    fn of(members: &[Member<ReaderSink>]) -> Self {
        let mut t = Self::default();
        for m in members {
            let (s, sub) = (&m.rx, &m.rx.sub);
            t.unique += sub.unique();
            t.duplicates += sub.duplicates;
            t.out_of_order += sub.out_of_order;
            t.unexpected += sub.unexpected;
            t.reads += sub.reads;
            t.last_rx_ns = t.last_rx_ns.max(sub.last_rx_ns);
            t.events += s.events;
            t.merged += s.merged;
            t.other += s.other;
            t.comments += s.comments;
            t.no_id += s.no_id;
            t.id_regressions += s.id_regressions;
            t.epoch_changes += s.epoch_changes;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Scenario};
    use clap::Parser as _;

    fn args(extra: &[&str]) -> SseArgs {
        let mut all = vec!["loadtest", "sse", "--jwt-secret", "s"];
        all.extend_from_slice(extra);
        match Cli::try_parse_from(all).unwrap().scenario {
            Scenario::Sse(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn topics_are_dealt_to_publishers_round_robin() {
        let a = args(&[
            "--mode",
            "topics",
            "--conns",
            "250",
            "--rate",
            "20",
            "--duration",
            "2s",
        ]);
        let names: Vec<String> = (0..250).map(|k| format!("chat:p-{k}")).collect();
        let plans = plans(&a, &names);
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[0].topics.len(), 84);
        assert_eq!(plans[2].topics.len(), 83);
        assert_eq!(plans[1].topics[1], "realtime:chat:p-4");
        assert_eq!(plans[0].rate, 84 * 20);
        assert_eq!(plans[0].body, Body::ChatText);
        assert_eq!(plans[0].event, "token");
        // 1,680 events/s: ten per write would be every 5.95 ms; at most 5 ms.
        assert_eq!(plans[0].tick, MAX_TICK);
        let many = args(&["--mode", "topics", "--conns", "5000", "--duration", "2s"]);
        let names5k: Vec<String> = (0..5000).map(|k| format!("r-{k}")).collect();
        // 100 topics × 20/s = 2,000 events/s: ten per write every 5 ms.
        assert_eq!(super::plans(&many, &names5k)[0].tick.as_micros(), 5000);
        let fast = args(&["--conns", "100", "--topics", "100", "--rate", "100"]);
        // 10,000 events/s: ten per write every 1 ms.
        assert_eq!(
            super::plans(&fast, &names5k[..100])[0].tick.as_micros(),
            1000
        );
        let slow = args(&["--rate", "50"]);
        assert_eq!(super::plans(&slow, &names[..1])[0].tick, MAX_TICK);
        let planned = planned_per_topic(&plans, names.len());
        assert!(planned.iter().all(|&n| n == 40), "{planned:?}");
    }

    fn latency() -> Arc<ShardedHist> {
        Arc::new(ShardedHist::new(1).unwrap())
    }

    fn event<'a>(id: &'a str, name: &'a str, data: &'a [u8]) -> Block<'a> {
        Block {
            id: Some(id.as_bytes()),
            event: Some(name.as_bytes()),
            data: Some(data),
            retry: None,
            comments: 0,
        }
    }

    #[test]
    fn chat_readers_count_merged_tokens_ids_and_strangers() {
        let sub = Subscriber::new("chat:x".into(), 5, latency());
        let mut s = ReaderSink::new(sub, SseKind::Chat, "token".into());
        let now = clock::now_ns();
        let token = |seq: u64| {
            let mut b = Vec::new();
            payload::build_text(&mut b, payload::Stamp { t: now, s: seq }, 60);
            b
        };
        s.batch_start();
        s.block(&event("e:1", "snapshot", br#"{"text":"","done":false}"#));
        s.block(&event("e:1", "token", &token(0)));
        let merged = format!(r#"{{"text":"~1.{now}|xx~2.{now}|x"}}"#);
        s.block(&event("e:3", "token", merged.as_bytes()));
        s.block(&event("e:3", "token", &token(3))); // same id again
        s.block(&event("e:4", "token", &token(2))); // an older token
        s.block(&event("e:5", "token", br#"{"text":"no stamp"}"#));
        s.block(&Block {
            comments: 1,
            ..Block::default()
        });
        let live = Live::default();
        s.batch_done(&live);
        assert_eq!((s.events, s.merged, s.other, s.comments), (5, 1, 1, 1));
        assert_eq!((s.id_regressions, s.no_id, s.epoch_changes), (1, 0, 0));
        assert_eq!(s.sub.received, 6);
        assert_eq!(s.sub.duplicates, 1);
        assert_eq!(s.sub.unexpected, 1);
        assert_eq!(s.sub.unique(), 4);
        assert_eq!(Live::get(&live.delivered), 6);
        // A new epoch restarts the id order.
        s.block(&event("f:1", "token", &token(4)));
        assert_eq!((s.epoch_changes, s.id_regressions), (1, 1));
    }

    #[test]
    fn room_readers_read_fanout_payloads() {
        let sub = Subscriber::new("room".into(), 2, latency());
        let mut s = ReaderSink::new(sub, SseKind::Room, "lt".into());
        let mut b = Vec::new();
        payload::build(
            &mut b,
            payload::Stamp {
                t: clock::now_ns(),
                s: 1,
            },
            100,
        );
        s.batch_start();
        s.block(&event("e:1", "lt", &b));
        s.block(&Block {
            id: None,
            ..event("", "lt", &b)
        });
        assert_eq!((s.events, s.no_id), (2, 1));
        assert_eq!((s.sub.unique(), s.sub.duplicates), (1, 1));
    }
}
