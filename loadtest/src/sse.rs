//! A lean server-sent events reader over a tokio `TcpStream`, for `GET /v1/sse/{topic}`.
//!
//! Thousands of these run next to the hub on two shared cores, so a reader is a socket and one
//! read buffer that grows only when an event needs it, like the WebSocket [`crate::client`].
//! The request is written by hand and the response head checked by hand (an HTTP client would
//! cost more per stream than the stream itself).
//!
//! Parsing is incremental and allocation-free in the common case: a read appends to the
//! buffer, [`block_end`] finds the blank line that ends the next event (resuming where the last
//! scan stopped, so a large event arriving in many reads is not rescanned), and [`parse_block`]
//! hands out its fields borrowed from the buffer. Only an event with several `data:` lines is
//! copied, into one scratch buffer reused for the stream's whole life.
//!
//! The parser follows the WHATWG event-stream rules the hub relies on: `field: value` lines
//! (one leading space stripped), `:` comments, `data` lines joined with `\n`, `id` values
//! containing NUL ignored, `retry` only when all digits, unknown fields ignored. Lines end in
//! `\n` or `\r\n`; a bare `\r` line ending (allowed by the spec, never sent by the hub) is not
//! recognised. The response must not be chunked: the hub streams the body raw.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::ConnectError;
use crate::live::Live;
use crate::session::{Dial, End, OpenError, Opened};

/// Largest response head we read; anything longer is not the hub's event stream.
const MAX_HEAD: usize = 16 * 1024;

/// Largest event accepted (a chat `snapshot` carries a whole retained stream's text).
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

/// Reads smaller than this much free space first compact or grow the buffer.
const MIN_READ: usize = 256;

/// How the reader presents its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Auth {
    /// `?access_token=…`, as a browser `EventSource` must (it cannot set headers).
    Query,
    /// `Authorization: Bearer …`.
    Header,
}

/// The request for `topic` (a channel name without `realtime:`), prepared once per topic and
/// written by every stream reading it.
pub fn request(host: &str, topic: &str, token: &str, auth: Auth) -> Vec<u8> {
    let mut path = String::with_capacity(16 + topic.len() * 3 + token.len());
    path.push_str("/v1/sse/");
    percent_encode(topic, &mut path);
    let bearer = match auth {
        Auth::Query => {
            path.push_str("?access_token=");
            percent_encode(token, &mut path);
            String::new()
        }
        Auth::Header => format!("Authorization: Bearer {token}\r\n"),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n{bearer}\r\n"
    )
    .into_bytes()
}

/// Appends `s` with everything but RFC 3986's unreserved characters `%XX`-escaped, so a topic
/// such as `chat:42` stays one path segment.
fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// One event-stream block: the lines up to a blank line. An event when it has `data`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    /// The `id` field (the hub's cursor `<epoch>:<offset>`), if present and without NUL.
    pub id: Option<&'a [u8]>,
    /// The `event` field; an event without one is a `message`.
    pub event: Option<&'a [u8]>,
    /// The `data` lines joined with `\n`; `None` when there were none (not an event).
    pub data: Option<&'a [u8]>,
    /// The `retry` field, when all digits.
    pub retry: Option<u64>,
    /// Comment lines (`: heartbeat`).
    pub comments: u32,
}

impl Block<'_> {
    /// The event name: the `event` field or `message`.
    pub fn name(&self) -> &[u8] {
        self.event.unwrap_or(b"message")
    }
}

/// Finds the end of the first block of `buf`: scans lines from `from` (the start of a line
/// known to belong to that block, 0 at first) for the blank line that ends it. `Ok(len)` is the
/// block's length including the blank line; `Err(resume)` is where the first incomplete line
/// starts, to pass as `from` once more bytes have arrived.
pub fn block_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut pos = from.min(buf.len());
    // Each iteration moves past one newline, so this ends within `buf.len()` steps.
    while let Some(i) = memchr::memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + i];
        pos += i + 1;
        if line.is_empty() || line == b"\r" {
            return Ok(pos);
        }
    }
    Err(pos)
}

/// Parses one complete block (as delimited by [`block_end`]). Fields borrow from `block`;
/// several `data` lines are joined in `scratch`, which is reused between calls.
pub fn parse_block<'a>(block: &'a [u8], scratch: &'a mut Vec<u8>) -> Block<'a> {
    let mut out = Block::default();
    let mut first_data: Option<&'a [u8]> = None;
    let mut data_lines = 0u32;
    for raw in block.split(|&c| c == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(&first) = line.first() else {
            continue; // the terminating blank line
        };
        if first == b':' {
            out.comments += 1;
            continue;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                data_lines += 1;
                match data_lines {
                    1 => first_data = Some(value),
                    2 => {
                        scratch.clear();
                        scratch.extend_from_slice(first_data.unwrap_or_default());
                        scratch.push(b'\n');
                        scratch.extend_from_slice(value);
                    }
                    _ => {
                        scratch.push(b'\n');
                        scratch.extend_from_slice(value);
                    }
                }
            }
            b"event" => out.event = Some(value),
            b"id" if !value.contains(&0) => out.id = Some(value),
            b"retry" => out.retry = digits(value),
            _ => {}
        }
    }
    let scratch: &'a Vec<u8> = scratch;
    out.data = match data_lines {
        0 => None,
        1 => first_data,
        _ => Some(scratch.as_slice()),
    };
    out
}

/// A non-empty run of ASCII digits as a number; `None` otherwise or on overflow.
pub fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        if c.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// The offset of a hub cursor `<epoch>:<offset>` and its epoch; `None` when it is not one.
pub fn cursor(id: &[u8]) -> Option<(&[u8], u64)> {
    let i = memchr::memrchr(b':', id)?;
    Some((&id[..i], digits(&id[i + 1..])?))
}

/// Why reading events failed after the response head.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// An event grew past [`MAX_EVENT`] without ending.
    #[error("event larger than {MAX_EVENT} bytes")]
    TooLarge,
}

/// One open event stream.
#[derive(Debug)]
pub struct SseConn {
    stream: TcpStream,
    /// Read buffer; unconsumed bytes are `buf[start..end]`. Its length is its usable size.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the scan for the end of the pending block resumes (`start..=end`).
    scan: usize,
    /// Joined `data` lines of multi-line events.
    scratch: Vec<u8>,
}

impl SseConn {
    /// Connects to `addr` from `src` (any local address when `None`), writes `request` (see
    /// [`request`]) and checks the response head: `200` and `text/event-stream`, not chunked.
    /// The whole exchange is bounded by `timeout`. `read_buf` is the initial buffer size.
    pub async fn connect(
        addr: SocketAddr,
        src: Option<IpAddr>,
        request: &[u8],
        timeout: Duration,
        read_buf: usize,
    ) -> Result<Self, ConnectError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, src, request, read_buf))
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn connect_inner(
        addr: SocketAddr,
        src: Option<IpAddr>,
        request: &[u8],
        read_buf: usize,
    ) -> Result<Self, ConnectError> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = src {
            // As for WebSockets: lets ports in TIME_WAIT from earlier runs be reused.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        let mut stream = socket.connect(addr).await?;
        stream.write_all(request).await?;
        let mut conn = Self {
            stream,
            buf: vec![0; read_buf.max(MIN_READ * 2)],
            start: 0,
            end: 0,
            scan: 0,
            scratch: Vec::new(),
        };
        // Bounded by MAX_HEAD: every pass reads at least one byte or returns.
        let head_len = loop {
            if let Some(i) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break i + 4;
            }
            if conn.end >= MAX_HEAD {
                return Err(ConnectError::Handshake("response head too long"));
            }
            if conn.end == conn.buf.len() {
                conn.buf.resize((conn.buf.len() * 2).min(MAX_HEAD), 0);
            }
            let n = conn.stream.read(&mut conn.buf[conn.end..]).await?;
            if n == 0 {
                return Err(ConnectError::Closed);
            }
            conn.end += n;
        };
        check_head(&conn.buf[..head_len])?;
        // Events the server sent right behind its head stay in the buffer.
        conn.start = head_len;
        conn.scan = head_len;
        Ok(conn)
    }

    /// Reads what the socket has into the buffer. Returns 0 at end of stream.
    /// Cancel-safe: dropping the future loses no data.
    pub async fn read_some(&mut self) -> io::Result<usize> {
        self.make_room();
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Makes at least `MIN_READ` bytes of room after `end`, compacting first and growing only
    /// when the pending (incomplete) block needs it. [`next_block`](Self::next_block) refuses
    /// blocks over [`MAX_EVENT`], so the room is always there.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scan = 0;
        }
        if self.buf.len() - self.end >= MIN_READ {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scan -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < MIN_READ {
            let want = (self.buf.len() * 2)
                .max(self.end + MIN_READ)
                .min(MAX_EVENT + MIN_READ);
            self.buf.resize(want.max(self.buf.len()), 0);
        }
    }

    /// The next complete block in the buffer, if any; call [`read_some`](Self::read_some) when
    /// this returns `None`.
    pub fn next_block(&mut self) -> Result<Option<Block<'_>>, SseError> {
        let pending = &self.buf[self.start..self.end];
        match block_end(pending, self.scan - self.start) {
            Ok(len) => {
                let block = &self.buf[self.start..self.start + len];
                self.start += len;
                self.scan = self.start;
                Ok(Some(parse_block(block, &mut self.scratch)))
            }
            Err(resume) => {
                self.scan = self.start + resume;
                if self.end - self.start > MAX_EVENT {
                    return Err(SseError::TooLarge);
                }
                Ok(None)
            }
        }
    }

    /// Waits for the stream's `retry:` preamble (the hub sends it first, once the reader has
    /// joined the topic). Anything but comments before it is a protocol error.
    async fn preamble(&mut self) -> Result<(), OpenError> {
        // Bounded by the caller's timeout; every pass reads or returns.
        loop {
            while let Some(block) = self
                .next_block()
                .map_err(|e| OpenError::JoinRefused(e.to_string()))?
            {
                if block.retry.is_some() {
                    return Ok(());
                }
                if block.data.is_some() {
                    return Err(OpenError::JoinRefused(
                        "event before the retry: preamble".into(),
                    ));
                }
            }
            match self.read_some().await {
                Ok(0) | Err(_) => return Err(OpenError::JoinClosed),
                Ok(_) => {}
            }
        }
    }

    /// Ends the stream: our FIN, then up to `timeout` for the server's (the hub ends an event
    /// stream whose reader went away). Returns whether the server closed its side in time.
    pub async fn close(mut self, timeout: Duration) -> bool {
        let polite = async {
            self.stream.shutdown().await?;
            // Bounded by the timeout; discards whatever is still in flight.
            loop {
                self.start = 0;
                self.end = 0;
                self.scan = 0;
                if self.read_some().await? == 0 {
                    return Ok::<bool, io::Error>(true);
                }
            }
        };
        matches!(tokio::time::timeout(timeout, polite).await, Ok(Ok(true)))
    }
}

/// Checks an event-stream response head: status 200, `content-type: text/event-stream`, and a
/// raw (not chunked) body.
fn check_head(head: &[u8]) -> Result<(), ConnectError> {
    let text =
        std::str::from_utf8(head).map_err(|_| ConnectError::Handshake("headers not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ConnectError::Handshake("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ConnectError::Handshake("no status code"))?;
    if status != 200 {
        return Err(ConnectError::Http(status));
    }
    let mut event_stream = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-type") {
            event_stream = value.to_ascii_lowercase().starts_with("text/event-stream");
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Err(ConnectError::Handshake(
                "chunked event streams are not supported",
            ));
        }
    }
    if event_stream {
        Ok(())
    } else {
        Err(ConnectError::Handshake("not text/event-stream"))
    }
}

/// Opens one stream: connect, request and response head within `dial.connect_timeout`, then the
/// `retry:` preamble within `dial.join_timeout`. `Opened::connect` spans the first part (the
/// hub answers 200 only once the reader has joined), `Opened::join` the wait for the preamble.
pub async fn open(
    dial: Dial<'_>,
    request: &[u8],
    live: &Live,
) -> Result<(SseConn, Opened), OpenError> {
    let t0 = Instant::now();
    let mut conn = SseConn::connect(
        dial.target.addr,
        dial.src,
        request,
        dial.connect_timeout,
        dial.read_buf,
    )
    .await?;
    let connect = t0.elapsed();
    Live::add(&live.opened, 1);
    let t1 = Instant::now();
    tokio::time::timeout(dial.join_timeout, conn.preamble())
        .await
        .unwrap_or(Err(OpenError::JoinTimeout))?;
    Ok((
        conn,
        Opened {
            connect,
            join: t1.elapsed(),
        },
    ))
}

/// What an open stream does with the blocks it receives.
pub trait Sink {
    /// A socket read returned data; its blocks follow. Sinks that timestamp arrivals read the
    /// clock here, once per read rather than once per event.
    fn batch_start(&mut self) {}

    /// One complete block (an event, a comment, a `retry`).
    fn block(&mut self, block: &Block<'_>);

    /// Every complete block of one read has been handed over; flush counters here.
    fn batch_done(&mut self, _live: &Live) {}
}

/// Reads `conn` until `stop` completes or the server ends the stream, handing every block to
/// `sink`. An event stream's reader never writes, so there is nothing else to do.
///
/// `stop` is polled after every read, so it must be cheap to poll (a per-task oneshot).
pub async fn hold<S: Future + Unpin>(
    conn: &mut SseConn,
    stop: &mut S,
    live: &Live,
    sink: &mut impl Sink,
) -> End {
    // Bounded by `stop` (the run's end) or the server ending the stream.
    loop {
        tokio::select! {
            biased;
            _ = &mut *stop => return End::Cancelled,
            read = conn.read_some() => {
                match read {
                    Ok(0) => return End::Eof,
                    Ok(_) => {}
                    Err(e) => return End::Error(format!("read: {}", e.kind())),
                }
                sink.batch_start();
                // Bounded by the bytes of this read: each block consumes at least one line.
                loop {
                    match conn.next_block() {
                        Ok(Some(block)) => sink.block(&block),
                        Ok(None) => break,
                        Err(e) => return End::Error(e.to_string()),
                    }
                }
                sink.batch_done(live);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A parsed block, owned: id, event name, data, retry, comments.
    type Owned = (Option<String>, String, Option<String>, Option<u64>, u32);

    /// Every block of `stream`, parsed as the connection does: whole blocks only, resuming
    /// scans across the given chunk boundaries.
    fn blocks_of(chunks: &[&[u8]]) -> Vec<Owned> {
        let mut buf = Vec::new();
        let mut scan = 0;
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match block_end(&buf, scan) {
                    Ok(len) => {
                        let block: Vec<u8> = buf.drain(..len).collect();
                        let b = parse_block(&block, &mut scratch);
                        out.push((
                            s(b.id),
                            String::from_utf8(b.name().to_vec()).unwrap(),
                            s(b.data),
                            b.retry,
                            b.comments,
                        ));
                        scan = 0;
                    }
                    Err(resume) => {
                        scan = resume;
                        break;
                    }
                }
            }
        }
        assert!(
            buf.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        out
    }

    #[test]
    fn hub_events_parse_into_id_event_and_data() {
        let stream =
            b"retry: 2000\n\nid: e1:7\nevent: token\ndata: {\"text\":\"hi\"}\n\n: heartbeat\n\n";
        let got = blocks_of(&[stream]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (None, "message".into(), None, Some(2000), 0));
        assert_eq!(
            got[1],
            (
                Some("e1:7".into()),
                "token".into(),
                Some(r#"{"text":"hi"}"#.into()),
                None,
                0
            )
        );
        assert_eq!(got[2], (None, "message".into(), None, None, 1));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_events() {
        let stream: &[u8] = b"retry: 2000\n\nid: a:1\nevent: lt\ndata: {\"t\":1}\n\n: heartbeat\n\nid: a:2\r\ndata: x\r\ndata: y\r\n\r\n";
        let whole = blocks_of(&[stream]);
        assert_eq!(whole.len(), 4);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(blocks_of(&[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(blocks_of(&bytes), whole, "byte by byte");
    }

    #[test]
    fn fields_follow_the_event_stream_rules() {
        let got = blocks_of(&[b"data:no space\ndata:  two spaces\ndata\nevent:x\nid: bad\0id\nretry: 12a\nunknown: 1\n\n"]);
        assert_eq!(
            got,
            [(
                None,
                "x".into(),
                Some("no space\n two spaces\n".into()),
                None,
                0
            )]
        );
        // An id with a colon in its epoch; an empty data line is still an event.
        let got = blocks_of(&[b"id: e:x:9\ndata:\n\n"]);
        assert_eq!(got[0].0.as_deref(), Some("e:x:9"));
        assert_eq!(got[0].2.as_deref(), Some(""));
        // A blank line alone is an empty block.
        assert_eq!(
            blocks_of(&[b"\n"]),
            [(None, "message".into(), None, None, 0)]
        );
    }

    #[test]
    fn numbers_and_cursors() {
        assert_eq!(digits(b"2000"), Some(2000));
        assert_eq!(digits(b""), None);
        assert_eq!(digits(b"-1"), None);
        assert_eq!(digits(b"99999999999999999999"), None);
        assert_eq!(cursor(b"e1:42"), Some((&b"e1"[..], 42)));
        assert_eq!(cursor(b"42"), None);
        assert_eq!(cursor(b"e:x"), None);
    }

    #[test]
    fn requests_escape_the_topic_and_carry_the_token() {
        let r =
            String::from_utf8(request("127.0.0.1:4000", "chat:a b", "T.k-n", Auth::Query)).unwrap();
        assert!(
            r.starts_with(
                "GET /v1/sse/chat%3Aa%20b?access_token=T.k-n HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n"
            ),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n") && !r.contains("Authorization"));
        let r = String::from_utf8(request("h:1", "room-1", "T", Auth::Header)).unwrap();
        assert!(r.starts_with("GET /v1/sse/room-1 HTTP/1.1\r\n"), "{r}");
        assert!(r.contains("\r\nAuthorization: Bearer T\r\n\r\n"), "{r}");
    }

    #[test]
    fn heads_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
        assert!(check_head(ok).is_ok());
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\r\n";
        assert!(matches!(check_head(denied), Err(ConnectError::Http(401))));
        let json = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";
        assert!(matches!(check_head(json), Err(ConnectError::Handshake(_))));
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            check_head(chunked),
            Err(ConnectError::Handshake(_))
        ));
        assert!(check_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    /// A one-shot server: answers the request with `head` and then `body` in small pieces.
    async fn serve_once(head: &'static [u8], body: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while memchr::memmem::find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).await.unwrap();
                req.extend_from_slice(&b[..n]);
            }
            assert!(req.starts_with(b"GET /v1/sse/t?access_token=T "));
            s.write_all(head).await.unwrap();
            for piece in body.chunks(7) {
                s.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Wait for the reader to close, then close too.
            while s.read(&mut b).await.unwrap_or(0) > 0 {}
        });
        addr
    }

    #[derive(Default)]
    struct Collect {
        events: Vec<(String, Vec<u8>)>,
        comments: u32,
        batches: u32,
    }

    impl Sink for Collect {
        fn block(&mut self, b: &Block<'_>) {
            self.comments += b.comments;
            if let Some(d) = b.data {
                let id = String::from_utf8(b.id.unwrap_or_default().to_vec()).unwrap();
                self.events.push((id, d.to_vec()));
            }
        }
        fn batch_done(&mut self, _: &Live) {
            self.batches += 1;
        }
    }

    #[tokio::test]
    async fn a_stream_is_opened_read_and_closed() {
        let mut body = b"retry: 2000\n\n: heartbeat\n\n".to_vec();
        for i in 1..=200u32 {
            body.extend_from_slice(
                format!(
                    "id: e:{i}\nevent: lt\ndata: {}\n\n",
                    "x".repeat(i as usize * 10)
                )
                .as_bytes(),
            );
        }
        let addr = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
            body,
        )
        .await;
        let target = crate::target::Target::parse(&format!("ws://{addr}/x"), "T").unwrap();
        let dial = Dial {
            target: &target,
            src: Some("127.0.0.1".parse().unwrap()),
            connect_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            read_buf: 512,
            seed: 1,
        };
        let live = Live::default();
        let req = request(&target.host, "t", "T", Auth::Query);
        let (mut conn, _) = open(dial, &req, &live).await.unwrap();
        assert_eq!(Live::get(&live.opened), 1);
        let mut sink = Collect::default();
        // Hold in short stretches until every event is in (at most 5 s).
        for _ in 0..100 {
            let mut stop = Box::pin(tokio::time::sleep(Duration::from_millis(50)));
            assert_eq!(
                hold(&mut conn, &mut stop, &live, &mut sink).await,
                End::Cancelled
            );
            if sink.events.len() == 200 {
                break;
            }
        }
        assert_eq!(sink.events.len(), 200);
        assert_eq!(sink.comments, 1);
        assert!(sink.batches >= 1);
        for (i, (id, data)) in sink.events.iter().enumerate() {
            assert_eq!(id, &format!("e:{}", i + 1));
            assert_eq!(data.len(), (i + 1) * 10);
        }
        assert!(
            conn.close(Duration::from_secs(2)).await,
            "server answered our FIN"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_an_http_error() {
        let addr = serve_once(
            b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n",
            b"{}".to_vec(),
        )
        .await;
        let err = SseConn::connect(
            addr,
            None,
            &request("x", "t", "T", Auth::Query),
            Duration::from_secs(5),
            512,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ConnectError::Http(403)), "{err:?}");
    }
}
