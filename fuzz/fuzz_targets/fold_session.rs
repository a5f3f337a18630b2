//! The session fold, the model every read-model test checks the tables against: the row
//! depends only on the set of distinct events, whatever their order and duplicates; a
//! terminal status never regresses as events arrive; the counts and "last event" are
//! what the rule says.
#![no_main]

use arbitrary::Arbitrary;
use chrono::DateTime;
use ipp_projector::session::{fold, SessionEvent, Status};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const TYPES: &[&str] = &[
    "ipp.session.created",
    "ipp.session.activated",
    "ipp.session.finalized",
    "ipp.payment.finalized",
    "ipp.session.cancelled",
    "ipp.payment.failed",
    "ipp.session.expired",
];

#[derive(Debug, Arbitrary)]
struct Spec {
    kind: u8,
    /// Few distinct instants, so ties (broken by event id) are common.
    second: u8,
    nanos: u8,
    merchant: Option<u8>,
    order: Option<u8>,
    reason: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    specs: Vec<Spec>,
    /// Indices of events delivered again.
    duplicates: Vec<u8>,
    /// A permutation seed for the arrival order.
    shuffle: Vec<u8>,
}

fn event(index: usize, spec: &Spec) -> SessionEvent {
    let event_type = TYPES[usize::from(spec.kind) % TYPES.len()];
    SessionEvent {
        event_id: format!("kevt_{index}"),
        event_type: event_type.to_owned(),
        merchant_id: spec.merchant.map(|m| format!("M{}", m % 3)),
        order_id: spec.order.map(|o| Uuid::from_u128(u128::from(o % 3))),
        failure_reason: spec.reason.map(|r| format!("reason {r}")),
        occurred_at: DateTime::from_timestamp(
            1_780_000_000 + i64::from(spec.second % 8),
            u32::from(spec.nanos % 4),
        )
        .expect("in range"),
    }
}

fn rank(status: Status) -> u8 {
    match status {
        Status::Created => 0,
        Status::Activated => 1,
        Status::Cancelled => 2,
        Status::Finalized => 3,
    }
}

fuzz_target!(|input: Input| {
    let session = Uuid::from_u128(42);
    let events: Vec<SessionEvent> = input
        .specs
        .iter()
        .take(32)
        .enumerate()
        .map(|(i, spec)| event(i, spec))
        .collect();
    let Some(row) = fold(session, &events) else {
        assert!(events.is_empty());
        return;
    };

    // The same set in another order, with redeliveries, folds to the same row.
    let mut arrived = events.clone();
    for &d in input.duplicates.iter().take(32) {
        arrived.push(events[usize::from(d) % events.len()].clone());
    }
    for (i, &s) in input.shuffle.iter().enumerate() {
        let (a, b) = (i % arrived.len(), usize::from(s) % arrived.len());
        arrived.swap(a, b);
    }
    assert_eq!(
        fold(session, &arrived).as_ref(),
        Some(&row),
        "arrival order changed the row"
    );

    // As the events arrive one by one, the status never goes back down.
    let mut best = 0;
    for seen in 1..=arrived.len() {
        let partial = fold(session, &arrived[..seen]).expect("non-empty");
        assert!(rank(partial.status) >= best, "status regressed");
        best = rank(partial.status);
    }

    let has = |types: &[&str]| {
        events
            .iter()
            .any(|e| types.contains(&e.event_type.as_str()))
    };
    let expected = if has(&["ipp.session.finalized", "ipp.payment.finalized"]) {
        Status::Finalized
    } else if has(&["ipp.session.cancelled"]) {
        Status::Cancelled
    } else if has(&["ipp.session.activated"]) {
        Status::Activated
    } else {
        Status::Created
    };
    assert_eq!(row.status, expected);
    assert_eq!(row.event_count as usize, events.len());
    let failures = events
        .iter()
        .filter(|e| e.event_type == "ipp.payment.failed")
        .count();
    assert_eq!(row.failed_attempts as usize, failures);
    let last = events
        .iter()
        .max_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)))
        .expect("non-empty");
    assert_eq!(row.last_event_id, last.event_id);
    assert_eq!(row.last_event_at, last.occurred_at);
    if row.status != Status::Finalized {
        assert_eq!(
            row.order_id, None,
            "only a finalized session names its order"
        );
    }
    let mut sorted = row.anomalies.clone();
    sorted.sort();
    assert_eq!(row.anomalies, sorted, "anomalies are sorted");
});
