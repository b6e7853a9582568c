//! The in-memory history ring of one topic: the last N envelopes, for resume and replay.
//!
//! Offsets are assigned here, one per message, so an envelope's cursor and its place in the ring
//! always agree. Pure data; the memory broker keeps one ring per topic under that topic's lock.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::cursor::{Cursor, Since};
use crate::envelope::Envelope;

/// The last `capacity` messages of a topic.
#[derive(Debug)]
pub struct HistoryRing {
    epoch: Arc<str>,
    capacity: usize,
    /// Offset the next message gets (offsets start at 1).
    next_offset: u64,
    buf: VecDeque<Arc<Envelope>>,
}

/// One page of a catch-up: the oldest messages after a cursor.
#[derive(Debug, Clone)]
pub struct Page {
    /// Up to the requested number of messages after the cursor, oldest first.
    pub messages: Vec<Arc<Envelope>>,
    /// Whether `messages` starts right after the cursor (nothing between was lost). `false`
    /// when the cursor is from another epoch or older than what is retained.
    pub contiguous: bool,
    /// The newest message's cursor (`<epoch>:0` when there is none).
    pub head: Cursor,
}

/// What a resume gets from history.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Messages after the cursor, oldest first, each exactly once.
    pub messages: Vec<Arc<Envelope>>,
    /// Whether `messages` is everything after the cursor. `false` when the cursor is from another
    /// epoch, older than what the ring still holds, or more messages were missed than the limit.
    pub recovered: bool,
    /// The cursor of the newest message in the topic (`<epoch>:0` when there is none yet).
    pub head: Cursor,
}

impl HistoryRing {
    /// An empty ring. `capacity` 0 keeps nothing but still numbers messages.
    pub fn new(epoch: Arc<str>, capacity: usize) -> Self {
        Self {
            epoch,
            capacity,
            next_offset: 1,
            buf: VecDeque::new(),
        }
    }

    /// The cursor the next message will get.
    pub fn next_cursor(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.next_offset)
    }

    /// Cursor of the newest message (`offset` 0 when empty).
    pub fn head(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.next_offset - 1)
    }

    /// Stores `env`, which must carry [`Self::next_cursor`], evicting the oldest when full.
    pub fn append(&mut self, env: Arc<Envelope>) {
        debug_assert_eq!(env.cursor.as_ref(), Some(&self.next_cursor()));
        self.next_offset += 1;
        if self.capacity == 0 {
            return;
        }
        if self.buf.len() == self.capacity {
            self.buf.pop_front();
        }
        self.buf.push_back(env);
    }

    fn first_offset(&self) -> u64 {
        self.next_offset - self.buf.len() as u64
    }

    /// Keeps only the newest message (a chat stream's completed `done`, which carries the whole
    /// text): older offsets stop being resumable and readers get a snapshot instead.
    pub fn compact(&mut self) {
        while self.buf.len() > 1 {
            self.buf.pop_front();
        }
    }

    /// The oldest `limit` messages after `after` (paging through history during a catch-up).
    pub fn read(&self, after: &Since, limit: usize) -> Page {
        let after = match after {
            Since::Beginning => 0,
            Since::After(c) if *c.epoch != *self.epoch || c.offset >= self.next_offset => {
                return Page {
                    messages: Vec::new(),
                    contiguous: matches!(after, Since::After(c) if *c.epoch == *self.epoch && c.offset + 1 == self.next_offset),
                    head: self.head(),
                };
            }
            Since::After(c) => c.offset,
        };
        let first = self.first_offset();
        let skip = (after + 1).saturating_sub(first) as usize;
        Page {
            messages: self.buf.iter().skip(skip).take(limit).cloned().collect(),
            contiguous: after + 1 >= first,
            head: self.head(),
        }
    }

    /// Supabase `broadcast.replay`: messages published at or after `since_ms`, the newest `limit`.
    pub fn since_time(&self, since_ms: u64, limit: usize) -> Vec<Arc<Envelope>> {
        let mut out: Vec<_> = self
            .buf
            .iter()
            .filter(|e| e.time_ms >= since_ms)
            .cloned()
            .collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Payload;
    use crate::topic::TopicKey;
    use bytes::Bytes;

    fn ring_with(n: u64, cap: usize) -> HistoryRing {
        let mut r = HistoryRing::new("ep".into(), cap);
        for i in 1..=n {
            let env = Envelope {
                topic: TopicKey::new("t", false).unwrap(),
                event: "e".into(),
                payload: Payload::Json(Bytes::from(i.to_string())),
                cursor: Some(r.next_cursor()),
                time_ms: i * 10,
            };
            r.append(Arc::new(env));
        }
        r
    }

    fn offsets(page: &Page) -> Vec<u64> {
        page.messages
            .iter()
            .map(|e| e.cursor.as_ref().unwrap().offset)
            .collect()
    }

    fn after(offset: u64) -> Since {
        Since::After(Cursor::new("ep".into(), offset))
    }

    #[test]
    fn resumes_after_a_cursor_inside_the_ring() {
        let r = ring_with(10, 100);
        let page = r.read(&after(7), 100);
        assert_eq!(offsets(&page), vec![8, 9, 10]);
        assert!(page.contiguous);
        assert_eq!(page.head.offset, 10);
        let page = r.read(&after(10), 100);
        assert!(page.messages.is_empty() && page.contiguous);
    }

    #[test]
    fn from_the_beginning_is_contiguous_only_if_nothing_was_evicted() {
        assert!(ring_with(3, 5).read(&Since::Beginning, 100).contiguous);
        let r = ring_with(8, 5);
        let page = r.read(&Since::Beginning, 100);
        assert_eq!(offsets(&page), vec![4, 5, 6, 7, 8]);
        assert!(!page.contiguous);
    }

    #[test]
    fn another_epoch_or_a_future_cursor_is_not_contiguous() {
        let r = ring_with(3, 5);
        let other = Since::After(Cursor::new("other".into(), 1));
        let page = r.read(&other, 100);
        assert!(!page.contiguous && page.messages.is_empty());
        assert!(!r.read(&after(9), 100).contiguous);
    }

    #[test]
    fn zero_capacity_still_numbers_messages() {
        let r = ring_with(4, 0);
        assert_eq!(r.head().offset, 4);
        assert!(r.is_empty());
        assert!(!r.read(&after(2), 10).contiguous);
        assert!(r.read(&after(4), 10).contiguous);
    }

    #[test]
    fn pages_oldest_first_and_detect_loss() {
        let r = ring_with(10, 6); // retains 5..=10
        let page = r.read(&after(6), 2);
        assert_eq!(
            page.messages
                .iter()
                .map(|e| e.cursor.as_ref().unwrap().offset)
                .collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert!(page.contiguous);
        assert_eq!(page.head.offset, 10);
        assert!(!r.read(&after(2), 2).contiguous, "3 and 4 were evicted");
        assert!(r.read(&after(10), 2).contiguous && r.read(&after(10), 2).messages.is_empty());
        assert!(
            !r.read(&Since::After(Cursor::new("x".into(), 1)), 2)
                .contiguous
        );
        assert!(
            !r.read(&Since::Beginning, 2).contiguous,
            "1..=4 were evicted"
        );
    }

    #[test]
    fn replay_by_time_returns_the_newest_within_limit() {
        let r = ring_with(10, 100);
        let got: Vec<u64> = r
            .since_time(50, 3)
            .iter()
            .map(|e| e.cursor.as_ref().unwrap().offset)
            .collect();
        assert_eq!(got, vec![8, 9, 10]);
        assert_eq!(r.since_time(95, 25).len(), 1);
    }
}
