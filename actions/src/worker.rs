//! The worker pool: claims due actions from the ledger and executes them against Order
//! Management, at most `concurrency` at once.
//!
//! Why money moves once: the idempotency key is fixed when the row is created, and before
//! the first capture is sent the row records `capture_requested_at` and the amount. From
//! then on every attempt re-sends that same request with that same key instead of
//! deciding afresh, so a capture whose answer was lost (the order now reads CAPTURED) is
//! replayed by Kustom and ends `succeeded` with its capture id, not `skipped`, and never
//! becomes a second capture. Two workers on one row (a lease that ran out) send the same
//! key too.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::Retryable;
use chrono::Utc;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};
use uuid::Uuid;

use crate::{
    error::OmError,
    kafka::dead_letters::DeadLetters,
    ledger::{self, Action, Outcome, Status},
    metrics::Metrics,
    om::{self, OmClient},
    retry::RetryPolicy,
};

pub struct Worker {
    pub pool: PgPool,
    pub om: OmClient,
    pub policy: RetryPolicy,
    pub dlq: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub pacer: Option<Pacer>,
    pub concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
}

/// How one execution of an action ended.
enum Attempt {
    Done(Status, Outcome),
    /// Worth trying again later.
    Retry(OmError),
    /// The ledger could not be written before the call: nothing was sent.
    Ledger(sqlx::Error),
}

impl Worker {
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, (Uuid, String)> = HashMap::new();
        info!(concurrency = self.concurrency, "worker started");
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                reap(done, &mut in_flight);
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            // Only this loop takes permits, so the free count can only grow meanwhile.
            let limit = 1 + slots.available_permits();
            let actions = match ledger::claim_due(&self.pool, limit as i64, self.lease).await {
                Ok(actions) => actions,
                Err(e) => {
                    warn!(error = %e, "claiming due actions failed");
                    Vec::new()
                }
            };
            if actions.is_empty() {
                drop(first);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => reap(done, &mut in_flight),
                }
                continue;
            }
            let mut first = Some(first);
            for action in actions {
                let permit = first.take().unwrap_or_else(|| {
                    slots
                        .clone()
                        .try_acquire_owned()
                        .expect("counted free permits")
                });
                let key = (action.order_id, action.action.clone());
                let span = tracing::info_span!(
                    "action",
                    order_id = %action.order_id,
                    session_id = %action.session_id,
                    action = %action.action,
                    attempt = action.attempts,
                );
                let worker = self.clone();
                let handle = tasks.spawn(
                    async move {
                        worker.metrics.in_flight.inc();
                        worker.execute(action).await;
                        worker.metrics.in_flight.dec();
                        drop(permit);
                    }
                    .instrument(span),
                );
                in_flight.insert(handle.id(), key);
            }
        }
        // Shutdown: claim nothing more, give in-flight actions a bounded time to finish.
        info!(in_flight = tasks.len(), "worker stopping");
        let deadline = tokio::time::sleep(self.shutdown_timeout);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                _ = &mut deadline => break,
                Some(done) = tasks.join_next_with_id() => reap(done, &mut in_flight),
            }
        }
        if !tasks.is_empty() {
            warn!(
                unfinished = tasks.len(),
                "shutdown timeout: abandoning in-flight actions"
            );
            tasks.shutdown().await;
            // Make them due again right away for the next run instead of after the lease.
            for (order_id, action) in in_flight.values() {
                let _ = ledger::reschedule(
                    &self.pool,
                    *order_id,
                    action,
                    Duration::ZERO,
                    None,
                    "interrupted by shutdown",
                )
                .await;
            }
        }
        info!("worker stopped");
    }

    async fn execute(&self, action: Action) {
        let attempt = self.attempt(&action).await;
        match attempt {
            Attempt::Done(status, outcome) => {
                let kind = (status == Status::Failed).then_some("permanent");
                self.finish(&action, status, outcome, kind).await;
            }
            Attempt::Ledger(e) => {
                // Nothing was sent: due again at once, as soon as the ledger answers.
                let reason = format!("ledger write failed: {e}");
                self.until_written("rescheduling", || {
                    ledger::reschedule(
                        &self.pool,
                        action.order_id,
                        &action.action,
                        Duration::ZERO,
                        None,
                        &reason,
                    )
                })
                .await;
            }
            Attempt::Retry(e) => {
                let outcome = Outcome {
                    reason: None,
                    last_status_code: e.status_code().map(i32::from),
                    last_error: Some(e.to_string()),
                    ..Outcome::default()
                };
                if self
                    .policy
                    .exhausted(action.attempts, action.created_at, Utc::now())
                {
                    let reason = format!(
                        "retries exhausted after {} attempts: {}",
                        action.attempts,
                        e.reason()
                    );
                    self.finish(
                        &action,
                        Status::Failed,
                        Outcome {
                            reason: Some(reason),
                            ..outcome
                        },
                        Some("exhausted"),
                    )
                    .await;
                    return;
                }
                let delay = self.policy.next_delay(action.attempts, e.retry_after());
                warn!(error = %e, retry_in = ?delay, "action failed; retrying later");
                self.metrics
                    .rescheduled
                    .with_label_values(&[&e.label()])
                    .inc();
                let error = e.to_string();
                self.until_written("rescheduling", || {
                    ledger::reschedule(
                        &self.pool,
                        action.order_id,
                        &action.action,
                        delay,
                        outcome.last_status_code,
                        &error,
                    )
                })
                .await;
            }
        }
    }

    /// One execution: read the order, decide, capture.
    async fn attempt(&self, action: &Action) -> Attempt {
        let amount = match (action.capture_requested_at, action.requested_amount) {
            // A capture was already sent (its answer may have been lost): send the very
            // same request again; the key makes Kustom replay the first answer.
            (Some(_), Some(amount)) => amount,
            _ => {
                let order = match self
                    .call(om::GET_ORDER, || self.om.get_order(action.order_id))
                    .await
                {
                    Ok(order) => order,
                    Err(e) => return permanent_or_retry(e),
                };
                if order.is_closed() {
                    return Attempt::Done(
                        Status::Failed,
                        Outcome {
                            reason: Some(format!("order is {}", order.status)),
                            last_status_code: Some(200),
                            ..Outcome::default()
                        },
                    );
                }
                if order.remaining_authorized_amount <= 0 {
                    return Attempt::Done(
                        Status::Skipped,
                        Outcome {
                            reason: Some(format!(
                                "already captured (status {}, captured_amount {})",
                                order.status, order.captured_amount
                            )),
                            last_status_code: Some(200),
                            ..Outcome::default()
                        },
                    );
                }
                // Durable before the call: a crash after this point resumes by re-sending.
                match ledger::capture_requested(
                    &self.pool,
                    action.order_id,
                    &action.action,
                    order.remaining_authorized_amount,
                )
                .await
                {
                    Ok(amount) => amount,
                    Err(e) => return Attempt::Ledger(e),
                }
            }
        };
        let reference = action.session_id.to_string();
        let result = self
            .call(om::CAPTURE, || {
                self.om
                    .capture(action.order_id, amount, &reference, action.idempotency_key)
            })
            .await;
        match result {
            Ok(capture) => {
                info!(capture_id = %capture.capture_id, amount, "captured");
                Attempt::Done(
                    Status::Succeeded,
                    Outcome {
                        reason: None,
                        capture_id: Some(capture.capture_id),
                        captured_amount: Some(amount),
                        last_status_code: Some(201),
                        last_error: None,
                    },
                )
            }
            Err(e) => permanent_or_retry(e),
        }
    }

    /// One Order Management call with its in-place retries.
    async fn call<T, F, Fut>(&self, endpoint: &'static str, call: F) -> Result<T, OmError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OmError>>,
    {
        let once = || async {
            if let Some(pacer) = &self.pacer {
                pacer.wait().await;
            }
            let started = Instant::now();
            let result = call().await;
            self.metrics
                .call_seconds
                .with_label_values(&[endpoint])
                .observe(started.elapsed().as_secs_f64());
            let status = match &result {
                Ok(_) if endpoint == om::CAPTURE => "201".to_owned(),
                Ok(_) => "200".to_owned(),
                Err(e) => e.label(),
            };
            self.metrics
                .calls
                .with_label_values(&[endpoint, &status])
                .inc();
            result
        };
        once.retry(self.policy.in_place())
            .when(OmError::is_retryable)
            .adjust(|e, delay| self.policy.adjust(e, delay))
            .notify(|e, delay| {
                self.metrics
                    .retries
                    .with_label_values(&[endpoint, &e.label()])
                    .inc();
                debug!(error = %e, retry_in = ?delay, "retrying call");
            })
            .await
    }

    /// Ends the action; `failure` is the metric label of a failure (`permanent`,
    /// `exhausted`).
    async fn finish(
        &self,
        action: &Action,
        status: Status,
        outcome: Outcome,
        failure: Option<&str>,
    ) {
        if status == Status::Failed {
            let reason = outcome.reason.clone().unwrap_or_default();
            // DLQ first: a duplicate DLQ record is better than a failure nobody hears of.
            if let Err(e) = self.dlq.failed_action(action, &reason, &outcome).await {
                error!(error = %e, "dlq write failed; the action stays pending");
                let _ = ledger::reschedule(
                    &self.pool,
                    action.order_id,
                    &action.action,
                    self.policy.next_delay(action.attempts, None),
                    outcome.last_status_code,
                    &format!("dlq write failed: {e}"),
                )
                .await;
                return;
            }
            self.metrics
                .failures
                .with_label_values(&[failure.unwrap_or("permanent")])
                .inc();
            warn!(reason = %reason, "action failed");
        } else {
            info!(status = status.as_str(), "action finished");
        }
        self.until_written("finishing", || {
            ledger::finish(
                &self.pool,
                action.order_id,
                &action.action,
                status,
                &outcome,
            )
        })
        .await;
        self.metrics
            .finished
            .with_label_values(&[status.as_str()])
            .inc();
    }

    /// Writes an attempt's outcome to the ledger, retrying while PostgreSQL is away (a
    /// restart, a dropped connection): left to the lease, the action would wait for the
    /// whole lease. The writes only touch a `pending` row, so repeating one is harmless;
    /// shutdown abandons the task (the lease then brings the action back).
    async fn until_written<F, Fut>(&self, what: &str, write: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), sqlx::Error>>,
    {
        let retries = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let written = write
            .retry(retries)
            .notify(|e, delay| error!(error = %e, retry_in = ?delay, "{what} the action in the ledger failed; retrying"))
            .await;
        written.expect("retried until written");
    }
}

fn permanent_or_retry(e: OmError) -> Attempt {
    // 401 says our API key is wrong, not that the order is: failing every order would
    // bury the ledger in DLQ records, so wait in the ledger for the fix (the attempt
    // limits still apply), without in-place retries.
    if e.is_retryable() || e.status_code() == Some(401) {
        return Attempt::Retry(e);
    }
    Attempt::Done(
        Status::Failed,
        Outcome {
            reason: Some(e.reason()),
            last_status_code: e.status_code().map(i32::from),
            last_error: Some(e.to_string()),
            ..Outcome::default()
        },
    )
}

fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, (Uuid, String)>,
) {
    match done {
        Ok((id, ())) => {
            in_flight.remove(&id);
        }
        Err(e) => {
            in_flight.remove(&e.id());
            if e.is_panic() {
                error!(error = %e, "action task panicked; the lease brings the action back");
            }
        }
    }
}

/// Spaces calls evenly to stay under a calls-per-second limit, across all workers.
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn per_second(calls: f64) -> Option<Self> {
        (calls > 0.0 && calls.is_finite()).then(|| Self {
            interval: Duration::from_secs_f64(1.0 / calls),
            next: Mutex::new(Instant::now()),
        })
    }

    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().expect("pacer lock");
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}
