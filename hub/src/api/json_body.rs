//! Reading a JSON request body for the hub's own API, with every failure in the seed-000 shape
//! (axum's `Json` extractor would answer its own plain-text rejections).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::api::app_error::{AppError, ErrorCode};

/// Largest body the hub's own API reads. A session's `vibeText` is capped well below this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads `body` as JSON. The `Content-Type`, when given, must be JSON (`application/json` or
/// `application/*+json`), so a form post or `fetch` with a bare string body (`text/plain`) is
/// told what to fix; a raw client that sends no `Content-Type` at all is still parsed.
pub async fn read(headers: &HeaderMap, body: Body) -> Result<Value, AppError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json = mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json"));
        if !json {
            return Err(AppError::new(
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/json",
            )
            .with_context(json!({ "contentType": ct })));
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            // The only error a complete in-memory or well-behaved body gives is the limit; a
            // client that hangs up mid-body gets the same answer, which it will never read.
            AppError::new(
                ErrorCode::PayloadTooLarge,
                format!("The body must be at most {MAX_BODY_BYTES} bytes"),
            )
            .with_cause(e)
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::new(
            ErrorCode::ValidationError,
            "A JSON object body is required",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        AppError::new(ErrorCode::ValidationError, "The body is not valid JSON")
            .with_context(json!({ "reason": e.to_string() }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_ct(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[tokio::test]
    async fn accepts_json_with_or_without_content_type() {
        let v = read(
            &with_ct("application/json; charset=utf-8"),
            Body::from("{\"a\":1}"),
        )
        .await
        .unwrap();
        assert_eq!(v["a"], 1);
        assert!(read(&HeaderMap::new(), Body::from("[]")).await.is_ok());
        assert!(
            read(&with_ct("application/vnd.api+json"), Body::from("{}"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn refuses_other_types_sizes_and_garbage() {
        let e = read(&with_ct("text/plain"), Body::from("{}"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let e = read(&HeaderMap::new(), Body::from(big)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        let e = read(&HeaderMap::new(), Body::from("  ")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        let e = read(&HeaderMap::new(), Body::from("{nope"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert!(e.context.unwrap()["reason"].is_string());
    }
}
