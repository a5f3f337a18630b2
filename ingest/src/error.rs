//! Every way a webhook request can fail, and the one place that maps them to HTTP.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use ipp_schemas::RouteError;
use serde_json::json;

use crate::{kafka::AppendError, verify::VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead(#[source] axum::Error),
    #[error("signature verification failed: {0}")]
    Unauthorized(#[from] VerifyError),
    #[error("{0}")]
    BadRequest(#[from] RouteError),
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
            Self::Unauthorized(_) => "unauthorized",
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BodyRead(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::BadRequest(route) => (StatusCode::BAD_REQUEST, route.code()),
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
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        let mut response = (status, body).into_response();
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
