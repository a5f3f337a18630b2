//! The dead-letter topics' contract: the `dlq-*` headers every parked record carries,
//! which service parked it, and the value of a failed action, written by ipp-actions
//! and read by the operator commands (`dlq list|show|redrive`).

use chrono::{DateTime, Utc};
use rdkafka::message::Headers;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::header::ROUTE_ERROR;

/// The `dlq-*` header names.
pub mod header {
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    pub const ERROR: &str = "dlq-error";
    pub const FAILED_AT: &str = "dlq-failed-at";
    /// Which service parked the record ([`DlqService`]).
    pub const SERVICE: &str = "dlq-service";
    /// How many times the record was already redriven (the loop guard).
    pub const REDRIVE_COUNT: &str = "dlq-redrive-count";
}

/// Who parked a record: the value of its `dlq-service` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqService {
    Projector,
    Actions,
}

impl DlqService {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Projector => "ipp-projector",
            Self::Actions => "ipp-actions",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ipp-projector" => Some(Self::Projector),
            "ipp-actions" => Some(Self::Actions),
            _ => None,
        }
    }
}

/// The `dlq-error` of a record ingest stored although it could not route it (it carries
/// the [`ROUTE_ERROR`] header): both consumers park such a record with this reason,
/// whatever else is wrong with it, so the operator reads what ingest found rather than
/// a consequence of it (an empty `kustom-event-id` header, a missing field). `None`
/// without the header.
pub fn route_error_reason(headers: Option<&impl Headers>) -> Option<String> {
    let found = headers?.iter().filter(|h| h.key == ROUTE_ERROR).last()?;
    let why = found
        .value
        .map_or("(no reason given)".into(), String::from_utf8_lossy);
    Some(format!(
        "ingest could not route this body ({ROUTE_ERROR}): {why}"
    ))
}

/// The value of a dead letter ipp-actions writes when an action ends `failed`: the
/// ledger row's identity and why it failed. Key: the order id. A redrive re-queues the
/// row (same idempotency key) instead of producing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedActionRecord {
    pub order_id: Uuid,
    /// The action: `capture` (the automatic capture of a finalized session) or
    /// `{kind}:{command_id}` (a merchant's command).
    pub action: String,
    /// The finalized session behind an automatic capture; `None` for a command.
    pub session_id: Option<Uuid>,
    /// The command, for an action that came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// `capture`, `refund`, `cancel` or `release_remaining_authorization`; absent in
    /// records written before commands existed (they are captures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Order Management's `error_code` of a refusal, e.g. `REFUND_NOT_ALLOWED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub merchant_id: Option<String>,
    pub event_id: String,
    pub status: FailedStatus,
    pub reason: String,
    pub attempts: i32,
    pub idempotency_key: Uuid,
    pub requested_amount: Option<i64>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub failed_at: DateTime<Utc>,
}

/// Always `"failed"`: what a reader checks before it treats a value as a failed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailedStatus {
    Failed,
}

impl FailedActionRecord {
    /// The failed action a dead letter holds: `service` must be ipp-actions and the value
    /// this record's JSON. Anything else (a parked `ipp.events` record) is `None`.
    pub fn from_dead_letter(service: Option<&str>, value: Option<&[u8]>) -> Option<Self> {
        if service.and_then(DlqService::parse) != Some(DlqService::Actions) {
            return None;
        }
        serde_json::from_slice(value?).ok()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    #[test]
    fn a_route_error_header_is_the_reason() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "kustom-event-id",
                value: Some(""),
            })
            .insert(Header {
                key: ROUTE_ERROR,
                value: Some("missing_session_id: ipp event without a string `data.session_id`"),
            });
        assert_eq!(
            route_error_reason(Some(&headers)).as_deref(),
            Some("ingest could not route this body (ipp-route-error): missing_session_id: ipp event without a string `data.session_id`")
        );
        assert_eq!(route_error_reason(Some(&OwnedHeaders::new())), None);
        assert_eq!(route_error_reason(None::<&OwnedHeaders>), None);
    }

    fn record() -> FailedActionRecord {
        FailedActionRecord {
            order_id: Uuid::from_u128(1),
            action: "capture".into(),
            session_id: Some(Uuid::from_u128(2)),
            command_id: None,
            kind: None,
            error_code: None,
            merchant_id: Some("M1".into()),
            event_id: "kevt_1".into(),
            status: FailedStatus::Failed,
            reason: "order is cancelled".into(),
            attempts: 3,
            idempotency_key: Uuid::from_u128(3),
            requested_amount: Some(1000),
            last_status_code: Some(403),
            last_error: None,
            created_at: DateTime::from_timestamp(1_780_000_000, 0).unwrap(),
            failed_at: DateTime::from_timestamp(1_780_000_100, 0).unwrap(),
        }
    }

    #[test]
    fn round_trips_and_keeps_the_wire_names() {
        let json = serde_json::to_value(record()).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["order_id"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(
            json["idempotency_key"],
            "00000000-0000-0000-0000-000000000003"
        );
        let bytes = serde_json::to_vec(&record()).unwrap();
        assert_eq!(
            FailedActionRecord::from_dead_letter(Some("ipp-actions"), Some(&bytes)),
            Some(record())
        );
    }

    #[test]
    fn only_ipp_actions_failed_records_are_failed_actions() {
        let bytes = serde_json::to_vec(&record()).unwrap();
        assert_eq!(
            FailedActionRecord::from_dead_letter(Some("ipp-projector"), Some(&bytes)),
            None
        );
        let mut other = serde_json::to_value(record()).unwrap();
        other["status"] = "succeeded".into();
        let other = serde_json::to_vec(&other).unwrap();
        assert_eq!(
            FailedActionRecord::from_dead_letter(Some("ipp-actions"), Some(&other)),
            None
        );
        assert_eq!(
            FailedActionRecord::from_dead_letter(Some("ipp-actions"), Some(b"{not json")),
            None
        );
    }
}
