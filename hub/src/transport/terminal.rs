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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// A connection silent for this long is closed (clients ping every 30 s, seed 003).
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

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
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_owned())
        })
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return upgrade_error(
            StatusCode::BAD_REQUEST,
            "Expected a WebSocket upgrade request",
        );
    };
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
    if id.is_empty() || id.len() > 200 {
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
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&ws_frame::accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
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
        let terminals = &node.terminals;
        match self.side {
            Side::Host => terminals.attach_host(&self.id, conn_id, outbox.clone()),
            Side::Viewer { may_drive } => {
                if let Err(e) = terminals.attach_viewer(
                    &self.id,
                    conn_id,
                    &self.sub,
                    may_drive,
                    self.cursor,
                    outbox.clone(),
                ) {
                    outbox.push(text(&ServerMsg::Error {
                        message: e.to_string(),
                    }));
                    outbox.close(CloseReason::Server {
                        code: 4029,
                        reason: "too many terminals".into(),
                    });
                }
            }
        }
        let limiter =
            channels::limits::KeyedLimiter::per_second(self.state.config.terminal_input_per_sec);
        let outcome = self
            .relay(&stream, leftover, &outbox, conn_id, &limiter)
            .await;
        tracing::debug!(terminal = %self.id, conn = conn_id, ?outcome, "terminal connection ended");
        match self.side {
            Side::Host => terminals.detach_host(&self.id, conn_id),
            Side::Viewer { .. } => terminals.detach_viewer(&self.id, conn_id),
        }
        node.connections.unregister(conn_id);
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
                        self.on_binary(Bytes::copy_from_slice(b), outbox, conn_id, limiter);
                    }
                    Ok(Some(Message::Text(t))) => match std::str::from_utf8(t) {
                        Ok(t) => self.on_text(t, outbox, conn_id),
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

    fn on_binary(
        &self,
        bytes: Bytes,
        outbox: &Outbox,
        conn: channels::ConnId,
        limiter: &channels::limits::KeyedLimiter,
    ) {
        let terminals = &self.state.node.terminals;
        match self.side {
            Side::Host => terminals.output(&self.id, conn, bytes),
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
                if let Err(why) = terminals.input(&self.id, conn, bytes) {
                    outbox.push(text(&ServerMsg::Error {
                        message: why.to_owned(),
                    }));
                }
            }
        }
    }

    fn on_text(&self, t: &str, outbox: &Outbox, conn: channels::ConnId) {
        let terminals = &self.state.node.terminals;
        let result = match ClientMsg::parse(t) {
            Err(message) => {
                outbox.push(text(&ServerMsg::Error { message }));
                return;
            }
            Ok(ClientMsg::Ping) => {
                outbox.push(text(&ServerMsg::Pong));
                return;
            }
            Ok(ClientMsg::Resize { cols, rows }) => terminals.resize(&self.id, conn, cols, rows),
            Ok(ClientMsg::TakeControl | ClientMsg::Release) if self.side == Side::Host => {
                Err("Invalid: the host does not drive its own terminal")
            }
            Ok(ClientMsg::TakeControl) => terminals.control(&self.id, conn, Ask::TakeControl),
            Ok(ClientMsg::Release) => terminals.control(&self.id, conn, Ask::Release),
        };
        if let Err(why) = result {
            outbox.push(text(&ServerMsg::Error {
                message: why.to_owned(),
            }));
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
