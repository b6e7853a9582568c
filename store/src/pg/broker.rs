//! Publishing into the outbox and reading history from it.
//!
//! A publish is `hub.publish_from(…)`: the message gets the next `seq` of its topic and a
//! NOTIFY wakes every node's feed, which delivers it. History is the outbox itself, so the cursor
//! of a durable topic is `<database epoch>:<seq>` on every node.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use channels::history::Page;
use channels::{Broker, BrokerError, Cursor, Envelope, Payload, Publication, Since, TopicKey};
use sqlx::{PgPool, Row};

/// The Postgres broker for durable topics.
#[derive(Debug, Clone)]
pub struct PgBroker {
    pool: PgPool,
    epoch: Arc<str>,
    node_id: Arc<str>,
}

fn unavailable(e: sqlx::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl PgBroker {
    /// A broker writing to and reading from `pool`'s outbox.
    pub fn new(pool: PgPool, epoch: Arc<str>, node_id: Arc<str>) -> Self {
        Self {
            pool,
            epoch,
            node_id,
        }
    }

    async fn head(&self, topic: &TopicKey) -> Result<u64, BrokerError> {
        let seq: Option<i64> =
            sqlx::query_scalar("select seq from hub.topics where topic = $1 and private = $2")
                .bind(topic.name())
                .bind(topic.is_private())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    fn envelope(
        &self,
        topic: &TopicKey,
        row: &sqlx::postgres::PgRow,
    ) -> Result<Arc<Envelope>, BrokerError> {
        let get = |e: sqlx::Error| BrokerError::Unavailable(e.to_string());
        let seq: i64 = row.try_get("seq").map_err(get)?;
        let event: String = row.try_get("event").map_err(get)?;
        let json: Option<String> = row.try_get("payload").map_err(get)?;
        let bytes: Option<Vec<u8>> = row.try_get("payload_bytes").map_err(get)?;
        let ms: i64 = row.try_get("ms").map_err(get)?;
        Ok(Arc::new(Envelope {
            topic: topic.clone(),
            event: event.into(),
            payload: payload_of(json, bytes),
            cursor: Some(Cursor::new(self.epoch.clone(), seq.max(0) as u64)),
            time_ms: ms.max(0) as u64,
        }))
    }
}

/// A row's payload: raw bytes when `payload_bytes` is set, otherwise the JSON text.
pub(crate) fn payload_of(json: Option<String>, bytes: Option<Vec<u8>>) -> Payload {
    match (bytes, json) {
        (Some(b), _) => Payload::Binary(Bytes::from(b)),
        (None, Some(j)) => Payload::Json(Bytes::from(j)),
        (None, None) => Payload::Json(Bytes::from_static(b"{}")),
    }
}

#[async_trait]
impl Broker for PgBroker {
    async fn publish(&self, p: Publication) -> Result<Option<Cursor>, BrokerError> {
        let (json, bytes) = match &p.payload {
            Payload::Json(b) => (Some(String::from_utf8_lossy(b).into_owned()), None),
            Payload::Binary(b) => (None, Some(b.to_vec())),
        };
        let origin = p.origin.map(|c| format!("{}:{c}", self.node_id));
        let seq: i64 = sqlx::query_scalar("select hub.publish_from($1, $2, $3::jsonb, $4, $5, $6)")
            .bind(p.topic.name())
            .bind(&*p.event)
            .bind(json)
            .bind(p.topic.is_private())
            .bind(origin)
            .bind(bytes)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(Some(Cursor::new(self.epoch.clone(), seq.max(0) as u64)))
    }

    async fn read(
        &self,
        topic: &TopicKey,
        after: &Since,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let head = self.head(topic).await?;
        let head_cursor = Cursor::new(self.epoch.clone(), head);
        let after = match after {
            Since::Beginning => 0,
            Since::After(c) if *c.epoch != *self.epoch || c.offset > head => {
                return Ok(Page {
                    messages: Vec::new(),
                    contiguous: false,
                    head: head_cursor,
                });
            }
            Since::After(c) => c.offset,
        };
        let rows = sqlx::query(
            "select seq, event, payload::text as payload, payload_bytes,
                    (extract(epoch from created_at) * 1000)::int8 as ms
             from hub.outbox
             where topic = $1 and private = $2 and seq > $3
             order by seq asc
             limit $4",
        )
        .bind(topic.name())
        .bind(topic.is_private())
        .bind(after as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let messages = rows
            .iter()
            .map(|r| self.envelope(topic, r))
            .collect::<Result<Vec<_>, _>>()?;
        let first = messages
            .first()
            .and_then(|e| e.cursor.as_ref().map(|c| c.offset));
        // Retention may have deleted the rows right after the cursor.
        let contiguous = match first {
            Some(f) => f == after + 1,
            None => after >= head,
        };
        Ok(Page {
            messages,
            contiguous,
            head: head_cursor,
        })
    }

    async fn replay(
        &self,
        topic: &TopicKey,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Envelope>>, BrokerError> {
        let rows = sqlx::query(
            "select seq, event, payload::text as payload, payload_bytes,
                    (extract(epoch from created_at) * 1000)::int8 as ms
             from hub.outbox
             where topic = $1 and private = $2
               and created_at >= to_timestamp($3::float8 / 1000)
             order by seq desc
             limit $4",
        )
        .bind(topic.name())
        .bind(topic.is_private())
        .bind(since_ms as f64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().rev().map(|r| self.envelope(topic, r)).collect()
    }
}
