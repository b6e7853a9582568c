//! One long-lived client connection (a WebSocket after its upgrade, or a server-sent event
//! stream after its response head): reads frames into the session, writes the outbox.
//!
//! One task per connection, one `select!` loop, and the raw `TcpStream` shared by reference
//! between the read and write branches (`readable`/`try_read`, `writable`/`try_write` take
//! `&self`), so reading never waits for writing and no split or lock is needed.
//!
//! Memory per idle connection is kept near zero on purpose:
//! - reads go into a per-thread scratch buffer; only a partial frame is copied into the
//!   connection's own carry-over buffer, which is freed as soon as the frame completes;
//! - writes are encoded into a buffer that exists only while bytes are unsent;
//! - the outbox allocates nothing while empty.
//!
//! Write coalescing: when the outbox wakes the task, everything queued is encoded into one buffer
//! and written with one system call.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use channels::codec::{self, DecodeError, Inbound};
use channels::outbox::CloseReason;
use channels::ws_frame::{self, Assembler, FrameError, Message, Opcode, Role};
use channels::{Format, OutFrame, Outbox, Session};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Size of the per-thread read buffer.
const SCRATCH_LEN: usize = 64 * 1024;

/// Most bytes read per wake-up before yielding to other branches (fairness under floods).
const READ_BUDGET: usize = 256 * 1024;

/// How long a closing connection waits for its last bytes to leave and for the peer's close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// Read buffer shared by every connection served on this thread (never held across `.await`).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
    /// Write buffer shared the same way: a batch is encoded here and written at once.
    static WSCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes `frames` at the end of `out`: as unmasked WebSocket frames, or as they are for an
/// event stream (its frames are complete `text/event-stream` events).
fn encode_frames(out: &mut Vec<u8>, frames: &mut Vec<OutFrame>, wire: Wire) {
    let total: usize = frames.iter().map(|f| f.len() + 10).sum();
    out.reserve(total);
    for f in frames.drain(..) {
        let (bytes, binary) = f.into_wire();
        if wire == Wire::WebSocket {
            let op = if binary { Opcode::Binary } else { Opcode::Text };
            ws_frame::write_header(out, op, bytes.len(), None);
        }
        out.extend_from_slice(&bytes);
    }
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnParams {
    /// WebSocket: close after this long without any inbound frame. Event stream: send a
    /// heartbeat comment this often (its readers never send anything).
    pub idle_timeout: Duration,
    /// Largest frame or reassembled message accepted.
    pub max_frame: usize,
    /// What travels on the connection.
    pub wire: Wire,
}

/// The framing of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// RFC 6455 frames both ways.
    WebSocket,
    /// `text/event-stream` out (frames are written as they are), nothing meaningful in.
    EventStream,
}

/// Why reading stopped.
#[derive(Debug)]
enum Stop {
    /// The peer closed the TCP stream.
    Eof,
    /// The peer sent a close frame.
    CloseFrame,
    /// The stream failed.
    Io(io::Error),
    /// The peer broke the protocol, or the server ends the connection; close with this code
    /// and reason (an event stream just ends).
    Protocol(u16, String),
}

impl From<FrameError> for Stop {
    fn from(e: FrameError) -> Self {
        Self::Protocol(e.close_code(), e.to_string())
    }
}

impl From<DecodeError> for Stop {
    fn from(e: DecodeError) -> Self {
        let code = match e {
            DecodeError::BinaryKind(_) | DecodeError::BinaryOnV1 => 1003,
            _ => 1007,
        };
        Self::Protocol(code, e.to_string())
    }
}

struct Conn {
    stream: TcpStream,
    format: Format,
    params: ConnParams,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    rbuf: Vec<u8>,
    asm: Assembler,
    /// Encoded bytes not yet written; empty (and unallocated) when everything was sent.
    wbuf: Vec<u8>,
    wpos: usize,
    /// A ping or pong arrived since the last check: the peer is alive even without messages.
    got_control: bool,
}

/// Runs the connection until either side closes it or the hub shuts down.
///
/// Not an `async fn`: the arguments are moved into [`Conn`] first, so the task's future holds
/// them once instead of once as arguments and again as locals.
pub fn run(
    stream: TcpStream,
    leftover: Bytes,
    session: Session,
    outbox: Outbox,
    params: ConnParams,
) -> impl Future<Output = ()> + Send {
    let conn = Conn {
        stream,
        format: session.format(),
        params,
        rbuf: leftover.to_vec(),
        asm: Assembler::default(),
        wbuf: Vec::new(),
        wpos: 0,
        got_control: false,
    };
    conn.run(session, outbox)
}

/// What woke the connection task.
enum Event {
    Readable,
    Writable,
    Outbox,
    Timer,
}

impl Conn {
    async fn run(mut self, mut session: Session, outbox: Outbox) {
        let outcome = self.drive(&mut session, &outbox).await;
        session.close().await;
        tracing::debug!(conn = session.conn_id(), ?outcome, "websocket closed");
    }

    /// Waits for the next event. Polls readiness directly instead of holding one future per
    /// branch (as `select!` would): those futures would live in every idle connection's task.
    fn next_event<'a>(
        &'a self,
        sleep: Pin<&'a mut tokio::time::Sleep>,
        outbox: &'a Outbox,
    ) -> impl Future<Output = io::Result<Event>> + 'a {
        let mut sleep = sleep;
        let want_write = !self.wbuf.is_empty();
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(r.map(|()| Event::Readable));
            }
            if want_write {
                if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::Writable));
                }
                // Still writing: do not take more frames (the outbox is the bound), but notice
                // an overflow even if the peer never reads again.
                if outbox.poll_closed(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Outbox));
                }
            } else if outbox.poll_ready(cx).is_ready() {
                return Poll::Ready(Ok(Event::Outbox));
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Timer));
            }
            Poll::Pending
        })
    }

    async fn drive(&mut self, session: &mut Session, outbox: &Outbox) -> String {
        let mut msgs: Vec<Inbound> = Vec::new();
        let mut frames: Vec<OutFrame> = Vec::new();
        let mut last_activity = Instant::now();
        let mut idle_check = last_activity + self.params.idle_timeout;
        let sleep = tokio::time::sleep_until(idle_check);
        tokio::pin!(sleep);

        // Frames the client sent right behind its upgrade request.
        if !self.rbuf.is_empty() {
            let mut buf = std::mem::take(&mut self.rbuf);
            let parsed = self.parse(&mut buf, &mut msgs);
            for m in msgs.drain(..) {
                Box::pin(session.handle(m)).await;
            }
            match parsed {
                Ok(used) => {
                    buf.drain(..used);
                    self.rbuf = buf;
                }
                Err(stop) => return self.finish(stop).await,
            }
        }

        // The timer only needs re-arming after the session or the idle check changed; writes,
        // the common event under load, leave it alone (each check touches cold cache lines).
        let mut rearm = true;
        loop {
            if rearm {
                let deadline = match session.next_deadline() {
                    Some(d) => d.min(idle_check),
                    None => idle_check,
                };
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
            }
            let event = self.next_event(sleep.as_mut(), outbox).await;
            rearm = matches!(event, Ok(Event::Readable | Event::Timer));
            let event = match event {
                Ok(e) => e,
                Err(e) => return self.finish(Stop::Io(e)).await,
            };
            match event {
                Event::Readable => {
                    let res = self.read_available(&mut msgs);
                    if !msgs.is_empty() || self.got_control {
                        self.got_control = false;
                        last_activity = Instant::now();
                    }
                    // Messages decoded before a protocol error are still handled: they were
                    // accepted. Boxed: the handler's state machine is ~1 KiB and would otherwise
                    // live in every idle connection's task for its whole life.
                    for m in msgs.drain(..) {
                        Box::pin(session.handle(m)).await;
                    }
                    if let Err(stop) = res {
                        return self.finish(stop).await;
                    }
                }
                Event::Outbox => {
                    // With bytes still unsent only a close wakes us (see `next_event`); the
                    // queued frames are then discarded or sent after the pending bytes.
                    if let Some(reason) = outbox.drain(&mut frames) {
                        self.encode(&mut frames);
                        return self.finish_outbox(reason, session).await;
                    }
                    if let Err(e) = self.send(&mut frames) {
                        return self.finish(Stop::Io(e)).await;
                    }
                }
                Event::Writable => {
                    if let Err(e) = self.flush() {
                        return self.finish(Stop::Io(e)).await;
                    }
                }
                Event::Timer => {
                    let now = Instant::now();
                    if self.params.wire == Wire::EventStream {
                        if now >= idle_check {
                            idle_check = now + self.params.idle_timeout;
                            self.wbuf.extend_from_slice(channels::codec::sse::HEARTBEAT);
                            if let Err(e) = self.flush() {
                                return self.finish(Stop::Io(e)).await;
                            }
                        }
                        Box::pin(session.on_timer()).await;
                        if session.channel_count() == 0 {
                            // Its one topic was closed (token expired): the stream ends, after
                            // the notice that says why (queued by the session just now).
                            outbox.drain(&mut frames);
                            self.encode(&mut frames);
                            return self
                                .finish(Stop::Protocol(1000, "stream ended".into()))
                                .await;
                        }
                        continue;
                    }
                    if now >= idle_check {
                        if now.duration_since(last_activity) >= self.params.idle_timeout {
                            return self
                                .finish(Stop::Protocol(1000, "idle timeout".into()))
                                .await;
                        }
                        idle_check = last_activity + self.params.idle_timeout;
                    }
                    Box::pin(session.on_timer()).await;
                }
            }
        }
    }
}

impl Conn {
    /// Reads what the socket has (up to [`READ_BUDGET`]) and decodes every complete message.
    fn read_available(&mut self, out: &mut Vec<Inbound>) -> Result<(), Stop> {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let n = if self.rbuf.is_empty() {
                // Common case: no partial frame pending. Read into the thread's scratch buffer
                // and copy out only an incomplete tail.
                let read = SCRATCH.with(|cell| -> Result<Option<usize>, Stop> {
                    let mut scratch = cell.borrow_mut();
                    let n = match self.stream.try_read(&mut scratch) {
                        Ok(0) => return Err(Stop::Eof),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) => return Err(Stop::Io(e)),
                    };
                    let used = self.parse(&mut scratch[..n], out)?;
                    if used < n {
                        self.rbuf.extend_from_slice(&scratch[used..n]);
                    }
                    Ok(Some(n))
                })?;
                match read {
                    Some(n) => n,
                    None => return Ok(()),
                }
            } else {
                // A frame is split across reads: append to the carry-over buffer.
                let len = self.rbuf.len();
                self.rbuf.resize(len + SCRATCH_LEN, 0);
                let n = match self.stream.try_read(&mut self.rbuf[len..]) {
                    Ok(0) => return Err(Stop::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.rbuf.truncate(len);
                        return Ok(());
                    }
                    Err(e) => return Err(Stop::Io(e)),
                };
                self.rbuf.truncate(len + n);
                let mut buf = std::mem::take(&mut self.rbuf);
                let used = self.parse(&mut buf, out)?;
                if used < buf.len() {
                    buf.drain(..used);
                    self.rbuf = buf;
                }
                n
            };
            budget = budget.saturating_sub(n);
        }
        Ok(())
    }

    /// Decodes every complete frame at the start of `buf`; returns the bytes used.
    fn parse(&mut self, buf: &mut [u8], out: &mut Vec<Inbound>) -> Result<usize, Stop> {
        if self.params.wire == Wire::EventStream {
            // Event-stream readers have nothing to say after their request; ignore it.
            return Ok(buf.len());
        }
        let max = self.params.max_frame;
        let format = self.format;
        let mut pos = 0;
        loop {
            let Some((frame, used)) = ws_frame::parse_frame(&mut buf[pos..], Role::Server, max)?
            else {
                return Ok(pos);
            };
            pos += used;
            match self.asm.push(frame, max)? {
                None => {}
                Some(Message::Text(t)) => out.push(codec::decode_text(format, t)?),
                Some(Message::Binary(b)) => out.push(codec::decode_binary(format, b)?),
                Some(Message::Ping(p)) => {
                    ws_frame::write_frame(&mut self.wbuf, Opcode::Pong, p, None);
                    self.got_control = true;
                }
                Some(Message::Pong) => self.got_control = true,
                Some(Message::Close(_)) => return Err(Stop::CloseFrame),
            }
            self.asm.release();
        }
    }

    /// Appends `frames` to the pending write buffer (used when bytes are already waiting).
    fn encode(&mut self, frames: &mut Vec<OutFrame>) {
        encode_frames(&mut self.wbuf, frames, self.params.wire);
    }

    /// Writes `frames` now: encoded into the thread's scratch buffer and written with one system
    /// call; only what the socket does not take is copied into the connection's own buffer.
    /// Falls back to appending when earlier bytes are still pending, to keep the order.
    fn send(&mut self, frames: &mut Vec<OutFrame>) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.encode(frames);
            return self.flush().map(|_| ());
        }
        WSCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            encode_frames(&mut buf, frames, self.params.wire);
            let mut pos = 0;
            while pos < buf.len() {
                match self.stream.try_write(&buf[pos..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if pos < buf.len() {
                self.wbuf.extend_from_slice(&buf[pos..]);
                self.wpos = 0;
            }
            // Keep a typical batch's capacity for the next connection on this thread, not a
            // one-off burst of megabytes.
            if buf.capacity() > SCRATCH_LEN * 4 {
                *buf = Vec::new();
            }
            Ok(())
        })
    }

    /// Writes as much of the buffer as the socket takes. `Ok(true)` when everything went out.
    fn flush(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Free the buffer: an idle connection keeps no write memory.
        self.wbuf = Vec::new();
        self.wpos = 0;
        Ok(true)
    }

    /// Queues a `system` message on every joined channel (before closing the socket).
    fn queue_notices(&mut self, session: &Session, status: &str, message: &str) {
        let mut frames = session.notices(status, message);
        self.encode(&mut frames);
    }

    async fn finish_outbox(&mut self, reason: CloseReason, session: &Session) -> String {
        if let Some((status, message)) = reason.notice() {
            self.queue_notices(session, status, message);
        }
        let stop = match reason {
            CloseReason::Slow => Stop::Protocol(4008, "slow reader: outbox overflow".into()),
            CloseReason::Shutdown => Stop::Protocol(1001, "server shutting down".into()),
            CloseReason::Server { code, reason } => Stop::Protocol(code, reason),
        };
        self.finish(stop).await
    }

    /// Ends the connection: sends what is due (a close frame for protocol-level endings), waits
    /// briefly for it to leave, and returns a description for the log. Boxed so its state does
    /// not enlarge every connection's task.
    fn finish(&mut self, stop: Stop) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(self.finish_inner(stop))
    }

    async fn finish_inner(&mut self, stop: Stop) -> String {
        match stop {
            Stop::Eof => "peer closed the connection".to_owned(),
            Stop::Io(e) => format!("io error: {e}"),
            Stop::CloseFrame => {
                ws_frame::write_close(&mut self.wbuf, 1000, "", None);
                self.linger().await;
                "peer sent close".to_owned()
            }
            Stop::Protocol(code, reason) => {
                if self.params.wire == Wire::WebSocket {
                    ws_frame::write_close(&mut self.wbuf, code, &reason, None);
                }
                self.linger().await;
                format!("closed by server: {code} {reason}")
            }
        }
    }

    /// Sends the remaining bytes, half-closes, and waits for the peer to close, all bounded by
    /// [`CLOSE_LINGER`] so a dead peer cannot hold the task.
    async fn linger(&mut self) {
        let deadline = Instant::now() + CLOSE_LINGER;
        loop {
            match self.flush() {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return,
            }
            match tokio::time::timeout_at(deadline, self.stream.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.readable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            let done = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                match self.stream.try_read(&mut scratch) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            });
            if done {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use channels::{Format, Outbox, Principal, Session};

    /// The connection task's future lives as long as the connection, so its size is part of the
    /// memory every idle connection costs (README: per-connection RSS). This guards the budget:
    /// large or rarely used state belongs behind a `Box` (see `finish`, `handle`).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let state = crate::AppState::memory(crate::Config::for_tests("s"), "s")
            .expect("test token settings");
        let outbox = Outbox::new(state.node.config.outbox);
        let principal = Principal {
            role: "anon".into(),
            sub: None,
            exp: u64::MAX,
            share_session: None,
            grants: None,
        };
        let session = Session::new(
            state.node.clone(),
            Format::V2,
            outbox.clone(),
            "t",
            principal,
        );
        let params = super::ConnParams {
            idle_timeout: std::time::Duration::from_secs(1),
            max_frame: 1000,
            wire: super::Wire::WebSocket,
        };
        let fut = super::run(server, bytes::Bytes::new(), session, outbox, params);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1536, "connection future grew to {size} bytes");
    }
}
