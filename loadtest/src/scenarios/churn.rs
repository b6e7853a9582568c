//! `churn`: connections that keep coming and going. For `--duration`, `--rate` cycles start per
//! second, each its own connection: connect and upgrade, join one of `--topics`, stay joined for
//! `--stay`, leave (`phx_leave`, waiting for its reply), close. A browser fleet behaves like
//! this all day (tabs opened, pages left, phones waking up).
//!
//! Measures connect, join and leave latency under that churn, how many cycles completed and
//! why the others did not, the server's CPU, and its RSS at the start, at its peak and after the
//! last cycle has settled: growth that stays is memory the connections left behind.
//!
//! Cycles are started on schedule whatever the hub's pace; at most [`ChurnArgs::in_flight`] are
//! open at once and a cycle due when that many are open is skipped (and counted), so a hub that
//! slows down shows as skipped cycles, not as a load generator quietly lowering its rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::idle::settle;
use super::{Ctx, cpu_delta, rss};
use crate::args::ChurnArgs;
use crate::live::Live;
use crate::metrics::{self, Hist, Summary};
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::{self, CLOSE_GRACE};
use crate::{args, phoenix};

/// Read buffer of a cycle's connection: join and leave replies only.
const READ_BUF: usize = 1024;

/// Cycles are started in ticks of this length (as many as are due).
const TICK: Duration = Duration::from_millis(2);

/// Results waiting for the collector. A full queue makes finishing cycles wait for it; the
/// collector only adds to histograms, so it is never the slow side.
const RESULT_QUEUE: usize = 4096;

/// How often the server's RSS is sampled for its peak.
const PEAK_POLL: Duration = Duration::from_millis(250);

/// What one cycle did.
#[derive(Debug)]
struct Cycle {
    /// Connect plus upgrade, and join, when they succeeded.
    opened: Option<session::Opened>,
    /// `phx_leave` to its reply.
    leave: Option<Duration>,
    /// Our close answered by the server.
    closed_clean: bool,
    /// Why the cycle did not complete, if it did not.
    error: Option<String>,
}

/// Totals over every cycle.
#[derive(Debug)]
struct Totals {
    connect: Hist,
    join: Hist,
    leave: Hist,
    completed: u64,
    closed_clean: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs the scenario.
pub async fn run(args: &ChurnArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let topics: Arc<Vec<String>> = Arc::new(
        (0..args.topics)
            .map(|k| phoenix::topic_name(&args.topic_prefix, k))
            .collect(),
    );
    let planned = args::messages_total(args.rate, c.duration);
    let progress = Progress::start(c.progress, ctx.live.clone(), ctx.server.clone(), planned);
    let server_start = ctx.server_sample();
    let own_start = ctx.own_sample();

    let (tx, mut rx) = mpsc::channel::<Cycle>(RESULT_QUEUE);
    let collector = tokio::spawn(async move {
        let mut t = Totals {
            connect: metrics::hist()?,
            join: metrics::hist()?,
            leave: metrics::hist()?,
            completed: 0,
            closed_clean: 0,
            errors: BTreeMap::new(),
        };
        while let Some(cy) = rx.recv().await {
            if let Some(o) = cy.opened {
                metrics::record(&mut t.connect, o.connect);
                metrics::record(&mut t.join, o.join);
            }
            if let Some(l) = cy.leave {
                metrics::record(&mut t.leave, l);
            }
            t.closed_clean += u64::from(cy.closed_clean);
            match cy.error {
                None => t.completed += 1,
                Some(e) => *t.errors.entry(e).or_default() += 1,
            }
        }
        anyhow::Ok(t)
    });

    // The server's RSS peak while cycles come and go.
    let peak_ctx = ctx.clone();
    let peak = tokio::spawn(async move {
        let mut peak = None::<u64>;
        while let Some(s) = peak_ctx.server_sample() {
            peak = Some(peak.map_or(s.rss, |p| p.max(s.rss)));
            if !peak_ctx.sleep(PEAK_POLL).await {
                break;
            }
        }
        peak
    });

    ctx.live.set_phase("churning");
    let slots = Arc::new(Semaphore::new(args.in_flight()));
    let started = Instant::now();
    let mut next = 0u64;
    let mut skipped = 0u64;
    while next < planned && !ctx.stop.is_cancelled() {
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(planned);
        while next < due {
            let index = next as usize;
            next += 1;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let ctx = ctx.clone();
            let topics = topics.clone();
            let tx = tx.clone();
            let stay = args.stay;
            tokio::spawn(async move {
                let cy = cycle(&ctx, index, &topics[index % topics.len()], stay).await;
                drop(permit);
                // The collector only ends after every sender is gone.
                let _ = tx.send(cy).await;
            });
        }
        if !ctx.sleep(TICK).await {
            break;
        }
    }
    let start_s = started.elapsed().as_secs_f64();
    drop(tx);
    ctx.live.set_phase("finishing cycles");
    let mut t = collector.await??;
    let elapsed = started.elapsed();
    let server_done = ctx.server_sample();
    ctx.live.set_phase("settling");
    let settled = if args.settle.is_zero() {
        ctx.server_sample()
    } else {
        settle(&ctx, args.settle).await
    };
    ctx.stop.cancel();
    let peak = peak.await.unwrap_or(None);
    progress.stop().await;
    let own_end = ctx.own_sample();

    let mut r = Report::new("churn");
    r.param("rate", args.rate);
    r.param("stay_s", args.stay.as_secs_f64());
    r.param("topics", args.topics);
    r.param("topic_prefix", args.topic_prefix.clone());
    r.param("in_flight_max", args.in_flight());
    let launched = next - skipped;
    r.figure("cycles_planned", "cycles planned", Num::Int(planned), "");
    r.figure("cycles_started", "cycles started", Num::Int(launched), "");
    r.figure(
        "cycles_skipped",
        "cycles skipped (too many open)",
        Num::Int(skipped),
        "",
    );
    r.figure(
        "cycles_completed",
        "cycles completed",
        Num::Int(t.completed),
        "",
    );
    let ratio = Num::ratio(t.completed, planned);
    r.figure("completed_ratio", "completed / planned", ratio, "");
    r.figure(
        "start_rate",
        "cycles started per second",
        Num::float(launched as f64 / start_s),
        "conns/s",
    );
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(t.closed_clean),
        "",
    );
    r.figure(
        "elapsed_s",
        "first start to last close",
        Num::Float(elapsed.as_secs_f64()),
        "s",
    );
    let cpu = cpu_delta(server_start, server_done);
    r.figure("server_cpu_s", "server CPU, whole run", cpu, "s");
    r.figure(
        "server_cpu_per_cycle_us",
        "server CPU per cycle",
        cpu.as_f64()
            .map_or(Num::Missing, |c| Num::float(c * 1e6 / launched as f64)),
        "µs",
    );
    r.figure(
        "server_rss_start",
        "server RSS at start",
        rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_peak",
        "server RSS peak",
        peak.map_or(Num::Missing, Num::Int),
        "bytes",
    );
    r.figure(
        "server_rss_settled",
        "server RSS after settling",
        rss(settled),
        "bytes",
    );
    let growth = match (server_start, settled) {
        (Some(a), Some(b)) => Num::Float(b.rss as f64 - a.rss as f64),
        _ => Num::Missing,
    };
    r.figure(
        "server_rss_growth",
        "server RSS growth that stayed",
        growth,
        "bytes",
    );
    r.figure(
        "client_cpu_s",
        "loadtest CPU (whole run)",
        cpu_delta(own_start, own_end),
        "s",
    );
    r.latency("connect", "connect+upgrade", Summary::of(&t.connect));
    r.latency("join", "join", Summary::of(&t.join));
    r.latency("leave", "leave", Summary::of(&t.leave));
    r.note(
        "RSS growth that stayed includes what the allocator keeps for reuse; compare runs of \
         different lengths: memory left per connection grows with the cycles, reuse does not",
    );
    r.errors(&std::mem::take(&mut t.errors));
    if let Some(limit) = c.expect_p99 {
        // Connect and join together are what a user waits for; the worse of the two p99s
        // bounds their sum's p99 from below, so check each.
        let hist_p99 = |h: &Hist| (!h.is_empty()).then(|| Summary::of(h).p99_ms);
        r.check(
            "p99 connect+upgrade",
            hist_p99(&t.connect),
            limit,
            true,
            " ms",
        );
        r.check("p99 join", hist_p99(&t.join), limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        r.check(
            "cycles completed / planned",
            ratio.as_f64(),
            limit,
            false,
            "",
        );
    }
    if let Some(limit) = args.expect_rss_growth {
        r.check("server RSS growth", growth.as_f64(), limit, true, " B");
    }
    Ok(r)
}

/// One connection's whole life.
async fn cycle(ctx: &Ctx, index: usize, topic: &str, stay: Duration) -> Cycle {
    let mut out = Cycle {
        opened: None,
        leave: None,
        closed_clean: false,
        error: None,
    };
    let dial = ctx.dial(index, READ_BUF);
    let (mut conn, opened) = match session::open(dial, &ctx.live, &[topic]).await {
        Ok(ok) => ok,
        Err(e) => {
            Live::add(&ctx.live.failed, 1);
            out.error = Some(e.to_string());
            return out;
        }
    };
    Live::add(&ctx.live.joined, 1);
    out.opened = Some(opened);
    // Nothing is published on churn topics, so there is nothing to read while staying; a stop
    // (Ctrl-C) cuts the stay short and the cycle still leaves and closes.
    ctx.sleep(stay).await;
    match session::leave(&mut conn, "1", "2", topic, ctx.common.join_timeout).await {
        Ok(d) => out.leave = Some(d),
        Err(e) => out.error = Some(format!("leave: {e}")),
    }
    out.closed_clean = conn.close(CLOSE_GRACE).await;
    if !out.closed_clean && out.error.is_none() {
        out.error = Some("close not answered".into());
    }
    // Counted as delivered for the progress line: one completed cycle.
    if out.error.is_none() {
        Live::add(&ctx.live.delivered, 1);
    }
    out
}
