//! The retry policy, in two layers.
//!
//! 1. In place: a failed call (5xx, 429, timeout, connection error) is retried a few
//!    times with exponential backoff and jitter (`backon`), never sooner than a
//!    `Retry-After`. A `Retry-After` longer than the in-place limit ends this layer early.
//! 2. In the ledger: an action whose in-place retries ran out stays `pending` with a later
//!    `next_attempt_at` (exponential per attempt, with jitter, again at least
//!    `Retry-After`), so the worker slot is freed and nothing waits in memory. After
//!    `max_attempts` attempts or `max_retry` since the action was recorded it is `failed`.
//!
//! No delay is longer than `retry_max_delay`, whatever `Retry-After` says: a server that
//! asks for hours (or sends a value that is not a sane number, see
//! `om::parse_retry_after`) gets asked again after `retry_max_delay`, and answers 429
//! again if it must.

use std::time::Duration;

use backon::ExponentialBuilder;
use chrono::{DateTime, Utc};

use crate::{config::Config, error::OmError};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub inplace_retries: usize,
    pub inplace_min_delay: Duration,
    pub inplace_max_delay: Duration,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    pub max_attempts: i32,
    pub max_retry: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &Config) -> Self {
        Self {
            inplace_retries: config.inplace_retries,
            inplace_min_delay: Duration::from_millis(config.inplace_min_delay_ms),
            inplace_max_delay: Duration::from_millis(config.inplace_max_delay_ms),
            retry_min_delay: Duration::from_millis(config.retry_min_delay_ms),
            retry_max_delay: Duration::from_millis(config.retry_max_delay_ms),
            max_attempts: config.max_attempts.max(1),
            max_retry: Duration::from_secs(config.max_retry_secs),
        }
    }

    /// Backoff of the in-place retries of one call.
    pub fn in_place(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.inplace_min_delay)
            .with_max_delay(self.inplace_max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.inplace_retries)
    }

    /// Applied to every in-place delay: never sooner than `Retry-After`; and when Kustom
    /// asks for a longer wait than in-place retries allow, give the slot back instead.
    pub fn adjust(&self, error: &OmError, delay: Option<Duration>) -> Option<Duration> {
        let delay = delay?;
        match error.retry_after() {
            Some(wait) if wait > self.inplace_max_delay => None,
            Some(wait) => Some(delay.max(wait)),
            None => Some(delay),
        }
    }

    /// When an action that ran out of in-place retries is due again, after `attempts`:
    /// never sooner than `retry_after`, never later than `retry_max_delay`.
    pub fn next_delay(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
        let base = self
            .retry_min_delay
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.retry_max_delay);
        // Jitter in [base/2, base] spreads the actions of one outage over time.
        let jittered = base.mul_f64(rand::random_range(0.5..=1.0));
        jittered
            .max(retry_after.unwrap_or_default())
            .min(self.retry_max_delay)
    }

    /// Whether an action has used up its attempts or its time.
    pub fn exhausted(&self, attempts: i32, created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let age = (now - created_at).to_std().unwrap_or_default();
        attempts >= self.max_attempts || age >= self.max_retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            inplace_retries: 3,
            inplace_min_delay: Duration::from_millis(100),
            inplace_max_delay: Duration::from_secs(2),
            retry_min_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            max_attempts: 5,
            max_retry: Duration::from_secs(3600),
        }
    }

    fn status(code: u16, retry_after: Option<u64>) -> OmError {
        OmError::Status {
            endpoint: "capture",
            status: code,
            error_code: None,
            message: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_a_long_one_ends_in_place_retries() {
        let p = policy();
        let short = Some(Duration::from_millis(100));
        assert_eq!(
            p.adjust(&status(429, Some(1)), short),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.adjust(&status(429, Some(30)), short), None);
        assert_eq!(p.adjust(&status(503, None), short), short);
        assert_eq!(p.adjust(&status(503, None), None), None);
    }

    #[test]
    fn ledger_delays_grow_stay_capped_and_respect_retry_after() {
        let p = policy();
        for attempts in 1..40 {
            let d = p.next_delay(attempts, None);
            assert!(d <= Duration::from_secs(60), "{attempts}: {d:?}");
            assert!(d >= Duration::from_millis(500), "{attempts}: {d:?}");
        }
        assert!(p.next_delay(6, None) >= Duration::from_secs(16));
        assert!(p.next_delay(1, Some(Duration::from_secs(50))) >= Duration::from_secs(50));
    }

    #[test]
    fn a_retry_after_longer_than_the_longest_delay_is_capped() {
        let p = policy();
        for wait in [
            Duration::from_secs(61),
            crate::om::MAX_RETRY_AFTER,
            Duration::MAX,
        ] {
            assert_eq!(p.next_delay(3, Some(wait)), p.retry_max_delay, "{wait:?}");
        }
    }

    #[test]
    fn exhaustion_by_attempts_or_age() {
        let p = policy();
        let now = Utc::now();
        assert!(!p.exhausted(4, now, now));
        assert!(p.exhausted(5, now, now));
        assert!(p.exhausted(1, now - chrono::Duration::hours(2), now));
    }
}
