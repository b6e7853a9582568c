//! Build sessions and their timelines (seed 004 §2, §4, §5): the model, the [`SessionStore`]
//! trait, and the in-memory store that is the embedded default.
//!
//! Every timeline event and every status change is published on `build:<sessionId>`; the
//! Postgres store does it with triggers in the writer's own transaction, the memory store by
//! publishing through the broker under the same lock that appends the event, so the order of the
//! timeline and the order on the channel are the same.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::broker::{Broker, Publication};
use crate::envelope::Payload;
use crate::topic::TopicKey;

/// Where a build is (seed 004 §2.1 `status` check constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Created, not started.
    Queued,
    /// The orchestrator is working on it.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by a user.
    Canceled,
}

impl SessionStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }
}

/// A build session (seed 004 §4.2), as the REST API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildSession {
    /// Session id.
    pub id: Uuid,
    /// Current status.
    pub status: SessionStatus,
    /// Template (`marketplace`, `saas`).
    pub template: String,
    /// The user's description.
    pub vibe_text: String,
    /// Build options.
    pub options: Value,
    /// The generated plan, once there is one.
    pub plan: Option<Value>,
    /// The provisioned environment, once there is one.
    pub environment: Option<Value>,
    /// Build outputs.
    pub outputs: Option<Value>,
    /// Error text of a failed build.
    pub error: Option<String>,
    /// Owner (JWT `sub` of the creator); `None` when a service created it without a user.
    pub created_by: Option<Uuid>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// Read access for anyone holding it; only shown to the owner and services.
    #[serde(skip)]
    pub share_token: String,
}

/// One timeline entry (seed 004 §2.2). Serialised as the row, which is also the payload
/// published on `build:<sessionId>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildEvent {
    /// Event id.
    pub id: Uuid,
    /// Its session.
    pub session_id: Uuid,
    /// When it happened.
    #[serde(serialize_with = "ts_format")]
    pub ts: DateTime<Utc>,
    /// Event type (`plan_created`, …, seed 004 §5.2).
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable line.
    pub message: String,
    /// Details.
    pub payload: Value,
}

/// Timestamps as Postgres renders `timestamptz` in JSON (`2026-11-22T02:30:00.123456+00:00`), so
/// the memory and Postgres stores publish identical payloads.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, false)
}

fn ts_format<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(ts))
}

/// What `POST /sessions` creates.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Template name.
    pub template: String,
    /// The user's description.
    pub vibe_text: String,
    /// Build options (an object).
    pub options: Value,
    /// Owner.
    pub created_by: Option<Uuid>,
}

/// A timeline entry to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its session.
    pub session_id: Uuid,
    /// Event type.
    pub kind: String,
    /// Human-readable line.
    pub message: String,
    /// Details (an object).
    pub payload: Value,
}

/// Fields an orchestrator updates as a build progresses; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// New status (publishes a `status` event when it changes).
    pub status: Option<SessionStatus>,
    /// The plan.
    pub plan: Option<Value>,
    /// The environment.
    pub environment: Option<Value>,
    /// Outputs.
    pub outputs: Option<Value>,
    /// Error text.
    pub error: Option<String>,
}

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist.
    #[error("session not found")]
    NotFound,
    /// The backend failed; the text is for logs.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Build sessions and their timelines.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Creates a `queued` session with a fresh share token.
    async fn create(&self, new: NewSession) -> Result<BuildSession, StoreError>;
    /// A session by id.
    async fn get(&self, id: Uuid) -> Result<Option<BuildSession>, StoreError>;
    /// The session a share token opens.
    async fn by_share_token(&self, token: &str) -> Result<Option<BuildSession>, StoreError>;
    /// A session's timeline, ordered by `ts`.
    async fn events(&self, id: Uuid) -> Result<Vec<BuildEvent>, StoreError>;
    /// Appends to a timeline and publishes the event on `build:<sessionId>`.
    async fn append_event(&self, new: NewEvent) -> Result<BuildEvent, StoreError>;
    /// Updates a session; a status change publishes a `status` event.
    async fn update(&self, id: Uuid, update: SessionUpdate) -> Result<BuildSession, StoreError>;
    /// Deletes a session and its timeline. Returns whether it existed.
    async fn delete(&self, id: Uuid) -> Result<bool, StoreError>;
}

/// The `build:<sessionId>` topic.
pub fn build_topic(id: Uuid) -> TopicKey {
    // A UUID is 36 bytes: always a valid topic name.
    TopicKey::new(&format!("build:{id}"), false)
        .unwrap_or_else(|_| unreachable!("build topics are short and non-empty"))
}

/// The payload of the `status` event published when a session's status changes.
pub fn status_payload(s: &BuildSession) -> Value {
    json!({
        "id": s.id,
        "status": s.status,
        "error": s.error,
        "updated_at": format_ts(&s.updated_at),
    })
}

/// A random share token: 24 random bytes in URL-safe base64, as the seed's column default.
pub fn new_share_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The embedded default: sessions and timelines in memory, events published through `broker`.
pub struct MemorySessionStore {
    broker: Arc<dyn Broker>,
    state: Mutex<MemoryState>,
    /// Held from appending an event until it is published, so concurrent writers publish in the
    /// order the timeline records (an async lock: it is held across the publish).
    order: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct MemoryState {
    sessions: HashMap<Uuid, BuildSession>,
    events: HashMap<Uuid, Vec<BuildEvent>>,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore").finish_non_exhaustive()
    }
}

impl MemorySessionStore {
    /// A store publishing through `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            state: Mutex::new(MemoryState::default()),
            order: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // Map inserts and pushes only: a panic cannot leave them half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn publish(
        &self,
        topic: TopicKey,
        event: &str,
        payload: &Value,
    ) -> Result<(), StoreError> {
        let publication = Publication {
            topic,
            event: event.into(),
            payload: Payload::Json(Bytes::from(payload.to_string())),
            origin: None,
        };
        self.broker
            .publish(publication)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, new: NewSession) -> Result<BuildSession, StoreError> {
        let _order = self.order.lock().await;
        let now = Utc::now();
        let session = BuildSession {
            id: Uuid::new_v4(),
            status: SessionStatus::Queued,
            template: new.template,
            vibe_text: new.vibe_text,
            options: new.options,
            plan: None,
            environment: None,
            outputs: None,
            error: None,
            created_by: new.created_by,
            created_at: now,
            updated_at: now,
            share_token: new_share_token(),
        };
        self.lock().sessions.insert(session.id, session.clone());
        self.publish(build_topic(session.id), "status", &status_payload(&session))
            .await?;
        Ok(session)
    }

    async fn get(&self, id: Uuid) -> Result<Option<BuildSession>, StoreError> {
        Ok(self.lock().sessions.get(&id).cloned())
    }

    async fn by_share_token(&self, token: &str) -> Result<Option<BuildSession>, StoreError> {
        Ok(self
            .lock()
            .sessions
            .values()
            .find(|s| s.share_token == token)
            .cloned())
    }

    async fn events(&self, id: Uuid) -> Result<Vec<BuildEvent>, StoreError> {
        let st = self.lock();
        if !st.sessions.contains_key(&id) {
            return Err(StoreError::NotFound);
        }
        Ok(st.events.get(&id).cloned().unwrap_or_default())
    }

    async fn append_event(&self, new: NewEvent) -> Result<BuildEvent, StoreError> {
        let _order = self.order.lock().await;
        let event = BuildEvent {
            id: Uuid::new_v4(),
            session_id: new.session_id,
            ts: Utc::now(),
            kind: new.kind,
            message: new.message,
            payload: new.payload,
        };
        {
            let mut st = self.lock();
            if !st.sessions.contains_key(&new.session_id) {
                return Err(StoreError::NotFound);
            }
            st.events
                .entry(new.session_id)
                .or_default()
                .push(event.clone());
        }
        let payload = serde_json::to_value(&event).unwrap_or(Value::Null);
        self.publish(build_topic(event.session_id), &event.kind, &payload)
            .await?;
        Ok(event)
    }

    async fn update(&self, id: Uuid, update: SessionUpdate) -> Result<BuildSession, StoreError> {
        let _order = self.order.lock().await;
        let (session, status_changed) = {
            let mut st = self.lock();
            let s = st.sessions.get_mut(&id).ok_or(StoreError::NotFound)?;
            let mut changed = false;
            if let Some(status) = update.status {
                changed = status != s.status;
                s.status = status;
            }
            if let Some(v) = update.plan {
                s.plan = Some(v);
            }
            if let Some(v) = update.environment {
                s.environment = Some(v);
            }
            if let Some(v) = update.outputs {
                s.outputs = Some(v);
            }
            if let Some(e) = update.error {
                s.error = Some(e);
            }
            s.updated_at = Utc::now();
            (s.clone(), changed)
        };
        if status_changed {
            self.publish(build_topic(id), "status", &status_payload(&session))
                .await?;
        }
        Ok(session)
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut st = self.lock();
        st.events.remove(&id);
        Ok(st.sessions.remove(&id).is_some())
    }
}
