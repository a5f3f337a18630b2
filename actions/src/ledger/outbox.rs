//! The ledger as the outbox of the observations topic (decision 0019): settled rows not
//! yet published, and marking them published once the broker acknowledged them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A settled row, with what its observation says.
#[derive(Debug, Clone)]
pub struct Settled {
    pub order_id: Uuid,
    pub action: String,
    pub kind: String,
    pub command_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub merchant_id: Option<String>,
    pub event_id: String,
    pub event_type: Option<String>,
    /// `succeeded`, `failed` or `skipped`.
    pub status: String,
    pub reason: Option<String>,
    pub capture_id: Option<String>,
    pub captured_amount: Option<i64>,
    pub refund_id: Option<String>,
    pub refunded_amount: Option<i64>,
    pub observation: Option<Value>,
    /// When the row settled: the observation's time, the same on every republish.
    pub updated_at: DateTime<Utc>,
}

/// Up to `limit` settled rows not yet published, in the order they settled.
pub async fn unpublished(pool: &PgPool, limit: i64) -> Result<Vec<Settled>, sqlx::Error> {
    sqlx::query_as!(
        Settled,
        "SELECT order_id, action, kind, command_id, session_id, merchant_id, event_id, \
             event_type, status, reason, capture_id, captured_amount, refund_id, \
             refunded_amount, observation, updated_at \
         FROM ipp_actions WHERE published_at IS NULL AND status <> 'pending' \
         ORDER BY updated_at LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Marks `rows` published; a row that settled again since it was read (re-queued and
/// settled anew) is left for the next pass. Returns how many were marked.
pub async fn mark_published(pool: &PgPool, rows: &[Settled]) -> Result<u64, sqlx::Error> {
    let orders: Vec<Uuid> = rows.iter().map(|r| r.order_id).collect();
    let actions: Vec<String> = rows.iter().map(|r| r.action.clone()).collect();
    let settled: Vec<DateTime<Utc>> = rows.iter().map(|r| r.updated_at).collect();
    let result = sqlx::query!(
        "UPDATE ipp_actions a SET published_at = now() \
         FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS p(order_id, action, settled) \
         WHERE a.order_id = p.order_id AND a.action = p.action AND a.updated_at = p.settled \
             AND a.status <> 'pending' AND a.published_at IS NULL",
        &orders[..],
        &actions[..],
        &settled[..],
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Settled rows not yet published.
pub async fn unpublished_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM ipp_actions
         WHERE published_at IS NULL AND status <> 'pending'"#,
    )
    .fetch_one(pool)
    .await
}
