//! Presence across three hub processes on one Redis: joiners on any node get the merged state,
//! tracks, updates, untracks and disconnects on one node reach the members of the others as one
//! diff each; a node that is killed (SIGKILL, no goodbye) has its members' presence removed at
//! the other nodes within 10 s, and a node that stops gracefully at once.
//!
//! Needs Redis and the hub binary: run with `scripts/test`. Uses Redis database 2.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::nodes::{Node, start_nodes};
use tests::redis_backend::TestRedis;
use tests::{Msg, Vsn, WsClient, anon};

const DB: u32 = 2;

/// The bound for a dead node's presence to leave everywhere.
const DEAD_NODE_LEAVES_WITHIN: Duration = Duration::from_secs(10);

async fn three_nodes() -> (TestRedis, Vec<Node>) {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, &[]).await;
    (redis, nodes)
}

fn presence_config(key: &str) -> Value {
    json!({"presence": {"key": key, "enabled": true}})
}

/// Joins `topic` with presence as `key` and returns the `presence_state` payload.
async fn join_presence(c: &mut WsClient, topic: &str, key: &str) -> Value {
    c.join_ok(topic, presence_config(key)).await;
    c.expect_event(
        topic,
        "presence_state",
        &format!("presence_state after {key} joined"),
    )
    .await
    .payload
}

/// Tracks `payload`; returns the tracker's own `presence_diff` after checking the ok reply (the
/// two come in either order).
async fn track(c: &mut WsClient, topic: &str, payload: Value) -> Msg {
    let r = c
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": payload}),
        )
        .await;
    let (mut reply, mut diff) = (None, None);
    while reply.is_none() || diff.is_none() {
        let m = c
            .next_msg("the reply to a track and the tracker's own diff")
            .await;
        if m.event == "phx_reply" && m.msg_ref.as_deref() == Some(r.as_str()) {
            assert_eq!(m.status(), "ok", "track: {m:?}");
            reply = Some(m);
        } else if m.event == "presence_diff" && m.topic == topic && diff.is_none() {
            diff = Some(m);
        } else {
            panic!("unexpected message while tracking: {m:?}");
        }
    }
    diff.expect("loop ends with both")
}

/// `{key: [meta without phx_ref…]}` of a state or diff side: what every node must agree on (each
/// node names its metas with refs of its own).
fn metas(side: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, entry) in side.as_object().into_iter().flatten() {
        let list: Vec<Value> = entry["metas"]
            .as_array()
            .unwrap_or_else(|| panic!("no metas for {key} in {side}"))
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(o) = m.as_object_mut() {
                    o.remove("phx_ref");
                    o.remove("phx_ref_prev");
                }
                m
            })
            .collect();
        out.insert(key.clone(), Value::Array(list));
    }
    Value::Object(out)
}

/// The next `presence_diff` on `topic`, as (joins, leaves) without refs.
async fn next_diff(c: &mut WsClient, topic: &str, what: &str) -> (Value, Value) {
    let d = c.expect_event(topic, "presence_diff", what).await;
    (metas(&d.payload["joins"]), metas(&d.payload["leaves"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_merged_across_nodes_and_changes_reach_every_node_once() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = "realtime:presence-merged";

    // alice on A tracks; bob joins on B and is given alice in his state, then tracks.
    let mut alice = a.ws(Vsn::V2, &anon()).await;
    assert_eq!(join_presence(&mut alice, topic, "alice").await, json!({}));
    let own = track(&mut alice, topic, json!({"name": "alice"})).await;
    assert_eq!(
        metas(&own.payload["joins"]),
        json!({"alice": [{"name": "alice"}]})
    );

    let mut bob = b.ws(Vsn::V1, &anon()).await;
    assert_eq!(
        metas(&join_presence(&mut bob, topic, "bob").await),
        json!({"alice": [{"name": "alice"}]}),
        "bob's state on B holds alice from A"
    );
    let own = track(&mut bob, topic, json!({"name": "bob"})).await;
    let bob_joined = json!({"bob": [{"name": "bob"}]});
    assert_eq!(metas(&own.payload["joins"]), bob_joined);
    assert_eq!(
        next_diff(&mut alice, topic, "bob's join at alice on A").await,
        (bob_joined, json!({}))
    );

    // carol joins on C: the state has both; her track reaches A and B.
    let mut carol = c.ws(Vsn::V2, &anon()).await;
    assert_eq!(
        metas(&join_presence(&mut carol, topic, "carol").await),
        json!({"alice": [{"name": "alice"}], "bob": [{"name": "bob"}]}),
        "carol's state on C merges A and B"
    );
    track(&mut carol, topic, json!({"name": "carol", "v": 1})).await;
    let carol_joined = json!({"carol": [{"name": "carol", "v": 1}]});
    for (who, m) in [("alice", &mut alice), ("bob", &mut bob)] {
        assert_eq!(
            next_diff(m, topic, &format!("carol's join at {who}")).await,
            (carol_joined.clone(), json!({}))
        );
    }

    // A watcher on each node (presence on, not tracking) gets the whole merged state.
    let everyone = json!({
        "alice": [{"name": "alice"}],
        "bob": [{"name": "bob"}],
        "carol": [{"name": "carol", "v": 1}],
    });
    let mut watchers = Vec::new();
    for node in &nodes {
        let mut w = node.ws(Vsn::V1, &anon()).await;
        let state = join_presence(&mut w, topic, &format!("watcher-{}", node.name)).await;
        assert_eq!(
            metas(&state),
            everyone,
            "merged state on node {}",
            node.name
        );
        watchers.push(w);
    }

    // carol updates on C: one diff (the new meta joins, the old one leaves) on every node.
    track(&mut carol, topic, json!({"name": "carol", "v": 2})).await;
    let update = (
        json!({"carol": [{"name": "carol", "v": 2}]}),
        json!({"carol": [{"name": "carol", "v": 1}]}),
    );
    for (who, m) in [("alice", &mut alice), ("bob", &mut bob)] {
        assert_eq!(
            next_diff(m, topic, &format!("carol's update at {who}")).await,
            update,
            "one diff for an update, at {who}"
        );
    }
    for (w, node) in watchers.iter_mut().zip(&nodes) {
        assert_eq!(
            next_diff(
                w,
                topic,
                &format!("carol's update at the watcher on {}", node.name)
            )
            .await,
            update
        );
    }

    // bob untracks on B; alice drops her connection on A: one leave each, everywhere else.
    bob.push(
        topic,
        "presence",
        json!({"type": "presence", "event": "untrack"}),
    )
    .await;
    let bob_left = (json!({}), json!({"bob": [{"name": "bob"}]}));
    assert_eq!(
        next_diff(&mut bob, topic, "bob's own leave diff").await,
        bob_left
    );
    alice.drop_abruptly();
    let alice_left = (json!({}), json!({"alice": [{"name": "alice"}]}));
    for (who, m) in [("carol", &mut carol)]
        .into_iter()
        .chain(watchers.iter_mut().map(|w| ("a watcher", w)))
    {
        // bob's untrack and alice's disconnect come from different nodes: either order.
        let first = next_diff(m, topic, &format!("the first leave at {who}")).await;
        let second = next_diff(m, topic, &format!("the second leave at {who}")).await;
        let mut got = [first, second];
        got.sort_by_key(|d| d.1.to_string());
        let mut want = [alice_left.clone(), bob_left.clone()];
        want.sort_by_key(|d| d.1.to_string());
        assert_eq!(got, want, "{who}: bob's and alice's leaves, once each");
    }
    assert_eq!(
        next_diff(&mut bob, topic, "alice's leave at bob").await,
        alice_left
    );
    // A late joiner on any node sees only carol (and the watchers, who never tracked).
    for node in &nodes {
        let mut late = node.ws(Vsn::V2, &anon()).await;
        let state = join_presence(&mut late, topic, "late").await;
        assert_eq!(
            metas(&state),
            json!({"carol": [{"name": "carol", "v": 2}]}),
            "state on {} after the leaves",
            node.name
        );
    }
    // carol untracks: for everyone still here that is the next diff, so no diff came twice.
    carol
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    let carol_left = (json!({}), json!({"carol": [{"name": "carol", "v": 2}]}));
    for (who, m) in [("carol", &mut carol), ("bob", &mut bob)]
        .into_iter()
        .chain(watchers.iter_mut().map(|w| ("a watcher", w)))
    {
        assert_eq!(
            next_diff(m, topic, &format!("carol's untrack at {who}")).await,
            carol_left,
            "{who}: the next diff after the leaves is carol's untrack"
        );
    }
}

/// Members tracked on `node` on two topics; returns their connections (kept open).
async fn tracked_on(node: &Node, topics: &[&str]) -> Vec<WsClient> {
    let mut out = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let key = format!("{}-member-{i}", node.name);
        let mut m = node.ws(Vsn::V2, &anon()).await;
        join_presence(&mut m, topic, &key).await;
        track(&mut m, topic, json!({"on": node.name})).await;
        out.push(m);
    }
    out
}

/// A watcher (presence on, not tracking) of `topic` on each of `nodes`, each checked to see
/// `expect_keys` in its state.
async fn watchers(nodes: &[&Node], topic: &str, expect_keys: &[&str]) -> Vec<(String, WsClient)> {
    let mut out = Vec::new();
    for node in nodes {
        let mut w = node.ws(Vsn::V1, &anon()).await;
        let state = join_presence(&mut w, topic, &format!("w-{}", node.name)).await;
        for k in expect_keys {
            assert!(
                state.get(k).is_some(),
                "state of {topic} on {} lacks {k}: {state}",
                node.name
            );
        }
        out.push((format!("watcher on {}", node.name), w));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_has_its_presence_removed_everywhere_within_10_s() {
    let (redis, mut nodes) = three_nodes().await;
    let topics = ["realtime:presence-kill-1", "realtime:presence-kill-2"];

    let mut doomed = tracked_on(&nodes[1], &topics).await;
    // A survivor on A stays tracked throughout: only B's members may leave.
    let _survivor = tracked_on(&nodes[0], &topics[..1]).await;
    let mut ws = Vec::new();
    for node in [&nodes[0], &nodes[2]] {
        for (i, topic) in topics.iter().enumerate() {
            let mut w = node.ws(Vsn::V1, &anon()).await;
            let state = join_presence(&mut w, topic, &format!("w-{}", node.name)).await;
            assert!(
                state.get(format!("B-member-{i}")).is_some(),
                "before the kill, {topic} on {} shows B's member: {state}",
                node.name
            );
            ws.push((format!("watcher on {} of {topic}", node.name), i, w));
        }
    }
    for m in &mut doomed {
        m.assert_alive("B's member before the kill").await;
    }

    nodes[1].kill().await;
    let killed = Instant::now();
    for (who, i, w) in &mut ws {
        let leave = w
            .expect_frame_within(
                &format!("the leave of B's member at the {who} after B was killed"),
                DEAD_NODE_LEAVES_WITHIN.saturating_sub(killed.elapsed()),
                |f| match f {
                    tests::Frame::Text(v) => Msg::parse(Vsn::V1, v)
                        .filter(|m| m.event == "presence_diff")
                        .map(|m| m.payload),
                    _ => None,
                },
            )
            .await;
        assert_eq!(
            metas(&leave["leaves"]),
            json!({format!("B-member-{i}"): [{"on": "B"}]}),
            "{who}: exactly B's member leaves"
        );
        assert_eq!(leave["joins"], json!({}), "{who}");
    }
    let took = killed.elapsed();
    eprintln!("presence of the killed node left at A and C after {took:?}");
    assert!(took <= DEAD_NODE_LEAVES_WITHIN, "took {took:?}");

    // Redis holds no entry of B any more; the survivor's entry stays.
    let mut conn = redis.conn().await;
    for (i, topic) in topics.iter().enumerate() {
        let name = topic.trim_start_matches("realtime:");
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(format!("hub:{{t:{name}}}:presence"))
            .query_async(&mut conn)
            .await
            .expect("HGETALL presence");
        assert!(
            entries.iter().all(|(_, v)| !v.contains("\"B\"")),
            "B's entries are gone from {topic}: {entries:?}"
        );
        assert_eq!(
            entries.len(),
            usize::from(i == 0),
            "only the survivor on A remains in {topic}: {entries:?}"
        );
    }
    // A joiner on C sees the survivor and nobody of B.
    let mut late = nodes[2].ws(Vsn::V2, &anon()).await;
    let state = join_presence(&mut late, topics[0], "late").await;
    assert_eq!(
        metas(&state),
        json!({"A-member-0": [{"on": "A"}]}),
        "after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_gracefully_removes_its_presence_at_once() {
    let (_redis, mut nodes) = three_nodes().await;
    let topic = "realtime:presence-stop";
    let leaving = tracked_on(&nodes[2], &[topic]).await;
    let mut ws = watchers(&[&nodes[0], &nodes[1]], topic, &["C-member-0"]).await;
    // The member answers the node's close frame, as a real client does, so the node's drain
    // ends when its connections are closed rather than at the drain timeout.
    let closers: Vec<_> = leaving
        .into_iter()
        .map(|mut m| {
            tokio::spawn(async move { m.expect_close("C's close frame on SIGTERM").await })
        })
        .collect();

    let stopping = Instant::now();
    let status = nodes[2].terminate().await;
    assert!(
        status.success(),
        "node C exits cleanly on SIGTERM: {status}"
    );
    for (who, w) in &mut ws {
        let (joins, leaves) =
            next_diff(w, topic, &format!("C's member leaving at the {who}")).await;
        assert_eq!(
            (joins, leaves),
            (json!({}), json!({"C-member-0": [{"on": "C"}]}))
        );
    }
    for c in closers {
        let (code, reason) = c.await.expect("closer task");
        eprintln!("C closed its member's connection with {code} {reason:?}");
    }
    // Reaping a silent node takes at least 6 s of silence after a heartbeat at most 2 s old:
    // a leave this early came from the node's own shutdown.
    let took = stopping.elapsed();
    eprintln!("presence of the stopped node left at A and B after {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "a graceful stop removes presence at once, not by reaping; took {took:?}"
    );
}
