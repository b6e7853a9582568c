//! Heartbeats, joins, leaves and channel routing (PROTOCOL §1.3, §1.4, §2, §10.3–10.5).

use serde_json::{Value, json};
use tests::{TestHub, Vsn, WsClient, anon, json_payload};

#[tokio::test]
async fn heartbeat_reply_v1_exact_shape() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}"#)
        .await;
    let reply = c.next_json("the V1 heartbeat reply").await;
    assert_eq!(
        reply,
        json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"9"})
    );
}

#[tokio::test]
async fn heartbeat_reply_v2_exact_shape() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    c.send_text(r#"[null,"7","phoenix","heartbeat",{}]"#).await;
    let reply = c.next_json("the V2 heartbeat reply").await;
    assert_eq!(
        reply,
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn join_reply_echoes_postgres_changes_bindings_in_order_with_numeric_ids() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let bindings = json!([
        {"event": "INSERT", "schema": "public", "table": "todos"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"},
        {"event": "DELETE", "schema": "public", "table": "t", "select": ["id"]}
    ]);
    c.send_text(
        json!(["6", "6", "realtime:db", "phx_join", {"config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false},
            "postgres_changes": bindings,
            "private": false
        }}])
        .to_string(),
    )
    .await;
    let reply = c.next_json("the join reply with bindings").await;
    let a = reply.as_array().expect("V2 array");
    assert_eq!(
        &a[..4],
        &[
            json!("6"),
            json!("6"),
            json!("realtime:db"),
            json!("phx_reply")
        ]
    );
    assert_eq!(a[4]["status"], "ok");
    let echoed = a[4]["response"]["postgres_changes"]
        .as_array()
        .expect("response.postgres_changes is an array");
    let sent = bindings.as_array().unwrap();
    assert_eq!(echoed.len(), sent.len(), "reply {reply}");
    for (e, s) in echoed.iter().zip(sent) {
        assert!(e["id"].is_u64(), "id must be a JSON integer: {e}");
        let mut without_id = e.clone();
        without_id.as_object_mut().unwrap().remove("id");
        assert_eq!(&without_id, s, "binding echoed unchanged and in order");
    }
}

#[tokio::test]
async fn join_without_bindings_replies_empty_list_v1_without_join_ref() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    c.send_text(
        r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#,
    )
    .await;
    let reply = c.next_json("the V1 join reply").await;
    assert_eq!(
        reply,
        json!({"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"6"})
    );
}

#[tokio::test]
async fn empty_topic_name_is_refused() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let reply = c.join("realtime:", json!({})).await;
    assert_eq!(reply.status(), "error");
    assert_eq!(
        reply.response(),
        &json!({"reason": "TopicNameRequired: You must provide a topic name"})
    );
    assert_eq!(
        reply.join_ref, reply.msg_ref,
        "reply echoes join_ref and ref"
    );
}

#[tokio::test]
async fn channel_limit_is_enforced_per_connection() {
    let hub = TestHub::spawn_with(|cfg| cfg.max_channels = 3).await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    for i in 0..3 {
        c.join_ok(&format!("realtime:lim{i}"), json!({})).await;
    }
    let reply = c.join("realtime:lim3", json!({})).await;
    assert_eq!(reply.status(), "error");
    assert_eq!(
        reply.response(),
        &json!({"reason": "ChannelRateLimitReached: Too many channels"})
    );
    // Rejoining a topic already joined replaces it and is not a new channel.
    c.join_ok("realtime:lim0", json!({})).await;
    // Leaving frees a slot.
    let r = c.leave("realtime:lim1").await;
    let reply = c.expect_reply("realtime:lim1", &r, "the leave reply").await;
    assert_eq!(reply.status(), "ok");
    c.join_ok("realtime:lim3", json!({})).await;
    // Another connection has its own budget.
    let mut d = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    d.join_ok("realtime:lim9", json!({})).await;
}

#[tokio::test]
async fn push_to_unjoined_topic_is_unmatched() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    c.send_text(
        r#"["1","2","realtime:nowhere","broadcast",{"type":"broadcast","event":"e","payload":{}}]"#,
    )
    .await;
    let reply = c
        .next_json("the reply to a push on an unjoined topic")
        .await;
    assert_eq!(
        reply,
        json!(["1", "2", "realtime:nowhere", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}

#[tokio::test]
async fn leave_replies_ok_then_closes_and_stops_delivery() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut p = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    c.join_ok("realtime:room1", json!({})).await;
    p.join_ok("realtime:room1", json!({})).await;
    let jr = c.join_ref("realtime:room1");
    let r = c.leave("realtime:room1").await;
    let reply = c.next_json("the phx_leave reply").await;
    assert_eq!(
        reply,
        json!([jr, r, "realtime:room1", "phx_reply", {"status": "ok", "response": {}}])
    );
    let close = c.next_json("phx_close after the leave").await;
    assert_eq!(close, json!([jr, jr, "realtime:room1", "phx_close", {}]));
    p.send_broadcast("realtime:room1", "ev", &json_payload(&json!({"a": 1})))
        .await;
    c.assert_silent(300, "no delivery after phx_leave").await;
}

#[tokio::test]
async fn second_join_replaces_the_first() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut p = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    p.join_ok("realtime:dup", json!({})).await;
    c.send_text(r#"["1","1","realtime:dup","phx_join",{"config":{}}]"#)
        .await;
    let first = c.next_json("the first join reply").await;
    assert_eq!(first[4]["status"], "ok");
    c.send_text(r#"["2","2","realtime:dup","phx_join",{"config":{}}]"#)
        .await;
    let close = c.next_json("phx_close for the replaced join").await;
    assert_eq!(close, json!(["1", "1", "realtime:dup", "phx_close", {}]));
    let second = c.next_json("the second join reply").await;
    assert_eq!(
        second,
        json!(["2", "2", "realtime:dup", "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}])
    );
    p.send_broadcast("realtime:dup", "ev", &json_payload(&json!({"n": 1})))
        .await;
    let b = c.next_broadcast("the one delivery after rejoining").await;
    assert_eq!(b.event, "ev");
    c.assert_silent(300, "no second copy of the broadcast")
        .await;
}

#[tokio::test]
async fn public_and_private_of_one_name_are_isolated() {
    let hub = TestHub::spawn().await;
    let mut public = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut private = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut public_sender = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut private_sender = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    public
        .join_ok("realtime:iso", json!({"private": false}))
        .await;
    private
        .join_ok("realtime:iso", json!({"private": true}))
        .await;
    public_sender.join_ok("realtime:iso", json!({})).await;
    private_sender
        .join_ok("realtime:iso", json!({"private": true}))
        .await;

    public_sender
        .send_broadcast("realtime:iso", "pub", &json_payload(&json!({})))
        .await;
    assert_eq!(
        public.next_broadcast("the public broadcast").await.event,
        "pub"
    );
    private
        .assert_silent(300, "a private member gets no public broadcast")
        .await;

    private_sender
        .broadcast_json("realtime:iso", "priv", json!({}))
        .await;
    let b = private.next_broadcast("the private broadcast").await;
    assert_eq!(
        (b.topic.as_str(), b.event.as_str()),
        ("realtime:iso", "priv")
    );
    public
        .assert_silent(300, "a public member gets no private broadcast")
        .await;
}

#[tokio::test]
async fn unknown_phoenix_event_is_unmatched_and_topics_must_be_realtime() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    c.send_text(r#"[null,"1","phoenix","other",{}]"#).await;
    let v: Value = c.next_json("the reply to an unknown phoenix event").await;
    assert_eq!(v[4]["status"], "error");
    let reply = c.join("room-without-prefix", json!({})).await;
    assert_eq!(reply.status(), "error", "reply {reply:?}");
}
