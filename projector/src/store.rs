//! The SQL side: migrations, the event log, the session rows and the stored offsets.
//!
//! Timestamps: PostgreSQL `timestamptz` keeps microseconds, so `occurred_at` and the
//! `*_at` columns are truncated to the microsecond; the raw payload (`payload->>'timestamp'`)
//! keeps Kustom's nanoseconds, and the fold orders events by those nanoseconds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{
    copy_binary,
    session::{self, SessionEvent, SessionRow},
    Error,
};

/// Applies the projector's migrations.
///
/// sqlx's migrator takes `pg_advisory_lock` (keyed by the database name) before it
/// touches `_sqlx_migrations` and holds it until done, so replicas starting at once
/// serialize and only the first applies anything. Projector migrations are numbered
/// 1001+, ipp-actions' 2001+, and both ignore applied versions they do not know, so the
/// two services share one database and one `_sqlx_migrations` table.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// A checked event, ready to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub session_id: Uuid,
    pub event: SessionEvent,
    pub received_at: DateTime<Utc>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The raw body, valid JSON that PostgreSQL `jsonb` accepts.
    pub payload: String,
}

/// Stored next offsets of `partitions` (0 where none yet), locked until the
/// transaction ends: two consumers holding the same partition during a rebalance
/// serialize here, and the later one sees what the earlier one applied.
pub async fn lock_offsets(
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
    sqlx::query(
        "INSERT INTO ipp_projector_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, $2, p, 0 FROM UNNEST($3::int4[]) AS p
         ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(topic)
    .bind(&partitions)
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
    let rows = sqlx::query(
        "SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
         ORDER BY partition
         FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Moves stored offsets forward (never back) and returns every stored next offset of
/// the group on the topic, other replicas' partitions included, in one round trip.
pub async fn save_offsets(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<HashMap<i32, i64>, Error> {
    let (partitions, next): (Vec<i32>, Vec<i64>) = offsets.iter().unzip();
    let rows = sqlx::query(
        "WITH saved AS (
             UPDATE ipp_projector_offsets AS o
             SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now()
             FROM UNNEST($3::int4[], $4::int8[]) AS u(p, n)
             WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = u.p
             RETURNING o.partition, o.next_offset
         )
         SELECT partition, next_offset FROM saved
         UNION ALL
         SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2 AND partition <> ALL($3)",
    )
    .bind(group)
    .bind(topic)
    .bind(&partitions)
    .bind(&next)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Every stored next offset of a group on a topic.
pub async fn load_offsets<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, Error> {
    let rows = sqlx::query(
        "SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
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
    /// Where the time went, for the projector's debug log and the benchmark.
    pub timings: StepTimings,
}

/// Time spent in each step of [`store_batch`].
#[derive(Debug, Default, Clone, Copy)]
pub struct StepTimings {
    /// Session locks plus the read of the sessions' stored events.
    pub read: Duration,
    /// Writing the new events.
    pub insert: Duration,
    /// Folding the touched sessions and upserting their rows.
    pub fold: Duration,
}

/// How [`store_batch`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// `COPY` the events the session read showed to be new, and the rows of sessions
    /// that had no stored event (fewer than `COPY_MIN_ROWS` go in with `INSERT … ON
    /// CONFLICT`, which cannot fail on a duplicate). Fails with a unique violation
    /// (SQLSTATE 23505, see [`Error::is_unique_violation`]) if one of them was stored
    /// after all: an event id reused by another session, or written by a concurrent
    /// writer. The transaction is then aborted and the caller runs it again with
    /// [`WriteMode::OnConflict`].
    Copy,
    /// `INSERT … ON CONFLICT`: slower, never fails on a duplicate.
    OnConflict,
}

/// Stores the events whose id is new and refolds the sessions that gained one.
///
/// A transaction-scoped advisory lock per session (taken in a fixed order) serializes
/// writers of one session, so a session whose events sit in several partitions still
/// ends up folded over all of them: the read of the sessions' stored events starts
/// after the locks are held and, under READ COMMITTED, sees every event committed
/// before. That read also tells which events of the batch are already stored and which
/// sessions have no row yet, which lets [`WriteMode::Copy`] write both with `COPY`
/// (several times cheaper than `INSERT`). Sessions are folded in memory from their
/// stored events plus the new ones.
pub async fn store_batch<'a>(
    tx: &mut Transaction<'_, Postgres>,
    events: &'a [NewEvent],
    mode: WriteMode,
) -> Result<Stored<'a>, Error> {
    let mut timings = StepTimings::default();
    let mut seen = HashSet::new();
    let distinct: Vec<&NewEvent> = events
        .iter()
        .filter(|e| seen.insert(e.event.event_id.as_str()))
        .collect();
    if distinct.is_empty() {
        return Ok(Stored::default());
    }

    let step = Instant::now();
    let sessions: BTreeSet<Uuid> = distinct.iter().map(|e| e.session_id).collect();
    lock_sessions(tx, &sessions).await?;
    let stored = stored_events(tx, &sessions).await?;
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
    let inserted = match mode {
        WriteMode::Copy if candidates.len() >= COPY_MIN_ROWS => {
            let rows = copy_binary::events(&candidates);
            copy_rows(tx, "ipp_events", EVENT_COLUMNS, &rows).await?;
            candidates
        }
        WriteMode::Copy | WriteMode::OnConflict => insert_events(tx, candidates).await?,
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
    let sessions_created = created.len();
    if mode == WriteMode::Copy && created.len() >= COPY_MIN_ROWS {
        let rows = copy_binary::sessions(&created);
        copy_rows(tx, "ipp_sessions", SESSION_COLUMNS, &rows).await?;
    } else {
        changed.append(&mut created);
    }
    upsert_sessions(tx, &changed).await?;
    created.append(&mut changed);
    timings.fold = step.elapsed();
    Ok(Stored {
        inserted,
        sessions: created,
        sessions_created,
        timings,
    })
}

/// Takes the advisory lock of each session, in a fixed order (no deadlocks).
async fn lock_sessions(
    tx: &mut Transaction<'_, Postgres>,
    sessions: &BTreeSet<Uuid>,
) -> Result<(), Error> {
    let mut keys: Vec<i64> = sessions.iter().map(|s| lock_key(*s)).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(k))
         FROM UNNEST($1::int8[]) WITH ORDINALITY AS t(k, i)",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every stored event of `sessions`, as the fold reads it.
async fn stored_events(
    tx: &mut Transaction<'_, Postgres>,
    sessions: &BTreeSet<Uuid>,
) -> Result<HashMap<Uuid, Vec<SessionEvent>>, Error> {
    let ids: Vec<Uuid> = sessions.iter().copied().collect();
    let rows = sqlx::query(
        "SELECT session_id, event_id, event_type, merchant_id, order_id, failure_reason,
                occurred_at, payload->>'timestamp'
         FROM ipp_events WHERE session_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_session: HashMap<Uuid, Vec<SessionEvent>> = HashMap::new();
    for row in &rows {
        let stored_at: DateTime<Utc> = row.try_get(6)?;
        let raw: Option<String> = row.try_get(7)?;
        // The payload keeps the nanoseconds PostgreSQL drops.
        let occurred_at = raw
            .and_then(|raw| DateTime::parse_from_rfc3339(&raw).ok())
            .map_or(stored_at, |t| t.with_timezone(&Utc));
        by_session
            .entry(row.try_get(0)?)
            .or_default()
            .push(SessionEvent {
                event_id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                merchant_id: row.try_get(3)?,
                order_id: row.try_get(4)?,
                failure_reason: row.try_get(5)?,
                occurred_at,
            });
    }
    Ok(by_session)
}

/// Fewer rows than this go in with one `INSERT`: a `COPY` costs an extra round trip,
/// which only pays off for more rows.
const COPY_MIN_ROWS: usize = 32;

const EVENT_COLUMNS: &str = "event_id, event_type, merchant_id, session_id, order_id, \
     failure_reason, occurred_at, received_at, kafka_partition, kafka_offset, payload";

const SESSION_COLUMNS: &str = "session_id, merchant_id, status, order_id, created_at, \
     activated_at, finalized_at, cancelled_at, failed_attempts, last_failure_reason, \
     last_event_id, last_event_at, event_count, anomalies";

/// `COPY`s rows made by [`copy_binary`] into `table`.
async fn copy_rows(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: &[u8],
) -> Result<(), Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    for chunk in rows.chunks(1 << 20) {
        if let Err(e) = copy.send(chunk).await {
            copy.abort("sending the rows failed").await.ok();
            return Err(e.into());
        }
    }
    copy.finish().await?;
    Ok(())
}

/// Stores the events whose id is new (the first copy wins) and returns them.
async fn insert_events<'a>(
    tx: &mut Transaction<'_, Postgres>,
    distinct: Vec<&'a NewEvent>,
) -> Result<Vec<&'a NewEvent>, Error> {
    if distinct.is_empty() {
        return Ok(distinct);
    }
    let column = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        distinct.iter().map(|e| f(e)).collect()
    };
    let rows = sqlx::query(&format!(
        "INSERT INTO ipp_events ({EVENT_COLUMNS})
         SELECT e, t, m, s, o, f, oc, r, p, k, pl::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::int8[], $11::text[])
              AS u(e, t, m, s, o, f, oc, r, p, k, pl)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id"
    ))
    .bind(column(&|e| Some(e.event.event_id.clone())))
    .bind(column(&|e| Some(e.event.event_type.clone())))
    .bind(column(&|e| e.event.merchant_id.clone()))
    .bind(distinct.iter().map(|e| e.session_id).collect::<Vec<_>>())
    .bind(
        distinct
            .iter()
            .map(|e| e.event.order_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(&|e| e.event.failure_reason.clone()))
    .bind(
        distinct
            .iter()
            .map(|e| e.event.occurred_at)
            .collect::<Vec<_>>(),
    )
    .bind(distinct.iter().map(|e| e.received_at).collect::<Vec<_>>())
    .bind(
        distinct
            .iter()
            .map(|e| e.kafka_partition)
            .collect::<Vec<_>>(),
    )
    .bind(distinct.iter().map(|e| e.kafka_offset).collect::<Vec<_>>())
    .bind(column(&|e| Some(e.payload.clone())))
    .fetch_all(&mut **tx)
    .await?;
    let inserted: HashSet<String> = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok(distinct
        .into_iter()
        .filter(|e| inserted.contains(&e.event.event_id))
        .collect())
}

fn lock_key(session: Uuid) -> i64 {
    let bytes = session.as_bytes();
    i64::from_be_bytes(bytes[..8].try_into().expect("uuid has 16 bytes"))
}

async fn upsert_sessions(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[SessionRow],
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // `updated_at` only moves when the row's content does.
    sqlx::query(
        "INSERT INTO ipp_sessions (session_id, merchant_id, status, order_id, created_at,
             activated_at, finalized_at, cancelled_at, failed_attempts, last_failure_reason,
             last_event_id, last_event_at, event_count, anomalies, updated_at)
         SELECT s, m, st, o, c, a, f, x, fa, lfr, lei, lea, ec,
                COALESCE(string_to_array(NULLIF(an, ''), ','), '{}'), now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int4[],
                     $10::text[], $11::text[], $12::timestamptz[], $13::int4[], $14::text[])
              AS u(s, m, st, o, c, a, f, x, fa, lfr, lei, lea, ec, an)
         ON CONFLICT (session_id) DO UPDATE SET
             merchant_id = EXCLUDED.merchant_id,
             status = EXCLUDED.status,
             order_id = EXCLUDED.order_id,
             created_at = EXCLUDED.created_at,
             activated_at = EXCLUDED.activated_at,
             finalized_at = EXCLUDED.finalized_at,
             cancelled_at = EXCLUDED.cancelled_at,
             failed_attempts = EXCLUDED.failed_attempts,
             last_failure_reason = EXCLUDED.last_failure_reason,
             last_event_id = EXCLUDED.last_event_id,
             last_event_at = EXCLUDED.last_event_at,
             event_count = EXCLUDED.event_count,
             anomalies = EXCLUDED.anomalies,
             updated_at = EXCLUDED.updated_at
         WHERE (ipp_sessions.merchant_id, ipp_sessions.status, ipp_sessions.order_id,
                ipp_sessions.created_at, ipp_sessions.activated_at, ipp_sessions.finalized_at,
                ipp_sessions.cancelled_at, ipp_sessions.failed_attempts,
                ipp_sessions.last_failure_reason, ipp_sessions.last_event_id,
                ipp_sessions.last_event_at, ipp_sessions.event_count, ipp_sessions.anomalies)
           IS DISTINCT FROM
               (EXCLUDED.merchant_id, EXCLUDED.status, EXCLUDED.order_id,
                EXCLUDED.created_at, EXCLUDED.activated_at, EXCLUDED.finalized_at,
                EXCLUDED.cancelled_at, EXCLUDED.failed_attempts,
                EXCLUDED.last_failure_reason, EXCLUDED.last_event_id,
                EXCLUDED.last_event_at, EXCLUDED.event_count, EXCLUDED.anomalies)",
    )
    .bind(rows.iter().map(|r| r.session_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.merchant_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.activated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.finalized_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cancelled_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.failed_attempts).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.last_failure_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.last_event_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.last_event_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_count).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.anomalies.join(","))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

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
