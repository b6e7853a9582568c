//! Errors of the hub's own REST API (sessions, events, share tokens, unknown routes, panics), in
//! the shape of seed 000:
//!
//! ```json
//! {"error": {"code": "VALIDATION_ERROR", "message": "…", "context": {…}}, "requestId": "req_…"}
//! ```
//!
//! The Supabase-compatible broadcast endpoints keep `{"message": …}` ([`super::error::ApiError`]):
//! realtime-js shows `body.error || body.message`, so an object in `error` would break it there.
//!
//! An [`AppError`] renders itself without `requestId` and rides along in the response's
//! extensions; the request-id middleware ([`super::request_id`]) logs it with the request id and
//! re-renders the body with `requestId`. Conversion stays pure and logging happens in one place,
//! the axum `error-handling` example's pattern.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use channels::sessions::StoreError;
use serde_json::{Map, Value, json};

/// The `error.code` values, each with one HTTP status. Validation problems are always 400 (seed
/// 000), never 422; the hub's API has no state a request can conflict with, so there is no 409.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request is malformed or a field is invalid; `context.fields` names each problem.
    ValidationError,
    /// 401: no token was given where one is required.
    AuthenticationRequired,
    /// 401: the JWT or share token given is not valid (expired, bad signature, unknown).
    InvalidToken,
    /// 403: the caller is known but may not do this.
    Forbidden,
    /// 404: no such route or resource (also a resource the caller may not see).
    NotFound,
    /// 405: the route exists with other methods.
    MethodNotAllowed,
    /// 413: the body exceeds the API's limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: a capacity limit (running simulated builds) is reached; retry later.
    RateLimited,
    /// 500: a bug (a handler panicked); the detail is only logged.
    InternalError,
    /// 503: a backend (the session store) failed; the detail is only logged.
    ServiceUnavailable,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "VALIDATION_ERROR",
            Self::AuthenticationRequired => "AUTHENTICATION_REQUIRED",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::RateLimited => "RATE_LIMITED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationError => StatusCode::BAD_REQUEST,
            Self::AuthenticationRequired | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered by the hub's own API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    /// Machine-readable code (and the status).
    pub code: ErrorCode,
    /// What the client is shown.
    pub message: String,
    /// Structured details the client is shown (`{"fields": {...}}` for validation errors).
    pub context: Option<Value>,
    /// The internal cause, logged with the request id and never shown (store errors, panics).
    pub cause: Option<String>,
    /// Sent as `Retry-After` (seconds) with 429 and 503.
    pub retry_after: Option<Duration>,
}

impl AppError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            context: None,
            cause: None,
            retry_after: None,
        }
    }

    /// Adds client-visible details.
    pub fn with_context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }

    /// Adds the internal cause, for the log only.
    pub fn with_cause(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Asks the client to retry after `after`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// 400 listing every invalid field: `context = {"fields": {"<path>": "<problem>", …}}`.
    pub fn validation(message: impl Into<String>, fields: Map<String, Value>) -> Self {
        Self::new(ErrorCode::ValidationError, message).with_context(json!({ "fields": fields }))
    }

    /// 404 for a resource, worded the same whether it is missing or hidden from the caller.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// 503 for a backend failure: a generic message, the detail kept for the log.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::ServiceUnavailable,
            "The service is temporarily unavailable; try again shortly",
        )
        .with_cause(cause)
        .with_retry_after(Duration::from_secs(1))
    }

    /// 500 for a bug, with a generic message.
    pub fn internal(cause: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InternalError, "An internal error occurred").with_cause(cause)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body; `requestId` is included when known.
    pub fn body(&self, request_id: Option<&str>) -> Value {
        let mut body = json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "context": self.context.clone().unwrap_or_else(|| json!({})),
            }
        });
        if let (Some(id), Some(obj)) = (request_id, body.as_object_mut()) {
            obj.insert("requestId".into(), Value::String(id.to_owned()));
        }
        body
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body(None))).into_response();
        if let Some(after) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Store failures: a vanished session is a 404, anything else a 503 whose detail is only logged.
impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("Session"),
            StoreError::Unavailable(detail) => {
                Self::unavailable(format_args!("session store: {detail}"))
            }
        }
    }
}

/// Fallback for unknown routes: a JSON 404, never an empty or HTML body.
pub async fn no_route(method: Method, uri: Uri) -> AppError {
    AppError::new(
        ErrorCode::NotFound,
        format!("No route for {method} {}", uri.path()),
    )
    .with_context(json!({ "method": method.as_str(), "path": uri.path() }))
}

/// Fallback for a known route called with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .with_context(json!({ "method": method.as_str(), "path": uri.path() }))
}

/// The response to a handler that panicked (used by `CatchPanicLayer`): a JSON 500 whose cause,
/// the panic message, is logged with the request id.
pub fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    AppError::internal(format_args!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status_and_spelling() {
        let all = [
            (ErrorCode::ValidationError, 400, "VALIDATION_ERROR"),
            (
                ErrorCode::AuthenticationRequired,
                401,
                "AUTHENTICATION_REQUIRED",
            ),
            (ErrorCode::InvalidToken, 401, "INVALID_TOKEN"),
            (ErrorCode::Forbidden, 403, "FORBIDDEN"),
            (ErrorCode::NotFound, 404, "NOT_FOUND"),
            (ErrorCode::MethodNotAllowed, 405, "METHOD_NOT_ALLOWED"),
            (ErrorCode::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (
                ErrorCode::UnsupportedMediaType,
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            (ErrorCode::RateLimited, 429, "RATE_LIMITED"),
            (ErrorCode::InternalError, 500, "INTERNAL_ERROR"),
            (ErrorCode::ServiceUnavailable, 503, "SERVICE_UNAVAILABLE"),
        ];
        for (code, status, name) in all {
            assert_eq!(code.status().as_u16(), status, "{name}");
            assert_eq!(code.as_str(), name);
        }
    }

    #[test]
    fn body_has_the_seed_shape() {
        let mut fields = Map::new();
        fields.insert("vibeText".into(), json!("is required"));
        let e = AppError::validation("Invalid body", fields);
        assert_eq!(
            e.body(Some("req_1")),
            json!({
                "error": {
                    "code": "VALIDATION_ERROR",
                    "message": "Invalid body",
                    "context": {"fields": {"vibeText": "is required"}},
                },
                "requestId": "req_1",
            })
        );
        // Without context the client still finds an object.
        let e = AppError::not_found("Session");
        assert_eq!(e.body(None)["error"]["context"], json!({}));
        assert!(e.body(None).get("requestId").is_none());
    }

    #[test]
    fn causes_are_never_shown() {
        let e = AppError::unavailable("connection refused to 10.0.0.5:5432");
        let body = e.body(None).to_string();
        assert!(!body.contains("10.0.0.5"), "{body}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let resp = AppError::internal("boom").into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(resp.extensions().get::<AppError>().is_some());
    }

    #[test]
    fn panic_payloads_become_causes() {
        let resp = panic_response(Box::new("bad index"));
        let err = resp.extensions().get::<AppError>().unwrap();
        assert_eq!(err.code, ErrorCode::InternalError);
        assert_eq!(err.cause.as_deref(), Some("handler panicked: bad index"));
        let resp = panic_response(Box::new(String::from("owned")));
        let err = resp.extensions().get::<AppError>().unwrap();
        assert_eq!(err.cause.as_deref(), Some("handler panicked: owned"));
    }
}
