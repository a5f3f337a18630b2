//! Prometheus metrics of the ingest service.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by outcome (`accepted`, `unauthorized`, ...) and event type.
    pub requests: IntCounterVec,
    /// Time from handing a record to the producer to its acknowledgement.
    pub produce_seconds: HistogramVec,
    pub in_flight: IntGauge,
    /// Producers replaced after a fatal librdkafka error (0 through broker outages).
    pub producer_replacements: IntCounter,
}

/// Event types used as label values; anything else is folded into `other` so that a
/// caller cannot grow the label set without bound.
const KNOWN_TYPES: &[&str] = &[
    "ipp.session.created",
    "ipp.session.activated",
    "ipp.session.finalized",
    "ipp.payment.finalized",
    "ipp.session.cancelled",
    "ipp.payment.failed",
    "order.created",
    "capture.created",
    "refund.created",
    "dispute.created",
    "dispute.updated",
];

pub fn event_type_label(event_type: Option<&str>) -> &str {
    match event_type {
        None => "unknown",
        Some(t) if KNOWN_TYPES.contains(&t) => t,
        Some(t) if t.starts_with("ipp.") => "ipp.other",
        Some(_) => "other",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ingest_requests_total",
                "Webhook requests by outcome and event type",
            ),
            &["outcome", "event_type"],
        )
        .expect("valid metric");
        let produce_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ingest_produce_duration_seconds",
                "Time until Kafka acknowledged (or refused) a record",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["topic", "result"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "ingest_in_flight_requests",
            "Webhook requests being handled right now",
        )
        .expect("valid metric");
        let producer_replacements = IntCounter::new(
            "ingest_producer_replacements_total",
            "Kafka producers replaced after a fatal error",
        )
        .expect("valid metric");
        registry
            .register(Box::new(producer_replacements.clone()))
            .expect("register");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        registry
            .register(Box::new(produce_seconds.clone()))
            .expect("register");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("register");
        Self {
            registry,
            requests,
            produce_seconds,
            in_flight,
            producer_replacements,
        }
    }

    pub fn render(&self) -> String {
        ipp_service::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
