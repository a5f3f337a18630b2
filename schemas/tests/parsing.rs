//! The Rust types: lenient where Kustom may change things, exact where money depends on it.

use ipp_schemas::{IppEventKind, KustomEvent};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn ipp(name: &str) -> ipp_schemas::IppEvent {
    match KustomEvent::parse(&fixture(name)).unwrap() {
        KustomEvent::Ipp(event) => event,
        other => panic!("{name} parsed as {other:?}"),
    }
}

#[test]
fn documented_finalized_example_parses_with_nanoseconds() {
    let event = ipp("documented-session-finalized.json");
    assert_eq!(event.kind, IppEventKind::SessionFinalized);
    assert_eq!(event.id(), "kevt_62EvxyMEaAaHSGeoDTza47");
    assert_eq!(
        event.order_id().unwrap().to_string(),
        "ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f"
    );
    assert_eq!(
        event.envelope.timestamp.timestamp_subsec_nanos(),
        608_920_367
    );
    let reserialized = serde_json::to_value(&event.envelope).unwrap();
    assert_eq!(reserialized["timestamp"], "2026-06-05T18:33:39.608920367Z");
}

#[test]
fn payment_finalized_is_an_alias_of_session_finalized() {
    let event = ipp("payment-finalized-alias.json");
    assert_eq!(event.kind, IppEventKind::SessionFinalized);
    assert_eq!(event.envelope.event_type, "ipp.payment.finalized");
}

#[test]
fn unknown_types_and_fields_are_kept() {
    let event = ipp("unknown-ipp-type-with-extra-fields.json");
    assert_eq!(
        event.kind,
        IppEventKind::Unknown("ipp.session.expired".into())
    );
    assert_eq!(event.envelope.extra["api_version"], "2027-01");
    assert_eq!(event.envelope.data.extra["device_id"], "term-42");

    match KustomEvent::parse(&fixture("capture-created.json")).unwrap() {
        KustomEvent::Other(envelope) => {
            assert_eq!(envelope.event_type, "capture.created");
            assert_eq!(envelope.data["captured_amount"], 12500);
        }
        other => panic!("capture.created parsed as {other:?}"),
    }
}

#[test]
fn payment_failed_carries_its_reason() {
    let event = ipp("payment-failed.json");
    assert_eq!(event.kind, IppEventKind::PaymentFailed);
    assert_eq!(
        event.envelope.data.failure_reason.as_deref(),
        Some("card_declined")
    );
}

proptest! {
    /// Any nanosecond timestamp survives a parse and a re-serialisation.
    #[test]
    fn timestamps_keep_nanoseconds(secs in 0i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
        let at = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
        let body = serde_json::json!({
            "id": "kevt_x", "timestamp": ipp_schemas::record::format_timestamp(at),
            "type": "ipp.session.created",
            "data": {"session_id": "c749c48d-df11-4ae3-8e5f-2c8491b16214"}
        });
        let event = match KustomEvent::parse(&serde_json::to_vec(&body).unwrap()).unwrap() {
            KustomEvent::Ipp(event) => event,
            other => panic!("{other:?}"),
        };
        prop_assert_eq!(event.envelope.timestamp, at);
    }
}
