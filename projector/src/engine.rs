//! The apply engine: one batch of `ipp.events` records into one PostgreSQL transaction.
//!
//! The live projector, `rebuild` (into a shadow schema) and `replay --into-schema` all
//! apply records through [`Engine::apply`], so a rebuilt or replayed schema holds
//! exactly what the live projector would have written. The target schema is chosen by
//! the pool (`crate::schema::connect` sets the connections' `search_path`), never by
//! the SQL, which names tables unqualified.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use tracing::{debug, warn};

use crate::{
    consumer::{decode, within_limit},
    dlq::DeadLetters,
    statistics::AutoAnalyze,
    store::{self, WriteMode},
    Error,
};

/// Where and how a batch is applied.
pub struct Engine<'a> {
    /// Connections whose `search_path` is the target schema.
    pub pool: &'a PgPool,
    pub topic: &'a str,
    /// The key of the stored offsets (`ipp_projector_offsets`). With `None` (replay into
    /// an analyst's schema) no offsets are kept: every record given is applied, and
    /// duplicates are still stored once.
    pub group: Option<&'a str>,
    pub max_payload_bytes: usize,
    /// Where poison records are parked. `None` (rebuild, replay) skips them: the live
    /// projector already parked them when it first met them.
    pub dead_letters: Option<&'a DeadLetters>,
    /// Keeps the planner's statistics of fast-growing read models fresh.
    pub statistics: Arc<AutoAnalyze>,
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `(event_type, received_at)` of each newly stored event.
    pub applied: Vec<(String, DateTime<Utc>)>,
    pub sessions: usize,
    pub poison: usize,
    pub stale: u64,
    pub duplicates: u64,
    /// The next offset per partition of the batch, as stored.
    pub next: BTreeMap<i32, i64>,
    /// Every stored next offset of the group on the topic after the commit.
    pub all_offsets: HashMap<i32, i64>,
    /// Where the time of the store step went.
    pub timings: store::StepTimings,
    /// From the start of the transaction to the end of its commit.
    pub transaction: std::time::Duration,
}

/// Totals over several batches, for the one-shot commands.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Totals {
    pub records: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub poison: u64,
}

impl Totals {
    fn add(&mut self, records: usize, outcome: &Outcome) {
        self.records += records as u64;
        self.applied += outcome.applied.len() as u64;
        self.duplicates += outcome.duplicates;
        self.stale += outcome.stale;
        self.poison += outcome.poison as u64;
    }
}

impl Engine<'_> {
    /// Applies one batch in one transaction: lock the batch's stored offsets, skip the
    /// records below them, store the new events, refold the touched sessions, move the
    /// offsets, park poison records (acknowledged by the broker) and commit. With
    /// `rejected`, every record still due is treated as poison with that reason.
    ///
    /// Events are written with `COPY`; in the rare case that one collides with a row
    /// stored meanwhile, the transaction is rolled back and run again with the slower
    /// `INSERT … ON CONFLICT` (see [`WriteMode`]).
    pub async fn apply(
        &self,
        batch: &[OwnedMessage],
        rejected: Option<&str>,
    ) -> Result<Outcome, Error> {
        match self.apply_with(batch, rejected, WriteMode::Copy).await {
            Err(e) if e.is_unique_violation() => {
                debug!(
                    "a row of the batch was stored meanwhile, applying it again with ON CONFLICT"
                );
                self.apply_with(batch, rejected, WriteMode::OnConflict)
                    .await
            }
            outcome => outcome,
        }
    }

    async fn apply_with(
        &self,
        batch: &[OwnedMessage],
        rejected: Option<&str>,
        mode: WriteMode,
    ) -> Result<Outcome, Error> {
        let started = std::time::Instant::now();
        let partitions: BTreeSet<i32> = batch.iter().map(Message::partition).collect();
        let mut tx = self.pool.begin().await?;
        let mut next: BTreeMap<i32, i64> = match self.group {
            Some(group) => store::lock_offsets(&mut tx, group, self.topic, &partitions).await?,
            None => BTreeMap::new(),
        };

        let mut events = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        let mut stale = 0u64;
        for message in batch {
            if self.group.is_some() {
                let next_offset = next.entry(message.partition()).or_insert(0);
                if message.offset() < *next_offset {
                    stale += 1;
                    continue;
                }
                *next_offset = message.offset() + 1;
            }
            let decoded = match rejected {
                Some(reason) => Err(reason.to_owned()),
                None => {
                    within_limit(message, self.max_payload_bytes).and_then(|()| decode(message))
                }
            };
            match decoded {
                Ok(event) => events.push(event),
                Err(reason) => poison.push((message, reason)),
            }
        }
        for (message, reason) in &poison {
            if self.dead_letters.is_some() {
                warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %reason,
                    "record cannot be projected, parking it in the dead-letter topic"
                );
            } else {
                debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %reason,
                    "record cannot be projected, skipped (the live projector parks it)"
                );
            }
        }
        let stored = store::store_batch(&mut tx, &events, mode).await?;
        let mut all_offsets = HashMap::new();
        if let Some(group) = self.group {
            // Includes what other replicas committed, so a later assignment of their
            // partitions starts close to where they stopped.
            all_offsets = store::save_offsets(&mut tx, group, self.topic, &next).await?;
        }
        // Last before the commit, so a batch the database rejects parks nothing.
        if let (Some(dead_letters), false) = (self.dead_letters, poison.is_empty()) {
            dead_letters.send_all(&poison).await?;
        }
        tx.commit().await?;
        self.statistics
            .note_applied(stored.inserted.len() as u64, self.pool);
        Ok(Outcome {
            applied: stored
                .inserted
                .iter()
                .map(|e| (e.event.event_type.clone(), e.received_at))
                .collect(),
            sessions: stored.sessions.len(),
            poison: poison.len(),
            stale,
            duplicates: (events.len() - stored.inserted.len()) as u64,
            next,
            all_offsets,
            timings: stored.timings,
            transaction: started.elapsed(),
        })
    }

    /// Applies a batch without retrying (a one-shot command fails instead and is run
    /// again). A batch PostgreSQL rejects is split in halves until the record at fault
    /// is alone, which is then treated as poison, exactly as the live projector does.
    pub async fn apply_isolating(&self, batch: &[OwnedMessage]) -> Result<Totals, Error> {
        let mut totals = Totals::default();
        let mut work: Vec<(&[OwnedMessage], Option<String>)> = vec![(batch, None)];
        while let Some((part, rejected)) = work.pop() {
            match self.apply(part, rejected.as_deref()).await {
                Ok(outcome) => totals.add(part.len(), &outcome),
                Err(e) if rejected.is_none() && e.is_rejected_data() => {
                    if part.len() > 1 {
                        let (first, second) = part.split_at(part.len() / 2);
                        work.push((second, None));
                        work.push((first, None));
                    } else {
                        work.push((part, Some(format!("rejected by PostgreSQL: {}", e.chain()))));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(totals)
    }
}
