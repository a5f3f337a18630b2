//! Re-queuing `failed` rows of the ledger, for `ipp-actions retry` and for redriving a
//! failed action's dead letter (ipp-ops calls [`Requeue`] through its `ActionLedger`
//! trait, in the transaction that records the redrive). The row keeps its idempotency key, so a retried capture that had
//! already been applied is replayed by Kustom, not applied twice; `succeeded` and
//! `skipped` rows are never touched. What the row said before goes to
//! `ipp_action_retries`.

use std::future::Future;

use ipp_schemas::FailedActionRecord;
use sqlx::PgConnection;
use uuid::Uuid;

/// Which failed actions.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub all: bool,
    pub orders: Vec<Uuid>,
    pub merchant: Option<String>,
    /// Only this action (`capture`); any when `None`.
    pub action: Option<String>,
}

/// A failed action that was (or, in a dry run, would be) put back to `pending`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Requeued {
    pub order_id: Uuid,
    pub action: String,
    pub merchant_id: Option<String>,
    pub previous_reason: Option<String>,
    pub previous_attempts: i32,
    /// A capture was requested before: the retry sends that same request with the same
    /// key (Kustom replays its stored answer for about 24 hours).
    pub capture_requested: bool,
}

/// The failed actions `selection` names (nothing changes).
pub async fn failed(
    conn: &mut PgConnection,
    selection: &Selection,
) -> Result<Vec<Requeued>, sqlx::Error> {
    sqlx::query_as!(
        Requeued,
        r#"SELECT order_id, action, merchant_id, reason AS previous_reason,
             attempts AS previous_attempts,
             capture_requested_at IS NOT NULL AS "capture_requested!"
         FROM ipp_actions
         WHERE status = 'failed' AND ($1 OR order_id = ANY($2) OR merchant_id = $3)
             AND ($4::text IS NULL OR action = $4)
         ORDER BY created_at, order_id"#,
        selection.all,
        &selection.orders[..],
        selection.merchant,
        selection.action,
    )
    .fetch_all(conn)
    .await
}

/// Puts the selected `failed` actions back to `pending`, due now, with a fresh attempt
/// count; `reason` is cleared (the worker writes a new one when the action ends) and
/// the previous reason, attempts and error are kept in `ipp_action_retries` with `via`.
/// Call inside a transaction to combine it with other writes.
pub async fn requeue(
    conn: &mut PgConnection,
    selection: &Selection,
    via: &str,
) -> Result<Vec<Requeued>, sqlx::Error> {
    sqlx::query_as!(
        Requeued,
        r#"WITH previous AS (
             SELECT order_id, action, merchant_id, reason, attempts, last_error,
                 capture_requested_at IS NOT NULL AS capture_requested
             FROM ipp_actions
             WHERE status = 'failed' AND ($1 OR order_id = ANY($2) OR merchant_id = $3)
                 AND ($4::text IS NULL OR action = $4)
             FOR UPDATE),
         updated AS (
             UPDATE ipp_actions a SET status = 'pending', next_attempt_at = now(),
                 attempts = 0, reason = NULL, updated_at = now()
             FROM previous p WHERE a.order_id = p.order_id AND a.action = p.action
             RETURNING a.order_id),
         audit AS (
             INSERT INTO ipp_action_retries
                 (order_id, action, via, previous_reason, previous_attempts, previous_error)
             SELECT order_id, action, $5, reason, attempts, last_error FROM previous)
         SELECT order_id AS "order_id!", action AS "action!", merchant_id,
             reason AS previous_reason, attempts AS "previous_attempts!",
             capture_requested AS "capture_requested!"
         FROM previous ORDER BY order_id"#,
        selection.all,
        &selection.orders[..],
        selection.merchant,
        selection.action,
        via,
    )
    .fetch_all(conn)
    .await
}

/// The current status of one action, if the ledger has it.
pub async fn status(
    conn: &mut PgConnection,
    order_id: Uuid,
    action: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT status FROM ipp_actions WHERE order_id = $1 AND action = $2",
        order_id,
        action,
    )
    .fetch_optional(conn)
    .await
}

/// The ledger as `ipp-ops dlq redrive` sees it.
pub struct Requeue;

impl ipp_ops::redrive::ActionLedger for Requeue {
    fn status(
        &self,
        conn: &mut PgConnection,
        action: &FailedActionRecord,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send {
        status(conn, action.order_id, &action.action)
    }

    async fn requeue(
        &self,
        conn: &mut PgConnection,
        action: &FailedActionRecord,
        via: &str,
    ) -> Result<bool, sqlx::Error> {
        let selection = Selection {
            orders: vec![action.order_id],
            action: Some(action.action.clone()),
            ..Selection::default()
        };
        Ok(!requeue(conn, &selection, via).await?.is_empty())
    }
}
