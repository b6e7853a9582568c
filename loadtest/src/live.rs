//! Counters every connection task updates and the progress display and coordinator read.
//!
//! Plain relaxed atomics: they are statistics, not synchronisation. Receivers add their counts
//! once per socket read (many frames), not once per message, so a million deliveries a second
//! do not turn into a million contended increments.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one run.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections whose WebSocket handshake completed.
    pub opened: AtomicU64,
    /// Connections whose join was acknowledged with `status: ok`.
    pub joined: AtomicU64,
    /// Connections that failed to open or join.
    pub failed: AtomicU64,
    /// Joined connections that ended before we closed them (server close, EOF, error).
    pub dropped: AtomicU64,
    /// Messages published.
    pub sent: AtomicU64,
    /// Broadcasts received, over all subscribers.
    pub delivered: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// What the run is doing now, for the progress line.
    phase: Mutex<&'static str>,
}

impl Live {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sets the phase name shown in progress lines.
    pub fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
    }

    /// The current phase name.
    pub fn phase(&self) -> &'static str {
        self.phase.lock().map(|p| *p).unwrap_or("?")
    }
}
