//! `mixed`: the hub's workloads at once, as a product's traffic arrives: rooms (WebSocket
//! fan-out), LLM token streams over SSE, connection churn, presence storms and a terminal's
//! output read by a few viewers, in one process
//! against one hub (or several `--url`s). Each part is the scenario of the same name, with its
//! own connections, counters and token role, sized by this scenario's flags; they start
//! together and each stops by itself after `--duration`.
//!
//! The report puts each part's headline figures side by side (its delivery ratio and main p99),
//! the server's CPU and RSS over the whole blend, and every part's errors and checks.
//! `--expect-p99` and `--expect-delivered` apply to every part's headline figures.

use std::future::Future;
use std::sync::Arc;

use super::{Ctx, churn, cpu_delta, presence, rooms, rss, sse, terminal};
use crate::args::MixedArgs;
use crate::report::{Num, Report};
use crate::token;

/// A part's headline figures: which of its figures is the delivery ratio, which latency is
/// the main one, and the keys they get in the mixed report.
struct Headline {
    name: &'static str,
    ratio_key: &'static str,
    /// `None`: the part has no latency figure (terminal output is measured in throughput).
    latency_key: Option<&'static str>,
    out_ratio: &'static str,
    out_ratio_label: &'static str,
    /// Key of the headline figure: the main latency's p99, or throughput without a latency.
    out_main: &'static str,
    out_main_label: &'static str,
}

const ROOMS: Headline = Headline {
    name: "rooms",
    ratio_key: "delivered_ratio",
    latency_key: Some("publish_receive"),
    out_ratio: "rooms_delivered_ratio",
    out_ratio_label: "rooms: delivered / expected",
    out_main: "rooms_p99_ms",
    out_main_label: "rooms: p99 publish→receive",
};

const SSE: Headline = Headline {
    name: "sse",
    ratio_key: "delivered_ratio",
    latency_key: Some("publish_receive"),
    out_ratio: "sse_delivered_ratio",
    out_ratio_label: "sse: delivered / expected",
    out_main: "sse_p99_ms",
    out_main_label: "sse: p99 publish→receive",
};

const CHURN: Headline = Headline {
    name: "churn",
    ratio_key: "completed_ratio",
    latency_key: Some("join"),
    out_ratio: "churn_completed_ratio",
    out_ratio_label: "churn: cycles completed / planned",
    out_main: "churn_join_p99_ms",
    out_main_label: "churn: p99 join",
};

const PRESENCE: Headline = Headline {
    name: "presence",
    ratio_key: "delivered_ratio",
    latency_key: Some("track_diff"),
    out_ratio: "presence_seen_ratio",
    out_ratio_label: "presence: changes seen / expected",
    out_main: "presence_p99_ms",
    out_main_label: "presence: p99 track→diff",
};

const TERMINAL: Headline = Headline {
    name: "terminal",
    ratio_key: "delivered_ratio",
    latency_key: None,
    out_ratio: "terminal_delivered_ratio",
    out_ratio_label: "terminal: in-order bytes / expected",
    out_main: "terminal_mbps",
    out_main_label: "terminal: received by all viewers",
};

/// Runs a part when it is switched on.
async fn maybe<F: Future<Output = anyhow::Result<Report>>>(
    part: Option<F>,
) -> Option<anyhow::Result<Report>> {
    match part {
        Some(f) => Some(f.await),
        None => None,
    }
}

/// Runs the scenario.
pub async fn run(args: &MixedArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let rooms_args = args.rooms_part();
    let sse_args = args.sse_part();
    let churn_args = args.churn_part();
    let presence_args = args.presence_part();
    let terminal_args = args.terminal_part();
    // Each part's context: its role (SSE publishes as the service role, as a backend worker
    // does; the others are ordinary clients) and its share of the open-file limit.
    let rooms_ctx = match &rooms_args {
        Some(a) => Some(ctx.part(&a.common, a.rooms * a.members + 1, token::AUTHENTICATED)?),
        None => None,
    };
    let sse_ctx = match &sse_args {
        Some(a) => Some(ctx.part(&a.common, a.conns + a.publishers(), token::SERVICE_ROLE)?),
        None => None,
    };
    let churn_ctx = match &churn_args {
        Some(a) => Some(ctx.part(&a.common, a.in_flight(), token::AUTHENTICATED)?),
        None => None,
    };
    let presence_ctx = match &presence_args {
        Some(a) => Some(ctx.part(
            &a.common,
            a.topics * (a.trackers + a.watchers),
            token::AUTHENTICATED,
        )?),
        None => None,
    };

    // The terminal's host and viewers: the service role hosts and may view any terminal.
    let terminal_ctx = match &terminal_args {
        Some(a) => Some(ctx.part(&a.common, a.viewers + 1, token::SERVICE_ROLE)?),
        None => None,
    };

    let server_start = ctx.server_sample();
    eprintln!("mixed: starting every part");
    let (r_rooms, r_sse, r_churn, r_presence, r_terminal) = tokio::join!(
        maybe(
            rooms_args
                .as_ref()
                .zip(rooms_ctx)
                .map(|(a, c)| rooms::run(a, c))
        ),
        maybe(sse_args.as_ref().zip(sse_ctx).map(|(a, c)| sse::run(a, c))),
        maybe(
            churn_args
                .as_ref()
                .zip(churn_ctx)
                .map(|(a, c)| churn::run(a, c))
        ),
        maybe(
            presence_args
                .as_ref()
                .zip(presence_ctx)
                .map(|(a, c)| presence::run(a, c))
        ),
        maybe(
            terminal_args
                .as_ref()
                .zip(terminal_ctx)
                .map(|(a, c)| terminal::run(a, c))
        ),
    );
    let server_end = ctx.server_sample();

    let mut r = Report::new("mixed");
    r.param("rooms", args.rooms);
    r.param("members", args.members);
    r.param("room_rate", args.room_rate);
    r.param("streams", args.streams);
    r.param("token_rate", args.token_rate);
    r.param("churn_rate", args.churn_rate);
    r.param("presence_topics", args.presence_topics);
    r.param("presence_rate", args.presence_rate);
    r.param("terminal_viewers", args.terminal_viewers);
    r.param("terminal_mbps", args.terminal_mbps);
    let parts = [
        (ROOMS, r_rooms),
        (SSE, r_sse),
        (CHURN, r_churn),
        (PRESENCE, r_presence),
        (TERMINAL, r_terminal),
    ];
    let mut ran = Vec::new();
    for (h, result) in parts {
        match result {
            None => {}
            Some(Err(e)) => r.error(format!("{}: could not run: {e:#}", h.name), 1),
            Some(Ok(part)) => ran.push((h, part)),
        }
    }
    for (h, part) in &ran {
        let ratio = part.get(h.ratio_key).unwrap_or(Num::Missing);
        r.figure(h.out_ratio, h.out_ratio_label, ratio, "");
        let Some(key) = h.latency_key else {
            // Throughput instead of a latency.
            let mbps = part.get("total_mbps").unwrap_or(Num::Missing);
            r.figure(h.out_main, h.out_main_label, mbps, "MB/s");
            if let Some(limit) = ctx.common.expect_delivered {
                r.check(h.out_ratio_label, ratio.as_f64(), limit, false, "");
            }
            continue;
        };
        let p99 = part
            .latency_of(key)
            .filter(|s| s.count > 0)
            .map(|s| s.p99_ms);
        r.figure(
            h.out_main,
            h.out_main_label,
            p99.map_or(Num::Missing, Num::Float),
            "ms",
        );
        if let Some(limit) = ctx.common.expect_p99 {
            r.check(h.out_main_label, p99, limit, true, " ms");
        }
        if let Some(limit) = ctx.common.expect_delivered {
            r.check(h.out_ratio_label, ratio.as_f64(), limit, false, "");
        }
    }
    if let Some((_, p)) = ran.iter().find(|(h, _)| h.name == "presence") {
        r.figure(
            "presence_views_mismatched",
            "presence: views not equal to the trackers' state",
            p.get("views_mismatched").unwrap_or(Num::Missing),
            "",
        );
    }
    r.figure(
        "server_cpu_s",
        "server CPU, whole blend",
        cpu_delta(server_start, server_end),
        "s",
    );
    r.figure(
        "server_rss_start",
        "server RSS at start",
        rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_end",
        "server RSS at end",
        rss(server_end),
        "bytes",
    );
    for (h, part) in &ran {
        if let Some(s) = h.latency_key.and_then(|k| part.latency_of(k)) {
            r.latency(h.out_main, h.out_main_label, *s);
        }
        r.absorb(part, h.name);
    }
    Ok(r)
}
