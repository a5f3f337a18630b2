//! Building blocks of `ipp-projector status` and `ipp-actions status`: per-partition
//! watermarks, checkpoint and lag, and DLQ sizes.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use crate::{
    kafka::{self, KafkaSettings, Watermarks},
    output::{self, Table},
    Error,
};

/// One partition of the consumed topic.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// First offset still stored.
    pub low: i64,
    /// Next offset to be written.
    pub high: i64,
    /// The next offset the service will apply (`None`: nothing yet, it starts at `low`).
    pub checkpoint: Option<i64>,
    /// Records written and not yet applied: `high - max(checkpoint, low)`.
    pub lag: i64,
}

/// A dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DlqStatus {
    pub topic: String,
    pub exists: bool,
    /// Records stored (sum of high - low watermarks).
    pub records: i64,
    /// Of those, redriven already (rows of `ipp_dlq_redrives`), when known.
    pub redriven: Option<i64>,
    pub partitions: Vec<Watermarks>,
}

pub async fn watermarks(kafka: &KafkaSettings, topic: &str) -> Result<Vec<Watermarks>, Error> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = kafka.reader()?;
        kafka::watermarks(&consumer, &topic)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// A group's committed offsets, read without joining the group.
pub async fn committed(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: Vec<i32>,
) -> Result<BTreeMap<i32, Option<i64>>, Error> {
    let kafka = kafka.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || kafka::committed(&kafka, &group, &topic, &partitions))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Joins watermarks with checkpoints.
pub fn partitions(
    marks: &[Watermarks],
    checkpoints: &BTreeMap<i32, Option<i64>>,
) -> Vec<PartitionStatus> {
    marks
        .iter()
        .map(|m| {
            let checkpoint = checkpoints.get(&m.partition).copied().flatten();
            let applied = checkpoint.unwrap_or(m.low).max(m.low);
            PartitionStatus {
                partition: m.partition,
                low: m.low,
                high: m.high,
                checkpoint,
                lag: (m.high - applied).max(0),
            }
        })
        .collect()
}

pub async fn dlq(
    kafka: &KafkaSettings,
    topic: &str,
    pool: Option<&PgPool>,
) -> Result<DlqStatus, Error> {
    let (exists, partitions) = match watermarks(kafka, topic).await {
        Ok(marks) => (true, marks),
        Err(Error::NoSuchTopic(_)) => (false, Vec::new()),
        Err(e) => return Err(e),
    };
    let redriven = match pool {
        Some(pool) if crate::table_exists(pool, "ipp_dlq_redrives").await? => Some(
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM ipp_dlq_redrives WHERE dlq_topic = $1"#,
                topic,
            )
            .fetch_one(pool)
            .await?,
        ),
        _ => None,
    };
    Ok(DlqStatus {
        topic: topic.to_owned(),
        exists,
        records: partitions.iter().map(Watermarks::size).sum(),
        redriven,
        partitions,
    })
}

pub fn partitions_table(partitions: &[PartitionStatus]) -> String {
    let mut table = Table::new(["PARTITION", "LOW", "HIGH", "CHECKPOINT", "LAG"]);
    for p in partitions {
        table.row([
            p.partition.to_string(),
            p.low.to_string(),
            p.high.to_string(),
            p.checkpoint
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            p.lag.to_string(),
        ]);
    }
    table.render()
}

pub fn dlq_line(dlq: &DlqStatus) -> String {
    if !dlq.exists {
        return format!("dead letters    {}: topic does not exist", dlq.topic);
    }
    let redriven = dlq
        .redriven
        .map(|r| format!(", {r} redriven"))
        .unwrap_or_default();
    format!(
        "dead letters    {}: {} record(s){redriven}",
        dlq.topic, dlq.records
    )
}

pub fn total_lag(partitions: &[PartitionStatus]) -> i64 {
    partitions.iter().map(|p| p.lag).sum()
}

pub fn age_line(label: &str, seconds: Option<f64>) -> String {
    format!("{label:<15} {}", output::age(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_checkpoint_or_the_low_watermark() {
        let marks = [
            Watermarks {
                partition: 0,
                low: 0,
                high: 10,
            },
            Watermarks {
                partition: 1,
                low: 5,
                high: 8,
            },
            Watermarks {
                partition: 2,
                low: 5,
                high: 8,
            },
        ];
        let checkpoints = BTreeMap::from([(0, Some(10)), (1, None), (2, Some(2))]);
        let lags: Vec<i64> = partitions(&marks, &checkpoints)
            .iter()
            .map(|p| p.lag)
            .collect();
        assert_eq!(lags, vec![0, 3, 3]);
    }
}
