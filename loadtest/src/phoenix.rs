//! The few Phoenix V2 messages a load-test client sends and the replies it waits for
//! (PROTOCOL §1.3, §1.4, §2.2), encoded and decoded with [`channels::codec::v2`].

use channels::codec::{Body, Outbound, Ref, v2};
use serde::Deserialize;

/// The `phx_join` payload realtime-js sends by default (PROTOCOL §2.2): no ack, no self
/// broadcast, no presence, no postgres_changes, public channel.
pub const JOIN_PAYLOAD: &str = r#"{"config":{"broadcast":{"ack":false,"self":false},"presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}}"#;

/// The wire topic of topic number `k`.
pub fn topic_name(prefix: &str, k: usize) -> String {
    format!("realtime:{prefix}-{k}")
}

/// `["<jr>","<jr>","<topic>","phx_join",{…}]`: a join whose `ref` is its `join_ref`.
pub fn join(join_ref: &str, topic: &str) -> Vec<u8> {
    let r = Ref::from_plain(join_ref);
    v2::encode(Outbound {
        join_ref: Some(&r),
        msg_ref: Some(&r),
        topic,
        event: "phx_join",
        payload: JOIN_PAYLOAD,
    })
}

/// `["<jr>","<ref>","<topic>","phx_leave",{}]`.
pub fn leave(join_ref: &str, msg_ref: &str, topic: &str) -> Vec<u8> {
    let jr = Ref::from_plain(join_ref);
    let r = Ref::from_plain(msg_ref);
    v2::encode(Outbound {
        join_ref: Some(&jr),
        msg_ref: Some(&r),
        topic,
        event: "phx_leave",
        payload: "{}",
    })
}

/// A join with presence enabled under `key`, otherwise as [`JOIN_PAYLOAD`].
pub fn join_presence(join_ref: &str, topic: &str, key: &str) -> Vec<u8> {
    let r = Ref::from_plain(join_ref);
    let payload = serde_json::json!({"config": {
        "broadcast": {"ack": false, "self": false},
        "presence": {"key": key, "enabled": true},
        "postgres_changes": [],
        "private": false,
    }})
    .to_string();
    v2::encode(Outbound {
        join_ref: Some(&r),
        msg_ref: Some(&r),
        topic,
        event: "phx_join",
        payload: &payload,
    })
}

/// A presence `track` of `payload` (a JSON object) or, with `None`, an `untrack`.
pub fn presence(join_ref: &str, msg_ref: &str, topic: &str, payload: Option<&str>) -> Vec<u8> {
    let jr = Ref::from_plain(join_ref);
    let r = Ref::from_plain(msg_ref);
    let body = match payload {
        Some(p) => format!(r#"{{"type":"presence","event":"track","payload":{p}}}"#),
        None => r#"{"type":"presence","event":"untrack"}"#.to_owned(),
    };
    v2::encode(Outbound {
        join_ref: Some(&jr),
        msg_ref: Some(&r),
        topic,
        event: "presence",
        payload: &body,
    })
}

/// `[null,"<ref>","phoenix","heartbeat",{}]`.
pub fn heartbeat(msg_ref: u64) -> Vec<u8> {
    let r = Ref::from_plain(&msg_ref.to_string());
    v2::encode(Outbound {
        join_ref: None,
        msg_ref: Some(&r),
        topic: "phoenix",
        event: "heartbeat",
        payload: "{}",
    })
}

/// What a text frame means to a connection waiting for the reply to `msg_ref`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not the awaited reply (another message, or a reply to something else).
    Other,
    /// `phx_reply` with `status: ok`.
    Ok,
    /// `phx_reply` with another status, or the server closed/errored the channel; the text says
    /// why, for the error counts.
    Refused(String),
}

#[derive(Deserialize)]
struct ReplyPayload {
    status: String,
    #[serde(default)]
    response: Option<serde_json::Value>,
}

/// Classifies a V2 text frame against the awaited `msg_ref` on `topic`.
pub fn classify(text: &[u8], msg_ref: &str, topic: &str) -> Reply {
    let Ok(msg) = v2::decode(text) else {
        return Reply::Other;
    };
    let is_ours = msg
        .msg_ref
        .as_ref()
        .is_some_and(|r| r.json() == Ref::from_plain(msg_ref).json());
    match msg.event.as_str() {
        "phx_reply" if is_ours => {
            let Body::Json(raw) = &msg.body else {
                return Reply::Other;
            };
            match serde_json::from_str::<ReplyPayload>(raw.get()) {
                Ok(p) if p.status == "ok" => Reply::Ok,
                Ok(p) => Reply::Refused(reason(&p)),
                Err(_) => Reply::Refused("unparsable reply".into()),
            }
        }
        "phx_error" | "phx_close" if msg.topic == topic => Reply::Refused(msg.event),
        _ => Reply::Other,
    }
}

/// `"error: <reason>"` from a reply's `response.reason`, when present.
fn reason(p: &ReplyPayload) -> String {
    let why = p
        .response
        .as_ref()
        .and_then(|r| r.get("reason"))
        .and_then(|r| r.as_str())
        .unwrap_or("");
    // Keep the error-count keys few: reasons with ids in them would make one key per connection.
    let why: String = why.chars().take(60).collect();
    if why.is_empty() {
        p.status.clone()
    } else {
        format!("{}: {why}", p.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_matches_the_captured_shape() {
        let j = join("6", "realtime:room1");
        assert_eq!(
            std::str::from_utf8(&j).unwrap(),
            r#"["6","6","realtime:room1","phx_join",{"config":{"broadcast":{"ack":false,"self":false},"presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}}]"#
        );
        assert_eq!(
            std::str::from_utf8(&heartbeat(9)).unwrap(),
            r#"[null,"9","phoenix","heartbeat",{}]"#
        );
        assert_eq!(
            std::str::from_utf8(&leave("1", "2", "realtime:r")).unwrap(),
            r#"["1","2","realtime:r","phx_leave",{}]"#
        );
        assert_eq!(
            std::str::from_utf8(&presence("1", "3", "realtime:r", Some(r#"{"t":5}"#))).unwrap(),
            r#"["1","3","realtime:r","presence",{"type":"presence","event":"track","payload":{"t":5}}]"#
        );
        assert_eq!(
            std::str::from_utf8(&presence("1", "4", "realtime:r", None)).unwrap(),
            r#"["1","4","realtime:r","presence",{"type":"presence","event":"untrack"}]"#
        );
        let j = String::from_utf8(join_presence("1", "realtime:r", "k7")).unwrap();
        assert!(
            j.contains(r#""presence":{"enabled":true,"key":"k7"}"#),
            "{j}"
        );
    }

    #[test]
    fn replies_are_classified() {
        let t = "realtime:r";
        let ok = br#"["1","1","realtime:r","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#;
        assert_eq!(classify(ok, "1", t), Reply::Ok);
        assert_eq!(classify(ok, "2", t), Reply::Other);
        let err = br#"["1","1","realtime:r","phx_reply",{"status":"error","response":{"reason":"Unauthorized"}}]"#;
        assert_eq!(
            classify(err, "1", t),
            Reply::Refused("error: Unauthorized".into())
        );
        let closed = br#"["1",null,"realtime:r","phx_close",{}]"#;
        assert_eq!(classify(closed, "1", t), Reply::Refused("phx_close".into()));
        let hb = br#"[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(classify(hb, "5", "phoenix"), Reply::Ok);
        assert_eq!(classify(b"not json", "1", t), Reply::Other);
    }
}
