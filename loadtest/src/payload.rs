//! The fan-out payload: `{"t":<ns>,"s":<seq>,"p":"xxx…"}`, padded to the requested size.
//!
//! `t` is the send time on [`crate::clock`], `s` the per-topic sequence number. Subscribers read
//! both with a byte scan instead of a JSON parse: at a million deliveries a second the receive
//! path must not allocate or build a tree per message.
//!
//! Chat token payloads must be exactly `{"text":"…"}` for the hub to treat them as mergeable
//! deltas, so the sse scenario's stamps travel inside the text instead: [`build_text`] writes
//! `{"text":"~<seq>.<ns>|xxx…"}`, and [`scan_text`] finds every `~<seq>.<ns>|` record in a text,
//! because a reader that falls behind gets several deltas merged into one event whose text is
//! their concatenation (one record per original token).
//!
//! pg-feed's stamps travel inside a database row instead: the hub delivers the `build_events`
//! row as `{"id": …, "payload": {"s": 0, "t": 1763…}, …}` (Postgres' jsonb text, with spaces),
//! and [`scan_row`] reads the inner object the same way, allocation-free.

use std::io::Write as _;

use memchr::memmem;

/// A payload's send time and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, ns on the shared clock.
    pub t: u64,
    /// Sequence number within the topic, from 0.
    pub s: u64,
}

/// Writes the payload for `stamp` into `buf` (cleared first), padded with `x` to `size` bytes.
/// When `size` is smaller than the unpadded payload, the payload is simply that long.
pub fn build(buf: &mut Vec<u8>, stamp: Stamp, size: usize) {
    buf.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(buf, r#"{{"t":{},"s":{},"p":""#, stamp.t, stamp.s);
    let fill = size.saturating_sub(buf.len() + 2);
    buf.resize(buf.len() + fill, b'x');
    buf.extend_from_slice(br#""}"#);
}

/// Writes the chat token payload for `stamp` into `buf` (cleared first):
/// `{"text":"~<s>.<t>|"}` with the text padded with `x` to `size` bytes in all.
pub fn build_text(buf: &mut Vec<u8>, stamp: Stamp, size: usize) {
    buf.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(buf, r#"{{"text":"~{}.{}|"#, stamp.s, stamp.t);
    let fill = size.saturating_sub(buf.len() + 2);
    buf.resize(buf.len() + fill, b'x');
    buf.extend_from_slice(br#""}"#);
}

/// Calls `found` with every `~<s>.<t>|` record in `text` (a token payload, or several merged
/// into one) in order; returns how many records were found. A `~` not followed by a whole
/// record is skipped: padding never contains `~`, so that only happens to foreign text.
pub fn scan_text(text: &[u8], mut found: impl FnMut(Stamp)) -> usize {
    let mut n = 0;
    let mut rest = text;
    // Each iteration consumes at least the `~` it found, so this ends within `text.len()`.
    while let Some(i) = memchr::memchr(b'~', rest) {
        rest = &rest[i + 1..];
        let Some((s, used)) = number(rest) else {
            continue;
        };
        let Some(after) = rest[used..].strip_prefix(b".") else {
            continue;
        };
        let Some((t, used)) = number(after) else {
            continue;
        };
        if after.get(used) == Some(&b'|') {
            found(Stamp { t, s });
            n += 1;
            rest = &after[used + 1..];
        }
    }
    n
}

/// Finds `t` and `s` in a payload; `None` when either is missing or not an unsigned integer.
pub fn scan(payload: &[u8]) -> Option<Stamp> {
    // Fast path: the exact layout `build` writes, read front to back with no search.
    if let Some(rest) = payload.strip_prefix(br#"{"t":"#) {
        if let Some((t, used)) = number(rest) {
            if let Some(rest) = rest[used..].strip_prefix(br#","s":"#) {
                if let Some((s, _)) = number(rest) {
                    return Some(Stamp { t, s });
                }
            }
        }
    }
    // Anything else (another producer, keys reordered): search for each key.
    Some(Stamp {
        t: field(payload, br#""t":"#)?,
        s: field(payload, br#""s":"#)?,
    })
}

/// Finds `t` and `s` in the `payload` object of a row: `{…, "payload": {"s": 1, "t": 2}, …}`,
/// in jsonb's spaced text form or compact, keys in any order. `None` when the row has no
/// `payload` object or it lacks either number.
pub fn scan_row(row: &[u8]) -> Option<Stamp> {
    let key = br#""payload""#;
    let at = memmem::find(row, key)? + key.len();
    let inner = after_colon(&row[at..])?.strip_prefix(b"{")?;
    // The inner object is ours and flat (two numbers), so its first `}` ends it; bounding the
    // search keeps the row's other fields out of it.
    let inner = &inner[..memchr::memchr(b'}', inner)?];
    Some(Stamp {
        t: spaced_field(inner, br#""t""#)?,
        s: spaced_field(inner, br#""s""#)?,
    })
}

/// The unsigned integer of `key` (a quoted key) in `hay`, allowing spaces around the colon.
fn spaced_field(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(hay, key)? + key.len();
    number(after_colon(&hay[at..])?).map(|(n, _)| n)
}

/// What follows `\s*:\s*` at the start of `b`.
fn after_colon(b: &[u8]) -> Option<&[u8]> {
    let b = skip_space(b).strip_prefix(b":")?;
    Some(skip_space(b))
}

fn skip_space(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// The unsigned integer right after `key`, found by substring search.
fn field(hay: &[u8], key: &[u8]) -> Option<u64> {
    let start = memmem::find(hay, key)? + key.len();
    number(&hay[start..]).map(|(n, _)| n)
}

/// The unsigned integer at the start of `b` and how many bytes it took; `None` when `b` does not
/// start with a digit or the number overflows `u64`.
fn number(b: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut used = 0;
    for &c in b.iter().take(21) {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        used += 1;
    }
    (used > 0).then_some((n, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_payloads_have_the_requested_size_and_are_json() {
        let mut buf = Vec::new();
        let stamp = Stamp {
            t: 1_763_000_000_123_456_789,
            s: 42,
        };
        build(&mut buf, stamp, 100);
        assert_eq!(buf.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["t"], 1_763_000_000_123_456_789u64);
        assert_eq!(v["s"], 42);
        build(&mut buf, stamp, 10);
        assert!(buf.len() > 10, "too small a size keeps the stamp whole");
        serde_json::from_slice::<serde_json::Value>(&buf).unwrap();
    }

    #[test]
    fn scanner_reads_back_what_was_built() {
        let mut buf = Vec::new();
        for (t, s) in [(0, 0), (1, 2), (u64::MAX, 9_999_999)] {
            build(&mut buf, Stamp { t, s }, 64);
            assert_eq!(scan(&buf), Some(Stamp { t, s }));
        }
    }

    #[test]
    fn scanner_handles_other_orders_and_refuses_garbage() {
        assert_eq!(
            scan(br#"{"p":"x","s":7,"t":99}"#),
            Some(Stamp { t: 99, s: 7 })
        );
        assert_eq!(scan(br#"{"t":"1","s":2}"#), None);
        assert_eq!(scan(br#"{"t":1}"#), None);
        assert_eq!(scan(br#"{"t":99999999999999999999999,"s":1}"#), None);
        assert_eq!(scan(b""), None);
    }

    #[test]
    fn chat_texts_carry_one_record_per_token_even_when_merged() {
        let mut buf = Vec::new();
        build_text(
            &mut buf,
            Stamp {
                t: 1_763_000_000_123,
                s: 7,
            },
            80,
        );
        assert_eq!(buf.len(), 80);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "exactly {{\"text\": …}} so the hub merges it");
        let text = obj["text"].as_str().unwrap();
        assert!(text.starts_with("~7.1763000000123|x"), "{text}");
        let mut got = Vec::new();
        assert_eq!(scan_text(&buf, |st| got.push(st)), 1);
        assert_eq!(
            got,
            [Stamp {
                t: 1_763_000_000_123,
                s: 7
            }]
        );

        // What the hub sends for three merged deltas.
        let merged = br#"{"text":"~1.10|xxx~2.20|~3.30|xxxxx"}"#;
        got.clear();
        assert_eq!(scan_text(merged, |st| got.push(st)), 3);
        assert_eq!(
            got.iter().map(|st| (st.s, st.t)).collect::<Vec<_>>(),
            [(1, 10), (2, 20), (3, 30)]
        );
        // A small size keeps the record whole.
        build_text(&mut buf, Stamp { t: 5, s: 6 }, 1);
        assert_eq!(buf, br#"{"text":"~6.5|"}"#);
    }

    #[test]
    fn chat_text_scanner_skips_broken_records() {
        let mut n = 0;
        for bad in [
            &b"~"[..],
            b"~1",
            b"~1.",
            b"~1.2",
            b"~.2|",
            b"~1.2x",
            b"~a.b|",
            b"",
        ] {
            n += scan_text(bad, |_| {});
        }
        assert_eq!(n, 0);
        let mut got = Vec::new();
        assert_eq!(scan_text(b"~~1.2|~3~4.5|", |st| got.push(st.s)), 2);
        assert_eq!(got, [1, 4]);
    }

    #[test]
    fn rows_are_read_in_jsonb_and_compact_form() {
        // What `payload::text` of the build_events trigger's object looks like.
        let jsonb = br#"{"id": "0b7e5a3c-1d2f-4e5a-9b8c-7d6e5f4a3b2c", "ts": "2026-11-22T03:00:00.123456+00:00", "type": "loadtest", "message": "x", "payload": {"s": 41, "t": 1763780000123456789}, "session_id": "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"}"#;
        assert_eq!(
            scan_row(jsonb),
            Some(Stamp {
                t: 1_763_780_000_123_456_789,
                s: 41
            })
        );
        let compact = br#"{"id":"a","message":"x","payload":{"t":7,"s":8},"session_id":"b","ts":"c","type":"loadtest"}"#;
        assert_eq!(scan_row(compact), Some(Stamp { t: 7, s: 8 }));
        let spaced = b"{\"payload\" :\n {\"t\" : 1 ,\"s\":\t2}}";
        assert_eq!(scan_row(spaced), Some(Stamp { t: 1, s: 2 }));
    }

    #[test]
    fn rows_without_our_stamp_are_refused() {
        for bad in [
            &br#"{"id": "a", "status": "queued"}"#[..],
            br#"{"payload": {}}"#,
            br#"{"payload": {"t": 1}, "s": 2}"#,
            br#"{"payload": "x", "t": 1, "s": 2}"#,
            br#"{"payload": {"t": "1", "s": 2}}"#,
            br#"{"payload": {"t": -1, "s": 2}}"#,
            b"",
        ] {
            assert_eq!(scan_row(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
