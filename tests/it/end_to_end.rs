//! The whole pipeline as separate processes: ipp-ingest, ipp-projector and ipp-actions
//! (the Order Management simulator in-process) against the test broker and a fresh
//! database. A generated workload goes in over signed HTTP while each service is
//! SIGKILLed and restarted once; what comes out must be exactly what the workload
//! implies, down to each order's money in sync with Kustom (the simulator posts its
//! webhooks to ingest).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use ipp_loadgen::{send_all, WebhookSigner, Workload, WorkloadSpec};
use ipp_tests::{
    db::TestDatabase,
    eventually::eventually,
    inprocess::{self, TestProjector},
    kafka::{self, Record},
    orders::orders_tables,
    pipeline::settle,
    processes::Processes,
    signer::Signer,
    unique_name,
};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use uuid::Uuid;

/// A request that must be refused: what it is, body, headers, expected status.
type InvalidRequest = (&'static str, Vec<u8>, Vec<(&'static str, String)>, u16);

/// Requests that must be refused (each with a marker that must appear nowhere
/// afterwards), and signed bodies that cannot be used: stored anyway, flagged with
/// `ipp-route-error` (status 200), never in the read model.
fn invalid_requests(pipeline: &Processes) -> Vec<InvalidRequest> {
    let signer = Signer::new(&pipeline.secret);
    let session = Uuid::new_v4();
    let event = |id: &str| {
        serde_json::to_vec(&json!({
            "id": id, "merchant_id": "M1", "timestamp": "2026-06-05T18:00:00Z",
            "type": "ipp.session.finalized",
            "data": {"session_id": session, "order_id": Uuid::new_v4(), "failure_reason": null}
        }))
        .unwrap()
    };
    let signed = |body: &[u8]| signer.sign(body).headers().to_vec();
    let forged_body = event("kevt_invalid_forged");
    let forged = Signer::new(&Signer::random_secret())
        .sign(&forged_body)
        .headers()
        .to_vec();
    let no_session = serde_json::to_vec(&json!({
        "id": "kevt_invalid_nosession", "type": "ipp.session.created", "timestamp": "2026-06-05T18:00:00Z", "data": {}
    }))
    .unwrap();
    let oversize = serde_json::to_vec(&json!({
        "id": "kevt_invalid_oversize", "type": "order.created", "timestamp": "2026-06-05T18:00:00Z",
        "data": {"padding": "x".repeat(20_000)}
    }))
    .unwrap();
    let garbage = b"{\"id\": \"kevt_invalid_garbage\", ".to_vec();
    vec![
        ("forged signature", forged_body, forged, 401),
        ("unsigned", event("kevt_invalid_unsigned"), vec![], 401),
        (
            "no session id",
            no_session.clone(),
            signed(&no_session),
            200,
        ),
        ("oversize", oversize.clone(), signed(&oversize), 413),
        ("not json", garbage.clone(), signed(&garbage), 200),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_survives_restarts_and_ends_exact() {
    // Kustom may deliver a webhook twice: a quarter of the simulator's come twice.
    let pipeline = Processes::start_with(|sim| sim.webhooks.duplicate_rate = 0.25).await;
    let mut ingest = pipeline.ingest();
    let mut projector = pipeline.projector();
    let mut actions = pipeline.actions();

    let workload = Workload::generate(&WorkloadSpec {
        sessions: 150,
        merchants: 3,
        seed: 20261126,
        ..WorkloadSpec::default()
    });
    let signer = WebhookSigner::new(&pipeline.secret).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let url = pipeline.webhook_url();
    let thirds: Vec<_> = workload
        .deliveries
        .chunks(workload.deliveries.len() / 3 + 1)
        .collect();
    let retry_for = Duration::from_secs(90);

    // Part 1, then the projector is killed and restarted.
    let mut acknowledged = Vec::new();
    let report = send_all(&client, &url, &signer, thirds[0], 8, retry_for).await;
    acknowledged.extend(report.acknowledged.iter().map(|&i| &thirds[0][i]));
    projector.signal("KILL");
    projector.wait(Duration::from_secs(10));
    projector = pipeline.projector();

    // Part 2 while ipp-actions is killed and restarted.
    let sending = send_all(&client, &url, &signer, thirds[1], 8, retry_for);
    let restart_actions = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        actions.signal("KILL");
        actions.wait(Duration::from_secs(10));
        pipeline.actions()
    };
    let (report, restarted) = tokio::join!(sending, restart_actions);
    actions = restarted;
    acknowledged.extend(report.acknowledged.iter().map(|&i| &thirds[1][i]));

    // Part 3 while ipp-ingest is killed and restarted: Kustom-like senders retry.
    ingest.signal("KILL");
    ingest.wait(Duration::from_secs(10));
    let sending = send_all(&client, &url, &signer, thirds[2], 8, retry_for);
    let restart_ingest = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pipeline.ingest()
    };
    let (report, restarted) = tokio::join!(sending, restart_ingest);
    ingest = restarted;
    assert!(
        report.retried_attempts > 0,
        "requests during the ingest outage were retried"
    );
    acknowledged.extend(report.acknowledged.iter().map(|&i| &thirds[2][i]));
    assert_eq!(
        acknowledged.len(),
        workload.deliveries.len(),
        "every delivery got its 200"
    );

    for (what, body, headers, status) in invalid_requests(&pipeline) {
        let mut request = client.post(&url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status(), status, "{what}");
    }

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(pipeline.database.url())
        .await
        .unwrap();
    settle(&pool, &[&workload], Duration::from_secs(240)).await;

    // Every acknowledged body is in the log exactly as sent, and nothing else is.
    let ipp_records = kafka::read_topic(&pipeline.brokers, &pipeline.ipp_topic);
    let other_records = kafka::read_topic(&pipeline.brokers, &pipeline.other_topic);
    let stored = |records: &[Record]| {
        records
            .iter()
            .map(|r| r.value.clone())
            .collect::<BTreeSet<_>>()
    };
    let (ipp_stored, other_stored) = (stored(&ipp_records), stored(&other_records));
    for delivery in &acknowledged {
        let topic = if delivery.is_ipp() {
            &ipp_stored
        } else {
            &other_stored
        };
        assert!(
            topic.contains(&delivery.body),
            "acknowledged {} missing",
            delivery.event_id
        );
    }
    // The simulator's own webhooks (one per capture it applied) are the other records.
    let sim_events: BTreeSet<String> = pipeline.sim.webhooks().await["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    let from_sim = |record: &Record| {
        serde_json::from_slice::<Value>(&record.value)
            .ok()
            .and_then(|body| body["id"].as_str().map(|id| sim_events.contains(id)))
            .unwrap_or(false)
    };
    let sent: BTreeSet<&Vec<u8>> = workload.deliveries.iter().map(|d| &d.body).collect();
    let flagged: Vec<&Record> = ipp_records
        .iter()
        .filter(|r| r.header(ipp_schemas::record::header::ROUTE_ERROR).is_some())
        .collect();
    assert_eq!(
        flagged.len(),
        2,
        "the two signed unusable bodies are stored, flagged"
    );
    for record in ipp_records.iter().chain(&other_records) {
        if flagged.iter().any(|f| std::ptr::eq(*f, record)) || from_sim(record) {
            continue;
        }
        assert!(
            sent.contains(&record.value),
            "a record nobody sent: {:?}",
            String::from_utf8_lossy(&record.value)
        );
        assert!(
            !String::from_utf8_lossy(&record.value).contains("kevt_invalid"),
            "an invalid request left a record"
        );
    }

    // The read model equals what the workload implies, session by session.
    let rows = sqlx::query(
        "SELECT session_id, merchant_id, status, order_id, failed_attempts, event_count FROM ipp_sessions",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), workload.sessions.len(), "one row per session");
    for row in rows {
        let session_id: Uuid = row.get("session_id");
        let expected = &workload.sessions[&session_id];
        assert_eq!(
            row.get::<String, _>("status"),
            expected.status,
            "status of {session_id}"
        );
        assert_eq!(
            row.get::<Option<Uuid>, _>("order_id"),
            expected.order_id,
            "order of {session_id}"
        );
        assert_eq!(
            row.get::<i32, _>("failed_attempts"),
            expected.failed_attempts,
            "{session_id}"
        );
        assert_eq!(
            row.get::<i32, _>("event_count"),
            expected.event_count,
            "{session_id}"
        );
        assert_eq!(
            row.get::<Option<String>, _>("merchant_id").as_deref(),
            Some(expected.merchant_id.as_str())
        );
    }
    let invalid: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE event_id LIKE 'kevt_invalid%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(invalid, 0, "invalid requests reached the read model");

    // Exactly one capture per finalized session, for the authorized amount.
    let stats: Value = reqwest::get(format!("{}/_sim/stats", pipeline.sim_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let captures: HashMap<String, u64> =
        serde_json::from_value(stats["captures_by_order"].clone()).unwrap();
    let finalized: BTreeMap<Uuid, Uuid> =
        workload.finalized_orders().map(|(s, o)| (o, s)).collect();
    assert_eq!(
        captures.len(),
        finalized.len(),
        "captured orders: {captures:?}"
    );
    for (order, session) in &finalized {
        assert_eq!(
            captures.get(&order.to_string()),
            Some(&1),
            "captures of order {order} (session {session})"
        );
        let order_state: Value = reqwest::get(format!("{}/_sim/orders/{order}", pipeline.sim_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            order_state["captured_amount"],
            ipp_om_sim::authorized_amount_for(order),
            "amount of {order}"
        );
    }
    let ledger = sqlx::query(
        "SELECT status, count(*) AS n FROM ipp_actions WHERE kind = 'capture' GROUP BY status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let ledger: BTreeMap<String, i64> = ledger
        .iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect();
    assert_eq!(
        ledger,
        BTreeMap::from([("succeeded".to_owned(), finalized.len() as i64)])
    );

    // Through the whole chain (the simulator's webhooks, ingest, ipp-actions' reads of
    // the order, its observations, the projector), every order ends in sync with Kustom,
    // each captured once for its authorized amount, and equal to a clean pass.
    assert_eq!(
        sim_events.len(),
        finalized.len(),
        "one capture.created per capture"
    );
    let expected_orders: BTreeMap<Uuid, i64> = finalized
        .keys()
        .map(|&order| (order, ipp_om_sim::authorized_amount_for(&order)))
        .collect();
    eventually(
        Duration::from_secs(120),
        "every order in sync with Kustom",
        || async { orders_in_sync(&pool).await == expected_orders },
    )
    .await;
    assert_orders_equal_a_clean_pass(&pipeline, &pool).await;

    for service in [&mut ingest, &mut projector, &mut actions] {
        assert!(service.is_running(), "{} died", service.name);
        service.signal("TERM");
        assert!(
            service.wait(Duration::from_secs(30)).success(),
            "{} exits cleanly",
            service.name
        );
    }
}

/// The orders `in_sync` with exactly one capture, whose captured amount, Kustom's and
/// ours, are the same: order → captured amount.
async fn orders_in_sync(pool: &PgPool) -> BTreeMap<Uuid, i64> {
    sqlx::query_as(
        "SELECT order_id, captured_amount FROM ipp_orders
         WHERE reconciliation_state = 'in_sync' AND cardinality(capture_ids) = 1
           AND cardinality(refund_ids) = 0 AND captured_amount = ledger_captured_amount",
    )
    .fetch_all(pool)
    .await
    .expect("ipp_orders")
    .into_iter()
    .collect()
}

/// A projector reading the whole log once, into a database of its own, ends with the
/// same orders tables as the live one (killed and restarted on the way).
async fn assert_orders_equal_a_clean_pass(pipeline: &Processes, live: &PgPool) {
    let expected = orders_tables(live).await;
    let database = TestDatabase::create().await;
    let mut config = pipeline.projector_config();
    config.database = inprocess::database(database.url());
    config.dlq_topic = kafka::create_topic(&pipeline.brokers, "e2e_clean_dlq", 1).await;
    config.group = unique_name("e2e_clean");
    config.orders_group = format!("{}-orders", config.group);
    let projector = TestProjector::spawn(config);
    let pool = database.pool().await;
    eventually(
        Duration::from_secs(60),
        "a clean pass over the log gives the same orders tables",
        || async {
            // Its migrations first, then the log.
            let migrated = sqlx::query("SELECT FROM ipp_orders LIMIT 1")
                .execute(&pool)
                .await
                .is_ok();
            migrated && orders_tables(&pool).await == expected
        },
    )
    .await;
    projector.stop().await;
}
