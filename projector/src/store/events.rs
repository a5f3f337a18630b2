//! `ipp_events`: one row per distinct event id, append-only.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{record::NewEvent, session::SessionEvent, Error};

/// Every stored event of `sessions`, as the fold reads it.
pub(super) async fn of_sessions(
    tx: &mut Transaction<'_, Postgres>,
    sessions: &BTreeSet<Uuid>,
) -> Result<HashMap<Uuid, Vec<SessionEvent>>, Error> {
    let ids: Vec<Uuid> = sessions.iter().copied().collect();
    let rows = sqlx::query!(
        r#"SELECT session_id, event_id, event_type, merchant_id, order_id, failure_reason,
                occurred_at, payload->>'timestamp' AS "payload_timestamp?"
         FROM ipp_events WHERE session_id = ANY($1)"#,
        &ids[..],
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut by_session: HashMap<Uuid, Vec<SessionEvent>> = HashMap::new();
    for row in rows {
        // The payload keeps the nanoseconds PostgreSQL drops.
        let occurred_at = row
            .payload_timestamp
            .and_then(|raw| DateTime::parse_from_rfc3339(&raw).ok())
            .map_or(row.occurred_at, |t| t.with_timezone(&Utc));
        by_session
            .entry(row.session_id)
            .or_default()
            .push(SessionEvent {
                event_id: row.event_id,
                event_type: row.event_type,
                merchant_id: row.merchant_id,
                order_id: row.order_id,
                failure_reason: row.failure_reason,
                occurred_at,
            });
    }
    Ok(by_session)
}

/// Stores the events whose id is new (the first copy wins) and returns them.
pub(super) async fn insert<'a>(
    tx: &mut Transaction<'_, Postgres>,
    distinct: Vec<&'a NewEvent>,
) -> Result<Vec<&'a NewEvent>, Error> {
    if distinct.is_empty() {
        return Ok(distinct);
    }
    let column = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        distinct.iter().map(|e| f(e)).collect()
    };
    let inserted: HashSet<String> = sqlx::query_scalar!(
        "INSERT INTO ipp_events (event_id, event_type, merchant_id, session_id, order_id,
             failure_reason, occurred_at, received_at, kafka_partition, kafka_offset, payload)
         SELECT e, t, m, s, o, f, oc, r, p, k, pl::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::int8[], $11::text[])
              AS u(e, t, m, s, o, f, oc, r, p, k, pl)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
        &column(&|e| Some(e.event.event_id.clone()))[..] as &[Option<String>],
        &column(&|e| Some(e.event.event_type.clone()))[..] as &[Option<String>],
        &column(&|e| e.event.merchant_id.clone())[..] as &[Option<String>],
        &distinct.iter().map(|e| e.session_id).collect::<Vec<_>>()[..],
        &distinct
            .iter()
            .map(|e| e.event.order_id)
            .collect::<Vec<_>>()[..] as &[Option<Uuid>],
        &column(&|e| e.event.failure_reason.clone())[..] as &[Option<String>],
        &distinct
            .iter()
            .map(|e| e.event.occurred_at)
            .collect::<Vec<_>>()[..],
        &distinct.iter().map(|e| e.received_at).collect::<Vec<_>>()[..],
        &distinct
            .iter()
            .map(|e| e.kafka_partition)
            .collect::<Vec<_>>()[..],
        &distinct.iter().map(|e| e.kafka_offset).collect::<Vec<_>>()[..],
        &column(&|e| Some(e.payload.clone()))[..] as &[Option<String>],
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    Ok(distinct
        .into_iter()
        .filter(|e| inserted.contains(&e.event.event_id))
        .collect())
}
