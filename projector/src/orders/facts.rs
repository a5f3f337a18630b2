//! What one record of the orders model's three topics says about orders, as facts to
//! merge (decision 0019). Pure: the same record always gives the same facts.

use chrono::{DateTime, Utc};
use ipp_schemas::{
    observation::{ObservationKind, OrderEvent},
    Envelope, IppEvent, IppEventKind, Observation,
};
use serde_json::Value;
use uuid::Uuid;

/// Which of the model's topics a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `ipp.events`: an order exists once its session is finalized.
    Ipp,
    /// `kustom.events`: Kustom's capture, refund and dispute webhooks.
    Kustom,
    /// `ipp.observations`: our calls' outcomes and Order Management's answers.
    Observations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationKind {
    Capture,
    Refund,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Refund => "refund",
        }
    }
}

/// One capture or refund an Order Management read lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub kind: OperationKind,
    pub operation_id: String,
    pub amount: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Finalized {
        order_id: Uuid,
        session_id: Uuid,
        merchant_id: Option<String>,
        at: DateTime<Utc>,
        event_id: String,
    },
    /// Kustom's webhook says the operation exists.
    Reported {
        order_id: Uuid,
        kind: OperationKind,
        operation_id: String,
        at: DateTime<Utc>,
        event_id: String,
    },
    Dispute {
        order_id: Uuid,
        dispute_id: String,
        status: Option<String>,
        at: DateTime<Utc>,
        event_id: String,
    },
    /// One of our calls made the operation.
    Made {
        order_id: Uuid,
        kind: OperationKind,
        operation_id: String,
        action: String,
        command_id: Option<Uuid>,
        amount: Option<i64>,
        at: DateTime<Utc>,
    },
    /// What Order Management answered to a read of the order.
    Read {
        order_id: Uuid,
        read_id: Uuid,
        at: DateTime<Utc>,
        status: Option<String>,
        currency: Option<String>,
        authorized_amount: Option<i64>,
        captured_amount: Option<i64>,
        refunded_amount: Option<i64>,
        remaining_authorized_amount: Option<i64>,
        listed: Vec<Listed>,
    },
}

/// The facts of one record value. `Err` is a record that should hold facts and cannot
/// be read: it is parked. Records of other kinds give no facts: an IPP event that is not a
/// finalization, a Kustom event about something else, an outcome that moved no money.
/// An IPP event that cannot be parsed gives none either: the session projector parks it.
pub fn decode(source: Source, value: &[u8]) -> Result<Vec<Fact>, String> {
    match source {
        Source::Ipp => Ok(finalized(value).into_iter().collect()),
        Source::Kustom => kustom(value),
        Source::Observations => observation(value),
    }
}

fn finalized(value: &[u8]) -> Option<Fact> {
    let event = IppEvent::parse(value).ok()?;
    if event.kind != IppEventKind::SessionFinalized {
        return None;
    }
    Some(Fact::Finalized {
        order_id: event.order_id()?,
        session_id: event.session_id(),
        merchant_id: event.envelope.merchant_id.clone(),
        at: event.envelope.timestamp,
        event_id: event.envelope.id.clone(),
    })
}

fn kustom(value: &[u8]) -> Result<Vec<Fact>, String> {
    let envelope: Envelope<Value> =
        serde_json::from_slice(value).map_err(|e| format!("not a Kustom event envelope: {e}"))?;
    let Some(event) = OrderEvent::from_parts(&envelope.event_type, &envelope.data)? else {
        return Ok(Vec::new());
    };
    let (at, event_id) = (envelope.timestamp, envelope.id);
    Ok(vec![match event {
        OrderEvent::CaptureCreated {
            order_id,
            capture_id,
        } => Fact::Reported {
            order_id,
            kind: OperationKind::Capture,
            operation_id: capture_id,
            at,
            event_id,
        },
        OrderEvent::RefundCreated {
            order_id,
            refund_id,
        } => Fact::Reported {
            order_id,
            kind: OperationKind::Refund,
            operation_id: refund_id,
            at,
            event_id,
        },
        OrderEvent::Dispute {
            order_id,
            dispute_id,
            status,
        } => Fact::Dispute {
            order_id,
            dispute_id,
            status,
            at,
            event_id,
        },
    }])
}

fn observation(value: &[u8]) -> Result<Vec<Fact>, String> {
    let observation = Observation::parse(value).map_err(|e| format!("not an observation: {e}"))?;
    let order_id = observation.order_id;
    let at = observation.observed_at;
    match observation.kind {
        ObservationKind::Operation(outcome) => {
            if outcome.status != "succeeded" {
                return Ok(Vec::new());
            }
            let made = match outcome.kind.as_str() {
                "capture" => outcome.capture_id.map(|id| (OperationKind::Capture, id)),
                "refund" => outcome.refund_id.map(|id| (OperationKind::Refund, id)),
                // Cancels and releases move no money: the order's status shows them.
                _ => return Ok(Vec::new()),
            };
            let (kind, operation_id) = made.ok_or_else(|| {
                format!(
                    "a succeeded {} of order {order_id} without its {} id",
                    outcome.kind, outcome.kind
                )
            })?;
            Ok(vec![Fact::Made {
                order_id,
                kind,
                operation_id,
                action: outcome.action,
                command_id: outcome.command_id,
                amount: outcome.amount,
                at,
            }])
        }
        ObservationKind::OrderRead(read) => {
            let order = read
                .om_order()
                .map_err(|e| format!("the order read of {order_id} is not an order: {e}"))?;
            let captures = order.captures.into_iter().map(|c| Listed {
                kind: OperationKind::Capture,
                operation_id: c.capture_id,
                amount: c.captured_amount,
            });
            let refunds = order.refunds.into_iter().map(|r| Listed {
                kind: OperationKind::Refund,
                operation_id: r.refund_id,
                amount: r.refunded_amount,
            });
            Ok(vec![Fact::Read {
                order_id,
                read_id: observation.observation_id,
                at,
                status: order.status,
                currency: order.purchase_currency,
                authorized_amount: order.original_order_amount.or(order.order_amount),
                captured_amount: order.captured_amount,
                refunded_amount: order.refunded_amount,
                remaining_authorized_amount: order.remaining_authorized_amount,
                listed: captures.chain(refunds).collect(),
            }])
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ORDER: &str = "ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f";

    fn bytes(value: &Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    #[test]
    fn a_finalized_session_opens_its_order_and_other_ipp_events_say_nothing() {
        let finalized = json!({
            "id": "kevt_1", "merchant_id": "DM1", "timestamp": "2026-12-02T10:00:00Z",
            "type": "ipp.session.finalized",
            "data": {"session_id": "dc01aa86-fb99-4d05-97dc-e79a22650f9a", "order_id": ORDER}
        });
        let facts = decode(Source::Ipp, &bytes(&finalized)).unwrap();
        assert!(matches!(&facts[..], [Fact::Finalized { merchant_id: Some(m), .. }] if m == "DM1"));
        let activated = json!({
            "id": "kevt_2", "timestamp": "2026-12-02T10:00:00Z", "type": "ipp.session.activated",
            "data": {"session_id": "dc01aa86-fb99-4d05-97dc-e79a22650f9a"}
        });
        assert!(decode(Source::Ipp, &bytes(&activated)).unwrap().is_empty());
        assert!(decode(Source::Ipp, b"not json").unwrap().is_empty());
    }

    #[test]
    fn kustom_events_report_operations_and_unusable_ones_are_errors() {
        let capture = json!({
            "id": "kevt_3", "merchant_id": "DM1", "timestamp": "2026-12-02T10:00:01Z",
            "type": "capture.created", "data": {"order_id": ORDER, "capture_id": "cap-1"}
        });
        let facts = decode(Source::Kustom, &bytes(&capture)).unwrap();
        assert!(
            matches!(&facts[..], [Fact::Reported { kind: OperationKind::Capture, operation_id, .. }] if operation_id == "cap-1")
        );
        let other = json!({
            "id": "kevt_4", "timestamp": "2026-12-02T10:00:01Z", "type": "order.created",
            "data": {"order_id": ORDER}
        });
        assert!(decode(Source::Kustom, &bytes(&other)).unwrap().is_empty());
        let broken = json!({
            "id": "kevt_5", "timestamp": "2026-12-02T10:00:01Z", "type": "refund.created",
            "data": {"order_id": ORDER}
        });
        assert!(decode(Source::Kustom, &bytes(&broken)).is_err());
        assert!(decode(Source::Kustom, b"{").is_err());
    }

    #[test]
    fn outcomes_and_reads_become_made_and_read_facts() {
        let made = json!({
            "observation_id": "00000000-0000-0000-0000-000000000001", "order_id": ORDER,
            "observed_at": "2026-12-02T10:00:02Z", "type": "operation",
            "action": "capture:s1", "kind": "capture", "status": "succeeded",
            "capture_id": "cap-1", "amount": 1200
        });
        let facts = decode(Source::Observations, &bytes(&made)).unwrap();
        assert!(matches!(
            &facts[..],
            [Fact::Made {
                amount: Some(1200),
                ..
            }]
        ));
        let failed = json!({
            "observation_id": "00000000-0000-0000-0000-000000000002", "order_id": ORDER,
            "observed_at": "2026-12-02T10:00:02Z", "type": "operation",
            "action": "refund:c1", "kind": "refund", "status": "failed"
        });
        assert!(decode(Source::Observations, &bytes(&failed))
            .unwrap()
            .is_empty());
        let read = json!({
            "observation_id": "00000000-0000-0000-0000-000000000003", "order_id": ORDER,
            "observed_at": "2026-12-02T10:00:03Z", "type": "order_read",
            "order": {
                "status": "PART_CAPTURED", "purchase_currency": "EUR",
                "original_order_amount": 2000, "captured_amount": 1200, "refunded_amount": 0,
                "remaining_authorized_amount": 800,
                "captures": [{"capture_id": "cap-1", "captured_amount": 1200}],
                "refunds": []
            }
        });
        let facts = decode(Source::Observations, &bytes(&read)).unwrap();
        let [Fact::Read {
            listed,
            authorized_amount,
            ..
        }] = &facts[..]
        else {
            panic!("{facts:?}");
        };
        assert_eq!(*authorized_amount, Some(2000));
        assert_eq!(listed.len(), 1);
        let not_an_order = json!({
            "observation_id": "00000000-0000-0000-0000-000000000004", "order_id": ORDER,
            "observed_at": "2026-12-02T10:00:03Z", "type": "order_read", "order": [1, 2]
        });
        assert!(decode(Source::Observations, &bytes(&not_an_order)).is_err());
    }
}
