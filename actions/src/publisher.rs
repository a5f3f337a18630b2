//! The publisher of observations: appends the observation of every settled ledger row
//! to the observations topic, then marks the row published (the ledger is the outbox,
//! decision 0019). A crash between the append and the mark appends it again after the
//! restart: at least once, under the same observation id, so a reader keeps it once.
//!
//! Woken when a row settles, and polling as a backstop (another replica's rows, a failed
//! pass, rows settled before the outbox existed).

use std::{sync::Arc, time::Duration};

use ipp_schemas::observation::{Observation, ObservationKind, OperationOutcome, OrderRead};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    kafka::observations::ObservationLog,
    ledger::{
        outbox::{self, Settled},
        OBSERVE,
    },
    metrics::Metrics,
};

/// Most rows appended in one pass.
const BATCH: i64 = 500;
/// How long a failed pass waits before the next one.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct Publisher {
    pub pool: PgPool,
    pub log: ObservationLog,
    pub metrics: Arc<Metrics>,
    pub poll_interval: Duration,
}

impl Publisher {
    /// Publishes until `stop`, then once more (what the worker settled while stopping).
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        info!(topic = %self.log.topic(), "publishing observations");
        loop {
            let wait = match self.pass().await {
                Ok(published) if published >= BATCH as usize => continue,
                Ok(_) => self.poll_interval,
                Err(e) => {
                    warn!(error = %e, "publishing observations failed; trying again");
                    BACKOFF
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Best effort: what is left is published by the next run.
        if let Err(e) = self.pass().await {
            warn!(error = %e, "last observations not published at shutdown; the next run does");
        }
        info!("observation publisher stopped");
    }

    /// One batch: append, then mark what the broker acknowledged. Returns how many rows
    /// the batch held.
    async fn pass(&self) -> Result<usize, String> {
        let rows = outbox::unpublished(&self.pool, BATCH)
            .await
            .map_err(|e| format!("reading unpublished rows: {e}"))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let observations: Vec<Observation> = rows.iter().map(observation).collect();
        let results = self.log.append(&observations).await;
        let mut acknowledged = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for ((row, observation), result) in rows.iter().zip(&observations).zip(results) {
            match result {
                Ok(()) => {
                    self.metrics
                        .observations
                        .with_label_values(&[type_label(observation)])
                        .inc();
                    acknowledged.push(row.clone());
                }
                Err(e) => {
                    first_error.get_or_insert(format!(
                        "appending the observation of {} of order {}: {e}",
                        row.action, row.order_id
                    ));
                }
            }
        }
        if !acknowledged.is_empty() {
            let marked = outbox::mark_published(&self.pool, &acknowledged)
                .await
                .map_err(|e| format!("marking rows published (they are appended again): {e}"))?;
            debug!(
                appended = acknowledged.len(),
                marked, "observations published"
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(rows.len()),
        }
    }
}

fn type_label(observation: &Observation) -> &'static str {
    match observation.kind {
        ObservationKind::Operation(_) => "operation",
        ObservationKind::OrderRead(_) => "order_read",
    }
}

/// The observation of a settled row: the order as read for a succeeded `observe` row,
/// else the outcome of the operation (a read that failed for good is an outcome too, so
/// the read model can show it). Built from the row alone, so a republish is identical.
pub fn observation(row: &Settled) -> Observation {
    let kind = match (&row.observation, row.kind.as_str(), row.status.as_str()) {
        (Some(order), OBSERVE, "succeeded") => ObservationKind::OrderRead(OrderRead {
            trigger_event_id: Some(row.event_id.clone()),
            trigger_event_type: row.event_type.clone(),
            order: order.clone(),
        }),
        _ => ObservationKind::Operation(OperationOutcome {
            action: row.action.clone(),
            kind: row.kind.clone(),
            command_id: row.command_id,
            session_id: row.session_id,
            status: row.status.clone(),
            capture_id: row.capture_id.clone(),
            refund_id: row.refund_id.clone(),
            amount: row.captured_amount.or(row.refunded_amount),
            reason: row.reason.clone(),
        }),
    };
    let observation_id = match &kind {
        ObservationKind::OrderRead(_) => Observation::read_id(row.order_id, &row.event_id),
        ObservationKind::Operation(_) => Observation::outcome_id(row.order_id, &row.action),
    };
    Observation {
        observation_id,
        order_id: row.order_id,
        merchant_id: row.merchant_id.clone(),
        observed_at: row.updated_at,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn settled(kind: &str, action: &str, status: &str) -> Settled {
        Settled {
            order_id: Uuid::new_v4(),
            action: action.into(),
            kind: kind.into(),
            command_id: None,
            session_id: Some(Uuid::new_v4()),
            merchant_id: Some("DM1".into()),
            event_id: "kevt_1".into(),
            event_type: None,
            status: status.into(),
            reason: None,
            capture_id: None,
            captured_amount: None,
            refund_id: None,
            refunded_amount: None,
            observation: None,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_capture_is_an_outcome_with_its_capture_and_amount() {
        let mut row = settled("capture", "capture", "succeeded");
        row.capture_id = Some("cap-1".into());
        row.captured_amount = Some(1200);
        let observation = observation(&row);
        assert_eq!(
            observation.observation_id,
            Observation::outcome_id(row.order_id, "capture")
        );
        assert_eq!(observation.observed_at, row.updated_at);
        let ObservationKind::Operation(outcome) = observation.kind else {
            panic!("an outcome");
        };
        assert_eq!(outcome.capture_id.as_deref(), Some("cap-1"));
        assert_eq!(outcome.amount, Some(1200));
        assert_eq!(outcome.session_id, row.session_id);
    }

    #[test]
    fn a_read_is_the_order_as_answered_and_a_failed_read_an_outcome() {
        let mut row = settled(OBSERVE, "observe:kevt_1", "succeeded");
        row.event_type = Some("capture.created".into());
        row.observation = Some(json!({"status": "CAPTURED", "unknown": [1]}));
        let read = observation(&row);
        assert_eq!(
            read.observation_id,
            Observation::read_id(row.order_id, "kevt_1")
        );
        let ObservationKind::OrderRead(read) = read.kind else {
            panic!("an order read");
        };
        assert_eq!(read.trigger_event_type.as_deref(), Some("capture.created"));
        assert_eq!(read.order, json!({"status": "CAPTURED", "unknown": [1]}));

        let mut failed = settled(OBSERVE, "observe:kevt_2", "failed");
        failed.reason = Some("404 not found".into());
        let failed = observation(&failed);
        let ObservationKind::Operation(outcome) = failed.kind else {
            panic!("an outcome");
        };
        assert_eq!(
            (outcome.kind.as_str(), outcome.status.as_str()),
            (OBSERVE, "failed")
        );
    }
}
