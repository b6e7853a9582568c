//! In-process rate limits: keyed limiters (governor) for rules shared across connections (per
//! user, per address), and a tiny [`Bucket`] that each connection carries for its own rules, with
//! the wait a refused caller should observe, so errors can say when to retry.

use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A limit per key (a user, a connection).
pub struct KeyedLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per: &'static str,
    amount: u32,
}

impl fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyedLimiter({} per {})", self.amount, self.per)
    }
}

impl KeyedLimiter {
    /// `amount` per hour per key, as a bucket that refills evenly; 0 disables the limit.
    pub fn per_hour(amount: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(amount).map(|n| RateLimiter::keyed(Quota::per_hour(n))),
            per: "hour",
            amount,
        }
    }

    /// `amount` per second per key (bursts of up to `amount`); 0 disables the limit.
    pub fn per_second(amount: u32) -> Self {
        Self::per_second_burst(amount, amount)
    }

    /// `amount` per second per key, with bursts of up to `burst` (at least `amount`); 0 disables
    /// the limit.
    pub fn per_second_burst(amount: u32, burst: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(amount).map(|n| {
                let burst = NonZeroU32::new(burst.max(amount)).unwrap_or(n);
                RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
            }),
            per: "second",
            amount,
        }
    }

    /// Whether the limit is enforced at all.
    pub fn is_enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// Forgets keys whose buckets are full again, so the limiter's memory follows the keys in
    /// use rather than every key ever seen.
    pub fn shrink(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Takes one unit for `key`; `Err(wait)` when the limit is reached.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The limit, for messages: `"100 per hour"`.
    pub fn describe(&self) -> String {
        format!("{} per {}", self.amount, self.per)
    }
}

/// A token bucket one connection owns (no lock, no allocation: 24 bytes in the session): `rate`
/// tokens per second refill it up to `burst`, each event takes one. The rate and burst are passed
/// to [`Bucket::take`] rather than stored, since every connection of a node shares them.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last: Option<Instant>,
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

impl Bucket {
    /// A bucket that starts full (the first refill tops it up to `burst`).
    pub const fn new() -> Self {
        Self {
            tokens: f32::MAX,
            last: None,
        }
    }

    /// Takes one token at `now`; `Err(wait)` until the next one when empty. `rate` 0 never
    /// refuses.
    pub fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (rate as f32, burst.max(rate) as f32);
        let refill = match self.last {
            Some(last) => now.saturating_duration_since(last).as_secs_f32() * rate,
            None => burst,
        };
        self.tokens = (self.tokens.min(burst) + refill).min(burst);
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f32((1.0 - self.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_quota_per_key() {
        let l = KeyedLimiter::per_hour(3);
        for _ in 0..3 {
            assert!(l.check("alice").is_ok());
        }
        let wait = l.check("alice").unwrap_err();
        assert!(
            wait > Duration::from_secs(60) && wait <= Duration::from_secs(1200),
            "{wait:?}"
        );
        assert!(l.check("bob").is_ok(), "keys are independent");
        let off = KeyedLimiter::per_hour(0);
        assert!((0..1000).all(|_| off.check("x").is_ok()));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::new();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(b.take(t0, 2, 5).is_ok(), "burst token {i}");
        }
        let wait = b.take(t0, 2, 5).unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        // Half a second later one token (2 per second) is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(t1, 2, 5).is_ok());
        assert!(b.take(t1, 2, 5).is_err());
        // Long idle refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(t2, 2, 5).is_ok()).count(), 5);
        // Rate 0: off.
        assert!((0..1000).all(|_| b.take(t2, 0, 0).is_ok()));
    }

    #[test]
    fn a_keyed_burst_is_separate_from_the_rate() {
        let l = KeyedLimiter::per_second_burst(1, 3);
        assert_eq!((0..10).filter(|_| l.check("k").is_ok()).count(), 3);
        assert!(l.is_enabled() && !KeyedLimiter::per_second(0).is_enabled());
    }
}
