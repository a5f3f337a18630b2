//! The orders model's input for the catch-up with both read models: what the rest of the
//! pipeline writes for each finalized order in steady state. ipp-actions captures the
//! order and publishes the outcome, Kustom posts `capture.created`, and ipp-actions reads
//! the order back and publishes the read. So every order merges a finalization, an
//! outcome of ours, Kustom's report and a read listing the capture, and ends `in_sync`.

use std::collections::HashSet;

use anyhow::Context;
use chrono::Duration;
use ipp_schemas::{
    observation::{OperationOutcome, OrderRead},
    IppEventKind, KustomEvent, Observation, ObservationKind,
};
use serde_json::json;

/// The other two topics' records and what the orders model must merge from all three.
pub struct OrderFlow {
    /// `kustom.events`: one `capture.created` per order, after the mix's other events.
    pub kustom: Vec<Vec<u8>>,
    /// `ipp.observations` as (key, value): the capture's outcome and the read, per order.
    pub observations: Vec<(String, Vec<u8>)>,
    /// Facts the orders model merges from the three topics, duplicates counted (a
    /// duplicated finalized event is a fact each time it is read).
    pub facts: usize,
    /// Distinct orders: the rows `ipp_orders` must hold.
    pub orders: usize,
}

/// The flow of every order finalized in `ipp_bodies`; `other_kustom` are the mix's
/// events that are not ipp.* (they give the orders model no facts, and are read all the
/// same).
pub fn flow(ipp_bodies: &[Vec<u8>], other_kustom: Vec<Vec<u8>>) -> anyhow::Result<OrderFlow> {
    let mut kustom = other_kustom;
    let mut observations = Vec::new();
    let mut facts = 0;
    let mut seen = HashSet::new();
    for body in ipp_bodies {
        let KustomEvent::Ipp(event) = KustomEvent::parse(body)? else {
            continue;
        };
        if event.kind != IppEventKind::SessionFinalized {
            continue;
        }
        let Some(order_id) = event.order_id() else {
            continue;
        };
        facts += 1;
        if !seen.insert(order_id) {
            continue;
        }
        let merchant_id = event.envelope.merchant_id.clone();
        let finalized_at = event.envelope.timestamp;
        let session_id = event.session_id();
        // Any amount: the read lists the capture with the amount our outcome carries.
        let amount = 1_000 + (order_id.as_u128() % 90_000) as i64;
        let capture_id = format!("cap_{}", order_id.simple());
        let action = format!("capture:{session_id}");
        let outcome = Observation {
            observation_id: Observation::outcome_id(order_id, &action),
            order_id,
            merchant_id: merchant_id.clone(),
            observed_at: finalized_at + Duration::seconds(1),
            kind: ObservationKind::Operation(OperationOutcome {
                action,
                kind: "capture".into(),
                command_id: None,
                session_id: Some(session_id),
                status: "succeeded".into(),
                capture_id: Some(capture_id.clone()),
                refund_id: None,
                amount: Some(amount),
                reason: None,
            }),
        };
        let event_id = format!("kevt_capture_{}", order_id.simple());
        let reported = json!({
            "id": event_id, "merchant_id": merchant_id,
            "timestamp": ipp_schemas::record::format_timestamp(finalized_at + Duration::seconds(2)),
            "type": "capture.created",
            "data": {"order_id": order_id, "capture_id": capture_id},
        });
        let read = Observation {
            observation_id: Observation::read_id(order_id, &event_id),
            order_id,
            merchant_id,
            observed_at: finalized_at + Duration::seconds(3),
            kind: ObservationKind::OrderRead(OrderRead {
                trigger_event_id: Some(event_id),
                trigger_event_type: Some("capture.created".into()),
                order: json!({
                    "order_id": order_id, "status": "CAPTURED", "purchase_currency": "SEK",
                    "order_amount": amount, "original_order_amount": amount,
                    "captured_amount": amount, "refunded_amount": 0,
                    "remaining_authorized_amount": 0,
                    "captures": [{"capture_id": capture_id, "captured_amount": amount}],
                    "refunds": [],
                }),
            }),
        };
        kustom.push(serde_json::to_vec(&reported)?);
        for observation in [outcome, read] {
            let value = serde_json::to_vec(&observation).context("an observation")?;
            observations.push((order_id.to_string(), value));
        }
        facts += 3;
    }
    Ok(OrderFlow {
        kustom,
        observations,
        facts,
        orders: seen.len(),
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn finalized(order: Uuid, session: Uuid, id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": id, "merchant_id": "DM1", "timestamp": "2026-12-08T10:00:00Z",
            "type": "ipp.session.finalized",
            "data": {"session_id": session, "order_id": order},
        }))
        .unwrap()
    }

    #[test]
    fn each_order_gets_a_capture_its_report_and_a_read_and_duplicates_count_as_facts() {
        let (order, session) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let created = serde_json::to_vec(&json!({
            "id": "kevt_0", "timestamp": "2026-12-08T09:59:00Z", "type": "ipp.session.created",
            "data": {"session_id": session},
        }))
        .unwrap();
        let bodies = [
            created,
            finalized(order, session, "kevt_1"),
            finalized(order, session, "kevt_1"),
        ];
        let flow = flow(&bodies, vec![b"{}".to_vec()]).unwrap();
        assert_eq!((flow.facts, flow.orders), (5, 1));
        assert_eq!(flow.kustom.len(), 2);
        let reported: serde_json::Value = serde_json::from_slice(&flow.kustom[1]).unwrap();
        assert_eq!(reported["type"], "capture.created");
        let kinds: Vec<_> = flow
            .observations
            .iter()
            .map(|(key, value)| {
                assert_eq!(key, &order.to_string());
                match Observation::parse(value).unwrap().kind {
                    ObservationKind::Operation(o) => o.status,
                    ObservationKind::OrderRead(r) => r.trigger_event_type.unwrap(),
                }
            })
            .collect();
        assert_eq!(kinds, ["succeeded", "capture.created"]);
    }
}
