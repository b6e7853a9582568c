//! The router: every URL the hub answers.
//!
//! Supabase clients derive REST URLs from the socket URL: `…/realtime/v1` for supabase-js,
//! `…/socket` (stripped to the root) for a standalone realtime-js, so broadcast routes exist under
//! both prefixes.

use axum::Router;
use axum::routing::{get, post};

use crate::api;
use crate::state::AppState;
use crate::transport::ws;

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(api::health::health))
        .route("/realtime/v1/websocket", get(ws::upgrade))
        .route("/socket/websocket", get(ws::upgrade))
        .route("/realtime/v1/api/broadcast", post(api::broadcast::batch))
        .route("/api/broadcast", post(api::broadcast::batch))
        .route(
            "/realtime/v1/api/broadcast/{topic}/events/{event}",
            post(api::broadcast::single),
        )
        .route(
            "/api/broadcast/{topic}/events/{event}",
            post(api::broadcast::single),
        )
        .fallback(api::error::not_found)
        .with_state(state)
}
