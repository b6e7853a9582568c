//! `fanout`: `--conns` subscribers spread over `--topics`, one publisher sending `--rate`
//! messages per second of `--size` bytes for `--duration`.
//!
//! Measures delivered/expected, duplicates and order, publish→receive latency (stamps in the
//! payloads, one clock), deliveries per second, and the server CPU spent from the first publish
//! until the last delivery, hence deliveries per server CPU-second.
//!
//! A run too large for one process is split: subscriber-only processes (`--publishers 0`) are
//! started first with their share of `--conns`; one process with the publisher comes last.
//! Every process needs the same `--rate`, `--duration`, `--topics` and `--topic-prefix`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crowd::{self, Crowd};
use super::flooder;
use super::publisher::{self, Plan};
use super::subscriber::Subscriber;
use super::{Ctx, Window, cpu_delta, drain, rss};
use crate::args::FanoutArgs;
use crate::live::Live;
use crate::metrics::{ShardedHist, Summary};
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::{self, CLOSE_GRACE, End};
use crate::target::Target;
use crate::{clock, phoenix, token};

/// Initial read buffer of a subscriber: room for ~100 broadcasts of 100 B, so a task that falls
/// behind catches up with few reads.
const SUB_READ_BUF: usize = 16 * 1024;

/// Initial read buffer of the publisher, which only gets heartbeat replies.
const PUB_READ_BUF: usize = 1024;

/// Latency histogram shards: comfortably more than the runtime's worker threads on the machines
/// this runs on, so every thread records into its own.
const LATENCY_SHARDS: usize = 16;

/// How often a subscriber-only process checks for the first delivery.
const FIRST_POLL: Duration = Duration::from_millis(5);

/// Runs the scenario.
pub async fn run(args: &FanoutArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let sp = &args.spread;
    let topics: Arc<Vec<String>> = Arc::new(
        (0..sp.topics)
            .map(|k| phoenix::topic_name(&sp.topic_prefix, k))
            .collect(),
    );
    let plan = Plan::new(
        topics.clone(),
        args.rate,
        c.duration,
        args.size,
        &args.event,
    );
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        (sp.conns + usize::from(args.publishers)) as u64,
    );
    let server_start = ctx.server_sample();
    let own_start = ctx.own_sample();

    ctx.live.set_phase("subscribing");
    let wire: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
    let latency = Arc::new(ShardedHist::new(LATENCY_SHARDS)?);
    let subs = (0..sp.conns)
        .map(|i| {
            let k = i % topics.len();
            Subscriber::new(wire[k].clone(), plan.per_topic(k), latency.clone())
        })
        .collect();
    let mut crowd = Crowd::spawn(&ctx, 0, topics.clone(), SUB_READ_BUF, subs);
    let opens = crowd.opened(crowd::open_limit(&ctx, sp.conns)).await?;
    let server_joined = ctx.server_sample();
    let expected: u64 = opens
        .per_topic
        .iter()
        .enumerate()
        .map(|(k, n)| n * plan.per_topic(k))
        .sum();

    let mut report = Report::new("fanout");
    let mut window = Window::default();
    let mut publisher = None;
    let mut published = None;
    let mut flood = None;
    if args.publishers > 0 {
        ctx.live.set_phase("joining publisher");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let dial = ctx.dial(sp.conns, PUB_READ_BUF);
        match session::open(dial, &ctx.live, &names).await {
            Ok((mut conn, _)) => {
                Live::add(&ctx.live.joined, 1);
                ctx.live.set_phase("publishing");
                flood = start_flooder(args, &ctx)?;
                window.mark_start(&ctx);
                let published =
                    publisher::publish(&mut conn, &plan, &ctx.stop, &ctx.live, c.heartbeat).await;
                window.start = Some(published.started);
                window.start_ns = Some(published.started_ns);
                window.publish_end = Some(published.started + published.elapsed);
                window.cpu_publish_end = ctx.server_sample();
                publisher = Some((conn, published));
            }
            Err(e) => report.error(format!("publisher: {e}"), 1),
        }
    } else {
        ctx.live.set_phase("waiting for first message");
        if let Some(first) = first_delivery(&ctx, args.start_timeout).await {
            window.start = Some(first);
            window.start_ns = Some(clock::now_ns());
            window.mark_start(&ctx);
            window.publish_end = Some(first + c.duration);
        } else {
            report.error("no message arrived within --start-timeout", 1);
        }
    }

    if let Some(publish_end) = window.publish_end {
        ctx.live.set_phase("draining");
        let deadline = publish_end.max(Instant::now()) + args.grace;
        window.drain_end = Some(drain(&ctx, expected, deadline).await);
        window.mark_end(&ctx);
    }

    let flooded = match flood {
        Some(task) => Some(task.await?),
        None => None,
    };
    ctx.live.set_phase("closing");
    ctx.stop.cancel();
    let publisher_clean = match publisher.take() {
        Some((conn, p)) => {
            let clean = conn.close(CLOSE_GRACE).await;
            published = Some(p);
            clean
        }
        None => false,
    };
    let (members, lost) = crowd.finish().await;
    progress.stop().await;
    let server_end = ctx.server_sample();
    let own_end = ctx.own_sample();

    // Merge what every subscriber saw.
    let latency = latency.merged()?;
    let mut t = Totals::default();
    for m in &members {
        t.received += m.rx.received;
        t.unique += m.rx.unique();
        t.duplicates += m.rx.duplicates;
        t.out_of_order += m.rx.out_of_order;
        t.unexpected += m.rx.unexpected;
        t.last_rx_ns = t.last_rx_ns.max(m.rx.last_rx_ns);
        t.reads += m.rx.reads;
        if let Some(end) = m.end.as_ref().filter(|e| **e != End::Cancelled) {
            report.error(format!("subscriber dropped: {}", end.key()), 1);
        }
    }

    let r = &mut report;
    r.param("rate", args.rate);
    r.param("size", args.size);
    r.param("publishers", args.publishers);
    r.param("grace_s", args.grace.as_secs_f64());
    r.param("event", args.event.clone());
    r.figure(
        "subscribers_requested",
        "subscribers requested",
        Num::Int(sp.conns as u64),
        "",
    );
    r.figure(
        "subscribers_joined",
        "subscribers joined",
        Num::Int(opens.joined),
        "",
    );
    r.figure(
        "subscribers_failed",
        "subscribers failed",
        Num::Int(opens.failed()),
        "",
    );
    r.figure(
        "open_join_rate",
        "opened+joined per second",
        Num::float(opens.rate()),
        "conns/s",
    );
    r.figure(
        "messages_planned",
        "messages planned",
        Num::Int(plan.total),
        "msgs",
    );
    let sent = published
        .as_ref()
        .map_or(Num::Missing, |p| Num::Int(p.sent));
    r.figure("messages_sent", "messages published", sent, "msgs");
    r.figure("expected", "deliveries expected", Num::Int(expected), "");
    r.figure("delivered", "delivered (distinct)", Num::Int(t.unique), "");
    let ratio = Num::ratio(t.unique, expected);
    r.figure("delivered_ratio", "delivered / expected", ratio, "");
    r.figure("received", "frames received", Num::Int(t.received), "");
    r.figure("duplicates", "duplicates", Num::Int(t.duplicates), "");
    r.figure("out_of_order", "out of order", Num::Int(t.out_of_order), "");
    r.figure(
        "frames_per_read",
        "frames per subscriber socket read",
        Num::float(t.received as f64 / t.reads as f64),
        "",
    );
    r.figure(
        "unexpected",
        "unexpected frames",
        Num::Int(t.unexpected),
        "",
    );
    let publish_s = published
        .as_ref()
        .map_or(Num::Missing, |p| Num::Float(p.elapsed.as_secs_f64()));
    r.figure("publish_s", "publishing took", publish_s, "s");
    let per_cpu = window.report_delivery(r, t.unique, t.last_rx_ns, ("msgs/s", "msgs/cpu-s"));
    r.figure(
        "server_rss_start",
        "server RSS at start",
        rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_joined",
        "server RSS subscribers joined",
        rss(server_joined),
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
    let clean =
        members.iter().filter(|m| m.closed_clean).count() as u64 + u64::from(publisher_clean);
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(clean),
        "",
    );
    if let Some(f) = flooded {
        r.param("flood_joins", args.flood_joins);
        r.param("flood_messages", args.flood_messages);
        let rows: [(&str, &str, u64); 9] = [
            ("flood_connects", "flooder connections opened", f.connects),
            (
                "flood_connects_refused",
                "flooder connections refused",
                f.connects_refused,
            ),
            (
                "flood_closed",
                "flooder sockets closed by the hub",
                f.closed_by_hub,
            ),
            ("flood_joins_sent", "flooder joins sent", f.joins_sent),
            ("flood_joins_ok", "flooder joins accepted", f.joins_ok),
            (
                "flood_joins_limited",
                "flooder joins refused (rate)",
                f.joins_rate_limited,
            ),
            (
                "flood_joins_other",
                "flooder joins refused (other)",
                f.joins_refused_other,
            ),
            (
                "flood_messages_sent",
                "flooder broadcasts sent",
                f.messages_sent,
            ),
            (
                "flood_messages_limited",
                "flooder channels closed (rate)",
                f.messages_limited,
            ),
        ];
        for (key, label, n) in rows {
            r.figure(key, label, Num::Int(n), "");
        }
    }
    if ctx.targets.len() > 1 {
        per_node(r, &members, ctx.targets.len(), &c.url);
    }
    r.latency("publish_receive", "publish→receive", Summary::of(&latency));
    r.latency("connect", "connect+upgrade", Summary::of(&opens.connect));
    r.latency("join", "join", Summary::of(&opens.join));
    r.errors(&opens.errors);
    if let Some(e) = published.as_ref().and_then(|p| p.error.clone()) {
        r.error(e, 1);
    }
    r.error("task did not end in time", lost);

    if let Some(limit) = c.expect_p99 {
        let p99 = (!latency.is_empty()).then(|| Summary::of(&latency).p99_ms);
        r.check("p99 publish→receive", p99, limit, true, " ms");
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
    Ok(report)
}

/// Several `--url`s: how the subscribers and their deliveries spread over the nodes, so a node
/// that lags or drops (its Redis subscription, its share of the load) shows by name. The worst
/// node's ratio is a figure; every node's is a note.
fn per_node(r: &mut Report, members: &[crowd::Member<Subscriber>], nodes: usize, urls: &[String]) {
    // (joined members, distinct deliveries, deliveries expected) per node.
    let mut by_node = vec![(0u64, 0u64, 0u64); nodes];
    for m in members.iter().filter(|m| m.end.is_some()) {
        let n = &mut by_node[m.index % nodes];
        n.0 += 1;
        n.1 += m.rx.unique();
        n.2 += m.rx.planned();
    }
    let worst = by_node
        .iter()
        .filter_map(|&(_, got, want)| Num::ratio(got, want).as_f64())
        .fold(None, |w: Option<f64>, x| Some(w.map_or(x, |w| w.min(x))));
    r.figure(
        "nodes",
        "nodes (--url endpoints)",
        Num::Int(nodes as u64),
        "",
    );
    r.figure(
        "node_delivered_ratio_min",
        "delivered / expected, worst node",
        worst.map_or(Num::Missing, Num::Ratio),
        "",
    );
    for (i, (joined, got, want)) in by_node.iter().enumerate() {
        let ratio = Num::ratio(*got, *want).as_f64().unwrap_or(0.0);
        r.note(format!(
            "node {i} ({}): {joined} subscribers joined, {got} of {want} delivered ({ratio:.6})",
            urls.get(i).map_or("?", String::as_str)
        ));
    }
}

/// Subscriber totals.
#[derive(Debug, Default)]
struct Totals {
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    /// Socket reads by subscribers.
    reads: u64,
    /// Latest receive time over all subscribers, ns on [`clock`].
    last_rx_ns: u64,
}

/// Subscriber-only processes: waits for the first delivery (bounded).
async fn first_delivery(ctx: &Ctx, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !ctx.stop.is_cancelled() {
        if Live::get(&ctx.live.delivered) > 0 {
            return Some(Instant::now());
        }
        tokio::time::sleep(FIRST_POLL).await;
    }
    None
}

/// Starts the abusive client when `--flood-joins` or `--flood-messages` asks for one; it runs
/// for the publishing window with a token of its own (`sub` = `loadtest-flooder`).
fn start_flooder(
    args: &FanoutArgs,
    ctx: &Arc<Ctx>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<flooder::FloodStats>>> {
    if args.flood_joins == 0 && args.flood_messages == 0 {
        return Ok(None);
    }
    let c = &ctx.common;
    let token = match (&c.token, &c.jwt_secret) {
        (Some(t), _) => t.clone(),
        (None, Some(secret)) => token::mint(
            secret.as_bytes(),
            token::AUTHENTICATED,
            "loadtest-flooder",
            clock::unix_secs(),
            c.duration.as_secs() + 600,
        )?,
        (None, None) => anyhow::bail!("the flooder needs --token or --jwt-secret"),
    };
    let target = Target::parse(&c.url[0], &token).map_err(anyhow::Error::msg)?;
    let plan = flooder::FloodPlan {
        target,
        index: args.spread.conns + 1,
        prefix: args.spread.topic_prefix.clone(),
        joins: args.flood_joins,
        messages: args.flood_messages,
        until: Instant::now() + c.duration,
    };
    Ok(Some(tokio::spawn(flooder::run(ctx.clone(), plan))))
}
