//! End-to-end runs of the scenarios against a tiny in-process stand-in for the hub: it speaks
//! just enough of the protocol (upgrade, join reply, heartbeat reply, kind-3 in → kind-4 out to
//! the other members, close; `GET /v1/sse/…` streams with a `retry:` preamble and one event per
//! broadcast) to check that the scenarios wire everything together and count right. The real
//! hub is exercised by running the binary (see the crate docs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use channels::Payload;
use channels::codec::binary::{decode_user_broadcast_push, encode_user_broadcast};
use channels::codec::{Body, v2};
use channels::ws_frame::{self, Opcode, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{fanout, idle, run, sse};
use crate::args::{Cli, Scenario};
use crate::report::Num;
use clap::Parser as _;

/// Members by wire topic: connection id, whether it is an event stream, its writer.
type Members = Arc<Mutex<HashMap<String, Vec<(usize, bool, mpsc::UnboundedSender<Vec<u8>>)>>>>;

/// Event ids of the stand-in's streams: one counter for all topics, so they increase per topic.
static NEXT_EVENT_ID: AtomicU64 = AtomicU64::new(1);

/// Starts the stand-in and returns its address.
async fn fake_hub() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let members: Members = Arc::default();
    tokio::spawn(async move {
        let mut id = 0;
        while let Ok((s, _)) = listener.accept().await {
            id += 1;
            tokio::spawn(serve(s, id, members.clone()));
        }
    });
    addr
}

async fn serve(mut s: TcpStream, id: usize, members: Members) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if head.starts_with("GET /v1/sse/") {
        return serve_stream(s, id, &head, members).await;
    }
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or("")
        .to_owned();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_frame::accept_key(key.as_bytes())
    );
    buf.drain(..head_end);
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let _ = tx.send(resp.into_bytes());
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let send = |payload: &[u8], op| {
        let mut out = Vec::new();
        ws_frame::write_frame(&mut out, op, payload, None);
        let _ = tx.send(out);
    };
    loop {
        while let Ok(Some((frame, used))) = ws_frame::parse_frame(&mut buf, Role::Server, 1 << 20) {
            match frame.opcode {
                Opcode::Text => {
                    let m = v2::decode(frame.payload).unwrap();
                    let r = m.msg_ref.as_ref().map_or("null", |r| r.json()).to_owned();
                    let jr = m.join_ref.as_ref().map_or("null", |r| r.json()).to_owned();
                    if m.event == "phx_join" {
                        members
                            .lock()
                            .unwrap()
                            .entry(m.topic.clone())
                            .or_default()
                            .push((id, false, tx.clone()));
                    }
                    let reply = format!(
                        r#"[{jr},{r},"{}","phx_reply",{{"status":"ok","response":{{}}}}]"#,
                        m.topic
                    );
                    send(reply.as_bytes(), Opcode::Text);
                }
                Opcode::Binary => {
                    let m = decode_user_broadcast_push(frame.payload).unwrap();
                    let Body::UserBroadcast { event, payload } = m.body else {
                        panic!("kind 3 carries a user broadcast");
                    };
                    let out =
                        encode_user_broadcast(&m.topic, &event, &payload, r#"{"cursor":"1:1"}"#)
                            .unwrap();
                    let mut framed = Vec::new();
                    ws_frame::write_frame(&mut framed, Opcode::Binary, &out, None);
                    let Payload::Json(json) = &payload else {
                        panic!("the load test publishes JSON");
                    };
                    let n = NEXT_EVENT_ID.fetch_add(1, Ordering::Relaxed);
                    let mut event = format!("id: e:{n}\nevent: {event}\ndata: ").into_bytes();
                    event.extend_from_slice(json);
                    event.extend_from_slice(b"\n\n");
                    for (other, sse, to) in
                        members.lock().unwrap().get(&m.topic).into_iter().flatten()
                    {
                        if *other != id {
                            let _ = to.send(if *sse { event.clone() } else { framed.clone() });
                        }
                    }
                }
                Opcode::Close => {
                    send(&1000u16.to_be_bytes(), Opcode::Close);
                    return;
                }
                _ => {}
            }
            buf.drain(..used);
        }
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An event stream: 200, the preamble, then one event per broadcast on its topic until the
/// reader closes.
async fn serve_stream(mut s: TcpStream, id: usize, head: &str, members: Members) {
    let path = head.split(' ').nth(1).unwrap_or("");
    let name = path
        .trim_start_matches("/v1/sse/")
        .split('?')
        .next()
        .unwrap_or("")
        .replace("%3A", ":");
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    members
        .lock()
        .unwrap()
        .entry(format!("realtime:{name}"))
        .or_default()
        .push((id, true, tx));
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nretry: 2000\n\n";
    if s.write_all(head).await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    loop {
        tokio::select! {
            n = s.read(&mut sink) => if n.unwrap_or(0) == 0 {
                return; // the reader closed: close too
            },
            Some(b) = rx.recv() => if s.write_all(&b).await.is_err() {
                return;
            },
        }
    }
}

fn scenario(addr: SocketAddr, args: &[&str]) -> Scenario {
    let url = format!("ws://{addr}/realtime/v1/websocket");
    let mut all = vec!["loadtest"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &url, "--jwt-secret", "s", "--progress", "off"]);
    Cli::try_parse_from(all).unwrap().scenario
}

fn int(r: &crate::report::Report, key: &str) -> u64 {
    match r.get(key) {
        Some(Num::Int(n)) => n,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_exactly_once() {
    let addr = fake_hub().await;
    let sc = scenario(
        addr,
        &[
            "fanout",
            "--conns",
            "20",
            "--topics",
            "2",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--grace",
            "2s",
            "--expect-delivered",
            "1",
        ],
    );
    let Scenario::Fanout(args) = &sc else {
        unreachable!()
    };
    let ctx = super::Ctx::new(&args.common, sc.sockets(), crate::token::AUTHENTICATED).unwrap();
    let r = fanout::run(args, ctx).await.unwrap();
    assert_eq!(int(&r, "subscribers_joined"), 20);
    assert_eq!(int(&r, "messages_sent"), 200);
    // 100 messages per topic, 10 subscribers per topic.
    assert_eq!(int(&r, "expected"), 2000);
    assert_eq!(int(&r, "delivered"), 2000, "{}", r.table());
    assert_eq!(int(&r, "duplicates"), 0);
    assert_eq!(int(&r, "unexpected"), 0);
    assert!(r.passed(), "{}", r.table());
    assert_eq!(r.to_json()["latency"]["publish_receive"]["count"], 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_opens_holds_and_closes() {
    let addr = fake_hub().await;
    let sc = scenario(
        addr,
        &[
            "idle",
            "--conns",
            "30",
            "--topics",
            "3",
            "--duration",
            "200ms",
            "--src-ips",
            "127.0.0.1-127.0.0.3",
            "--expect-delivered",
            "1",
        ],
    );
    let Scenario::Idle(args) = &sc else {
        unreachable!()
    };
    let ctx = super::Ctx::new(&args.common, sc.sockets(), crate::token::AUTHENTICATED).unwrap();
    let r = idle::run(args, ctx).await.unwrap();
    assert_eq!(int(&r, "conns_joined"), 30, "{}", r.table());
    assert_eq!(int(&r, "warmup_conns"), 3);
    assert_eq!(int(&r, "conns_open_at_end"), 30);
    assert_eq!(int(&r, "closed_clean"), 30);
    assert!(r.passed(), "{}", r.table());
}

#[tokio::test]
async fn a_refused_server_is_reported_not_hung() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sc = scenario(
        addr,
        &[
            "fanout",
            "--conns",
            "5",
            "--duration",
            "1s",
            "--expect-delivered",
            "1",
        ],
    );
    let r = run(sc).await.unwrap();
    assert!(!r.passed());
    assert_eq!(r.to_json()["errors"]["connection refused"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_chat_fanout_delivers_every_token_once_and_in_order() {
    let addr = fake_hub().await;
    let args = [
        "sse",
        "--conns",
        "20",
        "--topics",
        "2",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--grace",
        "2s",
        "--src-ips",
        "127.0.0.1-127.0.0.2",
        "--expect-delivered",
        "1",
        "--expect-duplicates",
        "0",
        "--expect-in-order",
    ];
    let sc = scenario(addr, &args);
    let Scenario::Sse(a) = &sc else {
        unreachable!()
    };
    let ctx = super::Ctx::new(&a.common, sc.sockets(), crate::token::SERVICE_ROLE).unwrap();
    let r = sse::run(a, ctx).await.unwrap();
    assert_eq!(int(&r, "streams_opened"), 20, "{}", r.table());
    assert_eq!(int(&r, "publishers"), 1);
    assert_eq!(int(&r, "events_sent"), 200);
    // 100 tokens per topic, 10 streams per topic.
    assert_eq!(int(&r, "expected"), 2000);
    assert_eq!(int(&r, "delivered"), 2000, "{}", r.table());
    assert_eq!(int(&r, "events"), 2000);
    assert_eq!(int(&r, "id_regressions"), 0);
    assert_eq!(int(&r, "unexpected"), 0);
    assert_eq!(int(&r, "closed_clean"), 21);
    assert!(r.passed(), "{}", r.table());
    assert_eq!(r.to_json()["latency"]["publish_receive"]["count"], 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_topics_mode_spreads_topics_over_publishers() {
    let addr = fake_hub().await;
    let sc = scenario(
        addr,
        &[
            "sse",
            "--mode",
            "topics",
            "--kind",
            "room",
            "--conns",
            "6",
            "--channels-per-publisher",
            "2",
            "--rate",
            "20",
            "--duration",
            "1s",
            "--auth",
            "header",
            "--expect-delivered",
            "1",
        ],
    );
    let Scenario::Sse(a) = &sc else {
        unreachable!()
    };
    assert_eq!(sc.sockets(), 9);
    let ctx = super::Ctx::new(&a.common, sc.sockets(), crate::token::SERVICE_ROLE).unwrap();
    let r = sse::run(a, ctx).await.unwrap();
    assert_eq!(int(&r, "publishers"), 3, "{}", r.table());
    assert_eq!(int(&r, "expected"), 120);
    assert_eq!(int(&r, "delivered"), 120, "{}", r.table());
    assert!(r.passed(), "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_idle_opens_holds_and_closes() {
    let addr = fake_hub().await;
    let sc = scenario(
        addr,
        &[
            "sse",
            "--mode",
            "idle",
            "--conns",
            "30",
            "--duration",
            "200ms",
            "--expect-delivered",
            "1",
        ],
    );
    let Scenario::Sse(a) = &sc else {
        unreachable!()
    };
    let ctx = super::Ctx::new(&a.common, sc.sockets(), crate::token::SERVICE_ROLE).unwrap();
    let r = sse::run(a, ctx).await.unwrap();
    assert_eq!(int(&r, "streams_opened"), 30, "{}", r.table());
    assert_eq!(int(&r, "streams_open_at_end"), 30);
    assert_eq!(int(&r, "closed_clean"), 30);
    assert!(r.passed(), "{}", r.table());
}
