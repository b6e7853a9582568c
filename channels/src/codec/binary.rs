//! The V2 binary broadcast frames (PROTOCOL §1.3).
//!
//! Kind 3, client → server ("user broadcast push"):
//! `u8 kind=3, u8 join_ref_len, u8 ref_len, u8 topic_len, u8 event_len, u8 meta_len, u8 encoding,
//!  join_ref, ref, topic, event, meta, payload…`
//!
//! Kind 4, server → client ("user broadcast"):
//! `u8 kind=4, u8 topic_len, u8 event_len, u8 meta_len, u8 encoding, topic, event, meta, payload…`
//!
//! Encoding 1 means the payload is JSON text, 0 raw bytes. realtime-js decodes no other binary kind
//! and throws on kinds 0–2, so the server never sends them.

use bytes::Bytes;

use super::{Body, DecodeError, Inbound, Ref};
use crate::envelope::Payload;

const KIND_PUSH: u8 = 3;
const KIND_BROADCAST: u8 = 4;
const PUSH_HEADER: usize = 7;
const BROADCAST_HEADER: usize = 5;

/// Decodes a kind-3 frame into a `broadcast` message.
pub fn decode_user_broadcast_push(data: &[u8]) -> Result<Inbound, DecodeError> {
    let Some(&kind) = data.first() else {
        return Err(DecodeError::Truncated);
    };
    if kind != KIND_PUSH {
        return Err(DecodeError::BinaryKind(kind));
    }
    if data.len() < PUSH_HEADER {
        return Err(DecodeError::Truncated);
    }
    let lens = [data[1], data[2], data[3], data[4], data[5]].map(usize::from);
    let encoding = data[6];
    let body_len: usize = lens.iter().sum();
    if data.len() < PUSH_HEADER + body_len {
        return Err(DecodeError::Truncated);
    }
    let mut pos = PUSH_HEADER;
    let mut field = |len: usize| {
        let f = &data[pos..pos + len];
        pos += len;
        f
    };
    let join_ref = utf8(field(lens[0]), "join_ref")?;
    let msg_ref = utf8(field(lens[1]), "ref")?;
    let topic = utf8(field(lens[2]), "topic")?;
    let event = utf8(field(lens[3]), "event")?;
    // Metadata carries only `persist`, which the hub does not implement yet; it is validated as
    // JSON so garbage is refused, then ignored like the real server does.
    let meta = field(lens[4]);
    if !meta.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(meta).is_err() {
        return Err(DecodeError::BinaryField("metadata is not JSON"));
    }
    let rest = &data[pos..];
    let payload = match encoding {
        0 => Payload::Binary(Bytes::copy_from_slice(rest)),
        1 => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(rest).is_err() {
                return Err(DecodeError::BinaryField("payload is not JSON"));
            }
            Payload::Json(Bytes::copy_from_slice(rest))
        }
        _ => return Err(DecodeError::BinaryField("payload encoding must be 0 or 1")),
    };
    Ok(Inbound {
        join_ref: (!join_ref.is_empty()).then(|| Ref::from_plain(join_ref)),
        msg_ref: (!msg_ref.is_empty()).then(|| Ref::from_plain(msg_ref)),
        topic: topic.to_owned(),
        event: "broadcast".to_owned(),
        body: Body::UserBroadcast {
            event: event.to_owned(),
            payload,
        },
    })
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::BinaryField(what))
}

/// Encodes a kind-4 frame; `None` when a field is longer than its one-byte length allows.
pub fn encode_user_broadcast(
    topic: &str,
    event: &str,
    payload: &Payload,
    meta: &str,
) -> Option<Vec<u8>> {
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(event.len()).ok()?;
    let meta_len = u8::try_from(meta.len()).ok()?;
    let (encoding, body) = match payload {
        Payload::Json(b) => (1u8, b),
        Payload::Binary(b) => (0u8, b),
    };
    let mut out =
        Vec::with_capacity(BROADCAST_HEADER + topic.len() + event.len() + meta.len() + body.len());
    out.extend_from_slice(&[KIND_BROADCAST, topic_len, event_len, meta_len, encoding]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Builds a kind-3 frame, as realtime-js does; used by `loadtest` and the tests.
pub fn encode_user_broadcast_push(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Option<Vec<u8>> {
    let lens = [
        u8::try_from(join_ref.len()).ok()?,
        u8::try_from(msg_ref.len()).ok()?,
        u8::try_from(topic.len()).ok()?,
        u8::try_from(event.len()).ok()?,
        0,
    ];
    let (encoding, body) = match payload {
        Payload::Json(b) => (1u8, b),
        Payload::Binary(b) => (0u8, b),
    };
    let mut out = Vec::with_capacity(PUSH_HEADER + 64 + body.len());
    out.push(KIND_PUSH);
    out.extend_from_slice(&lens);
    out.push(encoding);
    for f in [join_ref, msg_ref, topic, event] {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(body);
    Some(out)
}

/// A decoded kind-4 frame (client side; `loadtest` and tests read broadcasts with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBroadcast<'a> {
    /// Wire topic.
    pub topic: &'a str,
    /// User event.
    pub event: &'a str,
    /// Metadata JSON text (empty when absent).
    pub meta: &'a str,
    /// Whether the payload is JSON (encoding 1).
    pub json: bool,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Decodes a kind-4 frame.
pub fn decode_user_broadcast(data: &[u8]) -> Result<UserBroadcast<'_>, DecodeError> {
    if data.len() < BROADCAST_HEADER {
        return Err(DecodeError::Truncated);
    }
    if data[0] != KIND_BROADCAST {
        return Err(DecodeError::BinaryKind(data[0]));
    }
    let (t, e, m) = (
        usize::from(data[1]),
        usize::from(data[2]),
        usize::from(data[3]),
    );
    let json = data[4] == 1;
    let end = BROADCAST_HEADER + t + e + m;
    if data.len() < end {
        return Err(DecodeError::Truncated);
    }
    let s = BROADCAST_HEADER;
    Ok(UserBroadcast {
        topic: utf8(&data[s..s + t], "topic")?,
        event: utf8(&data[s + t..s + t + e], "event")?,
        meta: utf8(&data[s + t + e..end], "metadata")?,
        json,
        payload: &data[end..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame realtime-js 2.119 produced for `send({type:'broadcast', event:'cursor',
    /// payload:{x:1,y:2}})` on join ref 6, ref 7 (PROTOCOL §1.3).
    const CAPTURED: &str =
        "0301010e06000136377265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a327d";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_the_captured_kind_3_frame() {
        let m = decode_user_broadcast_push(&hex(CAPTURED)).unwrap();
        assert_eq!(m.topic, "realtime:room1");
        assert_eq!(m.join_ref.unwrap().json(), r#""6""#);
        assert_eq!(m.msg_ref.unwrap().json(), r#""7""#);
        let Body::UserBroadcast { event, payload } = m.body else {
            panic!()
        };
        assert_eq!(event, "cursor");
        assert_eq!(
            payload,
            Payload::Json(Bytes::from_static(br#"{"x":1,"y":2}"#))
        );
    }

    #[test]
    fn decodes_the_captured_binary_payload_frame() {
        let m = decode_user_broadcast_push(&hex(
            "0301010e03000036387265616c74696d653a726f6f6d3162696e010203",
        ))
        .unwrap();
        let Body::UserBroadcast { event, payload } = m.body else {
            panic!()
        };
        assert_eq!(event, "bin");
        assert_eq!(payload, Payload::Binary(Bytes::from_static(&[1, 2, 3])));
    }

    #[test]
    fn every_truncation_of_a_kind_3_frame_is_an_error() {
        let full = hex(CAPTURED);
        // Cutting into the header or the named fields is "truncated"; cutting only the payload
        // leaves invalid JSON. Neither may panic or succeed.
        for cut in 0..full.len() {
            assert!(
                decode_user_broadcast_push(&full[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn other_kinds_and_bad_fields_are_refused() {
        let mut f = hex(CAPTURED);
        f[0] = 1;
        assert_eq!(
            decode_user_broadcast_push(&f).unwrap_err(),
            DecodeError::BinaryKind(1)
        );
        let mut f = hex(CAPTURED);
        f[6] = 7;
        assert!(decode_user_broadcast_push(&f).is_err());
        let mut f = hex(CAPTURED);
        f[9] = 0xff; // inside the topic
        assert_eq!(
            decode_user_broadcast_push(&f).unwrap_err(),
            DecodeError::BinaryField("topic")
        );
    }

    #[test]
    fn kind_4_matches_the_captured_layout_and_round_trips() {
        let payload = Payload::Json(Bytes::from_static(br#"{"x":10}"#));
        let out =
            encode_user_broadcast("realtime:room2", "cursor", &payload, r#"{"id":"abc"}"#).unwrap();
        assert_eq!(&out[..5], &[4, 14, 6, 12, 1]);
        let back = decode_user_broadcast(&out).unwrap();
        assert_eq!(back.topic, "realtime:room2");
        assert_eq!(back.event, "cursor");
        assert_eq!(back.meta, r#"{"id":"abc"}"#);
        assert!(back.json);
        assert_eq!(back.payload, br#"{"x":10}"#);
        assert!(encode_user_broadcast(&"t".repeat(256), "e", &payload, "").is_none());
    }

    #[test]
    fn kind_3_encoder_matches_the_client() {
        let payload = Payload::Json(Bytes::from_static(br#"{"x":1,"y":2}"#));
        let out =
            encode_user_broadcast_push("6", "7", "realtime:room1", "cursor", &payload).unwrap();
        assert_eq!(out, hex(CAPTURED));
    }
}
