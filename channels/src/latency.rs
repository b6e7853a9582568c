//! Publish→fan-out latency, counted in fixed buckets of atomics so the registry can record
//! every message without a lock or an allocation; the hub exports it as a histogram.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, milliseconds (the last bucket, +Inf, is implied).
pub const BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/// A histogram of milliseconds: one counter per bucket (not cumulative), a count and a sum.
#[derive(Debug, Default)]
pub struct LatencyBuckets {
    buckets: [AtomicU64; BOUNDS_MS.len() + 1],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// A copy for export, in the shape Prometheus encoders take.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, observations in this bucket only)`; the last bound is
    /// `f64::MAX`, standing for `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum, seconds.
    pub sum_s: f64,
}

impl LatencyBuckets {
    /// Counts one observation of `ms` milliseconds.
    pub fn observe_ms(&self, ms: u64) {
        let i = BOUNDS_MS.partition_point(|&b| b < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            let bound = BOUNDS_MS.get(i).map_or(f64::MAX, |&ms| ms as f64 / 1000.0);
            buckets.push((bound, n));
        }
        LatencySnapshot {
            buckets,
            // The bucket total, so count and buckets agree even while others record.
            count: total,
            sum_s: self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyBuckets::default();
        for ms in [0, 1, 2, 3, 10, 11, 20_000] {
            h.observe_ms(ms);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        assert_eq!(s.buckets[0], (0.001, 2), "0 and 1 ms are ≤ 1 ms");
        assert_eq!(s.buckets[1], (0.002, 1));
        assert_eq!(s.buckets[2], (0.005, 1));
        assert_eq!(s.buckets[3], (0.01, 1));
        assert_eq!(s.buckets[4], (0.025, 1));
        assert_eq!(
            *s.buckets.last().unwrap(),
            (f64::MAX, 1),
            "20 s is past every bound"
        );
        assert!((s.sum_s - 20.027).abs() < 1e-9);
    }
}
