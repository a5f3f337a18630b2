//! Prometheus metrics of the ingest service.

use ipp_service::{Renamed, ServiceMetrics};
use std::sync::Mutex;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// The names before `ipp_ingest_`, exported too until the next release.
const RENAMED: &[Renamed] = &[
    Renamed {
        old: "ingest_requests_total",
        new: "ipp_ingest_requests_total",
    },
    Renamed {
        old: "ingest_produce_duration_seconds",
        new: "ipp_ingest_produce_duration_seconds",
    },
    Renamed {
        old: "ingest_in_flight_requests",
        new: "ipp_ingest_in_flight_requests",
    },
    Renamed {
        old: "ingest_producer_replacements_total",
        new: "ipp_ingest_producer_replacements_total",
    },
];

pub struct Metrics {
    registry: ServiceMetrics,
    /// Requests by outcome (`accepted`, `unauthorized`, ...) and event type.
    pub requests: IntCounterVec,
    /// Time from the request's start to its answer, by outcome.
    pub request_seconds: HistogramVec,
    /// Time from handing a record to the producer to its acknowledgement.
    pub produce_seconds: HistogramVec,
    pub in_flight: IntGauge,
    /// Producers replaced after a fatal librdkafka error (0 through broker outages).
    pub producer_replacements: IntCounter,
    /// Per partition, the offset after the last record Kafka acknowledged to this
    /// process: what the consumers' positions are compared with in Prometheus, which
    /// still works once a consumer is down and exports nothing.
    partition_high_offset: IntGaugeVec,
    /// Makes "raise to at least" atomic: deliveries complete concurrently.
    high_offset_update: Mutex<()>,
}

/// From a millisecond to the produce timeout's order of magnitude.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
        let registry = ServiceMetrics::new("ingest", RENAMED);
        let requests = IntCounterVec::new(
            Opts::new(
                "ipp_ingest_requests_total",
                "Webhook requests by outcome and event type",
            ),
            &["outcome", "event_type"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ipp_ingest_request_duration_seconds",
                "Time from the start of a webhook request to its answer, by outcome",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let produce_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ipp_ingest_produce_duration_seconds",
                "Time until Kafka acknowledged (or refused) a record",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["topic", "result"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "ipp_ingest_in_flight_requests",
            "Webhook requests being handled right now",
        )
        .expect("valid metric");
        let producer_replacements = IntCounter::new(
            "ipp_ingest_producer_replacements_total",
            "Kafka producers replaced after a fatal error",
        )
        .expect("valid metric");
        let partition_high_offset = IntGaugeVec::new(
            Opts::new(
                "ipp_ingest_partition_high_offset",
                "The offset after the last record Kafka acknowledged to this process, per partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry.register(Box::new(partition_high_offset.clone()));
        registry.register(Box::new(producer_replacements.clone()));
        registry.register(Box::new(requests.clone()));
        registry.register(Box::new(request_seconds.clone()));
        registry.register(Box::new(produce_seconds.clone()));
        registry.register(Box::new(in_flight.clone()));
        Self {
            registry,
            requests,
            request_seconds,
            produce_seconds,
            in_flight,
            producer_replacements,
            partition_high_offset,
            high_offset_update: Mutex::new(()),
        }
    }

    /// Kafka acknowledged a record at `offset` of `topic`'s `partition`.
    pub fn acknowledged(&self, topic: &str, partition: i32, offset: i64) {
        let gauge = self
            .partition_high_offset
            .with_label_values(&[topic, &partition.to_string()]);
        let _update = self.high_offset_update.lock().expect("metrics lock");
        if gauge.get() < offset + 1 {
            gauge.set(offset + 1);
        }
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
