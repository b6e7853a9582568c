//! End-to-end test support for the hub: an in-process hub on an ephemeral port, JWT helpers, and a
//! raw Phoenix-protocol WebSocket client (V1 and V2) whose every wait has a timeout and a message.
//!
//! Run with `scripts/test` (the `pg_*` tests need the Postgres it starts; the others also run with
//! `cargo test -p tests`). Start at [`TestHub::spawn`] and [`WsClient::connect`]; each test file
//! (`ws_*.rs`, `rest_*.rs`) covers one area of PROTOCOL.md, and the `pg_*.rs` files the Postgres
//! backend, with [`pg::TestDb`] giving each test a database of its own. The `redis_*.rs` files run
//! several real hub processes ([`nodes::Node`]) on one Redis ([`redis_backend::TestRedis`]).
//! `sse_stream.rs` and `chat_stream.rs` read event streams with [`sse::SseClient`]. The
//! `terminal_*.rs` files drive `/v1/terminal/{id}` with [`terminal::Term`] (and the real PTY host,
//! [`terminal::Agent`]).

pub mod nodes;
pub mod pg;
pub mod redis_backend;
pub mod sse;
pub mod terminal;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use channels::Payload;
use futures_util::{SinkExt, StreamExt};
use hub::{AppState, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret every test hub verifies tokens with.
pub const SECRET: &str = "e2e-test-secret-not-for-production";

/// How long any helper waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------------------------

/// A hub serving on `127.0.0.1:<ephemeral>` inside the test's runtime.
#[derive(Debug)]
pub struct TestHub {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state (counters: `state.node.registry.stats`, `state.node.stats`).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl TestHub {
    /// A hub with `Config::for_tests(SECRET)`.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A hub whose test configuration is adjusted by `tweak` first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::for_tests(SECRET);
        tweak(&mut cfg);
        Self::serve(AppState::memory(cfg, SECRET).expect("test token settings are valid")).await
    }

    /// A hub started the way `hub serve` starts one (`AppState::connect`: fetches a JWKS URL,
    /// connects the backends the configuration names), or the error that stopped it, with its
    /// causes, after at most 30 s.
    pub async fn try_spawn_connected(tweak: impl FnOnce(&mut Config)) -> Result<Self, String> {
        let mut cfg = Config::for_tests(SECRET);
        tweak(&mut cfg);
        let state = tokio::time::timeout(Duration::from_secs(30), AppState::connect(cfg, SECRET))
            .await
            .map_err(|_| "timed out after 30 s starting the hub".to_owned())?
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self::serve(state).await)
    }

    /// A hub on Postgres at `database_url` (migrations applied, feed started), its test
    /// configuration adjusted by `tweak` first. See [`pg::TestDb`] for a database per test.
    pub async fn spawn_pg(database_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::for_tests(SECRET);
        cfg.database_url = Some(database_url.to_owned());
        tweak(&mut cfg);
        let state = tokio::time::timeout(Duration::from_secs(30), AppState::connect(cfg, SECRET))
            .await
            .expect("timed out after 30 s connecting the hub to Postgres")
            .unwrap_or_else(|e| panic!("hub could not start on Postgres: {e}"));
        assert!(
            state.backends.postgres.is_some(),
            "a database_url was given but the hub started without Postgres"
        );
        Self::serve(state).await
    }

    /// Serves `state` on an ephemeral port.
    async fn serve(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local_addr of the test listener");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(hub::serve(listener, state.clone(), async move {
            // A dropped sender (TestHub dropped) also means "stop".
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The Postgres feed's counters (rows, late rows, closed gaps, listener reconnects).
    #[track_caller]
    pub fn feed_stats(&self) -> std::sync::Arc<store::pg::FeedStats> {
        self.state
            .backends
            .postgres
            .as_ref()
            .expect("feed_stats: this hub does not run on Postgres")
            .feed
            .clone()
    }

    /// `http://<addr><path>`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The WebSocket URL supabase-js uses, with `apikey` and `vsn`.
    pub fn ws_url(&self, vsn: Vsn, token: &str) -> String {
        format!(
            "ws://{}/realtime/v1/websocket?apikey={token}&vsn={}",
            self.addr,
            vsn.as_str()
        )
    }

    /// Stops the hub and waits for `serve` to return (at most the drain timeout plus 5 s).
    /// Returns how long that took.
    pub async fn shutdown(mut self) -> Duration {
        let started = Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let limit = self.state.config.drain_timeout + Duration::from_secs(5);
        let task = self.task.take().expect("serve task present until shutdown");
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("hub::serve returned an error on shutdown: {e}"),
            Ok(Err(e)) => panic!("hub::serve task panicked: {e}"),
            Err(_) => panic!("hub::serve did not return within {limit:?} after shutdown"),
        }
        started.elapsed()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A token signed with [`SECRET`] carrying exactly `claims`.
pub fn token_claims(claims: &Value) -> String {
    hub::auth::sign_hs256(SECRET.as_bytes(), claims).expect("sign test token")
}

/// A token with `role`, `sub` and `exp = now + exp_in_secs` (negative: already expired).
pub fn token(role: &str, sub: &str, exp_in_secs: i64) -> String {
    token_claims(&json!({"role": role, "sub": sub, "exp": now_secs() + exp_in_secs}))
}

/// Like [`token`] but signed with another secret.
pub fn token_wrong_secret(role: &str, sub: &str, exp_in_secs: i64) -> String {
    hub::auth::sign_hs256(
        b"some-other-secret",
        &json!({"role": role, "sub": sub, "exp": now_secs() + exp_in_secs}),
    )
    .expect("sign test token")
}

/// An `anon` token valid for an hour.
pub fn anon() -> String {
    token("anon", "user-1", 3600)
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP (upgrade refusals carry a status and a body tungstenite does not reliably keep)
// ---------------------------------------------------------------------------------------------

/// Sends a WebSocket upgrade request for `path_and_query` with `extra` headers over a raw TCP
/// stream and returns the status and the body parsed as JSON (`Value::Null` if not JSON).
pub async fn upgrade_raw(
    hub: &TestHub,
    path_and_query: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let fut = async {
        let mut tcp = TcpStream::connect(hub.addr).await.expect("connect to hub");
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            hub.addr
        );
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tcp.read(&mut chunk).await.expect("read response head");
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in response head {head:?}"));
        if status == 101 {
            return (status, Value::Null);
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        while buf.len() < head_end + len {
            let n = tcp.read(&mut chunk).await.expect("read response body");
            assert!(n > 0, "connection closed before the whole body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        (status, body)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the response to GET {path_and_query}"))
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    /// `vsn=1.0.0`: JSON objects.
    V1,
    /// `vsn=2.0.0`: JSON arrays plus binary kinds 3 and 4.
    V2,
}

impl Vsn {
    /// The `vsn` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1.0.0",
            Self::V2 => "2.0.0",
        }
    }
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame, parsed as JSON.
    Text(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame: code (1005 when absent) and reason.
    Close(u16, String),
}

/// A Phoenix message, whatever format it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// `join_ref` (V2 only; V1 output never carries it).
    pub join_ref: Option<String>,
    /// `ref`.
    pub msg_ref: Option<String>,
    /// Topic.
    pub topic: String,
    /// Event.
    pub event: String,
    /// Payload.
    pub payload: Value,
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

impl Msg {
    /// Parses a V1 object or V2 array; `None` if it is neither.
    pub fn parse(vsn: Vsn, v: &Value) -> Option<Self> {
        match vsn {
            Vsn::V1 => {
                let o = v.as_object()?;
                Some(Self {
                    join_ref: o.get("join_ref").and_then(opt_str),
                    msg_ref: o.get("ref").and_then(opt_str),
                    topic: o.get("topic")?.as_str()?.to_owned(),
                    event: o.get("event")?.as_str()?.to_owned(),
                    payload: o.get("payload")?.clone(),
                })
            }
            Vsn::V2 => {
                let a = v.as_array()?;
                if a.len() != 5 {
                    return None;
                }
                Some(Self {
                    join_ref: opt_str(&a[0]),
                    msg_ref: opt_str(&a[1]),
                    topic: a[2].as_str()?.to_owned(),
                    event: a[3].as_str()?.to_owned(),
                    payload: a[4].clone(),
                })
            }
        }
    }

    /// `payload.status` of a reply.
    pub fn status(&self) -> &str {
        self.payload["status"].as_str().unwrap_or("")
    }

    /// `payload.response` of a reply.
    pub fn response(&self) -> &Value {
        &self.payload["response"]
    }
}

/// The user payload of a delivered broadcast.
#[derive(Debug, Clone, PartialEq)]
pub enum BcastPayload {
    /// JSON (kind-4 encoding 1, or any JSON form).
    Json(Value),
    /// Raw bytes (kind-4 encoding 0).
    Bytes(Vec<u8>),
}

/// A broadcast as a member received it, from a kind-4 frame or a JSON `broadcast` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Bcast {
    /// Wire topic.
    pub topic: String,
    /// User event.
    pub event: String,
    /// User payload.
    pub payload: BcastPayload,
    /// `meta` (kind-4 metadata or `payload.meta`).
    pub meta: Option<Value>,
    /// Arrived as a binary kind-4 frame.
    pub binary_frame: bool,
}

impl Bcast {
    /// From a frame; `None` when the frame is not a broadcast.
    pub fn from_frame(vsn: Vsn, f: &Frame) -> Option<Self> {
        match f {
            Frame::Binary(b) => {
                let ub = channels::codec::binary::decode_user_broadcast(b).ok()?;
                let payload = if ub.json {
                    BcastPayload::Json(serde_json::from_slice(ub.payload).ok()?)
                } else {
                    BcastPayload::Bytes(ub.payload.to_vec())
                };
                let meta = if ub.meta.is_empty() {
                    None
                } else {
                    Some(serde_json::from_str(ub.meta).ok()?)
                };
                Some(Self {
                    topic: ub.topic.to_owned(),
                    event: ub.event.to_owned(),
                    payload,
                    meta,
                    binary_frame: true,
                })
            }
            Frame::Text(v) => {
                let m = Msg::parse(vsn, v)?;
                if m.event != "broadcast" {
                    return None;
                }
                Some(Self {
                    topic: m.topic,
                    event: m.payload["event"].as_str()?.to_owned(),
                    payload: BcastPayload::Json(m.payload["payload"].clone()),
                    meta: m.payload.get("meta").cloned(),
                    binary_frame: false,
                })
            }
            Frame::Close(..) => None,
        }
    }

    /// The JSON payload (panics for raw bytes).
    #[track_caller]
    pub fn json(&self) -> &Value {
        match &self.payload {
            BcastPayload::Json(v) => v,
            BcastPayload::Bytes(b) => panic!("expected a JSON payload, got bytes {b:?}"),
        }
    }

    /// `meta.cursor`.
    #[track_caller]
    pub fn cursor(&self) -> String {
        self.meta
            .as_ref()
            .and_then(|m| m["cursor"].as_str())
            .unwrap_or_else(|| panic!("broadcast without meta.cursor: {self:?}"))
            .to_owned()
    }

    /// The offset part of `meta.cursor`.
    #[track_caller]
    pub fn offset(&self) -> u64 {
        let c = self.cursor();
        let (_, off) = c
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("cursor {c:?} is not <epoch>:<offset>"));
        off.parse()
            .unwrap_or_else(|_| panic!("cursor {c:?} has a non-numeric offset"))
    }

    /// The epoch part of `meta.cursor`.
    #[track_caller]
    pub fn epoch(&self) -> String {
        let c = self.cursor();
        c.rsplit_once(':')
            .unwrap_or_else(|| panic!("cursor {c:?} is not <epoch>:<offset>"))
            .0
            .to_owned()
    }

    /// `meta.replayed == true`.
    pub fn replayed(&self) -> bool {
        self.meta
            .as_ref()
            .is_some_and(|m| m["replayed"] == Value::Bool(true))
    }
}

/// Encodes a message in `vsn`'s text form.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: Value,
) -> String {
    match vsn {
        Vsn::V1 => {
            let mut o = json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref});
            if let Some(jr) = join_ref {
                o["join_ref"] = json!(jr);
            }
            o.to_string()
        }
        Vsn::V2 => json!([join_ref, msg_ref, topic, event, payload]).to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a read ended without a frame.
#[derive(Debug)]
enum RecvEnd {
    Timeout,
    Ended(String),
}

/// A raw realtime client speaking V1 or V2.
#[derive(Debug)]
pub struct WsClient {
    ws: Ws,
    /// The connection's protocol version.
    pub vsn: Vsn,
    next_ref: u64,
    join_refs: HashMap<String, String>,
}

impl WsClient {
    /// Connects to `/realtime/v1/websocket?apikey=<token>&vsn=<vsn>`; panics if refused.
    pub async fn connect(hub: &TestHub, vsn: Vsn, token: &str) -> Self {
        let url = hub.ws_url(vsn, token);
        Self::connect_url(&url, vsn)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"))
    }

    /// Connects to `url` (any request tungstenite accepts), bounded by [`WAIT`].
    pub async fn connect_url<R: IntoClientRequest + Unpin>(
        req: R,
        vsn: Vsn,
    ) -> Result<Self, tungstenite::Error> {
        let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("timed out waiting for the WebSocket handshake")?;
        Ok(Self::from_ws(ws, vsn))
    }

    /// Connects with the token in an `x-api-key` header instead of the query.
    pub async fn connect_header(hub: &TestHub, vsn: Vsn, token: &str) -> Self {
        let url = format!(
            "ws://{}/realtime/v1/websocket?vsn={}",
            hub.addr,
            vsn.as_str()
        );
        let mut req = url.as_str().into_client_request().expect("valid request");
        req.headers_mut().insert(
            "x-api-key",
            HeaderValue::from_str(token).expect("token is a valid header value"),
        );
        Self::connect_url(req, vsn)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect with x-api-key failed: {e}"))
    }

    /// Connects over an already connected TCP stream (e.g. one with a tiny receive buffer).
    pub async fn connect_over(hub: &TestHub, vsn: Vsn, token: &str, tcp: TcpStream) -> Self {
        let url = hub.ws_url(vsn, token);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("timed out waiting for the WebSocket handshake")
        .unwrap_or_else(|e| panic!("WebSocket handshake over a custom stream failed: {e}"));
        Self::from_ws(ws, vsn)
    }

    fn from_ws(ws: Ws, vsn: Vsn) -> Self {
        Self {
            ws,
            vsn,
            next_ref: 0,
            join_refs: HashMap::new(),
        }
    }

    /// A fresh ref ("1", "2", … per connection, like realtime-js's counter).
    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Records `join_ref` as `topic`'s join ref, for a join sent by hand with
    /// [`WsClient::send_msg`] (later pushes on the topic carry it).
    pub fn set_join_ref(&mut self, topic: &str, join_ref: &str) {
        self.join_refs.insert(topic.to_owned(), join_ref.to_owned());
    }

    /// The join ref of `topic`'s current channel.
    #[track_caller]
    pub fn join_ref(&self, topic: &str) -> String {
        self.join_refs
            .get(topic)
            .unwrap_or_else(|| panic!("no join sent for {topic}"))
            .clone()
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("timed out sending a text frame")
            .expect("send a text frame");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes)))
            .await
            .expect("timed out sending a binary frame")
            .expect("send a binary frame");
    }

    /// Sends a message in this connection's format.
    pub async fn send_msg(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = encode(self.vsn, join_ref, msg_ref, topic, event, payload);
        self.send_text(text).await;
    }

    /// Pushes `event` on `topic` with the channel's join ref; returns the push's ref.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let r = self.next_ref();
        let jr = self.join_refs.get(topic).cloned();
        self.send_msg(jr.as_deref(), Some(&r), topic, event, payload)
            .await;
        r
    }

    /// Sends a heartbeat; returns its ref.
    pub async fn heartbeat(&mut self) -> String {
        let r = self.next_ref();
        self.send_msg(None, Some(&r), "phoenix", "heartbeat", json!({}))
            .await;
        r
    }

    /// Sends `phx_join` with `payload` (whole payload, e.g. `{"config":…}`) and waits for its reply.
    pub async fn join_payload(&mut self, topic: &str, payload: Value) -> Msg {
        let r = self.next_ref();
        self.join_refs.insert(topic.to_owned(), r.clone());
        self.send_msg(Some(&r), Some(&r), topic, "phx_join", payload)
            .await;
        self.expect_reply(topic, &r, &format!("the reply to phx_join {topic}"))
            .await
    }

    /// Joins with `{"config": config}` and returns the reply, whatever its status.
    pub async fn join(&mut self, topic: &str, config: Value) -> Msg {
        self.join_payload(topic, json!({ "config": config })).await
    }

    /// Joins and asserts the reply is ok.
    pub async fn join_ok(&mut self, topic: &str, config: Value) -> Msg {
        let reply = self.join(topic, config).await;
        assert_eq!(reply.status(), "ok", "join {topic} refused: {reply:?}");
        reply
    }

    /// Sends `phx_leave`; returns its ref.
    pub async fn leave(&mut self, topic: &str) -> String {
        self.push(topic, "phx_leave", json!({})).await
    }

    /// Broadcasts as realtime-js does: a kind-3 frame on V2, the JSON push on V1 (which cannot
    /// carry raw bytes). Returns the push's ref.
    pub async fn send_broadcast(&mut self, topic: &str, event: &str, payload: &Payload) -> String {
        match self.vsn {
            Vsn::V2 => {
                let r = self.next_ref();
                let jr = self.join_refs.get(topic).cloned().unwrap_or_default();
                let frame = channels::codec::binary::encode_user_broadcast_push(
                    &jr, &r, topic, event, payload,
                )
                .expect("kind-3 fields fit in 255 bytes");
                self.send_binary(frame).await;
                r
            }
            Vsn::V1 => {
                let Payload::Json(b) = payload else {
                    panic!("V1 cannot send raw bytes");
                };
                let v: Value = serde_json::from_slice(b).expect("JSON payload");
                self.broadcast_json(topic, event, v).await
            }
        }
    }

    /// Broadcasts with the JSON text form `{"type":"broadcast","event","payload"}`.
    pub async fn broadcast_json(&mut self, topic: &str, event: &str, payload: Value) -> String {
        self.push(
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": event, "payload": payload}),
        )
        .await
    }

    async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Result<Frame, RecvEnd> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| RecvEnd::Timeout)?;
            let msg = match next {
                None => return Err(RecvEnd::Ended("stream ended".into())),
                Some(Err(e)) => return Err(RecvEnd::Ended(format!("read error: {e}"))),
                Some(Ok(m)) => m,
            };
            return Ok(match msg {
                Message::Text(t) => Frame::Text(
                    serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent a non-JSON text frame {t:?}: {e}")),
                ),
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Close(c) => match c {
                    Some(c) => Frame::Close(u16::from(c.code), c.reason.to_string()),
                    None => Frame::Close(1005, String::new()),
                },
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The next frame, within [`WAIT`].
    pub async fn next_frame(&mut self, what: &str) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        match self.recv_until(deadline).await {
            Ok(f) => f,
            Err(RecvEnd::Timeout) => panic!("timed out after {WAIT:?} waiting for {what}"),
            Err(RecvEnd::Ended(e)) => panic!("connection ended ({e}) while waiting for {what}"),
        }
    }

    /// The next frame, which must be a text frame.
    pub async fn next_json(&mut self, what: &str) -> Value {
        match self.next_frame(what).await {
            Frame::Text(v) => v,
            other => panic!("expected a text frame for {what}, got {other:?}"),
        }
    }

    /// The next frame, which must be a Phoenix message in this connection's format.
    pub async fn next_msg(&mut self, what: &str) -> Msg {
        let v = self.next_json(what).await;
        Msg::parse(self.vsn, &v).unwrap_or_else(|| {
            panic!(
                "expected a {:?} message for {what}, got {v}",
                self.vsn.as_str()
            )
        })
    }

    /// The next frame, which must be binary.
    pub async fn next_binary(&mut self, what: &str) -> Vec<u8> {
        match self.next_frame(what).await {
            Frame::Binary(b) => b,
            other => panic!("expected a binary frame for {what}, got {other:?}"),
        }
    }

    /// The next frame, which must be a broadcast (kind 4 or JSON).
    pub async fn next_broadcast(&mut self, what: &str) -> Bcast {
        let f = self.next_frame(what).await;
        Bcast::from_frame(self.vsn, &f)
            .unwrap_or_else(|| panic!("expected a broadcast for {what}, got {f:?}"))
    }

    /// Reads frames until one matches `pred`, skipping others; panics on timeout or close, naming
    /// `what` and listing what was skipped.
    pub async fn expect_frame<T>(
        &mut self,
        what: &str,
        pred: impl FnMut(&Frame) -> Option<T>,
    ) -> T {
        self.expect_frame_within(what, WAIT, pred).await
    }

    /// [`WsClient::expect_frame`] with a wait of `limit` instead of [`WAIT`] (for waits that
    /// include a backend's recovery, such as a Postgres restart).
    pub async fn expect_frame_within<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&Frame) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            match self.recv_until(deadline).await {
                Ok(f) => {
                    if let Some(t) = pred(&f) {
                        return t;
                    }
                    if let Frame::Close(code, reason) = &f {
                        panic!(
                            "connection closed ({code} {reason:?}) while waiting for {what}; \
                             skipped {skipped:?}"
                        );
                    }
                    skipped.push(f);
                }
                Err(RecvEnd::Timeout) => {
                    panic!("timed out after {limit:?} waiting for {what}; skipped {skipped:?}")
                }
                Err(RecvEnd::Ended(e)) => {
                    panic!("connection ended ({e}) while waiting for {what}; skipped {skipped:?}")
                }
            }
        }
    }

    /// The next `event` message on `topic`, skipping unrelated frames (heartbeat replies, …).
    pub async fn expect_event(&mut self, topic: &str, event: &str, what: &str) -> Msg {
        let vsn = self.vsn;
        self.expect_frame(what, |f| match f {
            Frame::Text(v) => Msg::parse(vsn, v).filter(|m| m.topic == topic && m.event == event),
            _ => None,
        })
        .await
    }

    /// The `phx_reply` to `msg_ref` on `topic`, skipping unrelated frames.
    pub async fn expect_reply(&mut self, topic: &str, msg_ref: &str, what: &str) -> Msg {
        let vsn = self.vsn;
        self.expect_frame(what, |f| match f {
            Frame::Text(v) => Msg::parse(vsn, v).filter(|m| {
                m.topic == topic && m.event == "phx_reply" && m.msg_ref.as_deref() == Some(msg_ref)
            }),
            _ => None,
        })
        .await
    }

    /// The next broadcast on `topic`, skipping unrelated frames.
    pub async fn expect_broadcast(&mut self, topic: &str, what: &str) -> Bcast {
        let vsn = self.vsn;
        self.expect_frame(what, |f| {
            Bcast::from_frame(vsn, f).filter(|b| b.topic == topic)
        })
        .await
    }

    /// [`WsClient::expect_broadcast`] with a wait of `limit`.
    pub async fn expect_broadcast_within(
        &mut self,
        topic: &str,
        what: &str,
        limit: Duration,
    ) -> Bcast {
        let vsn = self.vsn;
        self.expect_frame_within(what, limit, |f| {
            Bcast::from_frame(vsn, f).filter(|b| b.topic == topic)
        })
        .await
    }

    /// Reads the broadcasts on `topic` with offsets `offsets`, each exactly once and in order
    /// (a gap, a duplicate or a reordering fails, naming the offset expected), waiting at most
    /// `limit` for each. Returns them.
    pub async fn expect_offsets(
        &mut self,
        topic: &str,
        offsets: std::ops::RangeInclusive<u64>,
        what: &str,
        limit: Duration,
    ) -> Vec<Bcast> {
        let mut got: Vec<Bcast> = Vec::new();
        for k in offsets {
            let b = self
                .expect_broadcast_within(topic, &format!("{what}: offset {k}"), limit)
                .await;
            let prev = got.last().map(|p| (p.offset(), p.event.clone()));
            assert_eq!(
                b.offset(),
                k,
                "{what}: expected offset {k} (previous: {prev:?}), got {} (event {:?})",
                b.offset(),
                b.event
            );
            got.push(b);
        }
        got
    }

    /// Reads until the server's close frame, skipping data frames; returns its code and reason,
    /// then completes the closing handshake (so the server's linger ends at once).
    pub async fn expect_close(&mut self, what: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = 0usize;
        let mut last = None;
        let closed = loop {
            match self.recv_until(deadline).await {
                Ok(Frame::Close(code, reason)) => break (code, reason),
                Ok(f) => {
                    skipped += 1;
                    last = Some(f);
                }
                Err(RecvEnd::Timeout) => panic!(
                    "timed out after {WAIT:?} waiting for a close frame ({what}); \
                     skipped {skipped} frames, last {last:?}"
                ),
                Err(RecvEnd::Ended(e)) => panic!(
                    "connection ended without a close frame ({e}) while waiting for {what}; \
                     skipped {skipped} frames, last {last:?}"
                ),
            }
        };
        self.finish_close().await;
        closed
    }

    /// After a close frame: lets tungstenite send its close reply, then half-closes TCP.
    pub async fn finish_close(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        // Bounded: the stream ends right after the close reply is flushed.
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() {
            let _ = tcp.shutdown().await;
        }
    }

    /// Proves absence: fails if any frame arrives within `ms` milliseconds.
    pub async fn assert_silent(&mut self, ms: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        match self.recv_until(deadline).await {
            Err(RecvEnd::Timeout) => {}
            Ok(f) => panic!("expected no frame within {ms} ms ({what}), got {f:?}"),
            Err(RecvEnd::Ended(e)) => {
                panic!("connection ended ({e}) while checking for silence ({what})")
            }
        }
    }

    /// Whether the connection is still open: a heartbeat gets its reply (skipping other frames).
    pub async fn assert_alive(&mut self, what: &str) {
        let r = self.heartbeat().await;
        self.expect_reply("phoenix", &r, &format!("a heartbeat reply ({what})"))
            .await;
    }

    /// Sends a close frame and drops the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        drop(self);
    }
}

/// A JSON payload for [`WsClient::send_broadcast`].
pub fn json_payload(v: &Value) -> Payload {
    Payload::Json(bytes::Bytes::from(v.to_string()))
}

/// A raw-bytes payload for [`WsClient::send_broadcast`].
pub fn bin_payload(b: &[u8]) -> Payload {
    Payload::Binary(bytes::Bytes::copy_from_slice(b))
}

/// Polls `cond` every 10 ms until it holds, at most [`WAIT`]; panics naming `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `reqwest` client with a timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("build reqwest client")
}
