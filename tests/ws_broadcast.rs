//! Broadcast over the socket (PROTOCOL §1.3 kinds 3/4, §3.1–3.3, §10.7–10.8): V2 members get
//! kind-4 frames, V1 members JSON, both with `meta.cursor`; `self`, `ack`, raw payloads, the JSON
//! text forms, gap-free offsets and the payload size limit.

use serde_json::{Value, json};
use tests::{Bcast, BcastPayload, TestHub, Vsn, WsClient, anon, bin_payload, json_payload};

const TOPIC: &str = "realtime:room1";

/// A V2 sender and one V1 and one V2 member, all joined with `sender_config` for the sender.
async fn mixed(hub: &TestHub, sender_config: Value) -> (WsClient, WsClient, WsClient) {
    let mut sender = WsClient::connect(hub, Vsn::V2, &anon()).await;
    let mut v1 = WsClient::connect(hub, Vsn::V1, &anon()).await;
    let mut v2 = WsClient::connect(hub, Vsn::V2, &anon()).await;
    sender.join_ok(TOPIC, sender_config).await;
    v1.join_ok(TOPIC, json!({})).await;
    v2.join_ok(TOPIC, json!({})).await;
    (sender, v1, v2)
}

fn cursor_parts(c: &str) -> (String, u64) {
    let (e, o) = c.rsplit_once(':').expect("cursor is <epoch>:<offset>");
    (e.to_owned(), o.parse().expect("numeric offset"))
}

#[tokio::test]
async fn kind_3_reaches_v2_as_kind_4_and_v1_as_json_with_cursor() {
    let hub = TestHub::spawn().await;
    let (mut sender, mut v1, mut v2) = mixed(&hub, json!({})).await;
    sender
        .send_broadcast(TOPIC, "cursor", &json_payload(&json!({"x": 1, "y": 2})))
        .await;

    // V2: exactly one binary frame, kind 4, encoding 1, metadata {"cursor": "<epoch>:1"}.
    let raw = v2.next_binary("the kind-4 frame at the V2 member").await;
    let ub = channels::codec::binary::decode_user_broadcast(&raw).expect("a kind-4 frame");
    assert_eq!(raw[0], 4);
    assert_eq!((ub.topic, ub.event, ub.json), (TOPIC, "cursor", true));
    let payload: Value = serde_json::from_slice(ub.payload).unwrap();
    assert_eq!(payload, json!({"x": 1, "y": 2}));
    let meta: Value = serde_json::from_str(ub.meta).expect("metadata is JSON");
    let cursor = meta["cursor"].as_str().expect("meta.cursor").to_owned();
    assert_eq!(
        meta,
        json!({"cursor": cursor}),
        "metadata holds only the cursor"
    );
    let (epoch, offset) = cursor_parts(&cursor);
    assert!(!epoch.is_empty());
    assert_eq!(offset, 1, "the first message of a topic has offset 1");

    // V1: the JSON object, with the same cursor in payload.meta.
    let msg = v1.next_json("the JSON broadcast at the V1 member").await;
    assert_eq!(
        msg,
        json!({"topic": TOPIC, "event": "broadcast", "payload": {
            "type": "broadcast", "event": "cursor", "payload": {"x": 1, "y": 2},
            "meta": {"cursor": cursor}
        }, "ref": null})
    );
    sender
        .assert_silent(
            300,
            "self: false → the sender gets nothing back, no ack reply",
        )
        .await;
}

#[tokio::test]
async fn self_true_delivers_to_the_sender() {
    let hub = TestHub::spawn().await;
    let (mut sender, mut v1, _v2) = mixed(&hub, json!({"broadcast": {"self": true}})).await;
    sender
        .send_broadcast(TOPIC, "echo", &json_payload(&json!({"me": true})))
        .await;
    let own = sender.next_broadcast("the sender's own broadcast").await;
    assert!(own.binary_frame);
    assert_eq!(
        (own.event.as_str(), own.json()),
        ("echo", &json!({"me": true}))
    );
    sender.assert_silent(200, "one copy, no ack reply").await;
    // The V1 flavour of self.
    let mut v1_self = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    v1_self
        .join_ok(TOPIC, json!({"broadcast": {"self": "true"}}))
        .await;
    v1_self.broadcast_json(TOPIC, "v1echo", json!({})).await;
    let b = v1_self
        .next_broadcast("the V1 sender's own broadcast")
        .await;
    assert_eq!(b.event, "v1echo");
    assert_eq!(v1.expect_broadcast(TOPIC, "echo at v1").await.event, "echo");
    assert_eq!(v1.next_broadcast("v1echo at v1").await.event, "v1echo");
}

#[tokio::test]
async fn ack_true_replies_ok_and_ack_false_replies_nothing() {
    let hub = TestHub::spawn().await;
    let (mut sender, _v1, mut v2) =
        mixed(&hub, json!({"broadcast": {"ack": true, "self": false}})).await;
    let jr = sender.join_ref(TOPIC);
    let r = sender
        .send_broadcast(TOPIC, "acked", &json_payload(&json!({})))
        .await;
    let reply = sender.next_json("the ack reply").await;
    assert_eq!(
        reply,
        json!([jr, r, TOPIC, "phx_reply", {"status": "ok", "response": {}}])
    );
    v2.next_broadcast("the acked broadcast").await;

    // The JSON form with ack from V1 gets a V1 reply.
    let mut v1_ack = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    v1_ack
        .join_ok(TOPIC, json!({"broadcast": {"ack": true}}))
        .await;
    let r = v1_ack.broadcast_json(TOPIC, "acked1", json!({})).await;
    let reply = v1_ack.next_json("the V1 ack reply").await;
    assert_eq!(
        reply,
        json!({"topic": TOPIC, "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": r})
    );

    let mut quiet = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    quiet
        .join_ok(TOPIC, json!({"broadcast": {"ack": false}}))
        .await;
    quiet
        .send_broadcast(TOPIC, "unacked", &json_payload(&json!({})))
        .await;
    quiet.assert_silent(300, "ack: false → no reply").await;
    // Both were still delivered, in order.
    assert_eq!(
        v2.next_broadcast("the V1 acked broadcast").await.event,
        "acked1"
    );
    assert_eq!(
        v2.next_broadcast("the unacked broadcast").await.event,
        "unacked"
    );
}

#[tokio::test]
async fn binary_payload_reaches_v2_only() {
    let hub = TestHub::spawn().await;
    let (mut sender, mut v1, mut v2) = mixed(&hub, json!({})).await;
    sender
        .send_broadcast(TOPIC, "bin", &bin_payload(&[1, 2, 3, 0, 255]))
        .await;
    let raw = v2.next_binary("the raw kind-4 frame").await;
    let ub = channels::codec::binary::decode_user_broadcast(&raw).unwrap();
    assert!(!ub.json, "encoding 0 for raw bytes");
    assert_eq!((ub.event, ub.payload), ("bin", &[1u8, 2, 3, 0, 255][..]));
    v1.assert_silent(300, "V1 gets nothing for a raw-bytes payload")
        .await;
    // V1 still gets the next JSON message, whose offset shows the raw one was numbered too.
    sender
        .send_broadcast(TOPIC, "after", &json_payload(&json!({})))
        .await;
    let b = v1
        .next_broadcast("the JSON message after the raw one")
        .await;
    assert_eq!((b.event.as_str(), b.offset()), ("after", 2));
}

#[tokio::test]
async fn json_text_broadcast_forms_are_accepted() {
    let hub = TestHub::spawn().await;
    let (mut sender, mut v1, mut v2) = mixed(&hub, json!({})).await;
    let jr = sender.join_ref(TOPIC);
    // The documented V2 text form (PROTOCOL §3.1).
    sender
        .send_text(
            json!([jr, "50", TOPIC, "broadcast", {"type": "broadcast", "event": "arr", "payload": {"k": [1, 2]}}])
                .to_string(),
        )
        .await;
    let b = v2.next_broadcast("the array-form broadcast at V2").await;
    assert_eq!((b.event.as_str(), b.json()), ("arr", &json!({"k": [1, 2]})));
    let b = v1.next_broadcast("the array-form broadcast at V1").await;
    assert_eq!((b.event.as_str(), b.json()), ("arr", &json!({"k": [1, 2]})));
    // A broadcast without payload delivers {}.
    sender
        .send_text(
            json!([jr, "51", TOPIC, "broadcast", {"type": "broadcast", "event": "nop"}])
                .to_string(),
        )
        .await;
    let b = v1.next_broadcast("the payload-less broadcast").await;
    assert_eq!((b.event.as_str(), b.json()), ("nop", &json!({})));
    // A broadcast without an event is refused with a reason.
    sender
        .send_text(json!([jr, "52", TOPIC, "broadcast", {"type": "broadcast"}]).to_string())
        .await;
    let reply = sender
        .next_msg("the reply to a broadcast without event")
        .await;
    assert_eq!(reply.status(), "error");
    assert!(reply.response()["reason"].is_string(), "reply {reply:?}");
}

#[tokio::test]
async fn offsets_increase_by_exactly_one_and_are_shared_across_formats() {
    let hub = TestHub::spawn().await;
    let (mut sender, mut v1, mut v2) = mixed(&hub, json!({})).await;
    for i in 0..50 {
        sender
            .send_broadcast(TOPIC, "n", &json_payload(&json!({"i": i})))
            .await;
    }
    let mut epoch = None;
    for i in 0..50u64 {
        let a: Bcast = v2.next_broadcast(&format!("message {i} at V2")).await;
        let b: Bcast = v1.next_broadcast(&format!("message {i} at V1")).await;
        assert_eq!(a.offset(), i + 1);
        assert_eq!(
            a.cursor(),
            b.cursor(),
            "one cursor per message, whatever the format"
        );
        assert_eq!(a.json(), &json!({"i": i}));
        assert_eq!(b.payload, BcastPayload::Json(json!({"i": i})));
        let e = a.epoch();
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch per topic");
    }
}

#[tokio::test]
async fn oversized_payload_with_ack_gets_an_error_and_is_not_delivered() {
    let hub = TestHub::spawn_with(|cfg| cfg.max_payload_bytes = 1024).await;
    let (mut sender, mut v1, mut v2) = mixed(&hub, json!({"broadcast": {"ack": true}})).await;
    let jr = sender.join_ref(TOPIC);
    let big = json!({"data": "x".repeat(2000)});
    let r = sender
        .send_broadcast(TOPIC, "big", &json_payload(&big))
        .await;
    let reply = sender
        .next_json("the error reply to an oversized broadcast")
        .await;
    assert_eq!(
        reply,
        json!([jr, r, TOPIC, "phx_reply", {"status": "error", "response": {"error": "payload_size_exceeded"}}])
    );
    v2.assert_silent(300, "oversized broadcast not delivered")
        .await;
    v1.assert_silent(10, "oversized broadcast not delivered")
        .await;
    // A payload at the limit passes.
    let fits = json!({"d": "y".repeat(1024 - 8)});
    assert_eq!(fits.to_string().len(), 1024);
    sender
        .send_broadcast(TOPIC, "fits", &json_payload(&fits))
        .await;
    let reply = sender.next_msg("the ack of a payload at the limit").await;
    assert_eq!(reply.status(), "ok");
    assert_eq!(
        v2.next_broadcast("the payload at the limit").await.event,
        "fits"
    );
}
