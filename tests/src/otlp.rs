//! An OTLP/HTTP trace receiver: what a collector would get from the services' span
//! export (`POST /v1/traces`, protobuf), decoded and kept for the test to read.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode as SpanStatus},
};
use prost::Message;

/// One span as received, its ids in lower-case hex (as `traceparent` writes them).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `(trace id, span id)` of each linked span.
    pub links: Vec<(String, String)>,
    pub is_error: bool,
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Serves until dropped.
pub struct OtlpReceiver {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to (the exporter adds `/v1/traces`).
    pub endpoint: String,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let received = Received::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("OTLP receiver");
        });
        Self {
            endpoint,
            received,
            server,
        }
    }

    /// The environment that makes a service export its spans here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone())]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An export request: its spans kept, answered as a collector does (an empty
/// `ExportTraceServiceResponse`). A body that does not decode is a 400, and fails the
/// test through the exporter's error log and the missing spans.
async fn export(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attributes(&resource.attributes)
            .into_iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(ReceivedSpan {
                service: service.clone(),
                kind: span.kind(),
                is_error: span
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code() == SpanStatus::Error),
                attributes: attributes(&span.attributes),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                    .collect(),
            });
        }
    }
    received.lock().unwrap().extend(spans);
    let response = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse {
        partial_success: None,
    };
    (StatusCode::OK, response.encode_to_vec())
}

fn attributes(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
