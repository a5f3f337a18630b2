//! The pipeline's spans, exported with OpenTelemetry (OTLP over HTTP/protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
//! nothing at all when neither is (a [`Span`] is then a no-op). The standard variables
//! work: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`, and
//! `OTEL_SDK_DISABLED=true` turns export off.
//!
//! A span's ids are the pipeline's own ([`TraceContext`]): they already travel in the
//! records' `traceparent` headers and in the Order Management requests, so the exported
//! spans are exactly the ones the next hop names as its parent.

use std::{borrow::Cow, sync::OnceLock};

use ipp_schemas::trace::TraceContext;
use opentelemetry::{
    trace::{
        Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer, TracerProvider,
    },
    Context, KeyValue, Value,
};
use opentelemetry_sdk::{
    trace::{SdkTracer, SdkTracerProvider},
    Resource,
};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The most links a batch's span carries (the SDK's default limit).
pub const MAX_LINKS: usize = 128;

/// Span export, while it lives: dropping it sends what is still buffered.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

#[derive(Debug, thiserror::Error)]
#[error("OTLP trace export cannot be set up")]
pub struct TraceExportError(#[source] opentelemetry_otlp::ExporterBuildError);

impl TraceExport {
    /// Export as the standard `OTEL_*` variables say, `service` being the service name
    /// unless `OTEL_SERVICE_NAME` gives one; `None` when no OTLP endpoint is set.
    pub fn from_env(service: &'static str) -> Result<Option<Self>, TraceExportError> {
        let var = |name: &str| std::env::var(name).ok();
        if !export_wanted(var) {
            return Ok(None);
        }
        let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(TraceExportError)?;
        // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let mut resource = Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name(service);
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        // Only the first export of a process is used (a process has one service).
        let _ = TRACER.set(provider.tracer("ipp-pipeline"));
        Ok(Some(Self { provider }))
    }
}

/// Whether the variables `var` reads ask for export: an endpoint set (an empty value
/// counts as unset, as compose files pass them) and the SDK not disabled.
fn export_wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "spans left unexported at shutdown");
        }
    }
}

/// What a span stands for, as tracing tools draw it.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A request received (a webhook, a command).
    Server,
    /// A request sent (to Order Management).
    Client,
    /// Records read from Kafka.
    Consumer,
}

impl From<Kind> for SpanKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Consumer => SpanKind::Consumer,
        }
    }
}

/// One exported span, ended when dropped; nothing when export is off.
pub struct Span(Option<opentelemetry_sdk::trace::Span>);

impl Span {
    /// No span (nothing to continue).
    pub fn none() -> Self {
        Self(None)
    }

    /// The span whose ids are `own`, a child of `parent` when there is one (a remote
    /// span: a caller's, or the one that wrote a record).
    pub fn start(
        name: &'static str,
        kind: Kind,
        own: &TraceContext,
        parent: Option<&TraceContext>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let parent = match parent {
            Some(parent) => Context::new().with_remote_span_context(span_context(parent)),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind.into())
            .with_trace_id(TraceId::from(own.trace_id_bits()))
            .with_span_id(SpanId::from(own.span_id_bits()))
            .start_with_context(tracer, &parent);
        Self(Some(span))
    }

    /// The span of a new trace, linked to each span of `linked` (the records of a
    /// batch: each came from a trace of its own), at most [`MAX_LINKS`] of them.
    pub fn linked(
        name: &'static str,
        kind: Kind,
        linked: impl IntoIterator<Item = TraceContext>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let links = linked
            .into_iter()
            .take(MAX_LINKS)
            .map(|context| Link::with_context(span_context(&context)))
            .collect();
        let own = TraceContext::new_root();
        let span = tracer
            .span_builder(name)
            .with_kind(kind.into())
            .with_trace_id(TraceId::from(own.trace_id_bits()))
            .with_span_id(SpanId::from(own.span_id_bits()))
            .with_links(links)
            .start_with_context(tracer, &Context::new());
        Self(Some(span))
    }

    /// Whether spans are exported: attributes that cost something to build are worth
    /// building only then.
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = &mut self.0 {
            use opentelemetry::trace::Span as _;
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with why.
    pub fn error(&mut self, message: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.0 {
            use opentelemetry::trace::Span as _;
            span.set_status(Status::error(message));
        }
    }
}

fn span_context(context: &TraceContext) -> SpanContext {
    let flags = match context.is_sampled() {
        true => TraceFlags::SAMPLED,
        false => TraceFlags::default(),
    };
    SpanContext::new(
        TraceId::from(context.trace_id_bits()),
        SpanId::from(context.span_id_bits()),
        flags,
        true,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(vars: &[(&str, &str)]) -> bool {
        export_wanted(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_only_with_an_endpoint_and_not_disabled() {
        assert!(!wanted(&[]), "nothing set: no export");
        assert!(
            !wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]),
            "empty is unset"
        );
        assert!(wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]));
        assert!(wanted(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )]));
        assert!(!wanted(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]));
        assert!(wanted(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "false"),
        ]));
    }

    #[test]
    fn without_export_a_span_is_nothing() {
        // No test here sets up export: the tracer is never installed in this process.
        let own = TraceContext::new_root();
        let mut span = Span::start("a", Kind::Server, &own, None);
        span.attribute("k", "v");
        span.error("e");
        assert!(!span.is_recording());
        assert!(Span::linked("b", Kind::Consumer, [own]).0.is_none());
    }
}
