//! Prometheus metrics, in a registry of the service's own (no global state).

use std::sync::atomic::{AtomicI64, Ordering};

use ipp_service::ServiceMetrics;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    registry: ServiceMetrics,
    /// Distinct events newly stored, by event type.
    pub events_applied: IntCounterVec,
    /// Records whose event id was already stored (redeliveries, webhook retries).
    pub duplicate_events: IntCounter,
    /// Records skipped because the stored offset was already past them.
    pub stale_records: IntCounter,
    pub dead_letters: IntCounter,
    pub batch_seconds: Histogram,
    pub batch_failures: IntCounter,
    /// High watermark minus the stored next offset, per assigned partition.
    pub partition_lag: IntGaugeVec,
    /// The next offset to apply per assigned partition (the offset stored with the read
    /// models), beside ingest's `ipp_ingest_partition_high_offset`: their difference is
    /// the lag, and Prometheus can still compute it once this process is gone.
    pub partition_next_offset: IntGaugeVec,
    /// `received_at` of the last applied event, in microseconds since the epoch.
    last_applied_received_at_us: AtomicI64,
    last_applied_received: Gauge,
    /// Deprecated for `last_applied_received`: an age grows between scrapes and hides a
    /// stall behind the scrape interval; alerts compute `time() - timestamp` instead.
    last_applied_age: Gauge,
    /// Records in the dead-letter topic (high minus low watermark), refreshed every 30 s.
    pub dead_letter_records: IntGaugeVec,
    /// Facts merged into the orders read model.
    pub order_facts: IntCounter,
    /// Orders per reconciliation state, refreshed every 10 s.
    pub orders_by_state: IntGaugeVec,
    /// Mismatched orders per rule broken, refreshed with `orders_by_state`.
    pub order_mismatches: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let events_applied = IntCounterVec::new(
            Opts::new(
                "ipp_projector_events_applied_total",
                "Distinct events stored in ipp_events, by event type",
            ),
            &["event_type"],
        )
        .expect("valid metric");
        let duplicate_events = IntCounter::new(
            "ipp_projector_duplicate_events_total",
            "Records whose event id was already stored",
        )
        .expect("valid metric");
        let stale_records = IntCounter::new(
            "ipp_projector_stale_records_total",
            "Records skipped because the offset stored in PostgreSQL was already past them",
        )
        .expect("valid metric");
        let dead_letters = IntCounter::new(
            "ipp_projector_dead_letters_total",
            "Records sent to the dead-letter topic",
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ipp_projector_batch_duration_seconds",
                "Time to apply one batch, dead letters and commit included",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let batch_failures = IntCounter::new(
            "ipp_projector_batch_failures_total",
            "Batches rolled back and retried",
        )
        .expect("valid metric");
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "ipp_projector_partition_lag",
                "Records in the partition not yet applied (high watermark minus stored offset)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_next_offset = IntGaugeVec::new(
            Opts::new(
                "ipp_projector_partition_next_offset",
                "The next offset to apply in the partition (stored with the read models)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let last_applied_received = Gauge::new(
            "ipp_projector_last_applied_event_received_timestamp_seconds",
            "When ingest received the newest event this projector applied (Unix time)",
        )
        .expect("valid metric");
        let last_applied_age = Gauge::new(
            "ipp_projector_last_applied_event_age_seconds",
            "Deprecated: use time() - ipp_projector_last_applied_event_received_timestamp_seconds",
        )
        .expect("valid metric");
        let dead_letter_records = IntGaugeVec::new(
            Opts::new(
                "ipp_projector_dead_letter_records",
                "Records in the dead-letter topic (redriven ones included), refreshed every 30 s",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let order_facts = IntCounter::new(
            "ipp_projector_order_facts_total",
            "Facts merged into the orders read model (finalizations, Kustom reports, our outcomes, Order Management reads)",
        )
        .expect("valid metric");
        let orders_by_state = IntGaugeVec::new(
            Opts::new(
                "ipp_projector_orders",
                "Orders in ipp_orders per reconciliation state (in_sync, awaiting_confirmation, mismatch)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let order_mismatches = IntGaugeVec::new(
            Opts::new(
                "ipp_projector_order_mismatches",
                "Orders in mismatch per rule broken (amounts_differ, not_made_by_this_pipeline, not_confirmed, captured_total_differs, refunded_total_differs)",
            ),
            &["rule"],
        )
        .expect("valid metric");

        let registry = ServiceMetrics::new("projector", &[]);
        for collector in [
            Box::new(events_applied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duplicate_events.clone()),
            Box::new(stale_records.clone()),
            Box::new(dead_letters.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(batch_failures.clone()),
            Box::new(partition_lag.clone()),
            Box::new(partition_next_offset.clone()),
            Box::new(last_applied_received.clone()),
            Box::new(last_applied_age.clone()),
            Box::new(dead_letter_records.clone()),
            Box::new(order_facts.clone()),
            Box::new(orders_by_state.clone()),
            Box::new(order_mismatches.clone()),
        ] {
            registry.register(collector);
        }
        Self {
            registry,
            events_applied,
            duplicate_events,
            stale_records,
            dead_letters,
            batch_seconds,
            batch_failures,
            partition_lag,
            partition_next_offset,
            last_applied_received_at_us: AtomicI64::new(0),
            last_applied_received,
            last_applied_age,
            dead_letter_records,
            order_facts,
            orders_by_state,
            order_mismatches,
        }
    }

    pub fn applied_received_at(&self, received_at: chrono::DateTime<chrono::Utc>) {
        self.last_applied_received_at_us
            .fetch_max(received_at.timestamp_micros(), Ordering::Relaxed);
    }

    /// The text exposition format, with the (deprecated) event age computed at scrape
    /// time.
    pub fn render(&self) -> String {
        let last = self.last_applied_received_at_us.load(Ordering::Relaxed);
        if last > 0 {
            let now = chrono::Utc::now().timestamp_micros();
            self.last_applied_received.set(last as f64 / 1_000_000.0);
            self.last_applied_age
                .set((now - last).max(0) as f64 / 1_000_000.0);
        }
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
