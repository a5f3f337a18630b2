//! `ipp_dlq_redrives`, the table ipp-ops owns: one row per redriven dead-letter record
//! (the loop guard's memory), written in the transaction of the redrive it records.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ipp_schemas::FailedActionRecord;
use sqlx::{PgConnection, PgPool};

use crate::{args::RecordRef, output, Error};

/// An earlier redrive of a DLQ record.
#[derive(Debug, Clone)]
pub struct Previous {
    pub redriven_at: DateTime<Utc>,
    /// `topic[partition]@offset` or `ledger:<action>:<order>`.
    pub target: String,
}

/// The earlier redrives of `dlq_topic`'s records, for `dlq list`; `None` when unknown
/// (the database is unreachable: a warning is logged, the list goes on without them).
pub async fn redriven(
    database: &crate::Database,
    dlq_topic: &str,
) -> Option<HashMap<RecordRef, Previous>> {
    let lookup = async {
        let pool = crate::connect(database).await?;
        let found = if crate::table_exists(&pool, "ipp_dlq_redrives").await? {
            previous(&pool, dlq_topic).await?
        } else {
            HashMap::new()
        };
        pool.close().await;
        Ok::<_, Error>(found)
    };
    match lookup.await {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "cannot read ipp_dlq_redrives; listing without it");
            None
        }
    }
}

/// Every earlier redrive of `dlq_topic`'s records, by position.
pub(crate) async fn previous(
    pool: &PgPool,
    dlq_topic: &str,
) -> Result<HashMap<RecordRef, Previous>, Error> {
    let rows = sqlx::query!(
        "SELECT dlq_partition, dlq_offset, redriven_at, target_kind, target_topic, \
             target_partition, target_offset, order_id, action \
         FROM ipp_dlq_redrives WHERE dlq_topic = $1",
        dlq_topic,
    )
    .fetch_all(pool)
    .await?;
    let mut previous = HashMap::new();
    for row in rows {
        let position = RecordRef {
            partition: row.dlq_partition,
            offset: row.dlq_offset,
        };
        let target = if row.target_kind == "ledger" {
            format!(
                "ledger:{}:{}",
                row.action.unwrap_or_default(),
                output::opt(row.order_id)
            )
        } else {
            format!(
                "{}[{}]@{}",
                row.target_topic.unwrap_or_default(),
                output::opt(row.target_partition),
                output::opt(row.target_offset),
            )
        };
        previous.insert(
            position,
            Previous {
                redriven_at: row.redriven_at,
                target,
            },
        );
    }
    Ok(previous)
}

/// How many times the action was redriven before, from any of its dead letters.
pub(crate) async fn count_for_action(
    pool: &PgPool,
    action: &FailedActionRecord,
) -> Result<i64, Error> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM ipp_dlq_redrives WHERE order_id = $1 AND action = $2"#,
        action.order_id,
        action.action,
    )
    .fetch_one(pool)
    .await?)
}

/// What a claim records besides the DLQ position.
pub(crate) struct Claim<'a> {
    pub dlq_topic: &'a str,
    /// The DLQ record's position.
    pub position: RecordRef,
    /// The count the redriven copy carries.
    pub redrive_count: u32,
    pub forced: bool,
}

impl Claim<'_> {
    fn count(&self) -> i32 {
        i32::try_from(self.redrive_count).unwrap_or(i32::MAX)
    }
}

/// Claims the record for a redrive to `topic`; `false` when someone redrove it first.
/// Two operators redriving at once serialize on the row's primary key.
pub(crate) async fn claim_for_topic(
    conn: &mut PgConnection,
    claim: &Claim<'_>,
    topic: &str,
) -> Result<bool, Error> {
    let claimed = sqlx::query!(
        "INSERT INTO ipp_dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_kind, \
             target_topic, redrive_count, forced) \
         VALUES ($1, $2, $3, 'topic', $4, $5, $6) ON CONFLICT DO NOTHING",
        claim.dlq_topic,
        claim.position.partition,
        claim.position.offset,
        topic,
        claim.count(),
        claim.forced,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(claimed > 0)
}

/// Where the redriven copy landed.
pub(crate) async fn record_delivery(
    conn: &mut PgConnection,
    dlq_topic: &str,
    position: RecordRef,
    partition: i32,
    offset: i64,
) -> Result<(), Error> {
    sqlx::query!(
        "UPDATE ipp_dlq_redrives SET target_partition = $4, target_offset = $5 \
         WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3",
        dlq_topic,
        position.partition,
        position.offset,
        partition,
        offset,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims the record for re-queuing `action`; `false` when someone redrove it first.
pub(crate) async fn claim_for_ledger(
    conn: &mut PgConnection,
    claim: &Claim<'_>,
    action: &FailedActionRecord,
) -> Result<bool, Error> {
    let claimed = sqlx::query!(
        "INSERT INTO ipp_dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_kind, \
             order_id, action, redrive_count, forced) \
         VALUES ($1, $2, $3, 'ledger', $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        claim.dlq_topic,
        claim.position.partition,
        claim.position.offset,
        action.order_id,
        action.action,
        claim.count(),
        claim.forced,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(claimed > 0)
}
