//! The projector's record checks (size limit, route error, decoding): any value, key and headers give either an event
//! ready to store or a reason to park the record, never a panic; and what it accepts
//! is something PostgreSQL can store and that matches the record's headers.
#![no_main]

use arbitrary::Arbitrary;
use ipp_projector::{engine::ConsumedRecord, record};
use ipp_schemas::record::header;
use libfuzzer_sys::fuzz_target;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

#[derive(Debug, Arbitrary)]
struct Input {
    value: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    /// Header name index (the names ingest writes, or another) and value.
    headers: Vec<(u8, Option<Vec<u8>>)>,
    /// Add the headers ingest writes, derived from the value, before `headers`.
    as_ingest_writes: bool,
    partition: i32,
    offset: i64,
    /// Check against a 256-byte `PROJECTOR_MAX_PAYLOAD_BYTES` (else no limit).
    small_limit: bool,
}

fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

const NAMES: &[&str] = &[
    header::EVENT_ID,
    header::EVENT_TYPE,
    header::MERCHANT_ID,
    header::WEBHOOK_ID,
    header::WEBHOOK_TIMESTAMP,
    header::RECEIVED_AT,
    header::ROUTE_ERROR,
    "something-else",
];

fuzz_target!(|input: Input| {
    let mut headers = OwnedHeaders::new();
    if input.as_ingest_writes {
        let id = input
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        for (name, value) in [
            (header::EVENT_ID, id.as_str()),
            (header::EVENT_TYPE, "ipp.session.created"),
            (header::WEBHOOK_ID, "msg_1"),
            (header::WEBHOOK_TIMESTAMP, "1780000000"),
            (header::RECEIVED_AT, "2026-06-01T12:00:00.000000001Z"),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
    }
    for (which, value) in &input.headers {
        let name = NAMES[usize::from(*which) % NAMES.len()];
        headers = headers.insert(Header {
            key: name,
            value: value.as_deref(),
        });
    }
    let message = ConsumedRecord::copy_of(&OwnedMessage::new(
        input.value.clone(),
        input.key.clone(),
        "ipp.events".into(),
        Timestamp::NotAvailable,
        input.partition,
        input.offset,
        Some(headers),
    ));
    let limit = if input.small_limit { 256 } else { 0 };
    let flagged = input
        .headers
        .iter()
        .any(|(which, _)| NAMES[usize::from(*which) % NAMES.len()] == header::ROUTE_ERROR);
    let checked = record::check(&message, limit);
    if flagged {
        assert!(
            checked.is_err(),
            "a record ingest flagged as unroutable was applied"
        );
    }
    if let Ok(event) = checked {
        let body = input
            .value
            .as_deref()
            .expect("an accepted record has a value");
        assert_eq!(
            event.payload.as_bytes(),
            body,
            "the payload is the value, byte for byte"
        );
        assert!(limit == 0 || body.len() <= limit, "over the size limit");
        let json: serde_json::Value =
            serde_json::from_str(&event.payload).expect("accepted payloads are JSON");
        assert!(
            !has_nul(&json),
            "PostgreSQL cannot store NUL in text or jsonb"
        );
        assert!(!event.payload.contains('\0'), "PostgreSQL cannot store NUL");
        assert_eq!(event.kafka_partition, input.partition);
        assert_eq!(event.kafka_offset, input.offset);
    }
});
