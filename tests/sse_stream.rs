//! Server-sent events, `GET /v1/sse/{topic}` (DESIGN §2): the response head and `retry:` preamble,
//! events whose `id` is the message's cursor (the one WebSocket members see in `meta.cursor`),
//! multi-line data, heartbeat comments, resume from `Last-Event-ID` or `?since=` exactly once,
//! a `system` event when a cursor is outside the history, authentication and authorisation
//! refusals, the three ways to pass a token, and shutdown ending open streams.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::sse::{SseClient, SseEvent, SseItem, SseOptions, query_value, sse_path};
use tests::{TestHub, Vsn, WsClient, anon, http_client, json_payload, token, token_wrong_secret};

/// How a stream is opened: on a connection of its own (the hub serves it on the raw socket) or
/// as the second request of a keep-alive connection (served through the HTTP stack, chunked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Own,
    KeepAlive,
}

/// Socket options for `via`.
fn opts(via: Via) -> SseOptions {
    SseOptions {
        keep_alive_first: via == Via::KeepAlive,
        ..SseOptions::default()
    }
}

/// Opens `path` with `headers` the `via` way; panics unless the answer is 200.
async fn open(hub: &TestHub, path: &str, headers: &[(&str, &str)], via: Via) -> SseClient {
    SseClient::request(hub, path, headers, opts(via))
        .await
        .unwrap_or_else(|r| panic!("GET {path} ({via:?}) refused: {} {}", r.status, r.body))
}

/// Each scenario runs on both serving paths, as `<scenario>::own_connection` and
/// `<scenario>::keep_alive`.
macro_rules! on_both_paths {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn own_connection() {
                super::$scenario(super::Via::Own).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keep_alive() {
                super::$scenario(super::Via::KeepAlive).await;
            }
        }
    )*};
}

on_both_paths!(
    response_head_and_retry_preamble,
    events_carry_the_cursor_event_name_and_json_data,
    heartbeat_comments_arrive_at_the_configured_interval,
    last_event_id_resume_after_a_cut_delivers_every_message_once,
    since_query_parameter_resumes_and_last_event_id_wins,
    cursor_outside_the_history_gets_a_system_event_before_live,
    malformed_cursor_is_a_400,
    missing_or_invalid_tokens_are_401,
    topics_the_principal_may_not_read_are_403,
    token_in_bearer_header_query_or_cookie_is_accepted,
    shutdown_ends_an_open_stream,
    an_expiring_token_ends_the_stream_with_a_notice,
);

/// `access_token=<anon token>`.
fn anon_query() -> String {
    format!("access_token={}", query_value(&anon()))
}

/// A WebSocket publisher joined to `wire_topic` with acknowledgements on.
async fn publisher(hub: &TestHub, wire_topic: &str) -> WsClient {
    let mut p = WsClient::connect(hub, Vsn::V2, &anon()).await;
    p.join_ok(wire_topic, json!({"broadcast": {"ack": true}}))
        .await;
    p
}

/// Publishes `{"i": k}` as event `m` for every `k` in `range` and waits for the last ack (the
/// hub publishes one connection's pushes in order, so everything is published then).
async fn publish_range(p: &mut WsClient, wire_topic: &str, range: std::ops::RangeInclusive<u64>) {
    let mut last = None;
    let what = format!("the ack of message {}", range.end());
    for k in range {
        last = Some(
            p.send_broadcast(wire_topic, "m", &json_payload(&json!({"i": k})))
                .await,
        );
    }
    if let Some(r) = last {
        let reply = p.expect_reply(wire_topic, &r, &what).await;
        assert_eq!(reply.status(), "ok", "{what}: {reply:?}");
    }
}

/// Reads events `{"i": k}` for every `k` in `range`, each exactly once and in order, with `id`
/// offset `k` in `epoch` (when given). Returns the events.
async fn expect_range(
    sse: &mut SseClient,
    range: std::ops::RangeInclusive<u64>,
    epoch: Option<&str>,
    what: &str,
) -> Vec<SseEvent> {
    let mut got = Vec::new();
    for k in range {
        let e = sse.expect_event(&format!("{what}: message {k}")).await;
        assert_eq!(
            (e.event.as_str(), e.offset()),
            ("m", k),
            "{what}: expected message {k} (a gap, duplicate or reordering), got {e:?}"
        );
        assert_eq!(e.json(), json!({"i": k}), "{what}: data of message {k}");
        if let Some(ep) = epoch {
            assert_eq!(e.epoch(), ep, "{what}: epoch of message {k}");
        }
        got.push(e);
    }
    got
}

/// Skips the `retry:` preamble, asserting it comes first.
async fn expect_preamble(sse: &mut SseClient) -> u64 {
    match sse
        .next_item("the retry preamble", Duration::from_secs(5))
        .await
    {
        Ok(SseItem::Retry(ms)) => ms,
        other => panic!("the stream must start with a retry: hint, got {other:?}"),
    }
}

async fn response_head_and_retry_preamble(via: Via) {
    let hub = TestHub::spawn().await;
    let mut sse = open(&hub, &sse_path("room:head", &anon_query()), &[], via).await;
    let ct = sse.header("content-type").unwrap_or_default().to_owned();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert!(
        sse.header("content-length").is_none(),
        "an event stream has no length: {:?}",
        sse.headers
    );
    // Which path served it: the raw socket writes the body as it is, the HTTP stack chunks it.
    assert_eq!(
        sse.header("transfer-encoding"),
        (via == Via::KeepAlive).then_some("chunked"),
        "{:?}",
        sse.headers
    );
    assert!(
        sse.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "every response carries a request id: {:?}",
        sse.headers
    );
    let retry = expect_preamble(&mut sse).await;
    assert!(
        (500..=60_000).contains(&retry),
        "a sensible reconnect delay, got {retry} ms"
    );
    // Nothing else until something is published (the default heartbeat is 15 s).
    match sse
        .next_item("nothing after the preamble", Duration::from_millis(300))
        .await
    {
        Err(tests::sse::SseError::Timeout { .. }) => {}
        other => panic!("expected nothing after the preamble, got {other:?}"),
    }
}

async fn events_carry_the_cursor_event_name_and_json_data(via: Via) {
    let hub = TestHub::spawn().await;
    // A topic that needs percent-encoding in the path: a colon and a space.
    let topic = "room:sse one";
    let wire = format!("realtime:{topic}");
    let mut sse = open(&hub, &sse_path(topic, &anon_query()), &[], via).await;
    expect_preamble(&mut sse).await;
    let mut watcher = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    watcher.join_ok(&wire, json!({})).await;
    let mut p = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    p.join_ok(&wire, json!({})).await;

    // A compact payload, one whose strings contain newlines (escaped in JSON), and one sent
    // pretty-printed: its raw text spans several lines (an empty one, CRLF and a lone CR among
    // them, all JSON whitespace), so its data does too.
    p.broadcast_json(&wire, "greet", json!({"a": 1, "s": "x"}))
        .await;
    p.broadcast_json(&wire, "lines", json!({"text": "one\ntwo\r\nthree"}))
        .await;
    let jr = p.join_ref(&wire);
    let pretty = format!(
        "{{\"topic\":{wire:?},\"event\":\"broadcast\",\"ref\":\"90\",\"join_ref\":{jr:?},\
         \"payload\":{{\"type\":\"broadcast\",\"event\":\"pretty\",\
         \"payload\":{{\n\n  \"k\": [1,\r\n    2],\r  \"v\": \"w\"\n}}}}}}"
    );
    p.send_text(pretty).await;

    let expected = [
        ("greet", json!({"a": 1, "s": "x"})),
        ("lines", json!({"text": "one\ntwo\r\nthree"})),
        ("pretty", json!({"k": [1, 2], "v": "w"})),
    ];
    let mut offsets = Vec::new();
    let mut last_cursor = None;
    for (k, (event, data)) in expected.iter().enumerate() {
        let b = watcher
            .next_broadcast(&format!("the WebSocket copy of {event}"))
            .await;
        let e = sse.expect_event(&format!("the SSE copy of {event}")).await;
        assert_eq!(&e.event, event, "event name of message {k}");
        assert_eq!(&e.json(), data, "data of {event}");
        assert_eq!(b.json(), data, "the WebSocket member's payload of {event}");
        assert_eq!(
            e.cursor(),
            b.cursor(),
            "the SSE id is the cursor a WebSocket member sees in meta.cursor ({event})"
        );
        offsets.push(e.offset());
        last_cursor = Some(b.cursor());
        if *event == "pretty" {
            assert!(
                e.data_lines >= 4,
                "multi-line JSON travels as several data: lines, got {e:?}"
            );
        } else {
            assert_eq!(e.data_lines, 1, "compact JSON is one data: line: {e:?}");
        }
    }
    assert_eq!(offsets, vec![1, 2, 3], "offsets grow by one per message");
    assert_eq!(
        sse.last_event_id.as_deref(),
        last_cursor.as_deref(),
        "the client's Last-Event-ID is the newest cursor"
    );
    sse.assert_silent(200, "nothing but the three messages")
        .await;
}

/// The epoch of a cursor.
fn sse_epoch(cursor: &str) -> String {
    cursor
        .rsplit_once(':')
        .map(|(e, _)| e.to_owned())
        .unwrap_or_default()
}

async fn heartbeat_comments_arrive_at_the_configured_interval(via: Via) {
    let hub = TestHub::spawn_with(|cfg| cfg.sse_heartbeat = Duration::from_millis(200)).await;
    let mut sse = open(&hub, &sse_path("room:beat", &anon_query()), &[], via).await;
    expect_preamble(&mut sse).await;
    let start = Instant::now();
    sse.expect_comment_within("the first heartbeat comment", Duration::from_secs(2))
        .await;
    let first = start.elapsed();
    sse.expect_comment_within("the second heartbeat comment", Duration::from_secs(2))
        .await;
    let second = start.elapsed();
    assert!(
        first >= Duration::from_millis(100) && second - first >= Duration::from_millis(100),
        "heartbeats about every 200 ms, got the first after {first:?} and the second {:?} later",
        second - first
    );
    // The stream is still live after idling on heartbeats.
    let mut p = publisher(&hub, "realtime:room:beat").await;
    publish_range(&mut p, "realtime:room:beat", 1..=1).await;
    let e = sse.expect_event("a message after the heartbeats").await;
    assert_eq!((e.event.as_str(), e.offset()), ("m", 1));
}

/// A stream cut after 150 of 200 messages, 300 more published while it is away and 100 more
/// while it reconnects: with `Last-Event-ID` it gets 151..=600, each exactly once, in order.
async fn last_event_id_resume_after_a_cut_delivers_every_message_once(via: Via) {
    let hub = TestHub::spawn().await;
    let topic = "room:sse-resume";
    let wire = format!("realtime:{topic}");
    let path = sse_path(topic, &anon_query());
    let mut sse = open(&hub, &path, &[], via).await;
    expect_preamble(&mut sse).await;
    let mut p = publisher(&hub, &wire).await;
    publish_range(&mut p, &wire, 1..=200).await;
    let first = expect_range(&mut sse, 1..=150, None, "before the cut").await;
    let epoch = first[0].epoch().to_owned();
    let last_id = first[149].cursor().to_owned();
    assert_eq!(sse.last_event_id.as_deref(), Some(last_id.as_str()));
    // Messages 151..=200 may be on the wire or queued: they are lost with the connection.
    sse.drop_abruptly();

    publish_range(&mut p, &wire, 201..=500).await;
    // More arrive while the stream reconnects and catches up.
    let wire2 = wire.clone();
    let live = tokio::spawn(async move {
        publish_range(&mut p, &wire2, 501..=600).await;
        p
    });
    let mut again = open(&hub, &path, &[("Last-Event-ID", &last_id)], via).await;
    expect_preamble(&mut again).await;
    expect_range(&mut again, 151..=600, Some(&epoch), "after Last-Event-ID").await;
    let mut p = live.await.expect("the publisher task");
    again
        .assert_silent(300, "no duplicate after message 600")
        .await;
    publish_range(&mut p, &wire, 601..=601).await;
    expect_range(&mut again, 601..=601, Some(&epoch), "live after the resume").await;
}

async fn since_query_parameter_resumes_and_last_event_id_wins(via: Via) {
    let hub = TestHub::spawn().await;
    let topic = "room:sse-since";
    let wire = format!("realtime:{topic}");
    let mut p = publisher(&hub, &wire).await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    watcher.join_ok(&wire, json!({})).await;
    publish_range(&mut p, &wire, 1..=10).await;
    let mut cursors = Vec::new();
    for k in 1..=10 {
        cursors.push(
            watcher
                .next_broadcast(&format!("live message {k}"))
                .await
                .cursor(),
        );
    }

    let q = format!("{}&since={}", anon_query(), query_value(&cursors[3]));
    let mut sse = open(&hub, &sse_path(topic, &q), &[], via).await;
    expect_preamble(&mut sse).await;
    let got = expect_range(&mut sse, 5..=10, None, "after ?since=<cursor 4>").await;
    for (e, c) in got.iter().zip(&cursors[4..]) {
        assert_eq!(e.cursor(), c);
    }
    sse.assert_silent(200, "no message before live").await;

    // `since=0`: everything the history holds.
    let q0 = format!("{}&since=0", anon_query());
    let mut all = open(&hub, &sse_path(topic, &q0), &[], via).await;
    expect_preamble(&mut all).await;
    expect_range(&mut all, 1..=10, None, "after ?since=0").await;

    // An EventSource opened with ?since= reconnects with the same URL plus Last-Event-ID: the
    // header is the newer position and wins.
    let mut both = open(
        &hub,
        &sse_path(topic, &q),
        &[("Last-Event-ID", cursors[7].as_str())],
        via,
    )
    .await;
    expect_preamble(&mut both).await;
    expect_range(&mut both, 9..=10, None, "Last-Event-ID over ?since=").await;

    publish_range(&mut p, &wire, 11..=11).await;
    for (s, name) in [
        (&mut sse, "since"),
        (&mut all, "since=0"),
        (&mut both, "both"),
    ] {
        expect_range(s, 11..=11, None, &format!("live after {name}")).await;
        s.assert_silent(100, "nothing after the live message").await;
    }
}

/// The `system` event that says the history was not recovered.
#[track_caller]
fn assert_not_recovered(e: &SseEvent, topic: &str) {
    assert_eq!(
        e.event, "system",
        "expected a system event first, got {e:?}"
    );
    assert!(e.id.is_none(), "a system event has no cursor: {e:?}");
    let v: Value = e.json();
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["channel"], topic, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not recovered"),
        "the message says so plainly: {message:?}"
    );
}

async fn cursor_outside_the_history_gets_a_system_event_before_live(via: Via) {
    let hub = TestHub::spawn_with(|cfg| cfg.history_size = 5).await;
    let topic = "room:sse-lost";
    let wire = format!("realtime:{topic}");
    let mut p = publisher(&hub, &wire).await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    watcher.join_ok(&wire, json!({})).await;
    publish_range(&mut p, &wire, 1..=10).await;
    let mut cursors = Vec::new();
    for k in 1..=10 {
        cursors.push(
            watcher
                .next_broadcast(&format!("live message {k}"))
                .await
                .cursor(),
        );
    }
    let epoch = sse_epoch(&cursors[0]);

    // Too old: offset 2 is no longer retained (the ring holds 6..=10).
    let mut old = open(
        &hub,
        &sse_path(topic, &anon_query()),
        &[("Last-Event-ID", cursors[1].as_str())],
        via,
    )
    .await;
    expect_preamble(&mut old).await;
    let e = old
        .expect_event("the system event for a too-old cursor")
        .await;
    assert_not_recovered(&e, topic);
    expect_range(&mut old, 6..=10, Some(&epoch), "what the ring still holds").await;

    // Another epoch: same shape, different history.
    let last = if epoch.ends_with('x') { 'y' } else { 'x' };
    let other = format!("{}{last}:3", &epoch[..epoch.len() - 1]);
    let q = format!("{}&since={}", anon_query(), query_value(&other));
    let mut foreign = open(&hub, &sse_path(topic, &q), &[], via).await;
    expect_preamble(&mut foreign).await;
    let e = foreign
        .expect_event("the system event for another epoch's cursor")
        .await;
    assert_not_recovered(&e, topic);

    publish_range(&mut p, &wire, 11..=11).await;
    expect_range(
        &mut old,
        11..=11,
        Some(&epoch),
        "live after the too-old cursor",
    )
    .await;
    // Whatever history the other-epoch reader gets comes in order, each once, then live.
    let mut prev = 0;
    loop {
        let e = foreign
            .expect_event("messages up to the live one after another epoch")
            .await;
        assert_eq!(e.event, "m", "{e:?}");
        assert!(e.offset() > prev, "in order and once: {prev} then {e:?}");
        prev = e.offset();
        if prev == 11 {
            break;
        }
    }
    old.assert_silent(100, "nothing after live message 11")
        .await;
    foreign
        .assert_silent(100, "nothing after live message 11")
        .await;
}

async fn malformed_cursor_is_a_400(via: Via) {
    let hub = TestHub::spawn().await;
    for bad in ["abc", "e:x", ":5"] {
        let r = SseClient::request(
            &hub,
            &sse_path("room:bad-cursor", &anon_query()),
            &[("Last-Event-ID", bad)],
            opts(via),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("Last-Event-ID {bad:?} was accepted"));
        assert_eq!(r.status, 400, "Last-Event-ID {bad:?}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR", "{}", r.body);
    }
}

/// A refused request's status and error code.
async fn refusal(hub: &TestHub, path: &str, headers: &[(&str, &str)], via: Via) -> (u16, String) {
    match SseClient::request(hub, path, headers, opts(via)).await {
        Ok(_) => panic!("GET {path} with {headers:?} was accepted"),
        Err(r) => {
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "refusals are JSON: {:?}",
                r.headers
            );
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "the error says why: {}",
                r.body
            );
            let code = r.body["error"]["code"].as_str().unwrap_or_default();
            (r.status, code.to_owned())
        }
    }
}

async fn missing_or_invalid_tokens_are_401(via: Via) {
    let hub = TestHub::spawn().await;
    let plain = sse_path("room:auth", "");
    assert_eq!(
        refusal(&hub, &plain, &[], via).await,
        (401, "AUTHENTICATION_REQUIRED".into()),
        "no token at all"
    );
    assert_eq!(
        refusal(&hub, &sse_path("room:auth", "access_token="), &[], via).await,
        (401, "AUTHENTICATION_REQUIRED".into()),
        "an empty access_token"
    );
    let bad = [
        (
            "a token signed with another secret",
            token_wrong_secret("anon", "u", 600),
        ),
        ("an expired token", token("anon", "u", -10)),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (what, t) in &bad {
        let q = format!("access_token={}", query_value(t));
        assert_eq!(
            refusal(&hub, &sse_path("room:auth", &q), &[], via).await,
            (401, "INVALID_TOKEN".into()),
            "{what} in the query"
        );
        let bearer = format!("Bearer {t}");
        assert_eq!(
            refusal(&hub, &plain, &[("Authorization", &bearer)], via).await,
            (401, "INVALID_TOKEN".into()),
            "{what} as a Bearer header"
        );
        let cookie = format!("access_token={t}");
        assert_eq!(
            refusal(&hub, &plain, &[("Cookie", &cookie)], via).await,
            (401, "INVALID_TOKEN".into()),
            "{what} as a cookie"
        );
    }
}

async fn topics_the_principal_may_not_read_are_403(via: Via) {
    let hub = TestHub::spawn_with(|cfg| cfg.simulate_builds = false).await;
    let owner = uuid::Uuid::new_v4();
    let stranger = uuid::Uuid::new_v4();
    let owner_token = token("authenticated", &owner.to_string(), 600);
    let resp = http_client()
        .post(hub.http("/sessions"))
        .bearer_auth(&owner_token)
        .json(&json!({"vibeText": "a tiny shop", "template": "marketplace"}))
        .send()
        .await
        .expect("POST /sessions");
    assert_eq!(resp.status().as_u16(), 201, "session created");
    let body: Value = resp.json().await.expect("JSON body");
    let id = body["sessionId"].as_str().expect("sessionId").to_owned();
    let topic = format!("build:{id}");

    let as_token = |t: &str| sse_path(&topic, &format!("access_token={}", query_value(t)));
    let stranger_token = token("authenticated", &stranger.to_string(), 600);
    assert_eq!(
        refusal(&hub, &as_token(&stranger_token), &[], via).await,
        (403, "FORBIDDEN".into()),
        "another user's build session"
    );
    assert_eq!(
        refusal(&hub, &as_token(&anon()), &[], via).await,
        (403, "FORBIDDEN".into()),
        "an anonymous reader of a build session"
    );
    let missing = format!("build:{}", uuid::Uuid::new_v4());
    let q = format!("access_token={}", query_value(&owner_token));
    assert_eq!(
        refusal(&hub, &sse_path(&missing, &q), &[], via).await,
        (403, "FORBIDDEN".into()),
        "a build session that does not exist"
    );
    // The owner and the service role may read it.
    let mut own = open(&hub, &as_token(&owner_token), &[], via).await;
    expect_preamble(&mut own).await;
    let service = token("service_role", "backend", 600);
    let mut svc = open(&hub, &as_token(&service), &[], via).await;
    expect_preamble(&mut svc).await;
}

async fn token_in_bearer_header_query_or_cookie_is_accepted(via: Via) {
    let hub = TestHub::spawn().await;
    let topic = "room:sse-creds";
    let wire = format!("realtime:{topic}");
    let t = anon();
    let bearer = format!("Bearer {t}");
    let cookie = format!("theme=dark; access_token={t}; other=1");
    let plain = sse_path(topic, "");
    let mut streams = vec![
        (
            "Bearer header",
            open(&hub, &plain, &[("Authorization", &bearer)], via).await,
        ),
        (
            "access_token query",
            open(&hub, &sse_path(topic, &anon_query()), &[], via).await,
        ),
        (
            "access_token cookie",
            open(&hub, &plain, &[("Cookie", &cookie)], via).await,
        ),
    ];
    let mut p = publisher(&hub, &wire).await;
    publish_range(&mut p, &wire, 1..=2).await;
    let mut ids = Vec::new();
    for (how, s) in &mut streams {
        expect_preamble(s).await;
        let got = expect_range(s, 1..=2, None, how).await;
        ids.push(got[1].cursor().to_owned());
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one cursor per message: {ids:?}"
    );
}

async fn shutdown_ends_an_open_stream(via: Via) {
    let hub = TestHub::spawn().await;
    let topic = "room:sse-bye";
    let wire = format!("realtime:{topic}");
    let mut sse = open(&hub, &sse_path(topic, &anon_query()), &[], via).await;
    expect_preamble(&mut sse).await;
    let mut p = publisher(&hub, &wire).await;
    publish_range(&mut p, &wire, 1..=1).await;
    expect_range(&mut sse, 1..=1, None, "before shutdown").await;

    let started = Instant::now();
    let stopping = tokio::spawn(hub.shutdown());
    let events = sse
        .expect_end("the end of the stream on shutdown", Duration::from_secs(5))
        .await;
    let ended_after = started.elapsed();
    assert!(
        matches!(
            sse.end_reason(),
            Some("end of stream (EOF)" | "end of the chunked body")
        ),
        "the stream ends cleanly, not with a reset: {:?}",
        sse.end_reason()
    );
    assert_eq!(
        events.len(),
        1,
        "one notice says why the stream ends (both paths): {events:?}"
    );
    for e in &events {
        assert_eq!(
            e.event, "system",
            "only a notice before the end: {events:?}"
        );
        assert_eq!(e.json()["status"], "ok", "a notice, not an error: {e:?}");
    }
    drop(sse);
    drop(p);
    let took = stopping.await.expect("the shutdown task");
    assert!(
        ended_after < Duration::from_secs(3) && took < Duration::from_secs(5),
        "stream ended after {ended_after:?}, shutdown took {took:?}"
    );
}

/// The stream is authorised by its token for as long as the token lives: when it expires the
/// reader is told why, with a `system` error, and the stream ends.
async fn an_expiring_token_ends_the_stream_with_a_notice(via: Via) {
    let hub = TestHub::spawn().await;
    let t = token("anon", "u-exp", 2);
    let q = format!("access_token={}", query_value(&t));
    let mut sse = open(&hub, &sse_path("room:sse-exp", &q), &[], via).await;
    expect_preamble(&mut sse).await;
    let events = sse
        .expect_end(
            "the end of the stream when its token expires",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(
            sse.end_reason(),
            Some("end of stream (EOF)" | "end of the chunked body")
        ),
        "the stream ends cleanly: {:?}",
        sse.end_reason()
    );
    assert_eq!(events.len(), 1, "one notice, then the end: {events:?}");
    assert_eq!(events[0].event, "system", "{events:?}");
    let v = events[0].json();
    assert_eq!(v["status"], "error", "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("expired")),
        "the notice says the token expired: {v}"
    );
}
