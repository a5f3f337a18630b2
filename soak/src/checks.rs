//! The invariants, checked once the pipeline has drained. Each check returns its figures
//! and the violations it found; a violation names the invariant and the evidence.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ipp_loadgen::Workload;
use ipp_schemas::{dlq::header as dlq_header, topics, FailedActionRecord};
use ipp_tests::kafka::{self, Record};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{load::Outcome, poison::Injected, stack::CLEAN_SCHEMA};

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Collects violations, keeping the first few examples of each kind readable.
#[derive(Default)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn add(&mut self, invariant: &'static str, detail: impl Into<String>) {
        self.0.push(Violation {
            invariant,
            detail: detail.into(),
        });
    }
}

/// Where the log stands after the drain.
pub struct Log {
    pub ipp: Vec<Record>,
    pub other: Vec<Record>,
    pub ipp_dlq: Vec<Record>,
    pub actions_dlq: Vec<Record>,
}

impl Log {
    pub async fn read(brokers: &str) -> anyhow::Result<Self> {
        let brokers = brokers.to_owned();
        let read = tokio::task::spawn_blocking(move || Log {
            ipp: kafka::read_topic(&brokers, topics::IPP_EVENTS),
            other: kafka::read_topic(&brokers, topics::KUSTOM_EVENTS),
            ipp_dlq: kafka::read_topic(&brokers, topics::IPP_EVENTS_DLQ),
            actions_dlq: kafka::read_topic(&brokers, topics::IPP_ACTIONS_DLQ),
        });
        read.await
            .map_err(|e| anyhow::anyhow!("reading the topics back failed: {e}"))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct LogFigures {
    pub ipp_records: usize,
    pub other_records: usize,
    /// Records whose bytes another record of the topic already holds (redeliveries,
    /// retries of a 5xx that was stored after all).
    pub duplicate_records: usize,
    pub acknowledged_checked: usize,
}

/// Log complete and byte-exact: every body answered 200 is in its topic byte for byte;
/// every record is a body that was sent or one of the injected poison records.
pub fn log_complete(
    workload: &Workload,
    outcomes: &[Outcome],
    injected: &[Injected],
    log: &Log,
    violations: &mut Violations,
) -> LogFigures {
    let ipp: HashSet<&[u8]> = log.ipp.iter().map(|r| r.value.as_slice()).collect();
    let other: HashSet<&[u8]> = log.other.iter().map(|r| r.value.as_slice()).collect();
    let mut figures = LogFigures {
        ipp_records: log.ipp.len(),
        other_records: log.other.len(),
        duplicate_records: log.ipp.len() + log.other.len() - ipp.len() - other.len(),
        ..LogFigures::default()
    };
    let mut missing = Vec::new();
    for (delivery, outcome) in workload.deliveries.iter().zip(outcomes) {
        if !outcome.acknowledged {
            continue;
        }
        figures.acknowledged_checked += 1;
        let topic = if delivery.is_ipp() { &ipp } else { &other };
        if !topic.contains(delivery.body.as_slice()) {
            missing.push(delivery.event_id.clone());
        }
    }
    if !missing.is_empty() {
        violations.add(
            "log_complete",
            format!(
                "{} webhook(s) answered 200 are not in the log byte for byte, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ),
        );
    }
    let sent: HashSet<&[u8]> = workload
        .deliveries
        .iter()
        .map(|d| d.body.as_slice())
        .collect();
    let positions: HashSet<(i32, i64)> = injected.iter().map(|p| (p.partition, p.offset)).collect();
    let mut strangers = Vec::new();
    for record in &log.ipp {
        let known = sent.contains(record.value.as_slice())
            || positions.contains(&(record.partition, record.offset));
        if !known {
            strangers.push(format!(
                "ipp.events[{}]@{}",
                record.partition, record.offset
            ));
        }
    }
    for record in &log.other {
        if !sent.contains(record.value.as_slice()) {
            strangers.push(format!(
                "kustom.events[{}]@{}",
                record.partition, record.offset
            ));
        }
    }
    if !strangers.is_empty() {
        violations.add(
            "log_complete",
            format!(
                "{} record(s) in the log that nobody sent, e.g. {:?}",
                strangers.len(),
                &strangers[..strangers.len().min(5)]
            ),
        );
    }
    for poison in injected {
        let found = log
            .ipp
            .iter()
            .find(|r| (r.partition, r.offset) == (poison.partition, poison.offset));
        let holds_marker = found.is_some_and(|r| {
            std::str::from_utf8(&r.value).is_ok_and(|v| v.contains(&poison.marker))
        });
        if !holds_marker {
            violations.add(
                "log_complete",
                format!(
                    "poison record {} is not at ipp.events[{}]@{} where the broker acknowledged it",
                    poison.marker, poison.partition, poison.offset
                ),
            );
        }
    }
    figures
}

#[derive(Debug, Default, Serialize)]
pub struct ReadModelFigures {
    pub live_sessions: i64,
    pub live_events: i64,
    pub clean_sessions: i64,
    pub clean_events: i64,
    pub sessions_differing: i64,
    pub events_differing: i64,
    /// Sessions whose every delivery got a 200, compared with what the workload implies.
    pub sessions_checked_against_workload: usize,
}

/// The contract columns compared: everything but when the row was written and, for
/// events, which copy of a duplicate was read first (the rebuild's `--dry-run` rule).
const SESSION_COLUMNS: &str = "session_id, merchant_id, status, order_id, created_at, \
activated_at, finalized_at, cancelled_at, failed_attempts, last_failure_reason, last_event_id, \
last_event_at, event_count, anomalies";
const EVENT_COLUMNS: &str = "event_id, event_type, merchant_id, session_id, order_id, \
failure_reason, occurred_at, payload";

/// Read models equal a clean pass: the live tables and the clean pass's, row for row
/// (both directions), and the sessions the workload fully delivered as it implies.
pub async fn read_models_exact(
    pool: &PgPool,
    workload: &Workload,
    outcomes: &[Outcome],
    violations: &mut Violations,
) -> anyhow::Result<ReadModelFigures> {
    let count =
        |sql: String| async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(pool).await };
    let mut figures = ReadModelFigures {
        live_sessions: count("SELECT count(*) FROM public.ipp_sessions".into()).await?,
        live_events: count("SELECT count(*) FROM public.ipp_events".into()).await?,
        clean_sessions: count(format!("SELECT count(*) FROM {CLEAN_SCHEMA}.ipp_sessions")).await?,
        clean_events: count(format!("SELECT count(*) FROM {CLEAN_SCHEMA}.ipp_events")).await?,
        ..ReadModelFigures::default()
    };
    for (table, key, columns) in [
        ("ipp_sessions", "session_id", SESSION_COLUMNS),
        ("ipp_events", "event_id", EVENT_COLUMNS),
    ] {
        let differing = |from: &str, to: &str| {
            format!(
                "SELECT {key}::text FROM (SELECT {columns} FROM {from}.{table} \
                 EXCEPT SELECT {columns} FROM {to}.{table}) AS d ORDER BY 1"
            )
        };
        let live_only: Vec<String> = sqlx::query_scalar(&differing("public", CLEAN_SCHEMA))
            .fetch_all(pool)
            .await?;
        let clean_only: Vec<String> = sqlx::query_scalar(&differing(CLEAN_SCHEMA, "public"))
            .fetch_all(pool)
            .await?;
        let keys: BTreeSet<&String> = live_only.iter().chain(&clean_only).collect();
        if table == "ipp_sessions" {
            figures.sessions_differing = keys.len() as i64;
        } else {
            figures.events_differing = keys.len() as i64;
        }
        if !keys.is_empty() {
            violations.add(
                "read_models_exact",
                format!(
                    "{table}: {} row(s) differ from the clean pass ({} only or different live, {} only or different in the clean pass), e.g. {:?}",
                    keys.len(),
                    live_only.len(),
                    clean_only.len(),
                    keys.iter().take(5).collect::<Vec<_>>()
                ),
            );
        }
    }

    let mut complete: HashMap<Uuid, bool> = HashMap::new();
    for (delivery, outcome) in workload.deliveries.iter().zip(outcomes) {
        if let Some(session) = delivery.session_id {
            *complete.entry(session).or_insert(true) &= outcome.acknowledged;
        }
    }
    let rows = sqlx::query(
        "SELECT session_id, merchant_id, status, order_id, failed_attempts, event_count FROM public.ipp_sessions",
    )
    .fetch_all(pool)
    .await?;
    let rows: HashMap<Uuid, _> = rows
        .into_iter()
        .map(|r| (r.get::<Uuid, _>("session_id"), r))
        .collect();
    let mut wrong = Vec::new();
    for (session, expected) in &workload.sessions {
        if !complete.get(session).copied().unwrap_or(false) {
            continue;
        }
        figures.sessions_checked_against_workload += 1;
        let Some(row) = rows.get(session) else {
            wrong.push(format!("{session}: no row"));
            continue;
        };
        let actual = (
            row.get::<String, _>("status"),
            row.get::<Option<Uuid>, _>("order_id"),
            row.get::<i32, _>("failed_attempts"),
            row.get::<i32, _>("event_count"),
            row.get::<Option<String>, _>("merchant_id"),
        );
        let wanted = (
            expected.status.to_owned(),
            expected.order_id,
            expected.failed_attempts,
            expected.event_count,
            Some(expected.merchant_id.clone()),
        );
        if actual != wanted {
            wrong.push(format!("{session}: {actual:?}, expected {wanted:?}"));
        }
    }
    if !wrong.is_empty() {
        violations.add(
            "read_models_exact",
            format!(
                "{} fully delivered session(s) differ from what was sent, e.g. {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            ),
        );
    }
    Ok(figures)
}

#[derive(Debug, Default, Serialize)]
pub struct CaptureFigures {
    /// Finalized orders whose finalized event is in the log: each must be captured once.
    pub finalized_orders: usize,
    pub captured_once: usize,
    /// Orders whose action failed with a reason (no capture, explained in the ledger).
    pub failed_explained: usize,
    pub captures_applied: u64,
    pub idempotent_replays: u64,
    pub om_requests: u64,
    pub om_by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct LedgerFigures {
    pub by_status: BTreeMap<String, i64>,
}

/// The finalized orders the log holds (their finalized event is in `ipp.events`).
pub fn finalized_orders_in_log(workload: &Workload, log: &Log) -> BTreeSet<Uuid> {
    let stored: HashSet<&[u8]> = log.ipp.iter().map(|r| r.value.as_slice()).collect();
    workload
        .deliveries
        .iter()
        .filter(|d| d.event_type.ends_with(".finalized") && stored.contains(d.body.as_slice()))
        .filter_map(|d| workload.sessions.get(&d.session_id?)?.order_id)
        .collect()
}

/// Captures exactly once and the ledger settled: at the simulator, one effective capture
/// per finalized order (none when its action failed with a reason), none for any other
/// order; in the ledger, nothing pending and every failure explained.
pub async fn money_moved_once(
    pool: &PgPool,
    sim_url: &str,
    finalized: &BTreeSet<Uuid>,
    violations: &mut Violations,
) -> anyhow::Result<(CaptureFigures, LedgerFigures)> {
    let stats: serde_json::Value = reqwest::get(format!("{sim_url}/_sim/stats"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let captures: BTreeMap<Uuid, u64> =
        serde_json::from_value(stats["captures_by_order"].clone()).unwrap_or_default();
    let ledger = sqlx::query("SELECT order_id, status, reason FROM ipp_actions")
        .fetch_all(pool)
        .await?;
    let ledger: HashMap<Uuid, (String, Option<String>)> = ledger
        .into_iter()
        .map(|r| (r.get("order_id"), (r.get("status"), r.get("reason"))))
        .collect();
    let mut figures = CaptureFigures {
        finalized_orders: finalized.len(),
        captures_applied: stats["captures_applied"].as_u64().unwrap_or(0),
        idempotent_replays: stats["replays"].as_u64().unwrap_or(0),
        om_requests: stats["requests"].as_u64().unwrap_or(0),
        om_by_status: serde_json::from_value(stats["by_status"].clone()).unwrap_or_default(),
        ..CaptureFigures::default()
    };
    let (mut not_once, mut uncaptured) = (Vec::new(), Vec::new());
    for order in finalized {
        let count = captures.get(order).copied().unwrap_or(0);
        match ledger.get(order).map(|(s, r)| (s.as_str(), r.is_some())) {
            Some(("failed", true)) if count == 0 => figures.failed_explained += 1,
            _ if count == 1 => figures.captured_once += 1,
            _ if count > 1 => not_once.push(format!("{order}: {count} captures")),
            status => uncaptured.push(format!("{order}: no capture, ledger {status:?}")),
        }
    }
    if !not_once.is_empty() {
        violations.add(
            "captures_exactly_once",
            format!(
                "{} order(s) captured more than once, e.g. {:?}",
                not_once.len(),
                &not_once[..not_once.len().min(5)]
            ),
        );
    }
    if !uncaptured.is_empty() {
        violations.add(
            "captures_exactly_once",
            format!(
                "{} finalized order(s) not captured and not failed with a reason, e.g. {:?}",
                uncaptured.len(),
                &uncaptured[..uncaptured.len().min(5)]
            ),
        );
    }
    let strangers: Vec<&Uuid> = captures.keys().filter(|o| !finalized.contains(o)).collect();
    if !strangers.is_empty() {
        violations.add(
            "captures_exactly_once",
            format!(
                "{} order(s) captured that no finalized session in the log names, e.g. {:?}",
                strangers.len(),
                &strangers[..strangers.len().min(5)]
            ),
        );
    }
    let cancelled_with_action: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ipp_actions a JOIN public.ipp_sessions s USING (session_id) WHERE s.status = 'cancelled'",
    )
    .fetch_one(pool)
    .await?;
    if cancelled_with_action > 0 {
        violations.add(
            "captures_exactly_once",
            format!("{cancelled_with_action} ledger action(s) for cancelled sessions"),
        );
    }

    let mut ledger_figures = LedgerFigures::default();
    for (status, reason) in ledger.values() {
        *ledger_figures.by_status.entry(status.clone()).or_default() += 1;
        if status == "failed" && reason.is_none() {
            violations.add("ledger_settled", "a failed action without a reason");
        }
    }
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT order_id::text || ' attempts=' || attempts || ' next_attempt_at=' || next_attempt_at \
         || ' last_error=' || coalesce(last_error, '-') FROM ipp_actions WHERE status = 'pending' ORDER BY order_id",
    )
    .fetch_all(pool)
    .await?;
    if !pending.is_empty() {
        violations.add(
            "ledger_settled",
            format!(
                "{} action(s) still pending after the drain, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(5)]
            ),
        );
    }
    let without_action: Vec<&Uuid> = finalized
        .iter()
        .filter(|o| !ledger.contains_key(o))
        .collect();
    if !without_action.is_empty() {
        violations.add(
            "ledger_settled",
            format!(
                "{} finalized order(s) have no ledger row, e.g. {:?}",
                without_action.len(),
                &without_action[..without_action.len().min(5)]
            ),
        );
    }
    Ok((figures, ledger_figures))
}

#[derive(Debug, Default, Serialize)]
pub struct DlqFigures {
    pub poison_injected: usize,
    pub projector_dead_letters: usize,
    pub actions_dead_letters: usize,
    /// Dead letters that repeat one already parked (a crash between parking and the
    /// offset commit parks again: documented, at least once).
    pub parked_again: usize,
    pub failed_actions_parked: usize,
}

/// DLQs explained: every dead letter is an injected poison record (same source position,
/// same marker) or, in the actions' topic, a failed action the ledger shows failed; and
/// every injected record was parked by the projector.
pub async fn dead_letters_explained(
    pool: &PgPool,
    injected: &[Injected],
    log: &Log,
    violations: &mut Violations,
) -> anyhow::Result<DlqFigures> {
    let mut figures = DlqFigures {
        poison_injected: injected.len(),
        projector_dead_letters: log.ipp_dlq.len(),
        actions_dead_letters: log.actions_dlq.len(),
        ..DlqFigures::default()
    };
    let by_position: HashMap<(i32, i64), &Injected> = injected
        .iter()
        .map(|p| ((p.partition, p.offset), p))
        .collect();
    let failed: HashSet<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM ipp_actions WHERE status = 'failed'")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut parked_by_projector = HashSet::new();
    for (topic, records) in [
        (topics::IPP_EVENTS_DLQ, &log.ipp_dlq),
        (topics::IPP_ACTIONS_DLQ, &log.actions_dlq),
    ] {
        let mut seen = HashSet::new();
        for record in records {
            let source = (
                record
                    .header(dlq_header::SOURCE_TOPIC)
                    .unwrap_or("?")
                    .to_owned(),
                record
                    .header(dlq_header::SOURCE_PARTITION)
                    .and_then(|p| p.parse::<i32>().ok()),
                record
                    .header(dlq_header::SOURCE_OFFSET)
                    .and_then(|o| o.parse::<i64>().ok()),
            );
            if !seen.insert(source.clone()) {
                figures.parked_again += 1;
            }
            let poison = match source {
                (ref t, Some(p), Some(o)) if t == topics::IPP_EVENTS => by_position.get(&(p, o)),
                _ => None,
            };
            let value = std::str::from_utf8(&record.value).unwrap_or_default();
            if let Some(poison) = poison.filter(|p| value.contains(&p.marker)) {
                if topic == topics::IPP_EVENTS_DLQ {
                    parked_by_projector.insert(poison.marker.clone());
                }
                continue;
            }
            let action = FailedActionRecord::from_dead_letter(
                record.header(dlq_header::SERVICE),
                Some(&record.value),
            );
            if topic == topics::IPP_ACTIONS_DLQ
                && action
                    .as_ref()
                    .is_some_and(|a| failed.contains(&a.order_id))
            {
                figures.failed_actions_parked += 1;
                continue;
            }
            violations.add(
                "dead_letters_explained",
                format!(
                    "{topic}[{}]@{} is no injected record and no failed action: source {source:?}, error {:?}, value {:?}",
                    record.partition,
                    record.offset,
                    record.header(dlq_header::ERROR),
                    value.chars().take(200).collect::<String>()
                ),
            );
        }
    }
    for poison in injected {
        if !parked_by_projector.contains(&poison.marker) {
            violations.add(
                "dead_letters_explained",
                format!(
                    "poison record {} ({}) at ipp.events[{}]@{} was not parked in {}",
                    poison.marker,
                    poison.kind,
                    poison.partition,
                    poison.offset,
                    topics::IPP_EVENTS_DLQ
                ),
            );
        }
    }
    Ok(figures)
}
