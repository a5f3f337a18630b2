//! Property: every arrival order of a session's events, with duplicates and any
//! split into transactions, yields the same `ipp_sessions` row through the real
//! store (PostgreSQL), equal to the fold over the distinct events.

use chrono::{TimeZone, Utc};
use ipp_projector::{
    engine::{self as store, NewEvent},
    session::{fold, SessionEvent},
};
use ipp_tests::{db, produce::ipp_body};
use proptest::prelude::*;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const CREATED: &str = "ipp.session.created";
const ACTIVATED: &str = "ipp.session.activated";
const FINALIZED: &str = "ipp.session.finalized";
const CANCELLED: &str = "ipp.session.cancelled";
const FAILED: &str = "ipp.payment.failed";

async fn connect(url: &str) -> PgPool {
    PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

const TYPES: &[&str] = &[
    CREATED,
    ACTIVATED,
    FINALIZED,
    "ipp.payment.finalized",
    CANCELLED,
    FAILED,
    "ipp.session.expired",
];

#[derive(Debug, Clone)]
struct Spec {
    event_type: usize,
    second: i64,
    nanos: u32,
    merchant: u8,
    order: u8,
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    // Few distinct instants, several within one microsecond: ties are common.
    let spec = (
        0..TYPES.len(),
        0i64..3,
        prop::sample::select(vec![0u32, 1, 999, 500_000]),
        0u8..6,
        0u8..6,
    )
        .prop_map(|(event_type, second, nanos, merchant, order)| Spec {
            event_type,
            second,
            nanos,
            merchant,
            order,
        });
    prop::collection::vec(spec, 1..9)
}

fn events(session: Uuid, specs: &[Spec]) -> Vec<NewEvent> {
    let base = Utc.with_ymd_and_hms(2026, 6, 5, 18, 0, 0).unwrap();
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let event_type = TYPES[spec.event_type];
            let occurred_at = base
                + chrono::Duration::seconds(spec.second)
                + chrono::Duration::nanoseconds(spec.nanos.into());
            // Rarely a second merchant or order, to exercise the anomalies.
            let merchant = if spec.merchant == 0 { "M2" } else { "M1" };
            let order_id = event_type
                .ends_with("finalized")
                .then(|| Uuid::from_u128(u128::from(spec.order == 0)));
            let failure_reason = (event_type == FAILED).then(|| format!("reason-{}", spec.order));
            let event_id = format!("kevt_{}_{i}", session.simple());
            let payload = String::from_utf8(ipp_body(
                &event_id,
                event_type,
                merchant,
                session,
                occurred_at,
                order_id,
                failure_reason.as_deref(),
            ))
            .unwrap();
            NewEvent {
                session_id: session,
                event: SessionEvent {
                    event_id,
                    event_type: event_type.to_owned(),
                    merchant_id: Some(merchant.to_owned()),
                    order_id,
                    failure_reason,
                    occurred_at,
                },
                received_at: Utc::now(),
                kafka_partition: 0,
                kafka_offset: i as i64,
                payload,
            }
        })
        .collect()
}

/// Arrival order: indices into the distinct events, with duplicates, shuffled,
/// plus where transactions end.
fn arrivals(n: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        Just((0..n).collect::<Vec<_>>()),
        prop::collection::vec(0..n, 0..5),
    )
        .prop_flat_map(|(all, dups)| {
            let mut order = all;
            order.extend(dups);
            let len = order.len();
            (
                Just(order).prop_shuffle(),
                prop::collection::vec(1..=len, 0..4),
            )
        })
}

/// The row without the session id (each run uses its own session) and without
/// `updated_at`; `last_event_id` reduced to its index.
async fn row(pool: &PgPool, session: Uuid) -> Value {
    sqlx::query_scalar(
        "SELECT (to_jsonb(s) - 'updated_at' - 'session_id' - 'last_event_id')
                || jsonb_build_object('last', split_part(last_event_id, '_', 3))
         FROM ipp_sessions s WHERE session_id = $1",
    )
    .bind(session)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn project_in_order(pool: &PgPool, distinct: &[NewEvent], order: &[usize], cuts: &[usize]) {
    let mut cuts: Vec<usize> = cuts.to_vec();
    cuts.push(order.len());
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts {
        let batch: Vec<NewEvent> = order[start..cut.max(start)]
            .iter()
            .map(|i| distinct[*i].clone())
            .collect();
        store::project(pool, &batch).await.unwrap();
        start = cut.max(start);
    }
}

#[test]
fn any_arrival_order_with_duplicates_gives_the_same_session_row() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_database, pool) = runtime.block_on(async {
        let database = db::fresh_database().await;
        let pool = connect(database.url()).await;
        store::migrate(&pool).await.unwrap();
        (database, pool)
    });
    let config = ProptestConfig {
        cases: 48,
        // Integration tests have no lib.rs beside them to persist failures next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        (specs, (first, first_cuts), (second, second_cuts)) in specs().prop_flat_map(|specs| {
            let n = specs.len();
            (Just(specs), arrivals(n), arrivals(n))
        })
    )| {
        runtime.block_on(async {
            let one = Uuid::new_v4();
            let other = Uuid::new_v4();
            let one_events = events(one, &specs);
            let other_events = events(other, &specs);
            project_in_order(&pool, &one_events, &first, &first_cuts).await;
            project_in_order(&pool, &other_events, &second, &second_cuts).await;
            let row_one = row(&pool, one).await;
            let row_other = row(&pool, other).await;
            assert_eq!(&row_one, &row_other, "same events, different arrival order");

            let plain: Vec<SessionEvent> = one_events.iter().map(|e| e.event.clone()).collect();
            let expected = fold(one, &plain).unwrap();
            assert_eq!(row_one["status"], expected.status.as_str());
            assert_eq!(row_one["event_count"], expected.event_count);
            assert_eq!(row_one["failed_attempts"], expected.failed_attempts);
            assert_eq!(row_one["anomalies"], serde_json::json!(expected.anomalies));
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE session_id = $1")
                .bind(one)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(stored, specs.len() as i64, "each distinct event stored once");
        });
    });
}
