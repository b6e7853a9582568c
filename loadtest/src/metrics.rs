//! Latency histograms (HDR, microseconds) and their summaries.
//!
//! The publish→receive path records a million values a second from a thousand tasks. One
//! histogram per task would be contention-free but spread over megabytes, so nearly every record
//! would miss the cache; one shared histogram would be a hot lock. [`ShardedHist`] sits between:
//! one histogram per worker thread (a thread only ever locks its own shard, so the lock is
//! uncontended and the shard stays in that core's cache), and tasks hand over their values in
//! batches, one lock per socket read. The coordinator merges the shards at the end.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram tracks; larger values are clamped to it (and still counted).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// An HDR histogram of microseconds.
pub type Hist = Histogram<u64>;

/// A new histogram (1 µs .. 60 s, 3 significant digits).
pub fn hist() -> anyhow::Result<Hist> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// Records `us` microseconds, clamped into the tracked range.
pub fn record_us<T: hdrhistogram::Counter>(h: &mut Histogram<T>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Records a duration.
pub fn record<T: hdrhistogram::Counter>(h: &mut Histogram<T>, d: Duration) {
    record_us(h, d.as_micros().min(u128::from(u64::MAX)) as u64);
}

/// Shards of a histogram, one per recording thread (see the module docs).
#[derive(Debug)]
pub struct ShardedHist {
    shards: Vec<Mutex<Hist>>,
}

/// Hands out shard numbers to threads in the order they first record.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number (modulo the shard count).
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

impl ShardedHist {
    /// `shards` histograms; more than the runtime's worker threads, so each thread has its own.
    pub fn new(shards: usize) -> anyhow::Result<Self> {
        let shards = (0..shards.max(1))
            .map(|_| hist().map(Mutex::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { shards })
    }

    /// Records a batch of microsecond values into this thread's shard.
    pub fn record_batch(&self, values_us: &[u32]) {
        let i = SHARD.with(|s| *s) % self.shards.len();
        // A poisoned shard only means another thread panicked mid-record; its counts are
        // still usable, so keep recording.
        let mut h = match self.shards[i].lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        for &v in values_us {
            record_us(&mut h, u64::from(v));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> anyhow::Result<Hist> {
        let mut all = hist()?;
        for s in &self.shards {
            let h = match s.lock() {
                Ok(h) => h,
                Err(poisoned) => poisoned.into_inner(),
            };
            all.add(&*h)?;
        }
        Ok(all)
    }
}

/// What a report shows of a histogram. Values in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Percentiles.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample (clamped at 60 s).
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `h`; all zeros when it is empty.
    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            // Rounded to the microsecond, like the percentiles.
            mean_ms: h.mean().round() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_histograms_merge_every_count_from_every_thread() {
        let sharded = std::sync::Arc::new(ShardedHist::new(4).unwrap());
        let ones: Vec<u32> = (1..=1000).collect();
        let s = sharded.clone();
        std::thread::spawn(move || s.record_batch(&ones))
            .join()
            .unwrap();
        sharded.record_batch(&[50_000, u32::MAX]); // the second is clamped, still counted
        let all = sharded.merged().unwrap();
        assert_eq!(all.len(), 1002);
        let s = Summary::of(&all);
        assert_eq!(s.count, 1002);
        assert!((s.p50_ms - 0.5).abs() < 0.01, "{s:?}");
        assert!(s.max_ms >= 59_000.0, "{s:?}");
        assert!(s.p999_ms >= 49.0 && s.p999_ms <= 51.0, "{s:?}");
    }

    #[test]
    fn empty_histograms_summarise_to_zero() {
        assert_eq!(Summary::of(&hist().unwrap()), Summary::default());
    }

    #[test]
    fn durations_record_in_microseconds() {
        let mut h = hist().unwrap();
        record(&mut h, Duration::from_millis(3));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= 2_999 && h.max() <= 3_001);
    }
}
