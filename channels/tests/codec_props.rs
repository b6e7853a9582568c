//! Property tests: every encoder's output decodes back to what was encoded, for generated
//! topics, events, refs and payloads (including multi-byte UTF-8, quotes, control characters and
//! multi-line JSON). The fuzz targets in `fuzz/` prove the decoders never panic on garbage; these
//! prove that the well-formed path loses nothing.
//!
//! Case counts: proptest's default is 256 per property; `PROPTEST_CASES` raises it.

use bytes::Bytes;
use channels::codec::{self, Body, Format, Outbound, Ref, binary, sse};
use channels::ws_frame::{self, Assembler, Message, Opcode, Role};
use channels::{Cursor, Payload, Since};
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinities", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string of at most `max` bytes (binary frames carry one-byte lengths).
fn short_string(max: usize) -> impl Strategy<Value = String> {
    any::<String>().prop_map(move |s| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

/// Refs as realtime-js sends them (decimal strings) and as other clients might (any string).
fn plain_ref() -> impl Strategy<Value = Ref> {
    prop_oneof![
        any::<u32>().prop_map(|n| Ref::from_plain(&n.to_string())),
        short_string(40).prop_map(|s| Ref::from_plain(&s)),
    ]
}

/// Phoenix payloads are objects (a V1 `"payload": null` is read as `{}`).
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(any::<String>(), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// The payload's JSON text exactly as it was on the wire.
fn payload_text(body: &Body) -> &str {
    match body {
        Body::Json(raw) => raw.get(),
        Body::UserBroadcast { .. } => panic!("a text frame decoded as a binary broadcast"),
    }
}

proptest! {
    /// V1 and V2 text frames: what the hub encodes, a client-side decoder (the same parser the hub
    /// uses for pushes) reads back with the same refs, topic, event and payload.
    #[test]
    fn text_frames_round_trip(
        v2 in any::<bool>(),
        join_ref in proptest::option::of(plain_ref()),
        msg_ref in proptest::option::of(plain_ref()),
        topic in any::<String>(),
        event in any::<String>(),
        payload in json_object(),
        pretty in any::<bool>(),
    ) {
        let format = if v2 { Format::V2 } else { Format::V1 };
        let text = if pretty {
            serde_json::to_string_pretty(&payload).unwrap()
        } else {
            payload.to_string()
        };
        let frame = codec::encode(format, Outbound {
            join_ref: join_ref.as_ref(),
            msg_ref: msg_ref.as_ref(),
            topic: &topic,
            event: &event,
            payload: &text,
        });
        let channels::OutFrame::Text(bytes) = frame else {
            panic!("text encoders produce text frames");
        };
        let m = codec::decode_text(format, &bytes).unwrap();
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(&m.event, &event);
        prop_assert_eq!(m.msg_ref.as_ref().map(Ref::json), msg_ref.as_ref().map(Ref::json));
        if v2 {
            // V1 omits the join ref on server messages, as the real server does.
            prop_assert_eq!(m.join_ref.as_ref().map(Ref::json), join_ref.as_ref().map(Ref::json));
        }
        // Byte for byte: the payload is carried as text, never re-serialised.
        prop_assert_eq!(payload_text(&m.body), text.as_str());
    }

    /// V2 kind-3 pushes (client → hub) decode to the refs, topic, event and payload encoded.
    #[test]
    fn binary_pushes_round_trip(
        join_ref in short_string(255),
        msg_ref in short_string(255),
        topic in short_string(255),
        event in short_string(255),
        json in any::<bool>(),
        value in json_value(),
        raw in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let payload = if json {
            Payload::Json(Bytes::from(value.to_string()))
        } else {
            Payload::Binary(Bytes::from(raw))
        };
        let frame =
            binary::encode_user_broadcast_push(&join_ref, &msg_ref, &topic, &event, &payload)
                .unwrap();
        let m = codec::decode_binary(Format::V2, &frame).unwrap();
        prop_assert_eq!(&m.topic, &topic);
        // Empty refs mean "absent" in the binary layout.
        let want = |s: &str| (!s.is_empty()).then(|| Ref::from_plain(s));
        prop_assert_eq!(m.join_ref, want(&join_ref));
        prop_assert_eq!(m.msg_ref, want(&msg_ref));
        let Body::UserBroadcast { event: got_event, payload: got } = m.body else {
            panic!("a kind-3 frame decoded as JSON");
        };
        prop_assert_eq!(got_event, event);
        prop_assert_eq!(got, payload);
    }

    /// V2 kind-4 broadcasts (hub → client) decode to what was encoded; fields too long for the
    /// one-byte lengths are refused, never truncated.
    #[test]
    fn binary_broadcasts_round_trip(
        topic in short_string(300),
        event in short_string(300),
        meta in short_string(300),
        raw in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let payload = Payload::Binary(Bytes::from(raw.clone()));
        let encoded = binary::encode_user_broadcast(&topic, &event, &payload, &meta);
        if topic.len() > 255 || event.len() > 255 || meta.len() > 255 {
            prop_assert!(encoded.is_none());
            return Ok(());
        }
        let frame = encoded.unwrap();
        let b = binary::decode_user_broadcast(&frame).unwrap();
        prop_assert_eq!(b.topic, topic.as_str());
        prop_assert_eq!(b.event, event.as_str());
        prop_assert_eq!(b.meta, meta.as_str());
        prop_assert!(!b.json);
        prop_assert_eq!(b.payload, raw.as_slice());
    }

    /// SSE events: an `EventSource`-conformant reader (WHATWG field rules) gets back the cursor as
    /// the event id, the event name and exactly the JSON text as `data`, multi-line or not.
    #[test]
    fn sse_events_round_trip(
        epoch in "[A-Za-z0-9_-]{1,64}",
        offset in any::<u64>(),
        event in "[a-z_]{1,32}",
        payload in json_value(),
        pretty in any::<bool>(),
    ) {
        let text = if pretty {
            serde_json::to_string_pretty(&payload).unwrap()
        } else {
            payload.to_string()
        };
        let cursor = Cursor::new(epoch.as_str().into(), offset);
        let id = cursor.to_string();
        let mut out = Vec::new();
        sse::push_event(&mut out, Some(&id), &event, text.as_bytes());
        let got = read_sse_event(std::str::from_utf8(&out).unwrap());
        prop_assert_eq!(got.id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(got.event.as_str(), event.as_str());
        // JSON text has line breaks only between tokens, so the joined `data` is the text itself.
        prop_assert_eq!(&got.data, &text);
        // The id a reconnecting EventSource sends back as Last-Event-ID resumes at this cursor.
        prop_assert_eq!(Since::parse(&got.id.unwrap()), Ok(Since::After(cursor)));
    }

    /// WebSocket frames written by a client (masked), cut into any fragments, reassemble on the
    /// server side into exactly the message sent.
    #[test]
    fn ws_messages_round_trip_through_fragments(
        text in any::<bool>(),
        s in any::<String>(),
        raw in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        mask in any::<[u8; 4]>(),
    ) {
        let (opcode, body) = if text {
            (Opcode::Text, s.into_bytes())
        } else {
            (Opcode::Binary, raw)
        };
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.extend([0, body.len()]);
        points.sort_unstable();
        points.dedup();
        let pieces: Vec<&[u8]> = if points.len() < 2 {
            vec![&body[..]]
        } else {
            points.windows(2).map(|w| &body[w[0]..w[1]]).collect()
        };
        let mut wire = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let start = wire.len();
            let op = if i == 0 { opcode } else { Opcode::Continuation };
            ws_frame::write_frame(&mut wire, op, piece, Some(mask));
            if i + 1 < pieces.len() {
                wire[start] &= 0x7f; // not the final fragment
            }
        }
        let max = body.len().max(1);
        let mut asm = Assembler::default();
        let mut pos = 0;
        let mut got = None;
        while pos < wire.len() {
            let (frame, used) = ws_frame::parse_frame(&mut wire[pos..], Role::Server, max)
                .unwrap()
                .expect("a whole frame is buffered");
            pos += used;
            if let Some(m) = asm.push(frame, max).unwrap() {
                got = Some(match m {
                    Message::Text(t) => (Opcode::Text, t.to_vec()),
                    Message::Binary(b) => (Opcode::Binary, b.to_vec()),
                    _ => panic!("a data message came back as a control message"),
                });
            }
        }
        prop_assert_eq!(pos, wire.len());
        let (got_op, got_body) = got.expect("the message completed");
        prop_assert_eq!(got_op, opcode);
        prop_assert_eq!(got_body, body);
    }
}

/// One SSE event as an `EventSource` sees it.
#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: String,
}

/// Reads the first event of `stream` by the WHATWG rules: split on line ends, `field: value` with
/// one optional space after the colon removed, `data` lines joined with `\n`.
fn read_sse_event(stream: &str) -> SseEvent {
    let (mut id, mut event, mut data) = (None, String::from("message"), Vec::new());
    for line in stream.split('\n') {
        if line.is_empty() {
            break;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    SseEvent {
        id,
        event,
        data: data.join("\n"),
    }
}
