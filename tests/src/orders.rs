//! The orders read model under test: a generated log of finalized sessions, Kustom's
//! capture/refund/dispute events and ipp-actions' observations, whose expected
//! reconciliation state is known per order, and the tables it must end in.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as Age, Utc};
use ipp_schemas::{
    observation::{ObservationKind, OperationOutcome, OrderRead},
    Observation,
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    produce::{ipp_body, Producer},
    projector::FINALIZED,
    wiring::Wiring,
};

/// Which topic of the orders model a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    Ipp,
    Other,
    Observations,
}

#[derive(Debug, Clone)]
pub struct LogRecord {
    pub to: To,
    pub key: String,
    pub value: Vec<u8>,
}

/// What an order of the generated log is, and so the state it must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Our capture, reported and listed by Kustom: `in_sync`.
    Captured,
    /// Our capture and refund, both confirmed: `in_sync`.
    CapturedAndRefunded,
    /// A capture Kustom reports that we did not make: `mismatch`.
    External,
    /// Our capture, never confirmed, made an hour ago: `mismatch`.
    UnconfirmedLong,
    /// Our capture, not confirmed yet, made just now: `awaiting_confirmation`.
    Unconfirmed,
    /// Our capture, listed by Kustom with another amount: `mismatch`.
    AmountDiffers,
}

impl Case {
    pub const ALL: [Self; 6] = [
        Self::Captured,
        Self::CapturedAndRefunded,
        Self::External,
        Self::UnconfirmedLong,
        Self::Unconfirmed,
        Self::AmountDiffers,
    ];

    pub fn state(self) -> &'static str {
        match self {
            Self::Captured | Self::CapturedAndRefunded => "in_sync",
            Self::Unconfirmed => "awaiting_confirmation",
            Self::External | Self::UnconfirmedLong | Self::AmountDiffers => "mismatch",
        }
    }

    /// The rule a mismatch breaks (the view's `mismatch_rule`).
    pub fn rule(self) -> Option<&'static str> {
        match self {
            Self::Captured | Self::CapturedAndRefunded | Self::Unconfirmed => None,
            Self::External => Some("not_made_by_this_pipeline"),
            Self::UnconfirmedLong => Some("not_confirmed"),
            Self::AmountDiffers => Some("amounts_differ"),
        }
    }

    /// A word the state's reason must contain.
    pub fn reason_contains(self) -> Option<&'static str> {
        match self {
            Self::Captured | Self::CapturedAndRefunded => None,
            Self::External => Some("not made by this pipeline"),
            Self::UnconfirmedLong => Some("not confirmed by Kustom"),
            Self::Unconfirmed => Some("awaiting Kustom"),
            Self::AmountDiffers => Some("amounts differ"),
        }
    }
}

pub struct OrdersLog {
    /// In the order things happened, each once.
    pub records: Vec<LogRecord>,
    pub cases: BTreeMap<Uuid, Case>,
    /// Orders with a dispute, and its final status.
    pub disputes: BTreeMap<Uuid, &'static str>,
}

impl OrdersLog {
    /// The records shuffled, with about a third delivered twice.
    pub fn shuffled_with_duplicates(&self, seed: u64) -> Vec<LogRecord> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut records = self.records.clone();
        let twice: Vec<LogRecord> = records
            .iter()
            .filter(|_| rng.random_bool(0.3))
            .cloned()
            .collect();
        records.extend(twice);
        records.shuffle(&mut rng);
        records
    }
}

fn observation(order_id: Uuid, id: Uuid, at: DateTime<Utc>, kind: ObservationKind) -> LogRecord {
    let observation = Observation {
        observation_id: id,
        order_id,
        merchant_id: Some("DM0001".into()),
        observed_at: at,
        kind,
    };
    LogRecord {
        to: To::Observations,
        key: order_id.to_string(),
        value: serde_json::to_vec(&observation).expect("json"),
    }
}

fn made(order_id: Uuid, kind: &str, id: &str, amount: i64, at: DateTime<Utc>) -> LogRecord {
    let action = format!("{kind}:{id}");
    let outcome = OperationOutcome {
        action: action.clone(),
        kind: kind.into(),
        command_id: None,
        session_id: None,
        status: "succeeded".into(),
        capture_id: (kind == "capture").then(|| id.to_owned()),
        refund_id: (kind == "refund").then(|| id.to_owned()),
        amount: Some(amount),
        reason: None,
    };
    observation(
        order_id,
        Observation::outcome_id(order_id, &action),
        at,
        ObservationKind::Operation(outcome),
    )
}

fn read(order_id: Uuid, event_id: &str, at: DateTime<Utc>, order: Value) -> LogRecord {
    let read = OrderRead {
        trigger_event_id: Some(event_id.into()),
        trigger_event_type: None,
        order,
    };
    observation(
        order_id,
        Observation::read_id(order_id, event_id),
        at,
        ObservationKind::OrderRead(read),
    )
}

fn kustom(event_id: &str, event_type: &str, at: DateTime<Utc>, data: &Value) -> LogRecord {
    let body = json!({
        "id": event_id,
        "merchant_id": "DM0001",
        "timestamp": ipp_schemas::record::format_timestamp(at),
        "type": event_type,
        "data": data,
    });
    LogRecord {
        to: To::Other,
        key: event_id.to_owned(),
        value: serde_json::to_vec(&body).expect("json"),
    }
}

/// `orders` orders, cycling through [`Case::ALL`]; every 4th order has a dispute.
pub fn orders_log(orders: usize, seed: u64) -> OrdersLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Utc::now() - Age::hours(2);
    let mut records = Vec::new();
    let mut cases = BTreeMap::new();
    let mut disputes = BTreeMap::new();
    for i in 0..orders {
        let case = Case::ALL[i % Case::ALL.len()];
        let order_id = Uuid::new_v4();
        let session_id = Uuid::new_v4();
        cases.insert(order_id, case);
        let at = start + Age::seconds(i as i64);
        let authorized: i64 = rng.random_range(1_000..100_000);
        records.push(LogRecord {
            to: To::Ipp,
            key: session_id.to_string(),
            value: ipp_body(
                &format!("kevt_fin_{i}"),
                FINALIZED,
                "DM0001",
                session_id,
                at,
                Some(order_id),
                None,
            ),
        });
        let capture_id = format!("cap-{i}");
        let om_order = |captured: i64, refunded: i64, captures: Value, refunds: Value| {
            json!({
                "order_id": order_id, "status": "CAPTURED", "purchase_currency": "EUR",
                "original_order_amount": authorized, "order_amount": authorized,
                "captured_amount": captured, "refunded_amount": refunded,
                "remaining_authorized_amount": authorized - captured,
                "captures": captures, "refunds": refunds,
            })
        };
        let captures = json!([{"capture_id": capture_id, "captured_amount": authorized}]);
        let reported = |n: &str| format!("kevt_cap_{i}_{n}");
        match case {
            Case::Captured | Case::CapturedAndRefunded | Case::AmountDiffers => {
                records.push(made(
                    order_id,
                    "capture",
                    &capture_id,
                    authorized,
                    at + Age::seconds(1),
                ));
                records.push(kustom(
                    &reported("1"),
                    "capture.created",
                    at + Age::seconds(2),
                    &json!({"order_id": order_id, "capture_id": capture_id}),
                ));
                let listed = if case == Case::AmountDiffers {
                    json!([{"capture_id": capture_id, "captured_amount": authorized - 100}])
                } else {
                    captures.clone()
                };
                let captured = if case == Case::AmountDiffers {
                    authorized - 100
                } else {
                    authorized
                };
                records.push(read(
                    order_id,
                    &reported("1"),
                    at + Age::seconds(3),
                    om_order(captured, 0, listed, json!([])),
                ));
                if case == Case::CapturedAndRefunded {
                    let refund_id = format!("ref-{i}");
                    let refunded = authorized / 2;
                    records.push(made(
                        order_id,
                        "refund",
                        &refund_id,
                        refunded,
                        at + Age::seconds(4),
                    ));
                    let event = format!("kevt_ref_{i}");
                    records.push(kustom(
                        &event,
                        "refund.created",
                        at + Age::seconds(5),
                        &json!({"order_id": order_id, "refund_id": refund_id}),
                    ));
                    records.push(read(
                        order_id,
                        &event,
                        at + Age::seconds(6),
                        om_order(
                            authorized,
                            refunded,
                            captures.clone(),
                            json!([{"refund_id": refund_id, "refunded_amount": refunded}]),
                        ),
                    ));
                }
            }
            Case::External => {
                records.push(kustom(
                    &reported("1"),
                    "capture.created",
                    at + Age::seconds(2),
                    &json!({"order_id": order_id, "capture_id": capture_id}),
                ));
                records.push(read(
                    order_id,
                    &reported("1"),
                    at + Age::seconds(3),
                    om_order(authorized, 0, captures.clone(), json!([])),
                ));
            }
            Case::UnconfirmedLong => {
                records.push(made(
                    order_id,
                    "capture",
                    &capture_id,
                    authorized,
                    at + Age::seconds(1),
                ));
            }
            Case::Unconfirmed => {
                records.push(made(
                    order_id,
                    "capture",
                    &capture_id,
                    authorized,
                    Utc::now(),
                ));
            }
        }
        if i % 4 == 0 {
            let dispute = json!({"order_id": order_id, "dispute_id": format!("dsp-{i}")});
            let mut updated = dispute.clone();
            updated["status"] = json!("RESOLVED");
            records.push(kustom(
                &format!("kevt_dsp_{i}_1"),
                "dispute.created",
                at + Age::seconds(7),
                &dispute,
            ));
            records.push(kustom(
                &format!("kevt_dsp_{i}_2"),
                "dispute.updated",
                at + Age::seconds(8),
                &updated,
            ));
            disputes.insert(order_id, "RESOLVED");
        }
    }
    OrdersLog {
        records,
        cases,
        disputes,
    }
}

/// Produces `records` to the wiring's three topics as ingest and ipp-actions would.
pub async fn send(wiring: &Wiring, records: &[LogRecord]) {
    let ipp = Producer::new(&wiring.brokers, &wiring.topic);
    let other = Producer::new(&wiring.brokers, &wiring.kustom_topic);
    let observations = Producer::new(&wiring.brokers, &wiring.observations_topic);
    for record in records {
        match record.to {
            To::Ipp => {
                ipp.send_event(&record.value).await;
            }
            To::Other => {
                other.send_event(&record.value).await;
            }
            To::Observations => {
                observations
                    .send_raw(
                        Some(record.key.as_bytes()),
                        Some(&record.value),
                        rdkafka::message::OwnedHeaders::new(),
                    )
                    .await;
            }
        }
    }
}

/// The `ipp_orders` row of `order` as JSON, if there is one.
pub async fn order_row(pool: &PgPool, order: Uuid) -> Option<Value> {
    sqlx::query_scalar("SELECT to_jsonb(o) FROM ipp_orders o WHERE order_id = $1")
        .bind(order)
        .fetch_optional(pool)
        .await
        .expect("ipp_orders")
}

/// The three fact tables and the view, as JSON rows in a stable order, without the
/// bookkeeping column `updated_at`.
pub async fn orders_tables(pool: &PgPool) -> Vec<Value> {
    let mut tables = Vec::new();
    for (table, order) in [
        ("ipp_order_facts", "order_id"),
        ("ipp_order_operations", "order_id, kind, operation_id"),
        ("ipp_order_disputes", "order_id, dispute_id"),
        ("ipp_orders", "order_id"),
    ] {
        let sql = format!(
            "SELECT coalesce(json_agg(to_jsonb(t) - 'updated_at' ORDER BY {order}), '[]'::json) FROM {table} t"
        );
        let rows: Value = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        tables.push(json!({ "table": table, "rows": rows }));
    }
    tables
}

/// Every order of `log` in its expected state, with the expected reason and disputes.
pub async fn assert_states(pool: &PgPool, log: &OrdersLog) {
    type Row = (Uuid, String, Option<String>, Option<String>, Vec<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, reconciliation_state, reconciliation_reason, mismatch_rule, disputes
         FROM ipp_orders",
    )
    .fetch_all(pool)
    .await
    .expect("ipp_orders");
    assert_eq!(rows.len(), log.cases.len(), "one row per order");
    for (order_id, state, reason, rule, disputes) in rows {
        let case = log.cases[&order_id];
        assert_eq!(state, case.state(), "{order_id} ({case:?}): {reason:?}");
        assert_eq!(rule.as_deref(), case.rule(), "{order_id} ({case:?})");
        match case.reason_contains() {
            Some(word) => {
                let reason = reason.unwrap_or_default();
                assert!(reason.contains(word), "{case:?}: {reason}");
            }
            None => assert_eq!(reason, None, "{case:?}"),
        }
        match log.disputes.get(&order_id) {
            Some(status) => {
                assert_eq!(disputes.len(), 1, "{order_id}: {disputes:?}");
                assert!(disputes[0].ends_with(status), "{order_id}: {disputes:?}");
            }
            None => assert!(disputes.is_empty(), "{order_id}: {disputes:?}"),
        }
    }
}
