//! After the load: waiting, bounded, until the pipeline has consumed the whole log and
//! the ledger has settled, and the clean pass (a fresh projector over the whole log).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ipp_schemas::topics;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Offset, TopicPartitionList,
};

use crate::{
    checks::Violations,
    process::Signal,
    stack::{Stack, ACTIONS_GROUP, CLEAN_GROUP, CLEAN_SCHEMA, IPP_PARTITIONS, PROJECTOR_GROUP},
};

/// Waits until the projector and ipp-actions have consumed the whole log, the ledger
/// has a row for every acknowledged finalized order and none is pending, or `deadline`.
pub async fn wait_until_settled(
    stack: &Stack,
    pool: &sqlx::PgPool,
    finalized: i64,
    deadline: Instant,
) -> bool {
    loop {
        if settled(stack, pool, finalized).await.unwrap_or(false) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn settled(stack: &Stack, pool: &sqlx::PgPool, finalized: i64) -> anyhow::Result<bool> {
    let ends = high_watermarks(&stack.brokers).await?;
    let projected = projector_offsets(pool, "public", PROJECTOR_GROUP).await?;
    let consumed = committed_offsets(&stack.brokers, ACTIONS_GROUP).await?;
    let (actions, pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM ipp_actions",
    )
    .fetch_one(pool)
    .await?;
    Ok(projected == ends && consumed == ends && pending == 0 && actions >= finalized)
}

/// A fresh projector over the whole log into its own schema, until it has applied
/// everything; then stopped.
pub async fn clean_pass(
    stack: &Stack,
    pool: &sqlx::PgPool,
    violations: &mut Violations,
) -> anyhow::Result<()> {
    let mut projector = stack.clean_pass_projector();
    projector.start()?;
    let ends = high_watermarks(&stack.brokers).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let caught_up = loop {
        let offsets = projector_offsets(pool, CLEAN_SCHEMA, CLEAN_GROUP)
            .await
            .unwrap_or_default();
        if offsets == ends {
            break true;
        }
        if Instant::now() >= deadline || !projector.is_running() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if !caught_up {
        violations.add(
            "read_models_exact",
            format!(
                "the clean pass did not apply the whole log within 180 s:\n{}",
                projector.log_tail(20)
            ),
        );
    }
    projector.signal(Signal::Term)?;
    projector.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

async fn high_watermarks(brokers: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("allow.auto.create.topics", "false")
            .create()?;
        (0..IPP_PARTITIONS)
            .map(|p| {
                let (_, high) =
                    consumer.fetch_watermarks(topics::IPP_EVENTS, p, Duration::from_secs(5))?;
                Ok((p, high))
            })
            .collect()
    })
    .await?
}

/// The offsets a consumer group committed on `ipp.events` (ipp-actions' progress).
async fn committed_offsets(brokers: &str, group: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let (brokers, group) = (brokers.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        // Never subscribes: asking for committed offsets does not join the group.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..IPP_PARTITIONS {
            partitions.add_partition(topics::IPP_EVENTS, p);
        }
        let committed = consumer.committed_offsets(partitions, Duration::from_secs(5))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                (e.partition(), offset)
            })
            .collect())
    })
    .await?
}

/// The projector's stored offsets (the next offset to apply) in `schema`; partitions it
/// has not applied anything from yet are at 0.
async fn projector_offsets(
    pool: &sqlx::PgPool,
    schema: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {schema}.ipp_projector_offsets WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(group)
    .bind(topics::IPP_EVENTS)
    .fetch_all(pool)
    .await?;
    let mut offsets: BTreeMap<i32, i64> = (0..IPP_PARTITIONS).map(|p| (p, 0)).collect();
    offsets.extend(rows);
    Ok(offsets)
}
