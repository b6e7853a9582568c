//! The host's side of the terminal WebSocket protocol, kept free of I/O so it can be tested on
//! its own: the URL the agent dials, the hub's text frames, and the reconnect backoff.
//!
//! Binary frames are raw bytes in both directions (hub → host: input for the PTY; host → hub:
//! PTY output). Text frames are JSON objects with a `type` field.

use std::time::Duration;

use serde::Deserialize;

/// The keepalive the agent sends every [`PING_INTERVAL`]; the hub answers `pong`.
pub const PING: &str = r#"{"type":"ping"}"#;

/// How often the agent pings (the hub closes connections silent for 75 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// A connection on which nothing arrived for this long (two and a half unanswered pings) is
/// taken as dead and replaced, so a half-open TCP connection does not hold the terminal hostage.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(75);

/// The initial PTY size, until the hub says otherwise.
pub const INITIAL_SIZE: Size = Size { cols: 80, rows: 24 };

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// What a text frame from the hub asks of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubMsg {
    /// Resize the PTY.
    Resize(Size),
    /// First message of a connection, with the terminal's size when the hub knows one.
    Connected(Option<Size>),
    /// Answer to a ping.
    Pong,
    /// The hub refused something; logged.
    Error(String),
    /// Who drives the terminal: nothing for the host to do.
    Control,
    /// A type this agent does not know (newer hub), or a frame that is not a JSON object with a
    /// string `type`; ignored. Holds the type, or a description of what was wrong.
    Unknown(String),
}

/// Only the fields the host acts on; anything else in the object is ignored, so the hub can add
/// fields without breaking older agents.
#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    cols: Option<u64>,
    rows: Option<u64>,
    message: Option<String>,
}

impl HubMsg {
    /// Parses a text frame. Never fails: a frame the agent cannot use is [`HubMsg::Unknown`].
    pub fn parse(text: &str) -> Self {
        let raw: Raw = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => return Self::Unknown(format!("unparsable frame ({e})")),
        };
        let size = match (raw.cols, raw.rows) {
            (Some(cols), Some(rows)) => match (u16::try_from(cols), u16::try_from(rows)) {
                (Ok(cols), Ok(rows)) if cols > 0 && rows > 0 => Some(Size { cols, rows }),
                _ => None,
            },
            _ => None,
        };
        match raw.kind.as_str() {
            "resize" => match size {
                Some(size) => Self::Resize(size),
                None => Self::Unknown(format!(
                    "resize without a usable size (cols {:?}, rows {:?})",
                    raw.cols, raw.rows
                )),
            },
            "connected" => Self::Connected(size),
            "pong" => Self::Pong,
            "error" => Self::Error(raw.message.unwrap_or_default()),
            "control" => Self::Control,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

/// Why a hub URL cannot be dialled.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL, or one without a host.
    #[error("invalid hub URL {0:?}: expected e.g. ws://127.0.0.1:4000")]
    Invalid(String),
    /// A scheme the agent does not speak.
    #[error(
        "unsupported scheme in hub URL {0:?}: use ws:// (or http://); TLS (wss://) is not built in"
    )]
    Scheme(String),
}

/// Where the agent connects: the TCP address and the WebSocket URL of the terminal's host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` for the TCP connection (IPv6 hosts keep their brackets).
    pub addr: String,
    /// `ws://host:port/<base path>/v1/terminal/<id>?role=host`.
    pub url: String,
}

impl Target {
    /// The host endpoint of terminal `id` on the hub at `base` (`ws://` or `http://`, with an
    /// optional path prefix for a hub behind a proxy).
    pub fn new(base: &str, id: &str) -> Result<Self, UrlError> {
        let uri: http::Uri = base
            .parse()
            .map_err(|_| UrlError::Invalid(base.to_owned()))?;
        let default_port = match uri.scheme_str() {
            Some("ws" | "http") => 80,
            Some(_) => return Err(UrlError::Scheme(base.to_owned())),
            None => return Err(UrlError::Invalid(base.to_owned())),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| UrlError::Invalid(base.to_owned()))?;
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority.host();
        let addr = format!("{host}:{port}");
        let prefix = uri.path().trim_end_matches('/');
        let url = format!(
            "ws://{addr}{prefix}/v1/terminal/{}?role=host",
            encode_path_segment(id)
        );
        Ok(Self { addr, url })
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so any terminal id is one
/// path segment.
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Delays between connection attempts: 100 ms, doubling up to 5 s, back to 100 ms after a
/// connection succeeded. Quick retries cover a hub restart; the cap keeps a long outage cheap.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first delay.
    pub const INITIAL: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(5);

    /// A backoff at its first delay.
    pub fn new() -> Self {
        Self {
            next: Self::INITIAL,
        }
    }

    /// The delay before the next attempt; each call doubles the one after, up to [`Self::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Starts over from [`Self::INITIAL`] (after a successful connection).
    pub fn reset(&mut self) {
        self.next = Self::INITIAL;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_messages_parse() {
        let size = |cols, rows| Size { cols, rows };
        assert_eq!(
            HubMsg::parse(r#"{"type":"resize","cols":120,"rows":40}"#),
            HubMsg::Resize(size(120, 40))
        );
        assert_eq!(
            HubMsg::parse(
                r#"{"type":"connected","driver":null,"cols":100,"rows":30,"cursor":0,"continuous":true,"host":true}"#
            ),
            HubMsg::Connected(Some(size(100, 30)))
        );
        // A size of 0 means "not known yet": keep the PTY's.
        assert_eq!(
            HubMsg::parse(r#"{"type":"connected","cols":0,"rows":0}"#),
            HubMsg::Connected(None)
        );
        assert_eq!(
            HubMsg::parse(r#"{"type":"connected"}"#),
            HubMsg::Connected(None)
        );
        assert_eq!(HubMsg::parse(r#"{"type":"pong"}"#), HubMsg::Pong);
        assert_eq!(
            HubMsg::parse(r#"{"type":"error","message":"Forbidden"}"#),
            HubMsg::Error("Forbidden".into())
        );
        assert_eq!(
            HubMsg::parse(r#"{"type":"control","driver":"u1"}"#),
            HubMsg::Control
        );
    }

    #[test]
    fn unusable_frames_are_unknown_not_errors() {
        assert_eq!(
            HubMsg::parse(r#"{"type":"host_connected"}"#),
            HubMsg::Unknown("host_connected".into())
        );
        for bad in [
            "not json",
            "[]",
            r#"{"cols":1}"#,
            r#"{"type":"resize","cols":0,"rows":5}"#,
            r#"{"type":"resize","cols":70000,"rows":5}"#,
            r#"{"type":"resize","cols":-1,"rows":5}"#,
            r#"{"type":"resize"}"#,
        ] {
            assert!(
                matches!(HubMsg::parse(bad), HubMsg::Unknown(_)),
                "{bad} should be ignored"
            );
        }
    }

    #[test]
    fn targets_append_the_terminal_path() {
        let t = Target::new("ws://127.0.0.1:4000", "t1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:4000");
        assert_eq!(t.url, "ws://127.0.0.1:4000/v1/terminal/t1?role=host");
        let t = Target::new("http://hub.internal/prefix/", "a b/c?d").unwrap();
        assert_eq!(t.addr, "hub.internal:80");
        assert_eq!(
            t.url,
            "ws://hub.internal:80/prefix/v1/terminal/a%20b%2Fc%3Fd?role=host"
        );
        let t = Target::new("ws://[::1]:4000", "x").unwrap();
        assert_eq!(t.addr, "[::1]:4000");
        assert!(matches!(
            Target::new("wss://hub:443", "x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            Target::new("127.0.0.1:4000", "x"),
            Err(UrlError::Scheme(_) | UrlError::Invalid(_))
        ));
        assert!(matches!(
            Target::new("not a url", "x"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn ids_are_percent_encoded() {
        assert_eq!(encode_path_segment("abc-1.2_3~"), "abc-1.2_3~");
        assert_eq!(encode_path_segment("é/%"), "%C3%A9%2F%25");
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
