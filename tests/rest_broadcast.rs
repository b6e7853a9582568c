//! The REST broadcast endpoints (PROTOCOL §3.4, §10.11): batch and single-event, both prefixes,
//! Bearer or `apikey` auth, extra query parameters ignored, 202 and delivery to V1 and V2 members,
//! binary bodies to V2 only, 401/415/422 errors, and the private flag.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{BcastPayload, TestHub, Vsn, WsClient, anon, http_client, token};

const TOPIC: &str = "realtime:news";

async fn members(hub: &TestHub, config: Value) -> (WsClient, WsClient) {
    let mut v1 = WsClient::connect(hub, Vsn::V1, &anon()).await;
    let mut v2 = WsClient::connect(hub, Vsn::V2, &anon()).await;
    v1.join_ok(TOPIC, config.clone()).await;
    v2.join_ok(TOPIC, config).await;
    (v1, v2)
}

fn service() -> String {
    token("service_role", "backend", 600)
}

async fn body_json(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn batch_with_bearer_and_with_apikey_on_both_prefixes() {
    let hub = TestHub::spawn().await;
    let (mut v1, mut v2) = members(&hub, json!({})).await;
    let http = http_client();
    let cases = [
        (
            "/realtime/v1/api/broadcast",
            "Authorization",
            format!("Bearer {}", service()),
        ),
        ("/api/broadcast", "apikey", anon()),
        (
            "/realtime/v1/api/broadcast?apikey=ignored&vsn=2.0.0&foo=bar",
            "Authorization",
            format!("Bearer {}", anon()),
        ),
    ];
    for (i, (path, header, value)) in cases.into_iter().enumerate() {
        let resp = http
            .post(hub.http(path))
            .header(header, value)
            .json(&json!({"messages": [
                {"topic": "news", "event": "ev1", "payload": {"i": i}},
                {"topic": "news", "event": "ev2", "payload": {"i": i}, "private": false}
            ]}))
            .send()
            .await
            .expect("POST batch");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST {path}");
        for ev in ["ev1", "ev2"] {
            let a = v1.next_broadcast(&format!("{ev} from {path} at V1")).await;
            let b = v2.next_broadcast(&format!("{ev} from {path} at V2")).await;
            assert!(!a.binary_frame && b.binary_frame);
            for m in [&a, &b] {
                assert_eq!((m.topic.as_str(), m.event.as_str()), (TOPIC, ev));
                assert_eq!(m.json(), &json!({"i": i}));
            }
            assert_eq!(a.cursor(), b.cursor());
        }
    }
}

#[tokio::test]
async fn batch_without_a_valid_token_is_401() {
    let hub = TestHub::spawn().await;
    let (mut v1, _v2) = members(&hub, json!({})).await;
    let http = http_client();
    let body = json!({"messages": [{"topic": "news", "event": "e", "payload": {}}]});
    let unauthenticated = [
        None,
        Some(("Authorization", "Bearer not-a-jwt".to_owned())),
        Some(("apikey", token("anon", "u", -5))),
    ];
    for auth in unauthenticated {
        let mut req = http.post(hub.http("/api/broadcast")).json(&body);
        if let Some((h, v)) = &auth {
            req = req.header(*h, v);
        }
        let resp = req.send().await.expect("POST batch");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "auth {auth:?}");
        let b = body_json(resp).await;
        assert!(b["message"].is_string(), "401 body carries a message: {b}");
    }
    // The apikey query parameter is not a credential for REST.
    let resp = http
        .post(hub.http(&format!("/api/broadcast?apikey={}", anon())))
        .json(&body)
        .send()
        .await
        .expect("POST batch");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    v1.assert_silent(200, "nothing delivered for refused requests")
        .await;
}

#[tokio::test]
async fn batch_validation_errors_are_422_and_publish_nothing() {
    let hub = TestHub::spawn_with(|cfg| cfg.max_payload_bytes = 256).await;
    let (mut v1, _v2) = members(&hub, json!({})).await;
    let http = http_client();
    let bad_bodies = [
        json!({"messages": [{"topic": "", "event": "e", "payload": {}}]}),
        json!({"messages": [{"topic": "news", "event": "", "payload": {}}]}),
        json!({"messages": [{"topic": "x".repeat(300), "event": "e", "payload": {}}]}),
        json!({"messages": [{"topic": "news", "event": "e", "payload": {"d": "x".repeat(300)}}]}),
        // One bad message refuses the whole batch, the good one included.
        json!({"messages": [
            {"topic": "news", "event": "good", "payload": {}},
            {"topic": "news", "event": "e".repeat(300), "payload": {}}
        ]}),
        json!({"not_messages": []}),
    ];
    for body in bad_bodies {
        let resp = http
            .post(hub.http("/api/broadcast"))
            .bearer_auth(service())
            .json(&body)
            .send()
            .await
            .expect("POST batch");
        let status = resp.status();
        let b = body_json(resp).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "body {body}: {b}");
        assert!(b["message"].is_string(), "422 body carries a message: {b}");
    }
    v1.assert_silent(200, "nothing published from refused batches")
        .await;
}

#[tokio::test]
async fn single_event_json_reaches_v1_and_v2() {
    let hub = TestHub::spawn().await;
    let (mut v1, mut v2) = members(&hub, json!({})).await;
    let resp = http_client()
        .post(hub.http("/realtime/v1/api/broadcast/news/events/ev%202?apikey=x&vsn=2.0.0"))
        .bearer_auth(anon())
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .expect("POST single");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let a = v1.next_broadcast("the single-event JSON at V1").await;
    let b = v2.next_broadcast("the single-event JSON at V2").await;
    for m in [&a, &b] {
        assert_eq!(m.event, "ev 2", "the path segment is percent-decoded");
        assert_eq!(m.json(), &json!({"hello": "world"}));
    }
    assert!(b.binary_frame, "V2 gets kind 4");
}

#[tokio::test]
async fn single_event_octet_stream_reaches_v2_only() {
    let hub = TestHub::spawn().await;
    let (mut v1, mut v2) = members(&hub, json!({})).await;
    let resp = http_client()
        .post(hub.http("/api/broadcast/news/events/blob"))
        .header("apikey", anon())
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 1, 2, 254, 255])
        .send()
        .await
        .expect("POST single binary");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let b = v2.next_broadcast("the binary single event at V2").await;
    assert_eq!(b.event, "blob");
    assert_eq!(b.payload, BcastPayload::Bytes(vec![0, 1, 2, 254, 255]));
    v1.assert_silent(300, "V1 gets nothing for raw bytes").await;
}

#[tokio::test]
async fn single_event_errors() {
    let hub = TestHub::spawn().await;
    let (mut v1, _v2) = members(&hub, json!({})).await;
    let http = http_client();
    let send = |path: String, ct: &'static str, body: &'static str, auth: bool| {
        let mut req = http
            .post(hub.http(&path))
            .header("content-type", ct)
            .body(body);
        if auth {
            req = req.bearer_auth(anon());
        }
        req.send()
    };
    let resp = send(
        "/api/broadcast/news/events/e".into(),
        "text/plain",
        "hi",
        true,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = send(
        "/api/broadcast/news/events/e".into(),
        "application/json",
        "{",
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid JSON body"
    );
    let long_topic = format!("/api/broadcast/{}/events/e", "t".repeat(300));
    let resp = send(long_topic, "application/json", "{}", true)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "topic too long"
    );
    let long_event = format!("/api/broadcast/news/events/{}", "e".repeat(300));
    let resp = send(long_event, "application/json", "{}", true)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "event too long"
    );
    let resp = send(
        "/api/broadcast/news/events/e".into(),
        "application/json",
        "{}",
        false,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    v1.assert_silent(200, "nothing delivered for refused requests")
        .await;
}

#[tokio::test]
async fn private_flag_reaches_only_private_members() {
    let hub = TestHub::spawn().await;
    let (mut pub1, mut pub2) = members(&hub, json!({"private": false})).await;
    let mut private = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    private.join_ok(TOPIC, json!({"private": true})).await;
    let http = http_client();

    let resp = http
        .post(hub.http("/api/broadcast"))
        .bearer_auth(service())
        .json(&json!({"messages": [{"topic": "news", "event": "secret", "payload": {}, "private": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        private
            .next_broadcast("the private batch message")
            .await
            .event,
        "secret"
    );

    let resp = http
        .post(hub.http("/api/broadcast/news/events/secret2?private=true"))
        .bearer_auth(service())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        private
            .next_broadcast("the private single event")
            .await
            .event,
        "secret2"
    );

    pub1.assert_silent(300, "public V1 member gets no private message")
        .await;
    pub2.assert_silent(10, "public V2 member gets no private message")
        .await;

    // And the public side stays public.
    let resp = http
        .post(hub.http("/api/broadcast/news/events/open"))
        .bearer_auth(service())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        pub1.next_broadcast("the public single event").await.event,
        "open"
    );
    private
        .assert_silent(200, "private member gets no public message")
        .await;
}
