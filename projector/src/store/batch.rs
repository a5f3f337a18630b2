//! The first and the last statement of a batch's transaction: every lock in one, and every
//! write that is not a `COPY` in the other.
//!
//! Each statement is a round trip that wakes both the projector and its PostgreSQL
//! backend. At a few events per batch, as under a steady stream of webhooks, the round
//! trips were most of a batch's time, so the locks (the stored offsets and the sessions)
//! share one statement and the writes (small inserts of events, the session rows, the
//! offsets) another.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::offsets;
use crate::{record::NewEvent, session::SessionRow, Error};

/// The offsets of a consumer group on a topic, kept with the rows they cover.
#[derive(Debug, Clone, Copy)]
pub struct GroupOffsets<'a> {
    pub group: &'a str,
    pub topic: &'a str,
}

/// Locks the stored offsets of `partitions` (with `offsets`) and then each of `sessions`,
/// and returns the stored next offsets (0 for a partition met for the first time).
///
/// The offsets' row locks serialize two consumers holding the same partition during a
/// rebalance; the later one sees what the earlier one applied. A transaction-scoped
/// advisory lock per session, taken in a fixed order after the row locks, serializes the
/// writers of a session whose events sit in several partitions. Both are held until the
/// transaction ends. Only a partition met for the first time gets its row, and so its
/// lock, after the session locks: should two writers meet it at once with a session in
/// common, PostgreSQL breaks the deadlock (SQLSTATE 40P01, retryable) and the aborted
/// batch is applied again.
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    offsets: Option<(GroupOffsets<'_>, &BTreeSet<i32>)>,
    sessions: &BTreeSet<Uuid>,
) -> Result<BTreeMap<i32, i64>, Error> {
    let mut keys: Vec<i64> = sessions.iter().map(|s| lock_key(*s)).collect();
    keys.sort_unstable();
    keys.dedup();
    let (group, topic, partitions) = match offsets {
        Some((key, partitions)) => (
            Some(key.group),
            Some(key.topic),
            partitions.iter().copied().collect(),
        ),
        None => (None, None, Vec::new()),
    };
    // The session locks' one-time filter reads all of `offsets` first, so the row
    // locks are taken before any advisory lock.
    let rows = sqlx::query!(
        r#"WITH offsets AS MATERIALIZED (
             SELECT partition, next_offset FROM ipp_projector_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
             ORDER BY partition
             FOR UPDATE
         ), sessions AS MATERIALIZED (
             SELECT count(pg_advisory_xact_lock(k)) AS locked
             FROM UNNEST($4::int8[]) WITH ORDINALITY AS t(k, i)
             WHERE (SELECT count(*) FROM offsets) >= 0
         )
         SELECT o.partition AS "partition?", o.next_offset AS "next_offset?"
         FROM sessions LEFT JOIN offsets o ON true"#,
        group,
        topic,
        &partitions[..],
        &keys[..],
    )
    .fetch_all(&mut **tx)
    .await?;
    let locked: BTreeMap<i32, i64> = rows
        .into_iter()
        .filter_map(|row| Some((row.partition?, row.next_offset?)))
        .collect();
    match offsets {
        Some((key, _)) if locked.len() < partitions.len() => {
            // A partition met for the first time: give it a row, then lock them all.
            offsets::create(tx, key.group, key.topic, &partitions).await?;
            offsets::select_for_update(tx, key.group, key.topic, &partitions).await
        }
        _ => Ok(locked),
    }
}

fn lock_key(session: Uuid) -> i64 {
    let bytes = session.as_bytes();
    i64::from_be_bytes(bytes[..8].try_into().expect("uuid has 16 bytes"))
}

/// The last write of a batch, in one statement: `events` into `ipp_events` (with no
/// `ON CONFLICT`, so a stored id fails with a unique violation, as a `COPY` would),
/// `sessions` upserted into `ipp_sessions`, and with `offsets` the stored offsets moved
/// forward (never back). Returns every stored next offset of the group on the topic,
/// other replicas' partitions included (empty without `offsets`).
pub(super) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&NewEvent],
    sessions: &[SessionRow],
    offsets: Option<(GroupOffsets<'_>, &BTreeMap<i32, i64>)>,
) -> Result<HashMap<i32, i64>, Error> {
    if events.is_empty() && sessions.is_empty() && offsets.is_none() {
        return Ok(HashMap::new());
    }
    let (group, topic, (partitions, next)): (_, _, (Vec<i32>, Vec<i64>)) = match offsets {
        Some((key, next)) => (Some(key.group), Some(key.topic), next.iter().unzip()),
        None => (None, None, Default::default()),
    };
    let event = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        events.iter().map(|e| f(e)).collect()
    };
    let session = |f: &dyn Fn(&SessionRow) -> Option<DateTime<Utc>>| -> Vec<Option<DateTime<Utc>>> {
        sessions.iter().map(f).collect()
    };
    // `updated_at` of a session only moves when the row's content does.
    let rows = sqlx::query!(
        r#"WITH new_events AS (
             INSERT INTO ipp_events (event_id, event_type, merchant_id, session_id, order_id,
                 failure_reason, occurred_at, received_at, kafka_partition, kafka_offset,
                 payload)
             SELECT e, t, m, s, o, f, oc, r, p, k, pl::jsonb
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[],
                         $6::text[], $7::timestamptz[], $8::timestamptz[], $9::int4[],
                         $10::int8[], $11::text[])
                  AS u(e, t, m, s, o, f, oc, r, p, k, pl)
         ), sessions AS (
             INSERT INTO ipp_sessions (session_id, merchant_id, status, order_id, created_at,
                 activated_at, finalized_at, cancelled_at, failed_attempts,
                 last_failure_reason, last_event_id, last_event_at, event_count, anomalies,
                 updated_at)
             SELECT s, m, st, o, c, a, f, x, fa, lfr, lei, lea, ec,
                    COALESCE(string_to_array(NULLIF(an, ''), ','), '{}'), now()
             FROM UNNEST($12::uuid[], $13::text[], $14::text[], $15::uuid[],
                         $16::timestamptz[], $17::timestamptz[], $18::timestamptz[],
                         $19::timestamptz[], $20::int4[], $21::text[], $22::text[],
                         $23::timestamptz[], $24::int4[], $25::text[])
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
                    ipp_sessions.created_at, ipp_sessions.activated_at,
                    ipp_sessions.finalized_at, ipp_sessions.cancelled_at,
                    ipp_sessions.failed_attempts, ipp_sessions.last_failure_reason,
                    ipp_sessions.last_event_id, ipp_sessions.last_event_at,
                    ipp_sessions.event_count, ipp_sessions.anomalies)
               IS DISTINCT FROM
                   (EXCLUDED.merchant_id, EXCLUDED.status, EXCLUDED.order_id,
                    EXCLUDED.created_at, EXCLUDED.activated_at, EXCLUDED.finalized_at,
                    EXCLUDED.cancelled_at, EXCLUDED.failed_attempts,
                    EXCLUDED.last_failure_reason, EXCLUDED.last_event_id,
                    EXCLUDED.last_event_at, EXCLUDED.event_count, EXCLUDED.anomalies)
         ), saved AS (
             UPDATE ipp_projector_offsets AS o
             SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now()
             FROM UNNEST($28::int4[], $29::int8[]) AS u(p, n)
             WHERE o.consumer_group = $26 AND o.topic = $27 AND o.partition = u.p
             RETURNING o.partition, o.next_offset
         )
         SELECT partition AS "partition!", next_offset AS "next_offset!" FROM saved
         UNION ALL
         SELECT partition, next_offset FROM ipp_projector_offsets
         WHERE consumer_group = $26 AND topic = $27 AND partition <> ALL($28)"#,
        &event(&|e| Some(e.event.event_id.clone()))[..] as &[Option<String>],
        &event(&|e| Some(e.event.event_type.clone()))[..] as &[Option<String>],
        &event(&|e| e.event.merchant_id.clone())[..] as &[Option<String>],
        &events.iter().map(|e| e.session_id).collect::<Vec<_>>()[..],
        &events.iter().map(|e| e.event.order_id).collect::<Vec<_>>()[..] as &[Option<Uuid>],
        &event(&|e| e.event.failure_reason.clone())[..] as &[Option<String>],
        &events
            .iter()
            .map(|e| e.event.occurred_at)
            .collect::<Vec<_>>()[..],
        &events.iter().map(|e| e.received_at).collect::<Vec<_>>()[..],
        &events.iter().map(|e| e.kafka_partition).collect::<Vec<_>>()[..],
        &events.iter().map(|e| e.kafka_offset).collect::<Vec<_>>()[..],
        &event(&|e| Some(e.payload.clone()))[..] as &[Option<String>],
        &sessions.iter().map(|r| r.session_id).collect::<Vec<_>>()[..],
        &sessions
            .iter()
            .map(|r| r.merchant_id.clone())
            .collect::<Vec<_>>()[..] as &[Option<String>],
        &sessions
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>()[..] as &[&str],
        &sessions.iter().map(|r| r.order_id).collect::<Vec<_>>()[..] as &[Option<Uuid>],
        &session(&|r| r.created_at)[..] as &[Option<DateTime<Utc>>],
        &session(&|r| r.activated_at)[..] as &[Option<DateTime<Utc>>],
        &session(&|r| r.finalized_at)[..] as &[Option<DateTime<Utc>>],
        &session(&|r| r.cancelled_at)[..] as &[Option<DateTime<Utc>>],
        &sessions
            .iter()
            .map(|r| r.failed_attempts)
            .collect::<Vec<_>>()[..],
        &sessions
            .iter()
            .map(|r| r.last_failure_reason.clone())
            .collect::<Vec<_>>()[..] as &[Option<String>],
        &sessions
            .iter()
            .map(|r| r.last_event_id.clone())
            .collect::<Vec<_>>()[..],
        &sessions.iter().map(|r| r.last_event_at).collect::<Vec<_>>()[..],
        &sessions.iter().map(|r| r.event_count).collect::<Vec<_>>()[..],
        &sessions
            .iter()
            .map(|r| r.anomalies.join(","))
            .collect::<Vec<_>>()[..],
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
