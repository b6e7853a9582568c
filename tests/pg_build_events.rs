//! Build timelines from Postgres reach members: a row inserted into `build_events` (by anyone,
//! in plain SQL) is delivered on `build:<session>` with the row as payload, status changes are
//! `status` events, 1 MB payloads arrive intact, and transactions committing out of order or
//! rolling back neither lose nor block anything.
//!
//! Needs Postgres: run with `scripts/test`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tests::pg::{TestDb, build_topic, insert_event, join_build, service_token, wait_for};
use tests::{TestHub, Vsn, WAIT, WsClient};
use uuid::Uuid;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn an_inserted_row_reaches_a_member_with_the_row_as_payload() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let session = db.session(None).await;
    let topic = build_topic(session);
    let epoch = db.epoch().await;
    let mut v1 = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    let mut v2 = WsClient::connect(&hub, Vsn::V2, &service_token()).await;
    join_build(&mut v1, &topic).await;
    join_build(&mut v2, &topic).await;

    let inserted = Instant::now();
    let id = db
        .event(
            session,
            "plan_created",
            "Plan ready: 3 steps",
            &json!({"steps": ["a", "b", "c"], "n": 3}),
        )
        .await;
    let b = v1
        .expect_broadcast(&topic, "the plan_created row (V1)")
        .await;
    let latency = inserted.elapsed();
    eprintln!("insert to delivery: {latency:?}");
    let b2 = v2
        .expect_broadcast(&topic, "the plan_created row (V2)")
        .await;
    assert_eq!(b.event, "plan_created", "the event is the row's type");
    let p = b.json();
    assert_eq!(
        keys(p),
        ["id", "message", "payload", "session_id", "ts", "type"],
        "the payload is the row: {p}"
    );
    assert_eq!(p["id"], json!(id.to_string()));
    assert_eq!(p["session_id"], json!(session.to_string()));
    assert_eq!(p["type"], json!("plan_created"));
    assert_eq!(p["message"], json!("Plan ready: 3 steps"));
    assert_eq!(p["payload"], json!({"steps": ["a", "b", "c"], "n": 3}));
    let ts: DateTime<Utc> = sqlx::query_scalar("select ts from public.build_events where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("read the row's ts");
    let sent = p["ts"].as_str().expect("ts is a string");
    let parsed = DateTime::parse_from_rfc3339(sent)
        .unwrap_or_else(|e| panic!("ts {sent:?} is not RFC 3339: {e}"));
    assert_eq!(parsed, ts, "ts is the row's timestamp");
    // The session's initial status was offset 1 of the topic; this row is 2.
    assert_eq!(b.cursor(), format!("{epoch}:2"), "cursor <db epoch>:<seq>");
    assert!(!b.replayed(), "a live row is not marked replayed");
    assert_eq!(b2.json(), p, "V2 members get the same payload");
    assert_eq!(b2.cursor(), b.cursor(), "and the same cursor");

    // Status changes publish `status`; other updates publish nothing.
    db.set_status(session, "running").await;
    let s = v1.expect_broadcast(&topic, "the running status").await;
    assert_eq!(s.event, "status");
    let sp = s.json();
    assert_eq!(keys(sp), ["error", "id", "status", "updated_at"], "{sp}");
    assert_eq!(sp["id"], json!(session.to_string()));
    assert_eq!(sp["status"], json!("running"));
    assert_eq!(sp["error"], Value::Null);
    assert_eq!(s.offset(), 3);
    sqlx::query("update public.build_sessions set plan = '{\"x\":1}' where id = $1")
        .bind(session)
        .execute(&db.pool)
        .await
        .expect("update the plan");
    sqlx::query("update public.build_sessions set status = 'failed', error = 'boom' where id = $1")
        .bind(session)
        .execute(&db.pool)
        .await
        .expect("fail the session");
    let s = v1
        .expect_broadcast(
            &topic,
            "the failed status (the plan update published nothing)",
        )
        .await;
    assert_eq!(
        (s.event.as_str(), s.offset()),
        ("status", 4),
        "the plan-only update published nothing: {s:?}"
    );
    assert_eq!(s.json()["status"], json!("failed"));
    assert_eq!(s.json()["error"], json!("boom"));
    for what in ["running (V2)", "failed (V2)"] {
        let s = v2.expect_broadcast(&topic, what).await;
        assert_eq!(s.event, "status", "{what}");
    }
}

#[tokio::test]
async fn a_one_megabyte_payload_arrives_intact() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let session = db.session(None).await;
    let topic = build_topic(session);
    let mut v1 = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    let mut v2 = WsClient::connect(&hub, Vsn::V2, &service_token()).await;
    join_build(&mut v1, &topic).await;
    join_build(&mut v2, &topic).await;

    // Text that JSON must escape, multi-byte characters, and no repetition a codec could hide.
    let mut blob = String::with_capacity(1 << 20);
    let mut i = 0u64;
    while blob.len() < 1 << 20 {
        blob.push_str(&format!(
            "line {i}: \"quoted\" back\\slash\ttab é 中 🎉 {:x}\n",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ));
        i += 1;
    }
    let payload = json!({"blob": blob, "lines": i});
    let id = db.event(session, "artifact", "big", &payload).await;
    for (c, what) in [
        (&mut v1, "the 1 MB row (V1)"),
        (&mut v2, "the 1 MB row (V2)"),
    ] {
        let b = c.expect_broadcast(&topic, what).await;
        let p = b.json();
        assert_eq!(p["id"], json!(id.to_string()), "{what}");
        let got = p["payload"]["blob"].as_str().unwrap_or_default();
        assert_eq!(got.len(), blob.len(), "{what}: blob length");
        assert!(got == blob, "{what}: blob content differs");
        assert_eq!(p["payload"]["lines"], json!(i), "{what}");
        assert_eq!(b.offset(), 2, "{what}");
    }
    // The connection keeps working after the big frame.
    db.event(session, "log", "small", &json!({})).await;
    let b = v1
        .expect_broadcast(&topic, "the row after the big one")
        .await;
    assert_eq!((b.event.as_str(), b.offset()), ("log", 3));
}

/// Transaction A inserts into session X and stays open while B inserts into Y and commits: B's
/// row is delivered at once (A does not block it), and A's row is delivered when A commits, from
/// the feed's gap list. Rolled-back inserts leave gaps that block nothing and are given up.
#[tokio::test]
async fn late_commits_and_rollbacks_lose_and_block_nothing() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let stats = hub.feed_stats();
    let (x, y, z) = (
        db.session(None).await,
        db.session(None).await,
        db.session(None).await,
    );
    let (tx_, ty, tz) = (build_topic(x), build_topic(y), build_topic(z));
    let mut c = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    for t in [&tx_, &ty, &tz] {
        join_build(&mut c, t).await;
    }
    let insert = "insert into public.build_events (session_id, type, message, payload)
                  values ($1, $2, $3, '{}') returning id";

    // A: open, holding an uncommitted row (and a lower outbox id) for X.
    let mut a = db.pool.begin().await.expect("begin A");
    let a_id: Uuid = sqlx::query_scalar(insert)
        .bind(x)
        .bind("a")
        .bind("from A")
        .fetch_one(&mut *a)
        .await
        .expect("A inserts into X");
    // B: inserts into Y and commits while A is open.
    let mut b = db.pool.begin().await.expect("begin B");
    let b_id: Uuid = sqlx::query_scalar(insert)
        .bind(y)
        .bind("b")
        .bind("from B")
        .fetch_one(&mut *b)
        .await
        .expect("B inserts into Y");
    b.commit().await.expect("commit B");
    let got = c.next_broadcast("B's row, while A is still open").await;
    assert_eq!(
        (got.topic.as_str(), got.json()["id"].clone(), got.offset()),
        (ty.as_str(), json!(b_id.to_string()), 2),
        "B's row first: {got:?}"
    );
    let late_before = stats.late_rows.load(std::sync::atomic::Ordering::Relaxed);
    a.commit().await.expect("commit A");
    let got = c.next_broadcast("A's row, after A committed").await;
    assert_eq!(
        (got.topic.as_str(), got.json()["id"].clone(), got.offset()),
        (tx_.as_str(), json!(a_id.to_string()), 2),
        "A's row: {got:?}"
    );
    let late_after = stats.late_rows.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        late_after > late_before,
        "A's row was read from the gap list (late_rows {late_before} -> {late_after})"
    );

    // D holds a transaction open (so gaps cannot be given up yet), C rolls back: later rows
    // still flow at once.
    let gaps_before = stats.gaps_closed.load(std::sync::atomic::Ordering::Relaxed);
    let mut d = db.pool.begin().await.expect("begin D");
    sqlx::query_scalar::<_, Uuid>(insert)
        .bind(z)
        .bind("d")
        .bind("from D, rolled back")
        .fetch_one(&mut *d)
        .await
        .expect("D inserts into Z");
    let mut rb = db.pool.begin().await.expect("begin C");
    sqlx::query_scalar::<_, Uuid>(insert)
        .bind(x)
        .bind("c")
        .bind("from C, rolled back")
        .fetch_one(&mut *rb)
        .await
        .expect("C inserts into X");
    rb.rollback().await.expect("roll back C");
    let after_id = db.event(x, "after", "after the rollback", &json!({})).await;
    let got = c
        .next_broadcast("the row committed after C's rollback, while D is open")
        .await;
    assert_eq!(
        (got.topic.as_str(), got.json()["id"].clone(), got.offset()),
        (tx_.as_str(), json!(after_id.to_string()), 3),
        "the rolled-back insert took no offset and blocked nothing: {got:?}"
    );
    d.rollback().await.expect("roll back D");
    wait_for(
        "the feed gave up the rolled-back ids (gaps_closed grew)",
        WAIT,
        || async { stats.gaps_closed.load(std::sync::atomic::Ordering::Relaxed) > gaps_before },
    )
    .await;
    let z_id = db.event(z, "z", "after D's rollback", &json!({})).await;
    let got = c.next_broadcast("Z's row after D's rollback").await;
    assert_eq!(
        (got.topic.as_str(), got.json()["id"].clone(), got.offset()),
        (tz.as_str(), json!(z_id.to_string()), 2),
        "{got:?}"
    );
    // Nothing else came in between: no rolled-back row, no duplicate.
    let last = db.event(x, "sentinel", "", &json!({})).await;
    let got = c.next_broadcast("the sentinel row").await;
    assert_eq!(
        (got.topic.as_str(), got.json()["id"].clone(), got.offset()),
        (tx_.as_str(), json!(last.to_string()), 4),
        "the next message is the sentinel: {got:?}"
    );
}

/// Two transactions publishing to one topic are numbered in commit order: the second waits for
/// the first's row lock, so members see them in that order with consecutive offsets.
#[tokio::test]
async fn writers_of_one_topic_are_ordered_by_commit() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let session = db.session(None).await;
    let topic = build_topic(session);
    let mut c = WsClient::connect(&hub, Vsn::V2, &service_token()).await;
    join_build(&mut c, &topic).await;

    let mut first = db.pool.begin().await.expect("begin the first writer");
    let first_id: Uuid = sqlx::query_scalar(
        "insert into public.build_events (session_id, type, message) values ($1, 'first', '')
         returning id",
    )
    .bind(session)
    .fetch_one(&mut *first)
    .await
    .expect("first insert");
    let pool = db.pool.clone();
    let second =
        tokio::spawn(async move { insert_event(&pool, session, "second", "", &json!({})).await });
    wait_for(
        "the second writer waits for the first's lock on the topic",
        WAIT,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("read pg_stat_activity");
            waiting > 0
        },
    )
    .await;
    first.commit().await.expect("commit the first writer");
    let second_id = tokio::time::timeout(WAIT, second)
        .await
        .expect("timed out waiting for the second writer to commit")
        .expect("second writer task")
        .expect("second insert");
    let got = c
        .expect_offsets(&topic, 2..=3, "both writers' rows", WAIT)
        .await;
    assert_eq!(got[0].json()["id"], json!(first_id.to_string()));
    assert_eq!(got[1].json()["id"], json!(second_id.to_string()));
}

#[tokio::test]
async fn delivery_latency_is_bounded() {
    // Not a benchmark: a wake-up must come from NOTIFY, not from the feed's 2 s safety poll.
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |_| {}).await;
    let session = db.session(None).await;
    let topic = build_topic(session);
    let mut c = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    join_build(&mut c, &topic).await;
    let mut worst = Duration::ZERO;
    for k in 0..20 {
        let t = Instant::now();
        db.event(session, "log", &format!("{k}"), &json!({})).await;
        c.expect_broadcast(&topic, &format!("row {k}")).await;
        worst = worst.max(t.elapsed());
    }
    eprintln!("worst insert-to-delivery of 20: {worst:?}");
    assert!(
        worst < Duration::from_millis(1000),
        "a row took {worst:?} to arrive: NOTIFY wake-ups are not working"
    );
}
