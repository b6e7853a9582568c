//! `flood`: the abuse figure of the security issue in one command. The same crowd (`--conns`
//! subscribers, one publisher at `--rate`) is measured twice on fresh topics: quiet, then with
//! one client flooding joins (`--joins`/s, each on a new topic) and broadcasts (`--messages`/s)
//! far above its limits for the whole publishing window (see [`super::flooder`]). The report is
//! the flooded run's, plus the quiet run's latency and delivery and the p99 ratio, so "the
//! flooder is limited, not the others" reads off one table: the crowd's delivery and p99 beside
//! what the hub refused the flooder.
//!
//! The quiet run goes first so the flooder's leftovers (closed channels, rate-limit state)
//! cannot weigh on it; each run opens its own connections.

use std::sync::Arc;

use super::{Ctx, fanout};
use crate::args::FloodArgs;
use crate::report::{Num, Report};
use crate::token;

/// Runs the scenario.
pub async fn run(args: &FloodArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    eprintln!("flood: quiet run");
    let quiet = fanout::run(&args.phase(false), ctx.clone()).await?;
    if ctx.is_interrupted() {
        let mut r = quiet;
        r.set_scenario("flood");
        return Ok(r);
    }
    eprintln!("flood: flooded run");
    let again = ctx.part(&ctx.common, args.spread.conns + 2, token::AUTHENTICATED)?;
    let mut r = fanout::run(&args.phase(true), again).await?;
    r.set_scenario("flood");
    r.param("joins", args.joins);
    r.param("messages", args.messages);
    r.param("rate", args.rate);

    let quiet_lat = quiet.latency_of("publish_receive").cloned();
    let flood_lat = r.latency_of("publish_receive").cloned();
    let ms = |s: &Option<crate::metrics::Summary>, f: fn(&crate::metrics::Summary) -> f64| {
        s.as_ref()
            .filter(|s| s.count > 0)
            .map_or(Num::Missing, |s| Num::Float(f(s)))
    };
    r.figure(
        "quiet_p50_ms",
        "quiet run: p50 publish→receive",
        ms(&quiet_lat, |s| s.p50_ms),
        "ms",
    );
    r.figure(
        "quiet_p99_ms",
        "quiet run: p99 publish→receive",
        ms(&quiet_lat, |s| s.p99_ms),
        "ms",
    );
    r.figure(
        "flood_p99_ms",
        "flooded run: p99 publish→receive",
        ms(&flood_lat, |s| s.p99_ms),
        "ms",
    );
    let ratio = match (
        ms(&flood_lat, |s| s.p99_ms).as_f64(),
        ms(&quiet_lat, |s| s.p99_ms).as_f64(),
    ) {
        (Some(f), Some(q)) if q > 0.0 => Num::float(f / q),
        _ => Num::Missing,
    };
    r.figure("p99_ratio", "p99 flooded / quiet", ratio, "×");
    r.figure(
        "quiet_delivered_ratio",
        "quiet run: delivered / expected",
        quiet.get("delivered_ratio").unwrap_or(Num::Missing),
        "",
    );
    r.figure(
        "quiet_server_cpu_pct",
        "quiet run: server CPU utilisation",
        quiet.get("server_cpu_pct").unwrap_or(Num::Missing),
        "%",
    );
    if let Some(q) = quiet_lat {
        r.latency("quiet_publish_receive", "publish→receive, quiet run", q);
    }
    r.note(
        "the figures above the quiet ones are the flooded run's; the crowd's topics are not \
         the flooder's, so what reaches the crowd is only what the hub's limits let cost it",
    );
    r.absorb(&quiet, "quiet run");
    if let Some(limit) = args.expect_ratio {
        r.check("p99 flooded / quiet", ratio.as_f64(), limit, true, "×");
    }
    Ok(r)
}
