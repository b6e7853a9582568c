//! Chat streams `chat:<streamId>` (DESIGN §3): the service role publishes `token` deltas, then
//! `done` (with optional usage) or `error`; readers over SSE and WebSocket get them; a late
//! joiner gets exactly one `snapshot` with the text so far and its cursor, then the tail; `done`
//! carries the full text and the stream compacts to it; a slow reader's queued deltas merge so it
//! stays connected with exact text and a bounded queue; users may only send `input`, within a
//! per-user hourly limit, and the worker learns who sent it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tests::sse::{SseClient, SseEvent, SseItem, SseOptions, query_value, sse_path};
use tests::{Bcast, TestHub, Vsn, WsClient, anon, http_client, json_payload, token};

/// A fresh stream id, so tests never share a topic.
fn stream() -> String {
    format!("chat:{}", uuid::Uuid::new_v4())
}

fn wire(topic: &str) -> String {
    format!("realtime:{topic}")
}

fn service() -> String {
    token("service_role", "llm-worker", 3600)
}

/// The backend worker: a service-role WebSocket joined to the stream, acks on when `ack`.
async fn worker(hub: &TestHub, topic: &str, ack: bool) -> WsClient {
    let mut w = WsClient::connect(hub, Vsn::V2, &service()).await;
    w.join_ok(&wire(topic), json!({"broadcast": {"ack": ack}}))
        .await;
    w
}

/// Publishes `texts` as `token` events from an acking worker and waits for the last ack.
async fn publish_tokens(w: &mut WsClient, topic: &str, texts: &[String]) {
    let wire = wire(topic);
    let mut last = None;
    for t in texts {
        last = Some(
            w.send_broadcast(&wire, "token", &json_payload(&json!({"text": t})))
                .await,
        );
    }
    if let Some(r) = last {
        let reply = w.expect_reply(&wire, &r, "the ack of the last token").await;
        assert_eq!(reply.status(), "ok", "token publish refused: {reply:?}");
    }
}

/// Publishes `done` with `payload` from an acking worker and waits for its ack.
async fn publish_done(w: &mut WsClient, topic: &str, payload: Value) {
    let wire = wire(topic);
    let r = w
        .send_broadcast(&wire, "done", &json_payload(&payload))
        .await;
    let reply = w.expect_reply(&wire, &r, "the ack of done").await;
    assert_eq!(reply.status(), "ok", "done refused: {reply:?}");
}

/// Token texts `w<k> ` for `k` in `range`, with some multi-byte characters, quotes, backslashes
/// and newlines mixed in (the text must come out byte for byte).
fn texts(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range
        .map(|k| match k % 97 {
            0 => format!("é\"\\\n{k}"),
            50 => format!("→ {k}\r\n"),
            _ => format!("w{k} "),
        })
        .collect()
}

fn sse_of(topic: &str) -> String {
    sse_path(topic, &format!("access_token={}", query_value(&anon())))
}

/// Opens an SSE reader of `topic` with `headers` and skips the `retry:` preamble.
async fn sse_reader(hub: &TestHub, topic: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut s = SseClient::open(hub, &sse_of(topic), headers).await;
    match s
        .next_item("the retry preamble", Duration::from_secs(5))
        .await
    {
        Ok(SseItem::Retry(_)) => {}
        other => panic!("expected the retry preamble first, got {other:?}"),
    }
    s
}

/// What a reader reconstructs from a chat stream.
#[derive(Debug, Default)]
struct Reconstructed {
    /// The first event's name.
    first: Option<String>,
    text: String,
    snapshots: usize,
    tokens: usize,
    /// The longest token event's text, in bytes (merged deltas are long).
    largest: usize,
    /// Offsets of every event with a cursor, in arrival order.
    offsets: Vec<u64>,
    done: Option<Value>,
    /// The `error` event's payload, when the stream failed.
    error: Option<Value>,
}

impl Reconstructed {
    /// Folds one event in: a snapshot replaces the text, a token appends, done ends.
    #[track_caller]
    fn apply(&mut self, event: &str, data: &Value, offset: Option<u64>) {
        assert!(
            self.done.is_none() && self.error.is_none(),
            "nothing follows done or error, got {event} {data}"
        );
        if self.first.is_none() {
            self.first = Some(event.to_owned());
        }
        if let Some(o) = offset {
            if let Some(prev) = self.offsets.last() {
                assert!(
                    o > *prev,
                    "cursors must grow: {o} after {prev} ({event} {data})"
                );
            }
            self.offsets.push(o);
        }
        match event {
            "snapshot" => {
                self.snapshots += 1;
                self.text = data["text"].as_str().expect("snapshot text").to_owned();
            }
            "token" => {
                self.tokens += 1;
                let text = data["text"].as_str().expect("token text");
                self.largest = self.largest.max(text.len());
                self.text.push_str(text);
            }
            "done" => self.done = Some(data.clone()),
            "error" => self.error = Some(data.clone()),
            other => panic!("unexpected event {other:?} on a chat stream: {data}"),
        }
    }
}

/// Reads an SSE chat stream until `done` or `error`, continuing from `r`.
async fn sse_until_done(
    s: &mut SseClient,
    mut r: Reconstructed,
    what: &str,
    limit: Duration,
) -> Reconstructed {
    while r.done.is_none() && r.error.is_none() {
        let e: SseEvent = s
            .next_event(
                &format!(
                    "{what}: the next event before done (text so far {} bytes)",
                    r.text.len()
                ),
                limit,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let offset = e.id.as_ref().map(|_| e.offset());
        r.apply(&e.event, &e.json(), offset);
    }
    r
}

/// Reads a WebSocket chat stream until `done` or `error`, continuing from `r`.
async fn ws_until_done(
    c: &mut WsClient,
    mut r: Reconstructed,
    topic: &str,
    what: &str,
) -> Reconstructed {
    let wire = wire(topic);
    while r.done.is_none() && r.error.is_none() {
        let b: Bcast = c
            .expect_broadcast(&wire, &format!("{what}: the next event before done"))
            .await;
        r.apply(&b.event, b.json(), Some(b.offset()));
    }
    r
}

#[tokio::test]
async fn tokens_reach_sse_and_websocket_readers_then_done_with_usage() {
    let hub = TestHub::spawn().await;
    let topic = stream();
    let mut sse = sse_reader(&hub, &topic, &[]).await;
    let mut v1 = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    let mut v2 = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    v1.join_ok(&wire(&topic), json!({})).await;
    v2.join_ok(&wire(&topic), json!({})).await;
    sse.assert_silent(100, "an empty stream sends no snapshot")
        .await;

    let mut w = worker(&hub, &topic, true).await;
    let first: Vec<String> = ["Hel", "lo", ", wörld", " \"quoted\"\n", "\\"]
        .map(str::to_owned)
        .to_vec();
    publish_tokens(&mut w, &topic, &first).await;
    // Two more through the REST broadcast endpoint, as a backend without a socket would.
    let resp = http_client()
        .post(hub.http("/api/broadcast"))
        .bearer_auth(service())
        .json(&json!({"messages": [
            {"topic": topic, "event": "token", "payload": {"text": " and"}},
            {"topic": topic, "event": "token", "payload": {"text": " REST"}},
        ]}))
        .send()
        .await
        .expect("POST /api/broadcast");
    assert_eq!(resp.status().as_u16(), 202, "service REST broadcast");
    let usage = json!({"input_tokens": 3, "output_tokens": 7});
    publish_done(&mut w, &topic, json!({"usage": usage})).await;
    let full = "Hello, wörld \"quoted\"\n\\ and REST";

    let new = Reconstructed::default;
    let from_sse = sse_until_done(&mut sse, new(), "SSE reader", tests::WAIT).await;
    let from_v1 = ws_until_done(&mut v1, new(), &topic, "V1 reader").await;
    let from_v2 = ws_until_done(&mut v2, new(), &topic, "V2 reader").await;
    for (name, r) in [("SSE", &from_sse), ("V1", &from_v1), ("V2", &from_v2)] {
        assert_eq!(r.text, full, "{name}: the text");
        assert_eq!(
            r.snapshots, 0,
            "{name}: no snapshot for a reader from the start"
        );
        let done = r.done.as_ref().expect("done");
        assert_eq!(done["usage"], usage, "{name}: done keeps the usage");
        assert_eq!(done["text"], full, "{name}: done carries the full text");
        assert_eq!(r.offsets.last(), Some(&8), "{name}: done is message 8");
    }
    sse.assert_silent(100, "nothing after done").await;
}

/// Checks a late joiner's stream: one snapshot first, then the tail, the exact full text, and a
/// `done` that carries it.
#[track_caller]
fn assert_late_joiner(name: &str, r: &Reconstructed, full: &str) {
    assert_eq!(
        r.first.as_deref(),
        Some("snapshot"),
        "{name}: the snapshot comes first"
    );
    assert_eq!(r.snapshots, 1, "{name}: exactly one snapshot");
    assert!(
        r.text == full,
        "{name}: the rebuilt text differs from the published text ({} vs {} bytes)",
        r.text.len(),
        full.len()
    );
    let done = r.done.as_ref().expect("done");
    assert!(done["text"] == full, "{name}: done carries the full text");
}

/// Readers that join after 50 tokens, and others that join while the rest is being published,
/// get one `snapshot` (the text so far and its cursor) and then every later token exactly once:
/// the text they rebuild is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiners_get_one_snapshot_then_the_tail() {
    const N: usize = 600;
    let hub = TestHub::spawn().await;
    let topic = stream();
    let all = texts(1..=N);
    let full: String = all.concat();
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    watcher.join_ok(&wire(&topic), json!({})).await;
    let mut w = worker(&hub, &topic, true).await;
    publish_tokens(&mut w, &topic, &all[..50]).await;
    let so_far: String = all[..50].concat();

    // Joined after 50 tokens: the snapshot is checked in detail.
    let mut sse = sse_reader(&hub, &topic, &[]).await;
    let snap = sse
        .expect_named("snapshot", "the SSE late joiner's snapshot")
        .await;
    let data = snap.json();
    assert!(data["text"] == so_far.as_str(), "snapshot text: {data}");
    assert_eq!(data["done"], false, "{data}");
    assert_eq!(
        snap.offset(),
        50,
        "the snapshot's id is the cursor of token 50"
    );
    assert_eq!(data["cursor"], snap.cursor(), "payload cursor = event id");
    let mut v1 = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    v1.join_ok(&wire(&topic), json!({})).await;
    let b = v1
        .expect_broadcast(&wire(&topic), "the V1 late joiner's snapshot")
        .await;
    assert_eq!(b.event, "snapshot", "{b:?}");
    assert!(b.json()["text"] == so_far.as_str(), "snapshot text: {b:?}");
    assert_eq!(
        b.json()["cursor"],
        b.cursor(),
        "payload cursor = meta.cursor"
    );
    assert_eq!(
        b.cursor(),
        snap.cursor(),
        "one cursor over SSE and WebSocket"
    );
    let mut sse_r = Reconstructed::default();
    sse_r.apply("snapshot", &data, Some(snap.offset()));
    let mut v1_r = Reconstructed::default();
    v1_r.apply("snapshot", b.json(), Some(b.offset()));

    // The rest is published concurrently; two more readers join mid-stream.
    let topic2 = topic.clone();
    let rest = all[50..].to_vec();
    let publishing = tokio::spawn(async move {
        // Up to token 300 at full speed, then one token per millisecond (readers join meanwhile).
        let (fast, paced) = rest.split_at(250);
        publish_tokens(&mut w, &topic2, fast).await;
        for t in paced.chunks(1) {
            publish_tokens(&mut w, &topic2, t).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publish_done(&mut w, &topic2, json!({"usage": {"output_tokens": N}})).await;
        w
    });
    let mut seen = 0;
    while seen < 300 {
        seen = watcher
            .expect_broadcast(&wire(&topic), "the watcher's live tokens up to offset 300")
            .await
            .offset();
    }
    let mut sse2 = sse_reader(&hub, &topic, &[]).await;
    let mut v2 = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    v2.join_ok(&wire(&topic), json!({})).await;
    assert!(
        !publishing.is_finished(),
        "the mid-stream readers joined before the stream ended"
    );

    let _w = publishing.await.expect("the publishing task");
    let limit = tests::WAIT;
    let new = Reconstructed::default;
    let sse_r = sse_until_done(&mut sse, sse_r, "SSE joined after 50", limit).await;
    let v1_r = ws_until_done(&mut v1, v1_r, &topic, "V1 joined after 50").await;
    let mid_sse = sse_until_done(&mut sse2, new(), "SSE joined mid-stream", limit).await;
    let mid_v2 = ws_until_done(&mut v2, new(), &topic, "V2 joined mid-stream").await;
    assert_late_joiner("SSE joined after 50", &sse_r, &full);
    assert_late_joiner("V1 joined after 50", &v1_r, &full);
    assert_late_joiner("SSE joined mid-stream", &mid_sse, &full);
    assert_late_joiner("V2 joined mid-stream", &mid_v2, &full);
    for (name, r) in [("SSE", &mid_sse), ("V2", &mid_v2)] {
        let at = r.offsets[0];
        assert!(
            (300..=N as u64).contains(&at),
            "{name}: the mid-stream snapshot is at token {at}, then the tail"
        );
    }
    for s in [&mut sse, &mut sse2] {
        s.assert_silent(100, "nothing after done").await;
    }
}

/// After `done`, the stream is one history entry: a new reader gets one snapshot with the full
/// text, `done: true` and the usage, whether it has no cursor, a cursor that was compacted away,
/// or `since: "0"`; a reader at the `done` cursor gets nothing.
#[tokio::test]
async fn after_done_new_readers_get_the_compacted_full_text() {
    let hub = TestHub::spawn().await;
    let topic = stream();
    let all = texts(1..=120);
    let full: String = all.concat();
    let mut w = worker(&hub, &topic, true).await;
    let mut watcher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    watcher.join_ok(&wire(&topic), json!({})).await;
    publish_tokens(&mut w, &topic, &all).await;
    let usage = json!({"output_tokens": 120});
    publish_done(&mut w, &topic, json!({"usage": usage})).await;
    let live = ws_until_done(&mut watcher, Reconstructed::default(), &topic, "watcher").await;
    let done = live.done.expect("done");
    assert!(
        done["text"] == full.as_str(),
        "the live done carries the full text"
    );
    assert_eq!(done["usage"], usage);
    assert_eq!(
        live.offsets.len(),
        live.tokens + 1,
        "every live event has a cursor"
    );
    assert_eq!(live.offsets.last(), Some(&121), "done is message 121");

    let check_snapshot = |name: &str, data: &Value| {
        assert!(
            data["text"] == full.as_str(),
            "{name}: snapshot text is the full text"
        );
        assert_eq!(data["done"], true, "{name}: {data}");
        assert_eq!(data["usage"], usage, "{name}: {data}");
        let cursor = data["cursor"].as_str().expect("snapshot cursor");
        assert!(
            cursor.ends_with(":121"),
            "{name}: the done's cursor, got {cursor}"
        );
    };

    // No cursor.
    let mut fresh = sse_reader(&hub, &topic, &[]).await;
    let snap = fresh
        .expect_named("snapshot", "the snapshot after done")
        .await;
    check_snapshot("SSE without a cursor", &snap.json());
    assert_eq!(snap.offset(), 121);
    fresh
        .assert_silent(150, "one snapshot and nothing else")
        .await;
    let epoch = snap.epoch().to_owned();

    // A cursor inside the stream, compacted away: the full text instead of a replay. A notice
    // that it was not recovered may precede the snapshot.
    let old = format!("{epoch}:3");
    let mut resumed = sse_reader(&hub, &topic, &[("Last-Event-ID", old.as_str())]).await;
    let mut e = resumed
        .expect_event("the snapshot for a compacted cursor")
        .await;
    if e.event == "system" {
        e = resumed.expect_event("the snapshot after the notice").await;
    }
    assert_eq!(e.event, "snapshot", "{e:?}");
    check_snapshot("SSE from a compacted cursor", &e.json());
    resumed
        .assert_silent(150, "no replay of compacted tokens")
        .await;

    // At the done cursor: up to date, nothing to send.
    let at_done = format!("{epoch}:121");
    let mut current = sse_reader(&hub, &topic, &[("Last-Event-ID", at_done.as_str())]).await;
    current
        .assert_silent(150, "a reader at the done cursor")
        .await;

    // WebSocket: a plain join and `since: "0"`.
    for (name, config) in [
        ("V2 plain join", json!({})),
        (
            "V2 since 0",
            json!({"broadcast": {"resume": {"since": "0"}}}),
        ),
    ] {
        let mut c = WsClient::connect(&hub, Vsn::V2, &anon()).await;
        c.join_ok(&wire(&topic), config).await;
        let b = c
            .expect_broadcast(&wire(&topic), &format!("{name}: the snapshot"))
            .await;
        assert_eq!(b.event, "snapshot", "{name}: {b:?}");
        check_snapshot(name, b.json());
        assert_eq!(b.cursor(), at_done, "{name}: meta.cursor");
        c.assert_silent(150, &format!("{name}: one snapshot only"))
            .await;
    }
}

/// A reader that does not keep up (a tiny receive buffer; it stalls, then reads small chunks
/// with pauses) while 10,000 tokens are published: its queued deltas merge, so it is never
/// disconnected and ends with exactly the full text.
///
/// Memory bound: the hub closes any connection whose outbox exceeds its bounds (frames or
/// bytes), so a connection that survives stayed within them all along. The bounds here are 64
/// frames and 512 KiB; unmerged, the stream is 10,000 frames and about 880 KiB of queue
/// accounting, so the reader surviving (and `slow_closes` staying 0) shows its queue stayed
/// bounded by merging, while it fell behind by thousands of tokens (one merged event carried
/// them). The hub exposes no per-connection queue gauge, and the test process's RSS would mix
/// the hub with the test's own clients, so the outbox bounds are the measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_reader_gets_merged_deltas_exact_text_and_stays_connected() {
    slow_reader(false).await;
}

/// The same through the HTTP stack (the stream is the second request of a keep-alive
/// connection): the response body backs up instead of the raw socket, with the same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_reader_on_a_keep_alive_connection_stays_connected_too() {
    slow_reader(true).await;
}

async fn slow_reader(keep_alive_first: bool) {
    const N: usize = 10_000;
    let hub = TestHub::spawn_with(|cfg| {
        cfg.outbox_messages = 64;
        cfg.outbox_bytes = 512 * 1024;
    })
    .await;
    let topic = stream();
    // About 24 bytes per token: 240 KB of text, 700 KB of events unmerged.
    let all: Vec<String> = texts(1..=N)
        .into_iter()
        .map(|t| format!("{t:<24}"))
        .collect();
    let full: String = all.concat();
    let opts = SseOptions {
        recv_buffer: Some(4096),
        max_segment: Some(1000),
        keep_alive_first,
        read_chunk: 2048,
        ..SseOptions::default()
    };
    let mut slow = SseClient::request(&hub, &sse_of(&topic), &[], opts)
        .await
        .unwrap_or_else(|r| panic!("slow reader refused: {} {}", r.status, r.body));
    let mut fast = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    fast.join_ok(&wire(&topic), json!({})).await;
    // No acks: the worker's own outbox must not fill with 10,000 replies.
    let mut w = worker(&hub, &topic, false).await;

    let started = std::time::Instant::now();
    let topic2 = topic.clone();
    let publishing = tokio::spawn(async move {
        let wire = wire(&topic2);
        // In batches with a short pause, like a model emitting tokens, so that a reader that
        // keeps up gets most tokens as events of their own.
        for batch in all.chunks(50) {
            for t in batch {
                w.send_broadcast(&wire, "token", &json_payload(&json!({"text": t})))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        w.send_broadcast(&wire, "done", &json_payload(&json!({"usage": {"n": N}})))
            .await;
        w
    });
    let topic3 = topic.clone();
    let fast_reader = tokio::spawn(async move {
        let r = ws_until_done(&mut fast, Reconstructed::default(), &topic3, "fast reader").await;
        (r, fast, started.elapsed())
    });

    // The slow reader reads nothing until the whole stream was published and the fast reader
    // has it all (its socket fills meanwhile), then reads 2 KiB every 5 ms.
    let (fast_r, _fast, fast_took) = fast_reader.await.expect("the fast reader task");
    let _w = publishing.await.expect("the publishing task");
    slow.set_pace(2048, Some(Duration::from_millis(5)));
    let r = sse_until_done(
        &mut slow,
        Reconstructed::default(),
        "the slow reader",
        Duration::from_secs(10),
    )
    .await;
    let slow_took = started.elapsed();
    eprintln!(
        "keep-alive {keep_alive_first}: {N} tokens, {} bytes of text: slow reader {} token events (largest {} bytes) in \
         {slow_took:?}, fast reader {} (largest {} bytes) in {fast_took:?}",
        full.len(),
        r.tokens,
        r.largest,
        fast_r.tokens,
        fast_r.largest
    );
    assert!(fast_r.text == full, "the fast reader's text is exact");
    assert!(
        r.text == full,
        "the slow reader's text is exact ({} vs {} bytes)",
        r.text.len(),
        full.len()
    );
    assert_eq!(r.snapshots, 0);
    // A reader that keeps up gets events of about one publisher batch (50 tokens, 1.2 KB). The
    // slow reader's backlog, queued while its socket was full, came as merged deltas of
    // thousands of tokens.
    assert!(
        r.largest >= 48 * 1024,
        "the slow reader fell behind and got its deltas merged: {} events, the largest {} bytes",
        r.tokens,
        r.largest
    );
    assert_eq!(
        r.offsets[r.offsets.len() - 2..],
        [N as u64, N as u64 + 1],
        "the last merged delta carries the cursor of token {N}, then done"
    );
    let done = r.done.as_ref().expect("done");
    assert!(
        done["text"] == full,
        "done carries the full text (it has {:?} bytes of {})",
        done["text"].as_str().map(str::len),
        full.len()
    );
    slow.assert_silent(100, "the slow reader is still connected after done")
        .await;
    assert_eq!(
        hub.state
            .node
            .registry
            .stats
            .slow_closes
            .load(Ordering::Relaxed),
        0,
        "no connection was closed as a slow reader"
    );
}

/// An SSE reader that reconnects with `Last-Event-ID` inside a running stream gets exactly the
/// deltas it missed (no snapshot); with a cursor of another epoch it gets a snapshot instead.
#[tokio::test]
async fn sse_resume_inside_a_chat_stream_replays_the_missed_deltas() {
    let hub = TestHub::spawn().await;
    let topic = stream();
    let all = texts(1..=40);
    let mut w = worker(&hub, &topic, true).await;
    let mut first = sse_reader(&hub, &topic, &[]).await;
    publish_tokens(&mut w, &topic, &all[..20]).await;
    // Read up to token 10 (deltas may arrive merged: read until the cursor reaches 10).
    let mut r = Reconstructed::default();
    let mut last_id = String::new();
    while r.offsets.last().copied().unwrap_or(0) < 10 {
        let e = first.expect_named("token", "tokens up to 10").await;
        r.apply(&e.event, &e.json(), Some(e.offset()));
        last_id = e.cursor().to_owned();
    }
    first.drop_abruptly();
    publish_tokens(&mut w, &topic, &all[20..]).await;
    let upto = r.offsets.last().copied().unwrap_or(0) as usize;

    let mut again = sse_reader(&hub, &topic, &[("Last-Event-ID", last_id.as_str())]).await;
    publish_done(&mut w, &topic, json!({})).await;
    let resumed = sse_until_done(&mut again, r, "the resumed reader", tests::WAIT).await;
    assert_eq!(
        resumed.snapshots, 0,
        "inside the history: the missed deltas, not a snapshot"
    );
    assert!(
        resumed.text == all.concat(),
        "exact text after the resume from token {upto}"
    );
    assert_eq!(resumed.offsets.last(), Some(&41));

    // Another epoch's cursor: the text so far instead (the stream is done: compacted).
    let epoch = last_id.rsplit_once(':').map(|(e, _)| e).unwrap_or_default();
    let flip = if epoch.ends_with('x') { 'y' } else { 'x' };
    let other = format!("{}{flip}:5", &epoch[..epoch.len() - 1]);
    let mut foreign = sse_reader(&hub, &topic, &[("Last-Event-ID", other.as_str())]).await;
    let mut e = foreign.expect_event("the snapshot for another epoch").await;
    if e.event == "system" {
        e = foreign.expect_event("the snapshot after the notice").await;
    }
    assert_eq!(e.event, "snapshot", "{e:?}");
    assert!(e.json()["text"] == all.concat().as_str(), "{e:?}");
    foreign.assert_silent(150, "one snapshot only").await;
}

/// A stream that fails ends with `error`: live readers get it after the tokens, and a reader
/// that joins afterwards gets one snapshot with the text so far and the error.
#[tokio::test]
async fn error_ends_a_stream_and_late_joiners_see_it() {
    let hub = TestHub::spawn().await;
    let topic = stream();
    let mut live = sse_reader(&hub, &topic, &[]).await;
    let mut w = worker(&hub, &topic, true).await;
    let all = texts(1..=5);
    publish_tokens(&mut w, &topic, &all).await;
    let failure = json!({"message": "model overloaded", "code": 529});
    let r = w
        .send_broadcast(&wire(&topic), "error", &json_payload(&failure))
        .await;
    let reply = w.expect_reply(&wire(&topic), &r, "the ack of error").await;
    assert_eq!(reply.status(), "ok", "{reply:?}");

    let got = sse_until_done(
        &mut live,
        Reconstructed::default(),
        "live reader",
        tests::WAIT,
    )
    .await;
    assert_eq!(got.text, all.concat());
    assert_eq!(got.error.as_ref(), Some(&failure), "the error as published");
    assert!(got.done.is_none());

    let mut late = sse_reader(&hub, &topic, &[]).await;
    let snap = late
        .expect_named("snapshot", "the late joiner's snapshot")
        .await;
    let data = snap.json();
    assert!(data["text"] == all.concat().as_str(), "text so far: {data}");
    assert_eq!(data["error"], failure, "{data}");
    assert_eq!(data["done"], false, "{data}");
    assert_eq!(snap.offset(), 6, "the snapshot reflects the error's cursor");
    late.assert_silent(150, "one snapshot only").await;
}

#[tokio::test]
async fn only_the_service_role_publishes_on_a_chat_stream() {
    let hub = TestHub::spawn().await;
    let topic = stream();
    let mut sse = sse_reader(&hub, &topic, &[]).await;
    let mut user = WsClient::connect(&hub, Vsn::V1, &token("authenticated", "user-7", 600)).await;
    user.join_ok(&wire(&topic), json!({"broadcast": {"ack": true}}))
        .await;
    for event in ["token", "done", "error"] {
        let r = user
            .broadcast_json(&wire(&topic), event, json!({"text": "forged"}))
            .await;
        let reply = user
            .expect_reply(&wire(&topic), &r, &format!("the reply to a user's {event}"))
            .await;
        assert_eq!(reply.status(), "error", "{event}: {reply:?}");
        let reason = reply.response()["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("Unauthorized"),
            "{event}: reason {reason:?}"
        );
    }
    let resp = http_client()
        .post(hub.http("/api/broadcast"))
        .bearer_auth(anon())
        .json(&json!({"messages": [{"topic": topic, "event": "token", "payload": {"text": "x"}}]}))
        .send()
        .await
        .expect("POST /api/broadcast");
    assert_eq!(
        resp.status().as_u16(),
        403,
        "a user's REST token is refused"
    );
    sse.assert_silent(200, "no forged token reached a reader")
        .await;
    // The real worker still can.
    let mut w = worker(&hub, &topic, true).await;
    publish_tokens(&mut w, &topic, &["real".to_owned()]).await;
    let e = sse.expect_named("token", "the worker's token").await;
    assert_eq!(e.json(), json!({"text": "real"}));
    assert_eq!(e.offset(), 1, "refused events took no offset");
}

/// Users send `input` over WebSocket within a per-user hourly limit; the worker receives the
/// accepted ones with the sender added (a forged `user` is overwritten); the one past the limit
/// is refused with `RateLimitExceeded` and reaches no one.
#[tokio::test]
async fn user_input_is_rate_limited_per_user_and_reaches_the_worker() {
    let hub = TestHub::spawn_with(|cfg| cfg.chat_input_per_hour = 3).await;
    let topic = stream();
    let wire = wire(&topic);
    let mut w = worker(&hub, &topic, true).await;
    let mut alice = WsClient::connect(&hub, Vsn::V1, &token("authenticated", "alice", 600)).await;
    alice
        .join_ok(&wire, json!({"broadcast": {"ack": true}}))
        .await;
    let mut bob = WsClient::connect(&hub, Vsn::V2, &token("authenticated", "bob", 600)).await;
    bob.join_ok(&wire, json!({})).await;

    for k in 1..=3 {
        let r = alice
            .broadcast_json(
                &wire,
                "input",
                json!({"message": format!("hi {k}"), "user": "admin"}),
            )
            .await;
        let reply = alice
            .expect_reply(&wire, &r, &format!("the ack of alice's input {k}"))
            .await;
        assert_eq!(reply.status(), "ok", "input {k}: {reply:?}");
        let b = w
            .expect_broadcast(&wire, &format!("alice's input {k} at the worker"))
            .await;
        assert_eq!(b.event, "input");
        assert_eq!(
            b.json(),
            &json!({"message": format!("hi {k}"), "user": "alice"}),
            "the worker learns the real sender"
        );
    }
    let r = alice
        .broadcast_json(&wire, "input", json!({"message": "hi 4"}))
        .await;
    let reply = alice
        .expect_reply(&wire, &r, "the reply to alice's 4th input")
        .await;
    assert_eq!(reply.status(), "error", "{reply:?}");
    let reason = reply.response()["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("RateLimitExceeded"), "reason {reason:?}");
    assert!(
        reason.contains('3'),
        "the reason names the limit: {reason:?}"
    );
    w.assert_silent(200, "the refused input reaches no one")
        .await;

    // Inputs are broadcasts: other readers of the stream see the accepted ones, not the 4th.
    for k in 1..=3 {
        let b = bob
            .expect_broadcast(&wire, &format!("alice's input {k} at bob"))
            .await;
        assert_eq!(b.event, "input");
        assert_eq!(b.json()["user"], "alice");
        assert_eq!(b.json()["message"], format!("hi {k}"));
    }
    // Bob has a quota of his own (and, without acks, hears nothing back when accepted).
    bob.send_broadcast(&wire, "input", &json_payload(&json!({"message": "hello"})))
        .await;
    let b = w.expect_broadcast(&wire, "bob's input at the worker").await;
    assert_eq!(b.json(), &json!({"message": "hello", "user": "bob"}));
    bob.assert_silent(100, "no reply and no echo of an accepted input")
        .await;
    // A non-object input is refused, whoever sends it.
    let r = alice.broadcast_json(&wire, "input", json!("text")).await;
    let reply = alice
        .expect_reply(&wire, &r, "the reply to a string input")
        .await;
    assert_eq!(reply.status(), "error", "{reply:?}");
}
