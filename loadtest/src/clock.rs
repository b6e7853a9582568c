//! The one clock publish→receive latency is measured with.
//!
//! Timestamps are nanoseconds on a monotonic clock (`Instant`) anchored once per process to the
//! wall clock. Within a process that is exactly "ns since a process-wide `Instant` base", immune
//! to wall-clock steps; across processes on one machine (a run split over several loadtest
//! processes) the anchors differ only by the jitter of reading the wall clock at start-up, so a
//! publisher in one process and subscribers in another still compare like with like.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The anchor: an `Instant` and the wall-clock nanoseconds read right after it.
static BASE: OnceLock<(Instant, u64)> = OnceLock::new();

fn base() -> &'static (Instant, u64) {
    BASE.get_or_init(|| {
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (now, wall)
    })
}

/// Fixes the anchor; call once at start-up so the first measurement does not pay for it.
pub fn init() {
    base();
}

/// Current time in nanoseconds on the shared clock.
pub fn now_ns() -> u64 {
    let (at, wall) = base();
    wall + at.elapsed().as_nanos() as u64
}

/// Seconds since the Unix epoch, for token expiry.
pub fn unix_secs() -> u64 {
    now_ns() / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_near_wall_time() {
        init();
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(b) < 1_000_000_000);
    }
}
