//! Prometheus metrics of the actions service.

use prometheus::{
    CounterVec, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

pub struct Metrics {
    registry: Registry,
    /// Order Management calls by endpoint (`get_order`, `capture`) and status (`201`,
    /// `429`, `timeout`, `connect_error`, ...).
    pub calls: IntCounterVec,
    pub call_seconds: HistogramVec,
    /// Seconds requests waited for a token of their account's rate limit, by account
    /// (`merchant_id`, `(none)` for actions without one).
    pub rate_limit_wait_seconds: CounterVec,
    /// In-place retries by endpoint and the status that caused them.
    pub retries: IntCounterVec,
    /// Actions put back into the ledger for a later attempt.
    pub rescheduled: IntCounterVec,
    /// Actions that ended, by status (`succeeded`, `skipped`, `failed`).
    pub finished: IntCounterVec,
    /// Actions that ended `failed`, by reason.
    pub failures: IntCounterVec,
    /// Consumed records by outcome (`recorded`, `duplicate`, `ignored`, `dlq`).
    pub records: IntCounterVec,
    pub pending: IntGauge,
    pub oldest_pending_seconds: Gauge,
    pub in_flight: IntGauge,
    /// Attempts given up because their claim could no longer be proven (not renewed in
    /// time, or taken over): another worker takes the action up.
    pub claims_lost: IntCounter,
    /// Commands API POSTs by command type and outcome (`accepted`, `replayed`, or the
    /// error code of a refusal).
    pub api_requests: IntCounterVec,
    /// Observations appended to the observations topic, by type (`operation`,
    /// `order_read`); a republish after a crash counts again.
    pub observations: IntCounterVec,
    /// Settled ledger rows whose observation is not published yet (the outbox's backlog).
    pub unpublished: IntGauge,
    /// Reads of orders (`observe` rows) that ended failed: not money, so not in the DLQ.
    pub reads_failed: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new(
                "actions_om_calls_total",
                "Order Management calls by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "actions_om_call_duration_seconds",
                "Duration of Order Management calls",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        let rate_limit_wait_seconds = CounterVec::new(
            Opts::new(
                "actions_om_rate_limit_wait_seconds_total",
                "Seconds Order Management requests waited for their account's rate limit",
            ),
            &["account"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "actions_om_retries_total",
                "In-place retries of Order Management calls by endpoint and cause",
            ),
            &["endpoint", "cause"],
        )
        .expect("valid metric");
        let rescheduled = IntCounterVec::new(
            Opts::new(
                "actions_rescheduled_total",
                "Actions left pending for a later attempt, by cause",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let finished = IntCounterVec::new(
            Opts::new("actions_finished_total", "Actions that ended, by status"),
            &["status"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "actions_failures_total",
                "Actions that ended failed, by kind (permanent, exhausted)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let records = IntCounterVec::new(
            Opts::new(
                "actions_records_total",
                "Consumed ipp.events, commands and Kustom events records by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let pending = IntGauge::new(
            "actions_pending",
            "Money actions waiting in the ledger (reads of orders left out)",
        )
        .expect("valid metric");
        let oldest_pending_seconds = Gauge::new(
            "actions_oldest_pending_age_seconds",
            "Age of the oldest pending action",
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("actions_in_flight", "Actions being executed right now")
            .expect("valid metric");
        let claims_lost = IntCounter::new(
            "actions_claims_lost_total",
            "Attempts given up because their claim could no longer be proven",
        )
        .expect("valid metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "actions_api_requests_total",
                "Commands API POSTs by command type and outcome (accepted, replayed, or the error code)",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let observations = IntCounterVec::new(
            Opts::new(
                "actions_observations_published_total",
                "Observations appended to the observations topic, by type",
            ),
            &["type"],
        )
        .expect("valid metric");
        let unpublished = IntGauge::new(
            "actions_observations_unpublished",
            "Settled actions whose observation is not published yet",
        )
        .expect("valid metric");
        let reads_failed = IntCounter::new(
            "actions_reads_failed_total",
            "Reads of orders prompted by Kustom events that ended failed",
        )
        .expect("valid metric");
        for metric in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(call_seconds.clone()),
            Box::new(rate_limit_wait_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(rescheduled.clone()),
            Box::new(finished.clone()),
            Box::new(failures.clone()),
            Box::new(records.clone()),
            Box::new(pending.clone()),
            Box::new(oldest_pending_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(claims_lost.clone()),
            Box::new(api_requests.clone()),
            Box::new(observations.clone()),
            Box::new(unpublished.clone()),
            Box::new(reads_failed.clone()),
        ] {
            registry.register(metric).expect("register");
        }
        Self {
            registry,
            calls,
            call_seconds,
            rate_limit_wait_seconds,
            retries,
            rescheduled,
            finished,
            failures,
            records,
            pending,
            oldest_pending_seconds,
            in_flight,
            claims_lost,
            api_requests,
            observations,
            unpublished,
            reads_failed,
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
