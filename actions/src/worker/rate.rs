//! A token bucket per Kustom account, shared by every worker task of the process: every
//! Order Management request (each in-place retry too) takes one token before it is sent.
//!
//! The bucket is kept as its theoretical arrival time (GCRA): one instant per account,
//! moved on by one interval (`1 / rate`) per token taken. A request may go once that
//! instant is no more than `burst - 1` intervals ahead of now, so an idle account has
//! `burst` tokens at once and then one per interval. A token is reserved when asked for,
//! so waiters are served in the order they asked; one whose wait is dropped (its claim
//! lost, shutdown) leaves its token unused, which only errs on the side of fewer requests.
//!
//! The account is the action's `merchant_id`. Actions without one (a command that named
//! none) share one bucket of their own, the "no account known" bucket.
//!
//! Each process has its own buckets: with several replicas, give each the account's
//! budget divided by the number of replicas.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Past this many accounts, those whose bucket is full again are forgotten (a full
/// bucket and no bucket behave the same).
const PRUNE_ABOVE: usize = 1024;

pub struct RateLimits {
    /// Time between two tokens.
    interval: Duration,
    /// How far ahead of now an account's arrival time may be and still let a request go.
    tolerance: Duration,
    /// Account (`None`: no account known) → its theoretical arrival time.
    accounts: Mutex<HashMap<Option<String>, Instant>>,
}

impl RateLimits {
    /// `per_second` tokens per account and second, at most `burst` at once (at least 1);
    /// `None` (no limit) when `per_second` is 0.
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        if !(per_second > 0.0 && per_second.is_finite()) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Some(Self {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            accounts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token of `account`'s bucket, waiting until there is one. Returns how
    /// long it waited.
    pub async fn acquire(&self, account: Option<&str>) -> Duration {
        let now = Instant::now();
        let at = self.reserve(account, now);
        tokio::time::sleep_until(at).await;
        at.saturating_duration_since(now)
    }

    /// Reserves a token of `account`'s bucket; returns when it may be used.
    fn reserve(&self, account: Option<&str>, now: Instant) -> Instant {
        let mut accounts = self.accounts.lock().expect("rate limits lock");
        if accounts.len() > PRUNE_ABOVE {
            accounts.retain(|_, arrival| *arrival > now);
        }
        let arrival = accounts.entry(account.map(str::to_owned)).or_insert(now);
        let due = (*arrival).max(now);
        *arrival = due + self.interval;
        due.checked_sub(self.tolerance)
            .map_or(now, |at| at.max(now))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limits(per_second: f64, burst: u32) -> RateLimits {
        RateLimits::new(per_second, burst).expect("a limit")
    }

    /// Tokens `account` gets without waiting.
    async fn free_tokens(limits: &RateLimits, account: Option<&str>) -> u32 {
        let mut n = 0;
        while limits.acquire(account).await.is_zero() {
            n += 1;
        }
        n
    }

    #[test]
    fn zero_or_nonsense_is_no_limit() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RateLimits::new(rate, 10).is_none(), "{rate}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_account_has_its_burst_then_one_token_per_interval() {
        let limits = limits(100.0, 5);
        assert_eq!(free_tokens(&limits, Some("A")).await, 5);
        // The sixth waited one interval; each next one another interval.
        let started = Instant::now();
        for _ in 0..10 {
            limits.acquire(Some("A")).await;
        }
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_account_refills_up_to_its_burst_and_no_more() {
        let limits = limits(10.0, 3);
        assert_eq!(free_tokens(&limits, Some("A")).await, 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Two intervals idle: two tokens back (the wait in free_tokens cost one).
        assert_eq!(free_tokens(&limits, Some("A")).await, 2);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(free_tokens(&limits, Some("A")).await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn accounts_are_independent_and_no_account_has_a_bucket_of_its_own() {
        let limits = limits(1.0, 2);
        assert_eq!(free_tokens(&limits, Some("A")).await, 2);
        let started = Instant::now();
        assert_eq!(free_tokens(&limits, Some("B")).await, 2);
        assert_eq!(free_tokens(&limits, None).await, 2);
        // Each free_tokens ends with one wait of an interval on its own account.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_share_one_bucket_per_account() {
        let limits = Arc::new(limits(50.0, 10));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let limits = limits.clone();
            tasks.spawn(async move {
                for _ in 0..20 {
                    limits.acquire(Some("A")).await;
                }
                Instant::now()
            });
        }
        let last = tasks.join_all().await.into_iter().max().unwrap();
        // 640 tokens: 10 at once, 630 more at 50 per second.
        assert_eq!(last - started, Duration::from_millis(630 * 20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_one_spaces_every_request() {
        let limits = limits(4.0, 1);
        let started = Instant::now();
        for _ in 0..5 {
            limits.acquire(None).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_forgotten_when_there_are_many_accounts() {
        let limits = limits(1000.0, 1);
        for i in 0..=PRUNE_ABOVE {
            limits.acquire(Some(&i.to_string())).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        limits.acquire(Some("new")).await;
        assert_eq!(limits.accounts.lock().unwrap().len(), 1);
    }
}
