//! The WebSocket upgrade at `/realtime/v1/websocket` and `/socket/websocket`.
//!
//! Authentication happens before the upgrade, as with the real server: a missing or invalid
//! `apikey` (query) / `x-api-key` (header) is refused with HTTP 401 and `{"error": reason}`. The
//! client cannot read that status (it reports a transport failure and retries with backoff), but
//! operators and raw clients can.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use channels::{Format, Outbox, Session, TokenError, TokenVerifier};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::error::upgrade_error;
use crate::state::AppState;
use crate::transport::conn::{self, ConnParams};
use crate::transport::query::query_param;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The message for a refused connect (Supabase words "Token has expired" without the seconds).
fn connect_message(e: &TokenError) -> String {
    match e {
        TokenError::Expired { .. } => "Token has expired".to_owned(),
        other => other.to_string(),
    }
}

/// Validates the upgrade request and the token, then hands the socket to [`conn::run`].
pub async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    let key = match websocket_key(req.headers()) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let headers = req.headers();
    if !crate::transport::origin::allowed(headers, &state.config.allowed_origins) {
        return upgrade_error(StatusCode::FORBIDDEN, "Origin not allowed");
    }
    let query = req.uri().query().unwrap_or("");
    let token = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| std::borrow::Cow::Owned(s.to_owned()))
        .or_else(|| query_param(query, "apikey"));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return upgrade_error(StatusCode::UNAUTHORIZED, "API key is missing");
    };
    let principal = match state.verifier.verify(&token) {
        Ok(p) => p,
        Err(e) => return upgrade_error(StatusCode::UNAUTHORIZED, &connect_message(&e)),
    };
    let claim = match state.node.user_connections.claim(&principal) {
        Ok(c) => c,
        Err(e) => return upgrade_error(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
    };
    let vsn = query_param(query, "vsn");
    let Some(format) = Format::from_vsn(vsn.as_deref()) else {
        return upgrade_error(
            StatusCode::BAD_REQUEST,
            "Unsupported protocol version: vsn must be 1.0.0 or 2.0.0",
        );
    };
    let token = token.into_owned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let st = state.clone();
    state.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                return;
            }
        };
        let outbox = Outbox::new(st.node.config.outbox);
        let mut session = Session::new(st.node.clone(), format, outbox.clone(), &token, principal);
        session.hold(claim);
        let params = ConnParams {
            idle_timeout: st.config.idle_timeout,
            max_frame: st.config.max_frame_bytes,
            wire: conn::Wire::WebSocket,
        };
        conn::run(
            parts.io.into_inner(),
            parts.read_buf,
            session,
            outbox,
            params,
        )
        .await;
    });
    switching_protocols(&key)
}

/// The client's `Sec-WebSocket-Key` of a valid upgrade request, or the 400 to answer (boxed:
/// a response is large and the error is the rare case).
pub fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Box::new(upgrade_error(
            StatusCode::BAD_REQUEST,
            "Expected a WebSocket upgrade request",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        let mut resp = upgrade_error(StatusCode::BAD_REQUEST, "Unsupported WebSocket version");
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| {
            Box::new(upgrade_error(
                StatusCode::BAD_REQUEST,
                "Missing Sec-WebSocket-Key",
            ))
        })
}

/// The 101 answer accepting an upgrade whose client key is `key`.
pub fn switching_protocols(key: &HeaderValue) -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&channels::ws_frame::accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
