//! Per-connection and per-user rate limits on live sockets, with the Supabase shapes
//! (PROTOCOL §6): a join flood is answered `ClientJoinRateLimitReached: Too many joins per
//! second` and the socket closed; a message flood closes the channel with a `system` error
//! "Too many messages per second" then `phx_close`. Each is recovered from, and the
//! well-behaved clients beside the flooder keep receiving.

use serde_json::json;
use tests::{TestHub, Vsn, WsClient, anon, json_payload, token};

const TOPIC: &str = "realtime:limits";

/// Asserts the `system` error then `phx_close` that closes `c`'s channel on `topic`.
async fn expect_channel_shutdown(c: &mut WsClient, topic: &str, message: &str) {
    let sys = c
        .expect_event(topic, "system", "the system error of the flood")
        .await;
    assert_eq!(sys.payload["status"], json!("error"));
    assert_eq!(sys.payload["message"], json!(message));
    c.expect_event(topic, "phx_close", "phx_close after the system error")
        .await;
}

#[tokio::test]
async fn a_join_flood_is_refused_then_the_socket_closed_and_a_new_one_may_join() {
    let hub = TestHub::spawn_with(|c| {
        c.joins_per_sec = 1;
        c.join_burst = 3;
    })
    .await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    for i in 0..3 {
        c.join_ok(&format!("realtime:j{i}"), json!({})).await;
    }
    let refused = c.join("realtime:j3", json!({})).await;
    assert_eq!(refused.status(), "error", "{refused:?}");
    assert_eq!(
        refused.payload["response"]["reason"],
        json!("ClientJoinRateLimitReached: Too many joins per second")
    );
    let (code, reason) = c.expect_close("the disconnect after the join flood").await;
    assert_eq!((code, reason.as_str()), (1001, "Too many joins per second"));
    assert!(
        hub.state
            .node
            .stats
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // The limit is the connection's: a new one joins at once.
    let mut again = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    again.join_ok("realtime:j3", json!({})).await;
}

#[tokio::test]
async fn a_user_who_reconnects_for_fresh_join_bursts_is_still_held_to_the_user_limit() {
    let hub = TestHub::spawn_with(|c| {
        c.joins_per_sec = 0; // no per-connection limit: only the user's applies
        c.user_joins_per_sec = 1; // bursts of 10, shared by every connection of the user
    })
    .await;
    let user = token("authenticated", "rejoiner", 600);
    let mut a = WsClient::connect(&hub, Vsn::V2, &user).await;
    for i in 0..6 {
        a.join_ok(&format!("realtime:u{i}"), json!({})).await;
    }
    // A second socket of the same user draws from the same bucket: four more, then refused.
    let mut b = WsClient::connect(&hub, Vsn::V2, &user).await;
    for i in 6..10 {
        b.join_ok(&format!("realtime:u{i}"), json!({})).await;
    }
    let refused = b.join("realtime:u10", json!({})).await;
    assert_eq!(
        refused.payload["response"]["reason"],
        json!("ClientJoinRateLimitReached: Too many joins per second"),
        "{refused:?}"
    );
    let (code, _) = b
        .expect_close("the disconnect after the user's joins ran out")
        .await;
    assert_eq!(code, 1001);
    // Reconnecting does not refill it; another user and the anon key are not affected.
    let mut c = WsClient::connect(&hub, Vsn::V2, &user).await;
    let again = c.join("realtime:u11", json!({})).await;
    assert_eq!(
        again.status(),
        "error",
        "a fresh socket of the same user: {again:?}"
    );
    let mut other = WsClient::connect(&hub, Vsn::V2, &token("authenticated", "other", 600)).await;
    other.join_ok("realtime:u0", json!({})).await;
    // A project's shared key carries no `sub`: it stands for many users and is not counted.
    let shared_key = tests::token_claims(&json!({"role": "anon", "exp": tests::now_secs() + 600}));
    let mut shared = WsClient::connect(&hub, Vsn::V2, &shared_key).await;
    for i in 0..12 {
        shared.join_ok(&format!("realtime:s{i}"), json!({})).await;
    }
    // The first socket was never refused and keeps its channels; after a refill (1 per
    // second) the user may join again.
    a.assert_alive("the user's first socket").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // refill: 1.1 s × 1/s
    a.join_ok("realtime:u12", json!({})).await;
}

#[tokio::test]
async fn a_message_flood_closes_the_flooders_channel_only() {
    let hub = TestHub::spawn_with(|c| {
        c.messages_per_sec = 5; // bursts of 10
        c.user_messages_per_sec = 0;
    })
    .await;
    let mut good = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    good.join_ok(TOPIC, json!({})).await;
    let mut flooder =
        WsClient::connect(&hub, Vsn::V2, &token("authenticated", "flooder", 600)).await;
    flooder.join_ok(TOPIC, json!({})).await;
    flooder.join_ok("realtime:other", json!({})).await;

    for i in 0..30 {
        flooder
            .send_broadcast(TOPIC, "f", &json_payload(&json!({"i": i})))
            .await;
    }
    expect_channel_shutdown(&mut flooder, TOPIC, "Too many messages per second").await;
    // The burst (10) got through to the others, in order, and nothing after the shutdown.
    for i in 0..10 {
        let b = good
            .expect_broadcast(TOPIC, &format!("flood message {i}"))
            .await;
        assert_eq!(b.json(), &json!({"i": i}));
    }
    good.assert_silent(300, "nothing past the flooder's burst")
        .await;

    // The flooder's socket and its other channel are untouched; once its bucket refills
    // (5 per second) it may rejoin and publish again.
    flooder
        .assert_alive("the flooder's socket after its channel closed")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // refill: 1.2 s × 5/s
    flooder.join_ok(TOPIC, json!({})).await;
    flooder
        .send_broadcast(TOPIC, "f", &json_payload(&json!({"i": "after"})))
        .await;
    let b = good
        .expect_broadcast(TOPIC, "the flooder's message after recovery")
        .await;
    assert_eq!(b.json(), &json!({"i": "after"}));
}

#[tokio::test]
async fn the_user_limit_spans_connections_and_the_service_role_is_exempt() {
    let hub = TestHub::spawn_with(|c| {
        c.messages_per_sec = 0;
        c.user_messages_per_sec = 5; // bursts of 10, shared by every connection of the user
    })
    .await;
    let mut good = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    good.join_ok(TOPIC, json!({})).await;
    let user = token("authenticated", "same-user", 600);
    let mut a = WsClient::connect(&hub, Vsn::V2, &user).await;
    let mut b = WsClient::connect(&hub, Vsn::V2, &user).await;
    a.join_ok(TOPIC, json!({})).await;
    b.join_ok(TOPIC, json!({})).await;
    for i in 0..6 {
        a.send_broadcast(TOPIC, "u", &json_payload(&json!({"a": i})))
            .await;
    }
    // a's six are in (the hub handled them) before b starts, so the order of the eleven is known.
    for i in 0..6 {
        let m = good
            .expect_broadcast(TOPIC, &format!("a's message {i}"))
            .await;
        assert_eq!(m.json(), &json!({"a": i}));
    }
    for i in 0..6 {
        b.send_broadcast(TOPIC, "u", &json_payload(&json!({"b": i})))
            .await;
    }
    // a spent 6 of the user's 10; b's fifth message is the eleventh.
    expect_channel_shutdown(&mut b, TOPIC, "Too many messages per second").await;
    for i in 0..4 {
        let m = good
            .expect_broadcast(TOPIC, &format!("b's message {i}"))
            .await;
        assert_eq!(m.json(), &json!({"b": i}));
    }
    good.assert_silent(300, "nothing past the user's burst")
        .await;
    a.assert_alive("a's socket: only the channel b pushed on was closed")
        .await;

    // The service role publishes far past the limit, all delivered.
    let mut service =
        WsClient::connect(&hub, Vsn::V2, &token("service_role", "backend", 600)).await;
    service.join_ok(TOPIC, json!({})).await;
    for i in 0..100 {
        service
            .send_broadcast(TOPIC, "s", &json_payload(&json!({"s": i})))
            .await;
    }
    for i in 0..100 {
        let m = good
            .expect_broadcast(TOPIC, &format!("service message {i}"))
            .await;
        assert_eq!(m.json(), &json!({"s": i}));
    }
}

async fn track(c: &mut WsClient, topic: &str, payload: serde_json::Value) -> tests::Msg {
    let r = c
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": payload}),
        )
        .await;
    c.expect_reply(topic, &r, "the reply to a presence track")
        .await
}

#[tokio::test]
async fn an_oversized_track_closes_the_channel_and_a_full_topic_refuses_new_entries() {
    let hub = TestHub::spawn_with(|c| {
        c.max_presence_bytes = 1024;
        c.max_presence_entries = 2;
    })
    .await;
    let presence = json!({"presence": {"enabled": true}});
    let mut a = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut b = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    for m in [&mut a, &mut b, &mut c] {
        m.join_ok(TOPIC, presence.clone()).await;
    }
    assert_eq!(
        track(&mut a, TOPIC, json!({"who": "a"})).await.status(),
        "ok"
    );
    assert_eq!(
        track(&mut b, TOPIC, json!({"who": "b"})).await.status(),
        "ok"
    );
    let full = track(&mut c, TOPIC, json!({"who": "c"})).await;
    assert_eq!(full.status(), "error");
    assert_eq!(
        full.payload["response"]["reason"],
        json!("PresenceLimitReached: Too many presence entries on this topic")
    );
    // Updating an existing entry is not adding one.
    assert_eq!(
        track(&mut a, TOPIC, json!({"who": "a2"})).await.status(),
        "ok"
    );

    // An oversized track shuts a's channel down, which frees its entry for c.
    a.push(
        TOPIC,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"big": "x".repeat(2000)}}),
    )
    .await;
    expect_channel_shutdown(&mut a, TOPIC, "Track message size exceeded").await;
    assert_eq!(
        track(&mut c, TOPIC, json!({"who": "c"})).await.status(),
        "ok"
    );
}
