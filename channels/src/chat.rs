//! Chat streams (`chat:<streamId>`, DESIGN §3): an LLM's answer as `token` deltas, then `done` or
//! `error`.
//!
//! - A reader that joins without a cursor (or whose cursor is no longer in history) gets one
//!   `snapshot` event with the text so far and its cursor, then the live tail: it never has to
//!   replay thousands of deltas.
//! - A slow reader's queued deltas merge into one (`OutFrame::Delta`), so its text stays exact
//!   and its queue bounded.
//! - On `done` the hub adds the full text to the event and the stream compacts to that one
//!   history entry, which stays readable for the history's lifetime.
//!
//! Pure functions over envelopes; the registry, the catch-up and the broker router call them.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::cursor::Cursor;
use crate::envelope::{Envelope, Payload};
use crate::topic::TopicKey;

/// The topic kind of chat streams.
pub const KIND: &str = "chat";

/// Whether `topic` is a chat stream.
pub fn is_chat(topic: &TopicKey) -> bool {
    topic.kind() == Some(KIND)
}

/// The text of a mergeable token delta: a `token` event on a chat topic whose payload is exactly
/// `{"text": "<string>"}` (anything else is delivered as it is, never merged).
pub fn token_text(env: &Envelope) -> Option<String> {
    if &*env.event != "token" || !is_chat(&env.topic) {
        return None;
    }
    let Payload::Json(json) = &env.payload else {
        return None;
    };
    /// Exactly `{"text": "<string>"}`: any other field, or a repeated `text`, is an error, so
    /// such a payload is delivered as it is. Parsed borrowed (no map, no key strings) because
    /// this runs on every token published.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Token<'a> {
        #[serde(borrow)]
        text: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Token<'_>>(json)
        .ok()
        .map(|t| t.text.into_owned())
}

/// What a chat stream amounts to so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The text of every token so far (or the compacted full text).
    pub text: String,
    /// `done` was published.
    pub done: bool,
    /// The `done` payload's `usage`, when given.
    pub usage: Option<Value>,
    /// The `error` payload, when the stream failed.
    pub error: Option<Value>,
    /// Cursor of the last message folded in.
    pub cursor: Option<Cursor>,
}

impl Snapshot {
    /// Folds one message of the stream in (in offset order).
    pub fn apply(&mut self, env: &Envelope) {
        if env.cursor.is_some() {
            self.cursor.clone_from(&env.cursor);
        }
        let payload: Option<Map<String, Value>> = match &env.payload {
            Payload::Json(json) => match serde_json::from_slice(json) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
            Payload::Binary(_) => None,
        };
        match &*env.event {
            "token" => {
                if let Some(Value::String(t)) = payload.as_ref().and_then(|p| p.get("text")) {
                    self.text.push_str(t);
                }
            }
            "done" => {
                self.done = true;
                if let Some(p) = payload {
                    // A compacted `done` carries the whole text.
                    if let Some(Value::String(t)) = p.get("text") {
                        self.text.clone_from(t);
                    }
                    self.usage = p.get("usage").cloned();
                }
            }
            "error" => self.error = Some(payload.map_or(Value::Null, Value::Object)),
            _ => {}
        }
    }

    /// Whether anything was folded in.
    pub fn is_empty(&self) -> bool {
        self.cursor.is_none() && self.text.is_empty()
    }

    /// The `snapshot` event for `topic`, carrying the text so far and the cursor it reflects.
    pub fn envelope(&self, topic: &TopicKey) -> Arc<Envelope> {
        let mut payload = Map::new();
        payload.insert("text".into(), Value::String(self.text.clone()));
        payload.insert("done".into(), Value::Bool(self.done));
        if let Some(u) = &self.usage {
            payload.insert("usage".into(), u.clone());
        }
        if let Some(e) = &self.error {
            payload.insert("error".into(), e.clone());
        }
        if let Some(c) = &self.cursor {
            payload.insert("cursor".into(), Value::String(c.to_string()));
        }
        Arc::new(Envelope {
            topic: topic.clone(),
            event: "snapshot".into(),
            payload: Payload::Json(Bytes::from(Value::Object(payload).to_string())),
            cursor: self.cursor.clone(),
            time_ms: crate::envelope::now_ms(),
        })
    }
}

/// Whether a stored message compacts its stream: a chat `done` that carries the full text (the
/// broker router adds it, see [`completed_done`]).
pub fn compacts(env: &Envelope) -> bool {
    if &*env.event != "done" || !is_chat(&env.topic) {
        return false;
    }
    let Payload::Json(json) = &env.payload else {
        return false;
    };
    matches!(serde_json::from_slice::<Value>(json), Ok(Value::Object(m)) if m.get("text").is_some_and(Value::is_string))
}

/// The text of a chat stream so far, read from `broker`'s history.
pub async fn text_so_far(
    broker: &dyn crate::broker::Broker,
    topic: &TopicKey,
) -> Result<String, crate::broker::BrokerError> {
    Ok(snapshot_of(broker, topic).await?.text)
}

/// The whole retained stream folded into one snapshot, read page by page from `broker`.
pub async fn snapshot_of(
    broker: &dyn crate::broker::Broker,
    topic: &TopicKey,
) -> Result<Snapshot, crate::broker::BrokerError> {
    let mut snap = Snapshot::default();
    let mut after = crate::cursor::Since::Beginning;
    loop {
        let page = broker.read(topic, &after, 1024).await?;
        let n = page.messages.len();
        for env in &page.messages {
            snap.apply(env);
        }
        match page.messages.last().and_then(|e| e.cursor.clone()) {
            Some(c) if n == 1024 => after = crate::cursor::Since::After(c),
            _ => return Ok(snap),
        }
    }
}

/// A user's `input` payload with the sender added (`"user": <sub>`), or `None` when it is not a
/// JSON object.
pub fn input_payload(payload: &Payload, user: &str) -> Option<Payload> {
    let Payload::Json(json) = payload else {
        return None;
    };
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(json) else {
        return None;
    };
    map.insert("user".into(), Value::String(user.to_owned()));
    Some(Payload::Json(Bytes::from(Value::Object(map).to_string())))
}

/// The `done` payload with the stream's full text added (what the stream compacts to).
pub fn completed_done(payload: &Payload, text: &str) -> Payload {
    let mut map = match payload {
        Payload::Json(json) => match serde_json::from_slice(json) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        Payload::Binary(_) => Map::new(),
    };
    map.insert("text".into(), Value::String(text.to_owned()));
    Payload::Json(Bytes::from(Value::Object(map).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(event: &str, payload: &str, offset: u64) -> Envelope {
        Envelope {
            topic: TopicKey::new("chat:1", false).unwrap(),
            event: event.into(),
            payload: Payload::Json(Bytes::copy_from_slice(payload.as_bytes())),
            cursor: Some(Cursor::new("e".into(), offset)),
            time_ms: 0,
        }
    }

    #[test]
    fn only_plain_token_deltas_on_chat_topics_merge() {
        assert_eq!(
            token_text(&env("token", r#"{"text":"a"}"#, 1)).as_deref(),
            Some("a")
        );
        assert_eq!(token_text(&env("token", r#"{"text":"a","i":1}"#, 1)), None);
        assert_eq!(token_text(&env("done", r#"{"text":"a"}"#, 1)), None);
        // Escapes are decoded; a non-string, repeated or missing text is not a delta.
        assert_eq!(
            token_text(&env("token", r#"{"text":"a\"\n\u00e9"}"#, 1)).as_deref(),
            Some("a\"\n\u{e9}")
        );
        assert_eq!(token_text(&env("token", r#"{"text":1}"#, 1)), None);
        assert_eq!(
            token_text(&env("token", r#"{"text":"a","text":"b"}"#, 1)),
            None
        );
        assert_eq!(token_text(&env("token", r#"{}"#, 1)), None);
        let mut room = env("token", r#"{"text":"a"}"#, 1);
        room.topic = TopicKey::new("room:1", false).unwrap();
        assert_eq!(token_text(&room), None);
    }

    #[test]
    fn snapshot_folds_tokens_done_and_compacted_text() {
        let mut s = Snapshot::default();
        s.apply(&env("token", r#"{"text":"Hel"}"#, 1));
        s.apply(&env("token", r#"{"text":"lo"}"#, 2));
        assert_eq!(s.text, "Hello");
        s.apply(&env("done", r#"{"usage":{"tokens":2}}"#, 3));
        assert!(s.done);
        assert_eq!(s.cursor, Some(Cursor::new("e".into(), 3)));
        let e = s.envelope(&TopicKey::new("chat:1", false).unwrap());
        assert_eq!(&*e.event, "snapshot");
        let Payload::Json(j) = &e.payload else {
            panic!()
        };
        let v: Value = serde_json::from_slice(j).unwrap();
        assert_eq!(v["text"], "Hello");
        assert_eq!(v["usage"]["tokens"], 2);
        assert_eq!(v["cursor"], "e:3");
        // A compacted stream: one done with the text.
        let mut c = Snapshot::default();
        c.apply(&env("done", r#"{"text":"Hello"}"#, 3));
        assert_eq!(c.text, "Hello");
        let Payload::Json(j) =
            completed_done(&Payload::Json(Bytes::from_static(br#"{"usage":1}"#)), "Hi")
        else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v, serde_json::json!({"usage": 1, "text": "Hi"}));
    }
}
