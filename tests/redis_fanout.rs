//! Three hub processes on one Redis: a broadcast on any node, from a WebSocket client or the REST
//! API, reaches the members on every node exactly once, honouring `self` (a sender is recognised
//! by node and connection, not by connection id alone); and per topic every member on every node
//! sees the messages of concurrent publishers on all nodes in one offset order, without gaps.
//!
//! Needs Redis and the hub binary: run with `scripts/test`. Uses Redis database 1.

use std::collections::HashMap;

use serde_json::{Value, json};
use tests::nodes::{Node, start_nodes};
use tests::redis_backend::TestRedis;
use tests::{
    Bcast, BcastPayload, Frame, Msg, Vsn, WAIT, WsClient, anon, bin_payload, http_client,
    json_payload,
};

const DB: u32 = 1;

async fn three_nodes() -> (TestRedis, Vec<Node>) {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, &[]).await;
    (redis, nodes)
}

/// The ack reply to `r` and the sender's own copy of its broadcast, in whichever order they come.
async fn reply_and_own_copy(c: &mut WsClient, topic: &str, r: &str) -> Bcast {
    let vsn = c.vsn;
    let (mut reply, mut own) = (None, None);
    while reply.is_none() || own.is_none() {
        let f = c
            .next_frame("the sender's ack reply and its own copy")
            .await;
        if let Some(b) = Bcast::from_frame(vsn, &f).filter(|b| b.topic == topic) {
            assert!(own.is_none(), "the sender got its broadcast twice: {b:?}");
            own = Some(b);
            continue;
        }
        let m = match &f {
            Frame::Text(v) => Msg::parse(vsn, v),
            _ => None,
        };
        match m {
            Some(m) if m.event == "phx_reply" && m.msg_ref.as_deref() == Some(r) => {
                assert_eq!(m.status(), "ok", "ack of a broadcast through Redis: {m:?}");
                reply = Some(m);
            }
            _ => panic!("unexpected frame while waiting for the ack and own copy: {f:?}"),
        }
    }
    own.expect("loop ends with both")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_rest_broadcasts_on_any_node_reach_every_node_once_honouring_self() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = "realtime:fan-self";
    let http = http_client();

    // The first connection on every node is connection 1 of that node, the second connection 2:
    // a node must skip only its own sender, not every member that has the sender's number.
    let mut a_self = a.ws(Vsn::V2, &anon()).await; // A:1, self and ack
    let mut b_first = b.ws(Vsn::V2, &anon()).await; // B:1
    let mut c_self = c.ws(Vsn::V1, &anon()).await; // C:1, self
    let mut a_quiet = a.ws(Vsn::V1, &anon()).await; // A:2
    let mut b_quiet = b.ws(Vsn::V1, &anon()).await; // B:2
    a_self
        .join_ok(topic, json!({"broadcast": {"self": true, "ack": true}}))
        .await;
    b_first.join_ok(topic, json!({})).await;
    c_self
        .join_ok(topic, json!({"broadcast": {"self": true}}))
        .await;
    a_quiet
        .join_ok(topic, json!({"broadcast": {"self": false}}))
        .await;
    b_quiet.join_ok(topic, json!({})).await;

    // Each member's broadcasts, in order, as (offset, event, payload).
    let mut seen: HashMap<&str, Vec<(u64, String, BcastPayload, String)>> = HashMap::new();
    let mut record = |who: &'static str, m: Bcast| {
        seen.entry(who).or_default().push((
            m.offset(),
            m.event.clone(),
            m.payload.clone(),
            m.cursor(),
        ));
    };

    // 1. A:1 (self, ack) broadcasts: its ack and own copy, and every member on every node.
    let r = a_self
        .send_broadcast(topic, "one", &json_payload(&json!({"n": 1})))
        .await;
    record("a_self", reply_and_own_copy(&mut a_self, topic, &r).await);
    for (who, m) in [
        ("b_first", &mut b_first),
        ("c_self", &mut c_self),
        ("a_quiet", &mut a_quiet),
        ("b_quiet", &mut b_quiet),
    ] {
        record(
            who,
            m.expect_broadcast(topic, &format!("'one' at {who}")).await,
        );
    }

    // 2. A:2 (no self) broadcasts: everyone but itself, B:2 included.
    a_quiet.broadcast_json(topic, "two", json!({"n": 2})).await;
    for (who, m) in [
        ("a_self", &mut a_self),
        ("b_first", &mut b_first),
        ("c_self", &mut c_self),
        ("b_quiet", &mut b_quiet),
    ] {
        record(
            who,
            m.expect_broadcast(topic, &format!("'two' at {who}")).await,
        );
    }

    // 3. B:2 (no self) broadcasts: everyone but itself, A:2 included.
    b_quiet
        .broadcast_json(topic, "three", json!({"n": 3}))
        .await;
    for (who, m) in [
        ("a_self", &mut a_self),
        ("b_first", &mut b_first),
        ("c_self", &mut c_self),
        ("a_quiet", &mut a_quiet),
    ] {
        record(
            who,
            m.expect_broadcast(topic, &format!("'three' at {who}"))
                .await,
        );
    }

    // 4. REST on B, a batch of two; 5. REST on C: every member, senders included.
    let status = b
        .rest_broadcast(
            &http,
            &[
                json!({"topic": "fan-self", "event": "four", "payload": {"n": 4}}),
                json!({"topic": "fan-self", "event": "five", "payload": {"n": 5}}),
            ],
        )
        .await
        .expect("REST batch on B");
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    c.rest_broadcast_ok(&http, "fan-self", "six", json!({"n": 6}))
        .await;

    // 6. C:1 (self, no ack) broadcasts: its own copy too. Each publication below waits until the
    // previous one is known to be published (a REST 202, an ack, the sender's own copy), so the
    // offsets are those of this script.
    c_self.broadcast_json(topic, "seven", json!({"n": 7})).await;
    for ev in ["four", "five", "six", "seven"] {
        let got = c_self
            .expect_broadcast(topic, &format!("'{ev}' at c_self"))
            .await;
        assert_eq!(
            got.event, ev,
            "c_self: each message once, in order: {got:?}"
        );
        record("c_self", got);
    }

    // 7. A:1 broadcasts raw bytes: V2 members on every node get them; V1 cannot carry bytes.
    let r = a_self
        .send_broadcast(topic, "eight", &bin_payload(&[0, 1, 2, 254, 255]))
        .await;
    for ev in ["four", "five", "six", "seven", "eight"] {
        let got = if ev == "eight" {
            reply_and_own_copy(&mut a_self, topic, &r).await
        } else {
            a_self
                .expect_broadcast(topic, &format!("'{ev}' at a_self"))
                .await
        };
        assert_eq!(
            got.event, ev,
            "a_self: each message once, in order: {got:?}"
        );
        record("a_self", got);
    }

    // 8. The sentinel, REST on A: nothing may arrive between a member's last message and it.
    a.rest_broadcast_ok(&http, "fan-self", "end", json!({"n": 9}))
        .await;

    let rest_of = ["four", "five", "six", "seven", "end"];
    for (who, m, events) in [
        ("a_self", &mut a_self, &["end"][..]),
        ("c_self", &mut c_self, &["end"][..]),
        (
            "b_first",
            &mut b_first,
            &["four", "five", "six", "seven", "eight", "end"][..],
        ),
        ("a_quiet", &mut a_quiet, &rest_of[..]),
        ("b_quiet", &mut b_quiet, &rest_of[..]),
    ] {
        for ev in events {
            let got = m.expect_broadcast(topic, &format!("'{ev}' at {who}")).await;
            assert_eq!(
                got.event, *ev,
                "{who}: expected '{ev}' next (each message once, in order), got {got:?}"
            );
            record(who, got);
        }
    }

    // Every member saw the offsets of the messages meant for it, and every node agrees on each
    // message's cursor and content.
    let expected: HashMap<&str, Vec<u64>> = HashMap::from([
        ("a_self", vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("b_first", vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("c_self", vec![1, 2, 3, 4, 5, 6, 7, 9]),
        ("a_quiet", vec![1, 3, 4, 5, 6, 7, 9]),
        ("b_quiet", vec![1, 2, 4, 5, 6, 7, 9]),
    ]);
    let mut by_offset: HashMap<u64, (String, BcastPayload, String, &str)> = HashMap::new();
    for (who, list) in &seen {
        let offsets: Vec<u64> = list.iter().map(|x| x.0).collect();
        assert_eq!(offsets, expected[who], "{who}: offsets received");
        for (off, ev, payload, cursor) in list {
            let first = by_offset
                .entry(*off)
                .or_insert_with(|| (ev.clone(), payload.clone(), cursor.clone(), who));
            assert_eq!(
                (&first.0, &first.1, &first.2),
                (ev, payload, cursor),
                "offset {off}: {who} and {} disagree",
                first.3
            );
        }
    }
    assert_eq!(
        by_offset[&8].1,
        BcastPayload::Bytes(vec![0, 1, 2, 254, 255]),
        "raw bytes cross nodes unchanged"
    );
}

/// What one publisher sent, in its order: `(publisher, k)` in each payload.
type Sent = Vec<(String, u64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_on_every_node_sees_concurrent_publishers_in_one_offset_order() {
    let (_redis, nodes) = three_nodes().await;
    let topic = "realtime:fan-order";
    const WS_EACH: u64 = 100;
    const REST_EACH: u64 = 20; // requests of two messages each

    let mut members = Vec::new();
    for node in &nodes {
        for vsn in [Vsn::V1, Vsn::V2] {
            let mut m = node.ws(vsn, &anon()).await;
            m.join_ok(topic, json!({})).await;
            members.push((format!("{}/{}", node.name, vsn.as_str()), m));
        }
    }

    // On every node at once: a WebSocket publisher pipelining its broadcasts (acked), and a REST
    // publisher posting batches of two.
    let mut publishers = Vec::new();
    for node in &nodes {
        let mut p = node.ws(Vsn::V2, &anon()).await;
        p.join_ok(topic, json!({"broadcast": {"ack": true}})).await;
        let name = format!("ws-{}", node.name);
        publishers.push(tokio::spawn(async move {
            let mut refs = Vec::new();
            for k in 0..WS_EACH {
                let payload = json_payload(&json!({"p": name, "k": k}));
                refs.push(p.send_broadcast(topic, "ws", &payload).await);
            }
            for r in refs {
                let reply = p
                    .expect_reply(topic, &r, &format!("{name}: the ack of push {r}"))
                    .await;
                assert_eq!(reply.status(), "ok", "{name}: {reply:?}");
            }
            (0..WS_EACH).map(|k| (name.clone(), k)).collect::<Sent>()
        }));
        let (url, name) = (node.http(""), format!("rest-{}", node.name));
        let http = http_client();
        publishers.push(tokio::spawn(async move {
            let mut sent = Sent::new();
            for i in 0..REST_EACH {
                let msgs: Vec<Value> = (2 * i..2 * i + 2)
                    .map(|k| json!({"topic": "fan-order", "event": "rest", "payload": {"p": name, "k": k}}))
                    .collect();
                let resp = http
                    .post(format!("{url}/realtime/v1/api/broadcast"))
                    .bearer_auth(tests::token("service_role", "backend", 600))
                    .json(&json!({ "messages": msgs }))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: POST {i}: {e}"));
                assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "{name}: POST {i}");
                sent.extend([(name.clone(), 2 * i), (name.clone(), 2 * i + 1)]);
            }
            sent
        }));
    }
    let mut sent: Vec<(String, u64)> = Vec::new();
    for p in publishers {
        sent.extend(
            tokio::time::timeout(WAIT * 4, p)
                .await
                .expect("timed out waiting for the publishers")
                .expect("publisher task"),
        );
    }
    let total = sent.len() as u64;
    assert_eq!(total, 3 * (WS_EACH + 2 * REST_EACH));

    // Every member: offsets 1..=total, each once, in order; the same message at each offset on
    // every node; each publisher's messages in the order it sent them; nothing missing.
    let mut reference: Option<(String, Vec<(String, Value)>)> = None;
    for (who, m) in &mut members {
        let got = m
            .expect_offsets(topic, 1..=total, &format!("member {who}"), WAIT)
            .await;
        let list: Vec<(String, Value)> =
            got.iter().map(|b| (b.cursor(), b.json().clone())).collect();
        let mut last_k: HashMap<String, u64> = HashMap::new();
        for (cursor, v) in &list {
            let (p, k) = (
                v["p"].as_str().expect("payload.p").to_owned(),
                v["k"].as_u64().expect("payload.k"),
            );
            if let Some(prev) = last_k.insert(p.clone(), k) {
                assert!(
                    k > prev,
                    "{who}: {p}'s message {k} (at {cursor}) after its message {prev}"
                );
            }
        }
        let mut received: Vec<(String, u64)> = list
            .iter()
            .map(|(_, v)| {
                (
                    v["p"].as_str().unwrap_or("").to_owned(),
                    v["k"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        received.sort();
        let mut all = sent.clone();
        all.sort();
        assert_eq!(received, all, "{who}: exactly the published messages");
        match &reference {
            None => reference = Some((who.clone(), list)),
            Some((first, expected)) => assert!(
                &list == expected,
                "{who} and {first} saw different messages at some offset"
            ),
        }
        m.assert_silent(100, &format!("{who}: nothing after the last offset"))
            .await;
    }
}
