//! ipp-projector against a real broker and a real PostgreSQL: exact read models under
//! any arrival order, duplicates, SIGKILLs, a shared consumer group and poison records.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use ipp_projector::session::{fold, SessionEvent, SessionRow, Status};
use ipp_schemas::{
    record::{dlq, header},
    IppEvent,
};
use ipp_tests::{
    db, free_port, kafka,
    process::Service,
    produce::{ipp_body, Producer},
    services::{projector_env, Wiring},
    unique_name,
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

const CREATED: &str = "ipp.session.created";
const ACTIVATED: &str = "ipp.session.activated";
const FINALIZED: &str = "ipp.session.finalized";
const CANCELLED: &str = "ipp.session.cancelled";
const FAILED: &str = "ipp.payment.failed";

/// A SIGKILLed member must leave the group quickly for the test to stay short.
const SHORT_SESSION: &str = "session.timeout.ms=6000,heartbeat.interval.ms=500";

struct Projector {
    service: Service,
    http_port: u16,
}

impl Projector {
    /// The `/metrics` text, or the error of a projector that does not answer (yet).
    async fn metrics(&self) -> reqwest::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        reqwest::get(url).await?.text().await
    }
}

/// What a projector consumes and writes: an event topic, its DLQ topic, a fresh
/// database and a consumer group of its own.
struct Target {
    brokers: String,
    topic: String,
    dlq: String,
    database_url: String,
    group: String,
    _database: db::TestDatabase,
}

impl Target {
    /// Creates an event topic with `partitions` partitions, a DLQ topic and a database.
    async fn new(partitions: i32) -> Self {
        let Wiring {
            brokers,
            topic,
            dlq_topic,
            database_url,
            database,
        } = Wiring::create(partitions, "ipp_dlq").await;
        Self {
            group: unique_name("projector"),
            brokers,
            topic,
            dlq: dlq_topic,
            database_url,
            _database: database,
        }
    }
}

/// How many distinct events the projector has stored.
const STORED_EVENTS: &str = "SELECT count(*) FROM ipp_events";
/// How many records the projector has applied, over all partitions.
const APPLIED_RECORDS: &str =
    "SELECT coalesce(sum(next_offset), 0)::int8 FROM ipp_projector_offsets";

/// `IPP_TEST_KAFKA_PROPERTIES` adds librdkafka settings to every projector the tests
/// start (e.g. `debug=cgrp` when chasing a rebalance).
fn with_test_properties(properties: &str) -> String {
    let extra = std::env::var("IPP_TEST_KAFKA_PROPERTIES").unwrap_or_default();
    [properties, extra.as_str()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

fn spawn_projector(target: &Target, batch_size: u32) -> Projector {
    spawn_projector_with(target, batch_size, "")
}

/// `kafka_properties`: extra librdkafka settings, comma-separated.
fn spawn_projector_with(target: &Target, batch_size: u32, kafka_properties: &str) -> Projector {
    let http_port = free_port();
    let mut env = projector_env(
        &target.brokers,
        &target.topic,
        &target.dlq,
        &target.database_url,
        &target.group,
    );
    env.extend([
        ("PROJECTOR_HTTP", format!("127.0.0.1:{http_port}")),
        ("PROJECTOR_BATCH_SIZE", batch_size.to_string()),
        ("PROJECTOR_BATCH_WAIT_MS", "50".to_owned()),
        ("KAFKA_PROPERTIES", with_test_properties(kafka_properties)),
    ]);
    let service = Service::spawn("ipp-projector", &[], &env);
    Projector { service, http_port }
}

async fn connect(url: &str) -> PgPool {
    PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Fails at once, rather than at a deadline, when a projector died on its own.
fn assert_running(projectors: &mut [&mut Projector]) {
    for projector in projectors {
        assert!(
            projector.service.is_running(),
            "ipp-projector exited unexpectedly"
        );
    }
}

/// Polls `sql` (a single bigint) until it reaches `at_least`; returns the value seen.
async fn wait_for_count(
    pool: &PgPool,
    sql: &str,
    at_least: i64,
    within: Duration,
    running: &mut [&mut Projector],
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        assert_running(running);
        // The table appears once the projector has migrated.
        let seen: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0);
        if seen >= at_least {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "`{sql}` is {seen} after {within:?}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored_offsets(pool: &PgPool, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    sqlx::query(
        "SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await
    // Before the projector has migrated, the table does not exist: nothing stored yet.
    .unwrap_or_default()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Waits until the stored offsets of `group` reach `ends` on every partition.
async fn wait_for_offsets(
    pool: &PgPool,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    within: Duration,
    running: &mut [&mut Projector],
) {
    let deadline = Instant::now() + within;
    loop {
        assert_running(running);
        let stored = stored_offsets(pool, group, topic).await;
        if ends.iter().all(|(p, end)| stored.get(p) >= Some(end)) {
            assert_eq!(&stored, ends, "stored offsets overshoot the topic");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "offsets {stored:?} did not reach {ends:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the projector (the only one running) stored the `ends` of every
/// partition of the target's topic.
async fn wait_until_caught_up(
    pool: &PgPool,
    target: &Target,
    ends: &BTreeMap<i32, i64>,
    within: Duration,
    projector: &mut Projector,
) {
    wait_for_offsets(
        pool,
        &target.group,
        &target.topic,
        ends,
        within,
        &mut [projector],
    )
    .await;
}

async fn sessions_json(pool: &PgPool) -> Vec<Value> {
    sqlx::query_scalar("SELECT to_jsonb(s) - 'updated_at' FROM ipp_sessions s ORDER BY session_id")
        .fetch_all(pool)
        .await
        .expect("sessions")
}

/// Each partition's end offset (last offset + 1) among the `positions` produced.
fn ends_of(positions: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for &(partition, offset) in positions {
        let end = ends.entry(partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

/// SIGKILLs the projector: its group membership lives on until its session (6 s) expires,
/// and the next member is assigned its partitions then.
fn kill(projector: &mut Projector) {
    projector.service.signal("KILL");
    projector.service.wait(Duration::from_secs(10));
}

/// SIGTERMs the projector and asserts it shuts down gracefully (exit 0).
fn stop_gracefully(projector: &mut Projector) {
    let status = projector.service.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// The workload, produced at `positions`, ended exactly as one clean pass would:
/// each event stored once, every status and row as expected.
async fn assert_exact(pool: &PgPool, work: &Workload, positions: &[(i32, i64)]) {
    let distinct: i64 = sqlx::query_scalar(STORED_EVENTS)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(distinct, work.distinct_events, "each event stored once");
    assert_statuses(pool, &work.expected_status).await;
    assert_clean_pass(pool, &clean_pass(&work.bodies, positions)).await;
}

/// A workload: bodies in production order (shuffled, with duplicates) and what each
/// session's status must end up as.
struct Workload {
    bodies: Vec<Vec<u8>>,
    distinct_events: i64,
    expected_status: HashMap<Uuid, &'static str>,
}

fn workload(sessions: usize, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let run = Uuid::new_v4().simple().to_string();
    let base = Utc.with_ymd_and_hms(2026, 6, 5, 18, 0, 0).unwrap();
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut expected_status = HashMap::new();
    for s in 0..sessions {
        let session = Uuid::new_v4();
        let merchant = format!("M{}", s % 7);
        let t0 = base + chrono::Duration::seconds(s as i64 * 10);
        let at = |rng: &mut StdRng, offset: i64| {
            t0 + chrono::Duration::seconds(offset)
                + chrono::Duration::nanoseconds(rng.random_range(0..1_000_000_000))
        };
        let mut plan: Vec<(&str, DateTime<Utc>)> = vec![(CREATED, at(&mut rng, 0))];
        if rng.random_bool(0.85) {
            plan.push((ACTIVATED, at(&mut rng, 1)));
        }
        for k in 0..rng.random_range(0..3) {
            plan.push((FAILED, at(&mut rng, 2 + k)));
        }
        let roll: f64 = rng.random();
        let status = if roll < 0.03 {
            plan.push((FINALIZED, at(&mut rng, 6)));
            plan.push((CANCELLED, at(&mut rng, 5)));
            "finalized"
        } else if roll < 0.6 {
            plan.push((FINALIZED, at(&mut rng, 6)));
            "finalized"
        } else if roll < 0.85 {
            plan.push((CANCELLED, at(&mut rng, 6)));
            "cancelled"
        } else if plan.iter().any(|(t, _)| *t == ACTIVATED) {
            "activated"
        } else {
            "created"
        };
        expected_status.insert(session, status);
        let order = Uuid::new_v4();
        for (k, (event_type, when)) in plan.into_iter().enumerate() {
            events.push(ipp_body(
                &format!("kevt_{run}_{s}_{k}"),
                event_type,
                &merchant,
                session,
                when,
                (event_type == FINALIZED).then_some(order),
                (event_type == FAILED).then_some("card_declined"),
            ));
        }
    }
    let distinct_events = events.len() as i64;
    events.shuffle(&mut rng);
    // Webhook retries: about one event in ten arrives again later.
    let mut duplicates: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, body) in events.iter().enumerate() {
        if rng.random_bool(0.1) {
            duplicates.push((rng.random_range(i + 1..=events.len()), body.clone()));
        }
    }
    duplicates.sort_by_key(|(position, _)| *position);
    for (position, body) in duplicates.into_iter().rev() {
        let position = position.min(events.len());
        events.insert(position, body);
    }
    Workload {
        bodies: events,
        distinct_events,
        expected_status,
    }
}

async fn assert_statuses(pool: &PgPool, expected: &HashMap<Uuid, &'static str>) {
    let rows = sqlx::query("SELECT session_id, status FROM ipp_sessions")
        .fetch_all(pool)
        .await
        .expect("sessions");
    assert_eq!(rows.len(), expected.len(), "one row per session");
    for row in rows {
        let session: Uuid = row.get(0);
        let status: String = row.get(1);
        assert_eq!(status, expected[&session], "status of session {session}");
    }
}

/// The result of a single clean pass, computed in the test: every session folded
/// over its distinct events (timestamps at PostgreSQL's microseconds), and every event
/// id stored once with its first copy's payload and position.
struct CleanPass {
    sessions: BTreeMap<Uuid, SessionRow>,
    events: BTreeMap<String, (Value, i32, i64)>,
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

fn clean_pass(bodies: &[Vec<u8>], positions: &[(i32, i64)]) -> CleanPass {
    let mut by_session: BTreeMap<Uuid, Vec<SessionEvent>> = BTreeMap::new();
    let mut events: BTreeMap<String, (Value, i32, i64)> = BTreeMap::new();
    for (body, &(partition, offset)) in bodies.iter().zip(positions) {
        let event = IppEvent::parse(body).unwrap();
        let first = events.entry(event.id().to_owned()).or_insert((
            serde_json::from_slice(body).unwrap(),
            partition,
            offset,
        ));
        if (partition, offset) < (first.1, first.2) {
            *first = (serde_json::from_slice(body).unwrap(), partition, offset);
        }
        let envelope = event.envelope;
        by_session
            .entry(envelope.data.session_id)
            .or_default()
            .push(SessionEvent {
                event_id: envelope.id,
                event_type: envelope.event_type,
                merchant_id: envelope.merchant_id,
                order_id: envelope.data.order_id,
                failure_reason: envelope.data.failure_reason,
                occurred_at: envelope.timestamp,
            });
    }
    let sessions = by_session
        .iter()
        .map(|(id, events)| {
            let mut row = fold(*id, events).unwrap();
            for at in [
                &mut row.created_at,
                &mut row.activated_at,
                &mut row.finalized_at,
                &mut row.cancelled_at,
            ] {
                *at = at.map(micros);
            }
            row.last_event_at = micros(row.last_event_at);
            (*id, row)
        })
        .collect();
    CleanPass { sessions, events }
}

async fn assert_clean_pass(pool: &PgPool, expected: &CleanPass) {
    let rows = sqlx::query(
        "SELECT session_id, merchant_id, status, order_id, created_at, activated_at,
                finalized_at, cancelled_at, failed_attempts, last_failure_reason,
                last_event_id, last_event_at, event_count, anomalies
         FROM ipp_sessions",
    )
    .fetch_all(pool)
    .await
    .expect("sessions");
    let sessions: BTreeMap<Uuid, SessionRow> = rows
        .iter()
        .map(|row| {
            let status = match row.get::<String, _>(2).as_str() {
                "created" => Status::Created,
                "activated" => Status::Activated,
                "finalized" => Status::Finalized,
                "cancelled" => Status::Cancelled,
                other => panic!("unknown status {other}"),
            };
            let session = SessionRow {
                session_id: row.get(0),
                merchant_id: row.get(1),
                status,
                order_id: row.get(3),
                created_at: row.get(4),
                activated_at: row.get(5),
                finalized_at: row.get(6),
                cancelled_at: row.get(7),
                failed_attempts: row.get(8),
                last_failure_reason: row.get(9),
                last_event_id: row.get(10),
                last_event_at: row.get(11),
                event_count: row.get(12),
                anomalies: row.get(13),
            };
            (session.session_id, session)
        })
        .collect();
    assert_eq!(
        sessions.len(),
        expected.sessions.len(),
        "one row per session"
    );
    for (id, row) in &expected.sessions {
        assert_eq!(sessions.get(id), Some(row), "session {id}");
    }

    let rows =
        sqlx::query("SELECT event_id, payload, kafka_partition, kafka_offset FROM ipp_events")
            .fetch_all(pool)
            .await
            .expect("events");
    let events: BTreeMap<String, (Value, i32, i64)> = rows
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
        .collect();
    assert_eq!(
        events.len(),
        expected.events.len(),
        "each event stored once"
    );
    assert!(
        events == expected.events,
        "ipp_events holds each event's first copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_repeatedly_the_projector_still_ends_exact() {
    let target = Target::new(4).await;
    let work = workload(400, 7);
    let producer = Producer::new(&target.brokers, &target.topic);
    let pool = connect(&target.database_url).await;

    // Four rounds: produce a quarter, let a projector get into it, SIGKILL it. The next
    // one starts at once and joins the group while the killed member is still in it.
    let quarter = work.bodies.len().div_ceil(4);
    let mut positions = Vec::new();
    let mut produced = 0usize;
    for chunk in work.bodies.chunks(quarter) {
        positions.extend(producer.send_events_at(chunk).await);
        produced += chunk.len();
        let halfway = (produced - chunk.len() / 2) as i64;
        let mut projector = spawn_projector_with(&target, 20, SHORT_SESSION);
        let seen = wait_for_count(
            &pool,
            APPLIED_RECORDS,
            halfway,
            Duration::from_secs(60),
            &mut [&mut projector],
        )
        .await;
        kill(&mut projector);
        eprintln!("killed the projector at {seen} of {produced} records");
    }

    let ends = ends_of(&positions);
    let mut last = spawn_projector_with(&target, 20, SHORT_SESSION);
    wait_until_caught_up(&pool, &target, &ends, Duration::from_secs(60), &mut last).await;
    stop_gracefully(&mut last);
    assert_exact(&pool, &work, &positions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_in_one_group_one_stopped_midway_stay_exact() {
    let target = Target::new(4).await;
    let work = workload(400, 11);
    let pool = connect(&target.database_url).await;
    let positions = Producer::new(&target.brokers, &target.topic)
        .send_events_at(&work.bodies)
        .await;
    let ends = ends_of(&positions);
    // Both join the new group at the same moment.
    let mut first = spawn_projector_with(&target, 5, SHORT_SESSION);
    let mut second = spawn_projector_with(&target, 5, SHORT_SESSION);

    wait_for_count(
        &pool,
        STORED_EVENTS,
        work.distinct_events / 3,
        Duration::from_secs(60),
        &mut [&mut first, &mut second],
    )
    .await;
    stop_gracefully(&mut first);

    // The second takes over the partitions the first gave up.
    wait_until_caught_up(&pool, &target, &ends, Duration::from_secs(60), &mut second).await;
    stop_gracefully(&mut second);
    assert_exact(&pool, &work, &positions).await;
}

/// Cooperative (incremental) rebalancing: a member joining takes partitions from the
/// others without stopping them, and hands them back when it leaves; the stored offsets
/// decide where each new owner starts, so nothing is applied twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_member_joining_and_leaving_while_records_flow_keeps_the_read_model_exact() {
    let target = Target::new(6).await;
    let work = workload(600, 31);
    let producer = Producer::new(&target.brokers, &target.topic);
    let pool = connect(&target.database_url).await;
    let mut first = spawn_projector(&target, 20);
    let mut second = spawn_projector(&target, 20);

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
    let mut third = spawn_projector(&target, 20);
    let joined = Instant::now();
    while events_applied(&third).await == 0.0 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the third member was given no partition within 60 s"
        );
        assert!(produce_next().await, "{LASTS}");
    }
    for _ in 0..3 {
        assert!(produce_next().await, "{LASTS}");
    }
    stop_gracefully(&mut third);
    while produce_next().await {}
    let ends = ends_of(&positions);
    wait_for_offsets(
        &pool,
        &target.group,
        &target.topic,
        &ends,
        Duration::from_secs(60),
        &mut [&mut first, &mut second],
    )
    .await;
    stop_gracefully(&mut first);
    stop_gracefully(&mut second);
    assert_exact(&pool, &work, &positions).await;
}

/// The events a projector applied, from its `/metrics` (0 while it does not answer).
async fn events_applied(projector: &Projector) -> f64 {
    let text = projector.metrics().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("ipp_projector_events_applied_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_with_provenance_and_later_records_apply() {
    let target = Target::new(1).await;
    let producer = Producer::new(&target.brokers, &target.topic);
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

    let mut projector = spawn_projector(&target, 500);
    let pool = connect(&target.database_url).await;
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

    let parked = kafka::read_topic(&target.brokers, &target.dlq);
    assert_eq!(parked.len(), 6, "every poison record is parked once");
    for record in &parked {
        assert_eq!(
            record.header(dlq::SOURCE_TOPIC),
            Some(target.topic.as_str())
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
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", projector.http_port))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    stop_gracefully(&mut projector);
}

/// Not how ingest keys records, but what a re-keyed or hand-fed topic could hold: a
/// session's events spread over partitions that two projectors apply concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_partitions_still_fold_over_all_their_events() {
    let target = Target::new(4).await;
    let work = workload(150, 23);
    let producer = Producer::new(&target.brokers, &target.topic);
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

    let pool = connect(&target.database_url).await;
    let mut first = spawn_projector(&target, 5);
    let mut second = spawn_projector(&target, 5);
    wait_for_offsets(
        &pool,
        &target.group,
        &target.topic,
        &ends,
        Duration::from_secs(120),
        &mut [&mut first, &mut second],
    )
    .await;
    first.service.signal("TERM");
    second.service.signal("TERM");
    first.service.wait(Duration::from_secs(30));
    second.service.wait(Duration::from_secs(30));

    assert_exact(&pool, &work, &positions).await;
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../schemas/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_examples_project_to_the_expected_rows() {
    let target = Target::new(2).await;
    let producer = Producer::new(&target.brokers, &target.topic);
    let activated = fixture("documented-session-activated.json");
    let finalized = fixture("documented-session-finalized.json");
    let ends = producer
        .send_events(&[finalized.clone(), activated.clone(), finalized.clone()])
        .await;

    let mut projector = spawn_projector(&target, 500);
    let pool = connect(&target.database_url).await;
    wait_until_caught_up(
        &pool,
        &target,
        &ends,
        Duration::from_secs(60),
        &mut projector,
    )
    .await;
    projector.service.terminate(Duration::from_secs(30));

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
    let database_url = database.url().to_owned();
    let env = [("DATABASE_URL", database_url.clone())];
    // Another service's migration already applied: the projector must ignore it.
    let pool = connect(&database_url).await;
    let mut first = Service::spawn("ipp-projector", &["migrate"], &env);
    let mut second = Service::spawn("ipp-projector", &["migrate"], &env);
    assert!(first.wait(Duration::from_secs(60)).success());
    assert!(second.wait(Duration::from_secs(60)).success());

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1001]);
    for table in ["ipp_events", "ipp_sessions", "ipp_projector_offsets"] {
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
        let producer = Producer::compressing(&target.brokers, &target.topic, codec);
        positions.extend(producer.send_events_at(chunk).await);
    }
    let mut projector = spawn_projector(&target, 500);
    let pool = connect(&target.database_url).await;
    let ends = ends_of(&positions);
    wait_until_caught_up(
        &pool,
        &target,
        &ends,
        Duration::from_secs(60),
        &mut projector,
    )
    .await;
    stop_gracefully(&mut projector);
    assert_exact(&pool, &work, &positions).await;
    assert!(
        kafka::read_topic(&target.brokers, &target.dlq).is_empty(),
        "nothing was parked"
    );
}

/// A topic that does not exist is an error the operator sees (not ready, logged), never
/// a new one-partition topic; once created, the projector starts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_keeps_the_projector_not_ready_and_is_never_created() {
    let mut target = Target::new(1).await;
    target.topic = unique_name("ipp_events_not_created_yet");
    let mut projector = spawn_projector(&target, 500);
    let readyz = format!("http://127.0.0.1:{}/readyz", projector.http_port);
    ipp_tests::process::wait_for_tcp(projector.http_port, Duration::from_secs(30));
    for _ in 0..10 {
        let status = reqwest::get(&readyz).await.expect("readyz").status();
        assert_eq!(status, 503, "ready without its topic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(projector.service.is_running(), "waits for the topic");
    assert!(
        !kafka::topic_exists(&target.brokers, &target.topic),
        "the projector created its topic"
    );

    kafka::create_named_topic(&target.brokers, &target.topic, 2).await;
    let producer = Producer::new(&target.brokers, &target.topic);
    let ends = producer
        .send_events(&[fixture("documented-session-activated.json")])
        .await;
    let pool = connect(&target.database_url).await;
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
    stop_gracefully(&mut projector);
}
