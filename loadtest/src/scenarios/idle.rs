//! `idle`: open `--conns` connections, each joined to one of `--topics` topics, hold them
//! (heartbeating) for `--duration`, then close them.
//!
//! Measures how fast connections open and join (connect and join histograms, joined per
//! second) and what an idle joined connection costs the server: RSS before opening and after
//! the server's RSS has settled, divided by the connections joined.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crowd::{Crowd, open_limit};
use super::{Ctx, cpu_delta, rss, rss_delta};
use crate::args::IdleArgs;
use crate::live::Live;
use crate::metrics::Summary;
use crate::phoenix;
use crate::proc::{self, Sample};
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::Ignore;

/// Initial read buffer of an idle connection: a join reply or heartbeat reply fits; the buffer
/// grows if anything larger arrives.
const READ_BUF: usize = 512;

/// How often the server's RSS is read while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// RSS is settled when it moved less than the tolerance over this window.
const SETTLE_WINDOW: Duration = Duration::from_secs(1);

/// Runs the scenario.
pub async fn run(args: &IdleArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let sp = &args.spread;
    let topics: Arc<Vec<String>> = Arc::new(
        (0..sp.topics)
            .map(|k| phoenix::topic_name(&sp.topic_prefix, k))
            .collect(),
    );
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        sp.conns as u64,
    );
    let server_before = ctx.server_sample();
    let own_before = ctx.own_sample();
    let machine_before = proc::machine_busy();

    // Warm-up crowd: its RSS growth includes the server's one-off costs; the main crowd's
    // growth over it is the marginal cost of a connection.
    let warmup = args.warmup.unwrap_or(sp.conns / 10).min(sp.conns);
    let mut warm = None;
    let mut server_mid = None;
    let mut cpu_open = Some(std::time::Duration::ZERO);
    if warmup > 0 {
        ctx.live.set_phase("warming up");
        let mut crowd = Crowd::spawn(&ctx, 0, topics.clone(), READ_BUF, vec![Ignore; warmup]);
        let opens = crowd.opened(open_limit(&ctx, warmup)).await?;
        cpu_open = add_cpu(cpu_open, server_before, ctx.server_sample());
        ctx.live.set_phase("settling");
        server_mid = settle(&ctx, args.settle).await;
        warm = Some((crowd, opens));
    }

    ctx.live.set_phase("opening");
    let main = sp.conns - warmup;
    let cpu_main_start = ctx.server_sample();
    let mut crowd = Crowd::spawn(&ctx, warmup, topics, READ_BUF, vec![Ignore; main]);
    let mut opens = crowd.opened(open_limit(&ctx, main)).await?;
    let main_joined = opens.joined;
    cpu_open = add_cpu(cpu_open, cpu_main_start, ctx.server_sample());
    let server_opened = ctx.server_sample();
    let mut warm_crowd = None;
    if let Some((crowd, warm_opens)) = warm {
        opens.absorb(warm_opens)?;
        warm_crowd = Some(crowd);
    }

    ctx.live.set_phase("settling");
    let t_settle = Instant::now();
    let server_settled = settle(&ctx, args.settle).await.or(server_opened);
    let settle_time = t_settle.elapsed();

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
    let machine_after = proc::machine_busy();

    let mut r = Report::new("idle");
    r.param("settle_limit_s", args.settle.as_secs_f64());
    r.figure(
        "conns_requested",
        "connections requested",
        Num::Int(sp.conns as u64),
        "",
    );
    r.figure(
        "conns_joined",
        "connections joined",
        Num::Int(opens.joined),
        "",
    );
    r.figure(
        "conns_failed",
        "connections failed",
        Num::Int(opens.failed()),
        "",
    );
    r.figure(
        "joined_ratio",
        "joined / requested",
        Num::ratio(opens.joined, sp.conns as u64),
        "",
    );
    r.figure(
        "open_s",
        "open+join phase",
        Num::Float(opens.elapsed.as_secs_f64()),
        "s",
    );
    r.figure(
        "open_join_rate",
        "opened+joined per second",
        Num::float(opens.rate()),
        "conns/s",
    );
    r.figure(
        "server_cpu_open_s",
        "server CPU during open+join",
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
        "server_rss_joined",
        "server RSS joined+settled",
        rss(server_settled),
        "bytes",
    );
    r.figure(
        "settle_s",
        "RSS settle wait",
        Num::Float(settle_time.as_secs_f64()),
        "s",
    );
    let growth = rss_delta(server_before, server_settled);
    r.figure("server_rss_growth", "server RSS growth", growth, "bytes");
    r.figure(
        "rss_per_conn",
        "server RSS per joined connection",
        per_conn(growth, opens.joined),
        "bytes",
    );
    r.figure(
        "warmup_conns",
        "warm-up connections",
        Num::Int(warmup as u64),
        "",
    );
    r.figure(
        "server_rss_warm",
        "server RSS after warm-up",
        rss(server_mid),
        "bytes",
    );
    r.figure(
        "rss_per_conn_marginal",
        "server RSS per connection after warm-up",
        per_conn(rss_delta(server_mid, server_settled), main_joined),
        "bytes",
    );
    r.figure(
        "hold_s",
        "held for",
        Num::Float(held_for.as_secs_f64()),
        "s",
    );
    r.figure(
        "conns_open_at_end",
        "connections open at end of hold",
        Num::Int(open_at_end),
        "",
    );
    r.figure(
        "server_rss_held",
        "server RSS end of hold",
        rss(server_held),
        "bytes",
    );
    r.figure(
        "heartbeats",
        "heartbeats sent",
        Num::Int(Live::get(&ctx.live.heartbeats)),
        "",
    );
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
    let other = match (machine_before, machine_after) {
        (Some(a), Some(b)) => {
            let server = cpu_delta(server_before, server_closed)
                .as_f64()
                .unwrap_or(0.0);
            let own = cpu_delta(own_before, own_after).as_f64().unwrap_or(0.0);
            Num::Float((b.saturating_sub(a).as_secs_f64() - server - own).max(0.0))
        }
        _ => Num::Missing,
    };
    r.figure(
        "other_cpu_s",
        "other processes' CPU (whole run)",
        other,
        "s",
    );
    r.latency("connect", "connect+upgrade", Summary::of(&opens.connect));
    r.latency("join", "join", Summary::of(&opens.join));
    r.errors(&opens.errors);
    for m in &members {
        if let Some(end) = m
            .end
            .as_ref()
            .filter(|e| **e != crate::session::End::Cancelled)
        {
            r.error(format!("dropped while held: {}", end.key()), 1);
        }
    }
    r.error("task did not end in time", lost);

    if let Some(limit) = c.expect_p99 {
        r.check("p99 join", opens.join_p99(), limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        let ratio = r.get("joined_ratio").and_then(Num::as_f64);
        r.check("joined/requested", ratio, limit, false, "");
    }
    if let Some(limit) = args.expect_rss_per_conn {
        // The marginal figure when there was a warm-up: that is the per-connection cost.
        let key = if warmup > 0 {
            "rss_per_conn_marginal"
        } else {
            "rss_per_conn"
        };
        let v = r.get(key).and_then(Num::as_f64);
        r.check("server RSS per connection", v, limit, true, " bytes");
    }
    if let Some(limit) = args.expect_rate {
        r.check(
            "opened+joined per second",
            Some(opens.rate()),
            limit,
            false,
            " conns/s",
        );
    }
    Ok(r)
}

/// Adds the CPU time between two samples to a running total (`None` once any is missing).
pub(super) fn add_cpu(
    total: Option<Duration>,
    from: Option<Sample>,
    to: Option<Sample>,
) -> Option<Duration> {
    Some(total? + to?.cpu.saturating_sub(from?.cpu))
}

/// Bytes per connection, when both are known.
pub(super) fn per_conn(growth: Num, conns: u64) -> Num {
    match growth.as_f64() {
        Some(g) if conns > 0 => Num::Float(g / conns as f64),
        _ => Num::Missing,
    }
}

/// Waits until the server's RSS stops moving (bounded by `limit`) and returns the last sample.
pub(super) async fn settle(ctx: &Ctx, limit: Duration) -> Option<Sample> {
    let procs = ctx.server.as_ref()?;
    let start = Instant::now();
    let mut history: Vec<(Duration, u64)> = Vec::new();
    let mut last = None;
    loop {
        if let Ok(s) = procs.sample() {
            history.push((start.elapsed(), s.rss));
            last = Some(s);
        }
        if is_settled(&history, SETTLE_WINDOW) || start.elapsed() >= limit {
            return last;
        }
        if !ctx.sleep(SETTLE_POLL).await {
            return last;
        }
    }
}

/// Whether the latest RSS differs from the one at least `window` earlier by less than
/// 64 KiB plus 0.1 %: allocator noise, not connections still being set up.
fn is_settled(history: &[(Duration, u64)], window: Duration) -> bool {
    let Some(&(t_now, rss_now)) = history.last() else {
        return false;
    };
    let Some(&(_, rss_then)) = history.iter().rev().find(|(t, _)| t_now - *t >= window) else {
        return false;
    };
    rss_now.abs_diff(rss_then) <= 64 * 1024 + rss_now / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn settling_needs_a_full_quiet_window() {
        let w = ms(1000);
        assert!(!is_settled(&[], w));
        assert!(!is_settled(&[(ms(0), 100 << 20), (ms(500), 100 << 20)], w));
        let quiet = [
            (ms(0), 100 << 20),
            (ms(500), 110 << 20),
            (ms(1500), 110 << 20),
        ];
        assert!(is_settled(&quiet, w));
        let growing = [(ms(0), 100 << 20), (ms(1000), 101 << 20)];
        assert!(!is_settled(&growing, w));
    }

    #[test]
    fn per_connection_growth() {
        assert_eq!(per_conn(Num::Float(40_960.0), 10), Num::Float(4096.0));
        assert_eq!(per_conn(Num::Float(1.0), 0), Num::Missing);
        assert_eq!(per_conn(Num::Missing, 10), Num::Missing);
    }
}
