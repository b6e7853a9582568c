//! The per-connection outbox: the one bounded queue between fan-out and a connection's writer.
//!
//! Fan-out never awaits: it pushes encoded frames (shared `Bytes`) and moves on. The writer task
//! drains everything queued and writes it with one system call, so a busy connection gets its
//! messages coalesced. **Overflow rule:** when a push would exceed either bound (frames or bytes)
//! the outbox closes itself with [`CloseReason::Slow`]; the frame is dropped, later pushes are
//! ignored, and the writer tells the client and closes the connection. A slow reader therefore
//! costs at most the bounds, and never slows the publisher or the other members.
//!
//! A `VecDeque` behind a `std::sync::Mutex` (never held across `.await`) instead of a channel:
//! an idle outbox allocates nothing, where a tokio mpsc allocates a block of slots up front — and
//! memory per idle connection is a product figure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::codec::Format;
use crate::cursor::Cursor;
use crate::topic::TopicKey;

/// One frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A text frame (JSON, or an SSE event).
    Text(Bytes),
    /// A binary frame (V2 kind 4).
    Binary(Bytes),
    /// A chat token delta: kept structured while it waits, so that consecutive deltas of one
    /// topic merge into one event for a reader that falls behind (its text stays exactly right
    /// and its queue stops growing in frames). Turned into bytes with [`OutFrame::into_wire`].
    Delta(Box<Delta>),
}

/// A chat token delta waiting in an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The member's wire format.
    pub format: Format,
    /// The chat topic.
    pub topic: TopicKey,
    /// The text (`{"text": …}` of the `token` event).
    pub text: String,
    /// Cursor of the newest delta merged in.
    pub cursor: Option<Cursor>,
    /// The event as encoded for every member of this format, while nothing was merged into it.
    pub encoded: Option<Bytes>,
    /// Whether `encoded` is a binary frame.
    pub binary: bool,
}

impl OutFrame {
    /// Payload length in bytes (for a delta: its text, plus room for its framing).
    pub fn len(&self) -> usize {
        match self {
            Self::Text(b) | Self::Binary(b) => b.len(),
            Self::Delta(d) => d.text.len() + 64,
        }
    }

    /// The bytes to write and whether they form a binary frame.
    pub fn into_wire(self) -> (Bytes, bool) {
        match self {
            Self::Text(b) => (b, false),
            Self::Binary(b) => (b, true),
            Self::Delta(d) => {
                if let Some(b) = d.encoded {
                    return (b, d.binary);
                }
                match crate::codec::encode_delta(d.format, &d.topic, &d.text, d.cursor.as_ref()) {
                    Some(Self::Binary(b)) => (b, true),
                    Some(Self::Text(b)) => (b, false),
                    _ => (Bytes::new(), false),
                }
            }
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an outbox stopped accepting frames; the writer turns it into a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The reader did not keep up and a bound was hit.
    Slow,
    /// The hub is shutting down: the client is told and reconnects elsewhere or later.
    Shutdown,
    /// Closed by the server for another reason (shutdown, protocol error), with a close code and
    /// a reason text for the close frame.
    Server {
        /// WebSocket close code.
        code: u16,
        /// Close reason (truncated to fit a control frame when sent).
        reason: String,
    },
}

impl CloseReason {
    /// The `system` notice (status, message) a client is sent before the connection ends for
    /// this reason; `None` when the close frame's own reason says it all.
    pub fn notice(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Slow => Some((
                "error",
                "Connection closed: messages were not read fast enough (outbox overflow); \
                 reconnect and resume from your last cursor",
            )),
            Self::Shutdown => Some(("ok", "Server requested disconnect")),
            Self::Server { .. } => None,
        }
    }
}

/// Bounds of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most frames queued at once. Default 1024.
    pub max_frames: usize,
    /// Most payload bytes queued at once (shared bytes count once per outbox). Default 4 MiB.
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_frames: 1024,
            max_bytes: 4 << 20,
        }
    }
}

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// This push hit a bound: the outbox is now closed as [`CloseReason::Slow`].
    Overflowed,
    /// The outbox was already closed; the frame was dropped.
    Closed,
}

/// Handle to one connection's outbox. Clones share the queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    limits: OutboxLimits,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<OutFrame>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// Set by a push or close since the writer last looked; like a stored permit, so a wake-up
    /// that happens while the writer is busy is not lost.
    notified: bool,
    /// The writer task, registered when it found nothing to do. A waker slot instead of a
    /// `Notify` so the writer needs no future per connection (see `hub::transport::ws_conn`).
    waker: Option<Waker>,
    /// Whether the registered writer wants to hear about pushes (it is idle) or only about the
    /// outbox closing (it is still writing earlier frames and will drain afterwards).
    wake_on_push: bool,
    /// A producer waiting for room (a catch-up paging through history), woken by the next drain
    /// or close.
    room_waker: Option<Waker>,
}

impl State {
    /// Records a push; returns the writer to wake if it is waiting for one.
    fn notify_push(&mut self) -> Option<Waker> {
        self.notified = true;
        if self.wake_on_push {
            self.waker.take()
        } else {
            None
        }
    }

    /// Records a close; the writer is woken whatever it waits for.
    fn notify_close(&mut self) -> Option<Waker> {
        self.notified = true;
        if let Some(w) = self.room_waker.take() {
            w.wake();
        }
        self.waker.take()
    }
}

/// Chat token deltas merged into the one queued before them, over every outbox of the process
/// (exported as a metric: how often slow readers were caught up by merging).
pub static MERGED_DELTAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Outbox {
    /// An empty outbox with these bounds.
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a plain push/pop), so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame without waiting; see the module doc for the overflow rule.
    pub fn push(&self, frame: OutFrame) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        let limits = self.inner.limits;
        // A delta right behind another of the same topic joins it instead of queueing: a slow
        // chat reader's queue stops growing in frames, only by the text it has not read yet.
        let st = &mut *st;
        if let OutFrame::Delta(new) = &frame
            && let Some(OutFrame::Delta(last)) = st.frames.back_mut()
            && last.topic == new.topic
        {
            let added = new.text.len();
            if st.bytes + added > limits.max_bytes {
                return self.overflow(st);
            }
            last.text.push_str(&new.text);
            last.cursor.clone_from(&new.cursor);
            last.encoded = None;
            st.bytes += added;
            MERGED_DELTAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Pushed::Queued;
        }
        if st.frames.len() >= limits.max_frames || st.bytes + frame.len() > limits.max_bytes {
            return self.overflow(st);
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        // Only the first push after the writer registered needs to wake it; it drains them all.
        if let Some(w) = st.notify_push() {
            w.wake();
        }
        Pushed::Queued
    }

    /// A bound was hit: close as a slow reader (see the module doc).
    fn overflow(&self, st: &mut State) -> Pushed {
        st.closed = Some(CloseReason::Slow);
        st.frames.clear();
        st.bytes = 0;
        if let Some(w) = st.notify_close() {
            w.wake();
        }
        Pushed::Overflowed
    }

    /// Closes the outbox: the writer sends what is queued, then a close frame with this reason.
    /// The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        let waker = st.notify_close();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the outbox no longer accepts frames.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Ready when something was pushed or the outbox was closed since the last time this
    /// returned ready; otherwise registers the task to be woken. One writer task per outbox.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if std::mem::take(&mut st.notified) {
            return Poll::Ready(());
        }
        st.wake_on_push = true;
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Ready once the outbox is closed (slow reader or server close); otherwise registers the
    /// task to be woken by the close only. For a writer that is still flushing earlier frames:
    /// it must not drain more (that would move the bound from the outbox to its own buffer), but
    /// it must notice an overflow even if the peer never reads again.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Poll::Ready(());
        }
        st.wake_on_push = false;
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until something was pushed or the outbox was closed (see [`Outbox::poll_ready`]).
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await;
    }

    /// Moves every queued frame into `into` and returns the close reason once closed.
    ///
    /// After a slow-reader overflow nothing is returned: the queue was discarded, because the
    /// connection is going away and its client resumes from its cursor.
    pub fn drain(&self, into: &mut Vec<OutFrame>) -> Option<CloseReason> {
        let mut st = self.lock();
        if let Some(w) = st.room_waker.take() {
            w.wake();
        }
        into.extend(st.frames.drain(..));
        st.bytes = 0;
        // Give back a queue that grew during a burst, so a connection that once lagged does not
        // keep that memory while idle.
        if st.frames.capacity() > 64 {
            st.frames = VecDeque::new();
        }
        st.closed.clone()
    }

    /// Waits until `need` more frames fit without reaching the frame bound, or the outbox is
    /// closed. For producers that may wait (a catch-up paging through history), unlike fan-out.
    pub async fn room(&self, need: usize) {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.closed.is_some() || st.frames.len() + need <= self.inner.limits.max_frames {
                return Poll::Ready(());
            }
            st.room_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    /// The frame bound.
    pub fn max_frames(&self) -> usize {
        self.inner.limits.max_frames
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether `n` more bytes in one frame fit below half of both bounds: producers that can
    /// skip ahead instead of queueing (terminal output, which viewers can resync from the
    /// scrollback) check this and never overflow.
    pub fn has_room_for(&self, n: usize) -> bool {
        let st = self.lock();
        st.frames.len() < self.inner.limits.max_frames / 2
            && st.bytes + n <= self.inner.limits.max_bytes / 2
    }

    /// Whether the queue is below an eighth of its byte bound (room to resync a terminal).
    pub fn is_draining(&self) -> bool {
        let st = self.lock();
        st.bytes <= self.inner.limits.max_bytes / 8
            && st.frames.len() < self.inner.limits.max_frames / 8
    }

    /// Number of frames queued (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether two handles share one outbox.
    pub fn same(&self, other: &Outbox) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(s: &'static str) -> OutFrame {
        OutFrame::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn drains_in_order() {
        let o = Outbox::new(OutboxLimits::default());
        assert_eq!(o.push(text("a")), Pushed::Queued);
        assert_eq!(o.push(text("b")), Pushed::Queued);
        let mut got = Vec::new();
        assert_eq!(o.drain(&mut got), None);
        assert_eq!(got, vec![text("a"), text("b")]);
        assert!(o.is_empty());
    }

    #[test]
    fn overflow_by_count_closes_as_slow_and_drops_the_queue() {
        let o = Outbox::new(OutboxLimits {
            max_frames: 2,
            max_bytes: 1 << 20,
        });
        o.push(text("1"));
        o.push(text("2"));
        assert_eq!(o.push(text("3")), Pushed::Overflowed);
        assert_eq!(o.push(text("4")), Pushed::Closed);
        let mut got = Vec::new();
        assert_eq!(o.drain(&mut got), Some(CloseReason::Slow));
        assert!(got.is_empty());
    }

    #[test]
    fn overflow_by_bytes() {
        let o = Outbox::new(OutboxLimits {
            max_frames: 100,
            max_bytes: 5,
        });
        assert_eq!(o.push(text("abc")), Pushed::Queued);
        assert_eq!(o.push(text("def")), Pushed::Overflowed);
        assert!(o.is_closed());
    }

    #[test]
    fn server_close_keeps_queued_frames() {
        let o = Outbox::new(OutboxLimits::default());
        o.push(text("bye"));
        o.close(CloseReason::Server {
            code: 1001,
            reason: "shutdown".into(),
        });
        o.close(CloseReason::Slow);
        let mut got = Vec::new();
        assert!(matches!(
            o.drain(&mut got),
            Some(CloseReason::Server { code: 1001, .. })
        ));
        assert_eq!(got, vec![text("bye")]);
    }

    #[tokio::test]
    async fn a_writer_waiting_for_close_ignores_pushes_but_sees_an_overflow() {
        let o = Outbox::new(OutboxLimits {
            max_frames: 1,
            max_bytes: 1 << 20,
        });
        let closed = std::future::poll_fn(|cx| o.poll_closed(cx));
        tokio::pin!(closed);
        assert!(futures_poll(closed.as_mut()).is_pending());
        o.push(text("a"));
        assert!(
            futures_poll(closed.as_mut()).is_pending(),
            "a push is not a close"
        );
        o.push(text("b"));
        tokio::time::timeout(Duration::from_secs(1), closed)
            .await
            .expect("the overflow must wake a writer waiting for close");
    }

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }

    fn delta(text: &str, offset: u64) -> OutFrame {
        OutFrame::Delta(Box::new(Delta {
            format: Format::V1,
            topic: TopicKey::new("chat:1", false).unwrap(),
            text: text.into(),
            cursor: Some(Cursor::new("e".into(), offset)),
            encoded: Some(Bytes::from_static(b"pre-encoded")),
            binary: false,
        }))
    }

    #[test]
    fn consecutive_deltas_of_a_topic_merge_into_one_frame() {
        let o = Outbox::new(OutboxLimits {
            max_frames: 3,
            max_bytes: 1 << 20,
        });
        for (i, t) in ["Hel", "lo, ", "world"].iter().enumerate() {
            assert_eq!(o.push(delta(t, i as u64 + 1)), Pushed::Queued);
        }
        o.push(text("other"));
        o.push(delta("!", 4));
        let mut got = Vec::new();
        assert_eq!(o.drain(&mut got), None);
        assert_eq!(
            got.len(),
            3,
            "three deltas became one frame; the fourth follows another frame"
        );
        let (bytes, binary) = got.remove(0).into_wire();
        assert!(!binary);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["payload"]["payload"]["text"], "Hello, world");
        assert_eq!(v["payload"]["meta"]["cursor"], "e:3");
        // An unmerged delta is written with the shared pre-encoded bytes.
        assert_eq!(
            got.pop().unwrap().into_wire().0,
            Bytes::from_static(b"pre-encoded")
        );
    }

    #[test]
    fn merging_still_respects_the_byte_bound() {
        let o = Outbox::new(OutboxLimits {
            max_frames: 10,
            max_bytes: 70,
        });
        assert_eq!(o.push(delta("abc", 1)), Pushed::Queued);
        assert_eq!(o.push(delta(&"x".repeat(10), 2)), Pushed::Overflowed);
    }

    #[tokio::test]
    async fn ready_wakes_for_a_push_made_before_waiting() {
        let o = Outbox::new(OutboxLimits::default());
        o.push(text("x"));
        tokio::time::timeout(Duration::from_secs(1), o.ready())
            .await
            .expect("a push before ready() must leave a permit");
    }
}
