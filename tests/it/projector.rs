//! ipp-projector against a real broker and a real PostgreSQL: exact read models under
//! any arrival order, duplicates, SIGKILLs, a shared consumer group and poison records.
//! In-process, except the SIGKILLs and the `migrate` command (child processes).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use ipp_schemas::{dlq::header as dlq, record::header, IppEvent};
use ipp_tests::{
    db, fixture,
    inprocess::projector_config,
    kafka,
    process::{ChildConfig, Service},
    produce::{ipp_body, Producer},
    projector::{
        assert_exact, ends_of, sessions_json, wait_for_count, wait_for_offsets,
        wait_until_caught_up, workload, Projector, Target, ACTIVATED, APPLIED_RECORDS, CREATED,
        FINALIZED, SHORT_SESSION, STORED_EVENTS,
    },
    unique_name,
};
use rand::Rng;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_repeatedly_the_projector_still_ends_exact() {
    let target = Target::new(4).await;
    let work = workload(400, 7);
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let pool = target.pool().await;

    // Four rounds: produce a quarter, let a projector get into it, SIGKILL it. The next
    // one starts at once and joins the group while the killed member is still in it.
    let quarter = work.bodies.len().div_ceil(4);
    let mut positions = Vec::new();
    let mut produced = 0usize;
    for chunk in work.bodies.chunks(quarter) {
        positions.extend(producer.send_events_at(chunk).await);
        produced += chunk.len();
        let halfway = (produced - chunk.len() / 2) as i64;
        let mut projector = Projector::spawn_process(target.config(20, SHORT_SESSION));
        let seen = wait_for_count(
            &pool,
            APPLIED_RECORDS,
            halfway,
            Duration::from_secs(60),
            &mut [&mut projector],
        )
        .await;
        projector.kill();
        eprintln!("killed the projector at {seen} of {produced} records");
    }

    let ends = ends_of(&positions);
    let mut last = Projector::spawn_process(target.config(20, SHORT_SESSION));
    wait_until_caught_up(&pool, &target, &ends, Duration::from_secs(60), &mut last).await;
    last.stop().await;
    assert_exact(&pool, &work, &positions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_in_one_group_one_stopped_midway_stay_exact() {
    let target = Target::new(4).await;
    let work = workload(400, 11);
    let pool = target.pool().await;
    let positions = Producer::new(&target.wiring.brokers, &target.wiring.topic)
        .send_events_at(&work.bodies)
        .await;
    let ends = ends_of(&positions);
    // Both join the new group at the same moment.
    let mut first = Projector::spawn(target.config(5, SHORT_SESSION));
    let mut second = Projector::spawn(target.config(5, SHORT_SESSION));

    wait_for_count(
        &pool,
        STORED_EVENTS,
        work.distinct_events / 3,
        Duration::from_secs(60),
        &mut [&mut first, &mut second],
    )
    .await;
    first.stop().await;

    // The second takes over the partitions the first gave up.
    wait_until_caught_up(&pool, &target, &ends, Duration::from_secs(60), &mut second).await;
    second.stop().await;
    assert_exact(&pool, &work, &positions).await;
}

/// Cooperative (incremental) rebalancing: a member joining takes partitions from the
/// others without stopping them, and hands them back when it leaves; the stored offsets
/// decide where each new owner starts, so nothing is applied twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_member_joining_and_leaving_while_records_flow_keeps_the_read_model_exact() {
    let target = Target::new(6).await;
    let work = workload(600, 31);
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let pool = target.pool().await;
    let mut first = Projector::spawn(target.config(20, &[]));
    let mut second = Projector::spawn(target.config(20, &[]));

    // Records keep flowing, a chunk every 200 ms, while the third member joins, gets
    // partitions of its own (a cooperative rebalance takes a few heartbeats) and leaves.
    let mut chunks = work.bodies.chunks(work.bodies.len().div_ceil(100));
    let mut positions = Vec::new();
    // Produces the next chunk; false once the workload is all produced.
    let mut produce_next = async || {
        let Some(chunk) = chunks.next() else {
            return false;
        };
        positions.extend(producer.send_events_at(chunk).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        true
    };
    const LASTS: &str = "the workload lasts until the third member left";
    for _ in 0..3 {
        assert!(produce_next().await, "{LASTS}");
    }
    let third = Projector::spawn(target.config(20, &[]));
    let joined = Instant::now();
    while third.events_applied().await == 0.0 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the third member was given no partition within 60 s"
        );
        assert!(produce_next().await, "{LASTS}");
    }
    for _ in 0..3 {
        assert!(produce_next().await, "{LASTS}");
    }
    third.stop().await;
    while produce_next().await {}
    let ends = ends_of(&positions);
    wait_for_offsets(
        &pool,
        &target.group,
        &target.wiring.topic,
        &ends,
        Duration::from_secs(60),
        &mut [&mut first, &mut second],
    )
    .await;
    first.stop().await;
    second.stop().await;
    assert_exact(&pool, &work, &positions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_with_provenance_and_later_records_apply() {
    let target = Target::new(1).await;
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let at = Utc.with_ymd_and_hms(2026, 6, 5, 18, 30, 0).unwrap();
    let run = Uuid::new_v4().simple().to_string();
    let before = Uuid::new_v4();
    let after = Uuid::new_v4();

    producer
        .send_event(&ipp_body(
            &format!("kevt_{run}_a"),
            CREATED,
            "M1",
            before,
            at,
            None,
            None,
        ))
        .await;
    // Poison 1: not JSON at all, with ingest-like headers.
    let not_json = b"{\"id\": \"kevt_broken\", \"type\": \"ipp.session.created\"".to_vec();
    let headers = ipp_schemas::RecordHeaders {
        event_id: "kevt_broken".into(),
        event_type: CREATED.into(),
        merchant_id: Some("M1".into()),
        webhook_id: "msg_poison".into(),
        webhook_timestamp: "1780000000".into(),
        received_at: at,
    };
    let (_, not_json_offset) = producer
        .send_raw(Some(b"key-1"), Some(&not_json), headers.to_kafka())
        .await;
    // Poison 2: valid JSON, but the session id is not a UUID.
    let bad_session = format!(
        r#"{{"id":"kevt_{run}_bad","merchant_id":"M1","timestamp":"2026-06-05T18:30:01Z","type":"ipp.session.created","data":{{"session_id":"not-a-uuid"}}}}"#
    );
    producer.send_event(bad_session.as_bytes()).await;
    // Poison 3: finalized without an order id.
    producer
        .send_event(&ipp_body(
            &format!("kevt_{run}_noorder"),
            FINALIZED,
            "M1",
            before,
            at,
            None,
            None,
        ))
        .await;
    // Poison 4: a valid event without any headers.
    let headerless = ipp_body(
        &format!("kevt_{run}_nohdr"),
        CREATED,
        "M1",
        before,
        at,
        None,
        None,
    );
    producer
        .send_raw(
            Some(before.to_string().as_bytes()),
            Some(&headerless),
            OwnedHeaders::new(),
        )
        .await;
    // Poison 5: a Kustom event that is not ipp.*.
    let capture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/fixtures/capture-created.json"
    ))
    .unwrap();
    producer
        .send_raw(
            Some(b"kevt_0Capture0000000000001"),
            Some(&capture),
            Producer::headers_for(&capture).to_kafka().insert(Header {
                key: "x-extra",
                value: Some("kept"),
            }),
        )
        .await;
    // Poison 6: passes every check but is too big for PostgreSQL's primary key index.
    let huge_id: String = format!(
        "kevt_{}",
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(8000)
            .map(char::from)
            .collect::<String>()
    );
    producer
        .send_event(&ipp_body(&huge_id, CREATED, "M1", before, at, None, None))
        .await;
    let (_, last_offset) = producer
        .send_event(&ipp_body(
            &format!("kevt_{run}_z"),
            ACTIVATED,
            "M1",
            after,
            at,
            None,
            None,
        ))
        .await;

    let mut projector = Projector::spawn(target.config(500, &[]));
    let pool = target.pool().await;
    wait_until_caught_up(
        &pool,
        &target,
        &BTreeMap::from([(0, last_offset + 1)]),
        Duration::from_secs(60),
        &mut projector,
    )
    .await;

    let statuses: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT session_id, status FROM ipp_sessions ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected = vec![
        (before, "created".to_owned()),
        (after, "activated".to_owned()),
    ];
    expected.sort();
    let mut statuses = statuses;
    statuses.sort();
    assert_eq!(
        statuses, expected,
        "records before and after the poison applied"
    );
    let stored: i64 = sqlx::query_scalar(STORED_EVENTS)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);

    let parked = kafka::read_topic(&target.wiring.brokers, &target.wiring.dlq_topic);
    assert_eq!(parked.len(), 6, "every poison record is parked once");
    for record in &parked {
        assert_eq!(
            record.header(dlq::SOURCE_TOPIC),
            Some(target.wiring.topic.as_str())
        );
        assert_eq!(record.header(dlq::SOURCE_PARTITION), Some("0"));
        assert_eq!(record.header(dlq::SERVICE), Some("ipp-projector"));
        assert!(record.header(dlq::FAILED_AT).is_some());
        assert!(!record.header(dlq::ERROR).unwrap_or_default().is_empty());
    }
    let offsets: Vec<i64> = parked
        .iter()
        .map(|r| r.header(dlq::SOURCE_OFFSET).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (not_json_offset..not_json_offset + 6).collect::<Vec<_>>()
    );
    let broken = &parked[0];
    assert_eq!(broken.value, not_json, "value kept byte for byte");
    assert_eq!(broken.key_str(), Some("key-1"));
    assert_eq!(broken.header(header::WEBHOOK_ID), Some("msg_poison"));
    assert!(parked[1]
        .header(dlq::ERROR)
        .unwrap()
        .contains("invalid data"));
    assert!(parked[2]
        .header(dlq::ERROR)
        .unwrap()
        .contains("no order_id"));
    assert!(parked[3].header(dlq::ERROR).unwrap().contains("header"));
    assert!(parked[4]
        .header(dlq::ERROR)
        .unwrap()
        .contains("capture.created"));
    assert_eq!(parked[4].header("x-extra"), Some("kept"));
    assert!(parked[5]
        .header(dlq::ERROR)
        .unwrap()
        .contains("rejected by PostgreSQL"));

    let metrics = projector.metrics().await.expect("GET /metrics");
    assert!(
        metrics.contains("ipp_projector_dead_letters_total 6"),
        "{metrics}"
    );
    let ready = reqwest::get(format!("{}/readyz", projector.url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    projector.stop().await;
}

/// Not how ingest keys records, but what a re-keyed or hand-fed topic could hold: a
/// session's events spread over partitions that two projectors apply concurrently (one
/// with a single lane, one with the default lanes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_partitions_still_fold_over_all_their_events() {
    let target = Target::new(4).await;
    let mut single_lane = target.config(5, &[]);
    single_lane.apply_lanes = 1;
    spread_sessions_fold(&target, vec![target.config(5, &[]), single_lane]).await;
}

/// The same within one projector: its lanes apply the partitions side by side, each in
/// its own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_of_one_projector_fold_sessions_spread_over_their_partitions() {
    let target = Target::new(4).await;
    let mut config = target.config(5, &[]);
    config.apply_lanes = 4;
    spread_sessions_fold(&target, vec![config]).await;
}

/// Sends a workload keyed by event id (so each session's events land in several
/// partitions), runs `projectors` until they applied it all and checks the rows.
async fn spread_sessions_fold(target: &Target, projectors: Vec<ipp_projector::Config>) {
    let work = workload(150, 23);
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let mut positions = Vec::with_capacity(work.bodies.len());
    for body in &work.bodies {
        let event = IppEvent::parse(body).unwrap();
        let position = producer
            .send_raw(
                Some(event.id().as_bytes()),
                Some(body),
                Producer::headers_for(body).to_kafka(),
            )
            .await;
        positions.push(position);
    }
    let ends = ends_of(&positions);
    assert!(ends.len() > 1, "events spread over several partitions");

    let pool = target.pool().await;
    let mut running: Vec<Projector> = projectors.into_iter().map(Projector::spawn).collect();
    let mut refs: Vec<&mut Projector> = running.iter_mut().collect();
    wait_for_offsets(
        &pool,
        &target.group,
        &target.wiring.topic,
        &ends,
        Duration::from_secs(120),
        &mut refs,
    )
    .await;
    futures::future::join_all(running.into_iter().map(Projector::stop)).await;

    assert_exact(&pool, &work, &positions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_examples_project_to_the_expected_rows() {
    let target = Target::new(2).await;
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let activated = fixture("documented-session-activated.json");
    let finalized = fixture("documented-session-finalized.json");
    let ends = producer
        .send_events(&[finalized.clone(), activated.clone(), finalized.clone()])
        .await;

    let mut projector = Projector::spawn(target.config(500, &[]));
    let pool = target.pool().await;
    wait_until_caught_up(
        &pool,
        &target,
        &ends,
        Duration::from_secs(60),
        &mut projector,
    )
    .await;
    projector.stop().await;

    let sessions = sessions_json(&pool).await;
    let expected: Vec<Value> = vec![
        serde_json::json!({
            "session_id": "c749c48d-df11-4ae3-8e5f-2c8491b16214",
            "merchant_id": "DM11917000",
            "status": "activated",
            "order_id": null,
            "created_at": null,
            "activated_at": "2026-06-05T18:37:41.232733+00:00",
            "finalized_at": null,
            "cancelled_at": null,
            "failed_attempts": 0,
            "last_failure_reason": null,
            "last_event_id": "kevt_754uIatTW0hmi10Gggqe2H",
            "last_event_at": "2026-06-05T18:37:41.232733+00:00",
            "event_count": 1,
            "anomalies": [],
        }),
        serde_json::json!({
            "session_id": "dc01aa86-fb99-4d05-97dc-e79a22650f9a",
            "merchant_id": "DM11917000",
            "status": "finalized",
            "order_id": "ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f",
            "created_at": null,
            "activated_at": null,
            "finalized_at": "2026-06-05T18:33:39.60892+00:00",
            "cancelled_at": null,
            "failed_attempts": 0,
            "last_failure_reason": null,
            "last_event_id": "kevt_62EvxyMEaAaHSGeoDTza47",
            "last_event_at": "2026-06-05T18:33:39.60892+00:00",
            "event_count": 1,
            "anomalies": [],
        }),
    ];
    assert_eq!(sessions, expected);

    let events = sqlx::query(
        "SELECT event_id, event_type, merchant_id, session_id, order_id, failure_reason,
                occurred_at, payload, kafka_offset
         FROM ipp_events ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        events.len(),
        2,
        "the duplicate finalized event is stored once"
    );
    let row = &events[1];
    assert_eq!(row.get::<String, _>(0), "kevt_754uIatTW0hmi10Gggqe2H");
    assert_eq!(row.get::<String, _>(1), ACTIVATED);
    assert_eq!(row.get::<Option<Uuid>, _>(4), None);
    assert_eq!(
        row.get::<Value, _>(7),
        serde_json::from_slice::<Value>(&activated).unwrap(),
        "payload is the raw body as jsonb"
    );
    let row = &events[0];
    assert_eq!(row.get::<String, _>(0), "kevt_62EvxyMEaAaHSGeoDTza47");
    assert_eq!(
        row.get::<Option<Uuid>, _>(4),
        Some("ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f".parse().unwrap())
    );
    assert_eq!(
        row.get::<DateTime<Utc>, _>(6),
        "2026-06-05T18:33:39.608920Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
    );
    // The first copy wins: the finalized event was produced first, at offset 0 of
    // its partition.
    assert_eq!(row.get::<i64, _>(8), 0);
    // Nanoseconds survive in the payload.
    assert_eq!(
        row.get::<Value, _>(7)["timestamp"],
        "2026-06-05T18:33:39.608920367Z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_both_succeed() {
    let database = db::fresh_database().await;
    let config = projector_config(
        &kafka::brokers(),
        "ipp_events",
        "ipp_events_dlq",
        database.url(),
        "ipp-projector",
    );
    let env = config.env();
    // Another service's migration already applied: the projector must ignore it.
    let pool = database.pool().await;
    let mut first = Service::spawn("ipp-projector", &["migrate"], &env);
    let mut second = Service::spawn("ipp-projector", &["migrate"], &env);
    assert!(first.wait(Duration::from_secs(60)).success());
    assert!(second.wait(Duration::from_secs(60)).success());

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1001, 1002, 1003]);
    for table in [
        "ipp_events",
        "ipp_sessions",
        "ipp_projector_offsets",
        "ipp_order_facts",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(exists, "{table} exists");
    }

    // A migration of ipp-actions (2001+) in the same table does not stop the projector.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (2001, 'actions ledger', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut again = Service::spawn("ipp-projector", &["migrate"], &env);
    assert!(again.wait(Duration::from_secs(60)).success());
}

/// Other producers may compress their batches: every codec librdkafka knows (zstd
/// included) is read and projected like uncompressed records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_compressed_by_other_producers_are_projected() {
    let target = Target::new(2).await;
    let work = workload(120, 41);
    let codecs = ["zstd", "lz4", "gzip", "snappy"];
    let chunks = work.bodies.chunks(work.bodies.len().div_ceil(8));
    let mut positions = Vec::new();
    for (codec, chunk) in codecs.iter().cycle().zip(chunks) {
        let producer = Producer::compressing(&target.wiring.brokers, &target.wiring.topic, codec);
        positions.extend(producer.send_events_at(chunk).await);
    }
    let mut projector = Projector::spawn(target.config(500, &[]));
    let pool = target.pool().await;
    let ends = ends_of(&positions);
    wait_until_caught_up(
        &pool,
        &target,
        &ends,
        Duration::from_secs(60),
        &mut projector,
    )
    .await;
    projector.stop().await;
    assert_exact(&pool, &work, &positions).await;
    assert!(
        kafka::read_topic(&target.wiring.brokers, &target.wiring.dlq_topic).is_empty(),
        "nothing was parked"
    );
}

/// A topic that does not exist is an error the operator sees (not ready, logged), never
/// a new one-partition topic; once created, the projector starts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_keeps_the_projector_not_ready_and_is_never_created() {
    let mut target = Target::new(1).await;
    target.wiring.topic = unique_name("ipp_events_not_created_yet");
    let mut projector = Projector::spawn(target.config(500, &[]));
    let readyz = format!("{}/readyz", projector.url());
    for _ in 0..10 {
        let status = reqwest::get(&readyz).await.expect("readyz").status();
        assert_eq!(status, 503, "ready without its topic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(projector.is_running(), "waits for the topic");
    assert!(
        !kafka::topic_exists(&target.wiring.brokers, &target.wiring.topic),
        "the projector created its topic"
    );

    kafka::create_named_topic(&target.wiring.brokers, &target.wiring.topic, 2).await;
    let producer = Producer::new(&target.wiring.brokers, &target.wiring.topic);
    let ends = producer
        .send_events(&[fixture("documented-session-activated.json")])
        .await;
    let pool = target.pool().await;
    wait_until_caught_up(
        &pool,
        &target,
        &ends,
        Duration::from_secs(60),
        &mut projector,
    )
    .await;
    let status = reqwest::get(&readyz).await.expect("readyz").status();
    assert_eq!(status, 200);
    projector.stop().await;
}
