//! The WebSocket upgrade (PROTOCOL §1.1, §10.1): authentication refusals are HTTP responses with
//! Supabase's exact `{"error": …}` messages, `x-api-key` works, `vsn` is checked, and `/health`.

use serde_json::{Value, json};
use tests::{
    TestHub, Vsn, WsClient, now_secs, token, token_claims, token_wrong_secret, upgrade_raw,
};

async fn refused(hub: &TestHub, query: &str) -> (u16, Value) {
    upgrade_raw(hub, &format!("/realtime/v1/websocket?{query}"), &[]).await
}

#[tokio::test]
async fn missing_apikey_is_401() {
    let hub = TestHub::spawn().await;
    let (status, body) = refused(&hub, "vsn=2.0.0").await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error": "API key is missing"}));
    let (status, body) = refused(&hub, "apikey=&vsn=2.0.0").await;
    assert_eq!(
        (status, body),
        (401, json!({"error": "API key is missing"}))
    );
}

#[tokio::test]
async fn expired_token_is_401() {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u", -30);
    let (status, body) = refused(&hub, &format!("apikey={t}&vsn=2.0.0")).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error": "Token has expired"}));
}

#[tokio::test]
async fn missing_role_or_exp_is_401() {
    let hub = TestHub::spawn().await;
    let no_role = token_claims(&json!({"sub": "u", "exp": now_secs() + 60}));
    let no_exp = token_claims(&json!({"sub": "u", "role": "anon"}));
    for t in [no_role, no_exp] {
        let (status, body) = refused(&hub, &format!("apikey={t}&vsn=1.0.0")).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"error": "Fields `role` and `exp` are required in JWT"})
        );
    }
}

#[tokio::test]
async fn malformed_token_is_401() {
    let hub = TestHub::spawn().await;
    for t in ["not-a-jwt", "a.b.c", "sb_publishable_abc"] {
        let (status, body) = refused(&hub, &format!("apikey={t}&vsn=2.0.0")).await;
        assert_eq!(status, 401, "token {t}");
        assert_eq!(
            body,
            json!({"error": "The token provided is not a valid JWT"}),
            "token {t}"
        );
    }
}

#[tokio::test]
async fn wrong_signature_is_401() {
    let hub = TestHub::spawn().await;
    let t = token_wrong_secret("anon", "u", 60);
    let (status, body) = refused(&hub, &format!("apikey={t}&vsn=2.0.0")).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error": "Failed to validate JWT signature"}));
}

#[tokio::test]
async fn valid_token_upgrades_on_both_paths_and_with_extra_params() {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u", 60);
    for path in ["/realtime/v1/websocket", "/socket/websocket"] {
        let (status, _) = upgrade_raw(
            &hub,
            &format!("{path}?apikey={t}&foo=bar&log_level=info&vsn=2.0.0"),
            &[],
        )
        .await;
        assert_eq!(status, 101, "upgrade at {path}");
    }
    // A real client on the supabase-js path answers heartbeats.
    let mut c = WsClient::connect(&hub, Vsn::V2, &t).await;
    c.assert_alive("after connecting with the apikey query")
        .await;
}

#[tokio::test]
async fn apikey_in_x_api_key_header_works() {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u", 60);
    let (status, _) = upgrade_raw(
        &hub,
        "/realtime/v1/websocket?vsn=2.0.0",
        &[("x-api-key", &t)],
    )
    .await;
    assert_eq!(status, 101);
    let mut c = WsClient::connect_header(&hub, Vsn::V2, &t).await;
    c.assert_alive("after connecting with x-api-key").await;
}

#[tokio::test]
async fn missing_vsn_means_v1() {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u", 60);
    let url = format!("ws://{}/realtime/v1/websocket?apikey={t}", hub.addr);
    let mut c = WsClient::connect_url(url.as_str(), Vsn::V1)
        .await
        .expect("connect without vsn");
    c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await;
    let reply = c.next_json("the V1 heartbeat reply").await;
    assert_eq!(
        reply,
        json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"})
    );
}

#[tokio::test]
async fn unsupported_vsn_is_400() {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u", 60);
    let (status, body) = refused(&hub, &format!("apikey={t}&vsn=3.0.0")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("vsn")),
        "body {body}"
    );
}

#[tokio::test]
async fn health_is_200_json() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V1, &token("anon", "u", 60)).await;
    // The heartbeat reply proves the server-side session exists before it is counted.
    c.assert_alive("before GET /health").await;
    let resp = tests::http_client()
        .get(hub.http("/health"))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.expect("health body is JSON");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["connections"], 1, "body {body}");
}
