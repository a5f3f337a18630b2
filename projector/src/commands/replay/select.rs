//! Which records a replay selects: its filters, over what the body says. The body is
//! read as plain JSON, not as `ipp_schemas::KustomEvent`, on purpose: a replay also
//! exports records that the typed parser refuses (the projector's poison records).

use rdkafka::Timestamp;
use serde_json::Value;
use uuid::Uuid;

use super::ReplayArgs;
use crate::kafka::consumed::ConsumedRecord;

/// What the body says, for filters and CSV columns.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) event: Option<Value>,
    pub(super) event_id: Option<String>,
    pub(super) event_type: Option<String>,
    pub(super) merchant_id: Option<String>,
    pub(super) session_id: Option<String>,
    pub(super) order_id: Option<String>,
}

impl Fields {
    pub(super) fn of(body: &[u8]) -> Self {
        let Ok(event) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Self {
            event_id: text(&event["id"]),
            event_type: text(&event["type"]),
            merchant_id: text(&event["merchant_id"]),
            session_id: text(&event["data"]["session_id"]),
            order_id: text(&event["data"]["order_id"]),
            event: Some(event),
        }
    }
}

impl ReplayArgs {
    pub(super) fn selects(&self, fields: &Fields) -> bool {
        if let Some(merchant) = &self.merchant {
            if fields.merchant_id.as_deref() != Some(merchant.as_str()) {
                return false;
            }
        }
        if let Some(session) = self.session {
            let matches = fields
                .session_id
                .as_deref()
                .and_then(|s| s.parse::<Uuid>().ok())
                == Some(session);
            if !matches {
                return false;
            }
        }
        self.event_types.is_empty()
            || fields
                .event_type
                .as_deref()
                .is_some_and(|t| self.event_types.iter().any(|e| e == t))
    }
}

pub(super) fn record_time(message: &ConsumedRecord) -> Option<i64> {
    match message.timestamp() {
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
        Timestamp::NotAvailable => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::replay::tests::args;

    const BODY: &str = r#"{"id":"kevt_1","merchant_id":"M1","timestamp":"2026-06-05T18:37:41.232733416Z","type":"ipp.session.activated","data":{"session_id":"c749c48d-df11-4ae3-8e5f-2c8491b16214","order_id":null,"failure_reason":null}}"#;

    #[test]
    fn filters_by_merchant_session_and_type() {
        let fields = Fields::of(BODY.as_bytes());
        assert!(args(&[]).selects(&fields));
        assert!(args(&["--merchant", "M1"]).selects(&fields));
        assert!(!args(&["--merchant", "M2"]).selects(&fields));
        assert!(args(&["--session", "c749c48d-df11-4ae3-8e5f-2c8491b16214"]).selects(&fields));
        assert!(!args(&["--session", "00000000-0000-0000-0000-000000000000"]).selects(&fields));
        assert!(args(&[
            "--event-type",
            "ipp.session.created",
            "--event-type",
            "ipp.session.activated"
        ])
        .selects(&fields));
        assert!(!args(&["--event-type", "ipp.session.created"]).selects(&fields));
        // A body that is not JSON matches no filter, but is exported without one.
        let garbage = Fields::of(b"{not json");
        assert!(args(&[]).selects(&garbage));
        assert!(!args(&["--merchant", "M1"]).selects(&garbage));
    }
}
