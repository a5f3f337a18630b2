//! Reading the topic into one schema through the apply engine, from the schema's own
//! stored offsets (or the low watermarks): what builds the shadow and what catches up
//! the previous version for a rollback. The poison records it skips are kept until the
//! swap, which parks those the dead-letter topic does not hold yet
//! ([`Follower::park_skipped`]).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::consumer::StreamConsumer;
use sqlx::PgPool;
use tracing::warn;

use crate::{
    config::Config,
    dead_letters::DeadLetters,
    engine::{Engine, EngineMode, Poison, Retry, Totals},
    kafka::{consumed::ConsumedRecord, parked::ParkedIndex, reader},
    store::{offsets, statistics::AutoAnalyze},
    Error,
};

/// Reads the topic into one schema through the engine, from the schema's own stored
/// offsets (or the low watermarks).
pub(super) struct Follower<'a> {
    consumer: StreamConsumer,
    /// Asks for the watermarks: a request on the fetching consumer's connections waits
    /// behind its long-poll fetch (up to `fetch.wait.max.ms` per partition), which added
    /// seconds to the time the swap holds the live tables' locks.
    marks_client: StreamConsumer,
    engine: Engine<'a>,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to apply per partition.
    positions: BTreeMap<i32, i64>,
    /// Records read but held back by a limit (dry run), in order.
    pending: VecDeque<ConsumedRecord>,
    batch_size: usize,
    /// Longest wait for the next record once a batch has its first one.
    batch_wait: Duration,
    pub(super) totals: Totals,
    /// The poison records skipped that the dead-letter topic did not hold when last
    /// looked at, in offset order per partition.
    skipped: Vec<Poison>,
    parked: ParkedIndex,
    dead_letters: DeadLetters,
    /// Poison records this rebuild parked itself.
    pub(super) poison_parked: u64,
}

impl<'a> Follower<'a> {
    pub(super) async fn new(config: &'a Config, pool: &'a PgPool) -> Result<Self, Error> {
        let topic = config.ipp_topic.clone();
        let consumer = reader::consumer(config, "rebuild")?;
        let marks_client = reader::consumer(config, "rebuild-marks")?;
        let partitions = reader::partitions(&marks_client, &topic)?;
        let marks = reader::watermarks(&marks_client, &topic, &partitions)?;
        let stored = offsets::load(pool, &config.group, &topic).await?;
        let positions: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(&p, &(low, _))| (p, stored.get(&p).copied().unwrap_or(0).max(low)))
            .collect();
        reader::assign(&consumer, &topic, &positions)?;
        let mut parked = ParkedIndex::new(config)?;
        parked.refresh().await?;
        Ok(Self {
            consumer,
            marks_client,
            engine: Engine::new(
                pool,
                &config.ipp_topic,
                EngineMode::Shadow {
                    group: &config.group,
                },
                config.max_payload_bytes,
                Arc::new(AutoAnalyze::default()),
            ),
            topic,
            partitions,
            positions,
            pending: VecDeque::new(),
            batch_size: config.batch_size as usize,
            batch_wait: Duration::from_millis(config.batch_wait_ms.clamp(10, 200)),
            totals: Totals::default(),
            skipped: Vec::new(),
            parked,
            dead_letters: DeadLetters::new(config)?,
            poison_parked: 0,
        })
    }

    /// The low watermarks now, per partition.
    pub(super) fn lows(&self) -> Result<BTreeMap<i32, i64>, Error> {
        Ok(
            reader::watermarks(&self.marks_client, &self.topic, &self.partitions)?
                .into_iter()
                .map(|(p, (low, _))| (p, low))
                .collect(),
        )
    }

    pub(super) fn highs(&self) -> Result<BTreeMap<i32, i64>, Error> {
        Ok(
            reader::watermarks(&self.marks_client, &self.topic, &self.partitions)?
                .into_iter()
                .map(|(p, (_, high))| (p, high))
                .collect(),
        )
    }

    pub(super) fn lag(&self, targets: &BTreeMap<i32, i64>) -> i64 {
        targets
            .iter()
            .map(|(p, t)| (t - self.positions.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    /// Reads one batch (waiting up to `wait` for its first record) and applies the
    /// records below `limit` (all without a limit); returns how many were applied.
    pub(super) async fn step(
        &mut self,
        limit: Option<&BTreeMap<i32, i64>>,
        wait: Duration,
    ) -> Result<usize, Error> {
        let allowed = |m: &ConsumedRecord| {
            limit.is_none_or(|l| m.offset() < l.get(&m.partition()).copied().unwrap_or(0))
        };
        let mut batch = Vec::new();
        let mut held = VecDeque::new();
        for message in self.pending.drain(..) {
            // Per partition, the allowed records are a prefix of the held ones.
            if allowed(&message) && batch.len() < self.batch_size {
                batch.push(message);
            } else {
                held.push_back(message);
            }
        }
        self.pending = held;
        if batch.is_empty() {
            let deadline = tokio::time::Instant::now() + wait;
            let mut first = true;
            while batch.len() < self.batch_size {
                let until = if first {
                    deadline
                } else {
                    tokio::time::Instant::now() + self.batch_wait
                };
                match tokio::time::timeout_at(until, self.consumer.recv()).await {
                    Ok(Ok(message)) => {
                        let message = ConsumedRecord::copy_of(&message);
                        let blocked = self
                            .pending
                            .iter()
                            .any(|m| m.partition() == message.partition());
                        if !blocked && allowed(&message) {
                            first = false;
                            batch.push(message);
                        } else {
                            self.pending.push_back(message);
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let (totals, skipped, parked) = (&mut self.totals, &mut self.skipped, &self.parked);
        self.engine
            .apply_isolating(&batch, Retry::Never, |outcome| {
                *totals += &outcome;
                skipped.extend(
                    outcome
                        .unparked
                        .into_iter()
                        .filter(|poison| !parked.contains(&poison.message)),
                );
            })
            .await?;
        for message in &batch {
            let position = self.positions.entry(message.partition()).or_insert(0);
            *position = (*position).max(message.offset() + 1);
        }
        Ok(batch.len())
    }

    /// Applies until every partition is at or past `targets` (exactly at them with
    /// `exact`), or fails after `within`.
    pub(super) async fn catch_up(
        &mut self,
        targets: &BTreeMap<i32, i64>,
        exact: bool,
        within: Duration,
    ) -> Result<bool, Error> {
        let deadline = Instant::now() + within;
        while self.lag(targets) > 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.step(exact.then_some(targets), Duration::from_millis(200))
                .await?;
        }
        Ok(true)
    }

    /// Reads what the dead-letter topic gained and forgets the skipped records it now
    /// holds: done before the swap locks the live tables, so the read under the lock
    /// ([`Follower::park_skipped`]) is short.
    pub(super) async fn forget_parked(&mut self) -> Result<(), Error> {
        if self.skipped.is_empty() {
            return Ok(());
        }
        self.parked.refresh().await?;
        let parked = &self.parked;
        self.skipped
            .retain(|poison| !parked.contains(&poison.message));
        Ok(())
    }

    /// Parks the skipped poison records the dead-letter topic does not hold, and waits
    /// for the broker's acknowledgement. Called in the swap transaction once the live
    /// tables are locked: the live projector has no batch in flight (its batches park
    /// before they commit) and, after the swap, starts past these records, so it will
    /// never park them itself. A crash between this and the commit leaves them parked
    /// and the live projector where it was: it may park them a second time (as after its
    /// own crash), never zero times.
    pub(super) async fn park_skipped(&mut self) -> Result<(), Error> {
        self.forget_parked().await?;
        if self.skipped.is_empty() {
            return Ok(());
        }
        let records: Vec<(&ConsumedRecord, String)> = self
            .skipped
            .iter()
            .map(|poison| (&poison.message, poison.reason.clone()))
            .collect();
        self.dead_letters.send_all(&records).await?;
        for poison in &self.skipped {
            warn!(
                topic = poison.message.topic(),
                partition = poison.message.partition(),
                offset = poison.message.offset(),
                error = %poison.reason,
                "parked a poison record that no one had parked"
            );
            self.parked.insert(&poison.message);
        }
        self.poison_parked += self.skipped.len() as u64;
        self.skipped.clear();
        Ok(())
    }
}
