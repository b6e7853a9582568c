//! Operating the hub: `/version`, `/metrics` (Prometheus text), readiness over the real
//! Postgres and Redis, and draining in batches on shutdown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::pg::TestDb;
use tests::redis_backend::TestRedis;
use tests::{TestHub, Vsn, WAIT, WsClient, anon, http_client, token, token_wrong_secret};

/// Database of the test Redis server this file uses (see `support/redis_backend.rs`).
const REDIS_DB: u32 = 8;

/// The value of the sample `name` (with its labels, if any) in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

async fn get(hub: &TestHub, path: &str) -> reqwest::Response {
    tokio::time::timeout(WAIT, http_client().get(hub.http(path)).send())
        .await
        .unwrap_or_else(|_| panic!("GET {path} answered within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test]
async fn version_and_metrics_say_what_the_node_carries() {
    let hub = TestHub::spawn().await;
    let mut a = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut b = WsClient::connect(&hub, Vsn::V1, &token("authenticated", "u2", 600)).await;
    a.join_ok("realtime:ops", json!({})).await;
    b.join_ok("realtime:ops", json!({})).await;
    a.broadcast_json("realtime:ops", "e", json!({"n": 1})).await;
    b.expect_broadcast("realtime:ops", "the broadcast to count")
        .await;
    // A refused token, counted as an auth failure.
    let refused = tests::upgrade_raw(
        &hub,
        &format!(
            "/realtime/v1/websocket?apikey={}&vsn=2.0.0",
            token_wrong_secret("anon", "x", 60)
        ),
        &[],
    )
    .await;
    assert_eq!(refused.0, 401, "{refused:?}");

    let resp = get(&hub, "/version").await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("/version is JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["commit"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    assert!(v["uptimeSeconds"].is_u64(), "{v}");
    assert!(v["rssBytes"].as_u64().is_some_and(|r| r > 1 << 20), "{v}");
    assert_eq!(v["connections"], 2, "{v}");
    assert_eq!(v["channels"], 1, "{v}");
    assert_eq!(
        v["backends"],
        json!({"postgres": false, "redis": false}),
        "{v}"
    );

    let resp = get(&hub, "/metrics").await;
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let page = resp.text().await.expect("metrics body");
    let at_least = |name: &str, n: f64| {
        let got = sample(&page, name);
        assert!(
            got.is_some_and(|g| g >= n),
            "{name} ≥ {n}, got {got:?} in\n{page}"
        );
    };
    assert_eq!(sample(&page, "hub_connections"), Some(2.0), "{page}");
    assert_eq!(sample(&page, "hub_topics"), Some(1.0), "{page}");
    at_least("hub_joins_total", 2.0);
    at_least("hub_messages_in_total", 1.0);
    at_least("hub_deliveries_total", 1.0);
    at_least("hub_auth_failures_total", 1.0);
    at_least("hub_publish_deliver_seconds_count", 1.0);
    at_least("hub_publish_deliver_seconds_bucket{le=\"+Inf\"}", 1.0);
    assert_eq!(sample(&page, "hub_slow_reader_closes_total"), Some(0.0));
    assert!(
        page.lines()
            .any(|l| l.starts_with("hub_info{") && l.contains(env!("CARGO_PKG_VERSION"))),
        "hub_info names the version:\n{page}"
    );
    assert!(
        page.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
}

#[tokio::test]
async fn readiness_checks_postgres_and_redis_and_turns_503_while_draining() {
    let db = TestDb::create().await;
    let redis = TestRedis::file_db(REDIS_DB);
    let hub = TestHub::try_spawn_connected(|c| {
        c.database_url = Some(db.url.clone());
        c.redis_url = Some(redis.url.clone());
    })
    .await
    .expect("hub on Postgres and Redis");
    let resp = get(&hub, "/health/ready").await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("readiness is JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let backends: Vec<(&str, bool)> = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (c["backend"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(backends, [("postgres", true), ("redis", true)], "{body}");
    let m = get(&hub, "/metrics").await.text().await.expect("metrics");
    assert_eq!(sample(&m, "hub_redis_reconnects_total"), Some(0.0), "{m}");
    assert!(sample(&m, "hub_pg_feed_rows_total").is_some(), "{m}");

    // Draining: a load balancer must stop sending clients here before they are closed.
    hub.state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let resp = get(&hub, "/health/ready").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("readiness is JSON");
    assert_eq!(body["status"], "draining", "{body}");
    // Liveness stays 200: the process is fine, only leaving.
    assert_eq!(get(&hub, "/health").await.status(), 200);
}

#[tokio::test]
async fn readiness_on_the_embedded_default_has_nothing_to_check() {
    let hub = TestHub::spawn().await;
    let resp = get(&hub, "/health/ready").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("readiness is JSON");
    assert_eq!(
        body,
        json!({"status": "ok", "draining": false, "checks": []})
    );
}

#[tokio::test]
async fn shutdown_drains_in_batches_over_the_window_each_told_why() {
    const N: usize = 20;
    let window = Duration::from_millis(1000);
    let hub = TestHub::spawn_with(|c| c.drain_window = window).await;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = WsClient::connect(
            &hub,
            Vsn::V2,
            &token("authenticated", &format!("d{i}"), 600),
        )
        .await;
        c.join_ok("realtime:drain", json!({})).await;
        clients.push(c);
    }
    let started = Instant::now();
    let stopping = tokio::spawn(hub.shutdown());
    // Each client waits on its own task, so each notice is timed when it arrives.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let notice = c
                    .expect_event("realtime:drain", "system", "the drain notice")
                    .await;
                let at = started.elapsed();
                assert_eq!(
                    notice.payload["message"], "Server requested disconnect",
                    "{notice:?}"
                );
                assert_eq!(notice.payload["status"], "ok", "{notice:?}");
                let (code, _) = c.expect_close("the close after the drain notice").await;
                assert_ne!(code, 1006, "closed with a close frame");
                at
            })
        })
        .collect();
    let mut closed_at = Vec::with_capacity(N);
    for w in waits {
        closed_at.push(w.await.expect("client task"));
    }
    let took = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returned")
        .expect("shutdown task");
    // 20 connections over 10 ticks of 100 ms, two per tick: the notices cannot all arrive in
    // the first tick, and the whole drain ends within the window plus the close handshake.
    let spread = closed_at
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*closed_at.iter().min().unwrap());
    assert!(
        spread >= Duration::from_millis(400),
        "closes spread over {spread:?} (window {window:?})"
    );
    assert!(
        took < window + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
}
