//! The client side of the hub's terminal WebSocket (`GET /v1/terminal/{id}?role=host|viewer`,
//! `hub/src/transport/terminal.rs`): the URL, opening a connection up to its `connected`
//! message, the hub's text frames, and the byte pattern the output scenario writes and checks.
//!
//! Binary frames are raw bytes (viewer → host: input; host → viewers: output); text frames are
//! JSON with a `type`. The connection itself is the lean [`WsConn`] the other scenarios use.

use std::time::{Duration, Instant};

use channels::ws_frame::Opcode;
use serde_json::Value;

use crate::client::{ConnectError, ReadError, WsConn};
use crate::session::Dial;
use crate::target::Target;

/// Which end of the terminal a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The PTY's side: writes output, receives input.
    Host,
    /// A reader (and, once it types, the driver).
    Viewer,
}

/// The terminal URL on `host` (`host:port`), with the token as `access_token` (as a browser
/// sends it) and, for a viewer resuming, its `cursor`. [`Target::parse`] adds `apikey` and
/// `vsn`, which the terminal endpoint ignores.
pub fn url(host: &str, id: &str, role: Role, token: &str, cursor: Option<u64>) -> String {
    let role = match role {
        Role::Host => "host",
        Role::Viewer => "viewer",
    };
    let mut u = format!("ws://{host}/v1/terminal/{id}?role={role}&access_token={token}");
    if let Some(c) = cursor {
        u.push_str(&format!("&cursor={c}"));
    }
    u
}

/// A text frame from the hub, reduced to what the scenarios act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// First message of a connection.
    Connected(Connected),
    /// The host is (back) connected.
    HostConnected,
    /// The host went away.
    HostDisconnected,
    /// The viewer fell behind by more than the scrollback: output continues at this offset.
    Snapshot(u64),
    /// A refused input or request.
    Error(String),
    /// Anything else (`control`, `resize`, `pong`, a type this client does not know).
    Other,
}

/// The `connected` message's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// Byte offset just past the scrollback that follows.
    pub cursor: u64,
    /// Whether that scrollback continues exactly from the cursor the viewer gave.
    pub continuous: bool,
    /// Whether a host is connected.
    pub host: bool,
}

impl Text {
    /// Parses a text frame; a frame that is not a JSON object with a string `type` is `Other`.
    pub fn parse(text: &[u8]) -> Self {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            return Self::Other;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("connected") => Self::Connected(Connected {
                cursor: v.get("cursor").and_then(Value::as_u64).unwrap_or(0),
                continuous: v
                    .get("continuous")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                host: v.get("host").and_then(Value::as_bool).unwrap_or(false),
            }),
            Some("host_connected") => Self::HostConnected,
            Some("host_disconnected") => Self::HostDisconnected,
            Some("snapshot") => {
                Self::Snapshot(v.get("cursor").and_then(Value::as_u64).unwrap_or(0))
            }
            Some("error") => Self::Error(
                v.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => Self::Other,
        }
    }
}

/// The wait a rate-limit refusal asks for (`…; retry in <n> ms`), if the message is one.
pub fn retry_after(message: &str) -> Option<Duration> {
    if !message.starts_with("RateLimitExceeded") {
        return None;
    }
    let rest = &message[message.rfind("retry in ")? + "retry in ".len()..];
    let ms: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The status code of a close frame's payload (1005, "no status", when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

/// Why a terminal connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Connecting or the upgrade failed (403 for a role the token may not take).
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The `connected` message did not arrive in time.
    #[error("no connected message in time")]
    Timeout,
    /// The connection broke or was refused before `connected`.
    #[error("closed before connected: {0}")]
    Closed(String),
}

/// Opens a terminal connection to `url` (the address, source and seed from `dial`) and reads
/// up to its `connected` message. Binary frames that follow it (scrollback) stay buffered.
pub async fn open(dial: Dial<'_>, url: &str) -> Result<(WsConn, Connected), OpenError> {
    let target = Target::parse(url, "").map_err(|_| OpenError::Closed("bad url".into()))?;
    let deadline = Instant::now() + dial.connect_timeout;
    let mut conn = WsConn::connect(
        &target,
        dial.src,
        dial.connect_timeout,
        dial.read_buf,
        dial.seed,
    )
    .await?;
    loop {
        loop {
            let frame = conn
                .next_frame()
                .map_err(|e| OpenError::Closed(e.to_string()))?;
            match frame {
                None => break,
                Some((Opcode::Text, t)) => match Text::parse(t) {
                    Text::Connected(c) => return Ok((conn, c)),
                    Text::Error(m) => return Err(OpenError::Closed(m)),
                    _ => {}
                },
                Some((Opcode::Close, p)) => {
                    return Err(OpenError::Closed(format!("close {}", close_code(p))));
                }
                Some(_) => {}
            }
        }
        match tokio::time::timeout_at(deadline.into(), conn.read_some()).await {
            Err(_) => return Err(OpenError::Timeout),
            Ok(Ok(0)) => return Err(OpenError::Closed("eof".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(OpenError::Closed(ReadError::Io(e).to_string())),
        }
    }
}

/// Finds a marker in a byte stream that arrives in pieces (the marker may straddle frames).
#[derive(Debug)]
pub struct Marker {
    marker: Vec<u8>,
    /// The last `marker.len() - 1` bytes seen, plus the newest piece while searching.
    tail: Vec<u8>,
}

impl Marker {
    /// Looks for `marker`.
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.as_bytes().to_vec(),
            tail: Vec::new(),
        }
    }

    /// Feeds the next piece; true once the marker has been seen (an empty marker at once).
    pub fn feed(&mut self, piece: &[u8]) -> bool {
        if self.marker.is_empty() {
            return true;
        }
        self.tail.extend_from_slice(piece);
        if memchr::memmem::find(&self.tail, &self.marker).is_some() {
            return true;
        }
        let keep = self.marker.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        false
    }
}

/// Period of the output pattern: a prime, so a lost or repeated run of whole chunks (any size
/// up to [`crate::args::MAX_CHUNK`]) shifts the stream by a non-multiple of the period and
/// shows up as a mismatch.
pub const PERIOD: usize = 65_521;

/// The bytes the output scenario's host writes: byte `n` of the stream is `pattern[n % PERIOD]`
/// (pseudo-random, so a shifted stream never matches by accident). Checking a received piece is
/// one `memcmp` against the pattern at its offset, cheap enough for hundreds of MB/s.
#[derive(Debug)]
pub struct Pattern {
    /// The period followed by its first [`crate::args::MAX_CHUNK`] bytes again, so any piece of
    /// up to that length is one contiguous slice.
    bytes: Vec<u8>,
}

impl Pattern {
    /// The pattern (always the same, so separate processes could check each other).
    pub fn new() -> Self {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        // The period is a little shorter than the largest chunk: wrap around as often as needed.
        let wrap: Vec<u8> = (0..crate::args::MAX_CHUNK)
            .map(|i| bytes[i % PERIOD])
            .collect();
        bytes.extend_from_slice(&wrap);
        Self { bytes }
    }

    /// Stream bytes `offset .. offset + len` (`len` at most [`crate::args::MAX_CHUNK`]).
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % PERIOD as u64) as usize;
        &self.bytes[start..start + len.min(crate::args::MAX_CHUNK)]
    }

    /// Whether `data` is the stream from `offset` on; `Err(index)` of the first wrong byte.
    pub fn check(&self, offset: u64, data: &[u8]) -> Result<(), usize> {
        let mut done = 0;
        for piece in data.chunks(crate::args::MAX_CHUNK) {
            let want = self.slice(offset + done as u64, piece.len());
            if piece != want {
                let i = piece
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(done + i);
            }
            done += piece.len();
        }
        Ok(())
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_role_token_and_cursor() {
        assert_eq!(
            url("127.0.0.1:4000", "t1", Role::Host, "TK", None),
            "ws://127.0.0.1:4000/v1/terminal/t1?role=host&access_token=TK"
        );
        assert_eq!(
            url("h:1", "t", Role::Viewer, "TK", Some(42)),
            "ws://h:1/v1/terminal/t?role=viewer&access_token=TK&cursor=42"
        );
    }

    #[test]
    fn text_frames_parse() {
        let c = br#"{"type":"connected","driver":null,"cols":80,"rows":24,"cursor":7,"continuous":true,"host":false}"#;
        assert_eq!(
            Text::parse(c),
            Text::Connected(Connected {
                cursor: 7,
                continuous: true,
                host: false
            })
        );
        assert_eq!(
            Text::parse(br#"{"type":"snapshot","cursor":1400}"#),
            Text::Snapshot(1400)
        );
        assert_eq!(
            Text::parse(br#"{"type":"host_connected"}"#),
            Text::HostConnected
        );
        assert_eq!(
            Text::parse(br#"{"type":"error","message":"no"}"#),
            Text::Error("no".into())
        );
        assert_eq!(
            Text::parse(br#"{"type":"control","driver":"u"}"#),
            Text::Other
        );
        assert_eq!(Text::parse(b"not json"), Text::Other);
    }

    #[test]
    fn rate_limit_refusals_say_how_long_to_wait() {
        let m = "RateLimitExceeded: too much terminal input (limit 1000 per second); retry in 3 ms";
        assert_eq!(retry_after(m), Some(Duration::from_millis(3)));
        assert_eq!(
            retry_after("Unavailable: the terminal's host is not connected"),
            None
        );
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(&[0x0f, 0xa8, b'x']), 4008);
        assert_eq!(close_code(&[]), 1005);
    }

    #[test]
    fn markers_are_found_across_pieces() {
        let mut m = Marker::new("lt-ready");
        assert!(!m.feed(b"\x1b[?2004hlt-"));
        assert!(!m.feed(b"rea"));
        assert!(m.feed(b"dy\n"));
        let mut m = Marker::new("abc");
        for _ in 0..100 {
            assert!(!m.feed(b"xxab"));
        }
        assert!(m.tail.len() <= 6);
        assert!(Marker::new("").feed(b""));
    }

    #[test]
    fn the_pattern_checks_any_split_and_catches_loss_and_repeats() {
        let p = Pattern::new();
        let chunk = 16 * 1024;
        let mut stream = Vec::new();
        for k in 0..20u64 {
            stream.extend_from_slice(p.slice(k * chunk as u64, chunk));
        }
        // Any split of the stream checks out at its offsets.
        let mut off = 0;
        for piece in stream.chunks(7_001) {
            assert_eq!(p.check(off, piece), Ok(()));
            off += piece.len() as u64;
        }
        assert_eq!(p.check(0, &stream), Ok(()));
        // A lost chunk or a repeated one does not.
        let mut lost = stream[..chunk].to_vec();
        lost.extend_from_slice(&stream[2 * chunk..3 * chunk]);
        assert_eq!(p.check(0, &lost).map_err(|i| i >= chunk), Err(true));
        let mut twice = stream[..2 * chunk].to_vec();
        twice.extend_from_slice(&stream[chunk..2 * chunk]);
        assert!(p.check(0, &twice).is_err());
        // The largest chunk, starting anywhere in the period, is the stream too.
        let big = crate::args::MAX_CHUNK;
        let at = (PERIOD - 3) as u64;
        assert_eq!(p.slice(at, big).len(), big);
        assert_eq!(p.slice(at, big)[3], p.slice(0, 1)[0]);
        assert_eq!(p.check(at, p.slice(at, big)), Ok(()));
        // One flipped byte is found where it is.
        let mut bad = stream.clone();
        bad[100_000] ^= 1;
        assert_eq!(p.check(0, &bad), Err(100_000));
    }
}
