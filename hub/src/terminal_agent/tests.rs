//! The agent end to end against a stand-in hub: a bare WebSocket server on 127.0.0.1:0 that
//! plays the hub's side of the host protocol, with real commands in real PTYs.

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use super::{AgentConfig, run};

/// Every wait in these tests: generous, since a loaded CI machine may run all of them at once.
const WAIT: Duration = Duration::from_secs(10);

const TOKEN: &str = "service-token";

/// The stand-in hub.
struct FakeHub {
    listener: TcpListener,
    url: String,
}

impl FakeHub {
    async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        Self { listener, url }
    }

    /// Waits for the agent's next TCP connection (not yet upgraded).
    async fn accept_tcp(&self, what: &str) -> TcpStream {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the agent to connect ({what})"))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    /// Waits for the agent's next connection and completes the WebSocket handshake.
    async fn accept(&self, what: &str) -> HostConn {
        let tcp = self.accept_tcp(what).await;
        HostConn::handshake(tcp, what).await
    }
}

/// The hub's end of one host connection.
struct HostConn {
    ws: WebSocketStream<TcpStream>,
    /// Path and query the agent requested.
    uri: String,
    /// Its `Authorization` header.
    authorization: Option<String>,
    /// Output received and not yet matched by [`HostConn::output_until`].
    pending: Vec<u8>,
}

impl HostConn {
    async fn handshake(tcp: TcpStream, what: &str) -> Self {
        let seen: Mutex<Option<(String, Option<String>)>> = Mutex::new(None);
        // The signature is tungstenite's `Callback`.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            *seen.lock().unwrap() = Some((req.uri().to_string(), auth));
            Ok(resp)
        };
        let ws = tokio::time::timeout(WAIT, tokio_tungstenite::accept_hdr_async(tcp, callback))
            .await
            .unwrap_or_else(|_| panic!("timed out in the WebSocket handshake ({what})"))
            .unwrap();
        let (uri, authorization) = seen.into_inner().unwrap().unwrap();
        Self {
            ws,
            uri,
            authorization,
            pending: Vec::new(),
        }
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn send_input(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    /// Reads the next frame, failing with `what` after [`WAIT`].
    async fn next_frame(&mut self, what: &str) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Err(_) => panic!(
                "timed out waiting for {what}; output so far: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
            Ok(None) => None,
            Ok(Some(frame)) => Some(frame.unwrap()),
        }
    }

    /// Reads output until it contains `needle`; returns everything up to and including it
    /// (what follows stays pending for the next call).
    async fn output_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let what = format!("output containing {:?}", String::from_utf8_lossy(needle));
        loop {
            if let Some(at) = find(&self.pending, needle) {
                let rest = self.pending.split_off(at + needle.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            match self.next_frame(&what).await {
                Some(Message::Binary(b)) => self.pending.extend_from_slice(&b),
                Some(Message::Text(t)) => assert_eq!(t.as_str(), r#"{"type":"ping"}"#),
                Some(Message::Close(_)) | None => panic!(
                    "the connection closed while waiting for {what}; output so far: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Some(_) => {}
            }
        }
    }

    /// Reads output until exactly `n` bytes are pending; returns them.
    async fn output_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            match self.next_frame(&format!("{n} bytes of output")).await {
                Some(Message::Binary(b)) => self.pending.extend_from_slice(&b),
                Some(Message::Close(_)) | None => panic!(
                    "the connection closed after {} of {n} bytes",
                    self.pending.len()
                ),
                Some(_) => {}
            }
        }
        let rest = self.pending.split_off(n);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Reads until the agent's close frame; returns the output that came before it.
    async fn until_closed(&mut self) -> Vec<u8> {
        loop {
            match self.next_frame("the agent to close the connection").await {
                Some(Message::Binary(b)) => self.pending.extend_from_slice(&b),
                Some(Message::Close(_)) | None => return std::mem::take(&mut self.pending),
                Some(_) => {}
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Starts the agent for terminal `id` running `sh -c <script>` (or `argv` as given).
fn start_agent(hub: &FakeHub, id: &str, argv: &[&str]) -> JoinHandle<anyhow::Result<i32>> {
    let mut argv = argv.iter().map(OsString::from);
    let program = argv.next().expect("a program");
    tokio::spawn(run(AgentConfig {
        hub: hub.url.clone(),
        id: id.to_owned(),
        token: TOKEN.to_owned(),
        program,
        args: argv.collect(),
        term: "xterm-256color".into(),
    }))
}

async fn exit_code(agent: JoinHandle<anyhow::Result<i32>>) -> i32 {
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("timed out waiting for the agent to exit")
        .expect("the agent task panicked")
        .expect("the agent failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_as_host_and_applies_the_size_from_connected() {
    let hub = FakeHub::bind().await;
    let agent = start_agent(&hub, "t 1/x", &["sh", "-c", "read x; stty size"]);
    let mut conn = hub.accept("first connection").await;
    assert_eq!(conn.uri, "/v1/terminal/t%201%2Fx?role=host");
    assert_eq!(
        conn.authorization.as_deref(),
        Some("Bearer service-token"),
        "the agent authenticates with its token"
    );
    conn.send_text(
        r#"{"type":"connected","driver":null,"cols":132,"rows":43,"cursor":0,"continuous":true,"host":true}"#,
    )
    .await;
    conn.send_input(b"\n").await;
    conn.output_until(b"43 132").await;
    conn.until_closed().await;
    assert_eq!(exit_code(agent).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stty_size_follows_resize_messages() {
    let hub = FakeHub::bind().await;
    let agent = start_agent(
        &hub,
        "resize",
        &["sh", "-c", "stty size; read x; stty size; read x"],
    );
    let mut conn = hub.accept("the agent").await;
    conn.send_text(r#"{"type":"connected","cols":0,"rows":0}"#)
        .await;
    conn.output_until(b"24 80").await;
    // Messages the host only logs or ignores must not disturb the session.
    for ignored in [
        r#"{"type":"pong"}"#,
        r#"{"type":"control","driver":"u1"}"#,
        r#"{"type":"error","message":"a refusal"}"#,
        r#"{"type":"host_connected"}"#,
        r#"{"type":"resize","cols":0,"rows":5}"#,
        "not json",
    ] {
        conn.send_text(ignored).await;
    }
    conn.send_text(r#"{"type":"resize","cols":100,"rows":30}"#)
        .await;
    conn.send_input(b"\n").await;
    conn.output_until(b"30 100").await;
    conn.send_input(b"\n").await;
    conn.until_closed().await;
    assert_eq!(exit_code(agent).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_shell_runs_typed_commands_and_the_agent_exits_with_its_code() {
    let hub = FakeHub::bind().await;
    let agent = start_agent(&hub, "shell", &["/bin/sh"]);
    let mut conn = hub.accept("the agent").await;
    conn.send_text(r#"{"type":"connected"}"#).await;
    // The quotes keep the echoed command line from matching: only the command's output does
    // (which may follow the prompt or the echo, depending on when the shell got to read it).
    conn.send_input(b"echo h''i\n").await;
    conn.output_until(b"hi\r\n").await;
    conn.send_input(b"exit 3\n").await;
    conn.until_closed().await;
    assert_eq!(exit_code(agent).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_byte_values_round_trip_through_a_raw_mode_terminal() {
    let hub = FakeHub::bind().await;
    // Raw mode: no echo, no line editing, no signals, no output processing. `head` exits after
    // exactly 256 bytes, so the end of the output is known.
    let agent = start_agent(
        &hub,
        "raw",
        &["sh", "-c", "stty raw -echo; echo ready; head -c 256"],
    );
    let mut conn = hub.accept("the agent").await;
    conn.output_until(b"ready\n").await;
    let all: Vec<u8> = (0..=255u8).collect();
    conn.send_input(&all).await;
    assert_eq!(conn.output_bytes(256).await, all);
    assert!(conn.until_closed().await.is_empty());
    assert_eq!(exit_code(agent).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_output_is_delivered_before_the_agent_exits() {
    let hub = FakeHub::bind().await;
    // The command is done before the hub even accepts the connection: its output waits.
    let agent = start_agent(
        &hub,
        "last",
        &[
            "sh",
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x; printf done; exit 7",
        ],
    );
    let mut conn = hub.accept("the agent").await;
    let out = conn.until_closed().await;
    assert_eq!(out.len(), 200_004, "all the output, nothing dropped");
    assert!(out.ends_with(b"xdone"));
    assert_eq!(exit_code(agent).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_hub_drops_it_and_sends_what_was_missed() {
    let dir = std::env::temp_dir().join(format!("terminal-agent-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let printed = dir.join("printed");
    let script = format!(
        "echo first; while [ ! -e '{go}' ]; do sleep 0.01; done; echo late; touch '{printed}'; exec cat",
        go = go.display(),
        printed = printed.display(),
    );
    let hub = FakeHub::bind().await;
    let agent = start_agent(&hub, "reconnect", &["sh", "-c", &script]);

    let mut conn = hub.accept("the first connection").await;
    conn.send_text(r#"{"type":"connected"}"#).await;
    conn.output_until(b"first").await;
    drop(conn);

    // The agent is back (it noticed the drop); hold the handshake until the command printed,
    // so that output is produced while no connection is up.
    let tcp = hub.accept_tcp("the agent to reconnect").await;
    std::fs::write(&go, b"").unwrap();
    let deadline = Instant::now() + WAIT;
    while !printed.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the command to print while disconnected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = HostConn::handshake(tcp, "the second connection").await;
    assert_eq!(conn.authorization.as_deref(), Some("Bearer service-token"));
    conn.send_text(r#"{"type":"connected"}"#).await;
    conn.output_until(b"late").await;

    // The new connection carries input too.
    conn.send_input(b"again\n").await;
    conn.output_until(b"again\r\nagain\r\n").await;
    conn.send_input(b"\x04").await;
    conn.until_closed().await;
    assert_eq!(exit_code(agent).await, 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystroke_echo_round_trip_is_fast() {
    let hub = FakeHub::bind().await;
    // Raw mode but with signals, so ^C ends `cat` at the end.
    let agent = start_agent(
        &hub,
        "latency",
        &["sh", "-c", "stty raw -echo isig; echo ready; exec cat"],
    );
    let mut conn = hub.accept("the agent").await;
    conn.output_until(b"ready\n").await;
    let mut rtts = Vec::new();
    for i in 0..200u8 {
        let key = [b'a' + i % 26];
        let start = Instant::now();
        conn.send_input(&key).await;
        assert_eq!(conn.output_bytes(1).await, key);
        rtts.push(start.elapsed());
    }
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    let p99 = rtts[rtts.len() * 99 / 100];
    eprintln!(
        "keystroke echo round trip (hub → agent → PTY → agent → hub): p50 {p50:?}, p99 {p99:?}"
    );
    // Far above the expected ~0.1 ms; what it catches is a batching timer or Nagle's algorithm
    // paired with delayed ACKs (40 ms and up per keystroke).
    assert!(
        p50 < Duration::from_millis(20),
        "echo round trip p50 {p50:?} (p99 {p99:?})"
    );
    conn.send_input(b"\x03").await;
    conn.until_closed().await;
    assert_eq!(exit_code(agent).await, 130, "cat killed by SIGINT: 128 + 2");
}
