//! `pg-feed`: rows inserted into `build_events` reach the viewers of their build session.
//!
//! Creates `--sessions` build sessions in the hub's database, joins `--viewers` connections to
//! each session's topic `build:<id>` (with a service-role token, which may join any session),
//! then inserts `--rate` rows per second for `--duration`, round-robin over the sessions, each
//! in its own transaction, over `--inserters` connections. The database's trigger publishes
//! every row through the hub's outbox; the hub's feed reads it and delivers it as a broadcast
//! whose event is the row's `type` and whose payload is the row, with our stamp in its
//! `payload` object.
//!
//! Measures delivered/expected, duplicates and order per session, insert→receive latency (from
//! just before the INSERT is sent), the INSERTs' own commit times, and the hub's CPU and RSS.
//! The sessions (and, by cascade, their events) are deleted at the end unless `--keep`; the
//! hub's outbox rows stay until its retention removes them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::crowd::{self, Crowd};
use super::inserter::{self, Inserted};
use super::publisher::Plan;
use super::subscriber::Subscriber;
use super::{Ctx, Window, cpu_delta, drain, rss};
use crate::args::PgFeedArgs;
use crate::db;
use crate::metrics::{ShardedHist, Summary};
use crate::proc;
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::End;

/// The event (row `type`) of the rows this scenario inserts.
pub const EVENT: &str = "loadtest";

/// Initial read buffer of a viewer: a row broadcast is about 300 bytes.
const VIEWER_READ_BUF: usize = 4 * 1024;

/// Latency histogram shards (see fanout).
const LATENCY_SHARDS: usize = 16;

/// Rows not delivered to every viewer that the report names, to look up in the outbox.
const MISSED_EXAMPLES: usize = 5;

/// Runs the scenario: sets up the database, measures, and cleans up whatever happened.
pub async fn run(args: &PgFeedArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let config = db::config(&args.database_url)?;
    ctx.live.set_phase("database");
    let admin = db::connect(&args.database_url).await?;
    db::check_schema(&admin).await?;
    let mut inserters = Vec::with_capacity(args.inserters);
    for _ in 0..args.inserters {
        inserters.push(Arc::new(db::connect(&args.database_url).await?));
    }
    let mut ours = Vec::with_capacity(inserters.len());
    for client in &inserters {
        ours.push(db::backend_pid(client).await?);
    }
    let pg = PgCpu {
        db: db::dbname(&config).to_owned(),
        ours,
        before: BTreeMap::new(),
    };
    // From here on every way out goes through the clean-up.
    let ids = db::create_sessions(&admin, args.sessions).await?;
    let measured = measure(args, &ctx, Arc::new(ids.clone()), &inserters, pg).await;
    drop(inserters);
    let cleanup = if args.keep {
        None
    } else {
        Some(db::delete_sessions(&admin, &ids).await)
    };
    let mut report = measured?;
    report.param("database", db::describe(&config));
    match cleanup {
        None => {
            report.param("session_ids", ids);
        }
        Some(Ok(n)) => report.figure(
            "sessions_deleted",
            "sessions deleted at the end",
            Num::Int(n),
            "",
        ),
        Some(Err(e)) => report.error(format!("{e:#}"), 1),
    }
    Ok(report)
}

/// Joins the viewers, inserts, waits for the deliveries and fills the report.
async fn measure(
    args: &PgFeedArgs,
    ctx: &Arc<Ctx>,
    ids: Arc<Vec<String>>,
    inserters: &[Arc<tokio_postgres::Client>],
    mut pg: PgCpu,
) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let conns = args.sessions * args.viewers;
    let topics: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .map(|id| format!("realtime:build:{id}"))
            .collect(),
    );
    let plan = Plan::new(ids.clone(), args.rate, c.duration, 0, EVENT);
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        conns as u64,
    );
    let server_start = ctx.server_sample();
    let own_start = ctx.own_sample();

    ctx.live.set_phase("joining");
    let wire: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
    let event: Arc<str> = Arc::from(EVENT);
    let latency = Arc::new(ShardedHist::new(LATENCY_SHARDS)?);
    let viewers = (0..conns)
        .map(|i| {
            let k = i % topics.len();
            Subscriber::rows(
                wire[k].clone(),
                plan.per_topic(k),
                latency.clone(),
                event.clone(),
            )
        })
        .collect();
    let mut crowd = Crowd::spawn(ctx, 0, topics.clone(), VIEWER_READ_BUF, viewers);
    let opens = crowd.opened(crowd::open_limit(ctx, conns)).await?;
    let server_joined = ctx.server_sample();

    let mut report = Report::new("pg-feed");
    let mut window = Window::default();
    let mut inserted: Option<Inserted> = None;
    let mut expected = 0;
    let mut pg_used = None;
    if opens.joined == 0 {
        report.error("no viewer joined; nothing inserted", 1);
    } else if !ctx.stop.is_cancelled() {
        ctx.live.set_phase("inserting");
        window.mark_start(ctx);
        pg.start();
        match inserter::insert(inserters, &plan, ids.clone(), EVENT, &ctx.stop, &ctx.live).await {
            Ok(ins) => {
                window.start = Some(ins.started);
                window.start_ns = Some(ins.started_ns);
                window.publish_end = Some(ins.started + ins.elapsed);
                window.cpu_publish_end = ctx.server_sample();
                expected = inserter::expected_deliveries(&ins.committed, &opens.per_topic);
                ctx.live.set_phase("draining");
                let deadline = Instant::now() + args.grace;
                window.drain_end = Some(drain(ctx, expected, deadline).await);
                window.mark_end(ctx);
                pg_used = pg.end();
                inserted = Some(ins);
            }
            Err(e) => report.error(format!("inserting rows: {e:#}"), 1),
        }
    }

    ctx.live.set_phase("closing");
    ctx.stop.cancel();
    let (members, lost) = crowd.finish().await;
    progress.stop().await;
    let server_end = ctx.server_sample();
    let own_end = ctx.own_sample();

    let latency = latency.merged()?;
    let mut t = Totals::default();
    for m in &members {
        t.received += m.rx.received;
        t.unique += m.rx.unique();
        t.duplicates += m.rx.duplicates;
        t.out_of_order += m.rx.out_of_order;
        t.unexpected += m.rx.unexpected;
        t.other_events += m.rx.other_events;
        t.last_rx_ns = t.last_rx_ns.max(m.rx.last_rx_ns);
        if let Some(end) = m.end.as_ref().filter(|e| **e != End::Cancelled) {
            report.error(format!("viewer dropped: {}", end.key()), 1);
        }
    }

    let r = &mut report;
    r.param("sessions", args.sessions);
    r.param("viewers_per_session", args.viewers);
    r.param("conns", conns);
    r.param("rate", args.rate);
    r.param("inserters", args.inserters);
    r.param("grace_s", args.grace.as_secs_f64());
    r.param("keep", args.keep);
    r.param("event", EVENT);
    r.figure(
        "sessions",
        "build sessions created",
        Num::Int(ids.len() as u64),
        "",
    );
    r.figure(
        "viewers_requested",
        "viewers requested",
        Num::Int(conns as u64),
        "",
    );
    r.figure(
        "viewers_joined",
        "viewers joined",
        Num::Int(opens.joined),
        "",
    );
    r.figure(
        "viewers_failed",
        "viewers failed",
        Num::Int(opens.failed()),
        "",
    );
    r.figure(
        "open_join_rate",
        "opened+joined per second",
        Num::float(opens.rate()),
        "conns/s",
    );
    r.figure("rows_planned", "rows planned", Num::Int(plan.total), "rows");
    let ins = inserted.as_ref();
    let int_of = |f: fn(&Inserted) -> u64| ins.map_or(Num::Missing, |i| Num::Int(f(i)));
    r.figure(
        "rows_sent",
        "rows inserted (sent)",
        int_of(|i| i.sent),
        "rows",
    );
    let committed = int_of(Inserted::committed_total);
    r.figure("rows_committed", "rows committed", committed, "rows");
    r.figure(
        "rows_overlapping",
        "inserts overlapping one of their session",
        int_of(|i| i.overlapping),
        "",
    );
    r.figure(
        "insert_s",
        "inserting took",
        ins.map_or(Num::Missing, |i| Num::Float(i.elapsed.as_secs_f64())),
        "s",
    );
    r.figure(
        "insert_rate",
        "rows committed per second",
        ins.map_or(Num::Missing, |i| {
            Num::float(i.committed_total() as f64 / i.elapsed.as_secs_f64())
        }),
        "rows/s",
    );
    r.figure("expected", "deliveries expected", Num::Int(expected), "");
    r.figure("delivered", "delivered (distinct)", Num::Int(t.unique), "");
    let ratio = Num::ratio(t.unique, expected);
    r.figure("delivered_ratio", "delivered / expected", ratio, "");
    r.figure("received", "frames received", Num::Int(t.received), "");
    r.figure("duplicates", "duplicates", Num::Int(t.duplicates), "");
    r.figure("out_of_order", "out of order", Num::Int(t.out_of_order), "");
    r.figure(
        "unexpected",
        "unexpected frames",
        Num::Int(t.unexpected),
        "",
    );
    r.figure(
        "other_events",
        "other events on the topics",
        Num::Int(t.other_events),
        "",
    );
    let delivery_s = match window.start_ns {
        Some(s) if t.last_rx_ns > s => Some((t.last_rx_ns - s) as f64 / 1e9),
        _ => None,
    };
    r.figure(
        "delivery_s",
        "first row due to last delivery",
        delivery_s.map_or(Num::Missing, Num::Float),
        "s",
    );
    r.figure(
        "deliveries_per_s",
        "deliveries per second",
        delivery_s.map_or(Num::Missing, |d| Num::float(t.unique as f64 / d)),
        "msgs/s",
    );
    let cpu = window.server_cpu();
    r.figure(
        "server_cpu_s",
        "server CPU, first insert to drain",
        cpu,
        "s",
    );
    r.figure(
        "server_cpu_pct",
        "server CPU utilisation then",
        match (cpu.as_f64(), window.drain_s()) {
            (Some(c), Some(d)) => Num::float(c / d * 100.0),
            _ => Num::Missing,
        },
        "%",
    );
    r.figure(
        "server_cpu_insert_s",
        "server CPU while inserting",
        cpu_delta(window.cpu_start, window.cpu_publish_end),
        "s",
    );
    r.figure(
        "server_cpu_us_per_delivery",
        "server CPU per delivery",
        cpu.as_f64()
            .map_or(Num::Missing, |c| Num::float(c * 1e6 / t.unique as f64)),
        "µs",
    );
    r.figure(
        "client_cpu_window_s",
        "loadtest CPU, first insert to drain",
        window.own_cpu(),
        "s",
    );
    r.figure(
        "other_cpu_s",
        "other processes' CPU then (Postgres too)",
        window.other_cpu(),
        "s",
    );
    let (pg_ours, pg_rest) = match pg_used {
        Some((ours, rest)) => (
            Num::Float(ours.as_secs_f64()),
            Num::Float(rest.as_secs_f64()),
        ),
        None => (Num::Missing, Num::Missing),
    };
    r.figure(
        "pg_cpu_inserters_s",
        "Postgres CPU, our inserting backends",
        pg_ours,
        "s",
    );
    r.figure(
        "pg_cpu_others_s",
        "Postgres CPU, the db's other backends",
        pg_rest,
        "s",
    );
    r.figure(
        "server_rss_start",
        "server RSS at start",
        rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_joined",
        "server RSS viewers joined",
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
    let clean = members.iter().filter(|m| m.closed_clean).count() as u64;
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(clean),
        "",
    );
    r.latency("insert_receive", "insert→receive", Summary::of(&latency));
    if let Some(i) = ins {
        r.latency("insert_commit", "insert→commit ack", Summary::of(&i.commit));
        r.latency(
            "insert_behind",
            "insert behind schedule",
            Summary::of(&i.behind),
        );
    }
    r.latency("connect", "connect+upgrade", Summary::of(&opens.connect));
    r.latency("join", "join", Summary::of(&opens.join));
    r.note(
        "insert→receive runs from just before each INSERT is sent (stamped on loadtest's clock) \
         to the socket read that brought the row to a viewer: statement, trigger, commit, \
         NOTIFY, the hub's outbox read and the WebSocket delivery",
    );
    r.note(
        "insert→commit ack has the same start and ends at the INSERT's reply on its own \
         connection; insert behind schedule is how late the INSERT went out after its row was due",
    );
    r.note(
        "Postgres CPU is read from /proc for the backends serving the database (our inserters, \
         and the others: the hub's pool and listener, autovacuum); shared background processes \
         (WAL writer, checkpointer) are not included",
    );
    if let Some(i) = ins {
        let by_session: HashMap<&str, usize> = topics
            .iter()
            .enumerate()
            .map(|(k, t)| (t.as_str(), k))
            .collect();
        let mut viewers: Vec<Vec<&Subscriber>> = vec![Vec::new(); topics.len()];
        for m in members.iter().filter(|m| m.end.is_some()) {
            if let Some(&k) = by_session.get(m.rx.topic()) {
                viewers[k].push(&m.rx);
            }
        }
        let missed = missed_rows(&plan, |row| i.row_committed(row), &viewers);
        r.figure(
            "rows_missed_by_all",
            "rows no viewer of their session got",
            Num::Int(missed.by_all),
            "rows",
        );
        r.figure(
            "rows_missed_by_some",
            "rows some viewers of their session missed",
            Num::Int(missed.by_some),
            "rows",
        );
        if !missed.examples.is_empty() {
            let mut text =
                String::from("rows missing (session, s = payload.s, viewers missing it):");
            for (k, seq, n) in &missed.examples {
                let _ = write!(text, " {} s={seq} ({n} of {});", ids[*k], viewers[*k].len());
            }
            r.note(text);
        }
    }
    r.errors(&opens.errors);
    if let Some(i) = ins {
        r.errors(&i.errors);
        if let Some(why) = &i.stopped {
            r.error(format!("inserting: {why}"), 1);
        }
        if i.committed_total() > 0 && t.received == 0 && !ctx.interrupted.load(Ordering::Relaxed) {
            r.error(
                "no row reached a viewer: is the hub serving from this database (DATABASE_URL)?",
                1,
            );
        }
    }
    r.error("task did not end in time", lost);

    if let Some(limit) = c.expect_p99 {
        let p99 = (!latency.is_empty()).then(|| Summary::of(&latency).p99_ms);
        r.check("p99 insert→receive", p99, limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        r.check("delivered/expected", ratio.as_f64(), limit, false, "");
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
    Ok(report)
}

/// Viewer totals.
#[derive(Debug, Default)]
struct Totals {
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    other_events: u64,
    /// Latest receive time over all viewers, ns on [`crate::clock`].
    last_rx_ns: u64,
}

/// CPU of the Postgres backends serving the run's database, read from /proc.
#[derive(Debug)]
struct PgCpu {
    /// Database name, as it appears in the backends' process titles.
    db: String,
    /// Backends of our inserting connections.
    ours: Vec<u32>,
    /// CPU per backend at the start.
    before: BTreeMap<u32, Duration>,
}

impl PgCpu {
    fn start(&mut self) {
        self.before = proc::cpu_by_pid(&proc::postgres_backends(&self.db));
    }

    /// CPU used since [`start`](Self::start) by our backends and by the others; `None` when no
    /// backend could be seen (Postgres on another machine, or not readable).
    fn end(&self) -> Option<(Duration, Duration)> {
        let after = proc::cpu_by_pid(&proc::postgres_backends(&self.db));
        if after.is_empty() {
            return None;
        }
        Some(proc::cpu_split(&self.before, &after, &self.ours))
    }
}

/// Committed rows that did not reach every joined viewer of their session.
#[derive(Debug, Default, PartialEq, Eq)]
struct Missed {
    /// Rows no viewer got: the hub never delivered them.
    by_all: u64,
    /// Rows some viewers got and others did not: lost on the way to single connections.
    by_some: u64,
    /// The first few: (session number, sequence number, viewers that missed it).
    examples: Vec<(usize, u64, usize)>,
}

/// Checks every committed row of `plan` (`committed(i)`) against the joined viewers of its
/// session (`viewers[k]` for session `k`).
fn missed_rows(
    plan: &Plan,
    committed: impl Fn(u64) -> bool,
    viewers: &[Vec<&Subscriber>],
) -> Missed {
    let mut out = Missed::default();
    for i in (0..plan.total).filter(|&i| committed(i)) {
        let (k, seq) = plan.slot(i);
        let Some(v) = viewers.get(k).filter(|v| !v.is_empty()) else {
            continue;
        };
        let missing = v.iter().filter(|s| !s.has_seen(seq)).count();
        if missing == 0 {
            continue;
        }
        if missing == v.len() {
            out.by_all += 1;
        } else {
            out.by_some += 1;
        }
        if out.examples.len() < MISSED_EXAMPLES {
            out.examples.push((k, seq, missing));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Receiver as _;
    use bytes::Bytes;
    use channels::Payload;
    use channels::codec::binary::encode_user_broadcast;

    fn row(topic: &str, s: u64) -> Vec<u8> {
        let json = format!(r#"{{"type": "loadtest", "payload": {{"s": {s}, "t": 1}}}}"#);
        encode_user_broadcast(topic, EVENT, &Payload::Json(Bytes::from(json)), "").unwrap()
    }

    #[test]
    fn rows_missed_by_all_or_some_viewers_are_told_apart() {
        let topics = Arc::new(vec!["a".to_owned(), "b".to_owned()]);
        // 6 rows over 2 sessions: session 0 gets s = 0, 1, 2 (rows 0, 2, 4), session 1 the rest.
        let plan = Plan::new(topics, 6, Duration::from_secs(1), 0, EVENT);
        let hist = Arc::new(ShardedHist::new(1).unwrap());
        let viewer = |topic: &str, seqs: &[u64]| {
            let mut v = Subscriber::rows(topic.into(), 3, hist.clone(), EVENT.into());
            v.batch_start();
            for &s in seqs {
                v.binary(&row(topic, s));
            }
            v
        };
        let (a1, a2) = (viewer("a", &[0, 1, 2]), viewer("a", &[0, 2]));
        let b1 = viewer("b", &[0, 1]);
        let viewers = vec![vec![&a1, &a2], vec![&b1]];
        // Row 5 (session 1, s = 2) was never committed, so it is not missing.
        let missed = missed_rows(&plan, |i| i != 5, &viewers);
        assert_eq!(
            missed,
            Missed {
                by_all: 0,
                by_some: 1,
                examples: vec![(0, 1, 1)],
            }
        );
        let missed = missed_rows(&plan, |_| true, &viewers);
        assert_eq!((missed.by_all, missed.by_some), (1, 1));
        assert_eq!(missed.examples, vec![(0, 1, 1), (1, 2, 1)]);
        // A session without joined viewers expects nothing.
        assert_eq!(
            missed_rows(&plan, |_| true, &[vec![&a1], vec![]]),
            Missed::default()
        );
    }
}
