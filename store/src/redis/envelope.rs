//! The envelope as it travels through Redis (pub/sub messages and history entries).
//!
//! ```json
//! {"topic":"chat:42","private":false,"event":"token","offset":17,"epoch":"r1a2b3c4d5",
//!  "time":1763780000000,"origin":"<node>:<conn>","payload":{"text":"Hel"}}
//! ```
//! `payload_b64` replaces `payload` for binary payloads. Backend services that `PUBLISH` this
//! shape directly may leave out `offset`, `epoch`, `time` and `origin`: the message then fans out
//! without a cursor and without history (use the script for resumable streams).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use channels::{ConnId, Cursor, Envelope, Payload, TopicKey};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The Redis name of a topic: `t:<name>` or, for private topics, `p:<name>`.
pub fn tid(topic: &TopicKey) -> String {
    let side = if topic.is_private() { 'p' } else { 't' };
    format!("{side}:{}", topic.name())
}

/// The pub/sub channel of a topic: `hub:msg:<tid>`.
pub fn channel_of(topic: &TopicKey) -> String {
    format!("hub:msg:{}", tid(topic))
}

/// The topic a channel name belongs to.
pub fn topic_of_channel(channel: &str) -> Option<TopicKey> {
    let tid = channel.strip_prefix("hub:msg:")?;
    let (side, name) = tid.split_at_checked(2)?;
    match side {
        "t:" => TopicKey::new(name, false).ok(),
        "p:" => TopicKey::new(name, true).ok(),
        _ => None,
    }
}

/// The key names of a topic: `[seq, epoch, hist]`.
pub fn keys_of(topic: &TopicKey) -> [String; 3] {
    let t = tid(topic);
    [
        format!("hub:{{{t}}}:seq"),
        format!("hub:{{{t}}}:epoch"),
        format!("hub:{{{t}}}:hist"),
    ]
}

/// A parsed wire envelope.
#[derive(Debug, Deserialize)]
pub struct WireEnvelope<'a> {
    /// Topic name (without `realtime:`).
    pub topic: String,
    /// Private side of the name.
    #[serde(default)]
    pub private: bool,
    /// Event name.
    pub event: String,
    /// Offset in the topic, when published through the script.
    pub offset: Option<u64>,
    /// History epoch, when published through the script.
    pub epoch: Option<String>,
    /// Publish time in milliseconds.
    pub time: Option<u64>,
    /// `<node>:<connection>` of a publishing WebSocket client.
    pub origin: Option<String>,
    /// JSON payload.
    #[serde(borrow)]
    pub payload: Option<&'a RawValue>,
    /// Base64 binary payload.
    pub payload_b64: Option<String>,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not the documented JSON shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The topic cannot be joined.
    #[error("invalid topic: {0}")]
    Topic(String),
}

impl<'a> WireEnvelope<'a> {
    /// Parses the JSON text of an envelope.
    pub fn parse(text: &'a str) -> Result<Self, EnvelopeError> {
        serde_json::from_str(text).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// The envelope, and the local connection that published it (when `node_id` is this node).
    pub fn into_envelope(self, node_id: &str) -> Result<(Envelope, Option<ConnId>), EnvelopeError> {
        let topic = TopicKey::new(&self.topic, self.private)
            .map_err(|e| EnvelopeError::Topic(e.to_string()))?;
        let payload = match (self.payload_b64, self.payload) {
            (Some(b64), _) => Payload::Binary(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| EnvelopeError::Malformed(format!("payload_b64: {e}")))?,
            )),
            (None, Some(json)) => Payload::Json(Bytes::copy_from_slice(json.get().as_bytes())),
            (None, None) => Payload::Json(Bytes::from_static(b"{}")),
        };
        let cursor = match (self.epoch, self.offset) {
            (Some(e), Some(o)) if !e.is_empty() && !e.contains(':') => {
                Some(Cursor::new(Arc::from(e), o))
            }
            _ => None,
        };
        let origin = self.origin.and_then(|o| {
            let (node, conn) = o.rsplit_once(':')?;
            (node == node_id).then(|| conn.parse().ok()).flatten()
        });
        Ok((
            Envelope {
                topic,
                event: self.event.into(),
                payload,
                cursor,
                time_ms: self.time.unwrap_or_else(channels::envelope::now_ms),
            },
            origin,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip() {
        let t = TopicKey::new("chat:42", true).unwrap();
        assert_eq!(channel_of(&t), "hub:msg:p:chat:42");
        assert_eq!(topic_of_channel(&channel_of(&t)), Some(t.clone()));
        assert_eq!(keys_of(&t)[0], "hub:{p:chat:42}:seq");
        assert_eq!(topic_of_channel("other"), None);
    }

    #[test]
    fn parses_script_and_plain_envelopes() {
        let text = r#"{"topic":"chat:1","private":false,"event":"token","offset":3,"epoch":"e1","time":5,"origin":"n1:7","payload":{"text":"a"}}"#;
        let (env, origin) = WireEnvelope::parse(text)
            .unwrap()
            .into_envelope("n1")
            .unwrap();
        assert_eq!(env.cursor, Some(Cursor::new("e1".into(), 3)));
        assert_eq!(origin, Some(7));
        assert_eq!(
            env.payload,
            Payload::Json(Bytes::from_static(br#"{"text":"a"}"#))
        );
        let (_, other) = WireEnvelope::parse(text)
            .unwrap()
            .into_envelope("n2")
            .unwrap();
        assert_eq!(other, None);
        let plain = r#"{"topic":"chat:1","event":"token","payload":[1,2]}"#;
        let (env, _) = WireEnvelope::parse(plain)
            .unwrap()
            .into_envelope("n1")
            .unwrap();
        assert_eq!(env.cursor, None);
        let bin = r#"{"topic":"t","event":"b","payload_b64":"AQID"}"#;
        let (env, _) = WireEnvelope::parse(bin)
            .unwrap()
            .into_envelope("n1")
            .unwrap();
        assert_eq!(env.payload, Payload::Binary(Bytes::from_static(&[1, 2, 3])));
        assert!(WireEnvelope::parse("{}").is_err());
        assert!(
            WireEnvelope::parse(r#"{"topic":"","event":"e"}"#)
                .unwrap()
                .into_envelope("n")
                .is_err()
        );
    }
}
