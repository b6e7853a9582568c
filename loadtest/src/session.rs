//! One connection's life: open (connect, upgrade, join), hold (heartbeat, answer pings, hand
//! broadcasts to a [`Receiver`]) until told to stop, then close.
//!
//! Every wait here is bounded: connect and join by their timeouts, writes by a write timeout,
//! holding by the run's stop signal, closing by a fixed grace.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use channels::ws_frame::Opcode;

use crate::client::{ConnectError, ReadError, WsConn};
use crate::live::Live;
use crate::phoenix::{self, Reply};
use crate::target::Target;

/// Heartbeat refs start here so they never collide with join refs (`"1"`, `"2"`, …).
const FIRST_HEARTBEAT_REF: u64 = 1_000_000;

/// How long a closing connection waits for the server's close frame.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Longest a heartbeat or pong write may block (the server stopped reading) before the
/// connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how one connection opens.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// Endpoint.
    pub target: &'a Target,
    /// Source address, if `--src-ips` was given.
    pub src: Option<IpAddr>,
    /// Limit for connect plus handshake.
    pub connect_timeout: Duration,
    /// Limit for each join reply.
    pub join_timeout: Duration,
    /// Initial read buffer size.
    pub read_buf: usize,
    /// Seed for the connection's masking keys.
    pub seed: u64,
}

/// How long opening took.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// TCP connect plus WebSocket upgrade.
    pub connect: Duration,
    /// From sending the (first) join to its `ok` reply (all joins, for several topics).
    pub join: Duration,
}

/// Why a connection could not be opened and joined.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Connecting or the upgrade failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// No join reply within `--join-timeout`.
    #[error("join timeout")]
    JoinTimeout,
    /// The join was answered with an error, or the channel closed.
    #[error("join refused ({0})")]
    JoinRefused(String),
    /// The connection broke while joining.
    #[error("closed while joining")]
    JoinClosed,
    /// The run was stopped before this connection opened.
    #[error("cancelled")]
    Cancelled,
}

/// Connects and joins every topic in `topics`, in order (join refs `"1"`, `"2"`, …).
pub async fn open(
    dial: Dial<'_>,
    live: &Live,
    topics: &[&str],
) -> Result<(WsConn, Opened), OpenError> {
    open_with(dial, live, topics, phoenix::join).await
}

/// [`open`] with joins made by `join(join_ref, topic)` (presence enabled, for instance).
pub async fn open_with(
    dial: Dial<'_>,
    live: &Live,
    topics: &[&str],
    join: impl Fn(&str, &str) -> Vec<u8>,
) -> Result<(WsConn, Opened), OpenError> {
    let t0 = Instant::now();
    let mut conn = WsConn::connect(
        dial.target,
        dial.src,
        dial.connect_timeout,
        dial.read_buf,
        dial.seed,
    )
    .await?;
    let connect = t0.elapsed();
    Live::add(&live.opened, 1);
    let t1 = Instant::now();
    for (i, topic) in topics.iter().enumerate() {
        let join_ref = (i + 1).to_string();
        conn.send_within(dial.join_timeout, Opcode::Text, &join(&join_ref, topic))
            .await
            .map_err(|_| OpenError::JoinClosed)?;
        await_reply(&mut conn, &join_ref, topic, dial.join_timeout).await?;
    }
    Ok((
        conn,
        Opened {
            connect,
            join: t1.elapsed(),
        },
    ))
}

/// Leaves `topic` (joined with join ref `join_ref`): sends `phx_leave` with ref `msg_ref` and
/// waits, at most `timeout`, for its reply. Frames arriving meanwhile are read and dropped.
pub async fn leave(
    conn: &mut WsConn,
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Duration, OpenError> {
    let t0 = Instant::now();
    conn.send_within(
        timeout,
        Opcode::Text,
        &phoenix::leave(join_ref, msg_ref, topic),
    )
    .await
    .map_err(|_| OpenError::JoinClosed)?;
    await_reply(conn, msg_ref, topic, timeout).await?;
    Ok(t0.elapsed())
}

/// Reads until the reply to `msg_ref` arrives, answering pings on the way.
pub async fn await_reply(
    conn: &mut WsConn,
    msg_ref: &str,
    topic: &str,
    timeout: Duration,
) -> Result<(), OpenError> {
    let wait = async {
        loop {
            let mut pong = None;
            while let Some((op, payload)) = conn.next_frame().map_err(|_| OpenError::JoinClosed)? {
                match op {
                    Opcode::Text => match phoenix::classify(payload, msg_ref, topic) {
                        Reply::Ok => return Ok(()),
                        Reply::Refused(why) => return Err(OpenError::JoinRefused(why)),
                        Reply::Other => {}
                    },
                    Opcode::Ping => pong = Some(PingEcho::new(payload)),
                    Opcode::Close => return Err(OpenError::JoinClosed),
                    _ => {}
                }
            }
            if let Some(p) = pong {
                conn.send_within(WRITE_TIMEOUT, Opcode::Pong, p.bytes())
                    .await
                    .map_err(|_| OpenError::JoinClosed)?;
            }
            match conn.read_some().await {
                Ok(0) | Err(_) => return Err(OpenError::JoinClosed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Err(OpenError::JoinTimeout))
}

/// What a joined connection does with the broadcasts it receives.
pub trait Receiver {
    /// A socket read returned data; the frames in it follow. Receivers that timestamp
    /// arrivals read the clock here, once per read rather than once per frame.
    fn batch_start(&mut self) {}

    /// A binary frame (kind-4 broadcast) arrived.
    fn binary(&mut self, data: &[u8]);

    /// A text frame other than a channel's end arrived (heartbeat replies, presence events).
    fn text(&mut self, _data: &[u8]) {}

    /// Every frame of one socket read has been handed over; flush counters here.
    fn batch_done(&mut self, _live: &Live) {}
}

/// A receiver that ignores broadcasts (idle connections).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ignore;

impl Receiver for Ignore {
    fn binary(&mut self, _data: &[u8]) {}
}

/// Why [`hold`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The run asked us to stop; the connection is still open.
    Cancelled,
    /// The server sent a close frame with this code.
    ServerClose(Option<u16>),
    /// The stream ended without a close frame.
    Eof,
    /// The server sent `phx_error` or `phx_close` for a channel.
    ChannelClosed,
    /// A socket or framing error.
    Error(String),
}

impl End {
    /// A short key for error counts.
    pub fn key(&self) -> String {
        match self {
            Self::Cancelled => "cancelled".into(),
            Self::ServerClose(Some(c)) => format!("server close {c}"),
            Self::ServerClose(None) => "server close".into(),
            Self::Eof => "eof".into(),
            Self::ChannelClosed => "channel closed (phx_error/phx_close)".into(),
            Self::Error(e) => e.clone(),
        }
    }
}

/// Holds a joined connection until `stop` completes or the server ends it: heartbeats every
/// `heartbeat`, answers pings, hands binary frames to `rx`.
///
/// `stop` is polled after every read, so it must be cheap to poll while pending: a per-task
/// `oneshot::Receiver` is (an atomic load); a shared `CancellationToken` is not (each poll
/// locks the token's state).
pub async fn hold<S: Future + Unpin>(
    conn: &mut WsConn,
    stop: &mut S,
    heartbeat: Duration,
    live: &Live,
    rx: &mut impl Receiver,
) -> End {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ref = FIRST_HEARTBEAT_REF;
    loop {
        tokio::select! {
            biased;
            _ = &mut *stop => return End::Cancelled,
            _ = beat.tick() => {
                let hb = phoenix::heartbeat(next_ref);
                if let Err(e) = conn.send_within(WRITE_TIMEOUT, Opcode::Text, &hb).await {
                    return End::Error(format!("heartbeat write: {}", e.kind()));
                }
                next_ref += 1;
                Live::add(&live.heartbeats, 1);
            }
            read = conn.read_some() => {
                match read {
                    Ok(0) => return End::Eof,
                    Ok(_) => {}
                    Err(e) => return End::Error(format!("read: {}", e.kind())),
                }
                rx.batch_start();
                let drained = match drain(conn, rx) {
                    Ok(d) => d,
                    Err(e) => return End::Error(e.to_string()),
                };
                rx.batch_done(live);
                if let Some(end) = drained.end {
                    return end;
                }
                if let Some(p) = drained.pong {
                    if let Err(e) = conn.send_within(WRITE_TIMEOUT, Opcode::Pong, p.bytes()).await {
                        return End::Error(format!("pong write: {}", e.kind()));
                    }
                }
            }
        }
    }
}

/// What [`drain`] found besides broadcasts.
#[derive(Debug, Default)]
struct Drained {
    /// The server ended the connection or the channel.
    end: Option<End>,
    /// The last ping, to answer once the buffer is no longer borrowed.
    pong: Option<PingEcho>,
}

/// Hands every buffered frame to `rx`.
fn drain(conn: &mut WsConn, rx: &mut impl Receiver) -> Result<Drained, ReadError> {
    let mut out = Drained::default();
    while let Some((op, payload)) = conn.next_frame()? {
        match op {
            Opcode::Binary => rx.binary(payload),
            Opcode::Text => {
                // Heartbeat replies are the usual text frames; a channel ending matters, and
                // receivers that follow text events (presence) get the rest.
                if memchr::memmem::find(payload, b"\"phx_error\"").is_some()
                    || memchr::memmem::find(payload, b"\"phx_close\"").is_some()
                {
                    out.end = Some(End::ChannelClosed);
                    return Ok(out);
                }
                rx.text(payload);
            }
            Opcode::Ping => out.pong = Some(PingEcho::new(payload)),
            Opcode::Close => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                out.end = Some(End::ServerClose(code));
                return Ok(out);
            }
            Opcode::Pong | Opcode::Continuation => {}
        }
    }
    Ok(out)
}

/// A copy of a ping payload (at most 125 bytes by RFC 6455), to echo in a pong.
#[derive(Debug, Clone, Copy)]
pub struct PingEcho {
    len: u8,
    data: [u8; 125],
}

impl PingEcho {
    fn new(payload: &[u8]) -> Self {
        let len = payload.len().min(125);
        let mut data = [0u8; 125];
        data[..len].copy_from_slice(&payload[..len]);
        Self {
            len: len as u8,
            data,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}
