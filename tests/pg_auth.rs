//! Who may read and write `build:<session>` on Postgres: the owner (`sub` = `created_by`) reads,
//! broadcasts and tracks presence; a share token's holder only reads; strangers are refused with
//! Supabase's wording; the service role may do anything; a deleted session stops being joinable
//! once the ownership cache entry expires.
//!
//! Needs Postgres: run with `scripts/test`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::pg::{TestDb, build_topic, join_build, service_token, share_token, user_token};
use tests::{TestHub, Vsn, WAIT, WsClient, anon, token_claims};
use uuid::Uuid;

const TTL: Duration = Duration::from_millis(300);

fn refused_read(session: Uuid) -> Value {
    json!({"reason": format!(
        "Unauthorized: You do not have permissions to read from this Channel topic: build:{session}"
    )})
}

async fn expect_refused(c: &mut WsClient, topic: &str, session: Uuid, who: &str) {
    let reply = c.join(topic, json!({})).await;
    assert_eq!(reply.status(), "error", "{who} must be refused: {reply:?}");
    assert_eq!(reply.response(), &refused_read(session), "{who}: reason");
}

async fn track(c: &mut WsClient, topic: &str) -> tests::Msg {
    let r = c
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"at": "editor"}}),
        )
        .await;
    c.expect_reply(topic, &r, "the reply to presence track")
        .await
}

#[tokio::test]
async fn owner_share_holder_stranger_and_service_role() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |c| c.ownership_ttl = TTL).await;
    let owner = Uuid::new_v4();
    let session = db.session(Some(owner)).await;
    let other_session = db.session(Some(owner)).await;
    let topic = build_topic(session);

    // Refused: a stranger, an anon token, an ownerless claim, another session's share token.
    let mut stranger = WsClient::connect(&hub, Vsn::V1, &user_token(Uuid::new_v4())).await;
    expect_refused(&mut stranger, &topic, session, "another user").await;
    let mut a = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    expect_refused(&mut a, &topic, session, "an anon token").await;
    let not_a_uuid = token_claims(&json!({
        "role": "authenticated", "sub": "not-a-uuid", "exp": tests::now_secs() + 3600
    }));
    let mut odd = WsClient::connect(&hub, Vsn::V1, &not_a_uuid).await;
    expect_refused(&mut odd, &topic, session, "a sub that is not a uuid").await;
    let mut elsewhere = WsClient::connect(&hub, Vsn::V1, &share_token(other_session)).await;
    expect_refused(
        &mut elsewhere,
        &topic,
        session,
        "another session's share token",
    )
    .await;
    // A share token does not open the owner's other session either (and vice versa).
    let mut holder_elsewhere = WsClient::connect(&hub, Vsn::V1, &share_token(session)).await;
    expect_refused(
        &mut holder_elsewhere,
        &build_topic(other_session),
        other_session,
        "a share token on another session",
    )
    .await;

    // The owner reads, writes (acknowledged) and tracks presence.
    let mut o = WsClient::connect(&hub, Vsn::V1, &user_token(owner)).await;
    o.join_ok(
        &topic,
        json!({"broadcast": {"ack": true, "resume": {"since": "0"}}}),
    )
    .await;
    let first = o.expect_broadcast(&topic, "the owner's history").await;
    assert_eq!((first.event.as_str(), first.offset()), ("status", 1));
    // The share holder reads.
    let mut h = WsClient::connect(&hub, Vsn::V2, &share_token(session)).await;
    join_build(&mut h, &topic).await;
    // The service role reads.
    let mut s = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    s.join_ok(
        &topic,
        json!({"broadcast": {"ack": true, "resume": {"since": "0"}}}),
    )
    .await;
    s.expect_offsets(&topic, 1..=1, "the service's history", WAIT)
        .await;

    // A row reaches all three.
    db.event(session, "plan_created", "plan", &json!({})).await;
    for (c, who) in [(&mut o, "owner"), (&mut h, "holder"), (&mut s, "service")] {
        let b = c
            .expect_broadcast(&topic, &format!("the row ({who})"))
            .await;
        assert_eq!((b.event.as_str(), b.offset()), ("plan_created", 2), "{who}");
    }

    // The holder may not write or track presence.
    let r = h.broadcast_json(&topic, "note", json!({"x": 1})).await;
    let reply = h
        .expect_reply(&topic, &r, "the reply to the holder's broadcast")
        .await;
    assert_eq!(reply.status(), "error", "the holder's broadcast: {reply:?}");
    assert_eq!(
        reply.response(),
        &json!({"reason": format!(
            "Unauthorized: You do not have permissions to write to this Channel topic: build:{session}"
        )}),
    );
    let reply = track(&mut h, &topic).await;
    assert_eq!(reply.status(), "error", "the holder's presence: {reply:?}");
    assert_eq!(
        reply.response(),
        &json!({"reason": format!(
            "Unauthorized: You do not have permissions to track presence on this Channel topic: build:{session}"
        )}),
    );

    // The owner's broadcast is acknowledged and goes through the outbox: offset 3 for the others.
    let r = o
        .broadcast_json(&topic, "note", json!({"from": "owner"}))
        .await;
    let reply = o
        .expect_reply(&topic, &r, "the ack of the owner's broadcast")
        .await;
    assert_eq!(reply.status(), "ok", "the owner's broadcast: {reply:?}");
    for (c, who) in [(&mut h, "holder"), (&mut s, "service")] {
        let b = c
            .expect_broadcast(&topic, &format!("the owner's note ({who})"))
            .await;
        assert_eq!(b.event, "note", "{who}");
        assert_eq!(b.json(), &json!({"from": "owner"}), "{who}");
        assert_eq!(b.offset(), 3, "{who}");
    }
    let reply = track(&mut o, &topic).await;
    assert_eq!(reply.status(), "ok", "the owner's presence: {reply:?}");

    // The service role writes and tracks too.
    let r = s
        .broadcast_json(&topic, "note", json!({"from": "service"}))
        .await;
    let reply = s
        .expect_reply(&topic, &r, "the ack of the service's broadcast")
        .await;
    assert_eq!(reply.status(), "ok", "the service's broadcast: {reply:?}");
    let b = h
        .expect_broadcast(&topic, "the service's note (holder)")
        .await;
    assert_eq!((b.json(), b.offset()), (&json!({"from": "service"}), 4));
    let reply = track(&mut s, &topic).await;
    assert_eq!(reply.status(), "ok", "the service's presence: {reply:?}");

    // Nothing the holder was refused reached anyone: the owner's next message is the service's.
    let b = o
        .expect_broadcast(&topic, "the service's note (owner)")
        .await;
    assert_eq!((b.event.as_str(), b.offset()), ("note", 4), "{b:?}");
}

#[tokio::test]
async fn a_deleted_session_is_refused_once_the_ownership_cache_expires() {
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |c| c.ownership_ttl = TTL).await;
    let owner = Uuid::new_v4();
    let session = db.session(Some(owner)).await;
    let topic = build_topic(session);
    let mut o = WsClient::connect(&hub, Vsn::V1, &user_token(owner)).await;
    o.join_ok(&topic, json!({})).await;

    sqlx::query("delete from public.build_sessions where id = $1")
        .bind(session)
        .execute(&db.pool)
        .await
        .expect("delete the session");
    let deleted_at = Instant::now();
    // Rejoining is allowed while the cached ownership lasts, refused after it.
    let limit = TTL + WAIT;
    let refused = loop {
        let mut c = WsClient::connect(&hub, Vsn::V1, &user_token(owner)).await;
        let reply = c.join(&topic, json!({})).await;
        if reply.status() == "error" {
            break reply;
        }
        assert!(
            deleted_at.elapsed() < limit,
            "the owner could still join {limit:?} after the session was deleted \
             (ownership TTL {TTL:?})"
        );
        // Polling the hub's cache expiry: there is no event to wait for.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = deleted_at.elapsed();
    eprintln!("refused {after:?} after the delete (TTL {TTL:?})");
    assert_eq!(refused.response(), &refused_read(session));
    assert!(
        after < TTL + Duration::from_secs(2),
        "refused {after:?} after the delete; the TTL is {TTL:?}"
    );
    // The service role may still join the topic (it may do anything).
    let mut s = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    s.join_ok(&topic, json!({})).await;
}
