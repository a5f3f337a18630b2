//! `ipp_events`: one row per distinct event id, append-only.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{record::NewEvent, session::SessionEvent, Error};

/// Every stored event of `sessions`, as the fold reads it.
pub(super) async fn of_sessions(
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
    let rows = sqlx::query(
        "INSERT INTO ipp_events (event_id, event_type, merchant_id, session_id, order_id,
             failure_reason, occurred_at, received_at, kafka_partition, kafka_offset, payload)
         SELECT e, t, m, s, o, f, oc, r, p, k, pl::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::int8[], $11::text[])
              AS u(e, t, m, s, o, f, oc, r, p, k, pl)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
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
