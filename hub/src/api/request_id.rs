//! Request ids: every HTTP request gets one (`req_<20 hex digits>`, or the caller's own
//! `x-request-id` when it is sane), echoed in the `x-request-id` response header and in every
//! error body, and attached to the log lines of the request.
//!
//! This middleware is also where [`AppError`]s are logged and given their `requestId`: handlers
//! only build errors, the middleware reports them.

use std::fmt;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::api::app_error::AppError;

/// The header carrying the request id, both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id that is reused; longer ones are replaced (they end up in logs).
const MAX_INCOMING_LEN: usize = 128;

/// A request's id; also inserted into the request's extensions for handlers that want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: `req_` and 80 random bits in hex.
    pub fn generate() -> Self {
        let bytes: [u8; 10] = rand::random();
        let mut s = String::with_capacity(24);
        s.push_str("req_");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// The caller's id when it is safe to log and echo: 1 to 128 characters of
    /// `[A-Za-z0-9._:-]` (UUIDs, `req_…`, trace ids). Anything else is ignored, not refused.
    pub fn from_incoming(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let sane = !s.is_empty()
            && s.len() <= MAX_INCOMING_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        sane.then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Assigns the request id, runs the request inside a span carrying it, then reports any
/// [`AppError`] the response carries (log line, `requestId` in the body) and sets the header.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(RequestId::from_incoming)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Some(err) = resp.extensions_mut().remove::<AppError>() {
        span.in_scope(|| report(&err));
        let body = err.body(Some(id.as_str())).to_string();
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        *resp.body_mut() = Body::from(body);
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// Server faults are logged as errors with their cause; client errors only at debug level (a
/// scanner hitting unknown routes must not flood the log).
fn report(err: &AppError) {
    let cause = err.cause.as_deref().unwrap_or("");
    if err.status().is_server_error() {
        tracing::error!(code = %err.code, cause, "request failed: {}", err.message);
    } else {
        tracing::debug!(code = %err.code, cause, "request refused: {}", err.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_look_like_req_hex() {
        let id = RequestId::generate();
        assert!(id.as_str().starts_with("req_"), "{id}");
        assert_eq!(id.as_str().len(), 24);
        assert!(id.as_str()[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, RequestId::generate());
    }

    #[test]
    fn sane_incoming_ids_are_kept_others_replaced() {
        let ok = |s: &str| RequestId::from_incoming(&HeaderValue::from_str(s).unwrap());
        assert_eq!(ok("req_abc").unwrap().as_str(), "req_abc");
        assert!(ok("6f1c2d8e-0b7a-4f7e-9a51-2b1c3d4e5f60").is_some());
        assert!(ok("trace:1.2_3").is_some());
        assert!(ok("").is_none());
        assert!(ok("has space").is_none());
        assert!(ok("quote\"inject").is_none());
        assert!(ok(&"a".repeat(129)).is_none());
        assert!(ok(&"a".repeat(128)).is_some());
    }
}
