//! The orders read model: exact whatever the arrival order, the duplicates and the
//! SIGKILLs, equal to one clean pass over the log; each order in the reconciliation
//! state its facts call for; unusable Kustom events and observations parked.

use std::time::Duration;

use ipp_tests::{
    cli,
    eventually::eventually,
    kafka::read_topic,
    orders::{assert_states, orders_log, orders_tables, send, Case, LogRecord, To},
    process::ChildConfig,
    projector::{Projector, SHORT_SESSION},
    unique_name,
    wiring::Wiring,
};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(90);

/// The facts merged so far, by a projector's `/metrics`.
async fn facts_merged(projector: &Projector) -> f64 {
    projector
        .metric("ipp_projector_order_facts_total", "")
        .await
}

/// Waits until the projector merged at least `records` facts (every generated record
/// holds exactly one).
async fn wait_for_facts(projector: &Projector, records: usize) {
    eventually(
        WAIT,
        "the orders projection merges every record",
        || async { facts_merged(projector).await >= records as f64 },
    )
    .await;
}

/// A projector over `wiring` that applies the log of `records` once each, in order.
async fn clean_pass(records: &[LogRecord]) -> (Wiring, PgPool) {
    let wiring = Wiring::create(2, "orders_dlq").await;
    send(&wiring, records).await;
    let projector = Projector::spawn(wiring.projector_config(&unique_name("clean")));
    wait_for_facts(&projector, records.len()).await;
    projector.stop().await;
    let pool = wiring.database.pool().await;
    (wiring, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_exact_under_shuffles_and_duplicates_and_reconciled_per_case() {
    let log = orders_log(120, 5);
    let (_clean_wiring, clean) = clean_pass(&log.records).await;
    assert_states(&clean, &log).await;

    let wiring = Wiring::create(4, "orders_dlq").await;
    let delivered = log.shuffled_with_duplicates(9);
    send(&wiring, &delivered).await;
    let projector = Projector::spawn(wiring.projector_config(&unique_name("shuffled")));
    wait_for_facts(&projector, delivered.len()).await;
    let pool = wiring.database.pool().await;
    assert_eq!(orders_tables(&pool).await, orders_tables(&clean).await);
    assert_states(&pool, &log).await;

    // The gauge counts the orders of each state.
    let mismatches = log
        .cases
        .values()
        .filter(|c| c.state() == "mismatch")
        .count();
    eventually(WAIT, "the gauge shows the mismatches", || async {
        projector
            .metric("ipp_projector_orders", "state=\"mismatch\"")
            .await
            == mismatches as f64
    })
    .await;
    // And the mismatches of each rule.
    let mismatch_cases = [Case::External, Case::UnconfirmedLong, Case::AmountDiffers];
    let of_case = |case| log.cases.values().filter(|&&c| c == case).count() as f64;
    assert!(mismatch_cases.iter().all(|&case| of_case(case) > 0.0));
    eventually(WAIT, "the gauge shows the mismatches by rule", || async {
        for case in mismatch_cases {
            let labels = format!("rule=\"{}\"", case.rule().unwrap());
            let shown = projector
                .metric("ipp_projector_order_mismatches", &labels)
                .await;
            if shown != of_case(case) {
                return false;
            }
        }
        true
    })
    .await;
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_repeatedly_the_orders_projection_still_equals_a_clean_pass() {
    let log = orders_log(90, 17);
    let (_clean_wiring, clean) = clean_pass(&log.records).await;

    let wiring = Wiring::create(4, "orders_dlq").await;
    let group = unique_name("killed");
    let delivered = log.shuffled_with_duplicates(23);
    let pool = wiring.database.pool().await;
    let count = "SELECT (SELECT count(*) FROM ipp_order_facts) + (SELECT count(*) FROM ipp_order_operations)";
    for chunk in delivered.chunks(delivered.len().div_ceil(3)) {
        send(&wiring, chunk).await;
        let mut config = wiring.projector_config(&group);
        ipp_tests::inprocess::add_properties(&mut config.kafka.properties, SHORT_SESSION);
        let mut projector = Projector::spawn_process(config);
        let before: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
        eventually(WAIT, "the killed projector merged something", || async {
            let now: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
            now > before
        })
        .await;
        projector.kill();
    }
    let mut config = wiring.projector_config(&group);
    ipp_tests::inprocess::add_properties(&mut config.kafka.properties, SHORT_SESSION);
    let last = Projector::spawn_process(config);
    let expected = orders_tables(&clean).await;
    eventually(
        WAIT,
        "after the kills the tables equal a clean pass",
        || async { orders_tables(&pool).await == expected },
    )
    .await;
    last.stop().await;
    assert_states(&pool, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_order_events_and_observations_are_parked_and_the_rest_flows() {
    let log = orders_log(12, 3);
    let wiring = Wiring::create(1, "orders_dlq").await;
    let order = log.cases.keys().next().copied().unwrap();
    let poison = [
        LogRecord {
            to: To::Other,
            key: "kevt_bad_1".into(),
            value: serde_json::to_vec(&serde_json::json!({
                "id": "kevt_bad_1", "timestamp": "2026-12-02T10:00:00Z",
                "type": "refund.created", "data": {"order_id": order}
            }))
            .unwrap(),
        },
        LogRecord {
            to: To::Observations,
            key: order.to_string(),
            value: b"{\"observation_id\": 1}".to_vec(),
        },
    ];
    send(&wiring, &poison).await;
    send(&wiring, &log.records).await;
    let projector = Projector::spawn(wiring.projector_config(&unique_name("poison")));
    wait_for_facts(&projector, log.records.len()).await;
    let pool = wiring.database.pool().await;
    assert_states(&pool, &log).await;

    let parked = read_topic(&wiring.brokers, &wiring.dlq_topic);
    let mut sources: Vec<String> = parked
        .iter()
        .map(|r| r.header("dlq-source-topic").unwrap_or_default().to_owned())
        .collect();
    sources.sort();
    let mut expected = vec![
        wiring.kustom_topic.clone(),
        wiring.observations_topic.clone(),
    ];
    expected.sort();
    assert_eq!(
        sources, expected,
        "each unusable record parked once, with its source"
    );
    for record in &parked {
        let error = record.header("dlq-error").unwrap_or_default();
        assert!(error.starts_with("orders: "), "{error}");
    }
    assert!(parked.iter().any(|r| r
        .header("dlq-error")
        .unwrap_or_default()
        .contains("refund_id")));
    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_the_orders_out_of_sync_with_their_reasons() {
    let log = orders_log(18, 8);
    let wiring = Wiring::create(1, "orders_dlq").await;
    send(&wiring, &log.records).await;
    let config = wiring.projector_config(&unique_name("reconcile"));
    let projector = Projector::spawn(config.clone());
    wait_for_facts(&projector, log.records.len()).await;
    projector.stop().await;

    let env = config.env();
    let reconcile = |args: &'static [&'static str]| {
        let env = env.clone();
        async move {
            cli::run_async("ipp-projector", args, &env, Duration::from_secs(30))
                .await
                .success()
        }
    };
    let output = reconcile(&["reconcile", "--json"]).await;
    let lines = output.json_lines();
    let count = |state: &str| log.cases.values().filter(|c| c.state() == state).count();
    let summary = &lines[0]["orders_by_state"];
    for state in ["in_sync", "awaiting_confirmation", "mismatch"] {
        assert_eq!(summary[state], count(state) as u64, "{state}: {summary}");
    }
    let by_rule = &lines[0]["mismatches_by_rule"];
    for case in [Case::External, Case::UnconfirmedLong, Case::AmountDiffers] {
        let expected = log.cases.values().filter(|&&c| c == case).count();
        assert_eq!(by_rule[case.rule().unwrap()], expected as u64, "{by_rule}");
    }
    let listed = &lines[1..];
    assert_eq!(
        listed.len(),
        count("mismatch") + count("awaiting_confirmation")
    );
    assert!(listed[..count("mismatch")]
        .iter()
        .all(|o| o["state"] == "mismatch" && o["reason"].is_string()));
    for order in listed {
        let id: uuid::Uuid = order["order_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(order["state"], log.cases[&id].state());
        assert_eq!(order["rule"].as_str(), log.cases[&id].rule());
    }

    let text = reconcile(&["reconcile"]).await;
    assert!(
        text.stdout.contains("not made by this pipeline"),
        "{}",
        text.stdout
    );
    let all = reconcile(&["reconcile", "--all", "--json"]).await;
    assert_eq!(all.json_lines().len(), 1 + log.cases.len());
}
