//! Presence (PROTOCOL §4, §10.9): `presence_state` after join, `presence_diff` on track, update,
//! untrack, leave and disconnect; identical re-tracks are silent; server-assigned keys; members
//! without presence get no diffs; malformed tracks are refused with a reason.

use serde_json::{Value, json};
use tests::{Msg, TestHub, Vsn, WsClient, anon};

const TOPIC: &str = "realtime:lobby";

fn presence_config(key: &str) -> Value {
    json!({"presence": {"key": key, "enabled": true}})
}

async fn track(c: &mut WsClient, payload: Value) -> String {
    c.push(
        TOPIC,
        "presence",
        json!({"type": "presence", "event": "track", "payload": payload}),
    )
    .await
}

/// Joins with presence enabled and returns the `presence_state` payload (checking its refs).
async fn join_presence(c: &mut WsClient, key: &str) -> Value {
    c.join_ok(TOPIC, presence_config(key)).await;
    let jr = c.join_ref(TOPIC);
    let st = c
        .next_msg("presence_state right after the join reply")
        .await;
    assert_eq!(st.event, "presence_state");
    assert_eq!(st.topic, TOPIC);
    if c.vsn == Vsn::V2 {
        assert_eq!(
            st.join_ref.as_deref(),
            Some(jr.as_str()),
            "state carries the join ref"
        );
    }
    assert_eq!(st.msg_ref, None);
    st.payload
}

/// Reads the tracker's own two frames (its diff and its reply, in any order).
async fn own_diff_and_reply(c: &mut WsClient, r: &str) -> (Msg, Msg) {
    let a = c.next_msg("the tracker's diff or reply").await;
    let b = c.next_msg("the tracker's diff or reply").await;
    let (diff, reply) = if a.event == "presence_diff" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(diff.event, "presence_diff", "{diff:?}");
    assert_eq!(reply.event, "phx_reply", "{reply:?}");
    assert_eq!(reply.msg_ref.as_deref(), Some(r));
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    (diff, reply)
}

fn only_meta(side: &Value, key: &str) -> Value {
    let metas = side[key]["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("no metas for {key} in {side}"));
    assert_eq!(metas.len(), 1, "one meta for {key}: {side}");
    metas[0].clone()
}

#[tokio::test]
async fn track_update_retrack_untrack_and_state() {
    let hub = TestHub::spawn().await;
    let mut alice = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut bob = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    assert_eq!(join_presence(&mut alice, "alice").await, json!({}));
    assert_eq!(join_presence(&mut bob, "bob").await, json!({}));

    // Track: a join diff to everyone with presence, the tracker included.
    let r = track(&mut alice, json!({"name": "alice", "online_at": 1})).await;
    let (own, _) = own_diff_and_reply(&mut alice, &r).await;
    let diff = bob.next_msg("bob's diff for alice's track").await;
    assert_eq!(diff.event, "presence_diff");
    assert_eq!(diff.msg_ref, None);
    assert_eq!(diff.payload, own.payload, "one diff for everyone");
    assert_eq!(diff.payload["leaves"], json!({}));
    let meta1 = only_meta(&diff.payload["joins"], "alice");
    let ref1 = meta1["phx_ref"].as_str().expect("phx_ref").to_owned();
    assert_eq!(
        meta1,
        json!({"name": "alice", "online_at": 1, "phx_ref": ref1})
    );

    // A later joiner gets the state, on its own join ref.
    let mut carol = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let state = join_presence(&mut carol, "carol").await;
    assert_eq!(state, json!({"alice": {"metas": [meta1]}}));

    // Update: one diff holding the new meta (with phx_ref_prev) and the old one as a leave.
    let r = track(&mut alice, json!({"name": "alice", "online_at": 2})).await;
    own_diff_and_reply(&mut alice, &r).await;
    let diff = bob.next_msg("bob's diff for alice's update").await;
    assert_eq!(diff.event, "presence_diff");
    let joined = only_meta(&diff.payload["joins"], "alice");
    let ref2 = joined["phx_ref"].as_str().expect("phx_ref").to_owned();
    assert_ne!(ref2, ref1, "a new phx_ref per track");
    assert_eq!(
        joined,
        json!({"name": "alice", "online_at": 2, "phx_ref": ref2, "phx_ref_prev": ref1})
    );
    assert_eq!(
        diff.payload["leaves"],
        json!({"alice": {"metas": [{"name": "alice", "online_at": 1, "phx_ref": ref1}]}})
    );
    carol.next_msg("carol's diff for the update").await;

    // Identical re-track: ok reply, no diff anywhere.
    let r = track(&mut alice, json!({"name": "alice", "online_at": 2})).await;
    let reply = alice.next_msg("the reply to an identical re-track").await;
    assert_eq!(
        (reply.msg_ref.as_deref(), reply.status()),
        (Some(r.as_str()), "ok")
    );
    alice
        .assert_silent(200, "no diff for an identical re-track")
        .await;
    bob.assert_silent(10, "no diff for an identical re-track")
        .await;

    // Untrack: a leave diff.
    let r = alice
        .push(
            TOPIC,
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    own_diff_and_reply(&mut alice, &r).await;
    let diff = bob.next_msg("bob's diff for alice's untrack").await;
    assert_eq!(
        diff.payload,
        json!({"joins": {}, "leaves": {"alice": {"metas": [{"name": "alice", "online_at": 2, "phx_ref": ref2}]}}})
    );
    // Event names are case-insensitive.
    let r = alice
        .push(
            TOPIC,
            "presence",
            json!({"type": "presence", "event": "TRACK", "payload": {"x": 1}}),
        )
        .await;
    own_diff_and_reply(&mut alice, &r).await;
}

#[tokio::test]
async fn leave_and_disconnect_emit_leave_diffs() {
    let hub = TestHub::spawn().await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut watcher, "w").await;

    let mut leaver = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut leaver, "leaver").await;
    let r = track(&mut leaver, json!({"s": 1})).await;
    own_diff_and_reply(&mut leaver, &r).await;
    let j = watcher.next_msg("join diff of the leaver").await;
    let meta = only_meta(&j.payload["joins"], "leaver");
    leaver.leave(TOPIC).await;
    let d = watcher.next_msg("leave diff after phx_leave").await;
    assert_eq!(d.event, "presence_diff");
    assert_eq!(
        d.payload,
        json!({"joins": {}, "leaves": {"leaver": {"metas": [meta]}}})
    );

    let mut dropper = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    join_presence(&mut dropper, "dropper").await;
    let r = track(&mut dropper, json!({"s": 2})).await;
    own_diff_and_reply(&mut dropper, &r).await;
    let j = watcher.next_msg("join diff of the dropper").await;
    let meta = only_meta(&j.payload["joins"], "dropper");
    dropper.drop_abruptly();
    let d = watcher.next_msg("leave diff after a disconnect").await;
    assert_eq!(
        d.payload,
        json!({"joins": {}, "leaves": {"dropper": {"metas": [meta]}}})
    );
    let mut late = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    assert_eq!(
        join_presence(&mut late, "late").await,
        json!({}),
        "nobody left"
    );
}

#[tokio::test]
async fn empty_key_gets_a_uuid() {
    let hub = TestHub::spawn().await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut watcher, "w").await;
    let mut anonymous = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut anonymous, "").await;
    let r = track(&mut anonymous, json!({"a": 1})).await;
    own_diff_and_reply(&mut anonymous, &r).await;
    let d = watcher.next_msg("the diff of a keyless track").await;
    let joins = d.payload["joins"].as_object().expect("joins object");
    assert_eq!(joins.len(), 1);
    let key = joins.keys().next().unwrap();
    let parts: Vec<usize> = key.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "UUID-shaped key, got {key:?}");
    assert!(
        key.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "key {key:?}"
    );
}

#[tokio::test]
async fn members_without_presence_get_no_diffs() {
    let hub = TestHub::spawn().await;
    let mut plain = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    plain
        .join_ok(TOPIC, json!({"presence": {"key": "", "enabled": false}}))
        .await;
    let mut tracker = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut tracker, "t").await;
    let r = track(&mut tracker, json!({"here": true})).await;
    own_diff_and_reply(&mut tracker, &r).await;
    plain
        .assert_silent(300, "no presence_state or diff with presence disabled")
        .await;
    // The channel is otherwise live.
    tracker.broadcast_json(TOPIC, "still", json!({})).await;
    assert_eq!(
        plain
            .next_broadcast("a broadcast to the plain member")
            .await
            .event,
        "still"
    );
}

#[tokio::test]
async fn malformed_presence_pushes_get_error_replies() {
    let hub = TestHub::spawn().await;
    let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    join_presence(&mut c, "k").await;
    for bad in [json!("a string"), json!([1, 2]), json!(5)] {
        let r = track(&mut c, bad.clone()).await;
        let reply = c.next_msg("the reply to a non-object track").await;
        assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
        assert_eq!(
            reply.payload,
            json!({"status": "error", "response": {"reason": "Presence track payload must be a map"}}),
            "payload {bad}"
        );
    }
    let r = c
        .push(
            TOPIC,
            "presence",
            json!({"type": "presence", "event": "dance"}),
        )
        .await;
    let reply = c.next_msg("the reply to an unknown presence event").await;
    assert_eq!(
        (reply.msg_ref.as_deref(), reply.status()),
        (Some(r.as_str()), "error")
    );
    c.assert_silent(200, "no diff for refused pushes").await;
}
