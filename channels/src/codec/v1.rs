//! `vsn=1.0.0`: each message is a JSON object in a text frame.
//!
//! Inbound `{"topic","event","payload","ref","join_ref"}`; outbound
//! `{"topic","event","payload","ref"}` without `join_ref`, as the real server's V1 serializer
//! writes it (PROTOCOL §1.3): realtime-js drops messages whose `join_ref` is not the channel's
//! current one, so omitting it is the safe choice.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Body, DecodeError, Inbound, Outbound, Ref, push_ref, push_str, shape_or_json};

#[derive(Deserialize)]
struct Message {
    topic: String,
    event: String,
    payload: Option<Box<RawValue>>,
    #[serde(rename = "ref")]
    msg_ref: Option<Box<RawValue>>,
    join_ref: Option<Box<RawValue>>,
}

/// Decodes one V1 text frame.
pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
    // serde would also fill a struct from an array positionally; V1 messages are objects only.
    if text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(DecodeError::Shape(
            "expected a JSON object {topic, event, payload, ref} (vsn=1.0.0), got an array",
        ));
    }
    let m: Message = serde_json::from_slice(text).map_err(|_| {
        shape_or_json(
            text,
            "expected a JSON object {topic, event, payload, ref} with string topic and event (vsn=1.0.0)",
        )
    })?;
    let payload = match m.payload {
        Some(p) => p,
        None => RawValue::from_string("{}".into()).map_err(|e| DecodeError::Json(e.to_string()))?,
    };
    Ok(Inbound {
        join_ref: m.join_ref.as_deref().map(Ref::from_json).transpose()?,
        msg_ref: m.msg_ref.as_deref().map(Ref::from_json).transpose()?,
        topic: m.topic,
        event: m.event,
        body: Body::Json(payload),
    })
}

/// Encodes one V1 message.
pub fn encode(msg: Outbound<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.payload.len() + msg.topic.len() + msg.event.len() + 48);
    out.extend_from_slice(br#"{"topic":"#);
    push_str(&mut out, msg.topic);
    out.extend_from_slice(br#","event":"#);
    push_str(&mut out, msg.event);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(msg.payload.as_bytes());
    out.extend_from_slice(br#","ref":"#);
    push_ref(&mut out, msg.msg_ref);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_captured_join() {
        let m = decode(
            br#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#,
        )
        .unwrap();
        assert_eq!(m.topic, "realtime:room1");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.msg_ref.unwrap().json(), r#""6""#);
        assert_eq!(m.join_ref.unwrap().json(), r#""6""#);
        let Body::Json(p) = m.body else { panic!() };
        assert_eq!(p.get(), r#"{"config":{}}"#);
    }

    #[test]
    fn heartbeat_without_join_ref_decodes() {
        let m =
            decode(br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}"#).unwrap();
        assert!(m.join_ref.is_none());
    }

    #[test]
    fn malformed_messages_are_errors() {
        for (input, what) in [
            (&b"{not json"[..], "json"),
            (br#"["1","2","t","e",{}]"#, "array on v1"),
            (br#"{"topic":1,"event":"e"}"#, "numeric topic"),
            (br#"{"event":"e","payload":{}}"#, "missing topic"),
            (br#"{"topic":"t","event":"e","ref":{}}"#, "object ref"),
            (b"", "empty"),
        ] {
            assert!(decode(input).is_err(), "{what}");
        }
    }

    #[test]
    fn encodes_without_join_ref() {
        let r = Ref::from_plain("6");
        let out = encode(Outbound {
            join_ref: Some(&r),
            msg_ref: Some(&r),
            topic: "realtime:room1",
            event: "phx_reply",
            payload: r#"{"status":"ok","response":{}}"#,
        });
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"6"}"#
        );
    }
}
