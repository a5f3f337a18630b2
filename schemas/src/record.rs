//! The Kafka record format, defined once for every producer and consumer.
//!
//! - **value**: the webhook body exactly as received, byte for byte;
//! - **key**: `data.session_id` for `ipp.*` events (a session's events share a
//!   partition), the event id for every other Kustom event;
//! - **headers**: [`RecordHeaders`], what ingest knew when it accepted the request.
//!
//! Dead-letter records keep the original value, key and headers and add the
//! [`dlq`] headers naming where the record came from and why it was parked.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Header names written by ingest.
pub mod header {
    pub const EVENT_ID: &str = "kustom-event-id";
    pub const EVENT_TYPE: &str = "kustom-event-type";
    pub const MERCHANT_ID: &str = "kustom-merchant-id";
    pub const WEBHOOK_ID: &str = "webhook-id";
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// RFC 3339 UTC, nanoseconds: when ingest accepted the request.
    pub const RECEIVED_AT: &str = "ipp-received-at";
    /// Set only on a signed body that could not be routed or cannot be projected (not
    /// JSON, not an object, no string `id`/`type`, an `ipp.*` event without a string
    /// `data.session_id`): `CODE: message`, CODE being the `RouteError` code. Ingest
    /// stores such a body anyway (Kustom signed it; a 4xx would make Kustom retry for
    /// days and then drop it), on the IPP topic, and its consumers park it in their
    /// dead-letter topics with this reason.
    pub const ROUTE_ERROR: &str = "ipp-route-error";
}

/// What ingest records beside the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeaders {
    pub event_id: String,
    pub event_type: String,
    pub merchant_id: Option<String>,
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordHeadersError {
    #[error("record has no `{0}` header")]
    Missing(&'static str),
    #[error("record header `{0}` is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("record header `{name}` is not an RFC 3339 timestamp: {value}")]
    BadTimestamp { name: &'static str, value: String },
}

/// Formats a timestamp the way every header and log line of this project does.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

impl RecordHeaders {
    pub fn to_kafka(&self) -> OwnedHeaders {
        let received_at = format_timestamp(self.received_at);
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(kafka_header(header::EVENT_ID, &self.event_id))
            .insert(kafka_header(header::EVENT_TYPE, &self.event_type))
            .insert(kafka_header(header::WEBHOOK_ID, &self.webhook_id))
            .insert(kafka_header(
                header::WEBHOOK_TIMESTAMP,
                &self.webhook_timestamp,
            ))
            .insert(kafka_header(header::RECEIVED_AT, &received_at));
        if let Some(merchant_id) = &self.merchant_id {
            headers = headers.insert(kafka_header(header::MERCHANT_ID, merchant_id));
        }
        headers
    }

    /// Reads ingest's headers in one pass: a lookup by name would be a pass of its own,
    /// and each header read is a call into librdkafka, for every record a consumer reads.
    /// As with [`header_str`], the last header of a name counts.
    pub fn from_kafka(headers: &impl Headers) -> Result<Self, RecordHeadersError> {
        let mut found: [(&'static str, Option<&[u8]>); 6] = [
            (header::RECEIVED_AT, None),
            (header::EVENT_ID, None),
            (header::EVENT_TYPE, None),
            (header::MERCHANT_ID, None),
            (header::WEBHOOK_ID, None),
            (header::WEBHOOK_TIMESTAMP, None),
        ];
        for h in headers.iter() {
            if let Some(slot) = found.iter_mut().find(|(name, _)| *name == h.key) {
                slot.1 = h.value;
            }
        }
        let optional = |name: &'static str| {
            let value = found.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v);
            value
                .map(|bytes| {
                    std::str::from_utf8(bytes)
                        .map(str::to_owned)
                        .map_err(|_| RecordHeadersError::NotUtf8(name))
                })
                .transpose()
        };
        let required = |name| optional(name)?.ok_or(RecordHeadersError::Missing(name));
        // Checked in this order, so a record missing several names the same one.
        let received_at = required(header::RECEIVED_AT)?;
        let received_at = DateTime::parse_from_rfc3339(&received_at)
            .map_err(|_| RecordHeadersError::BadTimestamp {
                name: header::RECEIVED_AT,
                value: received_at.clone(),
            })?
            .with_timezone(&Utc);
        Ok(Self {
            event_id: required(header::EVENT_ID)?,
            event_type: required(header::EVENT_TYPE)?,
            merchant_id: optional(header::MERCHANT_ID)?,
            webhook_id: required(header::WEBHOOK_ID)?,
            webhook_timestamp: required(header::WEBHOOK_TIMESTAMP)?,
            received_at,
        })
    }
}

pub fn kafka_header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// The last header of that name as a string, if present.
pub fn header_str(
    headers: &impl Headers,
    name: &'static str,
) -> Result<Option<String>, RecordHeadersError> {
    let found = headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value);
    match found {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| RecordHeadersError::NotUtf8(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_nanoseconds() {
        let headers = RecordHeaders {
            event_id: "kevt_1".into(),
            event_type: "ipp.session.created".into(),
            merchant_id: Some("M1".into()),
            webhook_id: "msg_1".into(),
            webhook_timestamp: "1780000000".into(),
            received_at: DateTime::parse_from_rfc3339("2026-06-05T18:37:41.232733416Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let parsed = RecordHeaders::from_kafka(&headers.to_kafka()).unwrap();
        assert_eq!(parsed, headers);
    }

    #[test]
    fn the_last_header_of_a_name_counts() {
        let headers = RecordHeaders {
            event_id: "kevt_1".into(),
            event_type: "ipp.session.created".into(),
            merchant_id: None,
            webhook_id: "msg_1".into(),
            webhook_timestamp: "1780000000".into(),
            received_at: DateTime::parse_from_rfc3339("2026-06-05T18:37:41Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let repeated = headers
            .to_kafka()
            .insert(kafka_header(header::EVENT_ID, "kevt_2"))
            .insert(kafka_header(header::MERCHANT_ID, "M2"));
        let parsed = RecordHeaders::from_kafka(&repeated).unwrap();
        assert_eq!(parsed.event_id, "kevt_2");
        assert_eq!(parsed.merchant_id.as_deref(), Some("M2"));
        assert_eq!(parsed.event_type, "ipp.session.created");
        assert_eq!(
            header_str(&repeated, header::EVENT_ID).unwrap().as_deref(),
            Some("kevt_2"),
            "one pass and a lookup by name agree"
        );
        // A last header without a value hides an earlier one, as with header_str.
        let unset = repeated.insert(Header {
            key: header::MERCHANT_ID,
            value: None::<&[u8]>,
        });
        let parsed = RecordHeaders::from_kafka(&unset).unwrap();
        assert_eq!(parsed.merchant_id, None);
        assert_eq!(header_str(&unset, header::MERCHANT_ID).unwrap(), None);
    }

    #[test]
    fn a_header_that_is_not_utf8_is_named() {
        let headers = OwnedHeaders::new()
            .insert(kafka_header(header::RECEIVED_AT, "2026-06-05T18:37:41Z"))
            .insert(Header {
                key: header::EVENT_ID,
                value: Some(&[0xff, 0xfe][..]),
            });
        let err = RecordHeaders::from_kafka(&headers).unwrap_err();
        assert_eq!(err, RecordHeadersError::NotUtf8(header::EVENT_ID));
    }

    #[test]
    fn missing_header_is_named() {
        let err = RecordHeaders::from_kafka(&OwnedHeaders::new()).unwrap_err();
        assert_eq!(err, RecordHeadersError::Missing(header::RECEIVED_AT));
    }
}
