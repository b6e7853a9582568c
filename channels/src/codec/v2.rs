//! `vsn=2.0.0` text frames: `[join_ref, ref, topic, event, payload]`.

use serde_json::value::RawValue;

use super::{Body, DecodeError, Inbound, Outbound, Ref, push_ref, push_str, shape_or_json};

type Array = (
    Option<Box<RawValue>>,
    Option<Box<RawValue>>,
    String,
    String,
    Box<RawValue>,
);

/// Decodes one V2 text frame.
pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
    let (join_ref, msg_ref, topic, event, payload): Array =
        serde_json::from_slice(text).map_err(|_| {
            shape_or_json(
                text,
                "expected a JSON array [join_ref, ref, topic, event, payload] (vsn=2.0.0)",
            )
        })?;
    Ok(Inbound {
        join_ref: join_ref.as_deref().map(Ref::from_json).transpose()?,
        msg_ref: msg_ref.as_deref().map(Ref::from_json).transpose()?,
        topic,
        event,
        body: Body::Json(payload),
    })
}

/// Encodes one V2 text message.
pub fn encode(msg: Outbound<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.payload.len() + msg.topic.len() + msg.event.len() + 32);
    out.push(b'[');
    push_ref(&mut out, msg.join_ref);
    out.push(b',');
    push_ref(&mut out, msg.msg_ref);
    out.push(b',');
    push_str(&mut out, msg.topic);
    out.push(b',');
    push_str(&mut out, msg.event);
    out.push(b',');
    out.extend_from_slice(msg.payload.as_bytes());
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_captured_frames() {
        let m = decode(
            br#"["6","6","realtime:room1","phx_join",{"config":{"broadcast":{"ack":true}}}]"#,
        )
        .unwrap();
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.join_ref.unwrap().json(), r#""6""#);
        let hb = decode(br#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert!(hb.join_ref.is_none());
        assert_eq!(hb.msg_ref.unwrap().json(), r#""7""#);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        for (input, what) in [
            (&br#"["6","6","t","e"]"#[..], "four elements"),
            (br#"["6","6","t","e",{},1]"#, "six elements"),
            (br#"{"topic":"t","event":"e","payload":{}}"#, "object on v2"),
            (br#"["6","6",1,"e",{}]"#, "numeric topic"),
            (br#"[[],"6","t","e",{}]"#, "array ref"),
            (b"[", "truncated"),
            (b"null", "null"),
        ] {
            assert!(decode(input).is_err(), "{what}");
        }
    }

    #[test]
    fn round_trips() {
        let jr = Ref::from_plain("6");
        let out = encode(Outbound {
            join_ref: Some(&jr),
            msg_ref: None,
            topic: "realtime:x",
            event: "presence_state",
            payload: "{}",
        });
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"["6",null,"realtime:x","presence_state",{}]"#
        );
        let back = decode(&out).unwrap();
        assert_eq!(back.join_ref, Some(jr));
        assert!(back.msg_ref.is_none());
    }
}
