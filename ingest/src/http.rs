//! The HTTP contract: `POST /webhooks/kustom`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use chrono::Utc;
use ipp_schemas::{RecordHeaders, Route};
use serde_json::json;
use tracing::Instrument;

use crate::{error::IngestError, kafka::EventLog, metrics, metrics::Metrics, verify::Verifier};

pub struct AppState {
    pub log: EventLog,
    /// `None` only with `--insecure-skip-verify`.
    pub verifier: Option<Verifier>,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub retry_after_secs: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/kustom", post(receive_webhook))
        .with_state(state.clone())
        .merge(ipp_service::probe::router(state))
}

/// Ready when the broker answers and both topics exist.
impl ipp_service::probe::Probe for AppState {
    async fn ready(&self) -> Result<(), String> {
        self.log.check_topics().await.map_err(|e| e.to_string())
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

async fn receive_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state.metrics.in_flight.inc();
    let span = tracing::info_span!(
        "webhook",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        session_id = tracing::field::Empty,
    );
    let result = accept(&state, &headers, body).instrument(span).await;
    state.metrics.in_flight.dec();
    let (outcome, event_type) = match &result {
        Ok((route, _)) => ("accepted", Some(route.event_type.as_str())),
        Err((error, route)) => (
            error.outcome(),
            route.as_ref().map(|r| r.event_type.as_str()),
        ),
    };
    state
        .metrics
        .requests
        .with_label_values(&[outcome, metrics::event_type_label(event_type)])
        .inc();
    match result {
        Ok((_, response)) => response,
        Err((error, _)) => error.into_response(),
    }
}

type Failure = (IngestError, Option<Route>);

/// Read, verify, route, append: a 200 only at the end of it.
async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Route, Response), Failure> {
    let body = read_body(headers, body, state.max_body_bytes)
        .await
        .map_err(|e| (e, None))?;
    let signed = match &state.verifier {
        Some(verifier) => {
            let signed = verifier
                .verify(headers, &body, Utc::now().timestamp())
                .map_err(|e| {
                    tracing::info!(reason = %e, "rejected unsigned or badly signed webhook");
                    (IngestError::from(e), None)
                })?;
            (signed.webhook_id, signed.webhook_timestamp)
        }
        None => (
            header_text(headers, "webhook-id"),
            header_text(headers, "webhook-timestamp"),
        ),
    };
    let route = Route::parse(&body).map_err(|e| {
        tracing::info!(reason = %e, "rejected malformed webhook");
        (IngestError::from(e), None)
    })?;
    let span = tracing::Span::current();
    span.record("event_id", route.event_id.as_str());
    span.record("event_type", route.event_type.as_str());
    if let Some(session_id) = &route.session_id {
        span.record("session_id", session_id.as_str());
    }

    let record_headers = RecordHeaders {
        event_id: route.event_id.clone(),
        event_type: route.event_type.clone(),
        merchant_id: route.merchant_id.clone(),
        webhook_id: signed.0,
        webhook_timestamp: signed.1,
        received_at: Utc::now(),
    };
    let topic = state.log.topic_for(&route).to_owned();
    let started = std::time::Instant::now();
    let appended = state.log.append(&route, &body, &record_headers).await;
    let result_label = if appended.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .produce_seconds
        .with_label_values(&[topic.as_str(), result_label])
        .observe(started.elapsed().as_secs_f64());
    match appended {
        Ok(at) => {
            tracing::info!(
                topic,
                partition = at.partition,
                offset = at.offset,
                "event stored"
            );
            let response = Json(json!({
                "status": "stored",
                "event_id": route.event_id,
                "topic": topic,
                "partition": at.partition,
                "offset": at.offset,
            }))
            .into_response();
            Ok((route, response))
        }
        Err(source) => Err((
            IngestError::Unavailable {
                source,
                retry_after_secs: state.retry_after_secs,
            },
            Some(route),
        )),
    }
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            IngestError::BodyTooLarge { limit }
        } else {
            IngestError::BodyRead(error)
        }
    })
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
