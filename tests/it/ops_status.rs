//! `ipp-projector status --json` and `ipp-actions status --json` after a known workload:
//! lag 0 on every partition, checkpoints at the high watermarks, the right counts and
//! DLQ sizes.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipp_tests::{
    cli,
    inprocess::{actions_config, OrderManagement, TestActions, TestProjector},
    om_sim::OmSim,
    process::ChildConfig,
    produce, unique_name,
    wiring::Wiring,
};
use rdkafka::message::OwnedHeaders;
use serde_json::{json, Value};
use uuid::Uuid;

const MERCHANT: &str = "DM11917000";
const API_KEY: &str = "kco_test_ops_status";

/// Runs `status --json` until `done` holds for its report (at most 90 s), returns it.
/// A status that fails (the service has not migrated its database yet) is run again.
async fn status_until(
    binary: &'static str,
    env: &[(&'static str, String)],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = cli::run_async(binary, &["status", "--json"], env, Duration::from_secs(60)).await;
        let report = match out.status.success() {
            true => {
                let mut lines = out.json_lines();
                assert_eq!(lines.len(), 1, "{}", out.stdout);
                Some(lines.remove(0))
            }
            false => None,
        };
        if let Some(report) = report.as_ref().filter(|r| done(r)) {
            return report.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {what}; last report {report:?}, stderr {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn body(event_type: &str, session: Uuid, order: Option<Uuid>) -> Vec<u8> {
    let id = format!("kevt_{}", Uuid::new_v4().simple());
    produce::ipp_body(&id, event_type, MERCHANT, session, Utc::now(), order, None)
}

/// Every partition at lag 0 with its checkpoint at the high watermark, and the high
/// watermarks adding up to `records`.
fn assert_caught_up(report: &Value, partitions: usize, records: i64) {
    let parts = report["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), partitions, "{report}");
    let mut total = 0;
    for p in parts {
        assert_eq!(p["lag"], json!(0), "{report}");
        assert_eq!(p["checkpoint"], p["high"], "{report}");
        total += p["high"].as_i64().unwrap() - p["low"].as_i64().unwrap();
    }
    assert_eq!(total, records, "{report}");
    assert_eq!(report["total_lag"], json!(0), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_status_reports_lag_checkpoints_newest_event_and_dlq_size() {
    let wiring = Wiring::create(3, "ipp_events_dlq").await;
    let (brokers, topic, dlq_topic) = (&wiring.brokers, &wiring.topic, &wiring.dlq_topic);
    let mut config = wiring.projector_config(&unique_name("projector"));
    // Not the default schema: status must look where the projector writes.
    config.schema = "ops_live".to_owned();
    let env = config.env();

    // Before anything ran the schema has no read models: status says so, and does not
    // report every record as lag.
    let producer = produce::Producer::new(brokers, topic);
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let session = Uuid::new_v4();
        bodies.push(body("ipp.session.created", session, None));
        bodies.push(body("ipp.session.activated", session, None));
    }
    producer.send_events(&bodies).await;
    producer
        .send_raw(Some(b"poison-1"), Some(b"{not json"), OwnedHeaders::new())
        .await;
    producer
        .send_raw(Some(b"poison-2"), Some(b"[]"), OwnedHeaders::new())
        .await;
    let records = bodies.len() as i64 + 2;
    let before = cli::run_async(
        "ipp-projector",
        &["status", "--json"],
        &env,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(before.status.code(), Some(2), "{before:?}");
    assert!(
        before
            .stderr
            .contains("schema ops_live of this database has no projector read models")
            && before.stderr.contains("ipp-projector migrate"),
        "{}",
        before.stderr
    );
    assert_eq!(before.stdout, "", "no report");

    let projector = TestProjector::spawn(config);
    let pool = wiring.database.pool().await;
    let report = status_until("ipp-projector", &env, "projector caught up", |r| {
        r["total_lag"] == json!(0) && r["dlq"]["records"] == json!(2)
    })
    .await;
    assert_caught_up(&report, 3, records);
    assert_eq!(report["migrated"], json!(true));
    assert_eq!(report["checkpoint_source"], json!("ipp_projector_offsets"));
    assert_eq!(report["dlq"]["topic"], json!(dlq_topic));
    let newest: DateTime<Utc> =
        sqlx::query_scalar("SELECT max(received_at) FROM ops_live.ipp_events")
            .fetch_one(&pool)
            .await
            .expect("newest");
    let reported: DateTime<Utc> = report["newest_event_received_at"]
        .as_str()
        .expect("newest_event_received_at")
        .parse()
        .expect("timestamp");
    assert_eq!(reported, newest);
    assert!(report["newest_event_age_seconds"].as_f64().unwrap() >= 0.0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_live.ipp_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, bodies.len() as i64);

    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_status_reports_lag_committed_offsets_counts_and_dlq_size() {
    let wiring = Wiring::create(2, "ipp_actions_dlq").await;
    let (brokers, topic, dlq_topic) = (&wiring.brokers, &wiring.topic, &wiring.dlq_topic);
    let sim = OmSim::start(API_KEY);
    let mut config = actions_config(
        brokers,
        topic,
        dlq_topic,
        wiring.database.url(),
        &unique_name("actions"),
        OrderManagement {
            url: &sim.url,
            api_key: API_KEY,
        },
    );
    let env = config.env();

    // 12 finalized sessions (2 of them on cancelled orders), 8 other events, 1 record
    // that is not an event.
    let producer = produce::Producer::new(brokers, topic);
    let mut bodies = Vec::new();
    for i in 0..12 {
        let order = Uuid::new_v4();
        if i < 2 {
            sim.put(
                &format!("/_sim/orders/{order}"),
                json!({"status": "CANCELLED"}),
            )
            .await;
        }
        let session = Uuid::new_v4();
        if i < 8 {
            bodies.push(body("ipp.session.activated", session, None));
        }
        bodies.push(body("ipp.session.finalized", session, Some(order)));
    }
    producer.send_events(&bodies).await;
    producer
        .send_raw(Some(b"garbage"), Some(b"{not json"), OwnedHeaders::new())
        .await;
    let records = bodies.len() as i64 + 1;

    // Before the service migrated its database: a clear error, not an empty ledger.
    let before = cli::run_async("ipp-actions", &["status"], &env, Duration::from_secs(60)).await;
    assert_eq!(before.status.code(), Some(2), "{before:?}");
    assert!(
        before
            .stderr
            .contains("this database has no ipp_actions ledger"),
        "{}",
        before.stderr
    );

    config.poll_interval_ms = 200;
    config.shutdown_timeout_secs = 5;
    let actions = TestActions::spawn(config);
    let report = status_until("ipp-actions", &env, "actions caught up", |r| {
        r["total_lag"] == json!(0)
            && r["actions"]["succeeded"] == json!(10)
            && r["actions"]["failed"] == json!(2)
            && r["dlq"]["records"] == json!(3)
    })
    .await;
    assert_caught_up(&report, 2, records);
    assert_eq!(report["actions"]["pending"], json!(0), "{report}");
    assert_eq!(report["actions"]["skipped"], json!(0), "{report}");
    assert_eq!(
        report["oldest_pending_age_seconds"],
        Value::Null,
        "{report}"
    );
    assert!(report["newest_action_age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["dlq"]["topic"], json!(dlq_topic));
    assert_eq!(report["dlq"]["redriven"], Value::Null, "no redrive ran yet");

    // The human table carries the same facts.
    let text = cli::run_async("ipp-actions", &["status"], &env, Duration::from_secs(60))
        .await
        .success()
        .stdout;
    assert!(
        text.contains("pending 0  succeeded 10  skipped 0  failed 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{dlq_topic}: 3 record(s)")),
        "{text}"
    );

    actions.stop().await;
}
