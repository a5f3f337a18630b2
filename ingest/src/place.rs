//! Where a verified body goes: its topic, its key and what its record says about it.
//!
//! A routable event goes where it always went: `ipp.*` events to the IPP topic keyed by
//! `data.session_id`, others to the other-events topic keyed by event id. A body that
//! cannot be routed (or cannot be projected) is stored anyway, because Kustom signed it:
//! on the IPP topic, whose consumers park what they cannot use, flagged with the
//! `ipp-route-error` header, keyed by its event id if it has a string one, else by the
//! `webhook-id` (Kustom's redeliveries reuse it, so they share a partition).

use ipp_schemas::{Route, RouteError};

/// The two topics ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Ipp,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub topic: Topic,
    /// `None` only for an unroutable body without an event id nor a `webhook-id` (which
    /// only `--insecure-skip-verify` lets through).
    pub key: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub merchant_id: Option<String>,
    pub session_id: Option<String>,
    /// Why the body cannot be routed, when it cannot.
    pub route_error: Option<RouteError>,
}

impl Placement {
    pub fn of(body: &[u8], webhook_id: &str) -> Self {
        match Route::read(body) {
            Ok(route) => Self {
                topic: if route.is_ipp() {
                    Topic::Ipp
                } else {
                    Topic::Other
                },
                key: Some(route.key().to_owned()),
                event_id: Some(route.event_id),
                event_type: Some(route.event_type),
                merchant_id: route.merchant_id,
                session_id: route.session_id,
                route_error: None,
            },
            Err(unroutable) => Self {
                topic: Topic::Ipp,
                key: unroutable
                    .event_id
                    .clone()
                    .or_else(|| Some(webhook_id.to_owned()).filter(|id| !id.is_empty())),
                event_id: unroutable.event_id,
                event_type: unroutable.event_type,
                merchant_id: unroutable.merchant_id,
                session_id: None,
                route_error: Some(unroutable.error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_events_keep_their_topics_and_keys() {
        let ipp = Placement::of(
            br#"{"id":"e1","type":"ipp.session.created","data":{"session_id":"s1"}}"#,
            "msg_1",
        );
        assert_eq!((ipp.topic, ipp.key.as_deref()), (Topic::Ipp, Some("s1")));
        assert_eq!(ipp.route_error, None);
        let other = Placement::of(br#"{"id":"e2","type":"order.created"}"#, "msg_2");
        assert_eq!(
            (other.topic, other.key.as_deref()),
            (Topic::Other, Some("e2"))
        );
    }

    #[test]
    fn unroutable_bodies_go_to_the_ipp_topic_keyed_by_event_id_or_webhook_id() {
        let no_session = Placement::of(br#"{"id":"e3","type":"ipp.session.created"}"#, "msg_3");
        assert_eq!(no_session.topic, Topic::Ipp);
        assert_eq!(no_session.key.as_deref(), Some("e3"));
        assert_eq!(no_session.route_error, Some(RouteError::MissingSessionId));
        let not_json = Placement::of(b"\xff\xfe", "msg_4");
        assert_eq!(not_json.key.as_deref(), Some("msg_4"));
        assert_eq!(not_json.route_error.map(|e| e.code()), Some("not_utf8"));
        // Only an unsigned request (insecure mode) can lack a webhook-id.
        assert_eq!(Placement::of(b"[]", "").key, None);
    }
}
