//! `POST /sessions` and `GET /sessions?id=` (seed 004 §4.1, §4.2, §4.4).
//!
//! Creating needs a JWT: a user token whose `sub` is a UUID (the owner), or the service role
//! (owner = its `sub` when that is a UUID, else none). Reading follows [`access`]: owner, service
//! role, share token or share JWT; anyone else gets the same 404 as for a missing session.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use channels::Principal;
use channels::sessions::{BuildSession, NewSession};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::api::access::{self, Viewer};
use crate::api::app_error::{AppError, ErrorCode};
use crate::api::credentials;
use crate::api::json_body;
use crate::api::new_session;
use crate::state::AppState;

/// The query string as a map; a malformed one is a validation error.
pub type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `POST /sessions`: 201 `{"sessionId", "shareToken"}`, and the simulated build starts.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let principal = credentials::require_principal(&state, &headers)?;
    let created_by = creator(&principal)?;
    let request = new_session::parse(&json_body::read(&headers, body).await?)?;
    // Reserve a build slot before creating, so a refusal leaves no session behind.
    let slot = match &state.simulator {
        Some(sim) => Some(sim.reserve().ok_or_else(|| {
            AppError::new(
                ErrorCode::RateLimited,
                "Too many builds are running; try again shortly",
            )
            .with_retry_after(Duration::from_secs(5))
        })?),
        None => None,
    };
    let session = state
        .sessions
        .create(NewSession {
            template: request.template.as_str().to_owned(),
            vibe_text: request.vibe_text,
            options: request.options.to_json(),
            created_by,
        })
        .await?;
    tracing::info!(session = %session.id, owner = ?created_by, template = %session.template, "session created");
    let body = json!({ "sessionId": session.id, "shareToken": session.share_token });
    let location = HeaderValue::from_str(&format!("/sessions?id={}", session.id)).ok();
    if let Some(slot) = slot {
        slot.start(&state, session);
    }
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Some(location) = location {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    Ok(resp)
}

/// The owner a new session gets from `principal`.
fn creator(principal: &Principal) -> Result<Option<Uuid>, AppError> {
    match access::owner_id(principal) {
        Some(id) => Ok(Some(id)),
        None if principal.is_service() => Ok(None),
        None => Err(AppError::new(
            ErrorCode::Forbidden,
            "Creating a session needs a user token whose `sub` is a UUID, or the service role",
        )
        .with_context(json!({ "role": principal.role, "sub": principal.sub }))),
    }
}

/// `GET /sessions?id=<uuid>`: the session (§4.2), with `shareToken` for its owner and services.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryMap,
) -> Result<Json<Value>, AppError> {
    let query = query_map(query)?;
    let id = uuid_param(&query, "id")?;
    let (session, viewer) = visible_session(&state, &headers, &query, id).await?;
    Ok(Json(session_json(&session, viewer)))
}

/// The session `id` if the caller may see it, and how. 401 without any credential, 404 when it
/// does not exist or the caller may not see it (the two are indistinguishable on purpose).
pub async fn visible_session(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    id: Uuid,
) -> Result<(BuildSession, Viewer), AppError> {
    let principal = credentials::optional_principal(state, headers)?;
    let share_token =
        credentials::share_token(headers, query.get("share_token").map(String::as_str));
    let has_share_credential =
        headers.contains_key(credentials::SHARE_TOKEN_HEADER) || query.contains_key("share_token");
    if principal.is_none() && !has_share_credential {
        return Err(AppError::new(
            ErrorCode::AuthenticationRequired,
            "A JWT (Authorization: Bearer or apikey) or a share token \
             (x-share-token or share_token) is required",
        ));
    }
    let session = state
        .sessions
        .get(id)
        .await?
        .ok_or_else(|| AppError::not_found("Session"))?;
    let viewer = access::viewer(&session, principal.as_ref(), share_token)
        .ok_or_else(|| AppError::not_found("Session"))?;
    Ok((session, viewer))
}

/// The §4.2 shape: camelCase fields, `shareToken` only for viewers allowed to hand it out.
pub fn session_json(session: &BuildSession, viewer: Viewer) -> Value {
    let mut v = serde_json::to_value(session).unwrap_or_else(|_| json!({}));
    if viewer.sees_share_token()
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert(
            "shareToken".into(),
            Value::String(session.share_token.clone()),
        );
    }
    v
}

/// The query map, or a 400 when the query string cannot be decoded.
pub fn query_map(query: QueryMap) -> Result<HashMap<String, String>, AppError> {
    query.map(|Query(q)| q).map_err(|e| {
        let mut fields = Map::new();
        fields.insert("query".into(), Value::String(e.body_text()));
        AppError::validation("The query string is invalid", fields)
    })
}

/// A required UUID query parameter.
pub fn uuid_param(query: &HashMap<String, String>, name: &str) -> Result<Uuid, AppError> {
    let problem = match query.get(name).map(|s| s.trim()) {
        None | Some("") => "is required",
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) => return Ok(id),
            Err(_) => "must be a UUID",
        },
    };
    let mut fields = Map::new();
    fields.insert(name.to_owned(), Value::String(problem.to_owned()));
    Err(AppError::validation(
        format!("Query parameter `{name}` {problem}"),
        fields,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creators() {
        let p = |role: &str, sub: Option<&str>| Principal {
            role: role.into(),
            sub: sub.map(str::to_owned),
            exp: u64::MAX,
            share_session: None,
            grants: None,
        };
        let u = Uuid::new_v4();
        assert_eq!(
            creator(&p("authenticated", Some(&u.to_string()))).unwrap(),
            Some(u)
        );
        assert_eq!(creator(&p("service_role", None)).unwrap(), None);
        assert_eq!(
            creator(&p("service_role", Some(&u.to_string()))).unwrap(),
            Some(u)
        );
        assert_eq!(creator(&p("service_role", Some("svc"))).unwrap(), None);
        let e = creator(&p("authenticated", Some("user-1"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            creator(&p("anon", None)).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn uuid_params() {
        let mut q = HashMap::new();
        assert_eq!(
            uuid_param(&q, "id").unwrap_err().context.unwrap()["fields"]["id"],
            "is required"
        );
        q.insert("id".to_owned(), "nope".to_owned());
        assert_eq!(
            uuid_param(&q, "id").unwrap_err().context.unwrap()["fields"]["id"],
            "must be a UUID"
        );
        let id = Uuid::new_v4();
        q.insert("id".to_owned(), id.to_string());
        assert_eq!(uuid_param(&q, "id").unwrap(), id);
    }
}
