//! Several hubs on one database: each delivers every row exactly once to its own members, a
//! client broadcast on one node reaches the others through the outbox, and a client that drops
//! from one hub and rejoins another with its last cursor gets what it missed exactly once.
//!
//! Needs Postgres: run with `scripts/test`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tests::pg::{TestDb, build_topic, insert_event, join_build, service_token, wait_for};
use tests::{TestHub, Vsn, WAIT, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_deliver_each_row_once_and_a_client_resumes_on_the_other() {
    let db = TestDb::create().await;
    let hub_a = TestHub::spawn_pg(&db.url, |_| {}).await;
    let hub_b = TestHub::spawn_pg(&db.url, |_| {}).await;
    let session = db.session(None).await;
    let topic = build_topic(session);
    let epoch = db.epoch().await;

    let mut on_a = WsClient::connect(&hub_a, Vsn::V1, &service_token()).await;
    let mut on_b = WsClient::connect(&hub_b, Vsn::V2, &service_token()).await;
    join_build(&mut on_a, &topic).await;
    join_build(&mut on_b, &topic).await;

    // Rows written to the database reach the members of both hubs, once each, in order.
    for k in 0..50 {
        db.event(session, "log", "", &json!({"k": k})).await;
    }
    let seen_a = on_a
        .expect_offsets(&topic, 2..=51, "rows on hub A", WAIT)
        .await;
    let seen_b = on_b
        .expect_offsets(&topic, 2..=51, "rows on hub B", WAIT)
        .await;
    for (x, y) in seen_a.iter().zip(&seen_b) {
        assert_eq!(
            x.json(),
            y.json(),
            "both hubs deliver the same row at {}",
            x.offset()
        );
        assert_eq!(x.cursor(), y.cursor(), "with the same cursor");
    }
    assert!(
        seen_a[0].cursor().starts_with(&format!("{epoch}:")),
        "cursors are in the database's epoch on every node"
    );

    // A client's broadcast on A reaches B (and not its sender, which did not ask for `self`).
    let r = on_a
        .broadcast_json(&topic, "note", json!({"from": "a"}))
        .await;
    let b = on_b
        .expect_broadcast(&topic, "A's client broadcast on hub B")
        .await;
    assert_eq!((b.event.as_str(), b.offset()), ("note", 52));
    assert_eq!(b.json(), &json!({"from": "a"}));
    db.event(session, "sentinel", "", &json!({})).await;
    let b = on_a
        .expect_broadcast(&topic, "the sentinel on A (its own note skipped)")
        .await;
    assert_eq!(
        (b.event.as_str(), b.offset()),
        ("sentinel", 53),
        "A's sender skips its own broadcast (ref {r}) and nothing else: {b:?}"
    );
    let b = on_b.expect_broadcast(&topic, "the sentinel on B").await;
    assert_eq!((b.event.as_str(), b.offset()), ("sentinel", 53));

    // A client reads on A, drops, and while rows keep coming, rejoins on B from its cursor.
    let mut roaming = WsClient::connect(&hub_a, Vsn::V2, &service_token()).await;
    roaming
        .join_ok(
            &topic,
            json!({"broadcast": {"resume": {"since": seen_a[49].cursor()}}}),
        )
        .await;
    let before_drop = roaming
        .expect_offsets(&topic, 52..=53, "catch-up on A", WAIT)
        .await;
    for k in 0..10 {
        db.event(session, "log", "", &json!({"k": 100 + k})).await;
    }
    let live = roaming
        .expect_offsets(&topic, 54..=63, "live on A before the drop", WAIT)
        .await;
    assert!(before_drop[0].replayed() && !live[0].replayed());
    let last = live[9].cursor();
    roaming.drop_abruptly();

    const MORE: u64 = 200;
    let committed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, committed) = (db.pool.clone(), committed.clone());
        tokio::spawn(async move {
            for k in 0..MORE {
                insert_event(&pool, session, "log", "", &json!({"k": 1000 + k}))
                    .await
                    .unwrap_or_else(|e| panic!("insert {k}: {e}"));
                committed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_for("50 more rows are committed", WAIT, || async {
        committed.load(Ordering::Relaxed) >= 50
    })
    .await;
    let mut back = WsClient::connect(&hub_b, Vsn::V1, &service_token()).await;
    back.join_ok(&topic, json!({"broadcast": {"resume": {"since": last}}}))
        .await;
    let resumed = back
        .expect_offsets(
            &topic,
            64..=63 + MORE,
            "the missed rows, resumed on B",
            WAIT,
        )
        .await;
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("timed out waiting for the writer")
        .expect("writer task");
    for (i, b) in resumed.iter().enumerate() {
        assert_eq!(b.json()["payload"]["k"], json!(1000 + i as u64), "row {i}");
    }
    assert!(
        resumed[0].replayed(),
        "the first missed row came from history"
    );
    db.event(session, "sentinel", "", &json!({})).await;
    let end = 64 + MORE;
    for (c, who) in [(&mut back, "resumed"), (&mut on_a, "A"), (&mut on_b, "B")] {
        if who != "resumed" {
            c.expect_offsets(&topic, 54..=63 + MORE, &format!("the rows on {who}"), WAIT)
                .await;
        }
        let b = c
            .expect_broadcast(&topic, &format!("the last sentinel ({who})"))
            .await;
        assert_eq!(
            (b.event.as_str(), b.offset()),
            ("sentinel", end),
            "{who}: nothing duplicated before the sentinel: {b:?}"
        );
    }
}

/// Reads a chat's token broadcasts up to offset `upto`, checking offsets only increase (a
/// reader that falls behind gets consecutive tokens merged into one, at the last one's offset),
/// and returns the text and the last broadcast.
async fn read_tokens(
    c: &mut WsClient,
    topic: &str,
    upto: u64,
    what: &str,
) -> (String, tests::Bcast) {
    let mut text = String::new();
    let mut last = 0;
    loop {
        let b = c
            .expect_broadcast(topic, &format!("{what}: up to offset {upto}"))
            .await;
        assert!(
            b.offset() > last,
            "{what}: offset {} after {last}",
            b.offset()
        );
        last = b.offset();
        assert_eq!(b.event, "token", "{what}: {b:?}");
        text.push_str(b.json()["text"].as_str().unwrap_or_default());
        if last >= upto {
            assert_eq!(last, upto, "{what}: no message past the last token");
            return (text, b);
        }
    }
}

/// `hub.publish()` for a chat topic: the chat's history lives in the fast broker, so the feed
/// re-publishes the row there. Members get it with that broker's cursor (not the database's),
/// late joiners get the snapshot, and `done` compacts: the SQL path is a full chat publisher.
#[tokio::test]
async fn sql_published_chat_tokens_reach_members_with_the_chats_cursors() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let chat = format!("chat:{}", uuid::Uuid::new_v4());
    let topic = format!("realtime:{chat}");
    let mut reader = WsClient::connect(&hub, Vsn::V2, &service_token()).await;
    reader.join_ok(&topic, json!({})).await;

    let mut text = String::new();
    for k in 0..20 {
        let piece = format!("t{k} ");
        text.push_str(&piece);
        sqlx::query("select hub.publish($1, 'token', jsonb_build_object('text', $2::text))")
            .bind(&chat)
            .bind(&piece)
            .execute(&db.pool)
            .await
            .expect("hub.publish of a chat token");
    }
    let (got, last) = read_tokens(&mut reader, &topic, 20, "SQL-published tokens").await;
    assert_eq!(got, text, "tokens arrive once each, in order");
    assert_ne!(
        last.epoch(),
        db.epoch().await,
        "the cursor is the chat broker's, so it resumes against the chat's history"
    );

    // A late joiner reconstructs the text from one snapshot.
    let mut late = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    late.join_ok(&topic, json!({})).await;
    let snap = late
        .expect_broadcast(&topic, "the late joiner's snapshot")
        .await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.json()["text"], json!(text));
    assert_eq!(snap.json()["cursor"], json!(last.cursor()));

    // `done` from SQL carries the full text for everyone.
    sqlx::query("select hub.publish($1, 'done', '{\"usage\": {\"tokens\": 20}}')")
        .bind(&chat)
        .execute(&db.pool)
        .await
        .expect("hub.publish of done");
    for c in [&mut reader, &mut late] {
        let done = c.expect_broadcast(&topic, "the SQL-published done").await;
        assert_eq!((done.event.as_str(), done.offset()), ("done", 21));
        assert_eq!(done.json()["text"], json!(text));
        assert_eq!(done.json()["usage"], json!({"tokens": 20}));
    }
}

/// With Redis shared by the nodes, one node (the forwarding leader) publishes each
/// `hub.publish()`ed chat row through Redis: every member on every node gets the tokens exactly
/// once and in order (two nodes forwarding would show up as duplicated or interleaved text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_published_chat_tokens_are_forwarded_once_in_order_across_nodes() {
    let db = TestDb::create().await;
    let redis = tests::redis_backend::TestRedis::file_db(6);
    let hub_a = TestHub::spawn_pg(&db.url, |c| c.redis_url = Some(redis.url.clone())).await;
    let hub_b = TestHub::spawn_pg(&db.url, |c| c.redis_url = Some(redis.url.clone())).await;
    let chat = format!("chat:{}", uuid::Uuid::new_v4());
    let topic = format!("realtime:{chat}");
    let mut on_a = WsClient::connect(&hub_a, Vsn::V2, &service_token()).await;
    let mut on_b = WsClient::connect(&hub_b, Vsn::V1, &service_token()).await;
    on_a.join_ok(&topic, json!({})).await;
    on_b.join_ok(&topic, json!({})).await;

    // More tokens than the general history size (1000): a chat's history keeps the whole
    // stream, so `done` carries all of it.
    for k in 0..1200 {
        sqlx::query("select hub.publish($1, 'token', jsonb_build_object('text', $2::text))")
            .bind(&chat)
            .bind(format!("{k},"))
            .execute(&db.pool)
            .await
            .expect("hub.publish of a chat token");
    }
    sqlx::query("select hub.publish($1, 'done', '{}')")
        .bind(&chat)
        .execute(&db.pool)
        .await
        .expect("hub.publish of done");
    let expected: String = (0..1200).map(|k| format!("{k},")).collect();
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        let (text, _) = read_tokens(c, &topic, 1200, &format!("forwarded tokens on {name}")).await;
        assert_eq!(text, expected, "node {name}: every token once, in order");
        let done = c.expect_broadcast(&topic, &format!("done on {name}")).await;
        assert_eq!((done.event.as_str(), done.offset()), ("done", 1201));
        assert_eq!(done.json()["text"], json!(expected));
    }
    let unclaimed: i64 = sqlx::query_scalar(
        "select count(*) from hub.outbox where topic = $1 and forwarded_by is null",
    )
    .bind(&chat)
    .fetch_one(&db.pool)
    .await
    .expect("count unclaimed rows");
    assert_eq!(unclaimed, 0, "every row was claimed by the forwarding node");
}

/// The forwarding leader stops: the other node takes the lock over and forwards what the leader
/// left unforwarded and everything after, in order. (A starts alone, so it is the leader.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_forwarding_leader_stops_another_node_takes_over() {
    let db = TestDb::create().await;
    let redis = tests::redis_backend::TestRedis::file_db(6);
    let hub_a = TestHub::spawn_pg(&db.url, |c| c.redis_url = Some(redis.url.clone())).await;
    let leaders = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid
             where l.locktype = 'advisory' and l.granted and a.datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await
        .expect("count advisory locks")
    };
    wait_for("hub A holds the forwarding lock", WAIT, || async {
        leaders().await == 1
    })
    .await;
    let hub_b = TestHub::spawn_pg(&db.url, |c| c.redis_url = Some(redis.url.clone())).await;
    let chat = format!("chat:{}", uuid::Uuid::new_v4());
    let topic = format!("realtime:{chat}");
    let mut on_b = WsClient::connect(&hub_b, Vsn::V2, &service_token()).await;
    on_b.join_ok(&topic, json!({})).await;
    hub_a.shutdown().await;

    for k in 0..20 {
        sqlx::query("select hub.publish($1, 'token', jsonb_build_object('text', $2::text))")
            .bind(&chat)
            .bind(format!("{k},"))
            .execute(&db.pool)
            .await
            .expect("hub.publish of a chat token");
    }
    let expected: String = (0..20).map(|k| format!("{k},")).collect();
    let (text, _) = read_tokens(&mut on_b, &topic, 20, "tokens forwarded by the new leader").await;
    assert_eq!(
        text, expected,
        "every token once, in order, after the leader stopped"
    );
    assert_eq!(leaders().await, 1, "hub B holds the lock now");
}
