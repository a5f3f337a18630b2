//! Observations (decision 0019): ipp-actions appends the outcome of every settled action,
//! and what Order Management answered to the reads that Kustom's order events prompt, to
//! its observations topic. Real broker, real PostgreSQL, the simulator; the topic is
//! read back.

use std::time::Duration;

use ipp_schemas::observation::{Observation, ObservationKind, OperationOutcome, OrderRead};
use ipp_tests::{
    actions::{finalized, Fixture, MERCHANT},
    commands::{with_api, CommandsClient},
    eventually::eventually,
    kafka,
    produce::Producer,
    unique_name,
};
use serde_json::{json, Value};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);

/// The observations of `order` in the fixture's observations topic, with their keys.
fn observations_of(fx: &Fixture, order: Uuid) -> Vec<Observation> {
    kafka::read_topic(&fx.brokers, &fx.observations_topic)
        .into_iter()
        .map(|record| {
            let observation = Observation::parse(&record.value).expect("an observation");
            assert_eq!(
                record.key_str(),
                Some(observation.order_id.to_string().as_str()),
                "keyed by order id"
            );
            observation
        })
        .filter(|o| o.order_id == order)
        .collect()
}

/// Waits until `order` has observations with `n` distinct ids; asserts that copies of
/// one id (a republish) are identical, and returns one of each, in the log's order.
async fn distinct_observations(fx: &Fixture, order: Uuid, n: usize) -> Vec<Observation> {
    let mut distinct: Vec<Observation> = Vec::new();
    eventually(SETTLE, &format!("{n} observations of {order}"), || {
        distinct.clear();
        for observation in observations_of(fx, order) {
            match distinct
                .iter()
                .find(|o| o.observation_id == observation.observation_id)
            {
                Some(first) => assert_eq!(*first, observation, "a republish is identical"),
                None => distinct.push(observation),
            }
        }
        std::future::ready(distinct.len() >= n)
    })
    .await;
    assert_eq!(distinct.len(), n, "{distinct:#?}");
    distinct
}

fn outcome(observation: &Observation) -> &OperationOutcome {
    match &observation.kind {
        ObservationKind::Operation(outcome) => outcome,
        other => panic!("an operation outcome, got {other:?}"),
    }
}

fn order_read(observation: &Observation) -> &OrderRead {
    match &observation.kind {
        ObservationKind::OrderRead(read) => read,
        other => panic!("an order read, got {other:?}"),
    }
}

/// A Kustom order event's body, as Kustom posts it and ingest stores it.
fn order_event(event_type: &str, data: &Value) -> (String, Vec<u8>) {
    let id = format!("kevt_{}", Uuid::new_v4().simple());
    let body = json!({
        "id": id,
        "merchant_id": MERCHANT,
        "timestamp": "2026-12-02T10:00:00.000000001Z",
        "type": event_type,
        "data": data,
    });
    (id, body.to_string().into_bytes())
}

/// The simulator's GETs of `order`.
async fn reads_of(fx: &Fixture, order: Uuid) -> usize {
    let path = format!("/ordermanagement/v1/orders/{order}");
    fx.calls()
        .await
        .iter()
        .filter(|c| c["method"] == json!("GET") && c["path"] == json!(path))
        .count()
}

async fn published_at_is_set(fx: &Fixture, order: Uuid, action: &str) -> bool {
    let published: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "SELECT published_at FROM ipp_actions WHERE order_id = $1 AND action = $2",
    )
    .bind(order)
    .bind(action)
    .fetch_optional(&fx.pool)
    .await
    .unwrap_or(None);
    matches!(published, Some(Some(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_automatic_capture_publishes_one_outcome_with_its_capture_id_and_amount() {
    let fx = Fixture::new(2, |_| {}).await;
    let finals = finalized(3);
    fx.produce(&finals).await;
    let _actions = fx.start_actions(&unique_name("actions"), |_| {});
    fx.wait_for_count("succeeded", 3, SETTLE).await;

    for event in &finals {
        let order = event.order_id.unwrap();
        let observed = distinct_observations(&fx, order, 1).await;
        let observation = &observed[0];
        assert_eq!(
            observation.observation_id,
            Observation::outcome_id(order, "capture")
        );
        assert_eq!(observation.merchant_id.as_deref(), Some(MERCHANT));
        let outcome = outcome(observation);
        let capture_id = fx.sim.the_only_capture_id(&order.to_string()).await;
        assert_eq!(outcome.action, "capture");
        assert_eq!(outcome.kind, "capture");
        assert_eq!(outcome.status, "succeeded");
        assert_eq!(outcome.capture_id.as_deref(), Some(capture_id.as_str()));
        assert_eq!(
            outcome.amount,
            Some(ipp_om_sim::authorized_amount_for(&order))
        );
        assert_eq!(outcome.session_id, Some(event.session_id));
        assert_eq!(outcome.command_id, None);
        eventually(SETTLE, "the row marked published", || {
            published_at_is_set(&fx, order, "capture")
        })
        .await;
    }
}

/// The broker refuses every observation (the topic's largest record is smaller than any
/// observation), so the capture settles and is not published; the process is SIGKILLed
/// in that state. Once the topic accepts records again, the restarted service publishes
/// the outcome from the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_settled_but_unpublished_when_the_process_died_is_published_after_the_restart() {
    let fx = Fixture::new(1, |_| {}).await;
    kafka::set_topic_configs(
        &fx.brokers,
        &fx.observations_topic,
        &[("max.message.bytes", "32")],
    )
    .await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let mut actions = fx.start_actions_process(&group, |_| {});
    fx.wait_for_count("succeeded", 1, SETTLE).await;
    eventually(SETTLE, "a refused append", || async {
        actions
            .metric("ipp_actions_observations_unpublished", "")
            .await
            >= 1.0
    })
    .await;
    assert!(!published_at_is_set(&fx, order, "capture").await);
    actions.kill();
    assert!(observations_of(&fx, order).is_empty(), "nothing published");
    assert!(!published_at_is_set(&fx, order, "capture").await);

    kafka::set_topic_configs(&fx.brokers, &fx.observations_topic, &[]).await;
    let _actions = fx.start_actions_process(&group, |_| {});
    let observed = distinct_observations(&fx, order, 1).await;
    let outcome = outcome(&observed[0]);
    assert_eq!(outcome.status, "succeeded");
    assert_eq!(
        outcome.capture_id,
        Some(fx.sim.the_only_capture_id(&order.to_string()).await)
    );
    eventually(SETTLE, "the row marked published", || {
        published_at_is_set(&fx, order, "capture")
    })
    .await;
    assert_eq!(
        fx.sim.captures(&order.to_string()).await,
        1,
        "captured once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_created_event_reads_the_order_once_and_publishes_what_om_answered() {
    let fx = Fixture::new(2, |_| {}).await;
    let order = Uuid::new_v4();
    // Captured outside the pipeline (the Portal, the POS): Kustom tells us by webhook.
    let capture = fx.sim.capture(&order.to_string(), 700, None).await;
    assert_eq!(capture.status(), 201);
    let capture_id = fx.sim.the_only_capture_id(&order.to_string()).await;
    let (event_id, body) = order_event(
        "capture.created",
        &json!({"order_id": order, "capture_id": capture_id, "new_field": {"kept": true}}),
    );
    let kustom = Producer::new(&fx.brokers, &fx.kustom_topic);
    // Delivered twice (Kustom retries a webhook; ingest appends each delivery).
    kustom.send_event(&body).await;
    kustom.send_event(&body).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});

    let observed = distinct_observations(&fx, order, 1).await;
    let observation = &observed[0];
    assert_eq!(
        observation.observation_id,
        Observation::read_id(order, &event_id)
    );
    assert_eq!(observation.merchant_id.as_deref(), Some(MERCHANT));
    let read = order_read(observation);
    assert_eq!(read.trigger_event_id.as_deref(), Some(event_id.as_str()));
    assert_eq!(read.trigger_event_type.as_deref(), Some("capture.created"));
    // What the simulator answers to a GET of the order now (nothing changed since).
    let answered: Value = fx
        .sim
        .get_order(&order.to_string())
        .await
        .json()
        .await
        .expect("the order");
    assert_eq!(read.order, answered);
    let om = read.om_order().expect("an order");
    assert_eq!(om.captured_amount, Some(700));
    assert_eq!(om.captures[0].capture_id, capture_id);

    // The redelivery was consumed and made no second row nor a second read.
    eventually(SETTLE, "the redelivered event consumed", || async {
        actions
            .metric("ipp_actions_records_total", "outcome=\"duplicate\"")
            .await
            >= 1.0
    })
    .await;
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT action, kind, status, event_type FROM ipp_actions WHERE order_id = $1",
    )
    .bind(order)
    .fetch_all(&fx.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![(
            format!("observe:{event_id}"),
            "observe".to_owned(),
            "succeeded".to_owned(),
            Some("capture.created".to_owned())
        )]
    );
    // One read by ipp-actions, one by this test (the simulator logs its own API's calls).
    assert_eq!(reads_of(&fx, order).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_event_that_does_not_name_its_order_is_parked_and_other_types_are_passed_over() {
    let fx = Fixture::new(1, |_| {}).await;
    let kustom = Producer::new(&fx.brokers, &fx.kustom_topic);
    let (_, nameless) = order_event("refund.created", &json!({"refund_id": "ref-1"}));
    let (_, other) = order_event("order.created", &json!({"order_id": Uuid::new_v4()}));
    kustom.send_event(&nameless).await;
    kustom.send_event(&other).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});

    fx.wait_for_dlq_records(1, "the nameless event parked")
        .await;
    let parked = &kafka::read_topic(&fx.brokers, &fx.dlq_topic)[0];
    assert_eq!(parked.value, nameless, "parked as it came");
    let reason = parked.header("dlq-error").unwrap_or_default();
    assert!(reason.contains("order_id"), "{reason}");
    assert_eq!(
        parked.header("dlq-source-topic"),
        Some(fx.kustom_topic.as_str())
    );
    eventually(SETTLE, "the other event passed over", || async {
        actions
            .metric("ipp_actions_records_total", "outcome=\"ignored\"")
            .await
            >= 1.0
    })
    .await;
    assert!(fx.ledger().await.is_empty(), "no row for either");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_that_fails_for_good_is_published_as_a_failed_outcome_and_not_dead_lettered() {
    let fx = Fixture::new(1, |_| {}).await;
    let order = Uuid::new_v4();
    fx.sim
        .seed(&order.to_string(), json!({"missing": true}))
        .await;
    let (event_id, body) = order_event(
        "dispute.created",
        &json!({"order_id": order, "dispute_id": "dsp-1", "status": "OPEN"}),
    );
    Producer::new(&fx.brokers, &fx.kustom_topic)
        .send_event(&body)
        .await;
    let _actions = fx.start_actions(&unique_name("actions"), |_| {});

    let observed = distinct_observations(&fx, order, 1).await;
    assert_eq!(
        observed[0].observation_id,
        Observation::outcome_id(order, &format!("observe:{event_id}"))
    );
    let outcome = outcome(&observed[0]);
    assert_eq!(
        (outcome.kind.as_str(), outcome.status.as_str()),
        ("observe", "failed")
    );
    assert!(
        outcome.reason.as_deref().is_some_and(|r| r.contains("404")),
        "{outcome:?}"
    );
    // The DLQ would have been written before the row settled: it holds nothing.
    assert_eq!(fx.status_of(order).await, "failed");
    assert!(kafka::read_topic(&fx.brokers, &fx.dlq_topic).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn refunds_and_cancels_issued_as_commands_publish_their_outcomes() {
    let fx = Fixture::new(2, |_| {}).await;
    let finals = finalized(1);
    let captured = finals[0].order_id.unwrap();
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), with_api);
    fx.wait_for_count("succeeded", 1, SETTLE).await;
    let api = CommandsClient::new(&actions.url());
    let refund = api
        .issue(captured, "refunds", "ref-1", Some(&json!({"amount": 500})))
        .await;
    let uncaptured = Uuid::new_v4();
    let cancel = api.issue(uncaptured, "cancel", "cancel-1", None).await;
    let refunded = api.settled(refund, SETTLE).await;
    assert_eq!(refunded["status"], "succeeded", "{refunded}");
    assert_eq!(api.settled(cancel, SETTLE).await["status"], "succeeded");

    let observed = distinct_observations(&fx, captured, 2).await;
    let refund_action = format!("refund:{refund}");
    let refund_outcome = observed
        .iter()
        .find(|o| o.observation_id == Observation::outcome_id(captured, &refund_action))
        .map(outcome)
        .expect("the refund's outcome");
    assert_eq!(refund_outcome.kind, "refund");
    assert_eq!(refund_outcome.command_id, Some(refund));
    assert_eq!(refund_outcome.status, "succeeded");
    assert_eq!(refund_outcome.amount, Some(500));
    assert_eq!(
        refund_outcome.refund_id.as_deref(),
        refunded["refund_id"].as_str()
    );

    let observed = distinct_observations(&fx, uncaptured, 1).await;
    assert_eq!(
        observed[0].observation_id,
        Observation::outcome_id(uncaptured, &format!("cancel:{cancel}"))
    );
    let cancel_outcome = outcome(&observed[0]);
    assert_eq!(
        (cancel_outcome.kind.as_str(), cancel_outcome.status.as_str()),
        ("cancel", "succeeded")
    );
    assert_eq!(cancel_outcome.command_id, Some(cancel));
}
