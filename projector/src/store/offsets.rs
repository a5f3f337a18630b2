//! `ipp_projector_offsets`: where each consumer group stands, stored in the same
//! transaction as the read models it covers.

use std::collections::{BTreeMap, HashMap};

use sqlx::{Postgres, Transaction};

use crate::Error;

/// Gives each of `partitions` met for the first time a row at offset 0.
pub(super) async fn create(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<(), Error> {
    sqlx::query!(
        "INSERT INTO ipp_projector_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, $2, p, 0 FROM UNNEST($3::int4[]) AS p
         ON CONFLICT DO NOTHING",
        group,
        topic,
        partitions,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stored next offsets of `partitions`, locked until the transaction ends.
pub(super) async fn select_for_update(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, Error> {
    let rows = sqlx::query!(
        "SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
         ORDER BY partition
         FOR UPDATE",
        group,
        topic,
        partitions,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect())
}

/// Every stored next offset of a group on a topic.
pub async fn load<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, Error> {
    let rows = sqlx::query!(
        "SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2",
        group,
        topic,
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect())
}
