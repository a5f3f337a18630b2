//! Waiting, bounded, for what the services do asynchronously.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Polls `check` every 200 ms until it holds; fails the test with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
