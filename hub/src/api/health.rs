//! `GET /health` (liveness), `GET /health/ready` (readiness) and `GET /version`.
//!
//! Liveness only says the process serves HTTP, so a supervisor restarts a wedged hub but not
//! one whose database blinked. Readiness is what a load balancer should route by: it checks
//! each configured backend (bounded by [`READY_TIMEOUT`]) and turns 503 as soon as the hub
//! starts draining, so new clients go to other nodes while this one closes its connections.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::state::AppState;

/// Longest a readiness check waits for each backend.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 with the process's connection and topic counts.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "connections": state.node.connections.len(),
        "topics": state.node.registry.topic_count(),
    }))
}

/// 200 when every configured backend answers and the hub is not draining; 503 otherwise, with
/// each check's result.
pub async fn ready(State(state): State<AppState>) -> Response {
    let draining = state.draining();
    let checks = state.backends.ready(READY_TIMEOUT).await;
    let ok = !draining && checks.iter().all(|c| c.error.is_none());
    let body = json!({
        "status": if ok { "ok" } else if draining { "draining" } else { "unavailable" },
        "draining": draining,
        "checks": checks.iter().map(|c| json!({
            "backend": c.backend,
            "ok": c.error.is_none(),
            "error": c.error,
            "ms": c.millis,
        })).collect::<Vec<_>>(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Version, commit, uptime, memory and what the node carries now.
pub async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("HUB_GIT_COMMIT"),
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "rssBytes": rss_bytes(),
        "connections": state.node.connections.len(),
        "channels": state.node.registry.topic_count(),
        "backends": {
            "postgres": state.backends.postgres.is_some(),
            "redis": state.backends.redis.is_some(),
        },
    }))
}

/// Resident memory from `/proc/self/status` (`VmRSS`, in kB there); `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
