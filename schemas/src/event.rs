//! Kustom webhook events.
//!
//! Parsing is lenient on purpose: unknown fields are kept in `extra` maps, unknown
//! `ipp.*` types parse as [`IppEventKind::Unknown`], and events outside IPP parse as
//! [`KustomEvent::Other`] with their JSON intact. Timestamps keep nanosecond precision.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The envelope every Kustom webhook shares. `D` is the shape of `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<D = Value> {
    /// Event id (`kevt_…`), unique per event: the deduplication key.
    pub id: String,
    #[serde(default)]
    pub merchant_id: Option<String>,
    /// When the event happened (RFC 3339, nanoseconds kept).
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: D,
    /// Envelope fields this version does not know about.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `data` object of every `ipp.*` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IppData {
    pub session_id: Uuid,
    #[serde(default)]
    pub order_id: Option<Uuid>,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What an `ipp.*` event means for its session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IppEventKind {
    SessionCreated,
    SessionActivated,
    /// `ipp.session.finalized`, or its documented alias `ipp.payment.finalized`.
    SessionFinalized,
    SessionCancelled,
    PaymentFailed,
    /// An `ipp.*` type this version does not know; kept, but changes no status.
    Unknown(String),
}

impl IppEventKind {
    pub const SESSION_CREATED: &'static str = "ipp.session.created";
    pub const SESSION_ACTIVATED: &'static str = "ipp.session.activated";
    pub const SESSION_FINALIZED: &'static str = "ipp.session.finalized";
    pub const PAYMENT_FINALIZED: &'static str = "ipp.payment.finalized";
    pub const SESSION_CANCELLED: &'static str = "ipp.session.cancelled";
    pub const PAYMENT_FAILED: &'static str = "ipp.payment.failed";

    pub fn from_type(event_type: &str) -> Self {
        match event_type {
            Self::SESSION_CREATED => Self::SessionCreated,
            Self::SESSION_ACTIVATED => Self::SessionActivated,
            Self::SESSION_FINALIZED | Self::PAYMENT_FINALIZED => Self::SessionFinalized,
            Self::SESSION_CANCELLED => Self::SessionCancelled,
            Self::PAYMENT_FAILED => Self::PaymentFailed,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::SessionFinalized | Self::SessionCancelled)
    }
}

/// An `ipp.*` event: the envelope with typed `data`, plus what its type means.
#[derive(Debug, Clone, PartialEq)]
pub struct IppEvent {
    pub envelope: Envelope<IppData>,
    pub kind: IppEventKind,
}

impl IppEvent {
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    pub fn session_id(&self) -> Uuid {
        self.envelope.data.session_id
    }

    pub fn order_id(&self) -> Option<Uuid> {
        self.envelope.data.order_id
    }
}

/// Any event Kustom posts to the webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum KustomEvent {
    Ipp(IppEvent),
    /// A Kustom event outside IPP (`order.created`, `capture.created`, …), kept as JSON.
    Other(Envelope<Value>),
}

#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    #[error("body is not a valid Kustom event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("{event_type} event has invalid data: {source}")]
    IppData {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{event_type} event has no order_id")]
    MissingOrderId { event_type: String },
}

impl KustomEvent {
    /// Parses a raw webhook body. Finalized events must name their order: without it
    /// there is nothing to capture, so it is a schema violation, not a lenient default.
    pub fn parse(body: &[u8]) -> Result<Self, EventParseError> {
        let envelope: Envelope<Value> =
            serde_json::from_slice(body).map_err(EventParseError::Envelope)?;
        if !crate::route::is_ipp_type(&envelope.event_type) {
            return Ok(Self::Other(envelope));
        }
        IppEvent::from_envelope(envelope).map(Self::Ipp)
    }
}

impl IppEvent {
    /// Parses a raw body that is known to be an `ipp.*` event.
    pub fn parse(body: &[u8]) -> Result<Self, EventParseError> {
        let envelope: Envelope<Value> =
            serde_json::from_slice(body).map_err(EventParseError::Envelope)?;
        Self::from_envelope(envelope)
    }

    fn from_envelope(envelope: Envelope<Value>) -> Result<Self, EventParseError> {
        let Envelope {
            id,
            merchant_id,
            timestamp,
            event_type,
            data,
            extra,
        } = envelope;
        let data: IppData =
            serde_json::from_value(data).map_err(|source| EventParseError::IppData {
                event_type: event_type.clone(),
                source,
            })?;
        let kind = IppEventKind::from_type(&event_type);
        if kind == IppEventKind::SessionFinalized && data.order_id.is_none() {
            return Err(EventParseError::MissingOrderId { event_type });
        }
        Ok(Self {
            envelope: Envelope {
                id,
                merchant_id,
                timestamp,
                event_type,
                data,
                extra,
            },
            kind,
        })
    }
}
