//! The simulator's Kustom webhooks, delivered to a real ingest on a real broker: what it
//! applies (through the API or outside it) is posted once as a signed, slim event that
//! ingest stores in the other-events topic; replays post nothing; an endpoint that is
//! down gets the event later; injected duplicates keep their webhook-id.

use std::{collections::HashMap, time::Duration};

use ipp_tests::{
    eventually::eventually,
    ingest::{Ingest, Options},
    inprocess::{om_sim_config, om_sim_posting_to, TestIngest, TestOmSim},
    json_of,
    kafka::{self, Record},
    om_sim::{new_order, OmSim},
    ReservedPort,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "kco_test_om_sim_webhooks";
const MERCHANT: &str = "DM12345678";

/// The simulator posting to `ingest` with ingest's secret, `configure`d further.
fn sim_posting_to(ingest: &Ingest, configure: impl FnOnce(&mut ipp_om_sim::Config)) -> OmSim {
    let url = format!("{}/webhooks/kustom", ingest.url);
    let mut config = om_sim_posting_to(om_sim_config(KEY), &url, &ingest.secrets[0]);
    // The account of KEY: the orders it calls are its own, and their webhooks name it.
    config.merchant_id = MERCHANT.to_owned();
    configure(&mut config);
    OmSim::start_with(config)
}

/// The record's body as JSON.
fn body(record: &Record) -> Value {
    serde_json::from_slice(&record.value).expect("a JSON event")
}

/// The records by event type; each type at most once.
fn by_type(records: &[Record]) -> HashMap<String, Record> {
    let mut types = HashMap::new();
    for record in records {
        let event_type = body(record)["type"].as_str().expect("type").to_owned();
        assert!(
            types.insert(event_type.clone(), record.clone()).is_none(),
            "{event_type} stored twice"
        );
    }
    types
}

/// Asserts `record` is a slim Kustom event of `event_type` for `order` with `data`, and
/// that ingest's headers name it.
fn assert_event(record: &Record, event_type: &str, order: &str, data: Value) {
    let event = body(record);
    let mut expected = data;
    expected["order_id"] = json!(order);
    assert_eq!(event["type"], event_type);
    assert_eq!(event["merchant_id"], MERCHANT);
    assert_eq!(event["data"], expected, "{event_type}: data");
    let id = event["id"].as_str().expect("id");
    assert!(id.starts_with("kevt_"), "{id}");
    let timestamp = event["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339 timestamp");
    assert_eq!(
        event.as_object().map(|o| o.len()),
        Some(5),
        "only id, merchant_id, timestamp, type, data: {event}"
    );
    assert_eq!(record.header("kustom-event-type"), Some(event_type));
    assert_eq!(record.header("kustom-event-id"), Some(id));
    assert_eq!(record.header("kustom-merchant-id"), Some(MERCHANT));
}

#[tokio::test]
async fn a_capture_and_a_refund_through_the_api_post_signed_webhooks_that_ingest_stores() {
    let ingest = Ingest::start().await;
    let sim = sim_posting_to(&ingest, |_| {});
    let order = new_order();
    sim.seed(
        &order,
        json!({ "order_amount": 5000, "merchant_id": MERCHANT }),
    )
    .await;

    let captured = sim.capture(&order, 3000, Some("capture-key-1")).await;
    assert_eq!(captured.status(), StatusCode::CREATED);
    let capture_id = json_of(captured).await["capture_id"].clone();
    let refunded = sim
        .post(
            &order,
            "refunds",
            json!({ "refunded_amount": 1200, "reference": "r-1" }),
        )
        .await;
    assert_eq!(refunded.status(), StatusCode::CREATED);
    let refund_id = json_of(refunded).await["refund_id"].clone();

    let view = sim.webhooks_delivered(2).await;
    assert_eq!(view["published"], 2);
    assert_eq!(
        view["failed_attempts"], 0,
        "ingest accepted every delivery: {view}"
    );
    let records = ingest.other_records();
    assert_eq!(records.len(), 2, "one record per event");
    let types = by_type(&records);
    assert_event(
        &types["capture.created"],
        "capture.created",
        &order,
        json!({ "capture_id": capture_id }),
    );
    assert_event(
        &types["refund.created"],
        "refund.created",
        &order,
        json!({ "refund_id": refund_id }),
    );
    for event in view["events"].as_array().expect("events") {
        assert_eq!(event["last_status"], 200);
        assert_eq!(event["delivered"], 1);
        let record = &types[event["type"].as_str().unwrap()];
        assert_eq!(record.header("webhook-id"), event["webhook_id"].as_str());
    }
    assert!(
        ingest.ipp_records().is_empty(),
        "order events are not IPP events"
    );

    // The ids lead to the details: the order lists its captures and refunds.
    let state = json_of(sim.get_order(&order).await).await;
    assert_eq!(state["captured_amount"], 3000);
    assert_eq!(state["refunded_amount"], 1200);
    let capture = &state["captures"][0];
    assert_eq!(capture["capture_id"], capture_id);
    assert_eq!(capture["captured_amount"], 3000);
    assert_eq!(capture["reference"], "session-1");
    assert!(capture["captured_at"].is_string());
    let refund = &state["refunds"][0];
    assert_eq!(refund["refund_id"], refund_id);
    assert_eq!(refund["refunded_amount"], 1200);
    assert_eq!(refund["reference"], "r-1");
    assert!(refund["refunded_at"].is_string());
}

#[tokio::test]
async fn a_replayed_key_or_a_refused_capture_posts_nothing() {
    let ingest = Ingest::start().await;
    let sim = sim_posting_to(&ingest, |_| {});
    let order = new_order();
    sim.seed(
        &order,
        json!({ "order_amount": 1000, "merchant_id": MERCHANT }),
    )
    .await;

    let first = sim.capture(&order, 1000, Some("the-key")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let capture_id = json_of(first).await["capture_id"].clone();
    let replay = sim.capture(&order, 1000, Some("the-key")).await;
    sim.assert_capture_replayed(replay, capture_id.as_str().unwrap(), &order)
        .await;
    let refused = sim.capture(&order, 1, Some("another-key")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let view = sim.webhooks_delivered(1).await;
    assert_eq!(view["published"], 1, "only the applied capture: {view}");
    let records = ingest.other_records();
    assert_eq!(records.len(), 1);
    assert_event(
        &records[0],
        "capture.created",
        &order,
        json!({ "capture_id": capture_id }),
    );
}

#[tokio::test]
async fn an_endpoint_that_is_down_gets_the_event_later_and_once() {
    let (config, secrets) = Ingest::config(&Options::default()).await;
    // Kept from other sockets until ingest listens there.
    let reserved = ReservedPort::new();
    let addr = reserved.addr();
    let url = format!("http://{addr}/webhooks/kustom");
    let mut sim_config = om_sim_posting_to(om_sim_config(KEY), &url, &secrets[0]);
    sim_config.merchant_id = MERCHANT.to_owned();
    let sim = OmSim::start_with(sim_config);
    let order = new_order();
    sim.seed(&order, json!({ "merchant_id": MERCHANT })).await;
    let captured = sim.capture(&order, 500, Some("k")).await;
    assert_eq!(captured.status(), StatusCode::CREATED);
    let capture_id = json_of(captured).await["capture_id"].clone();

    // Nobody listens yet: refused connections, retried.
    eventually(Duration::from_secs(30), "two failed attempts", || async {
        sim.webhooks().await["failed_attempts"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(sim.webhooks().await["delivered"], 0);

    let ingest = TestIngest::spawn_at(addr, config.clone());
    let view = sim.webhooks_delivered(1).await;
    let event = &view["events"][0];
    assert_eq!(event["delivered"], 1);
    assert!(event["attempts"].as_u64() >= Some(3), "{event}");
    let records = kafka::read_topic(&kafka::brokers(), &config.other_topic);
    assert_eq!(records.len(), 1, "delivered once");
    assert_event(
        &records[0],
        "capture.created",
        &order,
        json!({ "capture_id": capture_id }),
    );
    assert_eq!(
        records[0].header("webhook-id"),
        event["webhook_id"].as_str()
    );
    ingest.stop().await;
}

#[tokio::test]
async fn a_duplicate_rate_of_one_delivers_each_event_twice_with_the_same_webhook_id() {
    let ingest = Ingest::start().await;
    let sim = sim_posting_to(&ingest, |config| config.webhooks.duplicate_rate = 1.0);
    let order = new_order();
    sim.seed(&order, json!({ "merchant_id": MERCHANT })).await;
    assert_eq!(
        sim.capture(&order, 100, Some("k")).await.status(),
        StatusCode::CREATED
    );

    let view = sim.webhooks_delivered(2).await;
    assert_eq!(
        (&view["published"], &view["duplicates"]),
        (&json!(1), &json!(1))
    );
    let records = ingest.other_records();
    assert_eq!(records.len(), 2, "the event, twice");
    assert_eq!(records[0].value, records[1].value, "the same body");
    assert_eq!(
        records[0].header("webhook-id"),
        records[1].header("webhook-id")
    );
    assert_eq!(
        records[0].header("webhook-id"),
        view["events"][0]["webhook_id"].as_str()
    );
    assert_ne!(
        records[0].header("webhook-timestamp"),
        None,
        "each delivery is signed"
    );
}

#[tokio::test]
async fn operations_outside_the_api_are_effects_with_their_webhooks() {
    let ingest = Ingest::start().await;
    let sim = sim_posting_to(&ingest, |_| {});
    let order = new_order();
    sim.seed(
        &order,
        json!({ "order_amount": 4000, "merchant_id": MERCHANT }),
    )
    .await;

    // The Portal captures everything that remains, then refunds part of it.
    let captured = sim.outside(&order, "captures", json!({})).await;
    assert_eq!(captured.status(), StatusCode::CREATED);
    let capture_id = json_of(captured).await["capture_id"].clone();
    let refunded = sim
        .outside(&order, "refunds", json!({ "refunded_amount": 700 }))
        .await;
    assert_eq!(refunded.status(), StatusCode::CREATED);
    let refund_id = json_of(refunded).await["refund_id"].clone();
    // A cardholder disputes the payment; the dispute is then decided.
    let opened = sim
        .outside(&order, "disputes", json!({ "reason": "fraudulent" }))
        .await;
    assert_eq!(opened.status(), StatusCode::CREATED);
    let dispute = json_of(opened).await;
    assert_eq!(dispute["status"], "OPEN");
    assert_eq!(dispute["disputed_amount"], 4000);
    let dispute_id = dispute["dispute_id"].as_str().unwrap().to_owned();
    let decided = sim
        .outside(
            &order,
            &format!("disputes/{dispute_id}"),
            json!({ "status": "WON" }),
        )
        .await;
    assert_eq!(decided.status(), StatusCode::OK);

    let view = sim.webhooks_delivered(4).await;
    assert_eq!(view["published"], 4);
    let types = by_type(&ingest.other_records());
    assert_eq!(types.len(), 4);
    assert_event(
        &types["capture.created"],
        "capture.created",
        &order,
        json!({ "capture_id": capture_id }),
    );
    assert_event(
        &types["refund.created"],
        "refund.created",
        &order,
        json!({ "refund_id": refund_id }),
    );
    assert_event(
        &types["dispute.created"],
        "dispute.created",
        &order,
        json!({ "dispute_id": dispute_id }),
    );
    assert_event(
        &types["dispute.updated"],
        "dispute.updated",
        &order,
        json!({ "dispute_id": dispute_id, "status": "WON" }),
    );

    // Effects like any other, though no Order Management call was made.
    let state = sim.sim_order(&order).await;
    assert_eq!(state["effects"]["captures"], 1);
    assert_eq!(state["effects"]["refunds"], 1);
    assert_eq!(state["status"], "CAPTURED");
    assert_eq!(state["captures"][0]["capture_id"], capture_id);
    assert_eq!(state["merchant_id"], MERCHANT);
    assert_eq!(state["disputes"][0]["status"], "WON");
    assert!(sim.calls().await.is_empty(), "no Order Management call");
    assert_eq!(
        sim.captures_by_order().await[&order.parse::<uuid::Uuid>().unwrap()],
        1
    );
    // Kustom's (Klarna's) order has no disputes field: only /_sim shows them.
    let om_view = json_of(sim.get_order(&order).await).await;
    assert_eq!(om_view["captured_amount"], 4000);
    assert!(om_view.get("disputes").is_none(), "{om_view}");
    assert!(om_view.get("merchant_id").is_none(), "{om_view}");

    // Refusals are the API's, and post nothing.
    let refused = sim
        .outside(&order, "captures", json!({ "captured_amount": 1 }))
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(sim.webhooks().await["published"], 4);
}

#[tokio::test]
async fn suppressed_webhooks_never_come() {
    let ingest = Ingest::start().await;
    let sim = sim_posting_to(&ingest, |_| {});
    let response = sim
        .control(
            reqwest::Method::PUT,
            "/_sim/webhooks",
            Some(json!({ "suppressed": true })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let order = new_order();
    assert_eq!(
        sim.capture(&order, 10, None).await.status(),
        StatusCode::CREATED
    );
    let view = sim.webhooks().await;
    assert_eq!(
        (&view["published"], &view["suppressed_events"]),
        (&json!(0), &json!(1))
    );

    // Switched back on, the next capture is posted (with the default merchant).
    sim.control(
        reqwest::Method::PUT,
        "/_sim/webhooks",
        Some(json!({ "suppressed": false })),
    )
    .await;
    assert_eq!(
        sim.capture(&order, 10, None).await.status(),
        StatusCode::CREATED
    );
    sim.webhooks_delivered(1).await;
    let records = ingest.other_records();
    assert_eq!(records.len(), 1);
    assert_eq!(body(&records[0])["merchant_id"], MERCHANT);
}

#[tokio::test]
async fn a_destination_without_a_valid_secret_refuses_to_start() {
    for secret in [None, Some("whsec_s3cr3t!")] {
        let mut config = om_sim_config(KEY);
        config.webhooks.url = Some("http://127.0.0.1:9/webhooks/kustom".into());
        config.webhooks.secret = secret.map(ipp_service::Secret::new);
        let error = TestOmSim::spawn(config)
            .exited(Duration::from_secs(10))
            .await
            .expect_err("refuses to start");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }
}
