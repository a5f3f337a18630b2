//! Claims against a real PostgreSQL (`TEST_DATABASE_URL`, a fresh database per test):
//! a renewed claim cannot be taken, and once it ran out and another worker took it, the
//! stale owner can neither renew it nor write anything.

use std::{future::Future, time::Duration};

use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::*;

const LEASE: Duration = Duration::from_secs(30);

/// Runs `test` on a freshly migrated database, dropped afterwards (also on failure).
async fn with_database<F, Fut>(test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("ipp_actions_claims_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server).await.expect("connect");
    // Runtime SQL: a database name is an identifier.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let (base, _) = server.rsplit_once('/').expect("a database in the url");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect the test database");
    migrate(&pool).await.expect("migrate");
    let outcome = tokio::spawn(test(pool.clone())).await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn record_one(pool: &PgPool) -> Uuid {
    let order_id = Uuid::new_v4();
    let new = NewAction {
        order_id,
        action: CAPTURE.into(),
        kind: CommandKind::Capture.into(),
        session_id: Some(Uuid::new_v4()),
        merchant_id: None,
        event_id: format!("kevt_{}", Uuid::new_v4().simple()),
        event_type: None,
        command: None,
        source_topic: "ipp.events".into(),
        source_partition: 0,
        source_offset: 0,
        skip_reason: None,
        traceparent: None,
    };
    assert!(record(pool, &new).await.expect("record"));
    order_id
}

/// What a worker that stopped renewing leaves behind once its lease ran out (instead of
/// waiting for it).
async fn let_the_lease_run_out(pool: &PgPool, order_id: Uuid) {
    sqlx::query(
        "UPDATE ipp_actions SET next_attempt_at = now() - interval '1 ms' WHERE order_id = $1",
    )
    .bind(order_id)
    .execute(pool)
    .await
    .expect("expire");
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Row {
    status: String,
    attempts: i32,
    claim_token: Option<Uuid>,
    requested_amount: Option<i64>,
    capture_id: Option<String>,
    last_error: Option<String>,
}

async fn row(pool: &PgPool, order_id: Uuid) -> Row {
    sqlx::query_as(
        "SELECT status, attempts, claim_token, requested_amount, capture_id, last_error \
         FROM ipp_actions WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
    .expect("row")
}

#[tokio::test]
async fn a_renewed_claim_cannot_be_taken_and_a_stale_owner_writes_nothing() {
    with_database(|pool| async move {
        let order_id = record_one(&pool).await;
        let first = claim_due(&pool, 10, LEASE).await.expect("claim");
        assert_eq!(first.len(), 1);
        let stale = first[0].claim_token;
        assert!(claim_due(&pool, 10, LEASE).await.unwrap().is_empty());
        assert_eq!(renew(&pool, &[stale], LEASE).await.unwrap(), vec![stale]);
        assert!(
            claim_due(&pool, 10, LEASE).await.unwrap().is_empty(),
            "a renewed claim was taken"
        );

        // The owner froze; its lease ran out; another worker takes the action.
        let_the_lease_run_out(&pool, order_id).await;
        assert!(
            renew(&pool, &[stale], LEASE).await.unwrap().is_empty(),
            "a lease that ran out was renewed"
        );
        let second = claim_due(&pool, 10, LEASE).await.expect("claim again");
        assert_eq!(second.len(), 1);
        let owner = second[0].claim_token;
        assert_ne!(owner, stale);
        assert_eq!(second[0].attempts, 2);

        // The stale owner wakes up: every write is refused, the row is the new owner's.
        let before = row(&pool, order_id).await;
        assert!(renew(&pool, &[stale], LEASE).await.unwrap().is_empty());
        assert_eq!(
            capture_requested(&pool, order_id, CAPTURE, stale, 100)
                .await
                .unwrap(),
            None
        );
        let stale_outcome = Outcome {
            capture_id: Some("stale".into()),
            captured_amount: Some(100),
            ..Outcome::default()
        };
        assert!(!finish(
            &pool,
            order_id,
            CAPTURE,
            stale,
            Status::Succeeded,
            &stale_outcome
        )
        .await
        .unwrap());
        assert!(!reschedule(
            &pool,
            order_id,
            CAPTURE,
            stale,
            Duration::ZERO,
            Some(503),
            "stale"
        )
        .await
        .unwrap());
        assert_eq!(row(&pool, order_id).await, before);
        assert_eq!(before.claim_token, Some(owner));

        // The new owner's writes go through and release the claim.
        assert_eq!(
            capture_requested(&pool, order_id, CAPTURE, owner, 250)
                .await
                .unwrap(),
            Some(250)
        );
        let outcome = Outcome {
            capture_id: Some("cap_1".into()),
            captured_amount: Some(250),
            ..Outcome::default()
        };
        assert!(
            finish(&pool, order_id, CAPTURE, owner, Status::Succeeded, &outcome)
                .await
                .unwrap()
        );
        assert!(!finish(
            &pool,
            order_id,
            CAPTURE,
            stale,
            Status::Failed,
            &Outcome::default()
        )
        .await
        .unwrap());
        let after = row(&pool, order_id).await;
        assert_eq!(
            after,
            Row {
                status: "succeeded".into(),
                attempts: 2,
                claim_token: None,
                requested_amount: Some(250),
                capture_id: Some("cap_1".into()),
                last_error: None,
            }
        );
        assert!(renew(&pool, &[owner], LEASE).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_rescheduled_action_is_released_and_claimed_again_with_a_new_token() {
    with_database(|pool| async move {
        let order_id = record_one(&pool).await;
        let first = claim_due(&pool, 10, LEASE).await.unwrap();
        let token = first[0].claim_token;
        assert!(reschedule(
            &pool,
            order_id,
            CAPTURE,
            token,
            Duration::ZERO,
            Some(503),
            "busy"
        )
        .await
        .unwrap());
        let released = row(&pool, order_id).await;
        assert_eq!(released.claim_token, None);
        assert_eq!(released.last_error.as_deref(), Some("busy"));
        assert!(renew(&pool, &[token], LEASE).await.unwrap().is_empty());
        let again = claim_due(&pool, 10, LEASE).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].claim_token, token);
    })
    .await;
}

#[tokio::test]
async fn concurrent_claims_never_share_an_action() {
    with_database(|pool| async move {
        for _ in 0..60 {
            record_one(&pool).await;
        }
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let batch = claim_due(&pool, 7, LEASE).await.expect("claim");
                        if batch.is_empty() {
                            return mine;
                        }
                        mine.extend(batch.into_iter().map(|a| a.order_id));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for claimer in claimers {
            all.extend(claimer.await.unwrap());
        }
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 60, "every action claimed");
        assert_eq!(distinct.len(), 60, "no action claimed twice");
    })
    .await;
}

fn refund_command(order_id: Uuid, amount: i64) -> NewAction {
    let command = Command {
        command_id: Uuid::new_v4(),
        order_id,
        kind: CommandKind::Refund,
        amount: Some(amount),
        reference: None,
        description: None,
        issued_by: "test".into(),
        idempotency_key: None,
        issued_at: Utc::now(),
    };
    NewAction::command(&command, "ipp.commands", 0, 1)
}

#[tokio::test]
async fn an_orders_actions_run_one_at_a_time_in_the_order_they_were_recorded() {
    with_database(|pool| async move {
        let order_id = record_one(&pool).await;
        let refund = refund_command(order_id, 100);
        assert!(record(&pool, &refund).await.unwrap());
        let later = refund_command(order_id, 200);
        assert!(record(&pool, &later).await.unwrap());
        // Another order's action is not held up by this one.
        let other = record_one(&pool).await;

        let claimed = claim_due(&pool, 10, LEASE).await.unwrap();
        let mut actions: Vec<_> = claimed
            .iter()
            .map(|a| (a.order_id, a.action.clone()))
            .collect();
        actions.sort();
        let mut expected = vec![(order_id, CAPTURE.to_owned()), (other, CAPTURE.to_owned())];
        expected.sort();
        assert_eq!(
            actions, expected,
            "only the first action of each order is claimed"
        );

        // The capture failed to run and waits for a retry: the refund still waits behind it.
        let capture = claimed.iter().find(|a| a.order_id == order_id).unwrap();
        assert!(reschedule(
            &pool,
            order_id,
            CAPTURE,
            capture.claim_token,
            Duration::ZERO,
            None,
            "503"
        )
        .await
        .unwrap());
        let again = claim_due(&pool, 10, LEASE).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].action, CAPTURE);

        let done = Outcome::default();
        assert!(finish(
            &pool,
            order_id,
            CAPTURE,
            again[0].claim_token,
            Status::Succeeded,
            &done
        )
        .await
        .unwrap());
        let next = claim_due(&pool, 10, LEASE).await.unwrap();
        assert_eq!(next.len(), 1, "then the first refund, alone");
        assert_eq!(next[0].action, refund.action);
        assert_eq!(next[0].requested_amount, Some(100));
        assert_eq!(next[0].kind, "refund");
        // A refused refund ends `failed`: it does not block the one behind it.
        assert!(finish(
            &pool,
            order_id,
            &refund.action,
            next[0].claim_token,
            Status::Failed,
            &done
        )
        .await
        .unwrap());
        let last = claim_due(&pool, 10, LEASE).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].action, later.action);
    })
    .await;
}

#[tokio::test]
async fn a_capture_command_without_an_amount_is_the_same_command_after_its_amount_was_decided() {
    with_database(|pool| async move {
        let order_id = Uuid::new_v4();
        let mut capture = refund_command(order_id, 1);
        capture.kind = CommandKind::Capture.into();
        let fields = capture.command.as_mut().unwrap();
        fields.amount = None;
        let command_id = fields.command_id;
        capture.action = command_action(CommandKind::Capture, command_id);
        assert!(record(&pool, &capture).await.unwrap());
        let claimed = claim_due(&pool, 1, LEASE).await.unwrap();
        let decided = capture_requested(
            &pool,
            order_id,
            &capture.action,
            claimed[0].claim_token,
            600,
        );
        assert_eq!(decided.await.unwrap(), Some(600));
        let (_, _, recorded) = recorded_command(&pool, command_id).await.unwrap().unwrap();
        assert_eq!(
            Some(recorded),
            capture.command,
            "a redelivery is not another command"
        );
    })
    .await;
}

#[tokio::test]
async fn a_command_is_recorded_once_whatever_its_redeliveries() {
    with_database(|pool| async move {
        let order_id = Uuid::new_v4();
        let refund = refund_command(order_id, 100);
        assert!(record(&pool, &refund).await.unwrap());
        assert!(!record(&pool, &refund).await.unwrap());
        let fields = refund.command.clone().unwrap();
        let (order, kind, recorded) = recorded_command(&pool, fields.command_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (order, kind.as_str(), recorded),
            (order_id, "refund", fields.clone())
        );
        // The same command id for another order is not a second row either.
        let mut elsewhere = refund.clone();
        elsewhere.order_id = Uuid::new_v4();
        assert!(!record(&pool, &elsewhere).await.unwrap());
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_actions")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(count, 1);
    })
    .await;
}

fn observe_row(order_id: Uuid) -> NewAction {
    let event_id = format!("kevt_{}", Uuid::new_v4().simple());
    NewAction::observe(
        order_id,
        &event_id,
        "capture.created",
        None,
        "kustom.events",
        0,
        1,
    )
}

#[tokio::test]
async fn reads_of_an_order_neither_wait_behind_nor_hold_back_its_money_actions() {
    with_database(|pool| async move {
        let order_id = record_one(&pool).await;
        // A read recorded after the capture, and a refund recorded after the read.
        let read = observe_row(order_id);
        assert!(record(&pool, &read).await.unwrap());
        let refund = refund_command(order_id, 100);
        assert!(record(&pool, &refund).await.unwrap());

        let claimed = claim_due(&pool, 10, LEASE).await.unwrap();
        let mut actions: Vec<_> = claimed.iter().map(|a| a.action.clone()).collect();
        actions.sort();
        // The read runs beside the pending capture; the refund waits for the capture only.
        assert_eq!(actions, vec![CAPTURE.to_owned(), read.action.clone()]);
        let capture = claimed.iter().find(|a| a.action == CAPTURE).unwrap();
        let done = Outcome::default();
        assert!(finish(
            &pool,
            order_id,
            CAPTURE,
            capture.claim_token,
            Status::Succeeded,
            &done
        )
        .await
        .unwrap());
        // The read is still pending (claimed): the refund does not wait for it.
        let next = claim_due(&pool, 10, LEASE).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].action, refund.action);
    })
    .await;
}

#[tokio::test]
async fn a_kustom_event_makes_one_read_whatever_its_redeliveries() {
    with_database(|pool| async move {
        let read = observe_row(Uuid::new_v4());
        assert!(record(&pool, &read).await.unwrap());
        assert!(!record(&pool, &read).await.unwrap());
        let (kind, event_type): (String, Option<String>) =
            sqlx::query_as("SELECT kind, event_type FROM ipp_actions")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            (kind.as_str(), event_type.as_deref()),
            (OBSERVE, Some("capture.created"))
        );
    })
    .await;
}

#[tokio::test]
async fn settled_rows_are_published_once_marked_and_again_after_they_settle_anew() {
    with_database(|pool| async move {
        let order_id = record_one(&pool).await;
        assert!(
            outbox::unpublished(&pool, 10).await.unwrap().is_empty(),
            "pending is not settled"
        );
        let claimed = claim_due(&pool, 1, LEASE).await.unwrap();
        let failed = Outcome {
            reason: Some("refused".into()),
            ..Outcome::default()
        };
        assert!(finish(
            &pool,
            order_id,
            CAPTURE,
            claimed[0].claim_token,
            Status::Failed,
            &failed
        )
        .await
        .unwrap());
        let settled = outbox::unpublished(&pool, 10).await.unwrap();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].status, "failed");
        assert_eq!(outbox::mark_published(&pool, &settled).await.unwrap(), 1);
        assert!(outbox::unpublished(&pool, 10).await.unwrap().is_empty());

        // Re-queued by an operator and settled again: its new outcome is published, and a
        // mark with the old read does not hide it.
        let mut conn = pool.acquire().await.unwrap();
        let selection = requeue::Selection {
            all: true,
            ..requeue::Selection::default()
        };
        requeue::requeue(&mut conn, &selection, "test")
            .await
            .unwrap();
        drop(conn);
        let claimed = claim_due(&pool, 1, LEASE).await.unwrap();
        let done = Outcome {
            capture_id: Some("cap-1".into()),
            captured_amount: Some(10),
            ..Outcome::default()
        };
        assert!(finish(
            &pool,
            order_id,
            CAPTURE,
            claimed[0].claim_token,
            Status::Succeeded,
            &done
        )
        .await
        .unwrap());
        assert_eq!(
            outbox::mark_published(&pool, &settled).await.unwrap(),
            0,
            "a stale mark"
        );
        let again = outbox::unpublished(&pool, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].status, "succeeded");
        assert_eq!(again[0].capture_id.as_deref(), Some("cap-1"));
    })
    .await;
}
