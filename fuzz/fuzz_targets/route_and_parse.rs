//! Routing and event parsing of arbitrary bodies: never a panic, and the router and the
//! parsers agree on what a body is. Downstream code relies on these agreements (the
//! actions consumer `expect`s an order id on every parsed finalized event, and a
//! session's events must share a partition key).
#![no_main]

use ipp_schemas::{route::is_ipp_type, IppEvent, IppEventKind, KustomEvent, Route};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let route = Route::parse(body);
    let event = KustomEvent::parse(body);
    let ipp = IppEvent::parse(body);

    if let Ok(route) = &route {
        let value: Value = serde_json::from_slice(body).expect("routed bodies are JSON");
        assert_eq!(value["id"].as_str(), Some(route.event_id.as_str()));
        assert_eq!(value["type"].as_str(), Some(route.event_type.as_str()));
        assert!(!route.key().is_empty(), "an empty partition key");
        if route.is_ipp() {
            assert!(is_ipp_type(&route.event_type));
            assert_eq!(route.key(), value["data"]["session_id"].as_str().unwrap());
        } else {
            assert_eq!(route.key(), route.event_id);
        }
    }
    if let Ok(KustomEvent::Ipp(parsed)) = &event {
        assert!(is_ipp_type(&parsed.envelope.event_type));
        assert_eq!(Some(parsed), ipp.as_ref().ok(), "the two parsers disagree");
    }
    if let Ok(KustomEvent::Other(envelope)) = &event {
        assert!(!is_ipp_type(&envelope.event_type));
    }
    if let Ok(parsed) = &ipp {
        if parsed.kind == IppEventKind::SessionFinalized {
            assert!(
                parsed.order_id().is_some(),
                "a finalized event without an order"
            );
        }
    }
    // An ipp event both accept goes to its session's partition.
    if let (Ok(parsed), Ok(route)) = (&ipp, &route) {
        if route.is_ipp() {
            let key: uuid::Uuid = route.key().parse().expect("the key is the session id");
            assert_eq!(key, parsed.session_id());
        }
    }
});
