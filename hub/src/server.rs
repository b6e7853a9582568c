//! The accept loop: HTTP/1.1 with upgrades on every accepted socket, and graceful shutdown.
//!
//! The hub runs its own loop over hyper instead of `axum::serve` for two reasons: the WebSocket
//! transport needs the raw `TcpStream` back after the upgrade (to read and write it without any
//! library buffer, see `transport::conn`), which only works when hyper is given the stream
//! directly; and accept errors such as running out of file descriptors must back off rather than
//! spin, which matters on machines capped at 20,000 open files.

use std::future::Future;
use std::io;
use std::time::Duration;

use channels::CloseReason;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::routes::router;
use crate::state::AppState;
use crate::transport::sse;

/// Pending-connection queue length. tokio's `TcpListener::bind` uses 128, which overflows when
/// thousands of clients reconnect at once (the kernel then drops SYNs and clients retry after a
/// second); the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep accept queue (see [`LISTEN_BACKLOG`]).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes, then closes every connection (WebSockets get a close
/// frame) and waits for them, at most the configured drain timeout.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = router(state.clone());
    let evictor = state.tasks.spawn(evict_history(state.clone()));
    let terminal_relay = tokio::spawn(crate::transport::terminal::run_relay(state.node.clone()));
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    backoff = Duration::from_millis(5);
                    if state.conn_rate.check(&peer.ip().to_string()).is_err() {
                        state.node.stats.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        state.tasks.spawn(refuse_busy(tcp));
                        continue;
                    }
                    let app = app.clone();
                    let state2 = state.clone();
                    state.tasks.spawn(serve_http(tcp, app, state2));
                }
                Err(e) => {
                    // EMFILE and friends: the socket stays in the backlog; wait for descriptors
                    // to be freed instead of spinning on the same error.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    drop(listener);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drain_in_batches(&state).await;
    let open = state.node.connections.close_all(CloseReason::Shutdown);
    tracing::info!(connections = open, "shutting down: closing connections");
    state.shutdown.cancel();
    state.tasks.close();
    let drain = state.config.drain_timeout;
    if tokio::time::timeout(drain, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = state.tasks.len(),
            "drain timeout reached; exiting with connections still open"
        );
    }
    evictor.abort();
    terminal_relay.abort();
    state.backends.close().await;
    Ok(())
}

/// How often a batch of connections is closed while draining.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Closes the open connections in equal batches spread over `--drain-window` (each told
/// "Server requested disconnect"), so their clients reconnect to other nodes over the window
/// rather than all at once. Connections arriving meanwhile are closed at once; readiness
/// already answers 503. Returns early when every connection is gone.
async fn drain_in_batches(state: &AppState) {
    let window = state.config.drain_window;
    let open = state.node.connections.stop_accepting(CloseReason::Shutdown);
    if window.is_zero() || open == 0 {
        return;
    }
    let ticks = (window.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
    let per_tick = open.div_ceil(ticks);
    tracing::info!(
        connections = open,
        window_ms = window.as_millis() as u64,
        per_tick,
        "draining: closing connections in batches"
    );
    let mut tick = tokio::time::interval(DRAIN_TICK);
    for _ in 0..ticks {
        tick.tick().await;
        if state.node.connections.close_some(per_tick) == 0 {
            return;
        }
    }
}

/// Answers a connection over its address's rate (`--connections-per-sec-per-ip`) with a 429
/// without routing, parsing or authenticating it: turning it away must cost less than serving
/// it. The request head is read (briefly, bounded) and discarded first, because HTTP clients
/// reject an answer that arrives before their request was sent, and closing with unread bytes
/// would reset the connection before the client reads the answer.
async fn refuse_busy(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const BODY: &str = r#"{"error":"Too many connections per second from this address"}"#;
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    // Short timeouts: a flood of refused connections must not pile up open sockets.
    let mut chunk = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let mut seen = Vec::new();
        while seen.len() < 16 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await? {
                0 => break,
                n => seen.extend_from_slice(&chunk[..n]),
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut chunk).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

async fn serve_http(tcp: TcpStream, app: axum::Router, state: AppState) {
    // Small frames (heartbeat replies, single broadcasts) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    // A client that connected but has not sent its first request yet must not hold up
    // shutdown.
    let stream = tokio::select! {
        s = is_event_stream(&tcp) => s,
        _ = state.shutdown.cancelled() => return,
    };
    if stream {
        return sse::serve(tcp, state).await;
    }
    let service = TowerToHyperService::new(app);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(state.config.drain_timeout, conn).await;
        }
    }
}

/// Whether the connection's first request is `GET /v1/sse/…` (peeked, not consumed). Event
/// streams are served on the raw socket (see `transport::sse`); everything else goes to hyper.
async fn is_event_stream(tcp: &TcpStream) -> bool {
    let mut head = [0u8; sse::PREFIX.len()];
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || head[..n] != sse::PREFIX[..n] {
            return false;
        }
        if n == head.len() {
            return true;
        }
        // A prefix arrived but not the whole request line start: wait for more bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Periodically forgets idle topics' in-memory history (see `MemoryBroker::evict_idle`) and,
/// with Postgres, outbox rows past their retention.
async fn evict_history(state: AppState) {
    let memory = state.backends.memory.clone();
    let ttl = state.config.history_ttl;
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                state.conn_rate.shrink();
                state.node.user_messages.shrink();
                state.node.user_joins.shrink();
                let freed = state.node.terminals.sweep(std::time::Instant::now());
                if freed > 0 {
                    tracing::debug!(terminals = freed, "freed idle terminals");
                }
                let n = memory.evict_idle(ttl);
                if n > 0 {
                    tracing::debug!(topics = n, "evicted idle topic history");
                }
                if let Some(pg) = &state.backends.postgres
                    && prune_due(&mut last_prune)
                {
                    match store::pg::prune_outbox(&pg.pool, pg.retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "pruned outbox rows past retention"),
                        Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
                    }
                }
            }
        }
    }
}

/// Outbox pruning runs at most every ten minutes.
fn prune_due(last: &mut Option<tokio::time::Instant>) -> bool {
    let now = tokio::time::Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(600)) {
        return false;
    }
    *last = Some(now);
    true
}
