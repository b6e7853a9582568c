//! `GET /health`: liveness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::state::AppState;

/// 200 with the process's connection and topic counts.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "connections": state.node.connections.len(),
        "topics": state.node.registry.topic_count(),
    }))
}
