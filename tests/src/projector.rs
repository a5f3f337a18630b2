//! The projector under test (in-process, or a child process for the tests that SIGKILL
//! it), what it consumes and writes, and the oracle its read models are checked
//! against: a generated workload and the result of one clean pass over it.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
// The oracle folds with the projector's own pure session rule (not a crate-root item).
use ipp_projector::session::{fold, SessionEvent, SessionRow, Status};
use ipp_schemas::IppEvent;
use ipp_service::ListenArgs;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{
    inprocess::{add_properties, projector_config, Running, TestProjector},
    process::Service,
    produce::ipp_body,
    unique_name,
    wiring::Wiring,
};

pub const CREATED: &str = "ipp.session.created";
pub const ACTIVATED: &str = "ipp.session.activated";
pub const FINALIZED: &str = "ipp.session.finalized";
pub const CANCELLED: &str = "ipp.session.cancelled";
pub const FAILED: &str = "ipp.payment.failed";

/// A SIGKILLed member must leave the group quickly for the test to stay short.
pub const SHORT_SESSION: &[&str] = &["session.timeout.ms=6000", "heartbeat.interval.ms=500"];

/// What a projector consumes and writes (an event topic, its DLQ topic, a fresh
/// database) and a consumer group of its own.
pub struct Target {
    pub wiring: Wiring,
    pub group: String,
}

impl Target {
    /// Creates an event topic with `partitions` partitions, a DLQ topic and a database.
    pub async fn new(partitions: i32) -> Self {
        Self {
            wiring: Wiring::create(partitions, "ipp_dlq").await,
            group: unique_name("projector"),
        }
    }

    /// A projector of the target's group with batches of at most `batch_size` (waiting
    /// 50 ms for one to fill) and `kafka_properties` on top of the test's.
    pub fn config(&self, batch_size: u32, kafka_properties: &[&str]) -> ipp_projector::Config {
        let mut config = projector_config(
            &self.wiring.brokers,
            &self.wiring.topic,
            &self.wiring.dlq_topic,
            self.wiring.database.url(),
            &self.group,
        );
        config.batch_size = batch_size;
        config.batch_wait_ms = 50;
        add_properties(&mut config.kafka.properties, kafka_properties);
        config
    }

    pub async fn pool(&self) -> PgPool {
        self.wiring.database.pool().await
    }
}

/// A running projector.
pub type Projector = Running<ipp_projector::Error>;

impl Projector {
    pub fn spawn(config: ipp_projector::Config) -> Self {
        Self::InProcess(TestProjector::spawn(config))
    }

    /// The projector as a child process, on port 0: its address is the one it logs.
    pub fn spawn_process(mut config: ipp_projector::Config) -> Self {
        config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut service = Service::start(&config, &[]);
        let addr = service.listen_addr(Duration::from_secs(30));
        Self::Process { service, addr }
    }

    /// The events it applied, from its `/metrics` (0 while it does not answer).
    pub async fn events_applied(&self) -> f64 {
        self.metric("ipp_projector_events_applied_total", "").await
    }
}

/// How many distinct events the projector has stored.
pub const STORED_EVENTS: &str = "SELECT count(*) FROM ipp_events";
/// How many records the projector has applied, over all partitions.
pub const APPLIED_RECORDS: &str =
    "SELECT coalesce(sum(next_offset), 0)::int8 FROM ipp_projector_offsets";

/// Fails at once, rather than at a deadline, when a projector died on its own.
fn assert_running(projectors: &mut [&mut Projector]) {
    for projector in projectors {
        assert!(projector.is_running(), "ipp-projector exited unexpectedly");
    }
}

/// Polls `sql` (a single bigint) until it reaches `at_least`; returns the value seen.
pub async fn wait_for_count(
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

pub async fn stored_offsets(pool: &PgPool, group: &str, topic: &str) -> BTreeMap<i32, i64> {
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
pub async fn wait_for_offsets(
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
pub async fn wait_until_caught_up(
    pool: &PgPool,
    target: &Target,
    ends: &BTreeMap<i32, i64>,
    within: Duration,
    projector: &mut Projector,
) {
    wait_for_offsets(
        pool,
        &target.group,
        &target.wiring.topic,
        ends,
        within,
        &mut [projector],
    )
    .await;
}

pub async fn sessions_json(pool: &PgPool) -> Vec<Value> {
    sqlx::query_scalar("SELECT to_jsonb(s) - 'updated_at' FROM ipp_sessions s ORDER BY session_id")
        .fetch_all(pool)
        .await
        .expect("sessions")
}

/// Each partition's end offset (last offset + 1) among the `positions` produced.
pub fn ends_of(positions: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for &(partition, offset) in positions {
        let end = ends.entry(partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

/// The workload, produced at `positions`, ended exactly as one clean pass would:
/// each event stored once, every status and row as expected.
pub async fn assert_exact(pool: &PgPool, work: &Workload, positions: &[(i32, i64)]) {
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
pub struct Workload {
    pub bodies: Vec<Vec<u8>>,
    pub distinct_events: i64,
    pub expected_status: HashMap<Uuid, &'static str>,
}

pub fn workload(sessions: usize, seed: u64) -> Workload {
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

pub async fn assert_statuses(pool: &PgPool, expected: &HashMap<Uuid, &'static str>) {
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
pub struct CleanPass {
    pub sessions: BTreeMap<Uuid, SessionRow>,
    pub events: BTreeMap<String, (Value, i32, i64)>,
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

pub fn clean_pass(bodies: &[Vec<u8>], positions: &[(i32, i64)]) -> CleanPass {
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

pub async fn assert_clean_pass(pool: &PgPool, expected: &CleanPass) {
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
