//! A terminal's scrollback: the newest `capacity` bytes of its output, addressed by byte offset.
//!
//! The host's output is one byte stream; byte `n` of it has offset `n` for the terminal's whole
//! life (a host that reconnects continues the same stream). A viewer's cursor is the offset just
//! past the last byte it was sent, so a viewer that reconnects with its cursor gets exactly the
//! bytes after it when they are still held, and otherwise the whole window (its screen is
//! redrawn from what is left), never a byte twice.
//!
//! Output is kept as the chunks it arrived in (`Bytes`, shared with the frames already sent to
//! viewers, so holding scrollback copies nothing); the oldest chunk is trimmed from its front
//! when the window is full.

use std::collections::VecDeque;

use bytes::Bytes;

/// Default window: 256 KiB (issue 6).
pub const DEFAULT_CAPACITY: usize = 256 * 1024;

/// The held window of a terminal's output.
#[derive(Debug, Clone)]
pub struct Scrollback {
    capacity: usize,
    chunks: VecDeque<Bytes>,
    /// Offset of the first held byte.
    start: u64,
    /// Offset just past the last byte (= total bytes ever written).
    end: u64,
}

/// What a viewer reconnecting with a cursor is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The bytes to send, in order (possibly none).
    pub chunks: Vec<Bytes>,
    /// Whether they continue exactly from the viewer's cursor; `false` when its cursor was no
    /// longer held (or is from the future: another terminal's, or a forged one) and the whole
    /// window is sent instead.
    pub continuous: bool,
    /// Offset just past the last byte sent: the viewer's new cursor.
    pub cursor: u64,
}

impl Scrollback {
    /// An empty window holding at most `capacity` bytes (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
        }
    }

    /// Appends output; returns the offset of its first byte.
    pub fn push(&mut self, bytes: Bytes) -> u64 {
        let at = self.end;
        if bytes.is_empty() {
            return at;
        }
        self.end += bytes.len() as u64;
        self.chunks.push_back(bytes);
        self.trim();
        at
    }

    /// Appends output that starts at `at` (output relayed from another node, which numbered it).
    /// Bytes already held are skipped; a jump forward (output this window never saw) restarts
    /// the window at `at`. Returns the part that was new, to send to local viewers.
    pub fn push_at(&mut self, at: u64, bytes: Bytes) -> Option<Bytes> {
        let stop = at + bytes.len() as u64;
        if stop <= self.end {
            return None; // already held
        }
        if at > self.end {
            self.chunks.clear();
            self.start = at;
            self.end = at;
        }
        let fresh = bytes.slice((self.end - at) as usize..);
        self.push(fresh.clone());
        Some(fresh)
    }

    fn held(&self) -> usize {
        (self.end - self.start) as usize
    }

    fn trim(&mut self) {
        while self.held() > self.capacity {
            let excess = self.held() - self.capacity;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= excess {
                self.start += front.len() as u64;
                self.chunks.pop_front();
            } else {
                *front = front.slice(excess..);
                self.start += excess as u64;
            }
        }
    }

    /// Offset of the first held byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset just past the last byte written (the cursor of a viewer that is up to date).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// What a viewer with `cursor` (or none: a first connection) is sent before the live tail.
    pub fn since(&self, cursor: Option<u64>) -> CatchUp {
        match cursor {
            Some(c) if c >= self.start && c <= self.end => CatchUp {
                chunks: self.from(c),
                continuous: true,
                cursor: self.end,
            },
            _ => CatchUp {
                chunks: self.chunks.iter().cloned().collect(),
                continuous: cursor.is_none(),
                cursor: self.end,
            },
        }
    }

    /// The held bytes from offset `c` (within the window) on.
    fn from(&self, c: u64) -> Vec<Bytes> {
        let mut skip = (c - self.start) as usize;
        let mut out = Vec::new();
        for chunk in &self.chunks {
            if skip >= chunk.len() {
                skip -= chunk.len();
                continue;
            }
            out.push(chunk.slice(skip..));
            skip = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(c: &CatchUp) -> Vec<u8> {
        c.chunks.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn offsets_count_every_byte_ever_written() {
        let mut s = Scrollback::new(8);
        assert_eq!(s.push(Bytes::from_static(b"hello")), 0);
        assert_eq!(s.push(Bytes::from_static(b" world")), 5);
        assert_eq!((s.start(), s.end()), (3, 11));
        assert_eq!(joined(&s.since(None)), b"lo world");
    }

    #[test]
    fn a_held_cursor_gets_exactly_the_rest() {
        let mut s = Scrollback::new(100);
        s.push(Bytes::from_static(b"abc"));
        s.push(Bytes::from_static(b"defg"));
        let c = s.since(Some(5));
        assert_eq!(
            (joined(&c), c.continuous, c.cursor),
            (b"fg".to_vec(), true, 7)
        );
        let up_to_date = s.since(Some(7));
        assert!(up_to_date.chunks.is_empty() && up_to_date.continuous);
        let from_zero = s.since(Some(0));
        assert_eq!(joined(&from_zero), b"abcdefg");
    }

    #[test]
    fn a_cursor_outside_the_window_gets_the_window_flagged_discontinuous() {
        let mut s = Scrollback::new(4);
        s.push(Bytes::from_static(b"0123456789"));
        let old = s.since(Some(2));
        assert_eq!((joined(&old), old.continuous), (b"6789".to_vec(), false));
        let future = s.since(Some(99));
        assert_eq!(
            (joined(&future), future.continuous),
            (b"6789".to_vec(), false)
        );
    }

    #[test]
    fn relayed_output_is_deduplicated_by_offset() {
        let mut s = Scrollback::new(100);
        assert_eq!(
            s.push_at(0, Bytes::from_static(b"abc")).as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(s.push_at(0, Bytes::from_static(b"abc")), None);
        assert_eq!(
            s.push_at(1, Bytes::from_static(b"bcde")).as_deref(),
            Some(&b"de"[..])
        );
        // A jump restarts the window where the relayed output starts.
        assert_eq!(
            s.push_at(10, Bytes::from_static(b"xy")).as_deref(),
            Some(&b"xy"[..])
        );
        assert_eq!((s.start(), s.end()), (10, 12));
    }

    #[test]
    fn the_window_never_exceeds_its_capacity() {
        let mut s = Scrollback::new(1000);
        for k in 0..10_000u32 {
            s.push(Bytes::from(vec![k as u8; (k % 97) as usize]));
            assert!(s.held() <= 1000);
            assert_eq!(joined(&s.since(None)).len(), s.held());
        }
    }
}
