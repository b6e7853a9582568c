//! Terminal WebSocket: `GET /v1/terminal/{id}?role=host|viewer` (issue 6).
//!
//! - `host`: the worker that owns the PTY (service role only). Its binary frames are output,
//!   relayed to every viewer and kept in the scrollback; it receives viewers' input as binary
//!   frames and `resize` messages.
//! - `viewer`: anyone who may read the terminal. The terminal's id is its workspace (build)
//!   session's id, so the build kind's rules apply: its owner and the service role may view and
//!   drive, a share-token holder may only watch. `?cursor=<byte offset>` resumes the output
//!   after that offset when the scrollback still holds it.
//!
//! The token comes as an `access_token` query parameter (browsers cannot set headers on a
//! WebSocket) or `Authorization: Bearer`. Text frames are JSON control messages
//! ([`channels::terminal::wire`]); refusals are `{"type":"error","message":…}` and the
//! connection stays open. Frames are written as soon as they are queued (no batching timer):
//! keystroke echo latency is the point of this transport.

use std::io;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use channels::kinds::Access;
use channels::outbox::CloseReason;
use channels::terminal::{Ask, ClientMsg, ServerMsg};

use channels::ws_frame::{self, Assembler, Message, Opcode, Role};
use channels::{OutFrame, Outbox, Principal, TokenVerifier, TopicKey};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::credentials;
use crate::api::error::upgrade_error;
use crate::state::AppState;
use crate::transport::query::query_param;
use crate::transport::ws;

/// A connection silent for this long is closed (clients ping every 30 s, seed 003).
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Relay history read per page, and at most this many pages, when a node starts relaying a
/// terminal.
const LOAD_PAGE: usize = 1000;
const LOAD_PAGES: usize = 100;

/// How long a connection waits for another one to finish loading the terminal's view.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Which end of the terminal a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Host,
    Viewer { may_drive: bool },
}

/// Validates the request, authorises the role, then upgrades and relays.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    let key = match ws::websocket_key(req.headers()) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    if !crate::transport::origin::allowed(req.headers(), &state.config.allowed_origins) {
        return upgrade_error(StatusCode::FORBIDDEN, "Origin not allowed");
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| query_param(&query, name).map(|v| v.into_owned());
    let token = credentials::jwt(req.headers())
        .map(str::to_owned)
        .or_else(|| param("access_token"))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return upgrade_error(
            StatusCode::UNAUTHORIZED,
            "A token is required: access_token query parameter or Authorization: Bearer",
        );
    };
    let principal = match state.verifier.verify(&token) {
        Ok(p) => p,
        Err(e) => return upgrade_error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    if id.is_empty() || id.len() > 200 || channels::terminal::relay_topic(&id).is_none() {
        return upgrade_error(StatusCode::BAD_REQUEST, "Invalid terminal id");
    }
    let side = match param("role").as_deref() {
        Some("host") if principal.is_service() => Side::Host,
        Some("host") => {
            return upgrade_error(
                StatusCode::FORBIDDEN,
                "Forbidden: only the service role may host a terminal",
            );
        }
        Some("viewer") | None => match authorize_viewer(&state, &principal, &id).await {
            Ok(may_drive) => Side::Viewer { may_drive },
            Err(reason) => return upgrade_error(StatusCode::FORBIDDEN, &reason),
        },
        Some(other) => {
            return upgrade_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid role {other:?}: expected host or viewer"),
            );
        }
    };
    let cursor = match param("cursor") {
        None => None,
        Some(c) => match c.parse::<u64>() {
            Ok(c) => Some(c),
            Err(_) => {
                return upgrade_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid cursor: expected a byte offset",
                );
            }
        },
    };
    let sub = principal
        .sub
        .clone()
        .unwrap_or_else(|| principal.role.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let st = state.clone();
    state.tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("upgraded connection is not a TCP stream");
            return;
        };
        let stream = parts.io.into_inner();
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            id,
            side,
            sub,
            cursor,
            state: st,
        };
        conn.run(stream, parts.read_buf).await;
    });
    ws::switching_protocols(&key)
}

/// Whether `principal` may view terminal `id` (`Err` with the reason if not), and whether it
/// may also drive: the build session's read and write rules.
async fn authorize_viewer(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<bool, String> {
    let topic = TopicKey::new(&format!("build:{id}"), false).map_err(|e| e.to_string())?;
    state
        .node
        .kinds
        .authorize(principal, &topic, Access::Read)
        .await
        .map_err(|d| {
            d.0.replace(&format!("build:{id}"), &format!("terminal:{id}"))
        })?;
    Ok(state
        .node
        .kinds
        .authorize(principal, &topic, Access::Write)
        .await
        .is_ok())
}

/// One terminal connection.
struct Conn {
    id: String,
    side: Side,
    sub: String,
    cursor: Option<u64>,
    state: AppState,
}

impl Conn {
    async fn run(self, stream: TcpStream, leftover: Bytes) {
        let node = self.state.node.clone();
        let conn_id = node.next_conn_id();
        let outbox = Outbox::new(node.config.outbox);
        node.connections.register(conn_id, &outbox);
        // Checked before the upgrade, so this only guards against a changed rule.
        let Some(relay) = channels::terminal::relay_topic(&self.id) else {
            node.connections.unregister(conn_id);
            return;
        };
        if let Err(e) = node.broker.subscribe(&relay).await {
            tracing::warn!(terminal = %self.id, error = %e, "subscribing to the terminal relay failed");
        }
        self.load().await;
        let terminals = &node.terminals;
        let attached = match self.side {
            Side::Host => {
                let relays = terminals.attach_host(&self.id, conn_id, outbox.clone());
                self.publish(relays).await;
                true
            }
            Side::Viewer { may_drive } => match terminals.attach_viewer(
                &self.id,
                conn_id,
                &self.sub,
                may_drive,
                self.cursor,
                outbox.clone(),
            ) {
                Ok(()) => true,
                Err(e) => {
                    outbox.push(text(&ServerMsg::Error {
                        message: e.to_string(),
                    }));
                    outbox.close(CloseReason::Server {
                        code: 4029,
                        reason: "too many terminals".into(),
                    });
                    false
                }
            },
        };
        let limiter =
            channels::limits::KeyedLimiter::per_second(self.state.config.terminal_input_per_sec);
        let outcome = self
            .relay(&stream, leftover, &outbox, conn_id, &limiter)
            .await;
        tracing::debug!(terminal = %self.id, conn = conn_id, ?outcome, "terminal connection ended");
        if attached {
            let relays = match self.side {
                Side::Host => terminals.detach_host(&self.id, conn_id),
                Side::Viewer { .. } => terminals.detach_viewer(&self.id, conn_id),
            };
            self.publish(relays).await;
        }
        terminals.close(&self.id);
        if let Err(e) = node.broker.unsubscribe(&relay).await {
            tracing::warn!(terminal = %self.id, error = %e, "unsubscribing from the terminal relay failed");
        }
        node.connections.unregister(conn_id);
    }

    /// Makes this node's view of the terminal current before attaching: the first local
    /// connection reads the relay topic's history (scrollback, host, driver); others wait for it.
    async fn load(&self) {
        let node = &self.state.node;
        if !node.terminals.open(&self.id) {
            if !node.terminals.wait_loaded(&self.id, LOAD_TIMEOUT).await {
                tracing::warn!(terminal = %self.id, "another connection's load of the terminal did not finish in time");
            }
            return;
        }
        let Some(relay) = channels::terminal::relay_topic(&self.id) else {
            return;
        };
        let mut after = channels::Since::Beginning;
        for _ in 0..LOAD_PAGES {
            let page = match node.broker.read(&relay, &after, LOAD_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(terminal = %self.id, error = %e, "reading the terminal relay history failed");
                    break;
                }
            };
            let n = page.messages.len();
            let relays = node.terminals.load_history(&self.id, &page.messages);
            self.publish(relays).await;
            match page.messages.last().and_then(|e| e.cursor.clone()) {
                Some(c) if n == LOAD_PAGE => after = channels::Since::After(c),
                _ => break,
            }
        }
        let relays = node.terminals.finish_load(&self.id);
        self.publish(relays).await;
    }

    async fn publish(&self, relays: Vec<channels::terminal::Relay>) {
        for r in relays {
            let Some(publication) = r.publication() else {
                continue;
            };
            if let Err(e) = self.state.node.broker.publish(publication).await {
                tracing::warn!(terminal = %self.id, error = %e, "publishing on the terminal relay failed");
            }
        }
    }

    /// Reads frames and writes the outbox until either side ends.
    async fn relay(
        &self,
        stream: &TcpStream,
        leftover: Bytes,
        outbox: &Outbox,
        conn_id: channels::ConnId,
        limiter: &channels::limits::KeyedLimiter,
    ) -> io::Result<&'static str> {
        let max = self.state.config.terminal_max_frame;
        let mut rbuf: Vec<u8> = leftover.to_vec();
        let mut asm = Assembler::default();
        let mut frames: Vec<OutFrame> = Vec::new();
        let mut wbuf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
        loop {
            // Decode every complete frame read so far.
            let mut pos = 0;
            loop {
                let parsed = match ws_frame::parse_frame(&mut rbuf[pos..], Role::Server, max) {
                    Ok(p) => p,
                    Err(e) => {
                        close(stream, &mut wbuf, e.close_code(), &e.to_string()).await;
                        return Ok("protocol error");
                    }
                };
                let Some((frame, used)) = parsed else { break };
                pos += used;
                match asm.push(frame, max) {
                    Err(e) => {
                        close(stream, &mut wbuf, e.close_code(), &e.to_string()).await;
                        return Ok("protocol error");
                    }
                    Ok(None) => {}
                    Ok(Some(Message::Close(_))) => {
                        close(stream, &mut wbuf, 1000, "").await;
                        return Ok("peer closed");
                    }
                    Ok(Some(Message::Ping(p))) => {
                        ws_frame::write_frame(&mut wbuf, Opcode::Pong, p, None);
                    }
                    Ok(Some(Message::Pong)) => {}
                    Ok(Some(Message::Binary(b))) => {
                        self.on_binary(b, outbox, conn_id, limiter).await;
                    }
                    Ok(Some(Message::Text(t))) => match std::str::from_utf8(t) {
                        Ok(t) => self.on_text(t, outbox, conn_id).await,
                        Err(_) => {
                            close(stream, &mut wbuf, 1007, "text frame is not UTF-8").await;
                            return Ok("protocol error");
                        }
                    },
                }
                asm.release();
            }
            rbuf.drain(..pos);
            if !wbuf.is_empty() {
                stream_write(stream, &mut wbuf).await?;
                if matches!(self.side, Side::Viewer { .. }) {
                    // A viewer that skipped output while behind catches up once drained.
                    self.state.node.terminals.resync(&self.id, conn_id);
                }
            }
            tokio::select! {
                r = stream.readable() => {
                    r?;
                    match stream.try_read(&mut chunk) {
                        Ok(0) => return Ok("eof"),
                        Ok(n) => {
                            rbuf.extend_from_slice(&chunk[..n]);
                            deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                () = std::future::poll_fn(|cx| outbox.poll_ready(cx)) => {
                    if let Some(reason) = outbox.drain(&mut frames) {
                        encode(&mut wbuf, &mut frames);
                        let (code, text) = match reason {
                            CloseReason::Slow => (4008, "slow reader: reconnect with your cursor".to_owned()),
                            CloseReason::Shutdown => (1001, "server shutting down".to_owned()),
                            CloseReason::Server { code, reason } => (code, reason),
                        };
                        close(stream, &mut wbuf, code, &text).await;
                        return Ok("closed by the server");
                    }
                    encode(&mut wbuf, &mut frames);
                }
                () = tokio::time::sleep_until(deadline) => {
                    close(stream, &mut wbuf, 1000, "idle timeout").await;
                    return Ok("idle");
                }
            }
        }
    }

    async fn on_binary(
        &self,
        bytes: &[u8],
        outbox: &Outbox,
        conn: channels::ConnId,
        limiter: &channels::limits::KeyedLimiter,
    ) {
        let terminals = &self.state.node.terminals;
        match self.side {
            Side::Host => {
                if let Some(r) = terminals.host_output(&self.id, conn, bytes) {
                    self.publish(vec![r]).await;
                }
            }
            Side::Viewer { .. } => {
                if let Err(wait) = limiter.check("input") {
                    outbox.push(text(&ServerMsg::Error {
                        message: format!(
                            "RateLimitExceeded: too much terminal input (limit {}); retry in {} ms",
                            limiter.describe(),
                            wait.as_millis().max(1)
                        ),
                    }));
                    return;
                }
                match terminals.viewer_input(&self.id, conn, bytes) {
                    Ok(r) => self.publish(vec![r]).await,
                    Err(why) => {
                        outbox.push(text(&ServerMsg::Error {
                            message: why.to_owned(),
                        }));
                    }
                }
            }
        }
    }

    async fn on_text(&self, t: &str, outbox: &Outbox, conn: channels::ConnId) {
        let terminals = &self.state.node.terminals;
        let msg = match ClientMsg::parse(t) {
            Err(message) => {
                outbox.push(text(&ServerMsg::Error { message }));
                return;
            }
            Ok(m) => m,
        };
        let result = match (msg, self.side) {
            (ClientMsg::Ping, _) => {
                outbox.push(text(&ServerMsg::Pong));
                return;
            }
            (ClientMsg::Resize { cols, rows }, Side::Host) => {
                Ok(terminals.host_resize(&self.id, conn, cols, rows))
            }
            (ClientMsg::Resize { cols, rows }, Side::Viewer { .. }) => terminals
                .viewer_ask(&self.id, conn, Ask::Input, Some((cols, rows)))
                .map(Some),
            (ClientMsg::TakeControl | ClientMsg::Release, Side::Host) => {
                Err("Invalid: the host does not drive its own terminal")
            }
            (ClientMsg::TakeControl, _) => terminals
                .viewer_ask(&self.id, conn, Ask::TakeControl, None)
                .map(Some),
            (ClientMsg::Release, _) => terminals
                .viewer_ask(&self.id, conn, Ask::Release, None)
                .map(Some),
        };
        match result {
            Ok(Some(r)) => self.publish(vec![r]).await,
            Ok(None) => {}
            Err(why) => {
                outbox.push(text(&ServerMsg::Error {
                    message: why.to_owned(),
                }));
            }
        }
    }
}

/// Runs the node's terminal relay task: publishes what applying relay messages produced
/// (control decisions, answers to `hello`) and shares terminal presence. Ends when the node's
/// terminals are dropped.
pub async fn run_relay(node: std::sync::Arc<channels::Node>) {
    let Some(mut jobs) = node.terminals.take_jobs() else {
        return;
    };
    while let Some(job) = jobs.recv().await {
        match job {
            channels::terminal::Job::Relay(r) => {
                let Some(publication) = r.publication() else {
                    continue;
                };
                if let Err(e) = node.broker.publish(publication).await {
                    tracing::warn!(error = %e, "publishing on a terminal relay failed");
                }
            }
            channels::terminal::Job::Track(topic, member, key, meta) => {
                if let Err(e) = node
                    .broker
                    .presence_track(&topic, member, &key, &meta)
                    .await
                {
                    tracing::warn!(error = %e, "sharing terminal presence failed");
                }
            }
            channels::terminal::Job::Untrack(topic, member) => {
                if let Err(e) = node.broker.presence_untrack(&topic, member).await {
                    tracing::warn!(error = %e, "sharing the end of terminal presence failed");
                }
            }
        }
    }
}

fn text(msg: &ServerMsg) -> OutFrame {
    OutFrame::Text(Bytes::from(msg.to_text()))
}

fn encode(out: &mut Vec<u8>, frames: &mut Vec<OutFrame>) {
    for f in frames.drain(..) {
        let (bytes, binary) = f.into_wire();
        let op = if binary { Opcode::Binary } else { Opcode::Text };
        ws_frame::write_header(out, op, bytes.len(), None);
        out.extend_from_slice(&bytes);
    }
}

async fn stream_write(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        stream.writable().await?;
        match stream.try_write(&buf[pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    Ok(())
}

/// Sends what is pending and a close frame, bounded in time (a peer that stopped reading must
/// not keep the task alive).
async fn close(stream: &TcpStream, buf: &mut Vec<u8>, code: u16, reason: &str) {
    ws_frame::write_close(buf, code, reason, None);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream_write(stream, buf)).await;
}
