//! Token refresh and expiry on live channels (PROTOCOL §2.6, §2.7, §10.6, §10.10): a valid
//! `access_token` push keeps the channel silently, an invalid one closes it with a `system` error
//! and `phx_close`, an expiring token closes it on its own, and `sb_…`/null/unchanged are ignored.

use serde_json::{Value, json};
use tests::{TestHub, Vsn, WsClient, anon, now_secs, token, token_claims, token_wrong_secret};

const TOPIC: &str = "realtime:tok";

async fn access_token(c: &mut WsClient, value: Value) {
    c.push(TOPIC, "access_token", json!({ "access_token": value }))
        .await;
}

/// Asserts the channel still delivers: `other` broadcasts and `c` receives it.
async fn assert_delivers(c: &mut WsClient, other: &mut WsClient, what: &str) {
    other
        .broadcast_json(TOPIC, "ping", json!({"what": what}))
        .await;
    let b = c.expect_broadcast(TOPIC, what).await;
    assert_eq!(b.json(), &json!({"what": what}));
}

/// Asserts the exact `system` error then `phx_close` pair for `c`'s channel; returns the message.
async fn assert_closed_by_server(c: &mut WsClient, what: &str) -> String {
    let jr = c.join_ref(TOPIC);
    let sys = c.next_json(&format!("the system error ({what})")).await;
    let message = sys[4]["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        sys,
        json!([jr, null, TOPIC, "system", {"extension": "system", "status": "error", "message": message, "channel": "tok"}])
    );
    let close = c
        .next_json(&format!("phx_close after the system error ({what})"))
        .await;
    assert_eq!(close, json!([jr, jr, TOPIC, "phx_close", {}]));
    message
}

async fn pair(hub: &TestHub, connect_token: &str) -> (WsClient, WsClient) {
    let mut c = WsClient::connect(hub, Vsn::V2, connect_token).await;
    let mut other = WsClient::connect(hub, Vsn::V2, &anon()).await;
    c.join_ok(TOPIC, json!({})).await;
    other.join_ok(TOPIC, json!({})).await;
    (c, other)
}

#[tokio::test]
async fn valid_new_token_keeps_the_channel_without_reply() {
    let hub = TestHub::spawn().await;
    let (mut c, mut other) = pair(&hub, &anon()).await;
    access_token(&mut c, json!(token("authenticated", "u2", 600))).await;
    c.assert_silent(300, "no reply to a valid access_token")
        .await;
    assert_delivers(&mut c, &mut other, "after a valid refresh").await;
}

#[tokio::test]
async fn invalid_tokens_close_the_channel_with_system_error() {
    let hub = TestHub::spawn().await;
    let cases = [
        (json!("not-a-jwt"), "The token provided is not a valid JWT"),
        (
            json!(token_wrong_secret("anon", "u", 60)),
            "Failed to validate JWT signature",
        ),
        (
            json!(token_claims(&json!({"sub": "u", "exp": now_secs() + 60}))),
            "Fields `role` and `exp` are required in JWT",
        ),
        (json!(token("anon", "u", -10)), "Token has expired"),
    ];
    for (bad, expected) in cases {
        let (mut c, mut other) = pair(&hub, &anon()).await;
        access_token(&mut c, bad).await;
        let message = assert_closed_by_server(&mut c, expected).await;
        assert!(
            message.starts_with(expected),
            "message {message:?}, expected {expected:?}"
        );
        other.broadcast_json(TOPIC, "after", json!({})).await;
        c.assert_silent(200, "no delivery after the channel was closed")
            .await;
        c.assert_alive("the socket survives a closed channel").await;
    }
}

#[tokio::test]
async fn expiring_token_closes_the_channel_by_itself() {
    let hub = TestHub::spawn().await;
    let (mut c, _other) = pair(&hub, &token("anon", "short", 2)).await;
    // No push from the client: the server notices the expiry (within WAIT).
    let message = assert_closed_by_server(&mut c, "token expiry").await;
    assert!(
        message.starts_with("Token has expired") && message.ends_with("seconds ago"),
        "message {message:?}"
    );
    c.assert_alive("the socket outlives the expired channel")
        .await;
}

#[tokio::test]
async fn refresh_extends_an_expiring_channel() {
    let hub = TestHub::spawn().await;
    let (mut c, mut other) = pair(&hub, &token("anon", "short", 2)).await;
    access_token(&mut c, json!(token("anon", "short", 3600))).await;
    // Bounded wait to prove absence: the original token expires within 2 s; nothing may close
    // the channel meanwhile.
    c.assert_silent(2500, "no system error after the refresh")
        .await;
    assert_delivers(&mut c, &mut other, "after the old token's expiry").await;
}

#[tokio::test]
async fn sb_keys_null_and_unchanged_tokens_are_ignored() {
    let hub = TestHub::spawn().await;
    let t = anon();
    let (mut c, mut other) = pair(&hub, &t).await;
    access_token(&mut c, json!("sb_publishable_abcdef")).await;
    access_token(&mut c, Value::Null).await;
    access_token(&mut c, json!(t)).await;
    c.push(TOPIC, "access_token", json!({})).await;
    c.assert_silent(300, "ignored access_token pushes get no reply and no close")
        .await;
    assert_delivers(&mut c, &mut other, "after ignored pushes").await;
}

#[tokio::test]
async fn join_with_an_invalid_access_token_is_refused() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let reply = c
        .join_payload(
            TOPIC,
            json!({"config": {}, "access_token": token("anon", "u", -5)}),
        )
        .await;
    assert_eq!(reply.status(), "error");
    let reason = reply.response()["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired"),
        "reason {reason:?}"
    );
    let reply = c
        .join_payload(TOPIC, json!({"config": {}, "access_token": "garbage"}))
        .await;
    assert_eq!(
        reply.response(),
        &json!({"reason": "MalformedJWT: The token provided is not a valid JWT"})
    );
    // An sb_ key falls back to the connect token.
    let reply = c
        .join_payload(
            TOPIC,
            json!({"config": {}, "access_token": "sb_publishable_x"}),
        )
        .await;
    assert_eq!(reply.status(), "ok", "reply {reply:?}");
}
