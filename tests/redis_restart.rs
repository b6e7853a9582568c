//! Redis restarted under a live stream. Two publishers keep publishing to one topic — a backend
//! through the shipped script, and a WebSocket client on node C with acks — retrying through the
//! outage, while Redis is shut down and started again. Members on nodes A and B are checked
//! against the publishers' acks:
//!
//! - Redis comes back empty (`shutdown nosave`): per publisher, every acknowledged message exactly
//!   once and in order, or a `system` "not recovered" message before the first message after a
//!   gap — never a silent gap; the nodes resubscribe (the stream goes on at every member) and
//!   publish their members' presence again.
//! - Redis comes back with its data (`shutdown save`, the snapshot loaded at start): the nodes
//!   fill what they missed from history, so every acknowledged message arrives exactly once, in
//!   order, and nobody is told anything was lost.
//!
//! Restarts only the throwaway Redis that `scripts/test` started (`HUB_TEST_REDIS_OWNED=1`), one
//! restart at a time, and is alone in its test binary because a restart cuts every connection of
//! the server. Uses Redis database 5.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::nodes::{Node, start_nodes};
use tests::redis_backend::{
    RedisServer, TestRedis, publish_script, publish_via_script, publish_via_script_keeping,
};
use tests::{Bcast, Frame, Msg, Vsn, WAIT, WsClient, anon, json_payload, wait_until};

const DB: u32 = 5;
/// How long one message may take to arrive across the restart (nodes reconnect with backoff).
const ACROSS_RESTART: Duration = Duration::from_secs(20);
/// Acknowledged messages each publisher sends before the restart, and at least after it.
const BEFORE: u64 = 200;
const AFTER: u64 = 300;
/// Retry pacing of the publishers while Redis is down (not a wait for an event).
const RETRY_PACE: Duration = Duration::from_millis(20);
/// History kept per topic (nodes and script): more than the test publishes, so a node that
/// fills a gap from history always finds it there.
const HISTORY: u64 = 20_000;
/// The nodes' arguments: room for every message in each member's outbox and in history.
const NODE_ARGS: &[&str] = &["--outbox-messages", "100000", "--history-size", "20000"];

/// One restart at a time: the tests of this file share the server.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The throwaway server, or `None` (and a SKIP line) when it is not ours to restart.
fn owned_server(test: &str) -> Option<RedisServer> {
    let server = RedisServer::from_env();
    if server.is_none() {
        eprintln!(
            "SKIP: {test} restarts only the throwaway Redis that scripts/test starts \
             (HUB_TEST_REDIS_OWNED=1 is not set)"
        );
    }
    server
}

/// A topic: its name in Redis and on the wire.
#[derive(Debug, Clone, Copy)]
struct Topic {
    name: &'static str,
    wire: &'static str,
}

/// What a member received, in order.
#[derive(Debug, Clone)]
enum Seen {
    /// A message of publisher `p` (its `n`-th attempt), with its cursor.
    Msg { p: String, n: u64, cursor: String },
    /// A publisher's last message.
    End { p: String },
    /// A `system` message (status and text).
    System { status: String, message: String },
}

/// One publisher's acknowledged attempts, with the cursor when the publisher learns it.
#[derive(Debug, Default)]
struct Acked {
    acked: Vec<(u64, Option<String>)>,
    failures: u64,
}

/// Shared between the test and the publishers.
#[derive(Debug, Default)]
struct Control {
    /// Set right after Redis is back.
    restarted: AtomicBool,
    /// Set by the test when the publishers may send their `end` and stop.
    stop: AtomicBool,
}

/// One publisher's acknowledged messages before and after the restart, and the first attempt
/// acknowledged after it.
#[derive(Debug, Default)]
struct Count {
    before: AtomicU64,
    after: AtomicU64,
    first_after: AtomicU64,
}

impl Count {
    fn ack(&self, ctl: &Control, n: u64) {
        if ctl.restarted.load(Ordering::SeqCst) {
            self.after.fetch_add(1, Ordering::SeqCst);
            let _ = self
                .first_after
                .compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst);
        } else {
            self.before.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The backend: publish.lua on a connection of its own, reconnecting after errors, at most one
/// message a millisecond (a stream, not a flood that starves the nodes of CPU).
async fn script_publisher(
    redis: TestRedis,
    topic: Topic,
    ctl: Arc<Control>,
    count: Arc<Count>,
) -> Acked {
    let script = publish_script();
    let mut conn = Some(redis.conn().await);
    let mut out = Acked::default();
    let mut n = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pace.tick().await;
        let stopping = ctl.stop.load(Ordering::SeqCst);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                match tokio::time::timeout(WAIT, redis.client().get_multiplexed_async_connection())
                    .await
                {
                    Ok(Ok(c)) => conn.insert(c),
                    _ => {
                        tokio::time::sleep(RETRY_PACE).await;
                        continue;
                    }
                }
            }
        };
        n += 1;
        let event = if stopping { "end" } else { "m" };
        let payload = json!({"p": "script", "n": n});
        let res = tokio::time::timeout(
            WAIT,
            publish_via_script_keeping(&script, c, topic.name, event, &payload, HISTORY),
        )
        .await;
        match res {
            Ok(Ok((offset, epoch))) => {
                out.acked.push((n, Some(format!("{epoch}:{offset}"))));
                count.ack(&ctl, n);
                if stopping {
                    return out;
                }
            }
            _ => {
                out.failures += 1;
                conn = None;
                tokio::time::sleep(RETRY_PACE).await;
            }
        }
    }
}

/// A client on a node broadcasting with `ack`, one at a time; an error reply is a failure.
async fn ws_publisher(
    mut c: WsClient,
    topic: Topic,
    ctl: Arc<Control>,
    count: Arc<Count>,
) -> Acked {
    let mut out = Acked::default();
    let mut n = 0u64;
    loop {
        let stopping = ctl.stop.load(Ordering::SeqCst);
        n += 1;
        let event = if stopping { "end" } else { "m" };
        let r = c
            .send_broadcast(
                topic.wire,
                event,
                &json_payload(&json!({"p": "ws", "n": n})),
            )
            .await;
        let reply = c
            .expect_reply(
                topic.wire,
                &r,
                &format!("the ack of the client's attempt {n}"),
            )
            .await;
        if reply.status() == "ok" {
            out.acked.push((n, None));
            count.ack(&ctl, n);
            if stopping {
                return out;
            }
        } else {
            out.failures += 1;
            tokio::time::sleep(RETRY_PACE).await;
        }
    }
}

fn classify(vsn: Vsn, topic: Topic, f: &Frame) -> Option<Seen> {
    if let Some(b) = Bcast::from_frame(vsn, f).filter(|b| b.topic == topic.wire) {
        let v = b.json();
        let p = v["p"].as_str().unwrap_or("?").to_owned();
        return Some(match b.event.as_str() {
            "end" => Seen::End { p },
            _ => Seen::Msg {
                p,
                n: v["n"].as_u64().unwrap_or(0),
                cursor: b.cursor(),
            },
        });
    }
    let Frame::Text(v) = f else { return None };
    let m: Msg = Msg::parse(vsn, v)?;
    (m.topic == topic.wire && m.event == "system").then(|| Seen::System {
        status: m.payload["status"].as_str().unwrap_or("").to_owned(),
        message: m.payload["message"].as_str().unwrap_or("").to_owned(),
    })
}

/// Reads a member until both publishers' `end` came, publishing in `script_n` the highest
/// attempt of the script publisher it has received.
async fn read_member(
    mut m: WsClient,
    who: String,
    topic: Topic,
    script_n: Arc<AtomicU64>,
) -> (Vec<Seen>, WsClient) {
    let vsn = m.vsn;
    let mut seen = Vec::new();
    let mut ended = HashSet::new();
    while ended.len() < 2 {
        let what = format!(
            "the next message at the {who} (ends seen: {ended:?}, {} received)",
            seen.len()
        );
        let s = m
            .expect_frame_within(&what, ACROSS_RESTART, |f| classify(vsn, topic, f))
            .await;
        match &s {
            Seen::Msg { p, n, .. } if p == "script" => {
                script_n.fetch_max(*n, Ordering::SeqCst);
            }
            Seen::End { p } => {
                ended.insert(p.clone());
            }
            _ => {}
        }
        seen.push(s);
    }
    (seen, m)
}

/// What happened across one restart.
struct Outcome {
    acks: HashMap<&'static str, Acked>,
    members: Vec<(String, Vec<Seen>)>,
}

/// Runs the two publishers on `topic`, restarts Redis (`keep_data`) once each has 200 acks,
/// keeps publishing until each has 300 acks after the restart and every member received a
/// message published after it, then ends both and collects what the members on A and B got.
async fn stream_across_restart(
    redis: &TestRedis,
    nodes: &[Node],
    server: &RedisServer,
    topic: Topic,
    keep_data: bool,
) -> Outcome {
    let mut readers = Vec::new();
    for (node, vsn) in [
        (&nodes[0], Vsn::V1),
        (&nodes[0], Vsn::V2),
        (&nodes[1], Vsn::V2),
    ] {
        let mut m = node.ws(vsn, &anon()).await;
        m.join_ok(topic.wire, json!({})).await;
        let who = format!("member on {} ({})", node.name, vsn.as_str());
        let script_n = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(read_member(m, who.clone(), topic, script_n.clone()));
        readers.push((who, script_n, task));
    }

    let ctl = Arc::new(Control::default());
    let counts = [Arc::new(Count::default()), Arc::new(Count::default())];
    let script_task = tokio::spawn(script_publisher(
        redis.clone(),
        topic,
        ctl.clone(),
        counts[0].clone(),
    ));
    let mut ws = nodes[2].ws(Vsn::V2, &anon()).await;
    ws.join_ok(topic.wire, json!({"broadcast": {"ack": true}}))
        .await;
    let ws_task = tokio::spawn(ws_publisher(ws, topic, ctl.clone(), counts[1].clone()));

    wait_until("both publishers have 200 acks before the restart", || {
        counts
            .iter()
            .all(|c| c.before.load(Ordering::SeqCst) >= BEFORE)
    })
    .await;
    let down = server.restart(keep_data).await;
    ctl.restarted.store(true, Ordering::SeqCst);
    eprintln!(
        "{}: Redis was down for {down:?}",
        if keep_data {
            "shutdown save"
        } else {
            "shutdown nosave"
        }
    );

    // Polls the counters the publishers and readers keep (each a real delivery or ack).
    let deadline = Instant::now() + ACROSS_RESTART;
    loop {
        let first_after = counts[0].first_after.load(Ordering::SeqCst);
        let lagging: Vec<&str> = readers
            .iter()
            .filter(|(_, n, _)| first_after == 0 || n.load(Ordering::SeqCst) < first_after)
            .map(|(w, _, _)| w.as_str())
            .collect();
        let after: Vec<u64> = counts
            .iter()
            .map(|c| c.after.load(Ordering::SeqCst))
            .collect();
        if lagging.is_empty() && after.iter().all(|a| *a >= AFTER) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {ACROSS_RESTART:?} waiting for every member to get a message \
             published after the restart ({lagging:?} still waiting) and {AFTER} acks per \
             publisher after it (script, client: {after:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctl.stop.store(true, Ordering::SeqCst);
    let mut acks = HashMap::new();
    for (name, task) in [("script", script_task), ("ws", ws_task)] {
        let a = tokio::time::timeout(ACROSS_RESTART, task)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the {name} publisher to end"))
            .unwrap_or_else(|e| panic!("{name} publisher: {e}"));
        eprintln!(
            "{name} publisher: {} acked, {} failed attempts",
            a.acked.len(),
            a.failures
        );
        acks.insert(name, a);
    }
    let mut members = Vec::new();
    for (who, _, task) in readers {
        let (seen, _m) = tokio::time::timeout(ACROSS_RESTART * 2, task)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the reader of the {who}"))
            .unwrap_or_else(|e| panic!("reader of the {who}: {e}"));
        members.push((who, seen));
    }
    Outcome { acks, members }
}

/// An acknowledged message a member did not get: publisher, attempt, cursor when known.
type Missed = (String, u64, Option<String>);

/// Checks one member's stream against the publishers' acks: cursors once each and in order
/// within an epoch, every publisher's messages in its order, and for every acknowledged message
/// missing, a `system` message after the previous message of that publisher the member got and
/// before the next. Returns the acknowledged messages missed (publisher, attempt, cursor when
/// known) and the `system` messages.
fn check_member(
    who: &str,
    seen: &[Seen],
    acks: &HashMap<&str, Acked>,
) -> (Vec<Missed>, Vec<String>) {
    let mut cursors = HashSet::new();
    let mut epochs: Vec<String> = Vec::new();
    let mut last_offset = 0u64;
    for s in seen {
        if let Seen::Msg { cursor, .. } = s {
            assert!(cursors.insert(cursor.clone()), "{who}: {cursor} twice");
            let (e, o) = cursor.rsplit_once(':').expect("cursor <epoch>:<offset>");
            let o: u64 = o.parse().expect("numeric offset");
            if epochs.last().map(String::as_str) != Some(e) {
                assert!(
                    !epochs.iter().any(|x| x == e),
                    "{who}: epoch {e} came back after {epochs:?}"
                );
                epochs.push(e.to_owned());
            } else {
                assert!(
                    o > last_offset,
                    "{who}: offset {o} after {last_offset} in {e}"
                );
            }
            last_offset = o;
        }
    }
    let mut notices = Vec::new();
    for s in seen {
        if let Seen::System { status, message } = s {
            assert!(
                status == "error" && message.contains("not recovered"),
                "{who}: a system message other than 'not recovered': {status} {message:?}"
            );
            notices.push(message.clone());
        }
    }
    let mut missed = Vec::new();
    for (p, acked) in acks {
        // This publisher's messages in the member's stream: (attempt, position, cursor).
        let mut pos: Vec<(u64, usize, &str)> = Vec::new();
        let mut end_pos = None;
        for (i, s) in seen.iter().enumerate() {
            match s {
                Seen::Msg { p: q, n, cursor } if q == p => {
                    if let Some(&(prev, _, _)) = pos.last() {
                        assert!(
                            *n > prev,
                            "{who}: {p}'s attempt {n} after its attempt {prev}"
                        );
                    }
                    pos.push((*n, i, cursor.as_str()));
                }
                Seen::End { p: q } if q == p => end_pos = Some(i),
                _ => {}
            }
        }
        let end_pos = end_pos.unwrap_or_else(|| panic!("{who}: no end from {p}"));
        // The last ack is the `end` itself.
        for (n, cursor) in &acked.acked[..acked.acked.len() - 1] {
            let k = pos.partition_point(|x| x.0 < *n);
            if let Some(&(m, _, got)) = pos.get(k)
                && m == *n
            {
                if let Some(want) = cursor {
                    assert_eq!(got, want, "{who}: {p}'s attempt {n} has the acked cursor");
                }
                continue;
            }
            missed.push((p.to_string(), *n, cursor.clone()));
            let after = k.checked_sub(1).map_or(0, |j| pos[j].1 + 1);
            let before = pos.get(k).map_or(end_pos, |x| x.1);
            assert!(
                seen[after..before]
                    .iter()
                    .any(|s| matches!(s, Seen::System { .. })),
                "{who}: {p}'s acknowledged attempt {n} ({cursor:?}) is missing without a 'not \
                 recovered' message before the next message; stream around it: {:?}",
                &seen[after.saturating_sub(3)..(before + 3).min(seen.len())]
            );
        }
    }
    (missed, notices)
}

/// The distinct epochs of the script publisher's acks, in order.
fn script_epochs(acks: &HashMap<&str, Acked>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (_, c) in &acks["script"].acked {
        let e = c
            .as_deref()
            .and_then(|c| c.rsplit_once(':'))
            .map(|x| x.0.to_owned());
        if let Some(e) = e
            && v.last() != Some(&e)
        {
            v.push(e);
        }
    }
    v
}

/// Whether a fresh presence joiner on `node` sees `key` (a new connection per attempt).
async fn presence_has(node: &Node, topic: &str, key: &str) -> bool {
    let mut c = node.ws(Vsn::V2, &anon()).await;
    c.join_ok(
        topic,
        json!({"presence": {"key": "probe", "enabled": true}}),
    )
    .await;
    let state = c
        .expect_event(topic, "presence_state", "presence_state of a probe")
        .await;
    c.close().await;
    state.payload.get(key).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_mid_stream_is_never_a_silent_gap() {
    let Some(server) = owned_server("redis_restarted_empty_mid_stream_is_never_a_silent_gap")
    else {
        return;
    };
    let _one_restart_at_a_time = RESTARTS.lock().await;
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, NODE_ARGS).await;
    let topic = Topic {
        name: "restart:empty",
        wire: "realtime:restart:empty",
    };

    // A presence member on A, to be found again after Redis came back empty.
    let mut keeper = nodes[0].ws(Vsn::V2, &anon()).await;
    keeper
        .join_ok(
            topic.wire,
            json!({"presence": {"key": "keeper", "enabled": true}}),
        )
        .await;
    keeper
        .push(
            topic.wire,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"k": 1}}),
        )
        .await;
    keeper
        .expect_event(topic.wire, "presence_diff", "the keeper's own join diff")
        .await;

    // A quiet topic: one message before the restart, seen by a member on B, none during it.
    let quiet = Topic {
        name: "restart:quiet",
        wire: "realtime:restart:quiet",
    };
    let mut quiet_member = nodes[1].ws(Vsn::V1, &anon()).await;
    quiet_member.join_ok(quiet.wire, json!({})).await;
    let script = publish_script();
    let mut conn = redis.conn().await;
    let (_, quiet_epoch) = publish_via_script(&script, &mut conn, quiet.name, "q", &json!({}))
        .await
        .expect("publish on the quiet topic");
    quiet_member
        .expect_broadcast(quiet.wire, "the quiet topic's message before the restart")
        .await;

    let out = stream_across_restart(&redis, &nodes, &server, topic, false).await;
    let epochs = script_epochs(&out.acks);
    assert_eq!(
        epochs.len(),
        2,
        "Redis came back empty: the script's acks span two epochs: {epochs:?}"
    );
    for (who, seen) in &out.members {
        let received = seen
            .iter()
            .filter(|s| matches!(s, Seen::Msg { .. }))
            .count();
        let (missed, notices) = check_member(who, seen, &out.acks);
        eprintln!(
            "{who}: {received} messages, {} acknowledged ones missed, 'not recovered' messages: \
             {notices:?}",
            missed.len()
        );
    }

    // The quiet topic lost its history with nothing published during the outage: its member
    // may be told so once, and gets the next message, of a new epoch.
    let mut conn = redis.conn().await;
    let (offset, epoch) = publish_via_script(&script, &mut conn, quiet.name, "q", &json!({}))
        .await
        .expect("publish on the quiet topic after the restart");
    assert_eq!(offset, 1, "a new history");
    assert_ne!(epoch, quiet_epoch, "a new epoch");
    let mut notices = Vec::new();
    let b = quiet_member
        .expect_frame("the quiet topic's first message after the restart", |f| {
            if let Some(b) = Bcast::from_frame(Vsn::V1, f).filter(|b| b.topic == quiet.wire) {
                return Some(b);
            }
            if let Frame::Text(v) = f
                && let Some(m) = Msg::parse(Vsn::V1, v).filter(|m| m.event == "system")
            {
                notices.push(m.payload["message"].as_str().unwrap_or("").to_owned());
            }
            None
        })
        .await;
    assert_eq!(b.cursor(), format!("{epoch}:1"));
    eprintln!(
        "quiet topic: {} 'not recovered' message(s) before its first new message: {notices:?}",
        notices.len()
    );
    assert!(
        notices.iter().all(|n| n.contains("not recovered")),
        "quiet topic: only 'not recovered' notices: {notices:?}"
    );
    // Once for the loss; not again at the first message of the new history, which follows the
    // node's resubscription without a gap.
    assert!(
        notices.len() <= 1,
        "quiet topic: told {} times that history was not recovered: {notices:?}",
        notices.len()
    );

    // Presence: Redis lost the keeper's entry; node A publishes it again.
    let deadline = Instant::now() + WAIT;
    while !presence_has(&nodes[1], topic.wire, "keeper").await {
        assert!(
            Instant::now() < deadline,
            "a joiner on B did not see A's tracked member within {WAIT:?} after the stream \
             across the restart ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keeper.assert_alive("the keeper after the restart").await;
    for node in &nodes {
        assert!(
            node.log().contains("reconnected and resubscribed"),
            "node {} logged its resubscription",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_its_data_mid_stream_loses_nothing() {
    let Some(server) = owned_server("redis_restarted_with_its_data_mid_stream_loses_nothing")
    else {
        return;
    };
    let _one_restart_at_a_time = RESTARTS.lock().await;
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, NODE_ARGS).await;
    let topic = Topic {
        name: "restart:kept",
        wire: "realtime:restart:kept",
    };
    let out = stream_across_restart(&redis, &nodes, &server, topic, true).await;
    let epochs = script_epochs(&out.acks);
    assert_eq!(
        epochs.len(),
        1,
        "Redis kept the topic's history: {epochs:?}"
    );
    let mut conn = redis.conn().await;
    let mut failures = Vec::new();
    for (who, seen) in &out.members {
        let (missed, notices) = check_member(who, seen, &out.acks);
        eprintln!(
            "{who}: {} acknowledged messages missed, 'not recovered' messages: {notices:?}",
            missed.len()
        );
        if missed.is_empty() && notices.is_empty() {
            continue;
        }
        // Evidence: the missed messages the script numbered are in the topic's history.
        let mut in_history = 0;
        let mut script_missed = 0;
        for (_, _, cursor) in &missed {
            let Some((_, offset)) = cursor.as_deref().and_then(|c| c.rsplit_once(':')) else {
                continue;
            };
            script_missed += 1;
            let id = format!("{offset}-0");
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(format!("hub:{{t:{}}}:hist", topic.name))
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            in_history += entries.len();
        }
        failures.push(format!(
            "{who}: missed {} acknowledged messages ({script_missed} of the script's, \
             {in_history} of those still in the topic's history stream, first missed: {:?}) and \
             was told {notices:?}",
            missed.len(),
            missed.first()
        ));
    }
    assert!(
        failures.is_empty(),
        "with the history kept, a node must fill what it missed from it:\n{}",
        failures.join("\n")
    );
}
