//! Connection-level limits with real sockets: new connections per second per address (429
//! with `Retry-After` before the request is read), concurrent connections per user (429 on
//! the WebSocket upgrade and on SSE), and the browser `Origin` allow-list (403 on WebSocket,
//! SSE and terminal upgrades; CORS headers only for listed origins on REST).

use serde_json::json;
use tests::sse::{SseClient, SseOptions, query_value, sse_path};
use tests::{TestHub, Vsn, WsClient, http_client, token, upgrade_raw, wait_until};

fn ws_path(token: &str) -> String {
    format!(
        "/realtime/v1/websocket?vsn=2.0.0&apikey={}",
        query_value(token)
    )
}

#[tokio::test]
async fn an_address_over_its_connection_rate_gets_429_then_recovers() {
    let hub = TestHub::spawn_with(|c| c.connections_per_sec_per_ip = 5).await; // bursts of 10
    let t = token("authenticated", "rate", 600);
    // Bounded: the burst is 10, so the refusal comes within the first dozen or so attempts.
    let mut refused = None;
    for attempt in 0..50 {
        let (status, body) = upgrade_raw(&hub, &ws_path(&t), &[]).await;
        if status == 429 {
            refused = Some((attempt, body));
            break;
        }
        assert_eq!(status, 101, "attempt {attempt}");
    }
    let (attempt, body) = refused.expect("no 429 within 50 connections at a 5/s limit");
    assert!(attempt <= 12, "refused only at attempt {attempt}");
    assert_eq!(
        body,
        json!({"error": "Too many connections per second from this address"})
    );
    // A plain HTTP request from the address is turned away the same way, with Retry-After.
    let resp = http_client()
        .get(hub.http("/health"))
        .send()
        .await
        .expect("a 429 answer, not a reset");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // 5 per second refill: within a few hundred milliseconds the address may connect again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, _) = upgrade_raw(&hub, &ws_path(&t), &[]).await;
        if status == 101 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused 5 s later"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_over_their_connection_limit_is_refused_on_websocket_and_sse() {
    let hub = TestHub::spawn_with(|c| c.connections_per_user = 2).await;
    let t = token("authenticated", "two-tabs", 600);
    let a = WsClient::connect(&hub, Vsn::V2, &t).await;
    let _b = SseClient::open_topic(&hub, "tabs", &t).await;
    let (status, body) = upgrade_raw(&hub, &ws_path(&t), &[]).await;
    assert_eq!(
        (status, body),
        (
            429,
            json!({"error": "Too many connections for this user (limit 2)"})
        )
    );
    let path = sse_path("tabs", &format!("access_token={}", query_value(&t)));
    let refused = SseClient::request(&hub, &path, &[], SseOptions::default())
        .await
        .expect_err("a third stream of the user must be refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"]["code"], "RATE_LIMITED");
    // Other users and the service role are not affected.
    WsClient::connect(&hub, Vsn::V2, &token("authenticated", "someone-else", 600)).await;
    let svc = token("service_role", "backend", 600);
    for _ in 0..3 {
        WsClient::connect(&hub, Vsn::V2, &svc).await;
    }
    // Closing one frees its slot.
    a.close().await;
    let users = hub.state.node.user_connections.clone();
    wait_until("the closed connection's slot is released", || {
        users.count("two-tabs") == 1
    })
    .await;
    WsClient::connect(&hub, Vsn::V2, &t).await;
}

#[tokio::test]
async fn only_listed_browser_origins_may_open_streams() {
    let hub = TestHub::spawn_with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let t = token("authenticated", "origin", 600);
    let (status, body) =
        upgrade_raw(&hub, &ws_path(&t), &[("Origin", "https://evil.example")]).await;
    assert_eq!(
        (status, body),
        (403, json!({"error": "Origin not allowed"}))
    );
    let (status, _) = upgrade_raw(&hub, &ws_path(&t), &[("Origin", "https://app.example")]).await;
    assert_eq!(status, 101, "the listed origin");
    let (status, _) = upgrade_raw(&hub, &ws_path(&t), &[]).await;
    assert_eq!(status, 101, "no Origin (not a browser)");
    let (status, _) = upgrade_raw(
        &hub,
        &format!("/v1/terminal/t1?access_token={}", query_value(&t)),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "terminal upgrade from an unlisted origin");

    let path = sse_path("o", &format!("access_token={}", query_value(&t)));
    let refused = SseClient::request(
        &hub,
        &path,
        &[("Origin", "https://evil.example")],
        SseOptions::default(),
    )
    .await
    .expect_err("an SSE stream from an unlisted origin must be refused");
    assert_eq!(refused.status, 403);
    SseClient::open(&hub, &path, &[("Origin", "https://app.example")]).await;

    // REST: CORS headers for the listed origin only (preflight and actual request).
    let http = http_client();
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let pre = http
            .request(reqwest::Method::OPTIONS, hub.http("/api/broadcast"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
            .await
            .expect("preflight");
        let acao = pre
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(
            acao.as_deref() == Some(origin),
            allowed,
            "preflight from {origin}: {acao:?}"
        );
    }
}
