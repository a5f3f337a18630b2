//! The HTTP contract: `POST /webhooks/kustom`, `/healthz`, `/readyz`, `/metrics`, and a
//! JSON answer for any other path (404) or method (405).

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use chrono::Utc;
use ipp_schemas::{
    record,
    trace::{TraceContext, TRACEPARENT},
    RecordHeaders,
};
use ipp_service::traces::{Kind, Span};
use prometheus::IntGauge;
use serde_json::json;
use tracing::Instrument;

use crate::{
    clock::Clock, error::IngestError, kafka::EventLog, metrics, metrics::Metrics, place::Placement,
    verify::Verifier,
};

pub struct AppState {
    pub log: EventLog,
    /// `None` only with `--insecure-skip-verify`.
    pub verifier: Option<Verifier>,
    pub clock: Clock,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub retry_after_secs: u64,
}

/// The public router; `probes` says whether `/metrics` is on it or on the admin address.
pub fn router(state: Arc<AppState>, probes: ipp_service::probe::Routes) -> Router {
    let routes = Router::new()
        .route("/webhooks/kustom", post(receive_webhook))
        .with_state(state.clone())
        .merge(ipp_service::probe::router(state, probes));
    ipp_service::http::with_json_fallbacks(routes)
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

/// Counts a request in flight for as long as its handler lives. A client that goes
/// away mid-request makes the server drop the handler's future: the count still comes
/// down.
struct InFlight(IntGauge);

impl InFlight {
    fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn receive_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _in_flight = InFlight::start(&state.metrics.in_flight);
    let started = std::time::Instant::now();
    // The caller's trace continued (or a new one): this request's span, whose context
    // goes into the record for the consumers to continue.
    let (trace, caller) =
        TraceContext::continue_or_start(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let mut exported = Span::start(
        "POST /webhooks/kustom",
        Kind::Server,
        &trace,
        caller.as_ref(),
    );
    let span = tracing::info_span!(
        "webhook",
        trace_id = %trace.trace_id(),
        span_id = %trace.span_id(),
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        session_id = tracing::field::Empty,
    );
    let result = accept(&state, &headers, body, &trace)
        .instrument(span)
        .await;
    let (outcome, event_type) = match &result {
        Ok(stored) => (stored.outcome(), stored.event_type.as_deref()),
        Err((error, event_type)) => (error.outcome(), event_type.as_deref()),
    };
    if exported.is_recording() {
        exported.attribute("ipp.outcome", outcome);
        let event_type = metrics::event_type_label(event_type).to_owned();
        exported.attribute("ipp.event_type", event_type);
        // Only a failure of ours is an error span; a refused request is the caller's.
        if let Err((error, _)) = &result {
            if matches!(outcome, "unavailable" | "timeout") {
                exported.error(error.to_string());
            }
        }
    }
    state
        .metrics
        .requests
        .with_label_values(&[outcome, metrics::event_type_label(event_type)])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(stored) => stored.response,
        Err((error, _)) => error.into_response(),
    }
}

/// A request answered 200: the record is in Kafka.
struct Stored {
    event_type: Option<String>,
    route_error: bool,
    response: Response,
}

impl Stored {
    fn outcome(&self) -> &'static str {
        if self.route_error {
            "accepted_route_error"
        } else {
            "accepted"
        }
    }
}

/// The error, and the event type when it was known.
type Failure = (IngestError, Option<String>);

/// Read, place, verify, append: a 200 only at the end of it. The body is parsed before
/// its signature is verified for one thing only, the account (`merchant_id`) whose
/// secrets verify it; what it says is trusted, logged or stored only once verified.
async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    trace: &TraceContext,
) -> Result<Stored, Failure> {
    let body = read_body(headers, body, state.max_body_bytes, state.body_read_timeout)
        .await
        .map_err(|e| (e, None))?;
    let webhook_id_header = header_text(headers, "webhook-id");
    let placement = Placement::of(&body, &webhook_id_header);
    let (webhook_id, webhook_timestamp) = match &state.verifier {
        Some(verifier) => {
            let account = placement.merchant_id.as_deref();
            let signed = verifier
                .verify_for(headers, &body, account, state.clock.now())
                .map_err(|e| {
                    tracing::info!(reason = %e, "rejected unsigned or badly signed webhook");
                    (IngestError::from(e), None)
                })?;
            (signed.webhook_id, signed.webhook_timestamp)
        }
        None => (webhook_id_header, header_text(headers, "webhook-timestamp")),
    };
    let span = tracing::Span::current();
    for (field, value) in [
        ("event_id", &placement.event_id),
        ("event_type", &placement.event_type),
        ("session_id", &placement.session_id),
    ] {
        if let Some(value) = value {
            span.record(field, value.as_str());
        }
    }
    if let Some(error) = &placement.route_error {
        tracing::warn!(
            route_error = error.code(),
            %error,
            "storing a signed body that cannot be routed; its consumers will park it"
        );
    }

    let record_headers = RecordHeaders {
        event_id: placement.event_id.clone().unwrap_or_default(),
        event_type: placement.event_type.clone().unwrap_or_default(),
        merchant_id: placement.merchant_id.clone(),
        webhook_id,
        webhook_timestamp,
        received_at: Utc::now(),
    };
    let mut kafka_headers = record_headers
        .to_kafka()
        .insert(record::kafka_header(TRACEPARENT, &trace.to_header()));
    if let Some(error) = &placement.route_error {
        let reason = error.header_value();
        kafka_headers =
            kafka_headers.insert(record::kafka_header(record::header::ROUTE_ERROR, &reason));
    }
    let topic = state.log.topic_name(placement.topic).to_owned();
    let started = std::time::Instant::now();
    let appended = state
        .log
        .append(
            placement.topic,
            placement.key.as_deref(),
            &body,
            kafka_headers,
        )
        .await;
    let result_label = if appended.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .produce_seconds
        .with_label_values(&[topic.as_str(), result_label])
        .observe(started.elapsed().as_secs_f64());
    match appended {
        Ok(at) => {
            state.metrics.acknowledged(&topic, at.partition, at.offset);
            tracing::info!(
                topic,
                partition = at.partition,
                offset = at.offset,
                "event stored"
            );
            let mut answer = json!({
                "status": "stored",
                "event_id": placement.event_id,
                "topic": topic,
                "partition": at.partition,
                "offset": at.offset,
            });
            if let Some(error) = &placement.route_error {
                answer["route_error"] = json!(error.code());
            }
            Ok(Stored {
                event_type: placement.event_type,
                route_error: placement.route_error.is_some(),
                response: Json(answer).into_response(),
            })
        }
        Err(source) => Err((
            IngestError::Unavailable {
                source,
                retry_after_secs: state.retry_after_secs,
            },
            placement.event_type,
        )),
    }
}

/// The whole body, at most `limit` bytes, within `timeout` of the end of the headers.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| IngestError::BodyTimeout(timeout))?;
    read.map_err(|error| {
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
