//! The SQL side: migrations, the event log, the session rows and the stored offsets.
//!
//! Timestamps: PostgreSQL `timestamptz` keeps microseconds, so `occurred_at` and the
//! `*_at` columns are truncated to the microsecond; the raw payload (`payload->>'timestamp'`)
//! keeps Kustom's nanoseconds, and the fold orders events by those nanoseconds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    record::NewEvent,
    session::{self, SessionEvent, SessionRow},
    Error,
};

mod batch;
mod copy;
mod events;
pub mod offsets;
pub mod statistics;

pub use batch::GroupOffsets;
pub use copy::{EVENT_COLUMNS, SESSION_COLUMNS};

/// One binary `COPY` of `events` into `ipp_events`, the bytes [`WriteMode::Copy`] sends:
/// the benchmark's ceiling for the event half of a batch.
pub async fn copy_events(conn: &mut sqlx::PgConnection, events: &[&NewEvent]) -> Result<(), Error> {
    copy::copy_rows(conn, "ipp_events", &EVENT_COLUMNS, &copy::events(events)).await
}

/// One binary `COPY` of `sessions` into `ipp_sessions`, the bytes [`WriteMode::Copy`]
/// sends for new sessions: the benchmark's ceiling for the session half.
pub async fn copy_sessions(
    conn: &mut sqlx::PgConnection,
    sessions: &[SessionRow],
) -> Result<(), Error> {
    copy::copy_rows(
        conn,
        "ipp_sessions",
        &SESSION_COLUMNS,
        &copy::sessions(sessions),
    )
    .await
}

/// Applies the projector's migrations.
///
/// sqlx's migrator takes `pg_advisory_lock` (keyed by the database name) before it
/// touches `_sqlx_migrations` and holds it until done, so replicas starting at once
/// serialize and only the first applies anything. Projector migrations are numbered
/// 1001+, ipp-actions' 2001+, and both ignore applied versions they do not know, so the
/// two services share one database and one `_sqlx_migrations` table.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    migrator().run(pool).await?;
    Ok(())
}

/// The read models' migrations, embedded; applied versions it does not know (ipp-actions'
/// 2001+) are ignored.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// What storing one batch did.
#[derive(Debug, Default)]
pub struct Stored<'a> {
    /// The events whose id was new (the first copy in the batch wins), in batch order.
    pub inserted: Vec<&'a NewEvent>,
    /// The refolded rows of the sessions that gained an event.
    pub sessions: Vec<SessionRow>,
    /// How many of those sessions are new (their rows inserted, not updated).
    pub sessions_created: usize,
    /// With offsets: every stored next offset of the group on the topic after the write.
    pub all_offsets: HashMap<i32, i64>,
    /// Where the time went, for the projector's debug log and the benchmark.
    pub timings: StepTimings,
}

/// Time spent in each step of [`store_locked`] (and of [`store_batch`], whose `read`
/// includes its locks).
#[derive(Debug, Default, Clone, Copy)]
pub struct StepTimings {
    /// The read of the sessions' stored events.
    pub read: Duration,
    /// Sending the new events' `COPY`, or the `INSERT … ON CONFLICT` of
    /// [`WriteMode::OnConflict`].
    pub insert: Duration,
    /// Folding the touched sessions (while PostgreSQL stores the events' `COPY`), the
    /// end of that `COPY` and the `COPY` of the new sessions.
    pub fold: Duration,
    /// The last statement: the events not sent by `COPY`, the other session rows and
    /// the offsets.
    pub write: Duration,
}

/// How [`store_locked`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Write the events the session read showed to be new, and the rows of sessions
    /// that had no stored event, with plain `COPY` or `INSERT` (`COPY` from
    /// `COPY_MIN_ROWS` rows on). Fails with a unique violation (SQLSTATE 23505, see
    /// [`Error::is_unique_violation`]) if one of them was stored after all: an event id
    /// reused by another session, or written by a concurrent writer. The transaction is
    /// then aborted and the caller runs it again with [`WriteMode::OnConflict`].
    Copy,
    /// `INSERT … ON CONFLICT` for the events: slower, never fails on a duplicate.
    OnConflict,
}

/// The sessions of `events`, which [`lock`] locks.
pub fn sessions_of(events: &[NewEvent]) -> BTreeSet<Uuid> {
    events.iter().map(|e| e.session_id).collect()
}

/// Takes every lock of a batch in one statement: with `offsets`, the stored offsets of
/// the partitions (returned), then each session's advisory lock.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    offsets: Option<(GroupOffsets<'_>, &BTreeSet<i32>)>,
    sessions: &BTreeSet<Uuid>,
) -> Result<BTreeMap<i32, i64>, Error> {
    batch::lock(tx, offsets, sessions).await
}

/// Locks the sessions of `events` and stores them ([`store_locked`] without offsets):
/// the projection step on its own, for tools, tests and the benchmark.
pub async fn store_batch<'a>(
    tx: &mut Transaction<'_, Postgres>,
    events: &'a [NewEvent],
    mode: WriteMode,
) -> Result<Stored<'a>, Error> {
    let step = Instant::now();
    lock(tx, None, &sessions_of(events)).await?;
    let locking = step.elapsed();
    let events: Vec<&NewEvent> = events.iter().collect();
    let mut stored = store_locked(tx, &events, mode, None).await?;
    stored.timings.read += locking;
    Ok(stored)
}

/// Stores the events whose id is new, refolds the sessions that gained one and, with
/// `offsets`, moves the stored offsets to the given next offsets. Every session of
/// `events` must be locked ([`lock`]) in this transaction.
///
/// The session locks serialize writers of one session, so a session whose events sit in
/// several partitions still ends up folded over all of them: the read of the sessions'
/// stored events starts after the locks are held and, under READ COMMITTED, sees every
/// event committed before. That read also tells which events of the batch are already
/// stored and which sessions have no row yet, which lets [`WriteMode::Copy`] write both
/// without `ON CONFLICT`, with `COPY` (several times cheaper than `INSERT`) for many
/// rows. Sessions are folded in memory from their stored events plus the new ones.
pub async fn store_locked<'a>(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&'a NewEvent],
    mode: WriteMode,
    offsets: Option<(GroupOffsets<'_>, &BTreeMap<i32, i64>)>,
) -> Result<Stored<'a>, Error> {
    let mut timings = StepTimings::default();
    let mut seen = HashSet::new();
    let distinct: Vec<&NewEvent> = events
        .iter()
        .copied()
        .filter(|e| seen.insert(e.event.event_id.as_str()))
        .collect();

    let step = Instant::now();
    let sessions: BTreeSet<Uuid> = distinct.iter().map(|e| e.session_id).collect();
    let stored = if sessions.is_empty() {
        HashMap::new()
    } else {
        events::of_sessions(tx, &sessions).await?
    };
    timings.read = step.elapsed();

    let step = Instant::now();
    let stored_ids: HashSet<&str> = stored
        .values()
        .flatten()
        .map(|e| e.event_id.as_str())
        .collect();
    let candidates: Vec<&NewEvent> = distinct
        .into_iter()
        .filter(|e| !stored_ids.contains(e.event.event_id.as_str()))
        .collect();
    drop(stored_ids);
    // With COPY, PostgreSQL stores the events while the sessions are folded here.
    let (inserted, events_copy, events_left) = match mode {
        WriteMode::Copy if candidates.len() >= COPY_MIN_ROWS => {
            let rows = copy::events(&candidates);
            let sent = copy::send_rows(tx, "ipp_events", &EVENT_COLUMNS, &rows).await?;
            (candidates, Some(sent), Vec::new())
        }
        WriteMode::Copy => (candidates.clone(), None, candidates),
        WriteMode::OnConflict => (events::insert(tx, candidates).await?, None, Vec::new()),
    };
    timings.insert = step.elapsed();

    let step = Instant::now();
    // Sessions without stored events have no row yet (a row is a fold of its events).
    let mut touched: BTreeMap<Uuid, Vec<&SessionEvent>> = BTreeMap::new();
    for event in &inserted {
        touched
            .entry(event.session_id)
            .or_default()
            .push(&event.event);
    }
    let (mut created, mut changed) = (Vec::new(), Vec::new());
    for (id, new_events) in &touched {
        let prior = stored.get(id).map(Vec::as_slice).unwrap_or_default();
        if let Some(row) = session::fold(*id, prior.iter().chain(new_events.iter().copied())) {
            if prior.is_empty() {
                created.push(row);
            } else {
                changed.push(row);
            }
        }
    }
    let session_rows = (mode == WriteMode::Copy && created.len() >= COPY_MIN_ROWS)
        .then(|| copy::sessions(&created));
    copy::finish(events_copy).await?;
    let sessions_created = created.len();
    match session_rows {
        Some(rows) => copy::copy_rows(tx, "ipp_sessions", &SESSION_COLUMNS, &rows).await?,
        None => changed.append(&mut created),
    }
    timings.fold = step.elapsed();

    let step = Instant::now();
    let all_offsets = batch::write(tx, &events_left, &changed, offsets).await?;
    created.append(&mut changed);
    timings.write = step.elapsed();
    Ok(Stored {
        inserted,
        sessions: created,
        sessions_created,
        all_offsets,
        timings,
    })
}

/// Fewer rows than this go in with the batch's last statement: a `COPY` costs an extra
/// round trip, which only pays off for more rows.
const COPY_MIN_ROWS: usize = 32;

/// Stores events and refolds their sessions in one transaction, without offsets: the
/// projection step on its own, for tools and tests.
pub async fn project(pool: &PgPool, events: &[NewEvent]) -> Result<(), Error> {
    for mode in [WriteMode::Copy, WriteMode::OnConflict] {
        let mut tx = pool.begin().await?;
        match store_batch(&mut tx, events, mode).await {
            Err(e) if e.is_unique_violation() && mode == WriteMode::Copy => continue,
            stored => stored?,
        };
        tx.commit().await?;
        break;
    }
    Ok(())
}
