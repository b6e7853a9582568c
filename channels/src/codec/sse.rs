//! Server-sent events (`text/event-stream`): the encoding of messages for SSE readers.
//!
//! ```text
//! id: <cursor>
//! event: <event>
//! data: <JSON payload, one `data:` line per line of text>
//!
//! ```
//! The `id` is the message's cursor, so a reconnecting `EventSource` sends it back as
//! `Last-Event-ID` and resumes exactly there.

/// Appends one event. `data` is split into `data:` lines (a JSON text only has newlines between
/// tokens, so this is lossless for the reader, which joins them with `\n`).
pub fn push_event(out: &mut Vec<u8>, id: Option<&str>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        push_line(out, id.as_bytes());
    }
    out.extend_from_slice(b"event: ");
    push_line(out, event.as_bytes());
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        push_line(out, line.strip_suffix(b"\r").unwrap_or(line));
    }
    out.push(b'\n');
}

/// A field value on one line: carriage returns and newlines cannot appear in a field.
fn push_line(out: &mut Vec<u8>, value: &[u8]) {
    out.extend(
        value
            .iter()
            .map(|b| if matches!(b, b'\r' | b'\n') { b' ' } else { *b }),
    );
    out.push(b'\n');
}

/// The stream's first bytes: how long an `EventSource` should wait before reconnecting.
pub fn preamble(retry_ms: u64) -> Vec<u8> {
    format!("retry: {retry_ms}\n\n").into_bytes()
}

/// A comment line that keeps proxies and the reader's idle timers from closing the stream.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_id_event_and_multi_line_data() {
        let mut out = Vec::new();
        push_event(&mut out, Some("e:3"), "token", b"{\n  \"text\": \"a\"\r\n}");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "id: e:3\nevent: token\ndata: {\ndata:   \"text\": \"a\"\ndata: }\n\n"
        );
    }

    #[test]
    fn fields_cannot_break_lines() {
        let mut out = Vec::new();
        push_event(&mut out, None, "bad\nevent", b"{}");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "event: bad event\ndata: {}\n\n"
        );
        assert_eq!(preamble(2000), b"retry: 2000\n\n");
    }
}
