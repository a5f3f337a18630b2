//! What `ipp-projector reconcile` reports: the orders that are not `in_sync`, with why,
//! and how many orders are in each state.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The reconciliation states, as the `ipp_orders` view names them.
pub const STATES: [&str; 3] = ["in_sync", "awaiting_confirmation", "mismatch"];

/// The rules a `mismatch` breaks, as the view's `mismatch_rule` names them (the first
/// that applies).
pub const MISMATCH_RULES: [&str; 5] = [
    "amounts_differ",
    "not_made_by_this_pipeline",
    "not_confirmed",
    "captured_total_differs",
    "refunded_total_differs",
];

#[derive(Debug, Clone, Serialize)]
pub struct OrderReport {
    pub order_id: Uuid,
    pub merchant_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub state: String,
    pub reason: Option<String>,
    /// A mismatch's rule, one of [`MISMATCH_RULES`].
    pub rule: Option<String>,
    pub currency: Option<String>,
    pub captured_amount: Option<i64>,
    pub refunded_amount: Option<i64>,
    pub ledger_captured_amount: i64,
    pub ledger_refunded_amount: i64,
    pub capture_ids: Vec<String>,
    pub refund_ids: Vec<String>,
    pub external_operations: Vec<String>,
    pub disputes: Vec<String>,
    pub last_read_at: Option<DateTime<Utc>>,
    pub last_confirmed_at: Option<DateTime<Utc>>,
}

/// Orders in `states` (all states when empty), mismatches first, at most `limit`.
pub async fn orders(
    pool: &PgPool,
    states: &[String],
    limit: i64,
) -> Result<Vec<OrderReport>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT order_id AS "order_id!", merchant_id, session_id,
                  reconciliation_state AS "state!", reconciliation_reason AS reason,
                  mismatch_rule AS rule, currency, captured_amount, refunded_amount,
                  ledger_captured_amount AS "ledger_captured_amount!",
                  ledger_refunded_amount AS "ledger_refunded_amount!",
                  capture_ids AS "capture_ids!", refund_ids AS "refund_ids!",
                  external_operations AS "external_operations!", disputes AS "disputes!",
                  last_read_at, last_confirmed_at
           FROM ipp_orders
           WHERE cardinality($1::text[]) = 0 OR reconciliation_state = ANY($1)
           ORDER BY reconciliation_state = 'mismatch' DESC, finalized_at NULLS LAST, order_id
           LIMIT $2"#,
        states,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OrderReport {
            order_id: r.order_id,
            merchant_id: r.merchant_id,
            session_id: r.session_id,
            state: r.state,
            reason: r.reason,
            rule: r.rule,
            currency: r.currency,
            captured_amount: r.captured_amount,
            refunded_amount: r.refunded_amount,
            ledger_captured_amount: r.ledger_captured_amount,
            ledger_refunded_amount: r.ledger_refunded_amount,
            capture_ids: r.capture_ids,
            refund_ids: r.refund_ids,
            external_operations: r.external_operations,
            disputes: r.disputes,
            last_read_at: r.last_read_at,
            last_confirmed_at: r.last_confirmed_at,
        })
        .collect())
}

/// How many orders are in each state and break each rule, zeros included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Per each of [`STATES`].
    pub by_state: Vec<(&'static str, i64)>,
    /// The mismatches per each of [`MISMATCH_RULES`].
    pub mismatches_by_rule: Vec<(&'static str, i64)>,
}

/// Counts the orders of `ipp_orders` by state and, for mismatches, by rule.
pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let counted = sqlx::query!(
        r#"SELECT reconciliation_state AS "state!", mismatch_rule AS rule, count(*) AS "orders!"
           FROM ipp_orders GROUP BY 1, 2"#
    )
    .fetch_all(pool)
    .await?;
    let sum = |matches: &dyn Fn(&str, Option<&str>) -> bool| {
        counted
            .iter()
            .filter(|row| matches(&row.state, row.rule.as_deref()))
            .map(|row| row.orders)
            .sum::<i64>()
    };
    Ok(Counts {
        by_state: STATES
            .iter()
            .map(|&state| (state, sum(&|s, _| s == state)))
            .collect(),
        mismatches_by_rule: MISMATCH_RULES
            .iter()
            .map(|&rule| (rule, sum(&|_, r| r == Some(rule))))
            .collect(),
    })
}
