//! Build sessions in Postgres (seed 004 §2). Publishing is done by the triggers of the
//! `hub_outbox` migration, inside the same statement's transaction, exactly as for an external
//! orchestrator writing these tables directly.

use async_trait::async_trait;
use channels::sessions::{
    BuildEvent, BuildSession, NewEvent, NewSession, SessionStatus, SessionStore, SessionUpdate,
    StoreError,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Sessions and timelines in `public.build_sessions` / `public.build_events`.
#[derive(Debug, Clone)]
pub struct PgSessionStore {
    pool: PgPool,
}

impl PgSessionStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

const SESSION_COLUMNS: &str = "id, status, template, vibe_text, options, plan, environment, \
     outputs, error, created_by, created_at, updated_at, share_token";

fn session_of(row: &PgRow) -> Result<BuildSession, sqlx::Error> {
    let status: Option<String> = row.try_get("status")?;
    let created_at: Option<DateTime<Utc>> = row.try_get("created_at")?;
    let updated_at: Option<DateTime<Utc>> = row.try_get("updated_at")?;
    let json = |name: &str| -> Result<Option<Value>, sqlx::Error> {
        Ok(row.try_get::<Option<Json<Value>>, _>(name)?.map(|j| j.0))
    };
    Ok(BuildSession {
        id: row.try_get("id")?,
        status: status
            .as_deref()
            .and_then(SessionStatus::parse)
            .unwrap_or(SessionStatus::Queued),
        template: row.try_get("template")?,
        vibe_text: row.try_get("vibe_text")?,
        options: json("options")?.unwrap_or(Value::Object(Default::default())),
        plan: json("plan")?,
        environment: json("environment")?,
        outputs: json("outputs")?,
        error: row.try_get("error")?,
        created_by: row.try_get("created_by")?,
        created_at: created_at.unwrap_or_default(),
        updated_at: updated_at.unwrap_or_default(),
        share_token: row.try_get("share_token")?,
    })
}

fn event_of(row: &PgRow) -> Result<BuildEvent, sqlx::Error> {
    let ts: Option<DateTime<Utc>> = row.try_get("ts")?;
    let payload: Option<Json<Value>> = row.try_get("payload")?;
    let session_id: Option<Uuid> = row.try_get("session_id")?;
    Ok(BuildEvent {
        id: row.try_get("id")?,
        session_id: session_id.unwrap_or_default(),
        ts: ts.unwrap_or_default(),
        kind: row.try_get("type")?,
        message: row.try_get("message")?,
        payload: payload.map_or(Value::Object(Default::default()), |j| j.0),
    })
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, new: NewSession) -> Result<BuildSession, StoreError> {
        let row = sqlx::query(&format!(
            "insert into public.build_sessions (status, template, vibe_text, options, created_by)
             values ('queued', $1, $2, $3, $4)
             returning {SESSION_COLUMNS}"
        ))
        .bind(&new.template)
        .bind(&new.vibe_text)
        .bind(Json(&new.options))
        .bind(new.created_by)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        session_of(&row).map_err(unavailable)
    }

    async fn get(&self, id: Uuid) -> Result<Option<BuildSession>, StoreError> {
        let row = sqlx::query(&format!(
            "select {SESSION_COLUMNS} from public.build_sessions where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref()
            .map(session_of)
            .transpose()
            .map_err(unavailable)
    }

    async fn by_share_token(&self, token: &str) -> Result<Option<BuildSession>, StoreError> {
        let row = sqlx::query(&format!(
            "select {SESSION_COLUMNS} from public.build_sessions where share_token = $1"
        ))
        .bind(token)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref()
            .map(session_of)
            .transpose()
            .map_err(unavailable)
    }

    async fn events(&self, id: Uuid) -> Result<Vec<BuildEvent>, StoreError> {
        if self.get(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let rows = sqlx::query(
            "select id, session_id, ts, type, message, payload
             from public.build_events where session_id = $1 order by ts asc, id asc",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(event_of)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn append_event(&self, new: NewEvent) -> Result<BuildEvent, StoreError> {
        let row = sqlx::query(
            "insert into public.build_events (session_id, type, message, payload)
             values ($1, $2, $3, $4)
             returning id, session_id, ts, type, message, payload",
        )
        .bind(new.session_id)
        .bind(&new.kind)
        .bind(&new.message)
        .bind(Json(&new.payload))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
            _ => unavailable(e),
        })?;
        event_of(&row).map_err(unavailable)
    }

    async fn update(&self, id: Uuid, u: SessionUpdate) -> Result<BuildSession, StoreError> {
        let row = sqlx::query(&format!(
            "update public.build_sessions set
               status = coalesce($2, status),
               plan = coalesce($3, plan),
               environment = coalesce($4, environment),
               outputs = coalesce($5, outputs),
               error = coalesce($6, error)
             where id = $1
             returning {SESSION_COLUMNS}"
        ))
        .bind(id)
        .bind(u.status.map(SessionStatus::as_str))
        .bind(u.plan.map(Json))
        .bind(u.environment.map(Json))
        .bind(u.outputs.map(Json))
        .bind(u.error)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let row = row.ok_or(StoreError::NotFound)?;
        session_of(&row).map_err(unavailable)
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let n = sqlx::query("delete from public.build_sessions where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?
            .rows_affected();
        Ok(n > 0)
    }
}
