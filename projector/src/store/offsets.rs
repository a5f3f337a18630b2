//! `ipp_projector_offsets`: where each consumer group stands, stored in the same
//! transaction as the read models it covers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Postgres, Transaction};

use crate::Error;

/// Stored next offsets of `partitions` (0 where none yet), locked until the
/// transaction ends: two consumers holding the same partition during a rebalance
/// serialize here, and the later one sees what the earlier one applied.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, i64>, Error> {
    let partitions: Vec<i32> = partitions.iter().copied().collect();
    let locked = select_offsets_for_update(tx, group, topic, &partitions).await?;
    if locked.len() == partitions.len() {
        return Ok(locked);
    }
    // A partition met for the first time: give it a row, then lock them all.
    sqlx::query!(
        "INSERT INTO ipp_projector_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, $2, p, 0 FROM UNNEST($3::int4[]) AS p
         ON CONFLICT DO NOTHING",
        group,
        topic,
        &partitions[..],
    )
    .execute(&mut **tx)
    .await?;
    select_offsets_for_update(tx, group, topic, &partitions).await
}

async fn select_offsets_for_update(
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

/// Moves stored offsets forward (never back) and returns every stored next offset of
/// the group on the topic, other replicas' partitions included, in one round trip.
pub async fn save(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<HashMap<i32, i64>, Error> {
    let (partitions, next): (Vec<i32>, Vec<i64>) = offsets.iter().unzip();
    let rows = sqlx::query!(
        r#"WITH saved AS (
             UPDATE ipp_projector_offsets AS o
             SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now()
             FROM UNNEST($3::int4[], $4::int8[]) AS u(p, n)
             WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = u.p
             RETURNING o.partition, o.next_offset
         )
         SELECT partition AS "partition!", next_offset AS "next_offset!" FROM saved
         UNION ALL
         SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2 AND partition <> ALL($3)"#,
        group,
        topic,
        &partitions[..],
        &next[..],
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
