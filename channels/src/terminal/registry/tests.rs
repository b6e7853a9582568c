//! The relay protocol between nodes, simulated with an in-order bus (what the broker provides).

use std::collections::VecDeque;

use super::*;
use crate::cursor::Cursor;
use crate::outbox::OutboxLimits;

/// Nodes sharing one ordered relay topic per terminal, like the broker.
struct Bus {
    nodes: Vec<Terminals>,
    rxs: Vec<tokio::sync::mpsc::Receiver<Job>>,
    log: Vec<Arc<Envelope>>,
}

impl Bus {
    fn new(n: usize) -> Self {
        Self::with_config(n, TerminalConfig::default())
    }

    fn with_config(n: usize, config: TerminalConfig) -> Self {
        let nodes: Vec<Terminals> = (0..n)
            .map(|_| Terminals::new(config, Weak::new()))
            .collect();
        let rxs = nodes.iter().map(|t| t.take_jobs().unwrap()).collect();
        Self {
            nodes,
            rxs,
            log: Vec::new(),
        }
    }

    /// Publishes `relays` and everything they cause, in order, to every node.
    fn publish(&mut self, relays: Vec<Relay>) {
        let mut queue: VecDeque<Relay> = relays.into();
        while let Some(r) = queue.pop_front() {
            let env = Arc::new(Envelope {
                topic: relay_topic(&r.id).unwrap(),
                event: r.event.into(),
                payload: r.payload,
                cursor: Some(Cursor::new("e".into(), self.log.len() as u64 + 1)),
                time_ms: 0,
            });
            self.log.push(env.clone());
            for n in &self.nodes {
                n.apply(&env);
            }
            for rx in &mut self.rxs {
                while let Ok(job) = rx.try_recv() {
                    if let Job::Relay(r) = job {
                        queue.push_back(r);
                    }
                }
            }
        }
    }

    /// A connection opening on node `n`: loads the relay topic from the log if needed.
    fn open(&mut self, n: usize, id: &str) {
        if self.nodes[n].open(id) {
            let history = self.log.clone();
            let out = self.nodes[n].load_history(id, &history);
            self.publish(out);
            let out = self.nodes[n].finish_load(id);
            self.publish(out);
        }
    }

    fn host(&mut self, n: usize, id: &str, conn: ConnId) -> Outbox {
        self.open(n, id);
        let o = outbox();
        let out = self.nodes[n].attach_host(id, conn, o.clone());
        self.publish(out);
        o
    }

    fn viewer(&mut self, n: usize, id: &str, conn: ConnId, sub: &str, drive: bool) -> Outbox {
        self.open(n, id);
        let o = outbox();
        self.nodes[n]
            .attach_viewer(id, conn, sub, drive, None, o.clone())
            .unwrap();
        o
    }

    fn output(&mut self, n: usize, id: &str, conn: ConnId, bytes: &[u8]) {
        let r = self.nodes[n]
            .host_output(id, conn, bytes)
            .expect("host output");
        self.publish(vec![r]);
    }

    fn input(&mut self, n: usize, id: &str, conn: ConnId, bytes: &[u8]) -> Result<(), Refusal> {
        let r = self.nodes[n].viewer_input(id, conn, bytes)?;
        self.publish(vec![r]);
        Ok(())
    }

    fn ask(&mut self, n: usize, id: &str, conn: ConnId, ask: Ask) -> Result<(), Refusal> {
        let r = self.nodes[n].viewer_ask(id, conn, ask, None)?;
        self.publish(vec![r]);
        Ok(())
    }
}

fn outbox() -> Outbox {
    Outbox::new(OutboxLimits::default())
}

fn frames(o: &Outbox) -> Vec<OutFrame> {
    let mut v = Vec::new();
    o.drain(&mut v);
    v
}

fn texts(fs: &[OutFrame]) -> Vec<Value> {
    fs.iter()
        .filter_map(|f| match f {
            OutFrame::Text(b) => serde_json::from_slice(b).ok(),
            _ => None,
        })
        .collect()
}

fn bytes(fs: &[OutFrame]) -> Vec<u8> {
    fs.iter()
        .filter_map(|f| match f {
            OutFrame::Binary(b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn output_reaches_viewers_on_every_node_and_a_reconnect_resumes() {
    let mut bus = Bus::new(2);
    let host = bus.host(0, "t", 1);
    assert_eq!(texts(&frames(&host))[0]["type"], "connected");
    let near = bus.viewer(0, "t", 2, "alice", true);
    let far = bus.viewer(1, "t", 3, "bob", true);
    assert_eq!(
        texts(&frames(&far))[0]["host"],
        true,
        "node 1 learned of the host"
    );
    frames(&near);
    bus.output(0, "t", 1, b"hello ");
    bus.output(0, "t", 1, b"world");
    assert_eq!(bytes(&frames(&near)), b"hello world");
    assert_eq!(bytes(&frames(&far)), b"hello world");
    // bob drops, output continues, bob comes back on node 1 with cursor 6.
    bus.nodes[1].detach_viewer("t", 3);
    bus.nodes[1].close("t");
    bus.output(0, "t", 1, b"!");
    bus.open(1, "t");
    let back = outbox();
    bus.nodes[1]
        .attach_viewer("t", 4, "bob", true, Some(6), back.clone())
        .unwrap();
    let got = frames(&back);
    assert_eq!(texts(&got)[0]["cursor"], 12);
    assert_eq!(bytes(&got), b"world!", "rebuilt from history, once");
}

#[test]
fn one_driver_across_nodes_with_handoff() {
    let mut bus = Bus::new(2);
    let host = bus.host(0, "t", 1);
    let owner = bus.viewer(1, "t", 10, "owner", true);
    let guest = bus.viewer(1, "t", 11, "guest", false);
    let agent = bus.viewer(0, "t", 12, "agent", true);
    frames(&host);
    assert_eq!(
        bus.input(1, "t", 11, b"x"),
        Err(super::super::control::NOT_ALLOWED)
    );
    bus.input(1, "t", 10, b"ls\r").unwrap();
    let to_host = frames(&host);
    assert_eq!(
        bytes(&to_host),
        b"ls\r",
        "the owner's input reached the host on the other node"
    );
    assert_eq!(texts(&to_host)[0]["driver"], "owner");
    // The agent (other node) is refused by the authority.
    bus.input(0, "t", 12, b"rm").unwrap();
    assert!(
        bytes(&frames(&host)).is_empty(),
        "a non-driver's input never reaches the host"
    );
    let refusal = texts(&frames(&agent));
    let last = refusal.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["message"], super::super::control::NOT_DRIVER);
    // Handoff.
    bus.ask(0, "t", 12, Ask::TakeControl).unwrap();
    let seen = texts(&frames(&guest));
    assert_eq!(seen.last().unwrap()["driver"], "agent");
    bus.input(0, "t", 12, b"y").unwrap();
    assert_eq!(bytes(&frames(&host)), b"y");
    // The driver leaves: nobody drives, everyone is told.
    let out = bus.nodes[0].detach_viewer("t", 12);
    bus.publish(out);
    let seen = texts(&frames(&owner));
    assert_eq!(seen.last().unwrap()["driver"], Value::Null);
}

#[test]
fn host_drop_and_return_are_announced_and_input_waits_for_the_host() {
    let mut bus = Bus::new(2);
    let v = bus.viewer(1, "t", 2, "u", true);
    assert_eq!(texts(&frames(&v))[0]["host"], false);
    assert_eq!(bus.input(1, "t", 2, b"x"), Err(NO_HOST));
    let _host = bus.host(0, "t", 1);
    let out = bus.nodes[0].detach_host("t", 1);
    bus.publish(out);
    let _again = bus.host(0, "t", 5);
    let seen: Vec<_> = texts(&frames(&v))
        .iter()
        .map(|m| m["type"].clone())
        .collect();
    assert_eq!(
        seen,
        ["host_connected", "host_disconnected", "host_connected"]
    );
    bus.input(1, "t", 2, b"x").unwrap();
}

#[test]
fn a_host_on_another_node_replaces_the_old_one() {
    let mut bus = Bus::new(2);
    let old = bus.host(0, "t", 1);
    bus.output(0, "t", 1, b"abc");
    let new = bus.host(1, "t", 7);
    assert!(old.is_closed(), "the old host connection is closed");
    let c = texts(&frames(&new));
    assert_eq!(
        c[0]["cursor"], 3,
        "the new host continues the same byte stream"
    );
    bus.output(1, "t", 7, b"d");
    let v = bus.viewer(0, "t", 9, "u", true);
    assert_eq!(bytes(&frames(&v)), b"abcd");
}

#[test]
fn a_user_may_view_five_terminals() {
    let ts = Terminals::new(TerminalConfig::default(), Weak::new());
    for k in 0..5 {
        ts.attach_viewer(&format!("t{k}"), k, "u", true, None, outbox())
            .unwrap();
    }
    ts.attach_viewer("t0", 99, "u", true, None, outbox())
        .unwrap();
    assert_eq!(
        ts.attach_viewer("t5", 5, "u", true, None, outbox()),
        Err(AttachError::TooMany(5))
    );
    ts.attach_viewer("t5", 6, "other", true, None, outbox())
        .unwrap();
    ts.detach_viewer("t4", 4);
    ts.attach_viewer("t5", 7, "u", true, None, outbox())
        .unwrap();
}

#[test]
fn idle_terminals_are_freed() {
    let ts = Terminals::new(
        TerminalConfig {
            idle_free: Duration::from_secs(60),
            ..TerminalConfig::default()
        },
        Weak::new(),
    );
    ts.open("t");
    ts.open("busy");
    ts.close("t");
    let now = Instant::now();
    assert_eq!(ts.sweep(now), 0);
    assert_eq!(ts.sweep(now + Duration::from_secs(61)), 1);
    assert_eq!(ts.len(), 1, "the terminal with a connection stays");
}

#[test]
fn viewers_are_told_when_a_new_host_replaces_the_old_one() {
    let mut bus = Bus::new(4);
    let _old = bus.host(0, "t", 1);
    let v = bus.viewer(2, "t", 9, "u", true);
    let hosts = |v: &Outbox| -> Vec<Value> {
        texts(&frames(v))
            .into_iter()
            .map(|m| m["type"].clone())
            .filter(|t| t.as_str().is_some_and(|t| t.starts_with("host_")))
            .collect()
    };
    assert_eq!(hosts(&v), Vec::<Value>::new(), "the host was there already");
    let _moved = bus.host(1, "t", 7);
    assert_eq!(hosts(&v), ["host_connected"], "a host on another node");
    let _replaced = bus.host(1, "t", 8);
    assert_eq!(
        hosts(&v),
        ["host_connected"],
        "a new connection on the same node"
    );
    // A node starting to relay says hello; the answer names the same host: no change.
    let _late = bus.viewer(3, "t", 4, "w", true);
    assert_eq!(hosts(&v), Vec::<Value>::new(), "hello is not a host change");
}

#[test]
fn a_leaving_connection_leaves_the_presence_of_other_nodes_too() {
    let registry = Arc::new(Registry::new(16));
    let ts = Terminals::new(TerminalConfig::default(), Arc::downgrade(&registry));
    let mut jobs = ts.take_jobs().unwrap();
    ts.attach_viewer("t", 3, "u", true, None, outbox()).unwrap();
    ts.detach_viewer("t", 3);
    ts.attach_host("t", 4, outbox());
    ts.detach_host("t", 4);
    let mut seen = Vec::new();
    while let Ok(job) = jobs.try_recv() {
        match job {
            Job::Track(topic, member, key, _) => seen.push(format!("track {topic} {member} {key}")),
            Job::Untrack(topic, member) => seen.push(format!("untrack {topic} {member}")),
            Job::Relay(_) => {}
        }
    }
    assert_eq!(
        seen,
        [
            "track terminal:t 3 u",
            "untrack terminal:t 3",
            "track terminal:t 4 host",
            "untrack terminal:t 4"
        ]
    );
}

#[test]
fn a_new_host_node_starts_with_nobody_driving_and_every_node_agrees() {
    let mut bus = Bus::new(2);
    let _old = bus.host(0, "t", 1);
    let owner = bus.viewer(1, "t", 10, "owner", true);
    let _agent = bus.viewer(1, "t", 11, "agent", true);
    bus.input(1, "t", 10, b"x").unwrap();
    // The host moves to node 1: the driver is reset everywhere, so the next typist drives.
    let new = bus.host(1, "t", 2);
    let c = texts(&frames(&new));
    assert_eq!(c[0]["driver"], Value::Null);
    let seen = texts(&frames(&owner));
    assert_eq!(seen.last().unwrap()["driver"], Value::Null, "{seen:?}");
    bus.input(1, "t", 11, b"y").unwrap();
    assert_eq!(bytes(&frames(&new)), b"y");
    assert_eq!(texts(&frames(&owner)).last().unwrap()["driver"], "agent");
}

#[test]
fn an_unchanged_size_is_not_repeated_to_viewers() {
    let mut bus = Bus::new(2);
    let _host = bus.host(0, "t", 1);
    let v = bus.viewer(0, "t", 2, "u", true);
    frames(&v);
    // Another node starts relaying: the authority answers its hello with the (same) size.
    let _far = bus.viewer(1, "t", 3, "w", true);
    assert!(
        texts(&frames(&v)).iter().all(|m| m["type"] != "resize"),
        "no resize for an unchanged size"
    );
}

fn small_outbox() -> Outbox {
    Outbox::new(OutboxLimits {
        max_frames: 64,
        max_bytes: 1000,
    })
}

#[test]
fn a_slow_viewer_skips_ahead_instead_of_overflowing_then_catches_up_exactly() {
    let mut bus = Bus::new(1);
    let _host = bus.host(0, "t", 1);
    bus.open(0, "t");
    let slow = small_outbox();
    bus.nodes[0]
        .attach_viewer("t", 2, "u", true, None, slow.clone())
        .unwrap();
    let fast = bus.viewer(0, "t", 3, "w", true);
    let mut all = Vec::new();
    for k in 0..10u8 {
        let chunk = vec![k; 200];
        all.extend_from_slice(&chunk);
        bus.output(0, "t", 1, &chunk);
    }
    assert!(!slow.is_closed(), "a slow viewer is never disconnected");
    assert_eq!(bytes(&frames(&fast)), all, "the others are not held back");
    let first = frames(&slow);
    let mut got = bytes(&first);
    assert!(
        got.len() < all.len(),
        "the slow viewer skipped while its queue was full"
    );
    // Its connection wrote everything: it catches up from the scrollback, exactly.
    // Each write of its connection lets it catch up a little more, within its bounds.
    for _ in 0..10 {
        bus.nodes[0].resync("t", 2);
        got.extend(bytes(&frames(&slow)));
    }
    assert!(!slow.is_closed());
    assert_eq!(got, all, "every byte once, in order");
}

#[test]
fn a_viewer_behind_the_window_gets_a_snapshot_notice_then_the_window() {
    let mut bus = Bus::with_config(
        1,
        TerminalConfig {
            scrollback: 600,
            ..TerminalConfig::default()
        },
    );
    let _host = bus.host(0, "t", 1);
    bus.open(0, "t");
    let slow = small_outbox();
    bus.nodes[0]
        .attach_viewer("t", 2, "u", true, None, slow.clone())
        .unwrap();
    for k in 0..10u8 {
        bus.output(0, "t", 1, &[k; 200]);
    }
    frames(&slow);
    let mut got = Vec::new();
    for _ in 0..10 {
        bus.nodes[0].resync("t", 2);
        got.extend(frames(&slow));
    }
    assert!(!slow.is_closed());
    let notice = texts(&got);
    assert_eq!(notice[0]["type"], "snapshot");
    assert_eq!(notice[0]["cursor"], 1400, "the window starts at 2000 - 600");
    let window = bytes(&got);
    assert_eq!(window.len(), 600);
    assert_eq!(&window[..200], &[7u8; 200][..]);
    assert_eq!(&window[400..], &[9u8; 200][..]);
}

#[tokio::test]
async fn a_second_connection_waits_for_the_first_ones_load() {
    let ts = Arc::new(Terminals::new(TerminalConfig::default(), Weak::new()));
    assert!(ts.open("t"), "the first connection loads");
    assert!(!ts.open("t"), "the second waits");
    let waiter = {
        let ts = ts.clone();
        tokio::spawn(async move { ts.wait_loaded("t", Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    ts.finish_load("t");
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("timed out waiting for the waiter to see the load finish")
        .expect("the waiter task");
    assert!(done, "woken by the finished load, within the limit");
    assert!(
        ts.wait_loaded("t", Duration::from_millis(1)).await,
        "already loaded"
    );
}
