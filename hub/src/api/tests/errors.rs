//! The error shape, request ids, fallbacks, panics and store failures.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get as get_route;
use channels::sessions::{
    BuildEvent, BuildSession, NewEvent, NewSession, SessionStore, SessionUpdate, StoreError,
};

use super::*;
use crate::routes::with_error_handling;

#[tokio::test]
async fn unknown_routes_are_json_404s_with_a_request_id() {
    let app = router(state());
    let r = send(&app, get("/nope/deeper?x=1", None)).await;
    assert_error(&r, 404, "NOT_FOUND");
    assert_eq!(r.body["error"]["context"]["path"], "/nope/deeper");
    assert_eq!(r.body["error"]["context"]["method"], "GET");
    let id = r.body["requestId"].as_str().unwrap();
    assert!(id.starts_with("req_"), "{id}");
    // Each request gets its own id.
    let r2 = send(&app, get("/nope", None)).await;
    assert_ne!(r2.body["requestId"], r.body["requestId"]);
}

#[tokio::test]
async fn wrong_methods_are_json_405s() {
    let app = router(state());
    let r = send(&app, request("DELETE", "/sessions", None, None)).await;
    assert_error(&r, 405, "METHOD_NOT_ALLOWED");
    let r = send(&app, get("/sessions/token", None)).await;
    assert_error(&r, 405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn a_sane_incoming_request_id_is_echoed_and_others_replaced() {
    let app = router(state());
    let req = Request::builder()
        .uri("/nope")
        .header("x-request-id", "trace-42.a_b:c")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.body["requestId"], "trace-42.a_b:c");
    assert_eq!(r.headers["x-request-id"], "trace-42.a_b:c");
    let req = Request::builder()
        .uri("/nope")
        .header("x-request-id", "has spaces/and<angles>")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert!(r.body["requestId"].as_str().unwrap().starts_with("req_"));
    // Successful responses carry the header too, Supabase endpoints included.
    let r = send(&app, get("/health", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_a_json_500() {
    let app = with_error_handling(Router::new().route(
        "/boom",
        get_route(|| async {
            if true {
                panic!("secret internals");
            }
            "unreachable"
        }),
    ));
    let r = send(&app, get("/boom", None)).await;
    assert_error(&r, 500, "INTERNAL_ERROR");
    assert!(
        !r.body.to_string().contains("secret internals"),
        "{}",
        r.body
    );
    // The server keeps answering.
    let r = send(&app, get("/boom", None)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

/// A store whose backend is down.
#[derive(Debug)]
struct DownStore;

#[async_trait]
impl SessionStore for DownStore {
    async fn create(&self, _: NewSession) -> Result<BuildSession, StoreError> {
        Err(StoreError::Unavailable(
            "connection refused (10.9.8.7:5432)".into(),
        ))
    }
    async fn get(&self, _: Uuid) -> Result<Option<BuildSession>, StoreError> {
        Err(StoreError::Unavailable(
            "connection refused (10.9.8.7:5432)".into(),
        ))
    }
    async fn by_share_token(&self, _: &str) -> Result<Option<BuildSession>, StoreError> {
        Err(StoreError::Unavailable(
            "connection refused (10.9.8.7:5432)".into(),
        ))
    }
    async fn events(&self, _: Uuid) -> Result<Vec<BuildEvent>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn append_event(&self, _: NewEvent) -> Result<BuildEvent, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn update(&self, _: Uuid, _: SessionUpdate) -> Result<BuildSession, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete(&self, _: Uuid) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn store_failures_are_503s_with_a_generic_message() {
    let mut st = state();
    st.sessions = Arc::new(DownStore);
    let app = router(st);
    let calls = [
        request("POST", "/sessions", Some(&service()), Some(vibe("saas"))),
        get(
            &format!("/sessions?id={}", Uuid::new_v4()),
            Some(&service()),
        ),
        request(
            "POST",
            "/sessions/token",
            None,
            Some(json!({"shareToken": "abcdef"})),
        ),
    ];
    for req in calls {
        let r = send(&app, req).await;
        assert_error(&r, 503, "SERVICE_UNAVAILABLE");
        assert!(!r.body.to_string().contains("10.9.8.7"), "{}", r.body);
        assert_eq!(r.headers["retry-after"], "1");
    }
}
