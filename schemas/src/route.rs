//! The little the ingest service reads from a body before it is stored: enough to pick
//! a topic and a key, nothing more. Full validation happens downstream.
//!
//! A body that cannot be routed is not refused by ingest when it is signed (Kustom sent
//! it): [`Route::read`] says why in an [`Unroutable`], with whatever identifiers it could
//! still read, and ingest stores the body with the reason (see
//! [`crate::record::header::ROUTE_ERROR`]).

use serde_json::{Map, Value};

/// Where a webhook body goes in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub event_id: String,
    pub event_type: String,
    pub merchant_id: Option<String>,
    /// Set for `ipp.*` events: the partitioning key that keeps a session's events together.
    pub session_id: Option<String>,
}

/// Deeper JSON than this is refused before it reaches the parser (whose own limit is
/// 128): a Kustom event is four levels deep, and the limit bounds the parser's stack.
pub const MAX_NESTING: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("body is empty")]
    Empty,
    #[error("body is not UTF-8 (first invalid byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("body nests arrays and objects deeper than {MAX_NESTING} levels")]
    TooDeeplyNested,
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("missing or empty string field `id`")]
    MissingId,
    #[error("field `id` is not a string")]
    InvalidId,
    #[error("missing or empty string field `type`")]
    MissingType,
    #[error("field `type` is not a string")]
    InvalidType,
    #[error("ipp event whose `data` is not an object")]
    DataNotAnObject,
    #[error("ipp event without a string `data.session_id`")]
    MissingSessionId,
    #[error("ipp event whose `data.session_id` is not a string")]
    InvalidSessionId,
}

impl RouteError {
    /// A stable machine-readable code for API responses and the route-error header.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_body",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::TooDeeplyNested => "too_deeply_nested",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingId => "missing_id",
            Self::InvalidId => "invalid_id",
            Self::MissingType => "missing_type",
            Self::InvalidType => "invalid_type",
            Self::DataNotAnObject => "data_not_an_object",
            Self::MissingSessionId => "missing_session_id",
            Self::InvalidSessionId => "invalid_session_id",
        }
    }

    /// The value of the `ipp-route-error` record header: `CODE: message`.
    pub fn header_value(&self) -> String {
        format!("{}: {self}", self.code())
    }
}

/// A body that cannot be routed: why, and the identifiers that could still be read
/// (a string `id`, `type`, `merchant_id`), for the record's headers and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unroutable {
    pub error: RouteError,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub merchant_id: Option<String>,
}

impl Unroutable {
    fn bare(error: RouteError) -> Self {
        Self {
            error,
            event_id: None,
            event_type: None,
            merchant_id: None,
        }
    }
}

/// `ipp.*` types go to the IPP topic; everything else is some other Kustom event.
pub fn is_ipp_type(event_type: &str) -> bool {
    event_type.starts_with("ipp.")
}

/// A field that should be a non-empty string: `Ok(None)` when absent, null or empty.
fn string_field(value: Option<&Value>) -> Result<Option<String>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

fn required_string(
    object: &Map<String, Value>,
    name: &str,
    missing: RouteError,
    invalid: RouteError,
) -> Result<String, RouteError> {
    match string_field(object.get(name)) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(missing),
        Err(()) => Err(invalid),
    }
}

/// How deeply arrays and objects nest, counted over the raw text (strings skipped),
/// stopping as soon as `limit` is passed.
fn nesting_exceeds(text: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Route {
    /// The route of a body ingest would store as a routable event.
    pub fn parse(body: &[u8]) -> Result<Self, RouteError> {
        Self::read(body).map_err(|unroutable| unroutable.error)
    }

    /// The route of `body`, or why it has none and what it still says about itself.
    /// Duplicate keys: the last one counts, as in `serde_json` (the body is stored as
    /// sent either way).
    pub fn read(body: &[u8]) -> Result<Self, Unroutable> {
        if body.is_empty() {
            return Err(Unroutable::bare(RouteError::Empty));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            Unroutable::bare(RouteError::NotUtf8 {
                valid_up_to: e.valid_up_to(),
            })
        })?;
        if nesting_exceeds(text, MAX_NESTING) {
            return Err(Unroutable::bare(RouteError::TooDeeplyNested));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Unroutable::bare(RouteError::InvalidJson(e.to_string())))?;
        let object = value
            .as_object()
            .ok_or(Unroutable::bare(RouteError::NotAnObject))?;
        let event_id = required_string(object, "id", RouteError::MissingId, RouteError::InvalidId);
        let event_type = required_string(
            object,
            "type",
            RouteError::MissingType,
            RouteError::InvalidType,
        );
        let merchant_id = string_field(object.get("merchant_id")).unwrap_or(None);
        let session_id = match &event_type {
            Ok(event_type) if is_ipp_type(event_type) => session_id(object).map(Some),
            _ => Ok(None),
        };
        match (event_id, event_type, session_id) {
            (Ok(event_id), Ok(event_type), Ok(session_id)) => Ok(Self {
                event_id,
                event_type,
                merchant_id,
                session_id,
            }),
            (event_id, event_type, session_id) => {
                let error = [&event_id, &event_type]
                    .into_iter()
                    .find_map(|field| field.as_ref().err())
                    .or(session_id.as_ref().err())
                    .cloned()
                    .expect("one of them failed");
                Err(Unroutable {
                    error,
                    event_id: event_id.ok(),
                    event_type: event_type.ok(),
                    merchant_id,
                })
            }
        }
    }

    pub fn is_ipp(&self) -> bool {
        self.session_id.is_some()
    }

    /// The Kafka key: the session for IPP events, the event id for the rest.
    pub fn key(&self) -> &str {
        self.session_id.as_deref().unwrap_or(&self.event_id)
    }
}

/// An `ipp.*` event's `data.session_id`.
fn session_id(object: &Map<String, Value>) -> Result<String, RouteError> {
    match object.get("data") {
        None => Err(RouteError::MissingSessionId),
        Some(Value::Object(data)) => required_string(
            data,
            "session_id",
            RouteError::MissingSessionId,
            RouteError::InvalidSessionId,
        ),
        Some(_) => Err(RouteError::DataNotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(body: &str) -> Unroutable {
        Route::read(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn routes_ipp_events_by_session_and_others_by_id() {
        let ipp = Route::read(
            br#"{"id":"kevt_1","type":"ipp.session.created","merchant_id":"M1","data":{"session_id":"s1"}}"#,
        )
        .unwrap();
        assert_eq!(ipp.key(), "s1");
        assert_eq!(ipp.merchant_id.as_deref(), Some("M1"));
        let other = Route::read(br#"{"id":"kevt_2","type":"order.created"}"#).unwrap();
        assert_eq!(other.key(), "kevt_2");
        assert!(!other.is_ipp());
    }

    #[test]
    fn each_unusable_body_names_its_own_error() {
        let cases = [
            ("", RouteError::Empty),
            ("{", RouteError::InvalidJson(String::new())),
            ("[1]", RouteError::NotAnObject),
            ("7", RouteError::NotAnObject),
            ("null", RouteError::NotAnObject),
            (r#"{"type":"order.created"}"#, RouteError::MissingId),
            (r#"{"id":7,"type":"order.created"}"#, RouteError::InvalidId),
            (r#"{"id":"k"}"#, RouteError::MissingType),
            (r#"{"id":"k","type":["ipp."]}"#, RouteError::InvalidType),
            (r#"{"id":"k","type":"ipp.x"}"#, RouteError::MissingSessionId),
            (
                r#"{"id":"k","type":"ipp.x","data":{}}"#,
                RouteError::MissingSessionId,
            ),
            (
                r#"{"id":"k","type":"ipp.x","data":[]}"#,
                RouteError::DataNotAnObject,
            ),
            (
                r#"{"id":"k","type":"ipp.x","data":{"session_id":1}}"#,
                RouteError::InvalidSessionId,
            ),
        ];
        for (body, expected) in cases {
            let error = error_of(body).error;
            assert_eq!(error.code(), expected.code(), "{body}");
        }
    }

    #[test]
    fn what_can_be_read_is_kept_beside_the_error() {
        let unroutable = error_of(r#"{"id":"kevt_9","type":"ipp.x","merchant_id":"M","data":7}"#);
        assert_eq!(unroutable.error, RouteError::DataNotAnObject);
        assert_eq!(unroutable.event_id.as_deref(), Some("kevt_9"));
        assert_eq!(unroutable.event_type.as_deref(), Some("ipp.x"));
        assert_eq!(unroutable.merchant_id.as_deref(), Some("M"));
        let unroutable = error_of(r#"{"id":1,"type":"order.created"}"#);
        assert_eq!(unroutable.event_id, None);
        assert_eq!(unroutable.event_type.as_deref(), Some("order.created"));
    }

    #[test]
    fn non_utf8_and_deep_nesting_are_named_before_parsing() {
        let error = Route::read(b"{\"id\":\"\xff\"}").unwrap_err().error;
        assert_eq!(error, RouteError::NotUtf8 { valid_up_to: 7 });
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING + 1),
            "]".repeat(MAX_NESTING + 1)
        );
        assert_eq!(error_of(&deep).error, RouteError::TooDeeplyNested);
        // Brackets inside strings do not count.
        let quoted = format!(
            r#"{{"id":"k","type":"order.created","note":"{}"}}"#,
            "[".repeat(500)
        );
        assert!(Route::read(quoted.as_bytes()).is_ok());
        let at_limit = format!(
            r#"{{"id":"k","type":"order.created","data":{}{}}}"#,
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        );
        assert!(Route::read(at_limit.as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_keys_route_by_the_last_one() {
        let route = Route::read(br#"{"id":"first","type":"order.created","id":"last"}"#).unwrap();
        assert_eq!(route.event_id, "last");
    }
}
