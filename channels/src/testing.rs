//! Conformance suites every backend of a `channels` trait must pass (feature `testing`).
//!
//! Each suite takes a factory and checks the trait's contract, so the memory default and the
//! Postgres (and later Redis) implementations are held to the same behaviour in the same
//! `cargo test` run: see `store/tests/conformance.rs`. Start at [`durable_broker_suite`].
//!
//! The factory is called once per case. It may hand out fresh backends or views of one shared
//! backend (one database for the whole suite): every case works on its own freshly named topics
//! and freshly created sessions, so cases never see each other's data.
//!
//! Failures panic with a message naming the case and what differed.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::broker::{Broker, Publication};
use crate::cursor::{Cursor, Since};
use crate::envelope::{Envelope, Payload};
use crate::history::Recovery;
use crate::sessions::{
    BuildSession, NewEvent, NewSession, SessionStatus, SessionStore, SessionUpdate, StoreError,
};
use crate::topic::TopicKey;

// ---------------------------------------------------------------------------------------------
// Brokers with history
// ---------------------------------------------------------------------------------------------

/// The history contract of a broker that numbers messages (the memory broker, the Postgres outbox,
/// the Redis script): per-topic offsets 1, 2, 3…; history after a cursor is exactly the later
/// messages in order; `Since::Beginning` is everything retained; a cursor of another epoch or
/// ahead of the head is reported as not recovered; a limit keeps the newest messages and reports
/// not recovered; the public and private topics of one name are separate.
///
/// Brokers must retain at least 10 messages per topic for this suite.
pub async fn durable_broker_suite<F>(make: F)
where
    F: Fn() -> Arc<dyn Broker>,
{
    broker_numbers_each_topic_from_one(&make()).await;
    broker_history_after_a_cursor(&make()).await;
    broker_history_from_the_beginning(&make()).await;
    broker_history_of_an_empty_topic(&make()).await;
    broker_cursor_of_another_epoch(&make()).await;
    broker_cursor_ahead_of_the_head(&make()).await;
    broker_limit_keeps_the_newest(&make()).await;
    broker_public_and_private_are_separate(&make()).await;
    broker_payloads_round_trip(&make()).await;
    broker_replay_by_time(&make()).await;
}

/// A topic no other case (or earlier run on a shared backend) has used.
fn fresh_topic(case: &str, private: bool) -> TopicKey {
    let name = format!("conformance:{case}-{}", Uuid::new_v4().simple());
    TopicKey::new(&name, private).expect("conformance topic names are short")
}

fn json_payload(v: &Value) -> Payload {
    Payload::Json(Bytes::from(v.to_string()))
}

/// Publishes `{"i": k}` for k in `range` as event `m<k>` and returns the cursors.
async fn publish_n(
    broker: &Arc<dyn Broker>,
    topic: &TopicKey,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<Cursor> {
    let mut cursors = Vec::new();
    for k in range {
        let cursor = broker
            .publish(Publication {
                topic: topic.clone(),
                event: format!("m{k}").into(),
                payload: json_payload(&json!({ "i": k })),
                origin: None,
            })
            .await
            .unwrap_or_else(|e| panic!("publish {k} on {topic}: {e}"))
            .unwrap_or_else(|| panic!("publish {k} on {topic}: a durable broker returns a cursor"));
        cursors.push(cursor);
    }
    cursors
}

async fn history(
    broker: &Arc<dyn Broker>,
    topic: &TopicKey,
    since: &Since,
    limit: usize,
) -> Recovery {
    broker
        .history(topic, since, limit)
        .await
        .unwrap_or_else(|e| panic!("history of {topic} since {since:?} limit {limit}: {e}"))
}

fn offsets(messages: &[Arc<Envelope>]) -> Vec<u64> {
    messages
        .iter()
        .map(|e| {
            e.cursor
                .as_ref()
                .unwrap_or_else(|| panic!("history message without a cursor: {e:?}"))
                .offset
        })
        .collect()
}

fn payload_json(e: &Envelope) -> Value {
    match &e.payload {
        Payload::Json(b) => serde_json::from_slice(b)
            .unwrap_or_else(|err| panic!("payload of {e:?} is not JSON: {err}")),
        Payload::Binary(b) => panic!("expected a JSON payload, got bytes {b:?}"),
    }
}

/// Checks that `messages` are exactly `{"i": k}` / `m<k>` for `expected`, in order, on `topic`,
/// all in `epoch`.
#[track_caller]
fn assert_messages(case: &str, messages: &[Arc<Envelope>], expected: &[u64], epoch: &str) {
    assert_eq!(
        offsets(messages),
        expected,
        "{case}: offsets of the returned history"
    );
    for (e, k) in messages.iter().zip(expected) {
        assert_eq!(&*e.event, format!("m{k}"), "{case}: event of offset {k}");
        assert_eq!(payload_json(e), json!({ "i": k }), "{case}: payload of {k}");
        let c = e.cursor.as_ref().map(|c| &*c.epoch);
        assert_eq!(c, Some(epoch), "{case}: epoch of offset {k}");
    }
}

async fn broker_numbers_each_topic_from_one(broker: &Arc<dyn Broker>) {
    let a = fresh_topic("numbers-a", false);
    let b = fresh_topic("numbers-b", false);
    let ca = publish_n(broker, &a, 1..=3).await;
    let cb = publish_n(broker, &b, 1..=2).await;
    let ca2 = publish_n(broker, &a, 4..=4).await;
    let off = |cs: &[Cursor]| cs.iter().map(|c| c.offset).collect::<Vec<_>>();
    assert_eq!(off(&ca), [1, 2, 3], "numbers: offsets of topic a");
    assert_eq!(off(&cb), [1, 2], "numbers: topic b is numbered on its own");
    assert_eq!(
        off(&ca2),
        [4],
        "numbers: topic a continues after b published"
    );
    assert!(
        ca.iter().chain(&ca2).all(|c| c.epoch == ca[0].epoch),
        "numbers: one topic's cursors share one epoch: {ca:?} {ca2:?}"
    );
    assert!(
        !ca[0].epoch.is_empty() && !ca[0].epoch.contains(':'),
        "numbers: an epoch is non-empty and has no ':' (cursor syntax): {:?}",
        ca[0].epoch
    );
}

async fn broker_history_after_a_cursor(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("after", false);
    let cs = publish_n(broker, &t, 1..=5).await;
    let epoch = cs[0].epoch.clone();
    let rec = history(broker, &t, &Since::After(cs[1].clone()), 100).await;
    assert_messages("after cursor 2", &rec.messages, &[3, 4, 5], &epoch);
    assert!(rec.recovered, "after cursor 2: everything later is there");
    assert_eq!(rec.head, cs[4], "after cursor 2: head is the newest cursor");
    for e in &rec.messages {
        assert_eq!(e.topic, t, "after cursor 2: messages carry their topic");
    }
    let rec = history(broker, &t, &Since::After(cs[4].clone()), 100).await;
    assert_messages("after the head", &rec.messages, &[], &epoch);
    assert!(
        rec.recovered,
        "after the head: nothing was missed, so recovered"
    );
    assert_eq!(rec.head, cs[4], "after the head: head");
    // Later publishes continue the numbering and show up after the same cursor.
    publish_n(broker, &t, 6..=6).await;
    let rec = history(broker, &t, &Since::After(cs[3].clone()), 100).await;
    assert_messages("after cursor 4", &rec.messages, &[5, 6], &epoch);
    assert!(rec.recovered, "after cursor 4: recovered");
}

async fn broker_history_from_the_beginning(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("beginning", false);
    let cs = publish_n(broker, &t, 1..=4).await;
    let rec = history(broker, &t, &Since::Beginning, 100).await;
    assert_messages(
        "from the beginning",
        &rec.messages,
        &[1, 2, 3, 4],
        &cs[0].epoch,
    );
    assert!(rec.recovered, "from the beginning: all retained");
    assert_eq!(rec.head, cs[3], "from the beginning: head");
}

async fn broker_history_of_an_empty_topic(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("empty", false);
    let rec = history(broker, &t, &Since::Beginning, 100).await;
    assert!(
        rec.messages.is_empty(),
        "empty topic: no messages, got {:?}",
        rec.messages
    );
    assert!(
        rec.recovered,
        "empty topic: nothing was missed, so recovered"
    );
    assert_eq!(rec.head.offset, 0, "empty topic: head offset is 0");
    // The first publish after that is offset 1.
    let cs = publish_n(broker, &t, 1..=1).await;
    assert_eq!(cs[0].offset, 1, "empty topic: first publish is offset 1");
}

async fn broker_cursor_of_another_epoch(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("epoch", false);
    let cs = publish_n(broker, &t, 1..=3).await;
    let other: Arc<str> = format!("{}x", cs[0].epoch).into();
    let rec = history(broker, &t, &Since::After(Cursor::new(other, 1)), 100).await;
    assert!(
        !rec.recovered,
        "a cursor of another epoch is never recovered: {rec:?}"
    );
    assert_eq!(rec.head, cs[2], "another epoch: head is the current head");
    // Whatever is returned comes from the current history, in order.
    let got = offsets(&rec.messages);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "another epoch: messages in order: {got:?}"
    );
    assert!(
        rec.messages
            .iter()
            .all(|e| e.cursor.as_ref().is_some_and(|c| c.epoch == cs[0].epoch)),
        "another epoch: messages are of the current epoch"
    );
}

async fn broker_cursor_ahead_of_the_head(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("ahead", false);
    let cs = publish_n(broker, &t, 1..=3).await;
    let ahead = Cursor::new(cs[0].epoch.clone(), 10);
    let rec = history(broker, &t, &Since::After(ahead), 100).await;
    assert!(
        !rec.recovered,
        "a cursor this history never issued is not recovered: {rec:?}"
    );
    assert!(
        rec.messages.is_empty(),
        "ahead of the head: nothing to return, got {:?}",
        rec.messages
    );
    assert_eq!(rec.head, cs[2], "ahead of the head: head");
    // A cursor on a topic that has no messages at all is unknown too.
    let empty = fresh_topic("ahead-empty", false);
    let rec = history(
        broker,
        &empty,
        &Since::After(Cursor::new(cs[0].epoch.clone(), 1)),
        100,
    )
    .await;
    assert!(
        !rec.recovered,
        "a cursor into an empty topic is not recovered: {rec:?}"
    );
}

async fn broker_limit_keeps_the_newest(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("limit", false);
    let cs = publish_n(broker, &t, 1..=6).await;
    let epoch = cs[0].epoch.clone();
    let rec = history(broker, &t, &Since::Beginning, 2).await;
    assert_messages("limit 2 from the beginning", &rec.messages, &[5, 6], &epoch);
    assert!(
        !rec.recovered,
        "limit 2 from the beginning: 4 messages were left out, so not recovered"
    );
    assert_eq!(rec.head, cs[5], "limit: head");
    let rec = history(broker, &t, &Since::After(cs[0].clone()), 3).await;
    assert_messages("limit 3 after cursor 1", &rec.messages, &[4, 5, 6], &epoch);
    assert!(!rec.recovered, "limit 3 after cursor 1: 2 and 3 left out");
    let rec = history(broker, &t, &Since::After(cs[2].clone()), 3).await;
    assert_messages("limit 3 after cursor 3", &rec.messages, &[4, 5, 6], &epoch);
    assert!(
        rec.recovered,
        "limit 3 after cursor 3: exactly the 3 missed, so recovered"
    );
}

async fn broker_public_and_private_are_separate(broker: &Arc<dyn Broker>) {
    let public = fresh_topic("private", false);
    let private = TopicKey::new(public.name(), true).expect("same name, private");
    let cs_pub = publish_n(broker, &public, 1..=3).await;
    let cs_priv = publish_n(broker, &private, 1..=1).await;
    assert_eq!(
        cs_priv[0].offset, 1,
        "the private topic is numbered on its own"
    );
    let rec = history(broker, &private, &Since::Beginning, 100).await;
    assert_messages("private history", &rec.messages, &[1], &cs_priv[0].epoch);
    assert!(
        rec.messages.iter().all(|e| e.topic == private),
        "private history: only private messages"
    );
    let rec = history(broker, &public, &Since::Beginning, 100).await;
    assert_messages(
        "public history",
        &rec.messages,
        &[1, 2, 3],
        &cs_pub[0].epoch,
    );
    assert!(
        rec.messages.iter().all(|e| e.topic == public),
        "public history: only public messages"
    );
}

async fn broker_payloads_round_trip(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("payloads", false);
    let doc = json!({
        "text": "quotes \" backslash \\ newline \n tab \t unicode é 中 🎉",
        "n": [1, 2.5, -3, null, true],
        "nested": {"a": {"b": []}},
    });
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let publications = [
        ("json", Payload::Json(Bytes::from(doc.to_string()))),
        ("bin", Payload::Binary(Bytes::from(bytes.clone()))),
        ("empty-object", Payload::Json(Bytes::from_static(b"{}"))),
    ];
    for (event, payload) in &publications {
        broker
            .publish(Publication {
                topic: t.clone(),
                event: (*event).into(),
                payload: payload.clone(),
                origin: None,
            })
            .await
            .unwrap_or_else(|e| panic!("publish {event}: {e}"));
    }
    let rec = history(broker, &t, &Since::Beginning, 100).await;
    assert_eq!(offsets(&rec.messages), [1, 2, 3], "payloads: offsets");
    let events: Vec<&str> = rec.messages.iter().map(|e| &*e.event).collect();
    assert_eq!(events, ["json", "bin", "empty-object"], "payloads: events");
    assert_eq!(
        payload_json(&rec.messages[0]),
        doc,
        "payloads: JSON comes back equal"
    );
    assert_eq!(
        rec.messages[1].payload,
        Payload::Binary(Bytes::from(bytes)),
        "payloads: bytes come back byte for byte"
    );
    assert_eq!(payload_json(&rec.messages[2]), json!({}), "payloads: {{}}");
}

async fn broker_replay_by_time(broker: &Arc<dyn Broker>) {
    let t = fresh_topic("replay", false);
    let cs = publish_n(broker, &t, 1..=3).await;
    let all = broker
        .replay(&t, 0, 100)
        .await
        .unwrap_or_else(|e| panic!("replay of {t}: {e}"));
    assert_messages("replay since 0", &all, &[1, 2, 3], &cs[0].epoch);
    let newest = broker
        .replay(&t, 0, 2)
        .await
        .unwrap_or_else(|e| panic!("replay of {t}: {e}"));
    assert_messages("replay limit 2", &newest, &[2, 3], &cs[0].epoch);
    let future = crate::envelope::now_ms() + 3_600_000;
    let none = broker
        .replay(&t, future, 100)
        .await
        .unwrap_or_else(|e| panic!("replay of {t}: {e}"));
    assert!(
        none.is_empty(),
        "replay since an hour from now: nothing, got {none:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Session stores
// ---------------------------------------------------------------------------------------------

/// The contract of a [`SessionStore`]: create, get, lookup by share token, timelines in order,
/// appends, updates (status changes), deletes, and `NotFound` for sessions that do not exist.
pub async fn session_store_suite<F>(make: F)
where
    F: Fn() -> Arc<dyn SessionStore>,
{
    store_create_and_get(&make()).await;
    store_share_tokens(&make()).await;
    store_timeline_in_order(&make()).await;
    store_update(&make()).await;
    store_delete(&make()).await;
    store_not_found(&make()).await;
}

fn new_session(owner: Option<Uuid>) -> NewSession {
    NewSession {
        template: "saas".into(),
        vibe_text: "a marketplace for \"vintage\" synthesizers — é".into(),
        options: json!({"region": "eu", "features": ["auth", "billing"]}),
        created_by: owner,
    }
}

async fn create(store: &Arc<dyn SessionStore>, owner: Option<Uuid>) -> BuildSession {
    store
        .create(new_session(owner))
        .await
        .unwrap_or_else(|e| panic!("create a session: {e}"))
}

async fn get(store: &Arc<dyn SessionStore>, id: Uuid) -> Option<BuildSession> {
    store
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("get session {id}: {e}"))
}

async fn store_create_and_get(store: &Arc<dyn SessionStore>) {
    let owner = Uuid::new_v4();
    let s = create(store, Some(owner)).await;
    let want = new_session(Some(owner));
    assert_eq!(s.status, SessionStatus::Queued, "create: starts queued");
    assert_eq!(s.template, want.template, "create: template");
    assert_eq!(s.vibe_text, want.vibe_text, "create: vibe_text");
    assert_eq!(s.options, want.options, "create: options");
    assert_eq!(s.created_by, Some(owner), "create: created_by");
    assert_eq!(
        (&s.plan, &s.environment, &s.outputs, &s.error),
        (&None, &None, &None, &None),
        "create: plan, environment, outputs and error start empty"
    );
    assert!(
        s.created_at <= s.updated_at,
        "create: created_at {} <= updated_at {}",
        s.created_at,
        s.updated_at
    );
    assert!(
        s.share_token.len() >= 16,
        "create: a share token of at least 16 characters, got {:?}",
        s.share_token
    );
    assert_eq!(
        get(store, s.id).await.as_ref(),
        Some(&s),
        "get returns the session create returned"
    );
    let anonymous = create(store, None).await;
    assert_eq!(anonymous.created_by, None, "create: no owner");
    assert_ne!(anonymous.id, s.id, "create: distinct ids");
    assert_eq!(
        get(store, anonymous.id).await.map(|x| x.created_by),
        Some(None),
        "get: the ownerless session"
    );
}

async fn store_share_tokens(store: &Arc<dyn SessionStore>) {
    let a = create(store, Some(Uuid::new_v4())).await;
    let b = create(store, Some(Uuid::new_v4())).await;
    assert_ne!(
        a.share_token, b.share_token,
        "share tokens differ per session"
    );
    let found = store
        .by_share_token(&a.share_token)
        .await
        .unwrap_or_else(|e| panic!("by_share_token: {e}"));
    assert_eq!(found.as_ref(), Some(&a), "by_share_token finds its session");
    let found = store
        .by_share_token(&b.share_token)
        .await
        .unwrap_or_else(|e| panic!("by_share_token: {e}"));
    assert_eq!(found.map(|s| s.id), Some(b.id), "by_share_token: b");
    for unknown in ["no-such-token", ""] {
        let found = store
            .by_share_token(unknown)
            .await
            .unwrap_or_else(|e| panic!("by_share_token({unknown:?}): {e}"));
        assert!(
            found.is_none(),
            "by_share_token({unknown:?}) finds nothing, got {found:?}"
        );
    }
}

async fn store_timeline_in_order(store: &Arc<dyn SessionStore>) {
    let s = create(store, Some(Uuid::new_v4())).await;
    let other = create(store, Some(Uuid::new_v4())).await;
    let timeline = store
        .events(s.id)
        .await
        .unwrap_or_else(|e| panic!("events of a new session: {e}"));
    assert!(
        timeline.is_empty(),
        "a new session has no events: {timeline:?}"
    );
    let mut appended = Vec::new();
    for (i, kind) in ["plan_created", "env_provisioned", "deploy_started", "log"]
        .iter()
        .enumerate()
    {
        let e = store
            .append_event(NewEvent {
                session_id: s.id,
                kind: (*kind).into(),
                message: format!("step {i}"),
                payload: json!({"i": i, "detail": {"ok": true}}),
            })
            .await
            .unwrap_or_else(|e| panic!("append event {i}: {e}"));
        assert_eq!(e.session_id, s.id, "append: session_id");
        assert_eq!(e.kind, *kind, "append: type");
        assert_eq!(e.message, format!("step {i}"), "append: message");
        assert_eq!(
            e.payload,
            json!({"i": i, "detail": {"ok": true}}),
            "append: payload"
        );
        appended.push(e);
        // The other session's timeline interleaves and must stay separate.
        store
            .append_event(NewEvent {
                session_id: other.id,
                kind: "log".into(),
                message: format!("other {i}"),
                payload: json!({}),
            })
            .await
            .unwrap_or_else(|e| panic!("append to the other session: {e}"));
    }
    let ids: Vec<Uuid> = appended.iter().map(|e| e.id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "append: distinct event ids");
    let timeline = store
        .events(s.id)
        .await
        .unwrap_or_else(|e| panic!("events: {e}"));
    assert_eq!(
        timeline, appended,
        "events returns the appended events, in order"
    );
    assert!(
        timeline.windows(2).all(|w| w[0].ts <= w[1].ts),
        "events are ordered by ts"
    );
    let others = store
        .events(other.id)
        .await
        .unwrap_or_else(|e| panic!("events of the other session: {e}"));
    let messages: Vec<&str> = others.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        ["other 0", "other 1", "other 2", "other 3"],
        "the other session's timeline holds only its own events"
    );
    // A JSON payload that is not an object still round-trips (the column is jsonb).
    let e = store
        .append_event(NewEvent {
            session_id: s.id,
            kind: "log".into(),
            message: String::new(),
            payload: json!([1, "two", null]),
        })
        .await
        .unwrap_or_else(|e| panic!("append an array payload: {e}"));
    assert_eq!(e.payload, json!([1, "two", null]), "append: array payload");
}

async fn store_update(store: &Arc<dyn SessionStore>) {
    let s = create(store, Some(Uuid::new_v4())).await;
    let running = store
        .update(
            s.id,
            SessionUpdate {
                status: Some(SessionStatus::Running),
                ..SessionUpdate::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("update status: {e}"));
    assert_eq!(running.status, SessionStatus::Running, "update: status");
    assert!(
        running.updated_at >= s.updated_at,
        "update: updated_at moves forward ({} -> {})",
        s.updated_at,
        running.updated_at
    );
    assert_eq!(
        (
            &running.template,
            &running.vibe_text,
            &running.options,
            running.created_by,
            running.created_at,
            &running.share_token
        ),
        (
            &s.template,
            &s.vibe_text,
            &s.options,
            s.created_by,
            s.created_at,
            &s.share_token
        ),
        "update: fields not named stay unchanged"
    );
    assert_eq!(
        get(store, s.id).await.as_ref(),
        Some(&running),
        "get after update"
    );
    let plan = json!({"steps": ["a", "b"]});
    let failed = store
        .update(
            s.id,
            SessionUpdate {
                status: Some(SessionStatus::Failed),
                plan: Some(plan.clone()),
                environment: Some(json!({"url": "https://x.example"})),
                outputs: Some(json!({"files": 3})),
                error: Some("boom".into()),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("update everything: {e}"));
    assert_eq!(failed.status, SessionStatus::Failed, "update: failed");
    assert_eq!(failed.plan, Some(plan.clone()), "update: plan");
    assert_eq!(
        failed.environment,
        Some(json!({"url": "https://x.example"})),
        "update: environment"
    );
    assert_eq!(failed.outputs, Some(json!({"files": 3})), "update: outputs");
    assert_eq!(failed.error.as_deref(), Some("boom"), "update: error");
    // An empty update changes nothing it names (there is nothing named).
    let same = store
        .update(s.id, SessionUpdate::default())
        .await
        .unwrap_or_else(|e| panic!("empty update: {e}"));
    assert_eq!(
        (same.status, &same.plan, &same.error),
        (SessionStatus::Failed, &Some(plan), &failed.error),
        "update: an empty update keeps every field"
    );
    for status in [
        SessionStatus::Queued,
        SessionStatus::Running,
        SessionStatus::Succeeded,
        SessionStatus::Canceled,
    ] {
        let u = store
            .update(
                s.id,
                SessionUpdate {
                    status: Some(status),
                    ..SessionUpdate::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("update to {status:?}: {e}"));
        assert_eq!(u.status, status, "update: every status is accepted");
    }
}

async fn store_delete(store: &Arc<dyn SessionStore>) {
    let s = create(store, Some(Uuid::new_v4())).await;
    let keep = create(store, Some(Uuid::new_v4())).await;
    store
        .append_event(NewEvent {
            session_id: s.id,
            kind: "log".into(),
            message: "x".into(),
            payload: json!({}),
        })
        .await
        .unwrap_or_else(|e| panic!("append before delete: {e}"));
    let existed = store
        .delete(s.id)
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(existed, "delete of an existing session returns true");
    assert_eq!(get(store, s.id).await, None, "get after delete");
    let by_token = store
        .by_share_token(&s.share_token)
        .await
        .unwrap_or_else(|e| panic!("by_share_token after delete: {e}"));
    assert_eq!(
        by_token, None,
        "a deleted session's share token opens nothing"
    );
    assert!(
        matches!(store.events(s.id).await, Err(StoreError::NotFound)),
        "events of a deleted session: NotFound"
    );
    let again = store
        .delete(s.id)
        .await
        .unwrap_or_else(|e| panic!("delete again: {e}"));
    assert!(!again, "deleting twice returns false the second time");
    assert_eq!(
        get(store, keep.id).await.map(|k| k.id),
        Some(keep.id),
        "delete leaves other sessions alone"
    );
}

async fn store_not_found(store: &Arc<dyn SessionStore>) {
    let missing = Uuid::new_v4();
    assert_eq!(get(store, missing).await, None, "get of an unknown id");
    assert!(
        matches!(store.events(missing).await, Err(StoreError::NotFound)),
        "events of an unknown session: NotFound"
    );
    let appended = store
        .append_event(NewEvent {
            session_id: missing,
            kind: "log".into(),
            message: "x".into(),
            payload: json!({}),
        })
        .await;
    assert!(
        matches!(appended, Err(StoreError::NotFound)),
        "append to an unknown session: NotFound, got {appended:?}"
    );
    let updated = store
        .update(
            missing,
            SessionUpdate {
                status: Some(SessionStatus::Running),
                ..SessionUpdate::default()
            },
        )
        .await;
    assert!(
        matches!(updated, Err(StoreError::NotFound)),
        "update of an unknown session: NotFound, got {updated:?}"
    );
    let deleted = store
        .delete(missing)
        .await
        .unwrap_or_else(|e| panic!("delete of an unknown id: {e}"));
    assert!(!deleted, "delete of an unknown id returns false");
}
