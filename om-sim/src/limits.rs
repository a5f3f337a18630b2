//! Kustom's per-account rate limit: a token bucket per account, refilled continuously at
//! the account rate up to the burst. The account is the API key presented (each Kustom
//! account has its own). Written apart from ipp-actions' limiter on purpose, so that a
//! mistake in one is not mirrored by the other.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::config::Limits;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct AccountLimiter {
    limits: Limits,
    buckets: HashMap<String, Bucket>,
}

impl AccountLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// New limits; every account starts again with a full bucket.
    pub fn replace(&mut self, limits: Limits) {
        self.limits = limits;
        self.buckets.clear();
    }

    /// Takes a token of `account`'s bucket, or says how long until there is one (the
    /// request is then refused and takes nothing).
    pub fn take(&mut self, account: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.limits.account_rate_limit;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = self.limits.burst();
        let bucket = self.buckets.entry(account.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// Retry-After in whole seconds, never sooner than the token is back, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: Option<u32>) -> AccountLimiter {
        AccountLimiter::new(Limits {
            account_rate_limit: rate,
            account_rate_burst: burst,
        })
    }

    fn taken(limiter: &mut AccountLimiter, account: &str, now: Instant) -> usize {
        std::iter::from_fn(|| limiter.take(account, now).ok()).count()
    }

    #[test]
    fn off_by_default() {
        let mut limiter = AccountLimiter::new(Limits::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.take("k", now).is_ok()));
    }

    #[test]
    fn burst_then_refill_per_account() {
        let mut limiter = limiter(10.0, Some(3));
        let t0 = Instant::now();
        assert_eq!(taken(&mut limiter, "a", t0), 3);
        let wait = limiter.take("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(taken(&mut limiter, "b", t0), 3, "another account");
        assert_eq!(taken(&mut limiter, "a", t0 + Duration::from_millis(250)), 2);
        assert_eq!(taken(&mut limiter, "a", t0 + Duration::from_secs(60)), 3);
    }

    #[test]
    fn the_default_burst_is_one_seconds_worth_and_new_limits_refill() {
        let mut limiter = limiter(50.0, None);
        let t0 = Instant::now();
        assert_eq!(taken(&mut limiter, "a", t0), 50);
        limiter.replace(Limits {
            account_rate_limit: 0.5,
            account_rate_burst: None,
        });
        assert_eq!(taken(&mut limiter, "a", t0), 1);
        assert_eq!(retry_after_secs(limiter.take("a", t0).unwrap_err()), 2);
    }
}
