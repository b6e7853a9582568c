//! In-process rate limits (governor): one keyed limiter per rule, with the wait a refused caller
//! should observe, so errors can say when to retry.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

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
        Self {
            limiter: NonZeroU32::new(amount).map(|n| RateLimiter::keyed(Quota::per_second(n))),
            per: "second",
            amount,
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
}
