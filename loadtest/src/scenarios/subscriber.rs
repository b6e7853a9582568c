//! A subscriber's bookkeeping: publish→receive latency, duplicates and order, per connection.
//!
//! One per connection task, so counting needs no lock; latencies go in batches to a
//! [`ShardedHist`] shared by all subscribers. Each kind-4 frame is decoded with
//! [`channels::codec::binary`] (header slicing only) and its stamp found with
//! [`crate::payload::scan`] (fanout's payloads) or [`crate::payload::scan_row`] (pg-feed's
//! database rows); nothing is allocated per message.

use std::sync::Arc;

use channels::codec::binary::decode_user_broadcast;

use crate::clock;
use crate::live::Live;
use crate::metrics::ShardedHist;
use crate::payload;
use crate::session::Receiver;

/// Deliveries a subscriber counts locally before adding them to the shared live counter: one
/// contended atomic add per 64 messages instead of per message.
const FLUSH_EVERY: u64 = 64;

/// Latencies a subscriber buffers before recording them into the shared histogram.
const PENDING: usize = 64;

/// Where a broadcast's stamp is.
#[derive(Debug, Clone)]
pub enum Format {
    /// fanout's payload `{"t":…,"s":…,"p":"…"}`, under any event.
    Flat,
    /// A database row published by a trigger (pg-feed): broadcasts of `event` carry the row
    /// with the stamp in its `payload` object; other events on the topic (a session's `status`)
    /// are not ours and are only counted.
    Row {
        /// The event our rows are published under (the row's `type`).
        event: Arc<str>,
    },
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct Subscriber {
    /// Wire topic this subscriber joined; frames for another topic are counted as unexpected.
    topic: Arc<str>,
    /// Where the stamps are.
    format: Format,
    /// Deliveries counted locally before they are added to the shared live counter.
    flush_every: u64,
    /// Messages its topic is planned to get; sequence numbers at or past this are unexpected.
    planned: u64,
    /// Where publish→receive latencies (µs) end up.
    latency: Arc<ShardedHist>,
    /// Latencies not yet recorded, µs.
    pending: [u32; PENDING],
    /// How many of `pending` are in use.
    npending: usize,
    /// Broadcast frames received, duplicates included.
    pub received: u64,
    /// Frames whose sequence number had already been seen.
    pub duplicates: u64,
    /// Frames older than the newest seen so far (first sighting only).
    pub out_of_order: u64,
    /// Frames that were not ours: undecodable, no stamp, wrong topic, or a sequence number
    /// outside the plan.
    pub unexpected: u64,
    /// [`Format::Row`]: broadcasts of other events on the topic (not counted as received).
    pub other_events: u64,
    /// When the last broadcast arrived (its read returned), ns on [`clock`]; 0 before the first.
    pub last_rx_ns: u64,
    /// When the current read returned.
    batch_ns: u64,
    /// Socket reads that returned data; received / reads tells how much the client batched.
    pub reads: u64,
    /// Received since the last flush to the live counters.
    unflushed: u64,
    /// Highest sequence number seen.
    newest: Option<u64>,
    /// One bit per planned sequence number.
    seen: Vec<u64>,
}

impl Subscriber {
    /// A subscriber to `topic`, which is planned to carry `planned` fanout messages.
    pub fn new(topic: Arc<str>, planned: u64, latency: Arc<ShardedHist>) -> Self {
        Self::with_format(topic, planned, latency, Format::Flat, FLUSH_EVERY)
    }

    /// A subscriber to `topic`, on which `planned` rows of `event` are to be published by the
    /// database. Few messages reach each viewer, so every read is flushed to the live counter
    /// at once.
    pub fn rows(topic: Arc<str>, planned: u64, latency: Arc<ShardedHist>, event: Arc<str>) -> Self {
        Self::with_format(topic, planned, latency, Format::Row { event }, 1)
    }

    fn with_format(
        topic: Arc<str>,
        planned: u64,
        latency: Arc<ShardedHist>,
        format: Format,
        flush_every: u64,
    ) -> Self {
        Self {
            topic,
            format,
            flush_every,
            planned,
            latency,
            pending: [0; PENDING],
            npending: 0,
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
            other_events: 0,
            last_rx_ns: 0,
            batch_ns: 0,
            reads: 0,
            unflushed: 0,
            newest: None,
            seen: vec![0; planned.div_ceil(64) as usize],
        }
    }

    /// Moves the buffered latencies into the shared histogram.
    fn record_pending(&mut self) {
        self.latency.record_batch(&self.pending[..self.npending]);
        self.npending = 0;
    }

    /// The wire topic this subscriber joined.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Messages its topic was planned to carry.
    pub fn planned(&self) -> u64 {
        self.planned
    }

    /// Whether the message with sequence number `s` arrived.
    pub fn has_seen(&self, s: u64) -> bool {
        self.seen
            .get((s / 64) as usize)
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    /// Distinct planned messages received.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates - self.unexpected
    }

    /// Counts one message received in the current read (see [`Receiver::batch_start`]) with the
    /// stamp found in it, or `None` when it had none (counted as unexpected). Transports other
    /// than WebSocket binary frames (server-sent events) find the stamps themselves and hand
    /// them in here.
    pub fn stamped(&mut self, stamp: Option<payload::Stamp>) {
        let now = self.batch_ns;
        self.last_rx_ns = now;
        self.received += 1;
        self.unflushed += 1;
        match stamp {
            Some(st) => self.book(st.t, st.s, now),
            None => self.unexpected += 1,
        }
    }

    /// Books one broadcast payload stamped `(t, s)` that arrived at `now_ns`.
    fn book(&mut self, t: u64, s: u64, now_ns: u64) {
        let us = (now_ns.saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32;
        self.pending[self.npending] = us;
        self.npending += 1;
        if self.npending == PENDING {
            self.record_pending();
        }
        if s >= self.planned {
            self.unexpected += 1;
            return;
        }
        let (word, bit) = ((s / 64) as usize, 1u64 << (s % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        match self.newest {
            Some(n) if s < n => self.out_of_order += 1,
            _ => self.newest = Some(s),
        }
    }
}

impl Receiver for Subscriber {
    fn batch_start(&mut self) {
        // Every frame of this read had arrived by now; one clock read serves them all.
        self.batch_ns = clock::now_ns();
        self.reads += 1;
    }

    fn binary(&mut self, data: &[u8]) {
        let frame = decode_user_broadcast(data)
            .ok()
            .filter(|b| b.topic == &*self.topic);
        let stamp = match (&self.format, frame) {
            (_, None) => None,
            (Format::Flat, Some(b)) => payload::scan(b.payload),
            (Format::Row { event }, Some(b)) if b.event == &**event => payload::scan_row(b.payload),
            (Format::Row { .. }, Some(_)) => {
                self.other_events += 1;
                return;
            }
        };
        self.stamped(stamp);
    }

    fn batch_done(&mut self, live: &Live) {
        if self.npending > 0 {
            self.record_pending();
        }
        // Flush in batches, but at once for the first message (subscriber-only processes wait
        // for it) and the last planned one (the coordinator waits for the total).
        let first = self.unflushed == self.received;
        let complete = self.unique() >= self.planned;
        if self.unflushed >= self.flush_every || (self.unflushed > 0 && (first || complete)) {
            Live::add(&live.delivered, self.unflushed);
            self.unflushed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use channels::Payload;
    use channels::codec::binary::encode_user_broadcast;

    fn frame(topic: &str, t: u64, s: u64) -> Vec<u8> {
        let mut p = Vec::new();
        payload::build(&mut p, payload::Stamp { t, s }, 100);
        encode_user_broadcast(
            topic,
            "lt",
            &Payload::Json(Bytes::from(p)),
            r#"{"cursor":"1:2"}"#,
        )
        .unwrap()
    }

    #[test]
    fn counts_duplicates_order_and_strangers() {
        let hist = Arc::new(ShardedHist::new(2).unwrap());
        let mut sub = Subscriber::new("realtime:t-0".into(), 10, hist.clone());
        sub.batch_start();
        let now = clock::now_ns();
        for s in [0, 1, 3, 2, 3, 9] {
            sub.binary(&frame("realtime:t-0", now, s));
        }
        sub.binary(&frame("realtime:t-0", now, 10)); // past the plan
        sub.binary(&frame("realtime:other", now, 4)); // wrong topic
        sub.binary(b"\x04garbage");
        assert_eq!(sub.received, 9);
        assert_eq!(sub.duplicates, 1);
        assert_eq!(sub.out_of_order, 1);
        assert_eq!(sub.unexpected, 3);
        assert_eq!(sub.unique(), 5);
        assert!(sub.has_seen(9) && !sub.has_seen(4) && !sub.has_seen(10) && !sub.has_seen(999));
        let live = Live::default();
        sub.batch_done(&live);
        assert_eq!(Live::get(&live.delivered), 9);
        assert_eq!(hist.merged().unwrap().len(), 7);
    }

    fn row_frame(topic: &str, event: &str, t: u64, s: u64) -> Vec<u8> {
        let row = format!(
            r#"{{"id": "e1", "ts": "2026-11-22T03:00:00+00:00", "type": "{event}", "message": "x", "payload": {{"s": {s}, "t": {t}}}, "session_id": "s1"}}"#
        );
        encode_user_broadcast(
            topic,
            event,
            &Payload::Json(Bytes::from(row)),
            r#"{"cursor":"pg1:7"}"#,
        )
        .unwrap()
    }

    #[test]
    fn rows_are_read_and_other_events_set_apart() {
        let hist = Arc::new(ShardedHist::new(1).unwrap());
        let topic = "realtime:build:s1";
        let mut sub = Subscriber::rows(topic.into(), 3, hist.clone(), "loadtest".into());
        sub.batch_start();
        let now = clock::now_ns();
        sub.binary(&row_frame(topic, "status", now, 0));
        sub.binary(&row_frame(topic, "loadtest", now, 0));
        sub.binary(&row_frame(topic, "loadtest", now, 2));
        sub.binary(&row_frame(topic, "loadtest", now, 1));
        sub.binary(&row_frame(topic, "loadtest", now, 1));
        let no_row = Payload::Json(Bytes::from_static(br#"{"t":1,"s":0}"#));
        sub.binary(&encode_user_broadcast(topic, "loadtest", &no_row, "").unwrap());
        let live = Live::default();
        sub.batch_done(&live);
        assert_eq!(sub.other_events, 1);
        assert_eq!(sub.received, 5);
        assert_eq!(sub.duplicates, 1);
        assert_eq!(sub.out_of_order, 1);
        assert_eq!(sub.unexpected, 1);
        assert_eq!(sub.unique(), 3);
        assert_eq!(Live::get(&live.delivered), 5, "flushed at once");
        assert_eq!(hist.merged().unwrap().len(), 4);
    }

    #[test]
    fn latency_is_receive_minus_stamp() {
        let hist = Arc::new(ShardedHist::new(1).unwrap());
        let mut sub = Subscriber::new("realtime:t-0".into(), 1, hist.clone());
        sub.book(1_000_000, 0, 6_000_000);
        sub.batch_done(&Live::default());
        let merged = hist.merged().unwrap();
        assert_eq!(merged.len(), 1);
        let v = merged.value_at_quantile(1.0);
        assert!((4_950..=5_050).contains(&v), "{v}");
    }
}
