//! Malformed input (PROTOCOL §1.3, §10.2): each bad frame closes only its own connection, cleanly,
//! with a close code (1007 bad data, 1003 unsupported binary, 1009 too big) and a reason; another
//! connection on the same topic keeps receiving broadcasts. Unknown events get an error reply.

use serde_json::json;
use tests::{TestHub, Vsn, WsClient, anon, json_payload};

const TOPIC: &str = "realtime:bad";
const MAX_FRAME: usize = 64 * 1024;

enum Bad {
    Text(String),
    Binary(Vec<u8>),
}

/// A watcher and a publisher on [`TOPIC`]; `check` proves the watcher still gets broadcasts.
struct Bystanders {
    watcher: WsClient,
    publisher: WsClient,
    n: u64,
}

impl Bystanders {
    async fn new(hub: &TestHub) -> Self {
        let mut watcher = WsClient::connect(hub, Vsn::V2, &anon()).await;
        let mut publisher = WsClient::connect(hub, Vsn::V1, &anon()).await;
        watcher.join_ok(TOPIC, json!({})).await;
        publisher.join_ok(TOPIC, json!({})).await;
        Self {
            watcher,
            publisher,
            n: 0,
        }
    }

    async fn check(&mut self, after: &str) {
        self.n += 1;
        self.publisher
            .broadcast_json(TOPIC, "alive", json!({"n": self.n}))
            .await;
        let b = self
            .watcher
            .next_broadcast(&format!("the watcher's broadcast after {after}"))
            .await;
        assert_eq!(b.json(), &json!({"n": self.n}));
    }
}

async fn assert_closes(hub: &TestHub, vsn: Vsn, bad: Bad, what: &str, codes: &[u16]) {
    let mut c = WsClient::connect(hub, vsn, &anon()).await;
    c.join_ok(TOPIC, json!({})).await;
    match bad {
        Bad::Text(t) => c.send_text(t).await,
        Bad::Binary(b) => c.send_binary(b).await,
    }
    let (code, reason) = c.expect_close(&format!("the close after {what}")).await;
    assert!(
        codes.contains(&code),
        "{what}: close code {code} ({reason:?}), expected one of {codes:?}"
    );
    assert!(
        !reason.is_empty(),
        "{what}: the close frame carries a reason"
    );
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let hub = TestHub::spawn_with(|cfg| cfg.max_frame_bytes = MAX_FRAME).await;
    let mut by = Bystanders::new(&hub).await;

    let valid_kind3 = channels::codec::binary::encode_user_broadcast_push(
        "1",
        "2",
        TOPIC,
        "ev",
        &json_payload(&json!({"x": 1})),
    )
    .unwrap();
    // 20,000 levels of nesting in a payload: the decoder's depth limit (128) refuses it
    // instead of recursing through it on every member's decode.
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let cases: Vec<(Vsn, Bad, &str, &[u16])> = vec![
        (
            Vsn::V2,
            Bad::Text("{not json".into()),
            "invalid JSON",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Text(format!(
                r#"["1","2","realtime:bad","broadcast",{{"type":"broadcast","event":"e","payload":{deep}}}]"#
            )),
            "a payload nested 20,000 deep",
            &[1007],
        ),
        (
            Vsn::V1,
            Bad::Text(format!(
                r#"{{"topic":"realtime:bad","event":"broadcast","ref":"2","payload":{{"type":"broadcast","event":"e","payload":{deep}}}}}"#
            )),
            "a V1 payload nested 20,000 deep",
            &[1007],
        ),
        (
            Vsn::V1,
            Bad::Text("[1,2".into()),
            "invalid JSON on V1",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Text(r#"["1","2","realtime:bad","broadcast"]"#.into()),
            "a four-element array",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Text(r#"["1","2",7,"broadcast",{}]"#.into()),
            "a numeric topic",
            &[1007],
        ),
        (
            Vsn::V1,
            Bad::Text(r#"["1","1","realtime:bad","phx_join",{}]"#.into()),
            "a V2 array on a V1 connection",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Text(
                r#"{"topic":"realtime:bad","event":"phx_join","payload":{},"ref":"1"}"#.into(),
            ),
            "a V1 object on a V2 connection",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Binary(valid_kind3[..valid_kind3.len() - 12].to_vec()),
            "a truncated kind-3 frame",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Binary(vec![3, 1, 1]),
            "a kind-3 header cut short",
            &[1007],
        ),
        (
            Vsn::V2,
            Bad::Binary(vec![1, 0, 0, 0, 0, 0]),
            "a binary frame of kind 1",
            &[1003],
        ),
        (
            Vsn::V1,
            Bad::Binary(valid_kind3.clone()),
            "a binary frame on V1",
            &[1003],
        ),
        (
            Vsn::V2,
            Bad::Text(format!(
                r#"["1","2","realtime:bad","broadcast",{{"type":"broadcast","event":"e","payload":"{}"}}]"#,
                "x".repeat(MAX_FRAME + 1)
            )),
            "a frame above max_frame_bytes",
            &[1009],
        ),
    ];
    for (vsn, bad, what, codes) in cases {
        assert_closes(&hub, vsn, bad, what, codes).await;
        by.check(what).await;
    }
    // Nothing else reached the watcher: the bad pushes were not broadcast.
    by.watcher.assert_silent(200, "no stray broadcast").await;
}

#[tokio::test]
async fn unknown_event_gets_an_error_reply_and_the_connection_stays() {
    let hub = TestHub::spawn().await;
    let mut by = Bystanders::new(&hub).await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    c.join_ok(TOPIC, json!({})).await;
    let jr = c.join_ref(TOPIC);
    let r = c.push(TOPIC, "dance", json!({})).await;
    let reply = c.next_json("the reply to an unknown event").await;
    assert_eq!(
        reply,
        json!([jr, r, TOPIC, "phx_reply", {"status": "error", "response": {"reason": "UnknownEvent: dance"}}])
    );
    c.assert_alive("after an unknown event").await;
    by.check("an unknown event").await;
}
