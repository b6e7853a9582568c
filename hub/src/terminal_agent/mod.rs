//! `hub terminal-agent`: runs a command in a PTY and hosts it on the hub as terminal `<id>`
//! (issue 6), so viewers in the browser see its output and the driver types into it.
//!
//! The agent dials `<hub>/v1/terminal/<id>?role=host` with `Authorization: Bearer <token>` (a
//! service-role token). The PTY outlives connections: when one drops, the agent reconnects with
//! [`Backoff`] while the command keeps running, and output produced meanwhile waits in the
//! [`Outbox`] (the newest 256 KiB) to be sent first on the next connection. When the command
//! exits, the agent sends the rest of its output and exits with the command's exit code.
//!
//! # Tasks
//! - PTY reader ([`pty::pump_output`]): PTY → [`Outbox`], 16 KiB reads, each queued at once.
//! - PTY writer ([`pty::apply_input`]): input and resizes from a bounded queue → PTY.
//! - Host loop ([`host`]): connect, then per connection a sender (outbox → binary frames, and
//!   pings) and a receiver (frames → input queue) running side by side, so a program that is not
//!   reading its input never keeps its output from going out (and the reverse).
//!
//! Latency: the socket has `TCP_NODELAY`, each read from the PTY is sent as its own frame and
//! flushed, and each input frame is written to the PTY as it arrives; there are no timers in
//! the data path.

pub mod outbox;
pub mod protocol;
pub mod pty;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use self::outbox::{OUTPUT_BUFFER_BYTES, Outbox};
use self::protocol::{Backoff, HubMsg, INITIAL_SIZE, PING, PING_INTERVAL, SILENCE_LIMIT, Target};
use self::pty::{INPUT_QUEUE, Input, PtyProcess};

/// A TCP connect plus WebSocket handshake taking longer than this is abandoned and retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// After the command exits, how long to wait for the end of its output (the PTY reports it once
/// every process holding the terminal is gone; a daemon the command left behind may never go).
const OUTPUT_END_GRACE: Duration = Duration::from_secs(2);

/// After the output ended, how long to keep trying to deliver what is queued (including
/// reconnecting) before exiting anyway.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// How long the closing handshake may take before the agent exits regardless.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What to run and where to host it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The hub's base URL (`ws://host:port`, `http://` also accepted).
    pub hub: String,
    /// The terminal's id.
    pub id: String,
    /// The service-role token sent as `Authorization: Bearer`.
    pub token: String,
    /// The program to run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// `TERM` for the command.
    pub term: String,
}

/// The connection's fixed inputs.
#[derive(Debug)]
struct Endpoint {
    target: Target,
    authorization: HeaderValue,
}

/// Runs the command in a PTY and hosts it until it exits; returns its exit code (128 + signal
/// when it was killed).
pub async fn run(config: AgentConfig) -> anyhow::Result<i32> {
    let target = Target::new(&config.hub, &config.id)?;
    let authorization = HeaderValue::from_str(&format!("Bearer {}", config.token))
        .context("the token has characters that cannot go in an HTTP header")?;
    let mut authorization = authorization;
    authorization.set_sensitive(true);
    let endpoint = Endpoint {
        target,
        authorization,
    };

    let PtyProcess {
        mut child,
        reader,
        writer,
    } = PtyProcess::spawn(&config.program, &config.args, INITIAL_SIZE, &config.term)?;
    tracing::info!(
        program = ?config.program,
        pid = child.id(),
        url = %endpoint.target.url,
        "started the command in a PTY"
    );

    let outbox = Arc::new(Outbox::new(OUTPUT_BUFFER_BYTES));
    let reader_task = tokio::spawn(pty::pump_output(reader, outbox.clone()));
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let writer_task = tokio::spawn(pty::apply_input(writer, input_rx));
    let stop = CancellationToken::new();
    let host_task = tokio::spawn(host(endpoint, outbox.clone(), input_tx, stop.clone()));

    let status = child.wait().await.context("waiting for the command")?;
    let code = pty::exit_code(status);
    tracing::info!(code, "the command exited");

    if tokio::time::timeout(OUTPUT_END_GRACE, outbox.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "the terminal is still held open (by a process the command left behind?); \
             sending what was read so far"
        );
        reader_task.abort();
        outbox.close();
    }
    if tokio::time::timeout(DELIVERY_GRACE, outbox.delivered())
        .await
        .is_err()
    {
        tracing::warn!(
            undelivered_bytes = outbox.queued(),
            "could not deliver the last output to the hub in time"
        );
    }
    stop.cancel();
    if tokio::time::timeout(CLOSE_GRACE, host_task).await.is_err() {
        tracing::debug!("the connection did not close in time");
    }
    writer_task.abort();
    Ok(code)
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The agent is shutting down (the close frame was sent).
    Stopped,
    /// The hub closed it or it broke; reconnect.
    Dropped(String),
}

/// Connects, serves the connection, and reconnects with backoff until `stop`.
async fn host(
    endpoint: Endpoint,
    outbox: Arc<Outbox>,
    input: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&endpoint)) => {
                r.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}")))
            }
        };
        match attempt {
            Ok(ws) => {
                backoff.reset();
                let dropped = outbox.set_connected(true);
                tracing::info!(
                    url = %endpoint.target.url,
                    queued_bytes = outbox.queued(),
                    dropped_bytes = dropped,
                    "connected to the hub as the terminal's host"
                );
                let end = serve(ws, &outbox, &input, &stop).await;
                outbox.set_connected(false);
                match end {
                    End::Stopped => return,
                    End::Dropped(why) => {
                        tracing::warn!(reason = %why, "lost the hub connection; reconnecting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(url = %endpoint.target.url, error = %format!("{e:#}"), "could not connect to the hub");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the TCP connection (with `TCP_NODELAY`: keystrokes and their echo are tiny writes that
/// Nagle's algorithm would hold back) and performs the WebSocket handshake.
async fn connect(endpoint: &Endpoint) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(&endpoint.target.addr)
        .await
        .with_context(|| format!("connecting to {}", endpoint.target.addr))?;
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    let mut request = endpoint.target.url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, endpoint.authorization.clone());
    let (ws, _response) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "the hub refused the connection: {} {body}",
                    response.status()
                )
            }
            e => anyhow::Error::new(e).context("WebSocket handshake"),
        })?;
    Ok(ws)
}

/// Runs one connection: the sender and the receiver side by side until either ends.
async fn serve(
    ws: Ws,
    outbox: &Outbox,
    input: &mpsc::Sender<Input>,
    stop: &CancellationToken,
) -> End {
    let (mut sink, mut stream) = ws.split();

    let send = async {
        let start = tokio::time::Instant::now() + PING_INTERVAL;
        let mut ping = tokio::time::interval_at(start, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let close = CloseFrame { code: CloseCode::Normal, reason: "command exited".into() };
                    if let Err(e) = sink.send(Message::Close(Some(close))).await {
                        tracing::debug!(error = %e, "sending the close frame failed");
                    }
                    return End::Stopped;
                }
                chunk = outbox.next() => {
                    // `send` flushes: the frame is on the wire before the next read is taken.
                    if let Err(e) = sink.send(Message::Binary(chunk)).await {
                        return End::Dropped(format!("sending output: {e}"));
                    }
                    outbox.sent();
                }
                _ = ping.tick() => {
                    if let Err(e) = sink.send(Message::text(PING)).await {
                        return End::Dropped(format!("sending a ping: {e}"));
                    }
                }
            }
        }
    };

    let receive = async {
        loop {
            let frame = match tokio::time::timeout(SILENCE_LIMIT, stream.next()).await {
                Err(_) => {
                    return End::Dropped(format!("nothing from the hub for {SILENCE_LIMIT:?}"));
                }
                Ok(None) => return End::Dropped("the hub closed the connection".into()),
                Ok(Some(Err(e))) => return End::Dropped(format!("receiving: {e}")),
                Ok(Some(Ok(frame))) => frame,
            };
            let item = match frame {
                Message::Binary(bytes) => Some(Input::Data(bytes)),
                Message::Text(text) => on_text(&text),
                Message::Close(frame) => {
                    return End::Dropped(match frame {
                        Some(f) => {
                            format!("the hub closed the connection ({} {})", f.code, f.reason)
                        }
                        None => "the hub closed the connection".into(),
                    });
                }
                // Pings are answered by tungstenite itself; pongs only prove liveness.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            };
            if let Some(item) = item
                && input.send(item).await.is_err()
            {
                // The PTY writer is gone: the agent is shutting down.
                return End::Stopped;
            }
        }
    };

    tokio::select! {
        end = send => end,
        end = receive => end,
    }
}

/// What a text frame asks of the PTY, logging the ones that are only informative.
fn on_text(text: &str) -> Option<Input> {
    match HubMsg::parse(text) {
        HubMsg::Resize(size) | HubMsg::Connected(Some(size)) => Some(Input::Resize(size)),
        HubMsg::Connected(None) | HubMsg::Pong | HubMsg::Control => None,
        HubMsg::Error(message) => {
            tracing::warn!(%message, "the hub reported an error");
            None
        }
        HubMsg::Unknown(what) => {
            tracing::debug!(%what, "ignoring a text frame from the hub");
            None
        }
    }
}
