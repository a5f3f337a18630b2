//! The orders model in a rebuild: its three topics read from their low watermarks into
//! the rebuilt schema with the live consumer's own decoding and merge (decision 0019).
//!
//! Its facts merge commutatively and idempotently, so it needs no stored offsets: the
//! swap catches it up to the topics' high watermarks read under the live tables' locks.
//! Everything the live orders consumer had merged came from below those marks, and
//! whatever it merges after the swap (into the rebuilt tables, by name) merges to the
//! same rows. Records it cannot use are skipped, not parked: the live orders consumer
//! reads every record of its topics itself and parks them (its group's offsets are not
//! moved by a rebuild), so parking them here would park them twice.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Offset, TopicPartitionList,
};
use sqlx::PgPool;

use crate::{
    config::Config,
    kafka::{consumed::ConsumedRecord, reader},
    orders::{facts, store, OrdersConfig},
    Error,
};

/// Most records merged in one transaction, as the live consumer does.
const BATCH_SIZE: usize = 500;

/// A topic's partition.
type Partition = (String, i32);

pub(super) struct OrdersFollower<'a> {
    consumer: StreamConsumer,
    /// Asks for the watermarks: not the fetching consumer, whose broker connections
    /// each have a long-poll fetch in flight that a watermark request would queue
    /// behind (up to `fetch.wait.max.ms` per partition, under the swap's locks).
    marks_client: StreamConsumer,
    pool: &'a PgPool,
    topics: OrdersConfig,
    partitions: Vec<Partition>,
    /// Next offset to merge per partition.
    positions: BTreeMap<Partition, i64>,
    /// Records read, and those skipped as unusable (the live consumer parks them).
    pub(super) records: u64,
    pub(super) skipped: u64,
}

impl<'a> OrdersFollower<'a> {
    /// Assigned to every partition of the three topics, from the low watermarks.
    pub(super) fn new(config: &Config, pool: &'a PgPool) -> Result<Self, Error> {
        let topics = OrdersConfig::from_config(config);
        let consumer = reader::consumer(config, "rebuild-orders")?;
        let marks_client = reader::consumer(config, "rebuild-orders-marks")?;
        let mut partitions = Vec::new();
        for topic in topics.topics() {
            for partition in reader::partitions(&marks_client, topic)? {
                partitions.push((topic.to_owned(), partition));
            }
        }
        let mut follower = Self {
            consumer,
            marks_client,
            pool,
            topics,
            partitions,
            positions: BTreeMap::new(),
            records: 0,
            skipped: 0,
        };
        follower.positions = follower.lows()?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), &offset) in &follower.positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(offset))?;
        }
        follower.consumer.assign(&tpl)?;
        Ok(follower)
    }

    /// The low watermarks now, per topic: `{topic: {partition: low}}`.
    pub(super) fn lows_by_topic(&self) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, Error> {
        let mut by_topic: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for ((topic, partition), low) in self.lows()? {
            by_topic.entry(topic).or_default().insert(partition, low);
        }
        Ok(by_topic)
    }

    fn lows(&self) -> Result<BTreeMap<Partition, i64>, Error> {
        Ok(self
            .marks()?
            .into_iter()
            .map(|(p, (low, _))| (p, low))
            .collect())
    }

    pub(super) fn highs(&self) -> Result<BTreeMap<Partition, i64>, Error> {
        Ok(self
            .marks()?
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect())
    }

    fn marks(&self) -> Result<BTreeMap<Partition, (i64, i64)>, Error> {
        let mut marks = BTreeMap::new();
        for topic in self.topics.topics() {
            let partitions: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect();
            for (partition, mark) in reader::watermarks(&self.marks_client, topic, &partitions)? {
                marks.insert((topic.to_owned(), partition), mark);
            }
        }
        Ok(marks)
    }

    pub(super) fn lag(&self, targets: &BTreeMap<Partition, i64>) -> i64 {
        targets
            .iter()
            .map(|(p, t)| (t - self.positions.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    /// Reads one batch (waiting up to `wait` for its first record) and merges it into
    /// the follower's schema; returns how many records it read.
    pub(super) async fn step(&mut self, wait: Duration) -> Result<usize, Error> {
        let mut batch: Vec<ConsumedRecord> = Vec::new();
        let mut until = tokio::time::Instant::now() + wait;
        while batch.len() < BATCH_SIZE {
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(ConsumedRecord::copy_of(&message)),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
            // After the first record, only what has already arrived.
            until = tokio::time::Instant::now();
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let mut merged = Vec::new();
        for message in &batch {
            let source = self.topics.source(message.topic());
            match facts::decode(source, message.payload().unwrap_or_default()) {
                Ok(decoded) => merged.extend(decoded),
                Err(_) => self.skipped += 1,
            }
        }
        store::merge(self.pool, &merged).await?;
        for message in &batch {
            let position = self
                .positions
                .entry((message.topic().to_owned(), message.partition()))
                .or_insert(0);
            *position = (*position).max(message.offset() + 1);
        }
        self.records += batch.len() as u64;
        Ok(batch.len())
    }

    /// Merges until every partition is at or past `targets`, or gives up after `within`.
    pub(super) async fn catch_up(
        &mut self,
        targets: &BTreeMap<Partition, i64>,
        within: Duration,
    ) -> Result<bool, Error> {
        let deadline = Instant::now() + within;
        while self.lag(targets) > 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.step(Duration::from_millis(200)).await?;
        }
        Ok(true)
    }
}
