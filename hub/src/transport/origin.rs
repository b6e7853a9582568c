//! The browser `Origin` allow-list (`--allowed-origins`) for long-lived transports, and the CORS
//! layer that applies the same list to the REST API.
//!
//! A WebSocket upgrade or an SSE request is not subject to CORS, so a page on any site could
//! open one with the user's cookie; the allow-list refuses those whose `Origin` is not listed
//! (403). Requests without `Origin` (servers, CLIs, the load generator) are always allowed: the
//! header is what browsers send, and a non-browser client could forge any value anyway.

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Whether a request with `headers` may proceed under `allowed` (empty: any origin).
pub fn allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
    }
}

/// CORS for the REST API: the allowed origins (any when the list is empty), the headers
/// supabase-js and our own API use, and the rate-limit and request-id headers exposed to the
/// page.
pub fn cors(allowed: &[String]) -> CorsLayer {
    let origins = if allowed.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let h = |s: &'static str| HeaderName::from_static(s);
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            h("apikey"),
            h("x-client-info"),
            h("x-request-id"),
            h("x-share-token"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::LOCATION,
            h("x-request-id"),
            h("ratelimit-limit"),
            h("ratelimit-remaining"),
            h("ratelimit-reset"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = o {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn only_listed_origins_pass_and_no_origin_always_does() {
        let list = vec!["https://app.example".to_owned()];
        assert!(allowed(&with_origin(Some("https://app.example")), &list));
        assert!(allowed(&with_origin(Some("HTTPS://APP.EXAMPLE")), &list));
        assert!(!allowed(&with_origin(Some("https://evil.example")), &list));
        assert!(!allowed(&with_origin(Some("null")), &list));
        assert!(allowed(&with_origin(None), &list));
        assert!(allowed(&with_origin(Some("https://evil.example")), &[]));
    }
}
