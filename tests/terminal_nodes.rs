//! A terminal (issue 6) whose host and viewers sit on different hub processes on one Redis: the
//! host (a WebSocket client echoing its input back as output) on node A, viewers on B and C.
//! Every byte value round-trips B → A → B and C; a viewer that does not drive is refused and its
//! bytes never reach the host; `take_control` hands the keyboard over across nodes; a viewer
//! reconnecting on another node with its cursor gets exactly what it missed; a host moving to
//! another node replaces the old connection and the byte stream continues; the terminal's
//! presence (host, viewers, who drives) reaches a Phoenix client on any node. The real PTY host
//! (`hub terminal-agent`) on one node serves viewers on the others.
//!
//! Needs Redis and the hub binary: run with `scripts/test`. Uses Redis database 7.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tests::nodes::{Node, start_nodes};
use tests::redis_backend::TestRedis;
use tests::terminal::{Agent, EchoHost, Term};
use tests::{Frame, Msg, Vsn, WAIT, WsClient, token};

const DB: u32 = 7;

async fn three_nodes() -> (TestRedis, Vec<Node>) {
    let redis = TestRedis::file_db(DB);
    let nodes = start_nodes(&["A", "B", "C"], &redis.url, &[]).await;
    (redis, nodes)
}

/// A service-role token naming `sub` (hosts, drives and watches any terminal).
fn service(sub: &str) -> String {
    token("service_role", sub, 3600)
}

/// A terminal id no other test uses (Redis pub/sub channels are server-wide).
fn terminal_id(what: &str) -> String {
    format!("tn-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A viewer `sub` of `id` on `node` that waits until it knows the host is connected.
async fn viewer(node: &Node, id: &str, sub: &str) -> Term {
    let name = format!("{sub} on node {}", node.name);
    let mut v = Term::connect(
        node.addr,
        id,
        &format!("access_token={}", service(sub)),
        &name,
    )
    .await;
    v.expect_host(&format!("{name}: the host on another node"))
        .await;
    v
}

/// Waits until `v` has received `n` bytes in all and checks the bytes after `from`.
async fn expect_bytes(v: &mut Term, from: usize, want: &[u8], what: &str) {
    v.expect_len(from + want.len(), what).await;
    assert_eq!(
        tests::terminal::show(&v.out[from..]),
        tests::terminal::show(want),
        "{}: {what}: exactly these bytes",
        v.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_refusals_handoff_and_resume_across_nodes() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = terminal_id("relay");
    let host = EchoHost::start(a.addr, &id, &service("host")).await;
    let mut vb = viewer(b, &id, "viewer-b").await;
    let mut vc = viewer(c, &id, "viewer-c").await;

    // All 256 byte values, B → host on A → B and C, unchanged.
    let all: Vec<u8> = (0..=255u8).collect();
    vb.send_bytes(&all).await;
    expect_bytes(&mut vb, 0, &all, "the echo of every byte value").await;
    expect_bytes(&mut vc, 0, &all, "B's echoed input on C").await;
    vb.expect_driver(Some("viewer-b"), "B drives by typing")
        .await;
    vc.expect_driver(Some("viewer-b"), "C told that B drives")
        .await;
    assert_eq!(host.input(), all, "the host got B's bytes once, in order");

    // C does not drive: refused, and its bytes never reach the host (B's later input does, and
    // the relay topic is ordered, so C's would have arrived first).
    vc.send_bytes(b"from-c").await;
    vc.expect_error("another viewer is driving", "the refusal of C's input")
        .await;
    let mut expected_input = all.clone();
    let n = vb.out.len();
    vb.send_bytes(b"sentinel").await;
    expect_bytes(&mut vb, n, b"sentinel", "B's sentinel echoed").await;
    expect_bytes(&mut vc, n, b"sentinel", "B's sentinel on C").await;
    expected_input.extend_from_slice(b"sentinel");
    assert_eq!(
        tests::terminal::show(&host.input()),
        tests::terminal::show(&expected_input),
        "C's refused bytes never reached the host"
    );

    // C takes control; its input reaches the host, B's is refused.
    vc.send_json(json!({"type": "take_control"})).await;
    vc.expect_driver(Some("viewer-c"), "C took control").await;
    vb.expect_driver(Some("viewer-c"), "B told that C drives")
        .await;
    vb.send_bytes(b"from-b").await;
    vb.expect_error(
        "another viewer is driving",
        "the refusal of B's input after the handoff",
    )
    .await;
    let n = vc.out.len();
    vc.send_bytes(b"c-types").await;
    expect_bytes(&mut vc, n, b"c-types", "C's input echoed").await;
    expect_bytes(&mut vb, n, b"c-types", "C's input echoed on B").await;
    expected_input.extend_from_slice(b"c-types");
    assert_eq!(
        tests::terminal::show(&host.input()),
        tests::terminal::show(&expected_input),
        "C's input reached the host, B's refused bytes did not"
    );

    // B goes away and comes back on C with its cursor: exactly what it missed, then live.
    let cursor = vb.offset();
    assert_eq!(cursor, vc.offset());
    vb.close().await;
    let n = vc.out.len();
    vc.send_bytes(b"while-away").await;
    expect_bytes(&mut vc, n, b"while-away", "output while B is away").await;
    let mut back = Term::connect(
        c.addr,
        &id,
        &format!("cursor={cursor}&access_token={}", service("viewer-b")),
        "viewer-b back on node C",
    )
    .await;
    assert_eq!(
        (
            back.connected["cursor"].as_u64(),
            back.connected["continuous"].as_bool(),
            back.connected["host"].as_bool(),
            back.connected["driver"].as_str(),
        ),
        (Some(vc.offset()), Some(true), Some(true), Some("viewer-c")),
        "connected after a resume: {}",
        back.connected
    );
    expect_bytes(&mut back, 0, b"while-away", "the missed output").await;
    let n = vc.out.len();
    vc.send_bytes(b"+live").await;
    expect_bytes(&mut vc, n, b"+live", "live output on C").await;
    expect_bytes(
        &mut back,
        0,
        b"while-away+live",
        "the missed output once, then live",
    )
    .await;
    assert_eq!(back.offset(), vc.offset());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_moves_to_another_node_and_the_stream_continues() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = terminal_id("move");
    let mut old_host = EchoHost::start(a.addr, &id, &service("host")).await;
    let mut vb = viewer(b, &id, "viewer-b").await;
    let mut vc = viewer(c, &id, "viewer-c").await;
    vb.send_bytes(b"before-move").await;
    expect_bytes(&mut vb, 0, b"before-move", "the echo through the host on A").await;
    expect_bytes(&mut vc, 0, b"before-move", "the same on C").await;

    let new_host = EchoHost::start(b.addr, &id, &service("host")).await;
    assert_eq!(
        new_host.connected["cursor"], 11,
        "the new host continues the byte stream: {}",
        new_host.connected
    );
    let closed = old_host.ended("the old host connection to be closed").await;
    assert_eq!(
        closed,
        Some((4000, "replaced by a new host connection".into())),
        "the old host connection is closed with 4000"
    );
    vb.expect_type("host_connected", "B told a new host connected")
        .await;
    vc.expect_type("host_connected", "C told a new host connected")
        .await;

    let n = vb.out.len();
    vb.send_bytes(b"|after-move").await;
    expect_bytes(&mut vb, n, b"|after-move", "the echo through the host on B").await;
    expect_bytes(&mut vc, n, b"|after-move", "the same on C").await;
    assert_eq!(old_host.input(), b"before-move");
    assert_eq!(new_host.input(), b"|after-move");
    for v in [&vb, &vc] {
        assert!(
            !v.has_text("host_disconnected"),
            "{}: a replaced host is not a lost one: {:?}",
            v.name,
            v.all_texts
        );
    }

    // Consecutive offsets: a viewer arriving on A (which no longer hosts) gets one stream.
    let mut late = viewer(a, &id, "late").await;
    assert_eq!(late.connected["cursor"], 22, "{}", late.connected);
    expect_bytes(
        &mut late,
        0,
        b"before-move|after-move",
        "the whole stream on A",
    )
    .await;
    let resumed = Term::connect(
        a.addr,
        &id,
        &format!("cursor=11&access_token={}", service("resumer")),
        "resumer on A",
    )
    .await;
    let mut resumed = resumed;
    expect_bytes(
        &mut resumed,
        0,
        b"|after-move",
        "the output after offset 11",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_on_one_node_serves_viewers_on_the_others() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = terminal_id("agent");
    let _agent = Agent::start(a.addr, &id, &service("terminal-agent"), &["/bin/sh"]);
    let mut vb = viewer(b, &id, "viewer-b").await;
    let mut vc = viewer(c, &id, "viewer-c").await;

    // Shell arithmetic: the terminal's echo of the typed line never matches the output.
    vb.send_bytes(b"echo multi-$((1+1))\r").await;
    vb.expect_output(b"multi-2\r\n", "the shell's output on B")
        .await;
    vc.expect_output(b"multi-2\r\n", "the shell's output on C")
        .await;
    vb.send_json(json!({"type": "resize", "cols": 100, "rows": 30}))
        .await;
    vb.send_bytes(b"stty size\r").await;
    vc.expect_output(b"\n30 100\r\n", "the PTY's size after B's resize, on C")
        .await;
    vc.send_bytes(b"echo from-c-$((1+1))\r").await;
    vc.expect_error("another viewer is driving", "the refusal of C's input")
        .await;
    vb.send_bytes(b"echo done-$((1+1))\r").await;
    vb.expect_output(b"done-2\r\n", "B's next command").await;
    assert_eq!(
        tests::terminal::count(&vb.out, b"from-c"),
        0,
        "C's refused keystrokes never reached the PTY: \"{}\"",
        tests::terminal::show(&vb.out)
    );
}

/// A Phoenix client's view of a presence topic: key → metas.
#[derive(Debug, Default)]
struct Presence(BTreeMap<String, Vec<Value>>);

impl Presence {
    fn apply(&mut self, m: &Msg) {
        match m.event.as_str() {
            "presence_state" => {
                self.0.clear();
                self.join(&m.payload);
            }
            "presence_diff" => {
                for (key, entry) in m.payload["leaves"].as_object().into_iter().flatten() {
                    let gone: Vec<&Value> = entry["metas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|meta| &meta["phx_ref"])
                        .collect();
                    if let Some(metas) = self.0.get_mut(key) {
                        metas.retain(|meta| !gone.contains(&&meta["phx_ref"]));
                        if metas.is_empty() {
                            self.0.remove(key);
                        }
                    }
                }
                self.join(&m.payload["joins"]);
            }
            _ => {}
        }
    }

    fn join(&mut self, side: &Value) {
        for (key, entry) in side.as_object().into_iter().flatten() {
            let metas = entry["metas"].as_array().cloned().unwrap_or_default();
            self.0.entry(key.clone()).or_default().extend(metas);
        }
    }

    /// `{key: [{role, driver}…]}`: what the test expects, without refs.
    fn summary(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (key, metas) in &self.0 {
            let list: Vec<Value> = metas
                .iter()
                .map(|m| json!({"user": m["user"], "role": m["role"], "driver": m["driver"]}))
                .collect();
            out.insert(key.clone(), Value::Array(list));
        }
        Value::Object(out)
    }
}

/// Reads presence messages on `topic` until the view's summary is `want`, within [`WAIT`].
async fn wait_presence(
    c: &mut WsClient,
    topic: &str,
    view: &mut Presence,
    want: &Value,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let vsn = c.vsn;
    while view.summary() != *want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let label = format!("presence {what}: want {want}, have {}", view.summary());
        assert!(!left.is_zero(), "timed out waiting for {label}");
        let m = c
            .expect_frame_within(&label, left, |f| match f {
                Frame::Text(v) => Msg::parse(vsn, v).filter(|m| {
                    m.topic == topic && (m.event == "presence_diff" || m.event == "presence_state")
                }),
                _ => None,
            })
            .await;
        view.apply(&m);
    }
}

fn meta(sub: &str, role: &str, driver: bool) -> Value {
    json!([{"user": sub, "role": role, "driver": driver}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_shows_the_host_viewers_and_driver_on_every_node() {
    let (_redis, nodes) = three_nodes().await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = terminal_id("presence");
    let _host = EchoHost::start(a.addr, &id, &service("host")).await;
    let mut vb = viewer(b, &id, "viewer-b").await;
    let mut vc = viewer(c, &id, "viewer-c").await;

    let topic = format!("realtime:terminal:{id}");
    let mut watcher = a.ws(Vsn::V1, &service("presence-watcher")).await;
    watcher
        .join_ok(
            &topic,
            json!({"presence": {"key": "watcher", "enabled": true}}),
        )
        .await;
    let mut view = Presence::default();
    let want = json!({
        "host": meta("host", "host", false),
        "viewer-b": meta("viewer-b", "viewer", false),
        "viewer-c": meta("viewer-c", "viewer", false),
    });
    wait_presence(
        &mut watcher,
        &topic,
        &mut view,
        &want,
        "host on A, viewers on B and C",
    )
    .await;

    vb.send_bytes(b"x").await;
    vb.expect_driver(Some("viewer-b"), "B drives by typing")
        .await;
    let want = json!({
        "host": meta("host", "host", false),
        "viewer-b": meta("viewer-b", "viewer", true),
        "viewer-c": meta("viewer-c", "viewer", false),
    });
    wait_presence(&mut watcher, &topic, &mut view, &want, "B driving").await;

    vc.send_json(json!({"type": "take_control"})).await;
    vc.expect_driver(Some("viewer-c"), "C took control").await;
    let want = json!({
        "host": meta("host", "host", false),
        "viewer-b": meta("viewer-b", "viewer", false),
        "viewer-c": meta("viewer-c", "viewer", true),
    });
    wait_presence(
        &mut watcher,
        &topic,
        &mut view,
        &want,
        "C driving after take_control",
    )
    .await;

    // A viewer that leaves leaves the presence of every node.
    vb.close().await;
    let want = json!({
        "host": meta("host", "host", false),
        "viewer-c": meta("viewer-c", "viewer", true),
    });
    wait_presence(&mut watcher, &topic, &mut view, &want, "B gone").await;
}
