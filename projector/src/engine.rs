//! The apply engine: one batch of `ipp.events` records into one PostgreSQL transaction.
//!
//! The live projector, `rebuild` (into a shadow schema) and `replay --into-schema` all
//! apply records through [`Engine::apply_isolating`], so a rebuilt or replayed schema
//! holds exactly what the live projector would have written; [`EngineMode`] says what
//! differs between them. The target schema is chosen by the pool
//! (`crate::schema::connect` sets the connections' `search_path`), never by the SQL,
//! which names tables unqualified.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::AddAssign,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    dead_letters::DeadLetters,
    record,
    store::{self, GroupOffsets},
    Error,
};

/// The write path beneath the engine, public on purpose: the benchmark measures it
/// in-process and the crate's white-box tests check it, without a broker.
pub use crate::{
    kafka::consumed::ConsumedRecord,
    record::{decode, NewEvent},
    store::{
        copy_events, copy_sessions, migrate, project, statistics::AutoAnalyze, store_batch,
        store_locked, StepTimings, Stored, WriteMode, EVENT_COLUMNS, SESSION_COLUMNS,
    },
};

/// Who applies, which decides what happens to offsets and poison records.
#[derive(Clone, Copy)]
pub enum EngineMode<'a> {
    /// The live projector: offsets of `group` kept with the data, poison records parked
    /// in the dead-letter topic.
    Live {
        group: &'a str,
        dead_letters: &'a DeadLetters,
    },
    /// `rebuild` into a shadow schema: offsets kept under the live `group`'s name so the
    /// swap can hand them over; poison records skipped and handed back
    /// ([`BatchOutcome::unparked`]): the rebuild parks those the dead-letter topic does
    /// not hold yet before it swaps.
    Shadow { group: &'a str },
    /// `replay --into-schema`: no offsets (every record given is applied, duplicates
    /// still stored once), poison records skipped and handed back for the report.
    Analyst,
}

impl<'a> EngineMode<'a> {
    fn group(&self) -> Option<&'a str> {
        match *self {
            Self::Live { group, .. } | Self::Shadow { group } => Some(group),
            Self::Analyst => None,
        }
    }

    fn dead_letters(&self) -> Option<&'a DeadLetters> {
        match *self {
            Self::Live { dead_letters, .. } => Some(dead_letters),
            Self::Shadow { .. } | Self::Analyst => None,
        }
    }
}

/// Where and how batches are applied.
pub struct Engine<'a> {
    /// Connections whose `search_path` is the target schema.
    pool: &'a PgPool,
    topic: &'a str,
    mode: EngineMode<'a>,
    max_payload_bytes: usize,
    /// Keeps the planner's statistics of fast-growing read models fresh.
    statistics: Arc<AutoAnalyze>,
}

/// A record that cannot be projected, and why.
#[derive(Debug, Clone)]
pub struct Poison {
    pub message: ConsumedRecord,
    pub reason: String,
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Records in the batch.
    pub records: usize,
    /// `(event_type, received_at)` of each newly stored event.
    pub applied: Vec<(String, DateTime<Utc>)>,
    pub sessions: usize,
    pub poison: usize,
    /// The poison records, in a mode that does not park them (empty in `Live`).
    pub unparked: Vec<Poison>,
    pub stale: u64,
    pub duplicates: u64,
    /// The next offset per partition of the batch, as stored.
    pub next: BTreeMap<i32, i64>,
    /// Every stored next offset of the group on the topic after the commit.
    pub all_offsets: HashMap<i32, i64>,
    /// Where the time of the store step went (for the debug log and the benchmark).
    pub timings: StepTimings,
    /// From the start of the transaction to the end of its commit.
    pub transaction: Duration,
    /// The whole apply, a second pass with `ON CONFLICT` included.
    pub elapsed: Duration,
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

impl AddAssign<&BatchOutcome> for Totals {
    fn add_assign(&mut self, outcome: &BatchOutcome) {
        self.records += outcome.records as u64;
        self.applied += outcome.applied.len() as u64;
        self.duplicates += outcome.duplicates;
        self.stale += outcome.stale;
        self.poison += outcome.poison as u64;
    }
}

impl AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.records += other.records;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.stale += other.stale;
        self.poison += other.poison;
    }
}

/// What [`Engine::apply_isolating`] does when a batch fails for a reason that may pass
/// (the database or the broker is down).
pub enum Retry<'a> {
    /// Fail: a one-shot command stops and is run again.
    Never,
    /// Retry with backoff (100 ms doubling to 10 s) until it works or `shutdown`
    /// fires; `on_failure(error, attempt)` runs before each wait.
    UntilShutdown {
        shutdown: &'a CancellationToken,
        on_failure: &'a (dyn Fn(&Error, u32) + Sync),
    },
}

impl<'a> Engine<'a> {
    pub fn new(
        pool: &'a PgPool,
        topic: &'a str,
        mode: EngineMode<'a>,
        max_payload_bytes: usize,
        statistics: Arc<AutoAnalyze>,
    ) -> Self {
        Self {
            pool,
            topic,
            mode,
            max_payload_bytes,
            statistics,
        }
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
        batch: &[ConsumedRecord],
        rejected: Option<&str>,
    ) -> Result<BatchOutcome, Error> {
        let started = Instant::now();
        // Decoded before the transaction starts, so its connection does not wait on it.
        let decoded: Vec<Result<NewEvent, String>> = batch
            .iter()
            .map(|message| match rejected {
                Some(reason) => Err(reason.to_owned()),
                None => record::check(message, self.max_payload_bytes),
            })
            .collect();
        let outcome = match self.apply_with(batch, &decoded, WriteMode::Copy).await {
            Err(e) if e.is_unique_violation() => {
                debug!(
                    "a row of the batch was stored meanwhile, applying it again with ON CONFLICT"
                );
                self.apply_with(batch, &decoded, WriteMode::OnConflict)
                    .await
            }
            outcome => outcome,
        };
        outcome.map(|outcome| BatchOutcome {
            elapsed: started.elapsed(),
            ..outcome
        })
    }

    /// One transaction: `decoded[i]` is `batch[i]` decoded (or why it is poison).
    async fn apply_with(
        &self,
        batch: &[ConsumedRecord],
        decoded: &[Result<NewEvent, String>],
        mode: WriteMode,
    ) -> Result<BatchOutcome, Error> {
        let started = Instant::now();
        let offsets = self.mode.group().map(|group| GroupOffsets {
            group,
            topic: self.topic,
        });
        let dead_letters = self.mode.dead_letters();
        let partitions: BTreeSet<i32> = batch.iter().map(ConsumedRecord::partition).collect();
        // Every session of the batch, a record below the stored offsets included: it is
        // only known to be stale once the offsets are locked, in the same statement.
        let sessions = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|e| e.session_id)
            .collect();
        let mut tx = self.pool.begin().await?;
        let mut next = store::lock(&mut tx, offsets.map(|o| (o, &partitions)), &sessions).await?;

        let mut events = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        let mut stale = 0u64;
        for (message, decoded) in batch.iter().zip(decoded) {
            if offsets.is_some() {
                let next_offset = next.entry(message.partition()).or_insert(0);
                if message.offset() < *next_offset {
                    stale += 1;
                    continue;
                }
                *next_offset = message.offset() + 1;
            }
            match decoded {
                Ok(event) => events.push(event),
                Err(reason) => poison.push((message, reason.clone())),
            }
        }
        for (message, reason) in &poison {
            if dead_letters.is_some() {
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
                    "record cannot be projected, skipped"
                );
            }
        }
        // Includes what other replicas committed, so a later assignment of their
        // partitions starts close to where they stopped.
        let stored = store_locked(&mut tx, &events, mode, offsets.map(|o| (o, &next))).await?;
        // Last before the commit, so a batch the database rejects parks nothing.
        if let (Some(dead_letters), false) = (dead_letters, poison.is_empty()) {
            dead_letters.send_all(&poison).await?;
        }
        tx.commit().await?;
        self.statistics
            .note_applied(stored.inserted.len() as u64, self.pool);
        let unparked = match dead_letters {
            Some(_) => Vec::new(),
            None => poison
                .iter()
                .map(|(message, reason)| Poison {
                    message: (*message).clone(),
                    reason: reason.clone(),
                })
                .collect(),
        };
        Ok(BatchOutcome {
            records: batch.len(),
            applied: stored
                .inserted
                .iter()
                .map(|e| (e.event.event_type.clone(), e.received_at))
                .collect(),
            sessions: stored.sessions.len(),
            poison: poison.len(),
            unparked,
            stale,
            duplicates: (events.len() - stored.inserted.len()) as u64,
            next,
            all_offsets: stored.all_offsets,
            timings: stored.timings,
            transaction: started.elapsed(),
            elapsed: Duration::ZERO,
        })
    }

    /// Applies a batch, isolating what PostgreSQL rejects: a rejected batch is split in
    /// halves until the record at fault is alone, which is then treated as poison (parked
    /// by the live projector, handed back otherwise) with the database's error. Parts are
    /// applied in offset order; `applied` sees each committed part. Failures that may
    /// pass are handled as `retry` says; a batch abandoned at shutdown committed nothing
    /// of its current part, so whoever owns the partitions next replays it.
    pub async fn apply_isolating(
        &self,
        batch: &[ConsumedRecord],
        retry: Retry<'_>,
        mut applied: impl FnMut(BatchOutcome),
    ) -> Result<(), Error> {
        let mut work: Vec<(&[ConsumedRecord], Option<String>)> = vec![(batch, None)];
        while let Some((part, rejected)) = work.pop() {
            let mut delay = Duration::from_millis(100);
            let mut attempt = 1u32;
            loop {
                match self.apply(part, rejected.as_deref()).await {
                    Ok(outcome) => {
                        applied(outcome);
                        break;
                    }
                    Err(e) if rejected.is_none() && e.is_rejected_data() => {
                        warn!(
                            error = %e.chain(),
                            records = part.len(),
                            "postgresql rejected the batch, isolating the record at fault"
                        );
                        if part.len() > 1 {
                            let (first, second) = part.split_at(part.len() / 2);
                            // Last in, first out: `first` runs next, keeping offset order.
                            work.push((second, None));
                            work.push((first, None));
                        } else {
                            let reason = format!("rejected by PostgreSQL: {}", e.chain());
                            work.push((part, Some(reason)));
                        }
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        let Retry::UntilShutdown {
                            shutdown,
                            on_failure,
                        } = &retry
                        else {
                            return Err(e);
                        };
                        on_failure(&e, attempt);
                        error!(
                            error = %e.chain(),
                            attempt,
                            records = part.len(),
                            "batch failed and was rolled back, retrying"
                        );
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}
