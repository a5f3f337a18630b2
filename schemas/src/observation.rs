//! Observations: what ipp-actions learnt from Kustom Order Management, appended to the
//! observations topic (`ipp.observations`, keyed by order id) so that the orders read
//! model is built from the log alone and a rebuild or a replay never calls Order
//! Management (decision 0019). Two kinds:
//!
//! - [`OperationOutcome`]: how one of our own calls settled (a capture, a refund, a
//!   cancel, a release), written from the ledger once the row settled;
//! - [`OrderRead`]: what Order Management answered to a read of the order, its JSON kept
//!   as it came, with the Kustom event that prompted the read.
//!
//! An observation may be appended more than once (the ledger is its outbox, at least
//! once); its id is derived from what it observes, so a reader keeps it once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Namespace of observation ids: `UUIDv5(OBSERVATION_NAMESPACE, "{kind}:{what}")`
/// (UUIDv5 of the URL `https://github.com/ipp-pipeline/ipp-pipeline/observations`).
pub const OBSERVATION_NAMESPACE: Uuid = Uuid::from_u128(0x108a9bf0_849b_510b_a948_24c1999e0ed8);

/// One record of the observations topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub observation_id: Uuid,
    pub order_id: Uuid,
    /// The Kustom account of the order, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// When ipp-actions made the observation (the answer's arrival, or the row settling).
    pub observed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: ObservationKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObservationKind {
    Operation(OperationOutcome),
    OrderRead(OrderRead),
}

/// How one of our Order Management operations settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationOutcome {
    /// The ledger's action key (`capture:{session}`, `refund:{command}`, ...).
    pub action: String,
    /// `capture`, `refund`, `cancel` or `release_remaining_authorization`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// `succeeded`, `failed` or `skipped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Minor units: what was captured or refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An answer of `GET /ordermanagement/v1/orders/{order_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRead {
    /// The Kustom event (`kevt_…`) that prompted the read, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_event_type: Option<String>,
    /// The order as Order Management answered it, unknown fields kept.
    pub order: Value,
}

impl Observation {
    /// The id of the outcome of the ledger action `action` of `order_id`: one per action,
    /// whatever number of times it is published.
    pub fn outcome_id(order_id: Uuid, action: &str) -> Uuid {
        Uuid::new_v5(
            &OBSERVATION_NAMESPACE,
            format!("operation:{order_id}:{action}").as_bytes(),
        )
    }

    /// The id of the read of `order_id` prompted by the Kustom event `event_id`.
    pub fn read_id(order_id: Uuid, event_id: &str) -> Uuid {
        Uuid::new_v5(
            &OBSERVATION_NAMESPACE,
            format!("order_read:{order_id}:{event_id}").as_bytes(),
        )
    }

    /// Reads an observation record leniently: unknown fields are ignored.
    pub fn parse(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

/// The fields of an Order Management order that reconciliation reads, parsed leniently
/// from [`OrderRead::order`]: what is missing stays `None` (never a default that could
/// pass for a figure).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OmOrder {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub purchase_currency: Option<String>,
    #[serde(default)]
    pub original_order_amount: Option<i64>,
    #[serde(default)]
    pub order_amount: Option<i64>,
    #[serde(default)]
    pub captured_amount: Option<i64>,
    #[serde(default)]
    pub refunded_amount: Option<i64>,
    #[serde(default)]
    pub remaining_authorized_amount: Option<i64>,
    #[serde(default)]
    pub captures: Vec<OmCapture>,
    #[serde(default)]
    pub refunds: Vec<OmRefund>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OmCapture {
    pub capture_id: String,
    #[serde(default)]
    pub captured_amount: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OmRefund {
    pub refund_id: String,
    #[serde(default)]
    pub refunded_amount: Option<i64>,
}

impl OrderRead {
    /// The reconciliation fields of the order; `Err` when it is not an order object.
    pub fn om_order(&self) -> Result<OmOrder, serde_json::Error> {
        OmOrder::deserialize(&self.order)
    }
}

/// The Kustom events about an order's money that reconciliation reads from the other
/// topic (`kustom.events`): `capture.created`, `refund.created`, `dispute.created`,
/// `dispute.updated`. Their payloads are slim on purpose: ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    CaptureCreated {
        order_id: Uuid,
        capture_id: String,
    },
    RefundCreated {
        order_id: Uuid,
        refund_id: String,
    },
    Dispute {
        order_id: Uuid,
        dispute_id: String,
        status: Option<String>,
    },
}

impl OrderEvent {
    pub const CAPTURE_CREATED: &'static str = "capture.created";
    pub const REFUND_CREATED: &'static str = "refund.created";
    pub const DISPUTE_CREATED: &'static str = "dispute.created";
    pub const DISPUTE_UPDATED: &'static str = "dispute.updated";

    /// Whether an event of this type is about an order's money (and prompts a read).
    pub fn is_order_event(event_type: &str) -> bool {
        matches!(
            event_type,
            Self::CAPTURE_CREATED
                | Self::REFUND_CREATED
                | Self::DISPUTE_CREATED
                | Self::DISPUTE_UPDATED
        )
    }

    /// The event's meaning from its type and `data`: `Ok(None)` for a type that is not an
    /// order event (kept in the log, not used here), `Err` for an order event whose data
    /// lacks what it must name.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Option<Self>, String> {
        if !Self::is_order_event(event_type) {
            return Ok(None);
        }
        let text = |field: &str| -> Option<String> {
            match data.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            }
        };
        let order_id = text("order_id")
            .ok_or_else(|| format!("{event_type} has no order_id"))?
            .parse::<Uuid>()
            .map_err(|e| format!("{event_type} has an order_id that is not a UUID: {e}"))?;
        let required = |field: &str| {
            text(field).ok_or_else(|| format!("{event_type} of order {order_id} has no {field}"))
        };
        Ok(Some(match event_type {
            Self::CAPTURE_CREATED => Self::CaptureCreated {
                order_id,
                capture_id: required("capture_id")?,
            },
            Self::REFUND_CREATED => Self::RefundCreated {
                order_id,
                refund_id: required("refund_id")?,
            },
            _ => Self::Dispute {
                order_id,
                dispute_id: required("dispute_id")?,
                status: text("status"),
            },
        }))
    }

    pub fn order_id(&self) -> Uuid {
        match self {
            Self::CaptureCreated { order_id, .. }
            | Self::RefundCreated { order_id, .. }
            | Self::Dispute { order_id, .. } => *order_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order_id() -> Uuid {
        "ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f".parse().unwrap()
    }

    #[test]
    fn observations_round_trip_with_their_type_tag() {
        let outcome = Observation {
            observation_id: Observation::outcome_id(order_id(), "capture:s1"),
            order_id: order_id(),
            merchant_id: Some("DM1".into()),
            observed_at: "2026-12-02T10:00:00.123456789Z".parse().unwrap(),
            kind: ObservationKind::Operation(OperationOutcome {
                action: "capture:s1".into(),
                kind: "capture".into(),
                command_id: None,
                session_id: None,
                status: "succeeded".into(),
                capture_id: Some("cap-1".into()),
                refund_id: None,
                amount: Some(1234),
                reason: None,
            }),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["type"], "operation");
        assert_eq!(json["capture_id"], "cap-1");
        let back = Observation::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(back, outcome);

        let read = json!({
            "observation_id": Observation::read_id(order_id(), "kevt_1"),
            "order_id": order_id(),
            "observed_at": "2026-12-02T10:00:01Z",
            "type": "order_read",
            "trigger_event_id": "kevt_1",
            "order": {"status": "CAPTURED", "captured_amount": 1234, "new_field": 1},
            "unknown": true
        });
        let parsed = Observation::parse(read.to_string().as_bytes()).unwrap();
        let ObservationKind::OrderRead(read) = parsed.kind else {
            panic!("an order read");
        };
        let order = read.om_order().unwrap();
        assert_eq!(order.status.as_deref(), Some("CAPTURED"));
        assert_eq!(order.captured_amount, Some(1234));
        assert_eq!(order.refunded_amount, None);
        assert!(order.captures.is_empty());
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = Observation::outcome_id(order_id(), "capture:s1");
        assert_eq!(a, Observation::outcome_id(order_id(), "capture:s1"));
        assert_ne!(a, Observation::outcome_id(order_id(), "refund:c1"));
        assert_ne!(
            Observation::read_id(order_id(), "kevt_1"),
            Observation::read_id(order_id(), "kevt_2")
        );
    }

    #[test]
    fn order_events_are_read_leniently_and_checked_for_their_ids() {
        let data = json!({"order_id": order_id(), "capture_id": "cap-1", "extra": [1]});
        assert_eq!(
            OrderEvent::from_parts("capture.created", &data).unwrap(),
            Some(OrderEvent::CaptureCreated {
                order_id: order_id(),
                capture_id: "cap-1".into()
            })
        );
        assert_eq!(
            OrderEvent::from_parts("order.created", &data).unwrap(),
            None
        );
        let no_refund_id = json!({"order_id": order_id()});
        let error = OrderEvent::from_parts("refund.created", &no_refund_id).unwrap_err();
        assert!(error.contains("refund_id"), "{error}");
        let bad_order = json!({"order_id": "nope", "dispute_id": "d1"});
        assert!(OrderEvent::from_parts("dispute.created", &bad_order).is_err());
        let dispute = json!({"order_id": order_id(), "dispute_id": "d1", "status": "OPEN"});
        assert_eq!(
            OrderEvent::from_parts("dispute.updated", &dispute).unwrap(),
            Some(OrderEvent::Dispute {
                order_id: order_id(),
                dispute_id: "d1".into(),
                status: Some("OPEN".into())
            })
        );
    }
}
