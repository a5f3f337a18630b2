//! The whole pipeline as separate processes: ipp-ingest, ipp-projector and ipp-actions
//! (the Order Management simulator in-process) against the test broker and a fresh
//! database. A generated workload goes in over signed HTTP while each service is
//! SIGKILLed and restarted once; what comes out must be exactly what the workload
//! implies.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use ipp_loadgen::{send_all, WebhookSigner, Workload, WorkloadSpec};
use ipp_tests::{
    kafka::{self, Record},
    pipeline::settle,
    processes::Processes,
    signer::Signer,
};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, Row};
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
    let pipeline = Processes::start().await;
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
        if flagged.iter().any(|f| std::ptr::eq(*f, record)) {
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
    let ledger = sqlx::query("SELECT status, count(*) AS n FROM ipp_actions GROUP BY status")
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

/// `--help` of every binary and subcommand shows which variables it reads but never a
/// value from the environment that may be secret.
#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let secrets = [
        (
            "DATABASE_URL",
            "postgres://ipp:hunter2-db@db.example:5432/ipp",
            "hunter2-db",
        ),
        (
            "KAFKA_PROPERTIES",
            "sasl.username=ipp,sasl.password=hunter2-kafka",
            "hunter2-kafka",
        ),
        ("KUSTOM_API_KEY", "kco_live_hunter2-api", "hunter2-api"),
        (
            "KUSTOM_WEBHOOK_SECRETS",
            "whsec_aHVudGVyMi13ZWJob29r",
            "aHVudGVyMi13ZWJob29r",
        ),
        ("OM_SIM_API_KEY", "hunter2-sim", "hunter2-sim"),
        (
            "OM_SIM_WEBHOOK_SECRET",
            "whsec_aHVudGVyMi1zaW0taG9vaw==",
            "aHVudGVyMi1zaW0taG9vaw",
        ),
        (
            "ACTIONS_API_TOKENS",
            "backoffice:hunter2-token",
            "hunter2-token",
        ),
    ];
    let commands: &[(&str, &[&str])] = &[
        ("ipp-ingest", &["--help"]),
        ("ipp-projector", &["--help"]),
        ("ipp-projector", &["rebuild", "--help"]),
        ("ipp-projector", &["replay", "--help"]),
        ("ipp-projector", &["status", "--help"]),
        ("ipp-projector", &["dlq", "list", "--help"]),
        ("ipp-actions", &["--help"]),
        ("ipp-actions", &["retry", "--help"]),
        ("ipp-actions", &["dlq", "redrive", "--help"]),
        ("ipp-actions", &["command", "issue", "--help"]),
        ("ipp-om-sim", &["--help"]),
    ];
    for (binary, args) in commands {
        let output = std::process::Command::new(ipp_tests::process::bin_path(binary))
            .args(*args)
            .env_clear()
            .envs(secrets.iter().map(|(name, value, _)| (name, value)))
            .output()
            .unwrap();
        assert!(output.status.success(), "{binary} {args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for (name, _, secret) in &secrets {
            assert!(
                !help.contains(secret),
                "`{binary} {}` prints {name}'s value",
                args.join(" ")
            );
        }
    }
}
