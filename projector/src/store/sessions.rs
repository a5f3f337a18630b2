//! `ipp_sessions`: one row per session, the fold of its stored events.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{session::SessionRow, Error};

/// Takes the advisory lock of each session, in a fixed order (no deadlocks).
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    sessions: &BTreeSet<Uuid>,
) -> Result<(), Error> {
    let mut keys: Vec<i64> = sessions.iter().map(|s| lock_key(*s)).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query!(
        "SELECT count(pg_advisory_xact_lock(k))
         FROM UNNEST($1::int8[]) WITH ORDINALITY AS t(k, i)",
        &keys[..],
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

fn lock_key(session: Uuid) -> i64 {
    let bytes = session.as_bytes();
    i64::from_be_bytes(bytes[..8].try_into().expect("uuid has 16 bytes"))
}

/// One column of `rows`, as an array for `UNNEST`.
fn column<'a, T>(rows: &'a [SessionRow], f: impl Fn(&'a SessionRow) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

pub(super) async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[SessionRow],
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // `updated_at` only moves when the row's content does.
    sqlx::query!(
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
        &column(rows, |r| r.session_id)[..],
        &column(rows, |r| r.merchant_id.clone())[..] as &[Option<String>],
        &column(rows, |r| r.status.as_str())[..] as &[&str],
        &column(rows, |r| r.order_id)[..] as &[Option<Uuid>],
        &column(rows, |r| r.created_at)[..] as &[Option<DateTime<Utc>>],
        &column(rows, |r| r.activated_at)[..] as &[Option<DateTime<Utc>>],
        &column(rows, |r| r.finalized_at)[..] as &[Option<DateTime<Utc>>],
        &column(rows, |r| r.cancelled_at)[..] as &[Option<DateTime<Utc>>],
        &column(rows, |r| r.failed_attempts)[..],
        &column(rows, |r| r.last_failure_reason.clone())[..] as &[Option<String>],
        &column(rows, |r| r.last_event_id.clone())[..],
        &column(rows, |r| r.last_event_at)[..],
        &column(rows, |r| r.event_count)[..],
        &column(rows, |r| r.anomalies.join(","))[..],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
