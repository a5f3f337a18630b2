//! Every answer the simulator gives that is not a success, in Kustom's error format
//! `{"error_code", "error_messages": [..], "correlation_id"}`.

use http::StatusCode;
use uuid::Uuid;

use crate::reply::Reply;

#[derive(Debug, thiserror::Error)]
pub enum OmError {
    #[error("missing or wrong API key")]
    Unauthorized,
    #[error("order id {0:?} is not a UUID")]
    InvalidOrderId(String),
    #[error("no such order {0}")]
    NoSuchOrder(Uuid),
    #[error("{0}")]
    BadValue(String),
    #[error("capture not allowed: {0}")]
    CaptureNotAllowed(String),
    #[error("refund not allowed: {0}")]
    RefundNotAllowed(String),
    #[error("cancel not allowed: {0}")]
    CancelNotAllowed(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("no such resource")]
    NotFound,
    // Injected faults below: the request had no effect.
    #[error("too many requests")]
    TooManyRequests { retry_after: String },
    #[error("internal server error (injected)")]
    Internal,
    #[error("temporarily unavailable (injected)")]
    Unavailable,
    #[error("gateway timeout (injected)")]
    GatewayTimeout,
}

impl OmError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::InvalidOrderId(_) | Self::BadValue(_) => StatusCode::BAD_REQUEST,
            Self::NoSuchOrder(_) | Self::NotFound => StatusCode::NOT_FOUND,
            Self::CaptureNotAllowed(_)
            | Self::RefundNotAllowed(_)
            | Self::CancelNotAllowed(_)
            | Self::NotAllowed(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::InvalidOrderId(_) => "INVALID_ORDER_ID",
            Self::NoSuchOrder(_) => "NO_SUCH_ORDER",
            Self::BadValue(_) => "BAD_VALUE",
            Self::CaptureNotAllowed(_) => "CAPTURE_NOT_ALLOWED",
            Self::RefundNotAllowed(_) => "REFUND_NOT_ALLOWED",
            Self::CancelNotAllowed(_) => "CANCEL_NOT_ALLOWED",
            Self::NotAllowed(_) => "NOT_ALLOWED",
            Self::NotFound => "NOT_FOUND",
            Self::TooManyRequests { .. } => "TOO_MANY_REQUESTS",
            Self::Internal => "INTERNAL_SERVER_ERROR",
            Self::Unavailable | Self::GatewayTimeout => "TEMPORARILY_UNAVAILABLE",
        }
    }

    /// Whether the answer describes the order (and so is kept under an idempotency key).
    /// Malformed requests and injected faults are not: a corrected retry must still work.
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            Self::NoSuchOrder(_)
                | Self::CaptureNotAllowed(_)
                | Self::RefundNotAllowed(_)
                | Self::CancelNotAllowed(_)
                | Self::NotAllowed(_)
        )
    }

    pub fn reply(&self) -> Reply {
        let correlation_id = Uuid::new_v4();
        let mut reply = Reply::json(
            self.status(),
            serde_json::json!({
                "error_code": self.code(),
                "error_messages": [self.to_string()],
                "correlation_id": correlation_id,
            }),
        );
        match self {
            Self::TooManyRequests { retry_after } => {
                reply = reply.header("retry-after", retry_after.clone());
            }
            Self::Unauthorized => {
                reply = reply.header("www-authenticate", "Basic realm=\"Kustom\"".to_owned());
            }
            _ => {}
        }
        reply
    }
}
