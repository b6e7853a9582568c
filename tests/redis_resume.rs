//! Resume across hub processes on one Redis: while publishers on other nodes keep publishing, a
//! client reads on one node, loses its connection, and rejoins on another node with its last
//! `meta.cursor`: it gets every message it missed and then the live stream, with zero loss and
//! zero duplicates, whether or not the new node already followed the topic.
//!
//! Needs Redis and the hub binary: run with `scripts/test`. Uses Redis database 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tests::nodes::start_nodes;
use tests::redis_backend::TestRedis;
use tests::{Bcast, Vsn, WAIT, anon, json_payload, wait_until};

const DB: u32 = 3;
/// Messages the publisher sends in all.
const TOTAL: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_between_nodes_resumes_with_zero_loss_and_zero_duplicates() {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, &[]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = "realtime:resume-move";

    // A reference member on B, and two roamers: one from A to C (C has no member of the topic
    // until the roamer arrives), one from C to A (A follows the topic all along).
    let mut reference = b.ws(Vsn::V1, &anon()).await;
    reference.join_ok(topic, json!({})).await;
    let mut to_c = a.ws(Vsn::V2, &anon()).await;
    to_c.join_ok(topic, json!({})).await;
    let mut to_a = c.ws(Vsn::V1, &anon()).await;
    to_a.join_ok(topic, json!({})).await;
    let mut stay_on_a = a.ws(Vsn::V2, &anon()).await;
    stay_on_a.join_ok(topic, json!({})).await;

    // The publisher: a client on B broadcasting with ack, one at a time, counting acks.
    let acked = Arc::new(AtomicU64::new(0));
    let mut publisher = b.ws(Vsn::V2, &anon()).await;
    publisher
        .join_ok(topic, json!({"broadcast": {"ack": true}}))
        .await;
    let publishing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for k in 1..=TOTAL {
                let r = publisher
                    .send_broadcast(topic, "m", &json_payload(&json!({"k": k})))
                    .await;
                let reply = publisher
                    .expect_reply(topic, &r, &format!("the ack of message {k}"))
                    .await;
                assert_eq!(reply.status(), "ok", "message {k}: {reply:?}");
                acked.store(k, Ordering::Relaxed);
            }
            publisher
        })
    };

    // Both roamers read the first 50 live, then lose their connections mid-stream.
    let first_a = to_c
        .expect_offsets(topic, 1..=50, "A→C roamer, live on A", WAIT)
        .await;
    let first_c = to_a
        .expect_offsets(topic, 1..=50, "C→A roamer, live on C", WAIT)
        .await;
    let (cursor_a, cursor_c) = (first_a[49].cursor(), first_c[49].cursor());
    to_c.drop_abruptly();
    to_a.drop_abruptly();
    let acked_at_drop = acked.load(Ordering::Relaxed);

    // They come back on the other node once at least 150 more messages were published, and
    // resume while the publisher is still going.
    wait_until("150 more messages are acked after the drop", || {
        acked.load(Ordering::Relaxed) >= acked_at_drop + 150
    })
    .await;
    let mut on_c = c.ws(Vsn::V1, &anon()).await;
    on_c.join_ok(topic, json!({"broadcast": {"resume": {"since": cursor_a}}}))
        .await;
    let mut on_a = a.ws(Vsn::V2, &anon()).await;
    on_a.join_ok(topic, json!({"broadcast": {"resume": {"since": cursor_c}}}))
        .await;
    let acked_at_resume = acked.load(Ordering::Relaxed);
    assert!(
        acked_at_resume < TOTAL,
        "the publisher was still going when the roamers resumed ({acked_at_resume} of {TOTAL})"
    );

    let resumed_c = on_c
        .expect_offsets(topic, 51..=TOTAL, "A→C roamer, resumed on C", WAIT)
        .await;
    let resumed_a = on_a
        .expect_offsets(topic, 51..=TOTAL, "C→A roamer, resumed on A", WAIT)
        .await;
    let mut publisher = tokio::time::timeout(WAIT * 6, publishing)
        .await
        .expect("timed out waiting for the publisher")
        .expect("publisher task");

    // The resumed streams begin with history (replayed) and end live, with the same cursor and
    // payload at every offset as a member that never moved.
    let stayed = reference
        .expect_offsets(topic, 1..=TOTAL, "the reference member on B", WAIT)
        .await;
    let also_stayed = stay_on_a
        .expect_offsets(topic, 1..=TOTAL, "the member that stayed on A", WAIT)
        .await;
    for (name, resumed) in [("A→C", &resumed_c), ("C→A", &resumed_a)] {
        assert!(
            resumed[0].replayed(),
            "{name}: the first missed message came from history: {:?}",
            resumed[0]
        );
        assert!(
            !resumed[resumed.len() - 1].replayed(),
            "{name}: the last message came live"
        );
        let live_from = resumed.iter().position(|m| !m.replayed()).unwrap_or(0);
        assert!(
            resumed[live_from..].iter().all(|m| !m.replayed()),
            "{name}: once live, no replayed message follows"
        );
        for (m, r) in resumed.iter().zip(&stayed[50..]) {
            assert_eq!(
                (m.cursor(), m.json()),
                (r.cursor(), r.json()),
                "{name}: same message at {}",
                r.offset()
            );
        }
        eprintln!(
            "{name}: {} missed messages replayed, then {} live",
            live_from,
            resumed.len() - live_from
        );
    }
    for (x, y) in stayed.iter().zip(&also_stayed) {
        assert_eq!((x.cursor(), x.json()), (y.cursor(), y.json()));
    }
    for (k, m) in stayed.iter().enumerate() {
        assert_eq!(m.json(), &json!({"k": k as u64 + 1}), "publish order");
    }

    // One more message: for every member it is the next broadcast (nothing came twice).
    let r = publisher
        .send_broadcast(topic, "end", &json_payload(&json!({})))
        .await;
    publisher
        .expect_reply(topic, &r, "the ack of the sentinel")
        .await;
    for (who, m) in [
        ("resumed on C", &mut on_c),
        ("resumed on A", &mut on_a),
        ("reference", &mut reference),
        ("stayed on A", &mut stay_on_a),
    ] {
        let b: Bcast = m
            .expect_broadcast(topic, &format!("the sentinel ({who})"))
            .await;
        assert_eq!(
            (b.event.as_str(), b.offset()),
            ("end", TOTAL + 1),
            "{who}: nothing duplicated before the sentinel"
        );
    }
}
