//! The router: every URL the hub answers, and the layers every request passes.
//!
//! Supabase clients derive REST URLs from the socket URL: `…/realtime/v1` for supabase-js,
//! `…/socket` (stripped to the root) for a standalone realtime-js, so broadcast routes exist under
//! both prefixes. The build-session API (seed 004 §4) sits at the root.

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api;
use crate::api::app_error;
use crate::state::AppState;
use crate::transport::{sse, terminal, ws};

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    // The REST API proper, counted against each user's hourly quota; health and the long-lived
    // transports (limited per connection instead) are not.
    let rest = Router::new()
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
        .route(
            "/sessions",
            post(api::sessions::create).get(api::sessions::get),
        )
        .route("/sessions/token", post(api::share::exchange))
        .route("/events", get(api::events::list))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::rate_limit::middleware,
        ));
    let routes = Router::new()
        .route("/health", get(api::health::health))
        .route("/health/ready", get(api::health::ready))
        .route("/version", get(api::health::version))
        .route("/metrics", get(api::metrics::metrics))
        .route("/realtime/v1/websocket", get(ws::upgrade))
        .route("/socket/websocket", get(ws::upgrade))
        .route("/v1/terminal/{id}", get(terminal::upgrade))
        // SSE requests on a reused keep-alive connection (first requests never reach hyper).
        .route("/v1/sse/{*topic}", get(sse::over_http))
        .merge(rest)
        .with_state(state.clone());
    // Outermost: a preflight is answered here, before routing and without being counted.
    with_error_handling(routes).layer(crate::transport::origin::cors(
        &state.config.allowed_origins,
    ))
}

/// Wraps `routes` so that no request ends without a JSON answer and a request id: unknown routes
/// and methods get seed-000 errors, panics become a JSON 500 (logged with the request id), and
/// every response carries `x-request-id`.
pub fn with_error_handling(routes: Router) -> Router {
    routes
        .fallback(app_error::no_route)
        .method_not_allowed_fallback(app_error::method_not_allowed)
        // Inner: turns a panic into an `AppError` response…
        .layer(CatchPanicLayer::custom(app_error::panic_response))
        // …which the outer layer then logs and stamps with the request id.
        .layer(middleware::from_fn(api::request_id::middleware))
}
