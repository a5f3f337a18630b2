//! ipp-actions within Kustom's per-account rate limit: the client's token bucket against
//! a simulator that enforces the same limit, and the 429 backstop when the simulator's
//! limit is lowered at run time below the client's. Real broker, PostgreSQL, simulator.

use std::time::{Duration, Instant};

use chrono::DateTime;
use ipp_tests::{
    actions::{assert_retry_after_respected, finalized, product_defaults, Fixture, MERCHANT},
    eventually::eventually,
    unique_name,
};
use serde_json::{json, Value};

/// The product's retry and timeout settings instead of the fixture's short ones: these
/// tests are about what a deployment with the defaults does.
fn product_retries(config: &mut ipp_actions::Config) {
    let defaults = product_defaults();
    config.http_timeout_ms = defaults.http_timeout_ms;
    config.connect_timeout_ms = defaults.connect_timeout_ms;
    config.inplace_retries = defaults.inplace_retries;
    config.inplace_min_delay_ms = defaults.inplace_min_delay_ms;
    config.inplace_max_delay_ms = defaults.inplace_max_delay_ms;
    config.retry_min_delay_ms = defaults.retry_min_delay_ms;
    config.retry_max_delay_ms = defaults.retry_max_delay_ms;
    config.poll_interval_ms = defaults.poll_interval_ms;
}

fn seconds_between(first: &Value, last: &Value) -> f64 {
    let at = |c: &Value| DateTime::parse_from_rfc3339(c["at"].as_str().unwrap()).unwrap();
    (at(last) - at(first)).as_seconds_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_thousand_captures_at_100_per_second_meet_no_429_and_take_the_time_the_limit_implies()
{
    const ORDERS: usize = 3000;
    // An automatic capture is a GET of the order and a POST of the capture.
    const REQUESTS: usize = 2 * ORDERS;
    let fx = Fixture::new(3, |sim| sim.limits.account_rate_limit = 100.0).await;
    let finals = finalized(ORDERS);
    fx.produce(&finals).await;
    let defaults = product_defaults();
    assert_eq!(defaults.om_rate_limit(), 100.0, "the product default");
    let started = Instant::now();
    let actions = fx.start_actions(&unique_name("actions"), product_retries);
    fx.wait_until_all_recorded(ORDERS, Duration::from_secs(240))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(fx.count("succeeded").await, ORDERS as i64);
    fx.assert_captured_once(&finals).await;

    let stats = fx.sim.stats().await;
    assert_eq!(stats["rate_limited"], json!(0), "{stats}");
    assert_eq!(stats["by_status"].get("429"), None, "{stats}");
    assert_eq!(stats["requests"], json!(REQUESTS));
    // The burst goes at once, every other request waits its turn at 100 per second.
    let implied = (REQUESTS - defaults.om_rate_burst as usize) as f64 / 100.0;
    assert!(
        elapsed.as_secs_f64() >= implied,
        "{REQUESTS} requests in {elapsed:?}, under the {implied} s the limit implies"
    );
    let calls = fx.calls().await;
    let span = seconds_between(&calls[0], &calls[REQUESTS - 1]);
    // Less a second for the first request's own way to the simulator.
    assert!(span >= implied - 1.0, "the simulator saw them in {span} s");
    // Every task waits its turn: their waits (which overlap) add up to more than the run.
    let waited = actions
        .metric(
            "ipp_actions_om_rate_limit_wait_seconds_total",
            &format!("account=\"{MERCHANT}\""),
        )
        .await;
    assert!(waited > implied, "waits counted for the account: {waited}");
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulator_limit_lowered_below_the_clients_gives_429s_and_every_capture_still_happens_once(
) {
    const ORDERS: usize = 300;
    let fx = Fixture::new(3, |sim| sim.limits.account_rate_limit = 100.0).await;
    let finals = finalized(ORDERS);
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), product_retries);
    eventually(Duration::from_secs(60), "some captures done", || async {
        fx.count("succeeded").await >= 30
    })
    .await;
    // Kustom tightens the account's limit to a quarter of what the client sends.
    fx.sim
        .put("/_sim/limits", json!({"account_rate_limit": 25}))
        .await;
    let lowered_at = fx.count("succeeded").await;
    assert!(lowered_at < 200, "the run was nearly over: {lowered_at}");
    fx.wait_until_all_recorded(ORDERS, Duration::from_secs(240))
        .await;
    assert_eq!(
        fx.count("succeeded").await,
        ORDERS as i64,
        "{:?}",
        fx.unfinished().await
    );
    assert_eq!(fx.count("failed").await, 0);
    fx.assert_captured_once(&finals).await;

    let stats = fx.sim.stats().await;
    let rate_limited = stats["rate_limited"].as_u64().unwrap();
    assert!(rate_limited > 0, "no 429 after lowering the limit: {stats}");
    assert_eq!(stats["captures_applied"], json!(ORDERS));
    let calls = fx.calls().await;
    // The account limit's Retry-After is whole seconds, 1 at 25 per second.
    let checked = assert_retry_after_respected(&calls, 1);
    assert!(checked > 0, "no retry after a 429 to check");
    assert!(
        actions
            .metric("ipp_actions_om_retries_total", "cause=\"429\"")
            .await
            > 0.0
    );
    actions.stop().await;
}
