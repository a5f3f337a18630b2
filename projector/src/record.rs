//! One `ipp.events` record, checked: [`decode`] turns it into a [`NewEvent`] ready to
//! store, or says why it can never be projected (the reason goes to the dead-letter
//! topic with the record).

use chrono::{DateTime, Utc};
use ipp_schemas::{dlq::route_error_reason, EventParseError, KustomEvent, RecordHeaders};
use uuid::Uuid;

use crate::{kafka::consumed::ConsumedRecord, session::SessionEvent};

/// A checked event, ready to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub session_id: Uuid,
    pub event: SessionEvent,
    pub received_at: DateTime<Utc>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The raw body, valid JSON that PostgreSQL `jsonb` accepts.
    pub payload: String,
}

/// What the engine does with each record: a record ingest marked as unroutable is parked
/// with ingest's reason; a value over `PROJECTOR_MAX_PAYLOAD_BYTES` is parked; the rest
/// is [`decode`]d.
pub fn check(message: &ConsumedRecord, max_payload_bytes: usize) -> Result<NewEvent, String> {
    if let Some(reason) = route_error_reason(message.headers()) {
        return Err(reason);
    }
    within_limit(message, max_payload_bytes)?;
    decode_routed(message)
}

/// A value over `PROJECTOR_MAX_PAYLOAD_BYTES` (0: no limit) is parked: an operator
/// raises the limit and redrives it (`ipp-projector dlq redrive`).
fn within_limit(message: &ConsumedRecord, max_payload_bytes: usize) -> Result<(), String> {
    let size = message.payload().map_or(0, <[u8]>::len);
    if max_payload_bytes > 0 && size > max_payload_bytes {
        return Err(format!(
            "record value is {size} bytes, over PROJECTOR_MAX_PAYLOAD_BYTES ({max_payload_bytes})"
        ));
    }
    Ok(())
}

/// Why a record cannot be projected; it goes to the dead-letter topic. A record ingest
/// marked as unroutable is parked with ingest's reason, before anything else is checked.
pub fn decode(message: &ConsumedRecord) -> Result<NewEvent, String> {
    if let Some(reason) = route_error_reason(message.headers()) {
        return Err(reason);
    }
    decode_routed(message)
}

/// [`decode`] of a record known not to carry ingest's route error.
fn decode_routed(message: &ConsumedRecord) -> Result<NewEvent, String> {
    let empty = ipp_kafka_headers::HeadersCopy::default();
    let headers = RecordHeaders::from_kafka(message.headers().unwrap_or(&empty))
        .map_err(|e| e.to_string())?;
    let body = message.payload().ok_or("record has no value")?;
    let payload = std::str::from_utf8(body)
        .map_err(|_| "record value is not UTF-8".to_owned())?
        .to_owned();
    // Valid JSON, but PostgreSQL text and jsonb cannot hold a NUL character.
    if has_nul_escape(&payload) {
        return Err("event contains \\u0000, which PostgreSQL cannot store".into());
    }
    let event = match KustomEvent::parse(body).map_err(|e: EventParseError| e.to_string())? {
        KustomEvent::Ipp(event) => event,
        KustomEvent::Other(envelope) => {
            return Err(format!("not an ipp.* event: type {}", envelope.event_type))
        }
    };
    if headers.event_id != event.id() {
        return Err(format!(
            "header kustom-event-id {:?} does not match the body's id {:?}",
            headers.event_id,
            event.id()
        ));
    }
    let session_id = event.session_id();
    let envelope = event.envelope;
    Ok(NewEvent {
        session_id,
        event: SessionEvent {
            event_id: envelope.id,
            event_type: envelope.event_type,
            merchant_id: envelope.merchant_id,
            order_id: envelope.data.order_id,
            failure_reason: envelope.data.failure_reason,
            occurred_at: envelope.timestamp,
        },
        received_at: headers.received_at,
        kafka_partition: message.partition(),
        kafka_offset: message.offset(),
        payload,
    })
}

/// Whether JSON text holds the escape `\u0000` (not an escaped backslash followed by
/// `u0000`, which is harmless text): PostgreSQL's `jsonb` refuses that escape.
fn has_nul_escape(json: &str) -> bool {
    json.match_indices("\\u0000").any(|(at, _)| {
        let backslashes_before = json[..at].bytes().rev().take_while(|&b| b == b'\\').count();
        backslashes_before % 2 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rdkafka::{
        message::{OwnedHeaders, OwnedMessage},
        Timestamp,
    };

    const ACTIVATED: &str = r#"{"id":"kevt_1","merchant_id":"M1","timestamp":"2026-06-05T18:37:41.232733416Z","type":"ipp.session.activated","data":{"session_id":"c749c48d-df11-4ae3-8e5f-2c8491b16214","order_id":null,"failure_reason":null}}"#;

    fn headers(event_id: &str) -> OwnedHeaders {
        RecordHeaders {
            event_id: event_id.into(),
            event_type: "ipp.session.activated".into(),
            merchant_id: Some("M1".into()),
            webhook_id: "msg_1".into(),
            webhook_timestamp: "1780000000".into(),
            received_at: Utc::now(),
        }
        .to_kafka()
    }

    fn message(value: &str, headers: Option<OwnedHeaders>) -> ConsumedRecord {
        ConsumedRecord::copy_of(&OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            Some(b"key".to_vec()),
            "ipp.events".into(),
            Timestamp::NotAvailable,
            3,
            42,
            headers,
        ))
    }

    #[test]
    fn decodes_an_ingest_record() {
        let event = decode(&message(ACTIVATED, Some(headers("kevt_1")))).unwrap();
        assert_eq!(event.event.event_id, "kevt_1");
        assert_eq!(event.kafka_partition, 3);
        assert_eq!(event.kafka_offset, 42);
        assert_eq!(
            event.event.occurred_at.timestamp_subsec_nanos(),
            232_733_416
        );
        assert_eq!(event.payload, ACTIVATED);
    }

    #[test]
    fn poison_records_say_why() {
        let cases = [
            (message(ACTIVATED, None), "ipp-received-at"),
            (
                message(ACTIVATED, Some(headers("kevt_2"))),
                "does not match",
            ),
            (message("{not json", Some(headers("kevt_1"))), "envelope"),
            (
                message(
                    &ACTIVATED.replace("c749c48d-", "zz"),
                    Some(headers("kevt_1")),
                ),
                "invalid data",
            ),
            (
                message(
                    &ACTIVATED.replace("ipp.session.activated", "ipp.session.finalized"),
                    Some(headers("kevt_1")),
                ),
                "no order_id",
            ),
            (
                message(
                    &ACTIVATED.replace("ipp.session.activated", "order.created"),
                    Some(headers("kevt_1")),
                ),
                "not an ipp.* event",
            ),
            (
                message(
                    &ACTIVATED.replace("\"M1\"", "\"M\\u0000\""),
                    Some(headers("kevt_1")),
                ),
                "\\u0000",
            ),
        ];
        for (record, reason) in cases {
            let error = decode(&record).unwrap_err();
            assert!(error.contains(reason), "{error} should mention {reason}");
        }
    }

    #[test]
    fn a_route_error_header_is_the_reason_even_for_a_valid_body() {
        let marked = headers("kevt_1").insert(rdkafka::message::Header {
            key: ipp_schemas::record::header::ROUTE_ERROR,
            value: Some("missing_id: missing or empty string field `id`"),
        });
        let record = message(ACTIVATED, Some(marked));
        let reason = "ingest could not route this body (ipp-route-error): missing_id: missing or empty string field `id`";
        assert_eq!(decode(&record).unwrap_err(), reason);
        assert_eq!(
            check(&record, 10).unwrap_err(),
            reason,
            "before the size limit"
        );
        let plain = message(ACTIVATED, Some(headers("kevt_1")));
        assert!(check(&plain, 10)
            .unwrap_err()
            .contains("over PROJECTOR_MAX_PAYLOAD_BYTES (10)"));
        assert!(check(&plain, 0).is_ok(), "0: no limit");
    }

    #[test]
    fn only_a_real_nul_escape_is_refused() {
        assert!(has_nul_escape(r#"{"a":"\u0000"}"#));
        assert!(
            has_nul_escape(r#"{"a":"x\\\u0000"}"#),
            "an escaped backslash, then the escape"
        );
        assert!(
            !has_nul_escape(r#"{"a":"\\u0000"}"#),
            "an escaped backslash, then text"
        );
        assert!(!has_nul_escape(r#"{"a":"\u0001"}"#));
        let text = ACTIVATED.replace("\"M1\"", r#""M\\u0000""#);
        let event = decode(&message(&text, Some(headers("kevt_1")))).unwrap();
        assert_eq!(event.event.merchant_id.as_deref(), Some(r"M\u0000"));
    }
}
