//! The projector's two ways of writing a batch: `COPY` (binary, the fast path) and
//! `INSERT … ON CONFLICT` (the fallback when a row was stored meanwhile). Both must
//! store exactly the same rows, and a collision must cost a retry, never a stall.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use ipp_projector::{
    engine::{
        self as store, BatchOutcome, ConsumedRecord, Engine, EngineMode, NewEvent, WriteMode,
    },
    session::SessionEvent,
};
use ipp_schemas::RecordHeaders;
use ipp_tests::{db, produce::ipp_body};
use rdkafka::{message::OwnedMessage, Timestamp};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A migrated database (dropped with the guard) and a pool on it.
async fn migrated_database() -> (db::TestDatabase, PgPool) {
    let database = db::fresh_database().await;
    let url = database.url();
    let pool = PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    store::migrate(&pool).await.unwrap();
    (database, pool)
}

struct Spec {
    event_id: &'static str,
    event_type: &'static str,
    merchant_id: Option<&'static str>,
    session: u128,
    at: DateTime<Utc>,
    order: Option<u128>,
    failure_reason: Option<&'static str>,
}

/// `spec` in copy `copy` of the set: its own event id and session.
fn event(spec: &Spec, copy: u128, offset: i64) -> NewEvent {
    let session_id = Uuid::from_u128(copy * 10 + spec.session);
    let event_id = format!("{}_{copy}", spec.event_id);
    let event_id = event_id.as_str();
    let order_id = spec.order.map(Uuid::from_u128);
    let payload = String::from_utf8(ipp_body(
        event_id,
        spec.event_type,
        spec.merchant_id.unwrap_or("M1"),
        session_id,
        spec.at,
        order_id,
        spec.failure_reason,
    ))
    .unwrap();
    // A body without merchant_id, as Kustom may send: the column is then NULL.
    let payload = match spec.merchant_id {
        Some(_) => payload,
        None => payload.replace(r#""merchant_id":"M1","#, ""),
    };
    NewEvent {
        session_id,
        event: SessionEvent {
            event_id: event_id.into(),
            event_type: spec.event_type.into(),
            merchant_id: spec.merchant_id.map(Into::into),
            order_id,
            failure_reason: spec.failure_reason.map(Into::into),
            occurred_at: spec.at,
        },
        received_at: Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789),
        kafka_partition: 2,
        kafka_offset: offset,
        payload,
    }
}

/// Sessions in the test batches: enough that a batch takes the `COPY` path, which
/// starts at 32 rows.
const COPIES: u128 = 40;

/// Events that exercise every column: nanoseconds (kept in the payload, cut in the
/// columns), an instant before 2000 (where cutting rounds toward zero), NULLs, text that
/// needs escaping in JSON, both terminal events (an anomaly array) and a late `created`.
/// Ordered by spec, then copy: each spec's events of all copies are adjacent.
fn tricky_events() -> Vec<NewEvent> {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let specs = [
        Spec {
            event_id: "kevt_a1",
            event_type: "ipp.session.activated",
            merchant_id: Some("M1"),
            session: 1,
            at: at("2026-06-05T18:37:41.232733416Z"),
            order: None,
            failure_reason: None,
        },
        Spec {
            event_id: "kevt_a2",
            event_type: "ipp.payment.failed",
            merchant_id: Some("M1"),
            session: 1,
            at: at("2026-06-05T18:37:42.000000999Z"),
            order: None,
            failure_reason: Some("card \"declined\"\\ über\n\ttab"),
        },
        Spec {
            event_id: "kevt_a3",
            event_type: "ipp.session.finalized",
            merchant_id: Some("M1"),
            session: 1,
            at: at("2026-06-05T18:37:43.5Z"),
            order: Some(7),
            failure_reason: None,
        },
        Spec {
            event_id: "kevt_a4",
            event_type: "ipp.session.cancelled",
            merchant_id: Some("M2"),
            session: 1,
            at: at("2026-06-05T18:37:44Z"),
            order: None,
            failure_reason: None,
        },
        Spec {
            event_id: "kevt_a0",
            event_type: "ipp.session.created",
            merchant_id: Some("M1"),
            session: 1,
            at: at("2026-06-05T18:37:40.999999999Z"),
            order: None,
            failure_reason: None,
        },
        Spec {
            event_id: "kevt_b1",
            event_type: "ipp.session.created",
            merchant_id: None,
            session: 2,
            at: at("1999-12-31T23:59:59.999999999Z"),
            order: None,
            failure_reason: None,
        },
        Spec {
            event_id: "kevt_b2",
            event_type: "ipp.session.expired",
            merchant_id: None,
            session: 2,
            at: at("1999-12-31T23:59:59.000000500Z"),
            order: None,
            failure_reason: None,
        },
    ];
    let mut events = Vec::new();
    for spec in &specs {
        for copy in 0..COPIES {
            events.push(event(spec, copy, 100 + events.len() as i64));
        }
    }
    events
}

/// The events of specs `from..to`, for every copy.
fn specs(events: &[NewEvent], from: usize, to: usize) -> &[NewEvent] {
    let copies = COPIES as usize;
    &events[from * copies..to * copies]
}

/// Every stored row of both tables, as JSON, minus `updated_at` (the write time).
async fn all_rows(pool: &PgPool) -> (Vec<Value>, Vec<Value>) {
    let events = sqlx::query_scalar("SELECT to_jsonb(e) FROM ipp_events e ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let sessions = sqlx::query_scalar(
        "SELECT to_jsonb(s) - 'updated_at' FROM ipp_sessions s ORDER BY session_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (events, sessions)
}

async fn store_in(pool: &PgPool, batches: &[&[NewEvent]], mode: WriteMode) {
    for batch in batches {
        let mut tx = pool.begin().await.unwrap();
        store::store_batch(&mut tx, batch, mode).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn copy_and_on_conflict_store_identical_rows() {
    let events = tricky_events();
    // One batch, then the same events split so sessions gain events across batches
    // (new rows by COPY, changed rows by upsert) with duplicates in between.
    let splits: [Vec<&[NewEvent]>; 2] = [
        vec![&events],
        vec![
            specs(&events, 0, 2),
            specs(&events, 1, 4),
            specs(&events, 3, 7),
        ],
    ];
    for batches in &splits {
        let (_copy_db, by_copy) = migrated_database().await;
        let (_insert_db, by_insert) = migrated_database().await;
        store_in(&by_copy, batches, WriteMode::Copy).await;
        store_in(&by_insert, batches, WriteMode::OnConflict).await;
        let (copied_events, copied_sessions) = all_rows(&by_copy).await;
        let (inserted_events, inserted_sessions) = all_rows(&by_insert).await;
        assert_eq!(copied_events.len(), events.len());
        assert_eq!(copied_sessions.len(), 2 * COPIES as usize);
        assert_eq!(copied_events, inserted_events);
        assert_eq!(copied_sessions, inserted_sessions);

        let session = |id: u128| {
            let id = Uuid::from_u128(id).to_string();
            copied_sessions
                .iter()
                .find(|row| row["session_id"] == id.as_str())
                .unwrap()
        };
        let first = session(1);
        assert_eq!(first["status"], "finalized");
        assert_eq!(
            first["anomalies"],
            serde_json::json!(["conflicting_merchant_ids", "finalized_and_cancelled"])
        );
        assert_eq!(first["created_at"], "2026-06-05T18:37:40.999999+00:00");
        assert_eq!(
            first["last_failure_reason"],
            "card \"declined\"\\ über\n\ttab"
        );
        let late = session(2);
        assert_eq!(late["merchant_id"], Value::Null);
        // sqlx cuts toward 2000-01-01: this instant just before it becomes 2000-01-01.
        assert_eq!(late["created_at"], "2000-01-01T00:00:00+00:00");
        let raw: String = sqlx::query_scalar(
            "SELECT payload->>'timestamp' FROM ipp_events WHERE event_id = 'kevt_a1_0'",
        )
        .fetch_one(&by_copy)
        .await
        .unwrap();
        assert_eq!(raw, "2026-06-05T18:37:41.232733416Z");
    }
}

#[tokio::test]
async fn a_copy_that_collides_is_retried_with_on_conflict() {
    let (_database, pool) = migrated_database().await;
    let events = tricky_events();
    // An event id already stored under another session: the session read of the batch
    // cannot see it, so the COPY hits the primary key.
    let mut reused = events[0].clone();
    reused.session_id = Uuid::from_u128(99);
    let outcome = collide_then_apply(&pool, &events, reused).await;
    assert_eq!(outcome.applied.len(), events.len() - 1);
    assert_eq!(outcome.duplicates, 1);
    assert_eq!(outcome.next.get(&2), Some(&(100 + events.len() as i64)));

    let owners: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT event_id, session_id FROM ipp_events ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(owners.len(), events.len());
    assert!(owners.contains(&("kevt_a1_0".into(), Uuid::from_u128(99))));
    let counts: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT session_id, event_count FROM ipp_sessions ORDER BY session_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(counts.len(), 2 * COPIES as usize + 1);
    for (session, events) in [(1, 4), (2, 2), (11, 5), (12, 2), (99, 1)] {
        assert!(
            counts.contains(&(Uuid::from_u128(session), events)),
            "session {session} should count {events} events: {counts:?}"
        );
    }
}

#[tokio::test]
async fn a_small_batch_that_collides_is_retried_with_on_conflict() {
    let (_database, pool) = migrated_database().await;
    // Too few events for a COPY: they go in with the batch's last statement, which has
    // no ON CONFLICT either.
    let events = tricky_events()[..3].to_vec();
    let mut reused = events[1].clone();
    reused.session_id = Uuid::from_u128(99);
    let outcome = collide_then_apply(&pool, &events, reused).await;
    assert_eq!(outcome.applied.len(), 2);
    assert_eq!(outcome.duplicates, 1);
    let next = 1 + events.iter().map(|e| e.kafka_offset).max().unwrap();
    assert_eq!(outcome.next.get(&2), Some(&next));
    assert_eq!(outcome.all_offsets, HashMap::from([(2, next)]));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 3);
}

/// Stores `reused` (an event of `events` under another session, which the batch's session
/// read cannot see), checks that writing `events` without `ON CONFLICT` hits the primary
/// key, then applies them through the engine, which must retry with `ON CONFLICT`.
async fn collide_then_apply(pool: &PgPool, events: &[NewEvent], reused: NewEvent) -> BatchOutcome {
    store::project(pool, &[reused]).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let error = store::store_batch(&mut tx, events, WriteMode::Copy)
        .await
        .unwrap_err();
    assert!(error.is_unique_violation(), "{}", error.chain());
    drop(tx);

    let engine = Engine::new(
        pool,
        "ipp.events",
        EngineMode::Shadow {
            group: "write-paths",
        },
        0,
        Default::default(),
    );
    let records: Vec<ConsumedRecord> = events.iter().map(record).collect();
    engine.apply(&records, None).await.unwrap()
}

/// The Kafka record ingest would have written for `event`.
fn record(event: &NewEvent) -> ConsumedRecord {
    let headers = RecordHeaders {
        event_id: event.event.event_id.clone(),
        event_type: event.event.event_type.clone(),
        merchant_id: event.event.merchant_id.clone(),
        webhook_id: format!("msg_{}", event.event.event_id),
        webhook_timestamp: "1780000000".into(),
        received_at: event.received_at,
    };
    ConsumedRecord::copy_of(&OwnedMessage::new(
        Some(event.payload.clone().into_bytes()),
        Some(event.session_id.to_string().into_bytes()),
        "ipp.events".into(),
        Timestamp::NotAvailable,
        event.kafka_partition,
        event.kafka_offset,
        Some(headers.to_kafka()),
    ))
}
