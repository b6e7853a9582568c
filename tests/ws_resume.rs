//! Resume from a cursor (`config.broadcast.resume.since`) and Supabase replay
//! (`config.broadcast.replay`): history then live with no gap and no duplicate, loss reported as a
//! `system` error, invalid cursors refused at join.

use serde_json::{Value, json};
use tests::{Bcast, TestHub, Vsn, WsClient, anon, json_payload, now_ms};

/// Publishes `n` messages `{"i": k}` from a fresh socket and returns the cursors a live V1 member
/// saw for them, in order, plus both clients (kept joined).
async fn publish_seen(hub: &TestHub, topic: &str, n: u64) -> (Vec<String>, WsClient, WsClient) {
    let mut publisher = WsClient::connect(hub, Vsn::V2, &anon()).await;
    let mut watcher = WsClient::connect(hub, Vsn::V1, &anon()).await;
    publisher.join_ok(topic, json!({})).await;
    watcher.join_ok(topic, json!({})).await;
    let mut cursors = Vec::new();
    for k in 1..=n {
        publisher
            .send_broadcast(topic, "m", &json_payload(&json!({"i": k})))
            .await;
        let b = watcher.next_broadcast(&format!("live message {k}")).await;
        assert_eq!(b.offset(), k);
        cursors.push(b.cursor());
    }
    (cursors, publisher, watcher)
}

fn resume(since: &str) -> Value {
    json!({"broadcast": {"resume": {"since": since}}})
}

#[tokio::test]
async fn resume_from_a_cursor_gets_exactly_the_later_messages_then_live() {
    let hub = TestHub::spawn().await;
    let topic = "realtime:resume1";
    let (cursors, mut publisher, _w) = publish_seen(&hub, topic, 5).await;
    let mut late = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    late.join_ok(topic, resume(&cursors[1])).await;
    for k in 3..=5u64 {
        let b = late.next_broadcast(&format!("history message {k}")).await;
        assert_eq!(b.cursor(), cursors[k as usize - 1]);
        assert_eq!(b.json(), &json!({"i": k}));
        assert!(b.replayed(), "history is marked replayed: {b:?}");
    }
    late.assert_silent(200, "nothing but messages 3..=5 from history")
        .await;
    publisher
        .send_broadcast(topic, "m", &json_payload(&json!({"i": 6})))
        .await;
    let b = late.next_broadcast("live message 6").await;
    assert_eq!(b.offset(), 6);
    assert!(
        !b.replayed(),
        "live messages are not marked replayed: {b:?}"
    );
    late.assert_silent(200, "no duplicate after live message 6")
        .await;
}

#[tokio::test]
async fn resume_from_zero_gets_the_whole_ring_v1() {
    let hub = TestHub::spawn().await;
    let topic = "realtime:resume0";
    let (cursors, _p, _w) = publish_seen(&hub, topic, 5).await;
    let mut late = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    late.join_ok(topic, resume("0")).await;
    for (k, c) in cursors.iter().enumerate() {
        let b = late
            .next_broadcast(&format!("history message {}", k + 1))
            .await;
        assert_eq!(&b.cursor(), c);
        assert!(!b.binary_frame, "V1 gets JSON");
    }
    late.assert_silent(200, "exactly the five retained messages")
        .await;
}

#[tokio::test]
async fn cursor_older_than_the_ring_reports_not_recovered() {
    let hub = TestHub::spawn_with(|cfg| cfg.history_size = 5).await;
    let topic = "realtime:resume-old";
    let (cursors, _p, _w) = publish_seen(&hub, topic, 10).await;
    let mut late = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    late.join_ok(topic, resume(&cursors[1])).await;
    let jr = late.join_ref(topic);
    let sys = late.next_msg("the system message about lost history").await;
    assert_eq!(sys.event, "system");
    assert_eq!(sys.join_ref.as_deref(), Some(jr.as_str()));
    assert_eq!(sys.msg_ref, None);
    assert_eq!(sys.payload["extension"], "system");
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(sys.payload["channel"], "resume-old");
    let message = sys.payload["message"].as_str().unwrap_or_default();
    assert!(message.contains("not recovered"), "message {message:?}");
    // What the ring still holds follows, in order.
    for k in 6..=10u64 {
        let b = late.next_broadcast(&format!("retained message {k}")).await;
        assert_eq!(b.offset(), k);
    }
    late.assert_silent(200, "nothing else").await;
}

#[tokio::test]
async fn cursor_of_another_epoch_reports_not_recovered() {
    let hub = TestHub::spawn().await;
    let topic = "realtime:resume-epoch";
    let (cursors, mut publisher, _w) = publish_seen(&hub, topic, 3).await;
    let epoch = cursors[0].rsplit_once(':').unwrap().0.to_owned();
    // Same length and alphabet, different epoch.
    let last = if epoch.ends_with('x') { 'y' } else { 'x' };
    let other = format!("{}{last}:1", &epoch[..epoch.len() - 1]);
    assert_ne!(other.rsplit_once(':').unwrap().0, epoch);
    let mut late = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    late.join_ok(topic, resume(&other)).await;
    let sys = late
        .next_msg("the system message about another epoch")
        .await;
    assert_eq!(
        (sys.event.as_str(), &sys.payload["status"]),
        ("system", &json!("error"))
    );
    let message = sys.payload["message"].as_str().unwrap_or_default();
    assert!(message.contains("not recovered"), "message {message:?}");
    // The channel is live all the same.
    publisher
        .send_broadcast(topic, "m", &json_payload(&json!({"i": 4})))
        .await;
    let b: Bcast = late
        .next_broadcast("the live message after the epoch mismatch")
        .await;
    assert_eq!(b.offset(), 4);
}

#[tokio::test]
async fn invalid_cursor_is_a_join_error() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    for bad in [
        json!("abc"),
        json!("e:x"),
        json!(":5"),
        json!(12),
        json!({}),
    ] {
        let reply = c
            .join(
                "realtime:resume-bad",
                json!({"broadcast": {"resume": {"since": bad}}}),
            )
            .await;
        assert_eq!(reply.status(), "error", "since {bad}: {reply:?}");
        let reason = reply.response()["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("InvalidJoinPayload"),
            "since {bad}: reason {reason:?}"
        );
    }
}

/// The core guarantee: a member that joins with `since: "0"` while another socket publishes as
/// fast as it can sees every offset exactly once, in order, across the history/live boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_gapless_under_concurrent_publishing() {
    const N: u64 = 2000;
    let hub = TestHub::spawn_with(|cfg| {
        cfg.history_size = 4000;
        cfg.outbox_messages = 8192;
    })
    .await;
    let topic = "realtime:gapless";
    let mut publisher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    publisher.join_ok(topic, json!({})).await;
    let mut observer = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    observer.join_ok(topic, json!({})).await;

    let publishing = tokio::spawn(async move {
        for i in 1..=N {
            publisher
                .send_broadcast(topic, "g", &json_payload(&json!({"i": i})))
                .await;
        }
        publisher
    });
    // Join mid-stream: once the observer has seen 200 messages live.
    let mut seen = 0;
    while seen < 200 {
        seen = observer
            .next_broadcast("the observer's live messages")
            .await
            .offset();
    }
    let mut late = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    late.join_ok(topic, resume("0")).await;
    let mut replayed = 0;
    for expect in 1..=N {
        let b = late
            .next_broadcast(&format!("offset {expect} at the late joiner"))
            .await;
        assert_eq!(b.offset(), expect, "gap or duplicate at the late joiner");
        assert_eq!(b.json(), &json!({"i": expect}));
        replayed += u64::from(b.replayed());
    }
    eprintln!("replayed {replayed} of {N}");
    late.assert_silent(200, "no message after offset 2000")
        .await;
    assert!(
        replayed >= 200,
        "joined mid-stream: {replayed} came from history"
    );
    let _publisher = publishing.await.expect("publisher task");
}

#[tokio::test]
async fn replay_since_a_time_delivers_marked_messages() {
    let hub = TestHub::spawn().await;
    let topic = "realtime:replay";
    let mut publisher = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    publisher.join_ok(topic, json!({"private": true})).await;
    watcher.join_ok(topic, json!({"private": true})).await;
    let before = now_ms();
    for i in 1..=4 {
        publisher.broadcast_json(topic, "r", json!({"i": i})).await;
        watcher.next_broadcast(&format!("live message {i}")).await;
    }
    let mut late = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    late.join_ok(
        topic,
        json!({"private": true, "broadcast": {"replay": {"since": before, "limit": 2}}}),
    )
    .await;
    for i in 3..=4 {
        let b = late.next_broadcast(&format!("replayed message {i}")).await;
        assert_eq!(b.json(), &json!({"i": i}), "the newest `limit` messages");
        assert!(b.replayed(), "meta.replayed == true: {b:?}");
    }
    late.assert_silent(200, "only `limit` messages are replayed")
        .await;

    let mut future = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    future
        .join_ok(
            topic,
            json!({"private": true, "broadcast": {"replay": {"since": now_ms() + 60_000}}}),
        )
        .await;
    future
        .assert_silent(200, "nothing published after `since`")
        .await;
    let reply = future
        .join(
            topic,
            json!({"private": true, "broadcast": {"replay": {"since": "yesterday"}}}),
        )
        .await;
    assert_eq!(reply.status(), "error");
    assert!(
        reply.response()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("InvalidJoinPayload")),
        "reply {reply:?}"
    );
}
