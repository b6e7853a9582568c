//! PTY output on its way to the hub.
//!
//! One bounded queue serves both states of the connection, so output read while the hub was
//! unreachable goes out first, in order, as soon as a connection is back:
//!
//! - **Connected**: the PTY reader waits while the queue is full. A slow hub then slows the
//!   program down (its writes to the terminal block), as a slow link does for SSH, instead of
//!   losing output that the hub would have taken a moment later.
//! - **Disconnected**: nothing drains the queue and the program must not stall for as long as
//!   the hub is away, so the queue keeps the newest [`OUTPUT_BUFFER_BYTES`] and drops the oldest
//!   bytes beyond (the most recent screen is what a viewer needs after a reconnect).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Buf as _, Bytes};
use tokio::sync::Notify;

/// Most output kept while disconnected (and queued while connected).
pub const OUTPUT_BUFFER_BYTES: usize = 256 * 1024;

/// Output chunks in arrival order, at most `cap` bytes in all.
#[derive(Debug)]
pub struct OutputBuffer {
    chunks: VecDeque<Bytes>,
    len: usize,
    cap: usize,
    dropped: u64,
}

impl OutputBuffer {
    /// An empty buffer holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
            cap,
            dropped: 0,
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `extra` more bytes fit without dropping any.
    pub fn fits(&self, extra: usize) -> bool {
        self.len + extra <= self.cap
    }

    /// Appends `chunk`, then drops the oldest bytes (cutting into the oldest chunk if need be)
    /// until at most `cap` remain. Returns how many bytes were dropped.
    pub fn push(&mut self, chunk: Bytes) -> usize {
        if chunk.is_empty() {
            return 0;
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
        let mut dropped = 0;
        while self.len > self.cap {
            let excess = self.len - self.cap;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= excess {
                let n = front.len();
                self.chunks.pop_front();
                self.len -= n;
                dropped += n;
            } else {
                front.advance(excess);
                self.len -= excess;
                dropped += excess;
            }
        }
        self.dropped += dropped as u64;
        dropped
    }

    /// The oldest chunk, left in place (it is removed by [`pop_front`](Self::pop_front) once it
    /// was sent, so a failed send keeps it for the next connection).
    pub fn front(&self) -> Option<&Bytes> {
        self.chunks.front()
    }

    /// Removes the oldest chunk.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let chunk = self.chunks.pop_front()?;
        self.len -= chunk.len();
        Some(chunk)
    }

    /// Returns and resets the count of bytes dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[derive(Debug)]
struct State {
    buf: OutputBuffer,
    connected: bool,
    /// The PTY reader is done: no more output will come.
    closed: bool,
}

/// The queue between the PTY reader task and the connection's sender, with the overflow rule
/// described in the module docs.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Woken on every change (data in, data out, connection state, close); each waiter then
    /// re-checks its own condition.
    changed: Notify,
}

impl Outbox {
    /// An empty, disconnected outbox of `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                buf: OutputBuffer::new(cap),
                connected: false,
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (every update is a few plain
        // assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds for the state, then runs `then` on it (under the lock).
    async fn wait_for<T>(
        &self,
        mut ready: impl FnMut(&State) -> bool,
        then: impl FnOnce(&mut State) -> T,
    ) -> T {
        let mut then = Some(then);
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between the check and the await wakes it.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if ready(&state)
                    && let Some(then) = then.take()
                {
                    return then(&mut state);
                }
            }
            notified.await;
        }
    }

    /// Queues a chunk read from the PTY: while connected, waits for room; while disconnected,
    /// drops the oldest bytes beyond the cap. Returns how many bytes were dropped.
    pub async fn push(&self, chunk: Bytes) -> usize {
        let len = chunk.len();
        let dropped = self
            .wait_for(
                |s| !s.connected || s.buf.fits(len) || s.buf.is_empty(),
                |s| s.buf.push(chunk),
            )
            .await;
        self.changed.notify_waiters();
        dropped
    }

    /// The oldest queued chunk, waiting for one; it stays queued until [`sent`](Self::sent).
    /// Never returns once the outbox is closed and empty.
    pub async fn next(&self) -> Bytes {
        self.wait_for(
            |s| !s.buf.is_empty(),
            |s| s.buf.front().cloned().unwrap_or_default(),
        )
        .await
    }

    /// Removes the chunk [`next`](Self::next) returned, now that it went out.
    pub fn sent(&self) {
        self.lock().buf.pop_front();
        self.changed.notify_waiters();
    }

    /// Records whether a connection is draining the queue. Returns the bytes dropped while
    /// disconnected (reported when the connection comes back).
    pub fn set_connected(&self, connected: bool) -> u64 {
        let dropped = {
            let mut state = self.lock();
            state.connected = connected;
            state.buf.take_dropped()
        };
        self.changed.notify_waiters();
        dropped
    }

    /// Marks the end of the output (the PTY reader finished).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Waits until the PTY reader finished.
    pub async fn closed(&self) {
        self.wait_for(|s| s.closed, |_| ()).await;
    }

    /// Waits until the output ended and all of it was sent.
    pub async fn delivered(&self) {
        self.wait_for(|s| s.closed && s.buf.is_empty(), |_| ())
            .await;
    }

    /// Bytes queued (for logs).
    pub fn queued(&self) -> usize {
        self.lock().buf.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn contents(buf: &mut OutputBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = buf.pop_front() {
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn keeps_everything_up_to_the_cap() {
        let mut buf = OutputBuffer::new(10);
        assert_eq!(buf.push(Bytes::from_static(b"hello")), 0);
        assert_eq!(buf.push(Bytes::from_static(b"")), 0);
        assert_eq!(buf.push(Bytes::from_static(b"world")), 0);
        assert_eq!(buf.len(), 10);
        assert!(!buf.fits(1));
        assert_eq!(contents(&mut buf), b"helloworld");
        assert!(buf.is_empty());
    }

    #[test]
    fn drops_the_oldest_bytes_beyond_the_cap() {
        let mut buf = OutputBuffer::new(8);
        buf.push(Bytes::from_static(b"abc"));
        buf.push(Bytes::from_static(b"defg"));
        // 3 + 4 + 4 = 11 bytes: the whole first chunk goes (3), none of the second.
        assert_eq!(buf.push(Bytes::from_static(b"hijk")), 3);
        assert_eq!(buf.len(), 8);
        // 8 + 2 = 10: the oldest chunk is cut, not dropped whole.
        assert_eq!(buf.push(Bytes::from_static(b"lm")), 2);
        assert_eq!(buf.take_dropped(), 5);
        assert_eq!(buf.take_dropped(), 0);
        assert_eq!(contents(&mut buf), b"fghijklm");
    }

    #[test]
    fn a_chunk_larger_than_the_cap_keeps_its_tail() {
        let mut buf = OutputBuffer::new(4);
        buf.push(Bytes::from_static(b"xy"));
        assert_eq!(buf.push(Bytes::from_static(b"0123456789")), 8);
        assert_eq!(contents(&mut buf), b"6789");
    }

    #[test]
    fn the_front_stays_until_popped() {
        let mut buf = OutputBuffer::new(16);
        buf.push(Bytes::from_static(b"one"));
        buf.push(Bytes::from_static(b"two"));
        assert_eq!(buf.front().map(|b| &b[..]), Some(&b"one"[..]));
        assert_eq!(buf.front().map(|b| &b[..]), Some(&b"one"[..]));
        assert_eq!(buf.pop_front().as_deref(), Some(&b"one"[..]));
        assert_eq!(buf.len(), 3);
    }

    #[tokio::test]
    async fn disconnected_pushes_drop_and_connected_pushes_wait_for_room() {
        let outbox = Outbox::new(4);
        assert_eq!(outbox.push(Bytes::from_static(b"abc")).await, 0);
        assert_eq!(outbox.push(Bytes::from_static(b"de")).await, 1);
        assert_eq!(outbox.set_connected(true), 1);

        // Full while connected: the push waits until the sender took a chunk.
        let push = outbox.push(Bytes::from_static(b"fg"));
        let mut push = std::pin::pin!(push);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), push.as_mut())
                .await
                .is_err(),
            "a push into a full, connected outbox should wait"
        );
        assert_eq!(&outbox.next().await[..], b"bc");
        outbox.sent();
        let dropped = tokio::time::timeout(Duration::from_secs(5), push)
            .await
            .expect("waiting for the push to complete once the sender made room");
        assert_eq!(dropped, 0);
        assert_eq!(outbox.queued(), 4);
    }

    #[tokio::test]
    async fn delivered_waits_for_close_and_the_last_send() {
        let outbox = std::sync::Arc::new(Outbox::new(64));
        outbox.set_connected(true);
        outbox.push(Bytes::from_static(b"last")).await;
        outbox.close();
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.delivered().await }
        });
        assert_eq!(&outbox.next().await[..], b"last");
        assert!(!waiter.is_finished());
        outbox.sent();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiting for delivered() after the last chunk was sent")
            .unwrap();
    }
}
