//! Prometheus metrics of the actions service.

use ipp_service::{Renamed, ServiceMetrics};
use prometheus::{
    CounterVec, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

/// The names before `ipp_actions_`, exported too until the next release.
const RENAMED: &[Renamed] = &[
    Renamed {
        old: "actions_om_calls_total",
        new: "ipp_actions_om_calls_total",
    },
    Renamed {
        old: "actions_om_call_duration_seconds",
        new: "ipp_actions_om_call_duration_seconds",
    },
    Renamed {
        old: "actions_om_rate_limit_wait_seconds_total",
        new: "ipp_actions_om_rate_limit_wait_seconds_total",
    },
    Renamed {
        old: "actions_om_retries_total",
        new: "ipp_actions_om_retries_total",
    },
    Renamed {
        old: "actions_rescheduled_total",
        new: "ipp_actions_rescheduled_total",
    },
    Renamed {
        old: "actions_finished_total",
        new: "ipp_actions_finished_total",
    },
    Renamed {
        old: "actions_failures_total",
        new: "ipp_actions_failures_total",
    },
    Renamed {
        old: "actions_records_total",
        new: "ipp_actions_records_total",
    },
    Renamed {
        old: "actions_pending",
        new: "ipp_actions_pending",
    },
    Renamed {
        old: "actions_in_flight",
        new: "ipp_actions_in_flight",
    },
    Renamed {
        old: "actions_claims_lost_total",
        new: "ipp_actions_claims_lost_total",
    },
    Renamed {
        old: "actions_api_requests_total",
        new: "ipp_actions_api_requests_total",
    },
    Renamed {
        old: "actions_observations_published_total",
        new: "ipp_actions_observations_published_total",
    },
    Renamed {
        old: "actions_observations_unpublished",
        new: "ipp_actions_observations_unpublished",
    },
    Renamed {
        old: "actions_reads_failed_total",
        new: "ipp_actions_reads_failed_total",
    },
];

pub struct Metrics {
    registry: ServiceMetrics,
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
    /// `created_at` of the oldest pending money action (Unix time), or the time of the
    /// refresh when none is pending: `time() - it` is how long the oldest has waited.
    pub oldest_pending_created: Gauge,
    /// Deprecated for `oldest_pending_created`: an age hides a stall behind the refresh
    /// interval, and alerts compute `time() - timestamp` themselves.
    pub oldest_pending_seconds: Gauge,
    /// Records not yet consumed per partition of each consumed topic (high watermark
    /// minus the position the group stored), from librdkafka's statistics every 5 s.
    pub partition_lag: IntGaugeVec,
    /// Records in the dead-letter topic (high minus low watermark), refreshed every 30 s.
    pub dead_letter_records: IntGaugeVec,
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
        let registry = ServiceMetrics::new("actions", RENAMED);
        let calls = IntCounterVec::new(
            Opts::new(
                "ipp_actions_om_calls_total",
                "Order Management calls by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ipp_actions_om_call_duration_seconds",
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
                "ipp_actions_om_rate_limit_wait_seconds_total",
                "Seconds Order Management requests waited for their account's rate limit",
            ),
            &["account"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "ipp_actions_om_retries_total",
                "In-place retries of Order Management calls by endpoint and cause",
            ),
            &["endpoint", "cause"],
        )
        .expect("valid metric");
        let rescheduled = IntCounterVec::new(
            Opts::new(
                "ipp_actions_rescheduled_total",
                "Actions left pending for a later attempt, by cause",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let finished = IntCounterVec::new(
            Opts::new(
                "ipp_actions_finished_total",
                "Actions that ended, by status",
            ),
            &["status"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "ipp_actions_failures_total",
                "Actions that ended failed, by kind (permanent, exhausted)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let records = IntCounterVec::new(
            Opts::new(
                "ipp_actions_records_total",
                "Consumed ipp.events, commands and Kustom events records by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let pending = IntGauge::new(
            "ipp_actions_pending",
            "Money actions waiting in the ledger (reads of orders left out)",
        )
        .expect("valid metric");
        let oldest_pending_created = Gauge::new(
            "ipp_actions_oldest_pending_created_timestamp_seconds",
            "When the oldest pending money action was recorded (Unix time); the time of the refresh when none is pending",
        )
        .expect("valid metric");
        let oldest_pending_seconds = Gauge::new(
            "actions_oldest_pending_age_seconds",
            "Deprecated: use time() - ipp_actions_oldest_pending_created_timestamp_seconds",
        )
        .expect("valid metric");
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "ipp_actions_partition_lag",
                "Records not yet consumed in the partition (high watermark minus the stored position)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let dead_letter_records = IntGaugeVec::new(
            Opts::new(
                "ipp_actions_dead_letter_records",
                "Records in the dead-letter topic, refreshed every 30 s",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("ipp_actions_in_flight", "Actions being executed right now")
            .expect("valid metric");
        let claims_lost = IntCounter::new(
            "ipp_actions_claims_lost_total",
            "Attempts given up because their claim could no longer be proven",
        )
        .expect("valid metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "ipp_actions_api_requests_total",
                "Commands API POSTs by command type and outcome (accepted, replayed, or the error code)",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let observations = IntCounterVec::new(
            Opts::new(
                "ipp_actions_observations_published_total",
                "Observations appended to the observations topic, by type",
            ),
            &["type"],
        )
        .expect("valid metric");
        let unpublished = IntGauge::new(
            "ipp_actions_observations_unpublished",
            "Settled actions whose observation is not published yet",
        )
        .expect("valid metric");
        let reads_failed = IntCounter::new(
            "ipp_actions_reads_failed_total",
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
            Box::new(oldest_pending_created.clone()),
            Box::new(oldest_pending_seconds.clone()),
            Box::new(partition_lag.clone()),
            Box::new(dead_letter_records.clone()),
            Box::new(in_flight.clone()),
            Box::new(claims_lost.clone()),
            Box::new(api_requests.clone()),
            Box::new(observations.clone()),
            Box::new(unpublished.clone()),
            Box::new(reads_failed.clone()),
        ] {
            registry.register(metric);
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
            oldest_pending_created,
            oldest_pending_seconds,
            partition_lag,
            dead_letter_records,
            in_flight,
            claims_lost,
            api_requests,
            observations,
            unpublished,
            reads_failed,
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
