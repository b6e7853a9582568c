//! The envelope: one published message as it fans out and as history keeps it (DESIGN §4).

use std::sync::Arc;

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::topic::TopicKey;

/// Longest accepted broadcast event name, in bytes: binary frames carry it behind a one-byte length.
pub const MAX_EVENT_LEN: usize = 255;

/// A broadcast's user payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// JSON text, already validated. Kept as text so fan-out never re-serialises it.
    Json(Bytes),
    /// Raw bytes (binary broadcasts). V1 members cannot receive these.
    Binary(Bytes),
}

impl Payload {
    /// Size of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Json(b) | Self::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty (never true for JSON, which is at least `{}` or `null`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message with its place in the topic's history. Shared (`Arc`) between the history ring and
/// every delivery, so storing and fanning out never copy the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Where it was published.
    pub topic: TopicKey,
    /// The broadcast event name (`payload.event` on the client).
    pub event: Arc<str>,
    /// The user payload.
    pub payload: Payload,
    /// Its cursor; `None` for messages that bypass history (a raw publish without an offset).
    pub cursor: Option<Cursor>,
    /// Publish time, milliseconds since the Unix epoch (Supabase `replay.since` compares with it).
    pub time_ms: u64,
}

/// Milliseconds since the Unix epoch, saturating at 0 for clocks set before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
