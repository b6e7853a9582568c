//! A small server-sent events client for `GET /v1/sse/{topic}`.
//!
//! Raw TCP rather than an HTTP library, so that a test can shrink the socket's receive buffer and
//! stop reading (the hub then sees a reader whose socket is full), and so the bytes are parsed as
//! an `EventSource` would: incrementally, `id:`/`event:`/`data:` fields with multi-line data
//! joined by `\n`, `retry:` hints and `:` comments, an empty line ending each event. The hub
//! answers an event stream without a length or chunking (the body runs to the end of the
//! connection), so no HTTP framing stands between the socket and the parser.
//!
//! Every wait has a limit and names what it waited for: [`SseClient::next_event`] returns an
//! [`SseError`] saying so; the `expect_*` helpers panic with it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::{TestHub, WAIT};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field of this event's block (`None` when the block had none).
    pub id: Option<String>,
    /// The `event:` field (`"message"` when absent, as `EventSource` reports it).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// How many `data:` lines the event had.
    pub data_lines: usize,
}

impl SseEvent {
    /// `data` parsed as JSON (panics, showing the event, when it is not JSON).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// The `id`, which must be present.
    #[track_caller]
    pub fn cursor(&self) -> &str {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("event without an id: {self:?}"))
    }

    /// The offset part of the `id` (`<epoch>:<offset>`).
    #[track_caller]
    pub fn offset(&self) -> u64 {
        let c = self.cursor();
        c.rsplit_once(':')
            .and_then(|(_, o)| o.parse().ok())
            .unwrap_or_else(|| panic!("id {c:?} is not <epoch>:<offset>"))
    }

    /// The epoch part of the `id`.
    #[track_caller]
    pub fn epoch(&self) -> &str {
        let c = self.cursor();
        c.rsplit_once(':')
            .map(|(e, _)| e)
            .unwrap_or_else(|| panic!("id {c:?} is not <epoch>:<offset>"))
    }
}

/// Anything the stream carried, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line (`: text`), without the colon and one leading space.
    Comment(String),
    /// A `retry:` field, in milliseconds.
    Retry(u64),
}

/// Why a wait ended without what it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// Nothing suitable arrived in time.
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
        /// Items read and skipped meanwhile.
        skipped: Vec<SseItem>,
    },
    /// The stream ended (EOF or a read error) first.
    Ended {
        /// What was waited for.
        what: String,
        /// How it ended.
        how: String,
        /// Items read and skipped meanwhile.
        skipped: Vec<SseItem>,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout {
                what,
                after,
                skipped,
            } => write!(
                f,
                "timed out after {after:?} waiting for {what}; skipped {}",
                summarize(skipped)
            ),
            Self::Ended { what, how, skipped } => write!(
                f,
                "event stream ended ({how}) while waiting for {what}; skipped {}",
                summarize(skipped)
            ),
        }
    }
}

impl std::error::Error for SseError {}

/// The skipped items, shortened when there are many.
fn summarize(items: &[SseItem]) -> String {
    if items.len() <= 6 {
        return format!("{items:?}");
    }
    format!(
        "{} items, first {:?}, last {:?}",
        items.len(),
        &items[..3],
        &items[items.len() - 3..]
    )
}

/// A refused request: status, headers and the body (JSON, or `Value::Null`).
#[derive(Debug, Clone)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` if it is not).
    pub body: Value,
}

impl Refused {
    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How the client's socket is set up and read.
#[derive(Debug, Clone, Copy)]
pub struct SseOptions {
    /// `SO_RCVBUF` for the socket (small: the server's writes back up quickly). `None`: default.
    pub recv_buffer: Option<u32>,
    /// `TCP_MAXSEG` for the connection. Loopback's large segments let the server's send buffer
    /// grow to megabytes (the kernel sizes it from the segment size), so a reader that stops
    /// reading only backs the server up after megabytes; a small segment size keeps that to
    /// about 100 KB. `None`: default.
    pub max_segment: Option<u32>,
    /// Send a plain `GET /health` first on the same connection and read its answer, so the
    /// stream is the connection's second request (a browser reusing a keep-alive connection).
    /// The hub serves such a stream through its HTTP stack, with a chunked body; the client
    /// decodes it.
    pub keep_alive_first: bool,
    /// Most bytes taken from the socket per read.
    pub read_chunk: usize,
    /// A pause before every socket read (a slow reader). `None`: read as fast as possible.
    pub pause: Option<Duration>,
}

impl Default for SseOptions {
    fn default() -> Self {
        Self {
            recv_buffer: None,
            max_segment: None,
            keep_alive_first: false,
            read_chunk: 64 * 1024,
            pause: None,
        }
    }
}

/// The path of the event stream of `topic` (percent-encoded), plus `query` (`""` or `a=b&c=d`).
pub fn sse_path(topic: &str, query: &str) -> String {
    let mut path = String::from("/v1/sse/");
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(query);
    }
    path
}

/// Percent-encodes a query value.
pub fn query_value(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last chunk arrived.
    Done,
}

/// Sends `GET /health` on `tcp` and reads its whole answer, leaving the connection open for a
/// second request.
async fn warm_up(tcp: &mut TcpStream, hub: &TestHub, chunk: &mut [u8]) {
    let req = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", hub.addr);
    tcp.write_all(req.as_bytes())
        .await
        .expect("write the first request");
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "GET /health: {head:?}");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("GET /health without a length: {head:?}"));
            if buf.len() >= i + 4 + len {
                assert_eq!(buf.len(), i + 4 + len, "nothing after the first answer");
                return;
            }
        }
        let n = tcp.read(chunk).await.expect("read the first answer");
        assert!(n > 0, "the connection closed after the first request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parser state for the event being assembled.
#[derive(Debug, Default)]
struct Pending {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

/// An open event stream.
#[derive(Debug)]
pub struct SseClient {
    tcp: TcpStream,
    /// Response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Bytes read and not parsed yet (an incomplete line).
    buf: Vec<u8>,
    /// For a chunked body: raw bytes not decoded yet, and the decoder's state.
    chunked: Option<(Vec<u8>, Chunk)>,
    pending: Pending,
    items: VecDeque<SseItem>,
    /// The `id` of the last event handed out, as `EventSource` keeps it for `Last-Event-ID`.
    pub last_event_id: Option<String>,
    /// The last `retry:` seen.
    pub retry: Option<u64>,
    /// Comments seen so far (heartbeats).
    pub comments: usize,
    /// Why the stream ended, once it did.
    ended: Option<String>,
    opts: SseOptions,
}

impl SseClient {
    /// Opens `path` (see [`sse_path`]) with `headers`; panics unless the answer is 200.
    pub async fn open(hub: &TestHub, path: &str, headers: &[(&str, &str)]) -> Self {
        Self::request(hub, path, headers, SseOptions::default())
            .await
            .unwrap_or_else(|r| panic!("GET {path} refused: {} {}", r.status, r.body))
    }

    /// Opens `path` with an `access_token` query parameter.
    pub async fn open_topic(hub: &TestHub, topic: &str, token: &str) -> Self {
        let path = sse_path(topic, &format!("access_token={}", query_value(token)));
        Self::open(hub, &path, &[]).await
    }

    /// Sends `GET path` with `headers` over a socket set up by `opts`: the open stream on 200,
    /// the refusal otherwise. Panics when the hub does not answer within [`WAIT`].
    pub async fn request(
        hub: &TestHub,
        path: &str,
        headers: &[(&str, &str)],
        opts: SseOptions,
    ) -> Result<Self, Refused> {
        let fut = async {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .expect("a TCP socket");
            if let Some(n) = opts.recv_buffer {
                sock.set_recv_buffer_size(n as usize)
                    .expect("set SO_RCVBUF");
            }
            if let Some(n) = opts.max_segment {
                sock.set_tcp_mss(n).expect("set TCP_MAXSEG");
            }
            sock.set_nonblocking(true).expect("a non-blocking socket");
            let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
            let mut tcp = sock.connect(hub.addr).await.expect("connect to the hub");
            let mut chunk = vec![0u8; 16 * 1024];
            if opts.keep_alive_first {
                warm_up(&mut tcp, hub, &mut chunk).await;
            }
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
                hub.addr
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            tcp.write_all(req.as_bytes())
                .await
                .expect("write the request");
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = tcp.read(&mut chunk).await.expect("read the response head");
                assert!(
                    n > 0,
                    "connection closed before the response head to GET {path}; got {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in response head {head:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                })
                .collect();
            let rest = buf[head_end..].to_vec();
            if status == 200 {
                let chunked = find_header(&headers, "transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                let (buf, chunked) = if chunked {
                    (Vec::new(), Some((rest, Chunk::Size)))
                } else {
                    (rest, None)
                };
                let mut client = Self {
                    tcp,
                    headers,
                    buf,
                    chunked,
                    pending: Pending::default(),
                    items: VecDeque::new(),
                    last_event_id: None,
                    retry: None,
                    comments: 0,
                    ended: None,
                    opts,
                };
                // The first events may have come in the same read as the head.
                let body_ended = client.dechunk();
                client.parse(body_ended);
                if body_ended {
                    client.ended = Some("end of the chunked body".to_owned());
                }
                return Ok(client);
            }
            let mut body = rest;
            let len = find_header(&headers, "content-length").and_then(|v| v.parse().ok());
            loop {
                if len.is_some_and(|l| body.len() >= l) {
                    break;
                }
                let n = tcp.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            if let Some(l) = len {
                body.truncate(l);
            }
            Err(Refused {
                status,
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            })
        };
        tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| {
            panic!("timed out after {WAIT:?} waiting for the answer to GET {path}")
        })
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Changes how the socket is read from now on (see [`SseOptions`]; the receive buffer is
    /// fixed at connect).
    pub fn set_pace(&mut self, read_chunk: usize, pause: Option<Duration>) {
        self.opts.read_chunk = read_chunk.max(1);
        self.opts.pause = pause;
    }

    /// Moves the decoded bytes of a chunked body from its raw buffer into `buf`. Returns whether
    /// the body ended (its last, empty chunk arrived). Without chunking, nothing to do.
    fn dechunk(&mut self) -> bool {
        let Some((raw, state)) = &mut self.chunked else {
            return false;
        };
        let mut pos = 0;
        loop {
            match *state {
                Chunk::Size => {
                    let Some(end) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&raw[pos..pos + end]).to_string();
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    pos += end + 2;
                    if size == 0 {
                        raw.clear();
                        *state = Chunk::Done;
                        return true;
                    }
                    *state = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let n = left.min(raw.len() - pos);
                    if n == 0 {
                        break;
                    }
                    self.buf.extend_from_slice(&raw[pos..pos + n]);
                    pos += n;
                    *state = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if raw.len() - pos < 2 {
                        break;
                    }
                    assert_eq!(&raw[pos..pos + 2], b"\r\n", "a chunk must end with CRLF");
                    pos += 2;
                    *state = Chunk::Size;
                }
                Chunk::Done => return true,
            }
        }
        raw.drain(..pos);
        false
    }

    /// Parses every complete line in `buf` into items.
    fn parse(&mut self, at_eof: bool) {
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                // A `\r` at the very end may be the first half of `\r\n`: wait for the next byte.
                if b == b'\r' && i + 1 == self.buf.len() && !at_eof {
                    break;
                }
                let line = String::from_utf8(self.buf[start..i].to_vec())
                    .unwrap_or_else(|e| panic!("the event stream is not UTF-8: {e}"));
                let next = if b == b'\r' && self.buf.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                self.line(line);
                start = next;
                i = next;
                continue;
            }
            i += 1;
        }
        self.buf.drain(..start);
    }

    /// One line of the stream (the `text/event-stream` interpretation rules).
    fn line(&mut self, line: String) {
        if line.is_empty() {
            let p = std::mem::take(&mut self.pending);
            if p.data.is_empty() {
                return; // no data: nothing is dispatched (e.g. the `retry:` preamble)
            }
            self.items.push_back(SseItem::Event(SseEvent {
                id: p.id,
                event: p.event.unwrap_or_else(|| "message".to_owned()),
                data_lines: p.data.len(),
                data: p.data.join("\n"),
            }));
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments += 1;
            let c = comment.strip_prefix(' ').unwrap_or(comment);
            self.items.push_back(SseItem::Comment(c.to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => self.pending.data.push(value.to_owned()),
            "event" => self.pending.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let ms = value.parse().unwrap_or(u64::MAX);
                self.retry = Some(ms);
                self.items.push_back(SseItem::Retry(ms));
            }
            _ => {} // unknown fields are ignored
        }
    }

    /// Reads once from the socket (after the configured pause) until `deadline`. `Ok(false)` on
    /// timeout; `Err` once the stream ended.
    async fn fill(&mut self, deadline: Instant) -> Result<bool, String> {
        if let Some(how) = &self.ended {
            return Err(how.clone());
        }
        if let Some(p) = self.opts.pause {
            let wake = (Instant::now() + p).min(deadline);
            tokio::time::sleep_until(wake).await;
        }
        let mut chunk = vec![0u8; self.opts.read_chunk];
        let read = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await;
        let how = match read {
            Err(_) => return Ok(false),
            Ok(Ok(0)) => "end of stream (EOF)".to_owned(),
            Ok(Ok(n)) => {
                match &mut self.chunked {
                    Some((raw, _)) => raw.extend_from_slice(&chunk[..n]),
                    None => self.buf.extend_from_slice(&chunk[..n]),
                }
                if self.dechunk() {
                    self.parse(true);
                    self.buf.clear();
                    self.ended = Some("end of the chunked body".to_owned());
                } else {
                    self.parse(false);
                }
                return Ok(true);
            }
            Ok(Err(e)) => format!("read error: {e}"),
        };
        self.parse(true);
        if !self.buf.is_empty() {
            // An unterminated last line is discarded, as `EventSource` does.
            self.buf.clear();
        }
        self.ended = Some(how.clone());
        Err(how)
    }

    /// The next item (event, comment or retry) within `limit`.
    pub async fn next_item(&mut self, what: &str, limit: Duration) -> Result<SseItem, SseError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(item) = self.items.pop_front() {
                if let SseItem::Event(SseEvent { id: Some(id), .. }) = &item {
                    self.last_event_id = Some(id.clone());
                }
                return Ok(item);
            }
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(SseError::Timeout {
                        what: what.to_owned(),
                        after: limit,
                        skipped: Vec::new(),
                    });
                }
                Err(how) => {
                    return Err(SseError::Ended {
                        what: what.to_owned(),
                        how,
                        skipped: Vec::new(),
                    });
                }
            }
        }
    }

    /// The next event within `limit`, skipping comments and `retry:` hints.
    pub async fn next_event(&mut self, what: &str, limit: Duration) -> Result<SseEvent, SseError> {
        let deadline = Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(what, left).await {
                Ok(SseItem::Event(e)) => return Ok(e),
                Ok(other) => skipped.push(other),
                Err(SseError::Timeout { what, .. }) => {
                    return Err(SseError::Timeout {
                        what,
                        after: limit,
                        skipped,
                    });
                }
                Err(SseError::Ended { what, how, .. }) => {
                    return Err(SseError::Ended { what, how, skipped });
                }
            }
        }
    }

    /// The next event within [`WAIT`]; panics naming `what` otherwise.
    pub async fn expect_event(&mut self, what: &str) -> SseEvent {
        self.expect_event_within(what, WAIT).await
    }

    /// The next event within `limit`; panics naming `what` otherwise.
    pub async fn expect_event_within(&mut self, what: &str, limit: Duration) -> SseEvent {
        self.next_event(what, limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next event, which must be `event` (panics otherwise, showing what came).
    pub async fn expect_named(&mut self, event: &str, what: &str) -> SseEvent {
        let e = self.expect_event(what).await;
        assert_eq!(
            e.event, event,
            "expected a {event:?} event for {what}, got {e:?}"
        );
        e
    }

    /// The next comment within `limit`, skipping nothing else: an event first is a failure.
    pub async fn expect_comment_within(&mut self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(what, left).await {
                Ok(SseItem::Comment(c)) => return c,
                Ok(SseItem::Retry(_)) => {}
                Ok(SseItem::Event(e)) => panic!("expected a comment for {what}, got {e:?}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Reads until the stream ends (within `limit`), returning the events read meanwhile.
    /// Panics naming `what` when it stays open.
    pub async fn expect_end(&mut self, what: &str, limit: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(what, left).await {
                Ok(SseItem::Event(e)) => events.push(e),
                Ok(_) => {}
                Err(SseError::Ended { .. }) => return events,
                Err(e @ SseError::Timeout { .. }) => {
                    panic!("{e}; events meanwhile: {events:?}")
                }
            }
        }
    }

    /// Proves absence: fails if an event arrives (or the stream ends) within `ms` milliseconds.
    /// Comments (heartbeats) are allowed.
    pub async fn assert_silent(&mut self, ms: u64, what: &str) {
        let limit = Duration::from_millis(ms);
        match self.next_event(what, limit).await {
            Err(SseError::Timeout { .. }) => {}
            Ok(e) => panic!("expected no event within {ms} ms ({what}), got {e:?}"),
            Err(e) => panic!("{e} (checking for silence)"),
        }
    }

    /// How the stream ended (`"end of stream (EOF)"`, or the read error), once it did.
    pub fn end_reason(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// Drops the connection without reading further (a network cut, as far as the hub knows).
    pub fn drop_abruptly(self) {
        drop(self);
    }
}
