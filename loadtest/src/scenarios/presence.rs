//! `presence`: presence storms. Each of `--topics` topics has `--trackers` connections that
//! track and untrack in turn (each under its own key, `--rate` changes per second on the topic
//! in total) and `--watchers` connections that follow the topic's presence the way
//! realtime-js does: the `presence_state` after joining, then every `presence_diff`.
//!
//! Measures track→diff latency at the watchers (each track carries its send time), presence
//! changes seen against those the trackers had acknowledged, and, the strongest check, whether
//! every watcher ends with exactly the set of keys the trackers left tracked. A watcher's view
//! is frozen once the storm is over and its last diffs had time to arrive, so the leaves of the
//! final teardown are not counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use channels::codec::{Body, Ref, v2};
use channels::ws_frame::Opcode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::crowd::{self, Crowd};
use super::{Ctx, cpu_delta, drain};
use crate::args::PresenceArgs;
use crate::client::WsConn;
use crate::live::Live;
use crate::metrics::{ShardedHist, Summary};
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::{self, CLOSE_GRACE, Receiver};
use crate::{clock, phoenix};

/// Read buffer of a watcher or tracker: a presence state of a few dozen keys fits.
const READ_BUF: usize = 8 * 1024;

/// Latency histogram shards (see [`ShardedHist`]).
const LATENCY_SHARDS: usize = 16;

/// Longest a tracker waits for its last replies after the storm.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Runs the scenario.
pub async fn run(args: &PresenceArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let prefix = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("presence-{}", std::process::id()));
    let topics: Arc<Vec<String>> = Arc::new(
        (0..args.topics)
            .map(|k| phoenix::topic_name(&prefix, k))
            .collect(),
    );
    let watchers_n = args.topics * args.watchers;
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        (watchers_n + args.topics * args.trackers) as u64,
    );

    ctx.live.set_phase("joining watchers");
    let latency = Arc::new(ShardedHist::new(LATENCY_SHARDS)?);
    let frozen = Arc::new(AtomicBool::new(false));
    let views = (0..watchers_n)
        .map(|_| View::new(latency.clone(), frozen.clone()))
        .collect();
    let mut crowd = Crowd::spawn_joining(&ctx, 0, topics.clone(), READ_BUF, views, |jr, t| {
        phoenix::join_presence(jr, t, "")
    });
    let opens = crowd.opened(crowd::open_limit(&ctx, watchers_n)).await?;

    ctx.live.set_phase("storming");
    let server_start = ctx.server_sample();
    // Each tracker changes every `period`; trackers of a topic are spread evenly over it.
    let period = Duration::from_secs_f64(args.trackers as f64 / args.rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let until = start + c.duration;
    let tally = Arc::new(Tally::new(args.topics));
    let mut trackers = Vec::with_capacity(args.topics * args.trackers);
    for k in 0..args.topics {
        for j in 0..args.trackers {
            let plan = TrackerPlan {
                index: watchers_n + k * args.trackers + j,
                topic_no: k,
                topic: topics[k].clone(),
                key: format!("t{k}-{j}"),
                first: start + period.mul_f64(j as f64 / args.trackers as f64),
                period,
                until,
            };
            let task = tracker(ctx.clone(), plan, tally.clone());
            trackers.push((k, tokio::spawn(task)));
        }
    }
    ctx.sleep(until.saturating_duration_since(Instant::now()))
        .await;
    let publish_end = Instant::now();

    // The expected count is only final once every change has its reply.
    let deadline = publish_end + REPLY_WAIT;
    while Instant::now() < deadline
        && tally.pending.load(Ordering::Relaxed) > 0
        && !ctx.stop.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expected: u64 = tally
        .acked
        .iter()
        .enumerate()
        .map(|(k, n)| n.load(Ordering::Relaxed) * opens.per_topic.get(k).copied().unwrap_or(0))
        .sum();
    ctx.live.set_phase("draining");
    let drain_end = drain(&ctx, expected, Instant::now() + args.grace).await;
    frozen.store(true, Ordering::Release);
    let server_end = ctx.server_sample();

    ctx.live.set_phase("closing");
    ctx.stop.cancel();
    let mut done = Vec::with_capacity(trackers.len());
    for (k, h) in trackers {
        done.push((k, h.await?));
    }
    let (members, lost) = crowd.finish().await;
    progress.stop().await;

    // What the trackers left tracked, per topic.
    let mut truth: Vec<Vec<String>> = vec![Vec::new(); args.topics];
    let mut t = TrackerTotals::default();
    for (k, st) in &done {
        t.sent += st.sent;
        t.acked += st.acked;
        t.refused += st.refused;
        t.unanswered += st.unanswered;
        if st.tracked {
            truth[*k].push(st.key.clone());
        }
        if let Some(e) = &st.error {
            t.errors.push(e.clone());
        }
    }
    for keys in &mut truth {
        keys.sort();
    }
    let mut seen = 0u64;
    let mut mismatched = 0u64;
    let mut no_state = 0u64;
    let mut checked = 0u64;
    for m in members.iter().filter(|m| m.end.is_some()) {
        seen += m.rx.changes;
        checked += 1;
        if !m.rx.has_state {
            no_state += 1;
        }
        let topic = m.index % args.topics;
        if m.rx.keys() != truth[topic] {
            mismatched += 1;
        }
    }

    let latency = latency.merged()?;
    let mut r = Report::new("presence");
    r.param("topics", args.topics);
    r.param("trackers", args.trackers);
    r.param("watchers", args.watchers);
    r.param("rate", args.rate);
    r.param("topic_prefix", prefix);
    r.figure(
        "watchers_joined",
        "watchers joined",
        Num::Int(opens.joined),
        "",
    );
    r.figure(
        "changes_sent",
        "tracks and untracks sent",
        Num::Int(t.sent),
        "",
    );
    r.figure("changes_acked", "answered ok", Num::Int(t.acked), "");
    r.figure("changes_refused", "refused", Num::Int(t.refused), "");
    r.figure(
        "changes_unanswered",
        "not answered in time",
        Num::Int(t.unanswered),
        "",
    );
    r.figure(
        "expected",
        "changes watchers should see",
        Num::Int(expected),
        "",
    );
    r.figure("seen", "changes watchers saw", Num::Int(seen), "");
    let ratio = Num::ratio(seen, expected);
    r.figure("delivered_ratio", "seen / expected", ratio, "");
    r.figure(
        "watchers_checked",
        "watcher views compared",
        Num::Int(checked),
        "",
    );
    r.figure(
        "views_mismatched",
        "views not equal to the trackers' state",
        Num::Int(mismatched),
        "",
    );
    r.figure(
        "views_without_state",
        "watchers that got no presence_state",
        Num::Int(no_state),
        "",
    );
    r.figure(
        "drain_s",
        "storm end to last change seen",
        Num::Float(
            drain_end
                .saturating_duration_since(publish_end)
                .as_secs_f64(),
        ),
        "s",
    );
    let cpu = cpu_delta(server_start, server_end);
    r.figure("server_cpu_s", "server CPU, storm and drain", cpu, "s");
    r.latency("track_diff", "track→presence_diff", Summary::of(&latency));
    r.latency("join", "watcher join", Summary::of(&opens.join));
    r.errors(&opens.errors);
    for e in t.errors {
        r.error(format!("tracker: {e}"), 1);
    }
    for m in &members {
        if let Some(end) = m.end.as_ref().filter(|e| **e != session::End::Cancelled) {
            r.error(format!("watcher dropped: {}", end.key()), 1);
        }
    }
    r.error("task did not end in time", lost);
    r.check(
        "watcher views equal to the trackers' state (mismatches)",
        Some(mismatched as f64),
        0.0,
        true,
        "",
    );
    if let Some(limit) = c.expect_p99 {
        let p99 = (!latency.is_empty()).then(|| Summary::of(&latency).p99_ms);
        r.check("p99 track→presence_diff", p99, limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        r.check("changes seen / expected", ratio.as_f64(), limit, false, "");
    }
    Ok(r)
}

/// Changes acknowledged per topic and changes still unanswered, kept by the trackers as replies
/// arrive, so the coordinator knows how many diffs the watchers should see.
#[derive(Debug)]
struct Tally {
    acked: Vec<AtomicU64>,
    pending: AtomicU64,
}

impl Tally {
    fn new(topics: usize) -> Self {
        Self {
            acked: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            pending: AtomicU64::new(0),
        }
    }
}

/// One tracker's schedule.
#[derive(Debug)]
struct TrackerPlan {
    index: usize,
    topic_no: usize,
    topic: String,
    key: String,
    first: Instant,
    period: Duration,
    until: Instant,
}

/// What one tracker did.
#[derive(Debug, Default)]
struct TrackerStats {
    key: String,
    sent: u64,
    acked: u64,
    refused: u64,
    unanswered: u64,
    /// Whether its key was tracked when the storm ended (by the replies it got).
    tracked: bool,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct TrackerTotals {
    sent: u64,
    acked: u64,
    refused: u64,
    unanswered: u64,
    errors: Vec<String>,
}

/// Tracks and untracks on schedule until `until`, then holds its connection (its presence
/// stays) until the run stops.
async fn tracker(ctx: Arc<Ctx>, plan: TrackerPlan, tally: Arc<Tally>) -> TrackerStats {
    let mut st = TrackerStats {
        key: plan.key.clone(),
        ..TrackerStats::default()
    };
    let key = plan.key.clone();
    let dial = ctx.dial(plan.index, READ_BUF);
    let opened = session::open_with(dial, &ctx.live, &[&plan.topic], |jr, t| {
        phoenix::join_presence(jr, t, &key)
    })
    .await;
    let mut conn = match opened {
        Ok((conn, _)) => conn,
        Err(e) => {
            st.error = Some(format!("open: {e}"));
            return st;
        }
    };
    Live::add(&ctx.live.joined, 1);
    // msg ref → whether it was a track.
    let mut pending: HashMap<u64, bool> = HashMap::new();
    let mut next_ref = 10u64;
    let mut n = 0u32;
    let mut beat = tokio::time::interval(ctx.common.heartbeat);
    beat.tick().await;
    let stop = ctx.stop.clone();
    loop {
        let due = plan.first + plan.period * n;
        let toggling = due < plan.until;
        let wake = if toggling {
            due
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = beat.tick() => {
                next_ref += 1;
                if conn.send_within(REPLY_WAIT, Opcode::Text, &phoenix::heartbeat(next_ref)).await.is_err() {
                    st.error = Some("heartbeat write".into());
                    break;
                }
            }
            _ = tokio::time::sleep_until(wake.into()), if toggling => {
                n += 1;
                next_ref += 1;
                let track = !st.tracked_or_pending(&pending);
                let payload = format!(r#"{{"t":{},"k":"{}"}}"#, clock::now_ns(), plan.key);
                let frame = phoenix::presence(
                    "1",
                    &next_ref.to_string(),
                    &plan.topic,
                    track.then_some(payload.as_str()),
                );
                if conn.send_within(REPLY_WAIT, Opcode::Text, &frame).await.is_err() {
                    st.error = Some("presence write".into());
                    break;
                }
                st.sent += 1;
                tally.pending.fetch_add(1, Ordering::Relaxed);
                pending.insert(next_ref, track);
            }
            read = conn.read_some() => {
                match read {
                    Ok(0) | Err(_) => {
                        st.error = Some("closed by the hub".into());
                        break;
                    }
                    Ok(_) => {}
                }
                if let Err(e) = read_replies(&mut conn, &mut pending, &mut st, &tally, plan.topic_no).await {
                    st.error = Some(e);
                    break;
                }
            }
        }
    }
    let left = pending.len() as u64;
    st.unanswered += left;
    tally.pending.fetch_sub(left, Ordering::Relaxed);
    conn.close(CLOSE_GRACE).await;
    st
}

impl TrackerStats {
    /// Whether the key is tracked once every change sent so far is answered ok: the next change
    /// is the opposite of the last one sent.
    fn tracked_or_pending(&self, pending: &HashMap<u64, bool>) -> bool {
        pending
            .iter()
            .max_by_key(|(r, _)| **r)
            .map_or(self.tracked, |(_, track)| *track)
    }
}

/// Reads the frames of one socket read: replies to our changes (counted, state updated),
/// pings (answered); presence events are the watchers' business.
async fn read_replies(
    conn: &mut WsConn,
    pending: &mut HashMap<u64, bool>,
    st: &mut TrackerStats,
    tally: &Tally,
    topic: usize,
) -> Result<(), String> {
    let mut pong = None;
    while let Some((op, payload)) = conn.next_frame().map_err(|e| e.to_string())? {
        match op {
            Opcode::Text => {
                let Ok(msg) = v2::decode(payload) else {
                    continue;
                };
                if msg.event == "phx_close" || msg.event == "phx_error" {
                    return Err(format!("channel ended ({})", msg.event));
                }
                if msg.event != "phx_reply" {
                    continue;
                }
                let Some(r) = msg.msg_ref.as_ref().and_then(ref_number) else {
                    continue;
                };
                let Some(track) = pending.remove(&r) else {
                    continue;
                };
                tally.pending.fetch_sub(1, Ordering::Relaxed);
                let ok =
                    matches!(&msg.body, Body::Json(raw) if raw.get().contains(r#""status":"ok""#));
                if ok {
                    st.acked += 1;
                    st.tracked = track;
                    if let Some(n) = tally.acked.get(topic) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    st.refused += 1;
                }
            }
            Opcode::Ping => pong = Some(payload.to_vec()),
            Opcode::Close => return Err("closed by the hub".into()),
            _ => {}
        }
    }
    if let Some(p) = pong {
        conn.send_within(REPLY_WAIT, Opcode::Pong, &p)
            .await
            .map_err(|_| "pong write".to_owned())?;
    }
    Ok(())
}

/// `"17"` → 17.
fn ref_number(r: &Ref) -> Option<u64> {
    r.json().trim_matches('"').parse().ok()
}

/// A watcher's view of its topic's presence, kept as realtime-js keeps it (key → metas by
/// `phx_ref`).
#[derive(Debug)]
pub struct View {
    keys: HashMap<String, Vec<String>>,
    /// A `presence_state` arrived.
    has_state: bool,
    /// Keys joined or left, over every diff (the state's initial keys not included).
    changes: u64,
    /// Changes not yet added to the live counter.
    unflushed: u64,
    /// When the current read returned, ns on [`clock`].
    batch_ns: u64,
    latency: Arc<ShardedHist>,
    pending: Vec<u32>,
    frozen: Arc<AtomicBool>,
}

/// `{key: {"metas": [{"phx_ref": …, …}]}}`.
type Entries<'a> = HashMap<String, Metas<'a>>;

#[derive(Deserialize)]
struct Metas<'a> {
    #[serde(borrow)]
    metas: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Diff<'a> {
    #[serde(borrow, default)]
    joins: Entries<'a>,
    #[serde(borrow, default)]
    leaves: Entries<'a>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    phx_ref: String,
    #[serde(default)]
    t: Option<u64>,
}

impl View {
    fn new(latency: Arc<ShardedHist>, frozen: Arc<AtomicBool>) -> Self {
        Self {
            keys: HashMap::new(),
            has_state: false,
            changes: 0,
            unflushed: 0,
            batch_ns: 0,
            latency,
            pending: Vec::new(),
            frozen,
        }
    }

    /// The keys present, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.keys.keys().cloned().collect();
        k.sort();
        k
    }

    fn apply_state(&mut self, raw: &str) {
        let Ok(state) = serde_json::from_str::<Entries<'_>>(raw) else {
            return;
        };
        self.keys.clear();
        for (key, m) in state {
            let refs = m.metas.iter().filter_map(|r| meta(r)).map(|m| m.phx_ref);
            self.keys.insert(key, refs.collect());
        }
        self.has_state = true;
    }

    fn apply_diff(&mut self, raw: &str) {
        let Ok(diff) = serde_json::from_str::<Diff<'_>>(raw) else {
            return;
        };
        for (key, m) in diff.joins {
            self.changes += 1;
            self.unflushed += 1;
            let entry = self.keys.entry(key).or_default();
            for meta in m.metas.iter().filter_map(|r| meta(r)) {
                if let Some(t) = meta.t {
                    let us = self.batch_ns.saturating_sub(t) / 1000;
                    self.pending.push(us.min(u64::from(u32::MAX)) as u32);
                }
                entry.push(meta.phx_ref);
            }
        }
        for (key, m) in diff.leaves {
            self.changes += 1;
            self.unflushed += 1;
            if let Some(refs) = self.keys.get_mut(&key) {
                for meta in m.metas.iter().filter_map(|r| meta(r)) {
                    refs.retain(|r| *r != meta.phx_ref);
                }
                if refs.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }
}

fn meta(raw: &RawValue) -> Option<Meta> {
    serde_json::from_str(raw.get()).ok()
}

impl Receiver for View {
    fn batch_start(&mut self) {
        self.batch_ns = clock::now_ns();
    }

    fn binary(&mut self, _data: &[u8]) {}

    fn text(&mut self, data: &[u8]) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let Ok(msg) = v2::decode(data) else {
            return;
        };
        let Body::Json(raw) = &msg.body else {
            return;
        };
        match msg.event.as_str() {
            "presence_state" => self.apply_state(raw.get()),
            "presence_diff" => self.apply_diff(raw.get()),
            _ => {}
        }
    }

    fn batch_done(&mut self, live: &Live) {
        if !self.pending.is_empty() {
            self.latency.record_batch(&self.pending);
            self.pending.clear();
        }
        if self.unflushed > 0 {
            Live::add(&live.delivered, self.unflushed);
            self.unflushed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View::new(
            Arc::new(ShardedHist::new(1).unwrap()),
            Arc::new(AtomicBool::new(false)),
        )
    }

    #[test]
    fn a_view_follows_state_and_diffs_like_realtime_js() {
        let mut v = view();
        v.text(br#"["1",null,"realtime:p-0","presence_state",{"a":{"metas":[{"phx_ref":"A1"}]}}]"#);
        assert!(v.has_state);
        assert_eq!(v.keys(), ["a"]);
        v.text(br#"[null,null,"realtime:p-0","presence_diff",{"joins":{"b":{"metas":[{"phx_ref":"B1","t":1}]}},"leaves":{}}]"#);
        v.text(br#"[null,null,"realtime:p-0","presence_diff",{"joins":{},"leaves":{"a":{"metas":[{"phx_ref":"A1"}]}}}]"#);
        assert_eq!(v.keys(), ["b"]);
        assert_eq!(v.changes, 2);
        // A leave of a ref the view does not hold changes nothing.
        v.text(br#"[null,null,"realtime:p-0","presence_diff",{"joins":{},"leaves":{"b":{"metas":[{"phx_ref":"B0"}]}}}]"#);
        assert_eq!(v.keys(), ["b"]);
        v.frozen.store(true, Ordering::Release);
        v.text(br#"[null,null,"realtime:p-0","presence_diff",{"joins":{},"leaves":{"b":{"metas":[{"phx_ref":"B1"}]}}}]"#);
        assert_eq!(v.keys(), ["b"], "a frozen view ignores the teardown");
    }

    #[test]
    fn refs_parse() {
        assert_eq!(ref_number(&Ref::from_plain("17")), Some(17));
    }
}
