//! Phoenix message codecs for the two protocol versions realtime-js speaks (PROTOCOL §1.3).
//!
//! - [`v1`]: `vsn=1.0.0`, JSON objects `{topic, event, payload, ref}`.
//! - [`v2`]: `vsn=2.0.0`, JSON arrays `[join_ref, ref, topic, event, payload]`.
//! - [`binary`]: the V2 binary broadcast frames, kind 3 in and kind 4 out.
//! - [`sse`]: server-sent events, for readers on `GET /v1/sse/{topic}`.
//!
//! Decoding produces an owned [`Inbound`]; encoding produces [`OutFrame`]s whose bytes can be
//! shared by every member that speaks the same format.

pub mod binary;
pub mod sse;
pub mod v1;
pub mod v2;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::cursor::Cursor;
use crate::envelope::Payload;
use crate::outbox::OutFrame;

/// The protocol version a connection negotiated with `vsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `vsn=1.0.0` (also the default when `vsn` is absent).
    V1,
    /// `vsn=2.0.0`.
    V2,
    /// Server-sent events: read-only, one event per message with its cursor as `id`.
    Sse,
}

impl Format {
    /// Parses the `vsn` query parameter; `None` for unsupported versions.
    pub fn from_vsn(vsn: Option<&str>) -> Option<Self> {
        match vsn {
            None | Some("1.0.0") => Some(Self::V1),
            Some("2.0.0") => Some(Self::V2),
            _ => None,
        }
    }
}

/// A `ref` or `join_ref` value, kept as its JSON text so it is echoed exactly as the client sent it
/// (realtime-js sends decimal strings, but refs are opaque).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ref(Box<str>);

impl Ref {
    /// A ref from a JSON value's text; only strings and numbers are refs.
    pub fn from_json(raw: &RawValue) -> Result<Self, DecodeError> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"' | b'-' | b'0'..=b'9') => Ok(Self(text.into())),
            _ => Err(DecodeError::Shape("refs must be strings, numbers or null")),
        }
    }

    /// A ref from a plain string (binary frames carry refs as raw UTF-8).
    pub fn from_plain(s: &str) -> Self {
        Self(json_string(s).into())
    }

    /// The JSON text of the ref.
    pub fn json(&self) -> &str {
        &self.0
    }
}

/// What a client sent, decoded from either format.
#[derive(Debug)]
pub struct Inbound {
    /// The channel's join ref; `None` for heartbeats.
    pub join_ref: Option<Ref>,
    /// This message's ref; replies echo it.
    pub msg_ref: Option<Ref>,
    /// Wire topic (`realtime:<name>` or `phoenix`).
    pub topic: String,
    /// Event name (`phx_join`, `broadcast`, …).
    pub event: String,
    /// The payload.
    pub body: Body,
}

/// The payload of an inbound message.
#[derive(Debug)]
pub enum Body {
    /// A JSON payload, interpreted by the session according to the event.
    Json(Box<RawValue>),
    /// A broadcast decoded from a binary kind-3 frame.
    UserBroadcast {
        /// The user event (`payload.event`).
        event: String,
        /// The user payload.
        payload: Payload,
    },
}

/// Why an inbound frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but not the shape of a Phoenix message.
    #[error("invalid message: {0}")]
    Shape(&'static str),
    /// A binary frame whose kind is not 3 (the only kind clients send).
    #[error("unsupported binary frame kind {0}; only kind 3 (user broadcast) is accepted")]
    BinaryKind(u8),
    /// A binary frame shorter than its header says.
    #[error("truncated binary frame")]
    Truncated,
    /// A binary frame field that is not UTF-8 or not valid JSON.
    #[error("invalid binary frame: {0}")]
    BinaryField(&'static str),
    /// A binary frame on a V1 connection, which has no binary protocol.
    #[error("binary frames are only accepted with vsn=2.0.0")]
    BinaryOnV1,
    /// JSON nested deeper than [`MAX_JSON_DEPTH`].
    #[error("JSON nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
}

/// Deepest JSON nesting accepted in a client message (the message array or object included).
/// The frame's payload is kept as raw text and only parsed where needed (presence, chat
/// input), and every parser on the way has its own recursion limit; refusing deep documents at
/// the door means none of them, nor any client that receives the broadcast, meets one.
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether `json` nests arrays and objects at most `max` deep (strings, with their escapes, are
/// skipped). One pass over the bytes, no allocation; it does not validate the JSON.
pub fn json_depth_within(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Decodes a text frame.
pub fn decode_text(format: Format, text: &[u8]) -> Result<Inbound, DecodeError> {
    if !json_depth_within(text, MAX_JSON_DEPTH) {
        return Err(DecodeError::TooDeep);
    }
    match format {
        Format::V1 => v1::decode(text),
        Format::V2 => v2::decode(text),
        Format::Sse => Err(DecodeError::Shape("event streams take no messages")),
    }
}

/// Decodes a binary frame.
pub fn decode_binary(format: Format, data: &[u8]) -> Result<Inbound, DecodeError> {
    match format {
        Format::V1 | Format::Sse => Err(DecodeError::BinaryOnV1),
        Format::V2 => binary::decode_user_broadcast_push(data),
    }
}

/// A message to one member: a reply, a push on its channel, or a lifecycle event.
///
/// `ref_` is the message's ref (`None` → `null`), `payload` is JSON text.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The channel's join ref (omitted by V1, as the real server does).
    pub join_ref: Option<&'a Ref>,
    /// The ref this message answers, if any.
    pub msg_ref: Option<&'a Ref>,
    /// Wire topic.
    pub topic: &'a str,
    /// Event name.
    pub event: &'a str,
    /// JSON text of the payload.
    pub payload: &'a str,
}

/// Encodes a message to one member.
pub fn encode(format: Format, msg: Outbound<'_>) -> OutFrame {
    let bytes = match format {
        Format::V1 => v1::encode(msg),
        Format::V2 => v2::encode(msg),
        Format::Sse => {
            let mut out = Vec::with_capacity(msg.payload.len() + msg.event.len() + 24);
            sse::push_event(&mut out, None, msg.event, msg.payload.as_bytes());
            out
        }
    };
    OutFrame::Text(Bytes::from(bytes))
}

/// A `system` message (PROTOCOL §2.7) to one member:
/// `[join_ref, null, topic, "system", {"extension":"system","status","message","channel"}]`.
pub fn system_frame(
    format: Format,
    join_ref: Option<&Ref>,
    topic: &crate::topic::TopicKey,
    status: &str,
    message: &str,
) -> OutFrame {
    let payload = format!(
        r#"{{"extension":"system","status":{},"message":{},"channel":{}}}"#,
        json_string(status),
        json_string(message),
        json_string(topic.name())
    );
    encode(
        format,
        Outbound {
            join_ref,
            msg_ref: None,
            topic: &topic.wire(),
            event: "system",
            payload: &payload,
        },
    )
}

/// `{"status": status, "response": response}` as JSON text.
pub fn reply_payload(status: &str, response: &str) -> String {
    format!(r#"{{"status":"{status}","response":{response}}}"#)
}

/// Encodes a broadcast for every member of one format. Returns `None` when this format cannot
/// carry it (a binary payload to V1 or SSE; the real server does not send those to V1 either).
///
/// The message's cursor travels in `meta.cursor` (WebSocket) or as the event `id` (SSE);
/// `replayed` marks messages delivered from history.
pub fn encode_broadcast(
    format: Format,
    wire_topic: &str,
    event: &str,
    payload: &Payload,
    cursor: Option<&Cursor>,
    replayed: bool,
) -> Option<OutFrame> {
    if format == Format::Sse {
        let Payload::Json(json) = payload else {
            return None;
        };
        let id = cursor.map(ToString::to_string);
        let mut out = Vec::with_capacity(json.len() + event.len() + 48);
        sse::push_event(&mut out, id.as_deref(), event, json);
        return Some(OutFrame::Text(Bytes::from(out)));
    }
    let meta = match (cursor, replayed) {
        (Some(c), false) => format!(r#"{{"cursor":"{c}"}}"#),
        (Some(c), true) => format!(r#"{{"cursor":"{c}","replayed":true}}"#),
        (None, false) => String::new(),
        (None, true) => r#"{"replayed":true}"#.to_owned(),
    };
    let meta = meta.as_str();
    match format {
        Format::V1 | Format::Sse => match payload {
            Payload::Json(json) => Some(OutFrame::Text(Bytes::from(v1::encode(Outbound {
                join_ref: None,
                msg_ref: None,
                topic: wire_topic,
                event: "broadcast",
                payload: &broadcast_object(event, json, meta),
            })))),
            Payload::Binary(_) => None,
        },
        Format::V2 => {
            if let Some(frame) = binary::encode_user_broadcast(wire_topic, event, payload, meta) {
                return Some(OutFrame::Binary(Bytes::from(frame)));
            }
            // Fields too long for the binary header: the JSON array form carries JSON payloads.
            match payload {
                Payload::Json(json) => Some(OutFrame::Text(Bytes::from(v2::encode(Outbound {
                    join_ref: None,
                    msg_ref: None,
                    topic: wire_topic,
                    event: "broadcast",
                    payload: &broadcast_object(event, json, meta),
                })))),
                Payload::Binary(_) => None,
            }
        }
    }
}

/// Encodes a chat `token` event carrying `text` (a delta, or several merged).
pub fn encode_delta(
    format: Format,
    topic: &crate::topic::TopicKey,
    text: &str,
    cursor: Option<&Cursor>,
) -> Option<OutFrame> {
    let payload = Payload::Json(Bytes::from(format!(r#"{{"text":{}}}"#, json_string(text))));
    encode_broadcast(format, &topic.wire(), "token", &payload, cursor, false)
}

/// The broadcast payload object `{"type":"broadcast","event":…,"payload":…,"meta":…}`.
fn broadcast_object(event: &str, json: &[u8], meta: &str) -> String {
    // The payload is validated JSON text (see `Payload::Json`), so it is valid UTF-8.
    let json = std::str::from_utf8(json).unwrap_or("null");
    let mut s = String::with_capacity(json.len() + event.len() + meta.len() + 48);
    s.push_str(r#"{"type":"broadcast","event":"#);
    s.push_str(&json_string(event));
    s.push_str(r#","payload":"#);
    s.push_str(json);
    if !meta.is_empty() {
        s.push_str(r#","meta":"#);
        s.push_str(meta);
    }
    s.push('}');
    s
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// Tells "not JSON" from "JSON of the wrong shape" after a typed parse failed (error path only).
fn shape_or_json(text: &[u8], shape: &'static str) -> DecodeError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
        Ok(_) => DecodeError::Shape(shape),
        // The untyped parser's message names the syntax error itself ("EOF while parsing…"),
        // where the typed one would complain about the expected shape.
        Err(e) => DecodeError::Json(e.to_string()),
    }
}

fn push_ref(out: &mut Vec<u8>, r: Option<&Ref>) {
    match r {
        Some(r) => out.extend_from_slice(r.json().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_selects_the_format() {
        assert_eq!(Format::from_vsn(None), Some(Format::V1));
        assert_eq!(Format::from_vsn(Some("1.0.0")), Some(Format::V1));
        assert_eq!(Format::from_vsn(Some("2.0.0")), Some(Format::V2));
        assert_eq!(Format::from_vsn(Some("3.0.0")), None);
    }

    #[test]
    fn refs_keep_their_json_text() {
        let raw: Box<RawValue> = serde_json::from_str(r#""7""#).unwrap();
        assert_eq!(Ref::from_json(&raw).unwrap().json(), r#""7""#);
        let num: Box<RawValue> = serde_json::from_str("12").unwrap();
        assert_eq!(Ref::from_json(&num).unwrap().json(), "12");
        let obj: Box<RawValue> = serde_json::from_str("{}").unwrap();
        assert!(Ref::from_json(&obj).is_err());
        assert_eq!(Ref::from_plain("a\"b").json(), r#""a\"b""#);
    }

    #[test]
    fn broadcast_reaches_v1_as_json_and_v2_as_kind_4() {
        let payload = Payload::Json(Bytes::from_static(br#"{"x":1}"#));
        let cursor = Cursor::new("e".into(), 1);
        let meta = Some(&cursor);
        let Some(OutFrame::Text(v1)) =
            encode_broadcast(Format::V1, "realtime:r", "cur", &payload, meta, false)
        else {
            panic!("V1 gets a text frame");
        };
        assert_eq!(
            std::str::from_utf8(&v1).unwrap(),
            r#"{"topic":"realtime:r","event":"broadcast","payload":{"type":"broadcast","event":"cur","payload":{"x":1},"meta":{"cursor":"e:1"}},"ref":null}"#
        );
        let Some(OutFrame::Binary(v2)) =
            encode_broadcast(Format::V2, "realtime:r", "cur", &payload, meta, false)
        else {
            panic!("V2 gets a binary frame");
        };
        assert_eq!(v2[0], 4);
        let bin = Payload::Binary(Bytes::from_static(&[1, 2, 3]));
        assert!(encode_broadcast(Format::V1, "realtime:r", "b", &bin, meta, false).is_none());
        assert!(encode_broadcast(Format::Sse, "realtime:r", "b", &bin, meta, false).is_none());
        let Some(OutFrame::Text(sse)) =
            encode_broadcast(Format::Sse, "realtime:r", "cur", &payload, meta, false)
        else {
            panic!("SSE gets a text event");
        };
        assert_eq!(&sse[..], b"id: e:1\nevent: cur\ndata: {\"x\":1}\n\n");
    }

    #[test]
    fn long_event_names_fall_back_to_the_v2_json_form() {
        let payload = Payload::Json(Bytes::from_static(b"{}"));
        let event = "e".repeat(300);
        let Some(OutFrame::Text(t)) =
            encode_broadcast(Format::V2, "realtime:r", &event, &payload, None, false)
        else {
            panic!("text fallback");
        };
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(v[3], "broadcast");
        assert_eq!(v[4]["event"], event.as_str());
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings_only() {
        assert!(json_depth_within(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(!json_depth_within(br#"{"a":[1,{"b":[]}]}"#, 3));
        // Brackets and escaped quotes inside strings do not count.
        assert!(json_depth_within(br#"["[[[[\"{{{{", "]"]"#, 1));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(!json_depth_within(deep.as_bytes(), MAX_JSON_DEPTH));
        assert!(matches!(
            decode_text(Format::V2, deep.as_bytes()),
            Err(DecodeError::TooDeep)
        ));
    }
}
