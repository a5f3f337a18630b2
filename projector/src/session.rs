//! The session status rule: a pure fold over the set of a session's distinct events.
//!
//! The row depends only on the set of events (deduplicated by event id), never on the
//! order they arrived in: every choice below is a min/max under a total order or a count.
//! - status: `finalized` if any finalized event (`ipp.session.finalized` or its alias
//!   `ipp.payment.finalized`) is in the set, else `cancelled` if any cancellation, else
//!   `activated` if any activation, else `created`. Seeing any event of a session means
//!   it was created, even before its `ipp.session.created` arrives. So a terminal status
//!   never regresses and late `created`/`activated` events only fill in timestamps.
//! - both terminal events: finalized wins (money moved, and ipp-actions captures it);
//!   the session gets the `finalized_and_cancelled` anomaly so nobody has to guess.
//! - `*_at`: the earliest event of that type. Ties between events are broken by
//!   `(occurred_at, event_id)`; `last_event_*` is the greatest such pair.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ipp_schemas::IppEventKind;
use uuid::Uuid;

/// A session that showed both a finalized and a cancelled event.
pub const ANOMALY_FINALIZED_AND_CANCELLED: &str = "finalized_and_cancelled";
/// Finalized events of one session that name different orders.
pub const ANOMALY_CONFLICTING_ORDER_IDS: &str = "conflicting_order_ids";
/// Events of one session that name different merchants.
pub const ANOMALY_CONFLICTING_MERCHANT_IDS: &str = "conflicting_merchant_ids";

/// The part of a stored event the fold reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub event_id: String,
    pub event_type: String,
    pub merchant_id: Option<String>,
    pub order_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    /// The event's own timestamp, with the nanoseconds of the raw payload.
    pub occurred_at: DateTime<Utc>,
}

impl SessionEvent {
    fn kind(&self) -> IppEventKind {
        IppEventKind::from_type(&self.event_type)
    }

    fn order_key(&self) -> (DateTime<Utc>, &str) {
        (self.occurred_at, &self.event_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Created,
    Activated,
    Cancelled,
    Finalized,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Activated => "activated",
            Self::Cancelled => "cancelled",
            Self::Finalized => "finalized",
        }
    }
}

/// One `ipp_sessions` row, minus `updated_at` (the time the row was last written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub merchant_id: Option<String>,
    pub status: Status,
    pub order_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub failed_attempts: i32,
    pub last_failure_reason: Option<String>,
    pub last_event_id: String,
    pub last_event_at: DateTime<Utc>,
    pub event_count: i32,
    /// Sorted anomaly codes; empty for a well-behaved session.
    pub anomalies: Vec<String>,
}

/// Folds a session's events into its row. Duplicates (same event id) count once; the
/// first copy in `events` is the one kept, which only matters if two copies of one id
/// differ, which Kustom's unique event ids rule out. `None` when `events` is empty.
pub fn fold<'a>(
    session_id: Uuid,
    events: impl IntoIterator<Item = &'a SessionEvent>,
) -> Option<SessionRow> {
    let mut distinct: BTreeMap<&str, &SessionEvent> = BTreeMap::new();
    for event in events {
        distinct.entry(event.event_id.as_str()).or_insert(event);
    }
    // Sorted by (occurred_at, event_id): a total order over distinct events.
    let mut ordered: Vec<&SessionEvent> = distinct.into_values().collect();
    ordered.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let last = *ordered.last()?;

    let first_of = |wanted: &dyn Fn(&IppEventKind) -> bool| {
        ordered.iter().copied().find(|e| wanted(&e.kind()))
    };
    let created = first_of(&|k| *k == IppEventKind::SessionCreated);
    let activated = first_of(&|k| *k == IppEventKind::SessionActivated);
    let finalized = first_of(&|k| *k == IppEventKind::SessionFinalized);
    let cancelled = first_of(&|k| *k == IppEventKind::SessionCancelled);
    let failures: Vec<&SessionEvent> = ordered
        .iter()
        .copied()
        .filter(|e| e.kind() == IppEventKind::PaymentFailed)
        .collect();

    let status = match (finalized, cancelled, activated) {
        (Some(_), _, _) => Status::Finalized,
        (None, Some(_), _) => Status::Cancelled,
        (None, None, Some(_)) => Status::Activated,
        (None, None, None) => Status::Created,
    };

    let mut anomalies = BTreeSet::new();
    if finalized.is_some() && cancelled.is_some() {
        anomalies.insert(ANOMALY_FINALIZED_AND_CANCELLED);
    }
    let order_ids: BTreeSet<Uuid> = ordered
        .iter()
        .filter(|e| e.kind() == IppEventKind::SessionFinalized)
        .filter_map(|e| e.order_id)
        .collect();
    if order_ids.len() > 1 {
        anomalies.insert(ANOMALY_CONFLICTING_ORDER_IDS);
    }
    let merchant_ids: BTreeSet<&str> = ordered
        .iter()
        .filter_map(|e| e.merchant_id.as_deref())
        .collect();
    if merchant_ids.len() > 1 {
        anomalies.insert(ANOMALY_CONFLICTING_MERCHANT_IDS);
    }

    Some(SessionRow {
        session_id,
        merchant_id: ordered.iter().find_map(|e| e.merchant_id.clone()),
        status,
        order_id: finalized.and_then(|e| e.order_id),
        created_at: created.map(|e| e.occurred_at),
        activated_at: activated.map(|e| e.occurred_at),
        finalized_at: finalized.map(|e| e.occurred_at),
        cancelled_at: cancelled.map(|e| e.occurred_at),
        failed_attempts: count(failures.len()),
        last_failure_reason: failures.last().and_then(|e| e.failure_reason.clone()),
        last_event_id: last.event_id.clone(),
        last_event_at: last.occurred_at,
        event_count: count(ordered.len()),
        anomalies: anomalies.into_iter().map(str::to_owned).collect(),
    })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + seconds, nanos).unwrap()
    }

    fn event(id: &str, event_type: &str, at: DateTime<Utc>) -> SessionEvent {
        SessionEvent {
            event_id: id.into(),
            event_type: event_type.into(),
            merchant_id: Some("M1".into()),
            order_id: event_type
                .ends_with("finalized")
                .then(|| Uuid::from_u128(7)),
            failure_reason: (event_type == "ipp.payment.failed").then(|| format!("r-{id}")),
            occurred_at: at,
        }
    }

    #[test]
    fn late_created_fills_in_without_regressing() {
        let s = Uuid::from_u128(1);
        let events = [
            event("e3", "ipp.session.finalized", at(30, 0)),
            event("e1", "ipp.session.created", at(10, 0)),
        ];
        let row = fold(s, &events).unwrap();
        assert_eq!(row.status, Status::Finalized);
        assert_eq!(row.created_at, Some(at(10, 0)));
        assert_eq!(row.activated_at, None);
        assert_eq!(row.order_id, Some(Uuid::from_u128(7)));
        assert_eq!(row.last_event_id, "e3");
        assert!(row.anomalies.is_empty());
    }

    #[test]
    fn finalized_wins_over_cancelled_and_is_flagged() {
        let s = Uuid::from_u128(1);
        let events = [
            event("e2", "ipp.session.cancelled", at(40, 0)),
            event("e1", "ipp.payment.finalized", at(30, 0)),
        ];
        let row = fold(s, &events).unwrap();
        assert_eq!(row.status, Status::Finalized);
        assert_eq!(row.cancelled_at, Some(at(40, 0)));
        assert_eq!(row.anomalies, vec![ANOMALY_FINALIZED_AND_CANCELLED]);
    }

    #[test]
    fn unknown_types_count_but_do_not_change_status() {
        let s = Uuid::from_u128(1);
        let events = [
            event("e1", "ipp.session.activated", at(10, 0)),
            event("e2", "ipp.session.expired", at(20, 0)),
            event("e3", "ipp.payment.failed", at(15, 0)),
            event("e4", "ipp.payment.failed", at(16, 0)),
        ];
        let row = fold(s, &events).unwrap();
        assert_eq!(row.status, Status::Activated);
        assert_eq!(row.event_count, 4);
        assert_eq!(row.failed_attempts, 2);
        assert_eq!(row.last_failure_reason.as_deref(), Some("r-e4"));
        assert_eq!(row.last_event_id, "e2");
    }

    #[test]
    fn ties_break_on_event_id_within_one_nanosecond() {
        let s = Uuid::from_u128(1);
        let t = at(10, 5);
        let events = [
            event("b", "ipp.payment.failed", t),
            event("a", "ipp.payment.failed", t),
        ];
        let row = fold(s, &events).unwrap();
        assert_eq!(row.last_event_id, "b");
        assert_eq!(row.last_failure_reason.as_deref(), Some("r-b"));
    }

    const TYPES: &[&str] = &[
        "ipp.session.created",
        "ipp.session.activated",
        "ipp.session.finalized",
        "ipp.payment.finalized",
        "ipp.session.cancelled",
        "ipp.payment.failed",
        "ipp.session.expired",
    ];

    fn session_events() -> impl Strategy<Value = Vec<SessionEvent>> {
        // Few distinct timestamps, so ties are common.
        prop::collection::vec((0..TYPES.len(), 0i64..4, 0u32..3), 1..8).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (t, s, n))| event(&format!("kevt_{i}"), TYPES[t], at(s, n)))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_order_with_duplicates_folds_the_same(
            (events, shuffled) in session_events().prop_flat_map(|events| {
                let dups = prop::collection::vec(0..events.len(), 0..6);
                (Just(events), dups).prop_flat_map(|(events, dups)| {
                    let mut all = events.clone();
                    all.extend(dups.into_iter().map(|i| events[i].clone()));
                    (Just(events), Just(all).prop_shuffle())
                })
            })
        ) {
            let s = Uuid::from_u128(9);
            prop_assert_eq!(fold(s, &events), fold(s, &shuffled));
        }
    }
}
