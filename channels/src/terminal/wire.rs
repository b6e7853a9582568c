//! The terminal WebSocket's text frames: small JSON objects with a `type` field.
//!
//! Binary frames are raw bytes (viewer → host: input; host → viewers: output) and never pass
//! through here. Unknown types and malformed JSON are answered with an `error` message naming
//! what was wrong; the connection stays open.

use serde::{Deserialize, Serialize};

/// A text frame from a viewer or the host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// The terminal's size (from the driver: forwarded to the host, which resizes its PTY).
    Resize {
        /// Columns, 1..=1000.
        cols: u16,
        /// Rows, 1..=1000.
        rows: u16,
    },
    /// Keepalive (seed 003: every 30 s); answered with `pong`.
    Ping,
    /// Asks to become the driver.
    TakeControl,
    /// Gives up driving.
    Release,
}

/// Largest accepted terminal dimension.
pub const MAX_DIM: u16 = 1000;

impl ClientMsg {
    /// Parses a text frame, with a message saying what is wrong when it is not valid.
    pub fn parse(text: &str) -> Result<Self, String> {
        let msg: ClientMsg = serde_json::from_str(text).map_err(|e| {
            format!(
                "Invalid message: {e}; expected {{\"type\": \"resize\"|\"ping\"|\"take_control\"|\"release\"}}"
            )
        })?;
        if let ClientMsg::Resize { cols, rows } = msg
            && (cols == 0 || rows == 0 || cols > MAX_DIM || rows > MAX_DIM)
        {
            return Err(format!(
                "Invalid resize: cols and rows must be 1 to {MAX_DIM}, got {cols}x{rows}"
            ));
        }
        Ok(msg)
    }
}

/// A text frame the hub sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on every connection: who drives, the size, the output cursor after the
    /// scrollback that follows, and whether a host is attached.
    Connected {
        /// Identity (`sub`) of the driver, if any.
        driver: Option<String>,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
        /// Byte offset just past the output sent with this connection's catch-up.
        cursor: u64,
        /// Whether the scrollback sent continues exactly from the cursor the viewer gave.
        continuous: bool,
        /// Whether the host is connected.
        host: bool,
    },
    /// Answer to `ping`.
    Pong,
    /// The driver changed.
    Control {
        /// Identity (`sub`) of the new driver, if any.
        driver: Option<String>,
    },
    /// The size changed (to viewers) or must change (to the host).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The viewer fell behind by more than the scrollback holds: the output that follows starts
    /// at `cursor`, not where the viewer was (redraw from here).
    Snapshot {
        /// Offset of the next output byte.
        cursor: u64,
    },
    /// The host went away: input is refused until it is back.
    HostDisconnected,
    /// The host is (back) connected.
    HostConnected,
    /// A refused request or invalid message; the connection stays open.
    Error {
        /// What was wrong.
        message: String,
    },
}

impl ServerMsg {
    /// The JSON text of this message.
    pub fn to_text(&self) -> String {
        // Serializing these plain enums cannot fail; fall back to a fixed error object anyway
        // rather than panicking on a server path.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","message":"internal"}"#.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_bad_ones_say_why() {
        assert_eq!(
            ClientMsg::parse(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(ClientMsg::Resize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(ClientMsg::parse(r#"{"type":"ping"}"#), Ok(ClientMsg::Ping));
        assert_eq!(
            ClientMsg::parse(r#"{"type":"take_control"}"#),
            Ok(ClientMsg::TakeControl)
        );
        let e = ClientMsg::parse(r#"{"type":"resize","cols":0,"rows":40}"#).unwrap_err();
        assert!(e.contains("1 to 1000"), "{e}");
        let e = ClientMsg::parse(r#"{"type":"dance"}"#).unwrap_err();
        assert!(e.starts_with("Invalid message"), "{e}");
        assert!(ClientMsg::parse("not json").is_err());
    }

    #[test]
    fn server_messages_have_a_type_field() {
        assert_eq!(ServerMsg::Pong.to_text(), r#"{"type":"pong"}"#);
        assert_eq!(
            ServerMsg::HostDisconnected.to_text(),
            r#"{"type":"host_disconnected"}"#
        );
        let c = ServerMsg::Connected {
            driver: Some("u1".into()),
            cols: 80,
            rows: 24,
            cursor: 7,
            continuous: true,
            host: true,
        };
        assert_eq!(
            c.to_text(),
            r#"{"type":"connected","driver":"u1","cols":80,"rows":24,"cursor":7,"continuous":true,"host":true}"#
        );
    }
}
