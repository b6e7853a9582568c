//! Backend services publishing straight into Redis, as README documents: the shipped
//! `store/src/redis/publish.lua` (from a Redis client and from `redis-cli --eval`) reaches the
//! WebSocket members on every node with `meta.cursor` = the script's `<epoch>:<offset>`, in one
//! numbering with the clients' own broadcasts, and is kept for resume; a plain `PUBLISH` of an
//! envelope without offset fans out to every node without a cursor and without history.
//!
//! Needs Redis and the hub binary: run with `scripts/test`. Uses Redis database 4.

use serde_json::{Value, json};
use tests::nodes::start_nodes;
use tests::redis_backend::{
    TestRedis, epoch_candidate, publish_script, publish_script_path, publish_via_script,
};
use tests::{Bcast, Vsn, WsClient, anon, json_payload};

const DB: u32 = 4;

/// The members' view of one message: (event, payload, cursor).
fn seen(b: &Bcast) -> (String, Value, String) {
    (b.event.clone(), b.json().clone(), b.cursor())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publishing_through_the_shipped_script_reaches_members_on_every_node() {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, &[]).await;
    let name = "script:42";
    let topic = format!("realtime:{name}");

    let mut on_a = nodes[0].ws(Vsn::V2, &anon()).await;
    let mut on_b = nodes[1].ws(Vsn::V1, &anon()).await;
    on_a.join_ok(&topic, json!({})).await;
    on_b.join_ok(&topic, json!({})).await;

    // The script from a Redis client, as the README's Node example calls it.
    let script = publish_script();
    let mut conn = redis.conn().await;
    let mut published = Vec::new();
    for k in 1..=3 {
        let payload = json!({"text": format!("token {k}"), "k": k});
        let (offset, epoch) = publish_via_script(&script, &mut conn, name, "token", &payload)
            .await
            .unwrap_or_else(|e| panic!("running publish.lua for message {k}: {e}"));
        assert_eq!(
            offset, k,
            "the script numbers the topic's messages 1, 2, 3…"
        );
        published.push(("token".to_owned(), payload, format!("{epoch}:{offset}")));
    }
    let epoch = published[0]
        .2
        .rsplit_once(':')
        .expect("cursor")
        .0
        .to_owned();

    // A client's broadcast on C continues the same numbering.
    let mut client = nodes[2].ws(Vsn::V2, &anon()).await;
    client
        .join_ok(&topic, json!({"broadcast": {"ack": true}}))
        .await;
    let r = client
        .send_broadcast(&topic, "from-client", &json_payload(&json!({"k": 4})))
        .await;
    client.expect_reply(&topic, &r, "the client's ack").await;
    published.push((
        "from-client".to_owned(),
        json!({"k": 4}),
        format!("{epoch}:4"),
    ));

    // The README's redis-cli line, word for word but for the topic and the database.
    match std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            let tid = format!("t:{name}");
            let out = std::process::Command::new("redis-cli")
                .args(["-u", &redis.url, "--eval"])
                .arg(publish_script_path())
                .args([
                    format!("hub:{{{tid}}}:seq"),
                    format!("hub:{{{tid}}}:epoch"),
                    format!("hub:{{{tid}}}:hist"),
                ])
                .arg(",")
                .args([&format!("hub:msg:{tid}"), name, "0", "token"])
                .args([
                    r#"{"text":"Hel"}"#,
                    "",
                    "",
                    &epoch_candidate(),
                    "1000",
                    "86400",
                ])
                .output()
                .expect("run redis-cli --eval");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "redis-cli --eval failed: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                lines,
                ["5", epoch.as_str()],
                "redis-cli prints the script's {{offset, epoch}}"
            );
            published.push((
                "token".to_owned(),
                json!({"text": "Hel"}),
                format!("{epoch}:5"),
            ));
        }
        Err(e) => eprintln!("SKIP: the redis-cli --eval part (redis-cli not runnable: {e})"),
    }

    for (who, m) in [("A (V2)", &mut on_a), ("B (V1)", &mut on_b)] {
        let n = published.len() as u64;
        let got = m
            .expect_offsets(&topic, 1..=n, &format!("member on {who}"), tests::WAIT)
            .await;
        let got: Vec<_> = got.iter().map(seen).collect();
        assert_eq!(got, published, "{who}: events, payloads and cursors");
    }
    if published.len() == 5 {
        let b = client
            .expect_broadcast(&topic, "the redis-cli message at the client on C")
            .await;
        assert_eq!(
            seen(&b),
            published[4],
            "C: after its own (skipped) message 4"
        );
    }

    // History: a joiner on C resuming from "0" gets the backend's messages too, replayed.
    let mut late = nodes[2].ws(Vsn::V1, &anon()).await;
    late.join_ok(&topic, json!({"broadcast": {"resume": {"since": "0"}}}))
        .await;
    let n = published.len() as u64;
    let replayed = late
        .expect_offsets(&topic, 1..=n, "the history, replayed on C", tests::WAIT)
        .await;
    assert!(replayed.iter().all(Bcast::replayed));
    assert_eq!(replayed.iter().map(seen).collect::<Vec<_>>(), published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_publish_without_offset_fans_out_to_every_node_without_history() {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B"], &redis.url, &[]).await;
    let name = "plain:7";
    let topic = format!("realtime:{name}");
    let mut on_a = nodes[0].ws(Vsn::V1, &anon()).await;
    let mut on_b = nodes[1].ws(Vsn::V2, &anon()).await;
    on_a.join_ok(&topic, json!({})).await;
    on_b.join_ok(&topic, json!({})).await;
    let script = publish_script();
    let mut conn = redis.conn().await;
    let channel = format!("hub:msg:t:{name}");

    // A scripted message, a plain PUBLISH, another scripted message.
    let (_, epoch) = publish_via_script(&script, &mut conn, name, "numbered", &json!({"i": 1}))
        .await
        .expect("publish.lua");
    let envelope = json!({"topic": name, "event": "plain", "payload": {"text": "Hel"}});
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(envelope.to_string())
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(
        receivers, 2,
        "each node's one pub/sub connection follows the topic"
    );
    // An envelope naming another topic is not delivered to this one's members.
    let stray = json!({"topic": "elsewhere", "event": "stray", "payload": {}});
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(stray.to_string())
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    publish_via_script(&script, &mut conn, name, "numbered", &json!({"i": 2}))
        .await
        .expect("publish.lua");

    for (who, m) in [("A", &mut on_a), ("B", &mut on_b)] {
        let one = m
            .expect_broadcast(&topic, &format!("message 1 on {who}"))
            .await;
        assert_eq!(one.cursor(), format!("{epoch}:1"));
        let plain = m
            .expect_broadcast(&topic, &format!("the plain PUBLISH on {who}"))
            .await;
        assert_eq!(
            (plain.event.as_str(), plain.json()),
            ("plain", &json!({"text": "Hel"})),
            "{who}"
        );
        assert!(
            plain
                .meta
                .as_ref()
                .is_none_or(|m| m.get("cursor").is_none()),
            "{who}: a plain PUBLISH has no cursor: {plain:?}"
        );
        // The plain message left no gap in the numbering, and the stray one was dropped.
        let two = m
            .expect_broadcast(&topic, &format!("message 2 on {who}"))
            .await;
        assert_eq!(
            (two.event.as_str(), two.cursor()),
            ("numbered", format!("{epoch}:2")),
            "{who}: the scripted message after the plain one, nothing in between"
        );
    }

    // Not in history: the stream holds the two scripted messages only, and a resume from "0"
    // replays those two and then gets the next live message.
    let hist: u64 = redis::cmd("XLEN")
        .arg(format!("hub:{{t:{name}}}:hist"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(hist, 2, "only scripted messages are kept");
    let mut late: WsClient = nodes[1].ws(Vsn::V1, &anon()).await;
    late.join_ok(&topic, json!({"broadcast": {"resume": {"since": "0"}}}))
        .await;
    publish_via_script(&script, &mut conn, name, "numbered", &json!({"i": 3}))
        .await
        .expect("publish.lua");
    let got = late
        .expect_offsets(
            &topic,
            1..=3,
            "history then live, without the plain one",
            tests::WAIT,
        )
        .await;
    assert_eq!(
        got.iter().map(|b| b.event.as_str()).collect::<Vec<_>>(),
        ["numbered"; 3]
    );
}
