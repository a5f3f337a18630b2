//! The little the ingest service reads from a body before it is stored: enough to pick
//! a topic and a key, nothing more. Full validation happens downstream.

use serde_json::Value;

/// Where a webhook body goes in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub event_id: String,
    pub event_type: String,
    pub merchant_id: Option<String>,
    /// Set for `ipp.*` events: the partitioning key that keeps a session's events together.
    pub session_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("missing or empty string field `id`")]
    MissingId,
    #[error("missing or empty string field `type`")]
    MissingType,
    #[error("ipp event without a string `data.session_id`")]
    MissingSessionId,
}

impl RouteError {
    /// A stable machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingId => "missing_id",
            Self::MissingType => "missing_type",
            Self::MissingSessionId => "missing_session_id",
        }
    }
}

/// `ipp.*` types go to the IPP topic; everything else is some other Kustom event.
pub fn is_ipp_type(event_type: &str) -> bool {
    event_type.starts_with("ipp.")
}

fn non_empty_string(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

impl Route {
    pub fn parse(body: &[u8]) -> Result<Self, RouteError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| RouteError::InvalidJson(e.to_string()))?;
        let object = value.as_object().ok_or(RouteError::NotAnObject)?;
        let event_id = non_empty_string(object.get("id")).ok_or(RouteError::MissingId)?;
        let event_type = non_empty_string(object.get("type")).ok_or(RouteError::MissingType)?;
        let session_id = if is_ipp_type(&event_type) {
            let session_id = object.get("data").and_then(|data| data.get("session_id"));
            Some(non_empty_string(session_id).ok_or(RouteError::MissingSessionId)?)
        } else {
            None
        };
        Ok(Self {
            event_id,
            event_type,
            merchant_id: non_empty_string(object.get("merchant_id")),
            session_id,
        })
    }

    pub fn is_ipp(&self) -> bool {
        self.session_id.is_some()
    }

    /// The Kafka key: the session for IPP events, the event id for the rest.
    pub fn key(&self) -> &str {
        self.session_id.as_deref().unwrap_or(&self.event_id)
    }
}
