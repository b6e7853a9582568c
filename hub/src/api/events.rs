//! `GET /events?session_id=<uuid>` (seed 004 §4.3): a session's timeline, ordered by `ts`, for
//! the same callers who may read the session. Each element is the `build_events` row, the same
//! object the `build:<id>` channel broadcasts, so a client can merge both without mapping.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use channels::sessions::BuildEvent;

use crate::api::app_error::AppError;
use crate::api::sessions::{QueryMap, query_map, uuid_param, visible_session};
use crate::state::AppState;

/// `GET /events?session_id=`: 200 with a JSON array of events.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryMap,
) -> Result<Json<Vec<BuildEvent>>, AppError> {
    let query = query_map(query)?;
    let id = uuid_param(&query, "session_id")?;
    visible_session(&state, &headers, &query, id).await?;
    Ok(Json(state.sessions.events(id).await?))
}
