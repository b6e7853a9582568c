//! Server-sent events: `GET /v1/sse/{topic}` streams any topic the caller may read.
//!
//! Each message is `id: <cursor>`, `event: <event>`, `data: <JSON>`; the stream starts with a
//! `retry:` hint and carries a comment heartbeat. A reconnecting `EventSource` sends the last id
//! it saw as `Last-Event-ID` (or a client passes `?since=`), and the stream replays what history
//! still holds after it, exactly once, then goes live; when that is not possible it says so with
//! a `system` event first.
//!
//! Authentication: `Authorization: Bearer`, an `access_token` query parameter (`EventSource`
//! cannot set headers), or an `access_token` cookie. Authorisation is the topic kind's read rule,
//! as for a WebSocket join.
//!
//! The server's accept loop hands these requests here before hyper sees them (it peeks at the
//! request line): the stream then runs on the raw socket with the same lean connection task as a
//! WebSocket, so an idle stream costs a few KiB instead of an HTTP connection's buffers.

use std::time::Duration;

use channels::codec::sse;
use channels::{Format, OutFrame, Outbox, Principal, Session, Since, TokenVerifier, TopicKey};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::app_error::{AppError, ErrorCode};
use crate::api::credentials;
use crate::api::request_id::RequestId;
use crate::state::AppState;
use crate::transport::conn::{self, ConnParams, Wire};
use crate::transport::query::{parse_query, percent_decode};

/// The request line prefix that routes a connection here.
pub const PREFIX: &[u8] = b"GET /v1/sse/";

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The reconnect delay suggested to `EventSource` (its `retry:` field), in milliseconds.
const RETRY_MS: u64 = 2000;

/// The parts of the request the stream needs.
struct Request {
    topic: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves one SSE request on `tcp` until the stream ends.
pub async fn serve(mut tcp: TcpStream, state: AppState) {
    let request_id = RequestId::generate();
    let req = match tokio::time::timeout(HEAD_TIMEOUT, read_request(&mut tcp)).await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return respond_error(&mut tcp, &request_id, e).await,
        Err(_) => return, // a client that never finished its request: just close
    };
    let request_id = req
        .headers
        .get("x-request-id")
        .and_then(RequestId::from_incoming)
        .unwrap_or(request_id);
    let (session, outbox) = match admit(&state, &req).await {
        Ok(x) => x,
        Err(e) => return respond_error(&mut tcp, &request_id, e).await,
    };
    drop(req);
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nx-request-id: {}\r\n\r\n",
        request_id.as_str()
    );
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let params = ConnParams {
        idle_timeout: state.config.sse_heartbeat,
        max_frame: 0,
        wire: Wire::EventStream,
    };
    // A task of its own, sized for the stream alone: this task's future is sized for the
    // request parsing above and for hyper's connection state in the caller, which an idle
    // stream would otherwise carry for its whole life (measured: 6.5 KB → 3 KB per stream).
    state
        .tasks
        .spawn(conn::run(tcp, bytes::Bytes::new(), session, outbox, params));
}

/// Authenticates, authorises and joins: the session is live when this returns `Ok`.
async fn admit(state: &AppState, req: &Request) -> Result<(Session, Outbox), AppError> {
    if !crate::transport::origin::allowed(&req.headers, &state.config.allowed_origins) {
        return Err(AppError::new(ErrorCode::Forbidden, "Origin not allowed"));
    }
    let token = credentials::jwt(&req.headers)
        .map(str::to_owned)
        .or_else(|| req.param("access_token").map(str::to_owned))
        .or_else(|| cookie(&req.headers, "access_token"))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            AppError::new(
                ErrorCode::AuthenticationRequired,
                "A token is required: Authorization: Bearer, access_token query parameter or cookie",
            )
        })?;
    let principal: Principal = state
        .verifier
        .verify(&token)
        .map_err(|e| AppError::new(ErrorCode::InvalidToken, e.to_string()))?;
    let private = req.param("private") == Some("true");
    let topic = TopicKey::new(&req.topic, private)
        .map_err(|e| AppError::new(ErrorCode::ValidationError, e.to_string()))?;
    let since = req
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.param("since"))
        .filter(|s| !s.is_empty())
        .map(Since::parse)
        .transpose()
        .map_err(|e| AppError::new(ErrorCode::ValidationError, e.to_string()))?;
    let claim = state
        .node
        .user_connections
        .claim(&principal)
        .map_err(|e| AppError::new(ErrorCode::RateLimited, e.to_string()))?;
    let outbox = Outbox::new(state.node.config.outbox);
    let mut session = Session::new(
        state.node.clone(),
        Format::Sse,
        outbox.clone(),
        &token,
        principal,
    );
    session.hold(claim);
    let first = OutFrame::Text(bytes::Bytes::from(sse::preamble(RETRY_MS)));
    session
        .join_stream(topic, since, first)
        .await
        .map_err(|reason| AppError::new(ErrorCode::Forbidden, reason))?;
    Ok((session, outbox))
}

/// A cookie's value.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_owned())
        })
}

/// Reads and parses the request head (the stream has no body).
async fn read_request(tcp: &mut TcpStream) -> Result<Request, AppError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| AppError::new(ErrorCode::ValidationError, e.to_string()))?;
        if n == 0 {
            return Err(AppError::new(
                ErrorCode::ValidationError,
                "connection closed before the request was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(req) = parse_head(&buf)? {
            return Ok(req);
        }
        if buf.len() > MAX_HEAD {
            return Err(AppError::new(
                ErrorCode::ValidationError,
                "request head too large",
            ));
        }
    }
}

/// Parses a request head; `Ok(None)` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Request>, AppError> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut raw);
    let bad = |m: &str| AppError::new(ErrorCode::ValidationError, m.to_owned());
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(e) => return Err(bad(&format!("malformed request: {e}"))),
    }
    let path = parsed.path.unwrap_or("");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let topic = path
        .strip_prefix("/v1/sse/")
        .ok_or_else(|| bad("not an SSE path"))?;
    let topic = percent_decode(topic, false).ok_or_else(|| bad("topic is not valid UTF-8"))?;
    let query = parse_query(query);
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }
    Ok(Some(Request {
        topic,
        query,
        headers,
    }))
}

/// The same stream for a request that was not its connection's first (a client reusing a
/// keep-alive connection, as browsers and `fetch` do): hyper already owns that connection, so
/// the events go out as a streaming response body instead of on the raw socket. Costs a task
/// and hyper's buffers per stream; the common case (an `EventSource`'s own connection) takes
/// the lean path in [`serve`].
pub async fn over_http(
    axum::extract::State(state): axum::extract::State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<axum::response::Response, AppError> {
    let topic = uri
        .path()
        .strip_prefix("/v1/sse/")
        .and_then(|t| percent_decode(t, false))
        .ok_or_else(|| AppError::new(ErrorCode::ValidationError, "topic is not valid UTF-8"))?;
    let req = Request {
        topic,
        query: parse_query(uri.query().unwrap_or("")),
        headers,
    };
    let (session, outbox) = admit(&state, &req).await?;
    // Bounded: the pump waits while hyper has not taken the previous chunks (the outbox
    // behind it is the real bound, with its slow-reader rule).
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    state
        .tasks
        .spawn(pump(session, outbox, tx, state.config.sse_heartbeat));
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    }));
    let mut resp = axum::response::Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Moves a session's outbox into a response body until the client goes away, the session ends
/// (token expiry, shutdown, slow reader) or its topic closes.
async fn pump(
    mut session: Session,
    outbox: Outbox,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    heartbeat: Duration,
) {
    let mut frames = Vec::new();
    let mut beat = tokio::time::Instant::now() + heartbeat;
    'run: loop {
        let timer = session.next_deadline().map_or(beat, |d| d.min(beat));
        tokio::select! {
            () = std::future::poll_fn(|cx| outbox.poll_ready(cx)) => {
                let closed = outbox.drain(&mut frames);
                for f in frames.drain(..) {
                    if tx.send(f.into_wire().0).await.is_err() {
                        break 'run;
                    }
                }
                if let Some(reason) = closed {
                    // The same notices as on the raw-socket path (`conn::finish_outbox`).
                    if let Some((status, message)) = reason.notice() {
                        for f in session.notices(status, message) {
                            if tx.send(f.into_wire().0).await.is_err() {
                                break;
                            }
                        }
                    }
                    break;
                }
            }
            () = tokio::time::sleep_until(timer) => {
                if tokio::time::Instant::now() >= beat {
                    beat = tokio::time::Instant::now() + heartbeat;
                    if tx.send(bytes::Bytes::from_static(sse::HEARTBEAT)).await.is_err() {
                        break;
                    }
                }
                Box::pin(session.on_timer()).await;
                if session.channel_count() == 0 {
                    // Its one topic was closed (token expired): the stream ends, after the
                    // notice that says why (queued by the session just now).
                    outbox.drain(&mut frames);
                    for f in frames.drain(..) {
                        if tx.send(f.into_wire().0).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
            () = tx.closed() => break,
        }
    }
    session.close().await;
}

/// Answers with the hub's JSON error and closes.
async fn respond_error(tcp: &mut TcpStream, request_id: &RequestId, e: AppError) {
    let status: StatusCode = e.status();
    let body = e.body(Some(request_id.as_str())).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        request_id.as_str()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topic_query_and_headers() {
        let raw = b"GET /v1/sse/chat%3A42?access_token=abc&since=e%3A3 HTTP/1.1\r\nHost: x\r\n\
                    Last-Event-ID: e:7\r\nCookie: a=1; access_token=tok\r\n\r\n";
        let req = parse_head(raw).unwrap().unwrap();
        assert_eq!(req.topic, "chat:42");
        assert_eq!(req.param("access_token"), Some("abc"));
        assert_eq!(req.param("since"), Some("e:3"));
        assert_eq!(req.headers.get("last-event-id").unwrap(), "e:7");
        assert_eq!(cookie(&req.headers, "access_token").as_deref(), Some("tok"));
        assert!(
            parse_head(b"GET /v1/sse/x HTTP/1.1\r\nHost")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"\x00\x01 garbage\r\n\r\n").is_err());
    }
}
