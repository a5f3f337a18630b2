//! Every way a webhook request can fail, and the one place that maps them to HTTP.
//!
//! A signed body is never refused for its content (it is stored and flagged, see
//! `http.rs`): what fails here is the request itself (too large, too slow, cut off), its
//! signature, or the log.

use std::time::Duration;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{kafka::AppendError, verify::VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead(#[source] axum::Error),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("signature verification failed: {0}")]
    Unauthorized(#[from] VerifyError),
    #[error("event not stored: {source}")]
    Unavailable {
        #[source]
        source: AppendError,
        retry_after_secs: u64,
    },
}

impl IngestError {
    /// The `outcome` label of the request metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "too_large",
            Self::BodyRead(_) => "bad_body",
            Self::BodyTimeout(_) => "timeout",
            Self::Unauthorized(_) => "unauthorized",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BodyRead(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Unavailable { source, .. } = &self {
            // The only infrastructure failure: logged once, here.
            tracing::warn!(error = %source, "answering 503: event not stored");
        }
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let Self::Unauthorized(why) = &self {
            body["reason"] = json!(why.reason());
        }
        let mut response = (status, Json(body)).into_response();
        if let Self::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits"),
            );
        }
        response
    }
}
