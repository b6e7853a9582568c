//! A lean WebSocket client over a tokio `TcpStream`.
//!
//! Thousands of these run in one process next to the server under test, on two shared cores,
//! so each one is a socket, one read buffer that grows only when a frame needs it, and one
//! reusable write buffer. The handshake is written by hand and framing comes from
//! [`channels::ws_frame`], the same code the hub uses on the server side. Reads take whatever
//! the socket has (many frames per system call when the task falls behind) and
//! [`WsConn::next_frame`] then hands them out borrowed, without copying.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use channels::ws_frame::{self, FrameError, Opcode, Role};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::target::Target;

/// Largest handshake response we read; anything longer is not a WebSocket server.
const MAX_HANDSHAKE: usize = 16 * 1024;

/// Largest frame accepted from the server (the real server's `max_frame_size` is 5 MB).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// Reads smaller than this much free space first compact or grow the buffer.
const MIN_READ: usize = 256;

/// Why a connection could not be opened. Each kind is counted separately in the report.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connect plus handshake took longer than `--connect-timeout`.
    #[error("connect timeout")]
    Timeout,
    /// The server refused the TCP connection (not listening, or its backlog is full).
    #[error("connection refused")]
    Refused,
    /// No local port was free for the source address.
    #[error("no local port (use more --src-ips)")]
    NoLocalPort,
    /// The server answered the upgrade with another status (401 for a bad token).
    #[error("http {0}")]
    Http(u16),
    /// The response was not a valid WebSocket handshake.
    #[error("bad handshake: {0}")]
    Handshake(&'static str),
    /// The connection closed during the handshake.
    #[error("closed during handshake")]
    Closed,
    /// Any other socket error.
    #[error("io: {0}")]
    Io(io::ErrorKind),
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => Self::NoLocalPort,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Self::Closed,
            k => Self::Io(k),
        }
    }
}

/// Why reading frames failed after the handshake.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The server broke the framing rules (or fragmented a message, which the hub never does).
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

/// One open WebSocket connection (client role).
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    /// Read buffer; unconsumed bytes are `buf[start..end]`. Its length is its usable size.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Outgoing frames are encoded here, then written with one call.
    out: Vec<u8>,
    /// Masking-key generator (xorshift). RFC 6455 wants unpredictable keys to protect proxies
    /// from cache poisoning; between a load test and its own server a fast PRNG is enough.
    rng: u64,
}

impl WsConn {
    /// Connects to `target` from `src` (any local address when `None`), performs the upgrade
    /// and checks `Sec-WebSocket-Accept`. The whole exchange is bounded by `timeout`.
    /// `read_buf` is the initial read buffer size; it grows when a frame needs more.
    pub async fn connect(
        target: &Target,
        src: Option<IpAddr>,
        timeout: Duration,
        read_buf: usize,
        seed: u64,
    ) -> Result<Self, ConnectError> {
        match tokio::time::timeout(timeout, Self::connect_inner(target, src, read_buf, seed)).await
        {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect_inner(
        target: &Target,
        src: Option<IpAddr>,
        read_buf: usize,
        seed: u64,
    ) -> Result<Self, ConnectError> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = src {
            // Lets a port whose previous connection sits in TIME_WAIT be reused, which matters
            // when runs follow each other from the same few source addresses.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(target.addr).await?;
        let mut conn = Self {
            stream,
            buf: vec![0; read_buf.max(MIN_READ * 2)],
            start: 0,
            end: 0,
            out: Vec::with_capacity(256),
            rng: seed | 1,
        };
        conn.handshake(target).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, target: &Target) -> Result<(), ConnectError> {
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&self.next_rand().to_le_bytes());
        key_bytes[8..].copy_from_slice(&self.next_rand().to_le_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        self.out.clear();
        target.request(&key, &mut self.out);
        self.stream.write_all(&self.out).await?;
        self.out.clear();

        let head_len = loop {
            if let Some(i) = memchr::memmem::find(&self.buf[..self.end], b"\r\n\r\n") {
                break i + 4;
            }
            if self.end >= MAX_HANDSHAKE {
                return Err(ConnectError::Handshake("response headers too long"));
            }
            if self.end == self.buf.len() {
                self.buf.resize((self.buf.len() * 2).min(MAX_HANDSHAKE), 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(ConnectError::Closed);
            }
            self.end += n;
        };
        check_response(&self.buf[..head_len], &key)?;
        // Frames the server sent right behind its headers stay in the buffer.
        self.start = head_len;
        Ok(())
    }

    /// Reads what the socket has into the buffer. Returns 0 at end of stream.
    /// Cancel-safe: dropping the future loses no data.
    pub async fn read_some(&mut self) -> io::Result<usize> {
        self.make_room();
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Makes at least `MIN_READ` bytes of room after `end`, and room for the whole pending frame
    /// when its header says it is larger than the buffer.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= MIN_READ {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = frame_len_hint(&self.buf[..self.end])
            .unwrap_or(0)
            .max(self.end + MIN_READ)
            .min(MAX_FRAME + 14);
        if need > self.buf.len() {
            self.buf
                .resize(need.max(self.buf.len() * 2).min(MAX_FRAME + 14), 0);
        }
    }

    /// The next complete frame in the buffer, if any; call [`read_some`](Self::read_some) when
    /// this returns `None`. Fragmented messages are refused: the hub never fragments.
    pub fn next_frame(&mut self) -> Result<Option<(Opcode, &[u8])>, FrameError> {
        let parsed =
            ws_frame::parse_frame(&mut self.buf[self.start..self.end], Role::Client, MAX_FRAME)?;
        let Some((frame, used)) = parsed else {
            return Ok(None);
        };
        if !frame.fin || frame.opcode == Opcode::Continuation {
            return Err(FrameError::Fragmentation);
        }
        let (opcode, len) = (frame.opcode, frame.payload.len());
        let payload_start = self.start + used - len;
        self.start += used;
        Ok(Some((
            opcode,
            &self.buf[payload_start..payload_start + len],
        )))
    }

    /// Encodes one masked frame into the pending output; send it with [`flush`](Self::flush).
    pub fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = (self.next_rand() as u32).to_ne_bytes();
        ws_frame::write_frame(&mut self.out, opcode, payload, Some(mask));
    }

    /// Number of bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes every queued frame with as few system calls as the socket allows.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Queues and writes one frame.
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        self.queue(opcode, payload);
        self.flush().await
    }

    /// [`send`](Self::send), failing with `TimedOut` when the server has stopped reading and
    /// the write cannot finish within `limit`.
    pub async fn send_within(
        &mut self,
        limit: Duration,
        opcode: Opcode,
        payload: &[u8],
    ) -> io::Result<()> {
        tokio::time::timeout(limit, self.send(opcode, payload))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Closes politely: a close frame (1000), then waits up to `timeout` for the server to
    /// answer or end the stream, so the socket is not reset with data in flight.
    pub async fn close(mut self, timeout: Duration) -> bool {
        let mask = (self.next_rand() as u32).to_ne_bytes();
        ws_frame::write_close(&mut self.out, 1000, "", Some(mask));
        let polite = async {
            self.flush().await?;
            loop {
                if self.read_some().await? == 0 {
                    return Ok::<bool, io::Error>(true);
                }
                while let Ok(Some((op, _))) = self.next_frame() {
                    if op == Opcode::Close {
                        return Ok(true);
                    }
                }
                // Skip whatever else is buffered; only the close matters now.
                self.start = self.end;
            }
        };
        let clean = matches!(tokio::time::timeout(timeout, polite).await, Ok(Ok(true)));
        let _ = tokio::time::timeout(timeout, self.stream.shutdown()).await;
        clean
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Size of the first frame in `buf` (header plus payload) once its header is complete.
fn frame_len_hint(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let masked = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (len, header) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(buf.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    len.checked_add(header + masked)
}

/// Checks the status line and `Sec-WebSocket-Accept` of an upgrade response.
fn check_response(head: &[u8], key: &str) -> Result<(), ConnectError> {
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
    if status != 101 {
        return Err(ConnectError::Http(status));
    }
    let expected = ws_frame::accept_key(key.as_bytes());
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim());
    match accept {
        Some(v) if v == expected => Ok(()),
        Some(_) => Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept")),
        None => Err(ConnectError::Handshake("no Sec-WebSocket-Accept")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn responses_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nconnection: Upgrade\r\nSEC-WEBSOCKET-ACCEPT: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_response(ok, key).is_ok());
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(
            check_response(denied, key),
            Err(ConnectError::Http(401))
        ));
        let wrong = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            check_response(wrong, key),
            Err(ConnectError::Handshake(_))
        ));
        assert!(check_response(b"SSH-2.0\r\n\r\n", key).is_err());
    }

    #[test]
    fn frame_length_hints() {
        assert_eq!(frame_len_hint(&[0x82]), None);
        assert_eq!(frame_len_hint(&[0x82, 5]), Some(7));
        assert_eq!(frame_len_hint(&[0x82, 126, 1, 0]), Some(260));
        assert_eq!(
            frame_len_hint(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some(65_536 + 10)
        );
    }

    /// A one-shot server: accepts, answers the upgrade, sends `frames`, then echoes nothing.
    async fn serve_once(frames: Vec<u8>) -> SocketAddr {
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
            let text = String::from_utf8(req).unwrap();
            assert!(text.contains("apikey=T&vsn=2.0.0"));
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                ws_frame::accept_key(key.as_bytes())
            );
            let mut all = resp.into_bytes();
            all.extend_from_slice(&frames);
            s.write_all(&all).await.unwrap();
            // Read the client's frames until it closes.
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        addr
    }

    #[tokio::test]
    async fn handshake_and_many_frames_per_read() {
        let mut frames = Vec::new();
        for i in 0..50u8 {
            ws_frame::write_frame(&mut frames, Opcode::Binary, &[i; 40], None);
        }
        let big = vec![7u8; 100_000];
        ws_frame::write_frame(&mut frames, Opcode::Text, &big, None);
        let addr = serve_once(frames).await;
        let target = Target::parse(&format!("ws://{addr}/ws"), "T").unwrap();
        let mut conn = WsConn::connect(
            &target,
            Some("127.0.0.1".parse().unwrap()),
            Duration::from_secs(5),
            512,
            1,
        )
        .await
        .unwrap();
        let mut seen = 0u8;
        let mut big_len = 0;
        while big_len == 0 {
            while let Some((op, payload)) = conn.next_frame().unwrap() {
                match op {
                    Opcode::Binary => {
                        assert_eq!(payload, &[seen; 40]);
                        seen += 1;
                    }
                    Opcode::Text => big_len = payload.len(),
                    other => panic!("{other:?}"),
                }
            }
            if big_len == 0 {
                assert!(conn.read_some().await.unwrap() > 0);
            }
        }
        assert_eq!((seen, big_len), (50, 100_000));
        conn.send(Opcode::Text, b"hello").await.unwrap();
        conn.close(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn refused_connections_are_classified() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target::parse(&format!("ws://{addr}/ws"), "T").unwrap();
        let err = WsConn::connect(&target, None, Duration::from_secs(2), 512, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Refused), "{err:?}");
    }
}
