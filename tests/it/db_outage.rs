//! PostgreSQL outages while webhooks and captures flow: a server of the test's own
//! stopped for longer than every retry budget of the services and started again, and a
//! database whose connections are terminated again and again mid-transaction. ingest
//! must keep answering 200 (it does not use the database); the projector and ipp-actions
//! must say not ready while it is away, keep their place, and catch up by themselves;
//! the read model must end exact and no order captured twice.

use std::time::{Duration, Instant};

use ipp_tests::{
    db::TestDatabase,
    eventually::eventually,
    faults::{self, Answers, Stack},
    kafka,
    pipeline::settle,
    postgres::{terminate_backends, PrivatePostgres},
};
use reqwest::StatusCode;

/// Longer than every retry budget in place: the services' 30 s start-up patience for
/// the database, the pool's 10 s acquire timeout, the projector's backoff (up to 10 s)
/// and the consumers' and the worker's retries (up to 5 s).
const OUTAGE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_every_retry_is_ridden_out_exactly() {
    let test_started = Instant::now();
    let mut postgres = PrivatePostgres::start();
    let database_url = postgres.url("postgres");
    let stack = Stack::start(&kafka::brokers(), 1, &database_url).await;
    let (workload, deliveries, stream) = stack.stream_workload(500, 20261203, 25.0, 32, 200).await;
    eventually(
        Duration::from_secs(60),
        "captures before the outage",
        || async { !stack.sim.captures_by_order().await.is_empty() },
    )
    .await;
    assert_eq!(
        stack.readiness().await,
        (Some(StatusCode::OK), Some(StatusCode::OK)),
        "both ready before the outage"
    );

    let stop_took = postgres.stop();
    let down_at = Instant::now();
    // Not ready, both, soon after the database went away…
    eventually(
        Duration::from_secs(20),
        "projector and ipp-actions answer /readyz 503",
        || async {
            stack.readiness().await
                == (
                    Some(StatusCode::SERVICE_UNAVAILABLE),
                    Some(StatusCode::SERVICE_UNAVAILABLE),
                )
        },
    )
    .await;
    let unready_after = down_at.elapsed();
    // … and for as long as it is away.
    let mut probes = 0;
    while down_at.elapsed() < OUTAGE {
        assert_eq!(
            stack.readiness().await,
            (
                Some(StatusCode::SERVICE_UNAVAILABLE),
                Some(StatusCode::SERVICE_UNAVAILABLE)
            ),
            "/readyz of the projector and ipp-actions {:?} into the outage",
            down_at.elapsed()
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let start_took = postgres.start_again();
    let up_at = Instant::now();

    // ingest does not use the database: every webhook of the outage was answered 200.
    let answers = stream.answers();
    let during = answers.within(down_at, up_at);
    let statuses = Answers::by_status(&during);
    assert!(
        statuses.keys().all(|&status| status == 200)
            && statuses.get(&200).copied().unwrap_or(0) >= 200,
        "ingest's answers during the outage: {statuses:?}"
    );
    eventually(
        Duration::from_secs(60),
        "projector and ipp-actions ready again",
        || async { stack.readiness().await == (Some(StatusCode::OK), Some(StatusCode::OK)) },
    )
    .await;
    let ready_again_after = up_at.elapsed();

    let answers = stream.finish(Duration::from_secs(300)).await;
    assert_eq!(answers.acknowledged().len(), deliveries.len());
    let pool = faults::pool(&database_url).await;
    settle(&pool, &[&workload], Duration::from_secs(120)).await;
    let settled_after = up_at.elapsed();
    stack.assert_log_holds(&deliveries, &answers);
    faults::assert_exact_and_captured_once(&pool, &workload, &stack.sim).await;
    stack.assert_running();
    eprintln!(
        "database outage: initdb {:?}, first start {:?}, stop {stop_took:?}, start again \
         {start_took:?}; not ready {unready_after:?} after the stop ({probes} probes 503 \
         through the {OUTAGE:?} outage), ready again {ready_again_after:?} and settled \
         {settled_after:?} after the start; {} deliveries; whole test {:?}",
        postgres.initdb_took,
        postgres.first_start_took,
        deliveries.len(),
        test_started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_terminated_mid_transaction_lose_nothing_and_capture_once() {
    let test_started = Instant::now();
    let database = TestDatabase::create().await;
    let stack = Stack::start(&kafka::brokers(), 1, database.url()).await;
    let (workload, deliveries, stream) = stack.stream_workload(300, 20261204, 40.0, 32, 100).await;

    // Every service connection to the database is cut, again and again, while records
    // are projected and actions recorded and captured.
    let admin_url = ipp_tests::db::server_url();
    let (mut rounds, mut terminated) = (0, 0);
    while stream.acknowledged() < stream.total * 9 / 10 {
        terminated += terminate_backends(&admin_url, database.name()).await;
        rounds += 1;
        assert!(
            test_started.elapsed() < Duration::from_secs(180),
            "the stream did not get through"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        terminated >= rounds,
        "{terminated} connections terminated in {rounds} rounds"
    );

    let answers = stream.finish(Duration::from_secs(300)).await;
    assert_eq!(answers.acknowledged().len(), deliveries.len());
    let pool = faults::pool(database.url()).await;
    settle(&pool, &[&workload], Duration::from_secs(120)).await;
    stack.assert_log_holds(&deliveries, &answers);
    faults::assert_exact_and_captured_once(&pool, &workload, &stack.sim).await;
    stack.assert_running();
    eprintln!(
        "terminated backends: {terminated} connections in {rounds} rounds; {} deliveries; \
         whole test {:?}",
        deliveries.len(),
        test_started.elapsed()
    );
}
