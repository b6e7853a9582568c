//! Where REST callers put their credentials, shared by every endpoint:
//!
//! - a JWT in `Authorization: Bearer …`, or failing that in the `apikey` header (what supabase-js
//!   sends: `apikey` is the anon key, `Authorization` the user's session token when signed in);
//! - a build session's share token in `x-share-token` or the `share_token` query parameter (the
//!   session endpoints only).

use axum::http::{HeaderMap, header};
use channels::{Principal, TokenError, TokenVerifier};

use crate::api::app_error::{AppError, ErrorCode};
use crate::state::AppState;

/// The header carrying a share token.
pub const SHARE_TOKEN_HEADER: &str = "x-share-token";

/// Longest share token looked up. Tokens the hub makes are 32 characters; the bound keeps junk
/// out of store queries.
const MAX_SHARE_TOKEN_LEN: usize = 256;

/// The JWT the request carries, if any (empty values count as none).
pub fn jwt(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    bearer.or_else(|| {
        headers
            .get("apikey")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    })
}

/// The caller's verified identity, or `None` without a token. A token that is present but invalid
/// is an error: a caller that sends a broken credential should hear about it rather than be
/// treated as anonymous.
pub fn optional_principal(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, AppError> {
    let Some(token) = jwt(headers) else {
        return Ok(None);
    };
    state
        .verifier
        .verify(token)
        .map(Some)
        .map_err(invalid_token)
}

/// The caller's verified identity; 401 without one.
pub fn require_principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, AppError> {
    optional_principal(state, headers)?.ok_or_else(|| {
        AppError::new(
            ErrorCode::AuthenticationRequired,
            "A JWT is required in the Authorization header (Bearer) or the apikey header",
        )
    })
}

fn invalid_token(e: TokenError) -> AppError {
    AppError::new(ErrorCode::InvalidToken, e.to_string())
}

/// A share token from the header or, failing that, the query. Only tokens that could be one
/// (URL-safe base64, bounded length) are returned; anything else cannot open a session.
pub fn share_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(SHARE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(query)
        .map(str::trim)
        .filter(|t| plausible_share_token(t))
}

/// Whether `token` is shaped like a share token: 1 to 256 characters of URL-safe base64 (the
/// seed's `encode(gen_random_bytes(24), 'base64url')`, padding tolerated).
pub fn plausible_share_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_SHARE_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_wins_over_apikey_and_empty_is_none() {
        let h = headers(&[("authorization", "Bearer user"), ("apikey", "anon")]);
        assert_eq!(jwt(&h), Some("user"));
        assert_eq!(jwt(&headers(&[("apikey", "anon")])), Some("anon"));
        assert_eq!(
            jwt(&headers(&[
                ("authorization", "Bearer "),
                ("apikey", "anon")
            ])),
            Some("anon")
        );
        assert_eq!(jwt(&headers(&[("apikey", " ")])), None);
        assert_eq!(jwt(&HeaderMap::new()), None);
    }

    #[test]
    fn share_tokens_from_header_or_query() {
        let h = headers(&[("x-share-token", "abc_DEF-123")]);
        assert_eq!(share_token(&h, Some("other")), Some("abc_DEF-123"));
        assert_eq!(share_token(&HeaderMap::new(), Some("q")), Some("q"));
        assert_eq!(share_token(&HeaderMap::new(), Some("has space")), None);
        assert_eq!(share_token(&HeaderMap::new(), Some("nul\0")), None);
        assert_eq!(share_token(&HeaderMap::new(), Some(&"a".repeat(257))), None);
        assert_eq!(share_token(&HeaderMap::new(), None), None);
    }
}
