//! One parked record and what it says about itself: provenance, error, redrive count,
//! the event or failed action it holds, and the filters of `dlq list|redrive`.

use chrono::{DateTime, Utc};
use ipp_kafka_headers::HeadersCopy;
use ipp_schemas::{
    dlq::{header as dlq, FailedActionRecord},
    record::header,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde_json::{json, Value};

use crate::args::{Filters, RecordRef};

/// One record of a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The broker timestamp of the DLQ record.
    pub timestamp: Option<DateTime<Utc>>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In order, duplicates kept.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

#[cfg(test)]
impl DlqRecord {
    /// A parked record at `dlq` 0:7 with `value` and `headers`, for unit tests.
    pub(crate) fn parked_for_test(value: &str, headers: &[(&str, &str)]) -> Self {
        Self {
            topic: "dlq".into(),
            partition: 0,
            offset: 7,
            timestamp: None,
            key: Some(b"k".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }
}

impl DlqRecord {
    /// Copies a record off the consumer; a header name that is not UTF-8 holds U+FFFD.
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = HeadersCopy::of_message(message)
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub fn position(&self) -> RecordRef {
        RecordRef {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The last header of that name, as text (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn value_json(&self) -> Option<Value> {
        serde_json::from_slice(self.value.as_deref()?).ok()
    }

    pub fn source_topic(&self) -> Option<String> {
        self.header(dlq::SOURCE_TOPIC)
    }
    pub fn source_partition(&self) -> Option<i32> {
        self.header(dlq::SOURCE_PARTITION)?.parse().ok()
    }
    pub fn source_offset(&self) -> Option<i64> {
        self.header(dlq::SOURCE_OFFSET)?.parse().ok()
    }
    pub fn error(&self) -> Option<String> {
        self.header(dlq::ERROR)
    }
    pub fn service(&self) -> Option<String> {
        self.header(dlq::SERVICE)
    }
    /// How many times this record was redriven already (0 when never).
    pub fn redrive_count(&self) -> u32 {
        self.header(dlq::REDRIVE_COUNT)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    }

    /// When it was parked: the `dlq-failed-at` header, else the record's timestamp.
    pub fn parked_at(&self) -> Option<DateTime<Utc>> {
        self.header(dlq::FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or(self.timestamp)
    }

    pub fn event_id(&self) -> Option<String> {
        self.header(header::EVENT_ID).or_else(|| {
            let value = self.value_json()?;
            value["id"]
                .as_str()
                .or(value["event_id"].as_str())
                .map(str::to_owned)
        })
    }

    /// The event type; `action:capture` for a failed action.
    pub fn event_type(&self) -> Option<String> {
        if let Some(action) = self.failed_action() {
            return Some(format!("action:{}", action.action));
        }
        self.header(header::EVENT_TYPE)
            .or_else(|| self.value_json()?["type"].as_str().map(str::to_owned))
    }

    pub fn session_id(&self) -> Option<String> {
        let value = self.value_json()?;
        value["data"]["session_id"]
            .as_str()
            .or(value["session_id"].as_str())
            .map(str::to_owned)
    }

    pub fn order_id(&self) -> Option<String> {
        let value = self.value_json()?;
        value["data"]["order_id"]
            .as_str()
            .or(value["order_id"].as_str())
            .map(str::to_owned)
    }

    /// Some when this is ipp-actions' record of an action that ended `failed` (redriven
    /// by re-queuing the ledger row, not by producing anything).
    pub fn failed_action(&self) -> Option<FailedActionRecord> {
        FailedActionRecord::from_dead_letter(self.service().as_deref(), self.value.as_deref())
    }

    pub fn matches(&self, filters: &Filters) -> bool {
        if let Some(since) = filters.since {
            if self.parked_at().is_none_or(|at| at < since) {
                return false;
            }
        }
        let same = |wanted: &Option<String>, actual: Option<String>| match wanted {
            None => true,
            Some(w) => actual.is_some_and(|a| a.eq_ignore_ascii_case(w)),
        };
        same(&filters.event_type, self.event_type())
            && same(&filters.session, self.session_id())
            && same(&filters.order, self.order_id())
    }

    /// The line `dlq list --json` prints.
    pub fn summary(&self) -> Value {
        json!({
            "dlq_topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "position": self.position().to_string(),
            "parked_at": self.parked_at(),
            "service": self.service(),
            "source_topic": self.source_topic(),
            "source_partition": self.source_partition(),
            "source_offset": self.source_offset(),
            "event_id": self.event_id(),
            "event_type": self.event_type(),
            "session_id": self.session_id(),
            "order_id": self.order_id(),
            "redrive_count": self.redrive_count(),
            "error": self.error(),
        })
    }

    /// Everything, for `dlq show --json`.
    pub fn full(&self) -> Value {
        let text = |bytes: &Option<Vec<u8>>| {
            bytes
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let mut value = self.summary();
        value["timestamp"] = json!(self.timestamp);
        value["key"] = json!(text(&self.key));
        value["value"] = json!(text(&self.value));
        value["value_json"] = self.value_json().unwrap_or(Value::Null);
        value["headers"] = Value::Array(
            self.headers
                .iter()
                .map(|(k, v)| json!({"key": k, "value": text(v)}))
                .collect(),
        );
        value
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn record(value: &str, headers: &[(&str, &str)]) -> DlqRecord {
        DlqRecord::parked_for_test(value, headers)
    }

    #[test]
    fn reads_provenance_and_event_fields() {
        let r = record(
            r#"{"id":"kevt_1","type":"ipp.session.finalized","data":{"session_id":"s1","order_id":"o1"}}"#,
            &[
                ("dlq-source-topic", "ipp.events"),
                ("dlq-source-partition", "2"),
                ("dlq-source-offset", "41"),
                ("dlq-error", "boom"),
                ("dlq-failed-at", "2026-11-26T10:00:00.5Z"),
                ("dlq-redrive-count", "1"),
                ("dlq-redrive-count", "2"),
            ],
        );
        assert_eq!(r.source_topic().as_deref(), Some("ipp.events"));
        assert_eq!(r.source_partition(), Some(2));
        assert_eq!(r.source_offset(), Some(41));
        assert_eq!(r.redrive_count(), 2, "the last header wins");
        assert_eq!(r.event_id().as_deref(), Some("kevt_1"));
        assert_eq!(r.event_type().as_deref(), Some("ipp.session.finalized"));
        assert_eq!(r.session_id().as_deref(), Some("s1"));
        assert_eq!(r.order_id().as_deref(), Some("o1"));
        assert!(r.failed_action().is_none());
        let since = |s: &str| Filters {
            since: Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)),
            ..Filters::default()
        };
        assert!(r.matches(&since("2026-11-26T10:00:00Z")));
        assert!(!r.matches(&since("2026-11-26T10:00:01Z")));
        assert!(r.matches(&Filters {
            order: Some("O1".into()),
            ..Filters::default()
        }));
        assert!(!r.matches(&Filters {
            session: Some("s2".into()),
            ..Filters::default()
        }));
    }

    #[test]
    fn recognizes_a_failed_action() {
        let action = FailedActionRecord {
            order_id: Uuid::new_v4(),
            action: "capture".into(),
            session_id: Some(Uuid::new_v4()),
            command_id: None,
            kind: None,
            error_code: None,
            merchant_id: None,
            event_id: "kevt_9".into(),
            status: ipp_schemas::dlq::FailedStatus::Failed,
            reason: "order cancelled".into(),
            attempts: 1,
            idempotency_key: Uuid::new_v4(),
            requested_amount: None,
            last_status_code: Some(403),
            last_error: None,
            created_at: Utc::now(),
            failed_at: Utc::now(),
        };
        let value = serde_json::to_string(&action).unwrap();
        let r = record(&value, &[("dlq-service", "ipp-actions")]);
        assert_eq!(r.failed_action(), Some(action));
        assert_eq!(r.event_type().as_deref(), Some("action:capture"));
        assert_eq!(r.event_id().as_deref(), Some("kevt_9"));
        let parked_by_the_projector = record(&value, &[("dlq-service", "ipp-projector")]);
        assert_eq!(parked_by_the_projector.failed_action(), None);
    }
}
