//! The Supabase REST broadcast endpoints (PROTOCOL §3.4), which realtime-js falls back to when a
//! channel cannot push, and which backends can call directly.
//!
//! - `POST …/api/broadcast` with `{"messages":[{topic, event, payload, private}]}`;
//! - `POST …/api/broadcast/{topic}/events/{event}[?private=true]` with a JSON or
//!   `application/octet-stream` body.
//!
//! Both authenticate with `Authorization: Bearer` or the `apikey` header, ignore other query
//! parameters (the client leaves `apikey` and `vsn` on the URL), check the topic's kind allows
//! the caller to write (403 otherwise), and answer 202. Errors keep Supabase's `{"message": …}`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use channels::envelope::MAX_EVENT_LEN;
use channels::kinds::Access;
use channels::{Payload, Principal, Publication, TokenVerifier, TopicKey};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::credentials;
use crate::api::error::ApiError;
use crate::state::AppState;

/// Most messages one batch request may carry.
const MAX_BATCH: usize = 100;

/// The caller's identity from `Authorization: Bearer` or, failing that, the `apikey` header.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = credentials::jwt(headers).unwrap_or_default();
    state
        .verifier
        .verify(token)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))
}

/// Whether `principal` may broadcast on `topic` (the same rule as a WebSocket broadcast: a
/// `build:` topic only for its owner and services). 403 with the kind's reason otherwise.
async fn authorize(
    state: &AppState,
    principal: &Principal,
    topic: &TopicKey,
) -> Result<(), ApiError> {
    state
        .node
        .kinds
        .authorize(principal, topic, Access::Write)
        .await
        .map_err(|denied| ApiError::new(StatusCode::FORBIDDEN, denied.0))
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn check_event(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN {
        return Err(unprocessable(format!(
            "event must be 1 to {MAX_EVENT_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_size(state: &AppState, len: usize) -> Result<(), ApiError> {
    let max = state.config.max_payload_bytes;
    if len > max {
        return Err(unprocessable(format!(
            "Payload size exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

async fn publish(state: &AppState, publication: Publication) -> Result<(), ApiError> {
    state.node.broker.publish(publication).await.map_err(|e| {
        tracing::warn!(error = %e, "REST publish failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The message could not be published",
        )
    })?;
    Ok(())
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<BatchMessage<'a>>,
}

#[derive(Deserialize)]
struct BatchMessage<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    private: Option<serde_json::Value>,
}

/// `POST …/api/broadcast`.
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let principal = authenticate(&state, &headers)?;
    let batch: Batch<'_> = serde_json::from_slice(&body).map_err(|e| {
        unprocessable(format!(
            "Body must be {{\"messages\":[{{\"topic\",\"event\",\"payload\",\"private\"}}]}}: {e}"
        ))
    })?;
    if batch.messages.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many messages to broadcast, please reduce the batch size",
        ));
    }
    // Validate the whole batch before publishing any of it.
    let mut publications = Vec::with_capacity(batch.messages.len());
    for m in batch.messages {
        let private = matches!(m.private, Some(serde_json::Value::Bool(true)))
            || matches!(&m.private, Some(serde_json::Value::String(s)) if s == "true");
        let topic = TopicKey::new(&m.topic, private)
            .map_err(|e| unprocessable(format!("topic {:?}: {e}", m.topic)))?;
        check_event(&m.event)?;
        authorize(&state, &principal, &topic).await?;
        let payload = m.payload.map_or("{}", RawValue::get);
        check_size(&state, payload.len())?;
        publications.push(Publication {
            topic,
            event: m.event.into(),
            payload: Payload::Json(Bytes::copy_from_slice(payload.as_bytes())),
            origin: None,
        });
    }
    for p in publications {
        publish(&state, p).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// `POST …/api/broadcast/{topic}/events/{event}`.
pub async fn single(
    State(state): State<AppState>,
    Path((topic, event)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let principal = authenticate(&state, &headers)?;
    let private = query.get("private").is_some_and(|v| v == "true");
    let topic = TopicKey::new(&topic, private)
        .map_err(|e| unprocessable(format!("topic {topic:?}: {e}")))?;
    check_event(&event)?;
    authorize(&state, &principal, &topic).await?;
    check_size(&state, body.len())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let payload = match content_type.as_str() {
        "application/json" => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                return Err(unprocessable("Body is not valid JSON"));
            }
            Payload::Json(body)
        }
        "application/octet-stream" => Payload::Binary(body),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json or application/octet-stream",
            ));
        }
    };
    publish(
        &state,
        Publication {
            topic,
            event: event.into(),
            payload,
            origin: None,
        },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}
