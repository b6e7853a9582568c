//! JSON error responses.
//!
//! The Supabase-compatible endpoints answer `{"message": …}` (realtime-js shows
//! `body.error || body.message`; the WebSocket upgrade uses `{"error": …}` as the real server does).
//! The hub's own API uses the seed-000 shape instead, see [`super::app_error`].

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error for the REST API: status and the message shown to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// `{"error": message}` with `status`, the shape of WebSocket upgrade refusals.
pub fn upgrade_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
