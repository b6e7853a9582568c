//! HTTP-level tests of every REST endpoint: the real router (`routes::router`) on the in-memory
//! state, driven with `tower::ServiceExt::oneshot`, no sockets.
//!
//! One file per area: [`errors`] (shape, request ids, fallbacks, panics, store failures),
//! [`sessions`], [`events`], [`share`], [`simulated`] (a whole build), [`broadcast`].

mod broadcast;
mod errors;
mod events;
mod rate_limit;
mod sessions;
mod share;
mod simulated;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use channels::auth::now_secs;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

use crate::auth::sign_hs256;
use crate::routes::router;
use crate::{AppState, Config};

/// The secret every test hub verifies with.
pub const SECRET: &str = "api-test-secret";

/// How long a test waits for a simulated build.
pub const WAIT: Duration = Duration::from_secs(5);

/// In-memory state with `Config::for_tests` adjusted by `tweak`.
pub fn state_with(tweak: impl FnOnce(&mut Config)) -> AppState {
    let mut cfg = Config::for_tests(SECRET);
    tweak(&mut cfg);
    AppState::memory(cfg, SECRET).expect("test token settings are valid")
}

/// In-memory state on `Config::for_tests` (simulated builds every 10 ms).
pub fn state() -> AppState {
    state_with(|_| {})
}

/// A token with `claims`, `exp` one minute ahead unless given.
pub fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now_secs() + 60);
    }
    sign_hs256(SECRET.as_bytes(), &claims).expect("signing a test token")
}

/// A signed-in user's token.
pub fn user(sub: Uuid) -> String {
    token(json!({"role": "authenticated", "sub": sub.to_string()}))
}

/// The service role's token.
pub fn service() -> String {
    token(json!({"role": "service_role"}))
}

/// A response, body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends `req` through the router.
pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("the router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("reading the body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A request with an optional bearer token and JSON body.
pub fn request(
    method: &str,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("a valid test request")
}

/// `GET uri` with an optional bearer token.
pub fn get(uri: &str, bearer: Option<&str>) -> Request<Body> {
    request("GET", uri, bearer, None)
}

/// A valid session body.
pub fn vibe(template: &str) -> Value {
    json!({"vibeText": "a marketplace for vintage synths", "template": template})
}

/// Asserts the seed-000 error shape, `status`, `code`, and that the body's `requestId` is the
/// `x-request-id` header.
#[track_caller]
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "status of {:?}", r.body);
    assert_eq!(r.body["error"]["code"], code, "code of {:?}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{:?}", r.body);
    assert!(r.body["error"]["context"].is_object(), "{:?}", r.body);
    let id = r.body["requestId"].as_str().expect("requestId in the body");
    assert_eq!(
        r.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some(id),
        "x-request-id header"
    );
}

/// Creates a session as `bearer` and returns `(id, share token)`.
pub async fn create(app: &Router, bearer: &str, body: Value) -> (Uuid, String) {
    let r = send(app, request("POST", "/sessions", Some(bearer), Some(body))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["sessionId"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .expect("sessionId");
    let share = r.body["shareToken"]
        .as_str()
        .expect("shareToken")
        .to_owned();
    (id, share)
}

/// Polls `GET /events` until `kind` appears; panics after [`WAIT`].
pub async fn wait_for_event(app: &Router, id: Uuid, bearer: &str, kind: &str) -> Vec<Value> {
    let poll = async {
        loop {
            let r = send(app, get(&format!("/events?session_id={id}"), Some(bearer))).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let events = r.body.as_array().cloned().unwrap_or_default();
            if events.iter().any(|e| e["type"] == kind) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, poll)
        .await
        .unwrap_or_else(|_| panic!("no `{kind}` event for session {id} within {WAIT:?}"))
}
