//! `POST /sessions/token`: exchanges a share token for a short-lived JWT.
//!
//! realtime-js cannot carry a share token in a join, but it does carry a JWT (`apikey`,
//! `setAuth`). The JWT issued here has `role: anon` and `share_session: <id>`, which
//! `channels::kinds::BuildKind` accepts for reading `build:<id>` and [`super::access`] for the
//! session's REST endpoints. It expires after `--share-token-ttl` (default 1 h); the client
//! exchanges again for a fresh one.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use channels::auth::now_secs;
use serde_json::{Map, Value, json};

use crate::api::app_error::{AppError, ErrorCode};
use crate::api::{credentials, json_body};
use crate::auth::{share_claims, sign_hs256};
use crate::state::AppState;

/// `POST /sessions/token` with `{"shareToken"}`: 200 `{"accessToken", "expiresAt", "sessionId"}`
/// (`expiresAt` in seconds since the epoch, as the JWT's `exp`). No JWT is needed: the share
/// token is the credential. An unknown token is 401 `INVALID_TOKEN`.
pub async fn exchange(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let body = json_body::read(&headers, body).await?;
    let token = share_token_field(&body)?;
    let invalid = || AppError::new(ErrorCode::InvalidToken, "The share token is not valid");
    if !credentials::plausible_share_token(token) {
        return Err(invalid());
    }
    let session = state
        .sessions
        .by_share_token(token)
        .await?
        .ok_or_else(invalid)?;
    let exp = now_secs() + state.config.share_token_ttl.as_secs().max(1);
    let jwt = sign_hs256(
        &state.secret,
        &share_claims(session.id, exp, state.verifier.own_claims()),
    )
    .map_err(|e| AppError::internal(format_args!("signing a share JWT: {e}")))?;
    tracing::debug!(session = %session.id, "share token exchanged");
    Ok(Json(json!({
        "accessToken": jwt,
        "expiresAt": exp,
        "sessionId": session.id,
    })))
}

/// The `shareToken` string of the body; other fields are refused like `POST /sessions` does.
fn share_token_field(body: &Value) -> Result<&str, AppError> {
    let mut fields = Map::new();
    let token = match body.as_object() {
        None => {
            fields.insert("body".into(), json!("must be a JSON object"));
            None
        }
        Some(obj) => {
            for key in obj.keys().filter(|k| *k != "shareToken") {
                fields.insert(key.clone(), json!("is not a known field"));
            }
            match obj.get("shareToken") {
                None | Some(Value::Null) => {
                    fields.insert("shareToken".into(), json!("is required"));
                    None
                }
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
                Some(Value::String(_)) => {
                    fields.insert("shareToken".into(), json!("must not be empty"));
                    None
                }
                Some(_) => {
                    fields.insert("shareToken".into(), json!("must be a string"));
                    None
                }
            }
        }
    };
    match token {
        Some(t) if fields.is_empty() => Ok(t),
        _ => Err(AppError::validation("The token request is invalid", fields)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_validation() {
        assert_eq!(
            share_token_field(&json!({"shareToken": " abc "})).unwrap(),
            "abc"
        );
        let f = |v: Value| share_token_field(&v).unwrap_err().context.unwrap()["fields"].clone();
        assert_eq!(f(json!({}))["shareToken"], "is required");
        assert_eq!(
            f(json!({"shareToken": ""}))["shareToken"],
            "must not be empty"
        );
        assert_eq!(
            f(json!({"shareToken": 1}))["shareToken"],
            "must be a string"
        );
        assert_eq!(
            f(json!({"shareToken": "a", "x": 1}))["x"],
            "is not a known field"
        );
        assert_eq!(f(json!("a"))["body"], "must be a JSON object");
    }
}
