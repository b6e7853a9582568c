//! Tokens signed with public-key algorithms, and the configured `aud` check, through every
//! transport a client uses: a WebSocket join, an SSE stream, a REST broadcast. The hub is
//! configured with the JWKS in `hub/testdata/jwt` (RSA keys `k1`, `k2`, EC key `e1`), accepts
//! RS256, ES256 and HS256, and requires `aud: "authenticated"`.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tests::sse::{SseClient, SseOptions, query_value, sse_path};
use tests::{TestHub, Vsn, WsClient, http_client, now_secs, token_claims, upgrade_raw};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../hub/testdata/jwt")
        .join(name)
}

fn sign(alg: Algorithm, kid: &str, private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(testdata(private_pem)).expect("read a test key");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("parse a test key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("sign a test token")
}

fn claims(role: &str, aud: Option<&str>) -> Value {
    let mut c = json!({"role": role, "sub": "u-keys", "exp": now_secs() + 600});
    if let Some(aud) = aud {
        c["aud"] = aud.into();
    }
    c
}

async fn hub() -> TestHub {
    TestHub::spawn_with(|c| {
        c.jwt_algorithms = vec!["RS256".into(), "ES256".into(), "HS256".into()];
        c.jwt_jwks = Some(testdata("jwks.json"));
        c.jwt_audience = vec!["authenticated".into()];
    })
    .await
}

#[tokio::test]
async fn rs256_and_es256_tokens_join_stream_and_publish() {
    let hub = hub().await;
    let rs = sign(
        Algorithm::RS256,
        "k1",
        "rsa-private.pem",
        &claims("authenticated", Some("authenticated")),
    );
    let es = sign(
        Algorithm::ES256,
        "e1",
        "ec-private.pem",
        &claims("authenticated", Some("authenticated")),
    );
    let service = sign(
        Algorithm::RS256,
        "k2",
        "rsa2-private.pem",
        &claims("service_role", Some("authenticated")),
    );

    let mut ws = WsClient::connect(&hub, Vsn::V2, &rs).await;
    ws.join_ok("realtime:keys", json!({})).await;
    let mut sse = SseClient::open_topic(&hub, "keys", &es).await;

    let resp = http_client()
        .post(hub.http("/api/broadcast"))
        .header("Authorization", format!("Bearer {service}"))
        .json(&json!({"messages": [{"topic": "keys", "event": "k", "payload": {"n": 1}}]}))
        .send()
        .await
        .expect("REST broadcast request");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "REST broadcast with an RS256 service token"
    );

    let b = ws
        .expect_broadcast("realtime:keys", "the REST broadcast over WebSocket")
        .await;
    assert_eq!(b.json(), &json!({"n": 1}));
    let e = sse.expect_event("the REST broadcast over SSE").await;
    assert_eq!((e.event.as_str(), e.json()), ("k", json!({"n": 1})));
}

#[tokio::test]
async fn wrong_audience_unknown_kid_and_foreign_keys_are_refused_everywhere() {
    let hub = hub().await;
    let cases = [
        (
            "no aud",
            sign(
                Algorithm::RS256,
                "k1",
                "rsa-private.pem",
                &claims("anon", None),
            ),
            "The token's audience is not accepted",
        ),
        (
            "another aud",
            sign(
                Algorithm::ES256,
                "e1",
                "ec-private.pem",
                &claims("anon", Some("admin")),
            ),
            "The token's audience is not accepted",
        ),
        (
            "a kid the JWKS does not have",
            sign(
                Algorithm::RS256,
                "k9",
                "rsa-private.pem",
                &claims("anon", Some("authenticated")),
            ),
            "No configured key can verify this token",
        ),
        (
            "k2's kid on a token k1's private key signed",
            sign(
                Algorithm::RS256,
                "k2",
                "rsa-private.pem",
                &claims("anon", Some("authenticated")),
            ),
            "Failed to validate JWT signature",
        ),
        (
            "HS256 with the right secret but no aud",
            token_claims(&claims("anon", None)),
            "The token's audience is not accepted",
        ),
    ];
    for (why, token, reason) in cases {
        let (status, body) = upgrade_raw(
            &hub,
            &format!(
                "/realtime/v1/websocket?vsn=2.0.0&apikey={}",
                query_value(&token)
            ),
            &[],
        )
        .await;
        assert_eq!(
            (status, body),
            (401, json!({"error": reason})),
            "WebSocket upgrade, {why}"
        );

        let path = sse_path("keys", &format!("access_token={}", query_value(&token)));
        let refused = SseClient::request(&hub, &path, &[], SseOptions::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("SSE stream opened with {why}"));
        assert_eq!(refused.status, 401, "SSE, {why}: {}", refused.body);
        assert_eq!(
            refused.body["error"]["message"],
            json!(reason),
            "SSE, {why}"
        );

        let resp = http_client()
            .post(hub.http("/api/broadcast"))
            .header("Authorization", format!("Bearer {token}"))
            .json(&json!({"messages": [{"topic": "keys", "event": "k", "payload": {}}]}))
            .send()
            .await
            .expect("REST broadcast request");
        assert_eq!(resp.status().as_u16(), 401, "REST broadcast, {why}");
    }
}
