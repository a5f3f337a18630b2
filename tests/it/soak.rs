//! The chaos soak, short: `ipp-soak --minutes 2` (what `scripts/soak` runs for longer)
//! with its own broker (which it restarts), its own database and every service as a
//! process. The driver checks the invariants itself and exits 1 on a violation; this
//! test also asserts that the chaos really happened and that the figures add up, so a
//! soak that silently did nothing cannot pass. Below it, the regressions the soak found,
//! each reproduced small.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use chrono::Utc;
use ipp_tests::{
    db,
    eventually::eventually,
    inprocess::{actions_config, projector_config, OrderManagement, TestActions, TestProjector},
    kafka::{self, OwnBroker},
    om_sim::OmSim,
    process::bin_path,
    produce::{ipp_body, Producer},
    unique_name,
};
use serde_json::Value;
use uuid::Uuid;

#[test]
fn two_minutes_of_kills_restarts_and_faults_break_no_invariant() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let status = Command::new(bin_path("ipp-soak"))
        .args(["--minutes", "2", "--poison", "8", "--drain-secs", "150"])
        .arg("--out")
        .arg(out.path())
        .env("IPP_BIN_DIR", bin_path("ipp-ingest").parent().unwrap())
        .status()
        .expect("run ipp-soak");
    eprintln!("ipp-soak --minutes 2 took {:?}", started.elapsed());
    let summary = std::fs::read(out.path().join("summary.json")).expect("summary.json");
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(
        summary["violations"],
        Value::Array(vec![]),
        "violations (logs in {})",
        out.keep().display()
    );
    assert!(
        status.success(),
        "ipp-soak exits 0 without violations: {status}"
    );

    let figure = |path: &str| {
        summary
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{path} in {summary}"))
    };
    for service in ["ingest", "projector", "actions"] {
        assert!(
            figure(&format!("/chaos/kills/{service}")) >= 1,
            "{service} was killed"
        );
    }
    assert!(figure("/chaos/broker_restarts_kill") >= 1);
    assert!(figure("/chaos/broker_restarts_term") >= 1);
    assert!(figure("/chaos/om_fault_windows") >= 1);
    assert!(figure("/webhooks/answered_200") > 1000, "load was sent");
    assert!(figure("/webhooks/redeliveries") > 0);
    assert_eq!(
        figure("/log/acknowledged_checked"),
        figure("/webhooks/answered_200")
    );
    assert!(figure("/captures/finalized_orders") > 0);
    assert_eq!(
        figure("/captures/captured_once") + figure("/captures/failed_explained"),
        figure("/captures/finalized_orders")
    );
    assert_eq!(figure("/dead_letters/poison_injected"), 8);
    assert!(figure("/dead_letters/projector_dead_letters") >= 8);
    assert!(figure("/read_models/live_sessions") > 0);
    assert_eq!(
        figure("/read_models/live_sessions"),
        figure("/read_models/clean_sessions")
    );
    assert_eq!(
        figure("/read_models/live_events"),
        figure("/read_models/clean_events")
    );
}

/// Found by the soak: a consumer that lived through a broker outage slept 500 ms on
/// each connection error librdkafka had queued meanwhile, and saw the assignment queued
/// behind them minutes after the broker was back. A projector and an ipp-actions started
/// while the broker is down must consume within seconds of its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_started_during_a_broker_outage_consume_once_it_is_back() {
    let mut broker = OwnBroker::start();
    let brokers = broker.brokers();
    let topic = kafka::create_topic(&brokers, "soak_outage", 2).await;
    let projector_dlq = kafka::create_topic(&brokers, "soak_outage_dlq", 1).await;
    let actions_dlq = kafka::create_topic(&brokers, "soak_outage_actions_dlq", 1).await;
    kafka::create_actions_topics(&brokers, &topic, 2).await;
    let database = db::fresh_database().await;
    let sim = OmSim::start("kco_test_outage");
    broker.stop();

    let _projector = TestProjector::spawn(projector_config(
        &brokers,
        &topic,
        &projector_dlq,
        database.url(),
        &unique_name("soak_outage_projector"),
    ));
    let _actions = TestActions::spawn(actions_config(
        &brokers,
        &topic,
        &actions_dlq,
        database.url(),
        &unique_name("soak_outage_actions"),
        OrderManagement {
            url: &sim.url,
            api_key: "kco_test_outage",
        },
    ));
    // Long enough an outage for librdkafka to queue dozens of reconnect errors.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();

    let sessions: Vec<(Uuid, Uuid)> = (0..10).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect();
    let bodies: Vec<Vec<u8>> = sessions
        .iter()
        .map(|(session, order)| {
            ipp_body(
                &format!("kevt_outage_{}", session.simple()),
                "ipp.session.finalized",
                "M1",
                *session,
                Utc::now(),
                Some(*order),
                None,
            )
        })
        .collect();
    Producer::new(&brokers, &topic).send_events(&bodies).await;
    let back = Instant::now();
    let pool = database.pool().await;
    eventually(
        Duration::from_secs(45),
        "the projector applies and ipp-actions captures every event after the outage",
        || async {
            let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            let captured: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ipp_actions WHERE status = 'succeeded'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            sessions == 10 && captured == 10
        },
    )
    .await;
    eprintln!("caught up {:?} after the broker was back", back.elapsed());
    drop(broker);
}
