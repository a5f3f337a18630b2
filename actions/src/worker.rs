//! The worker pool: claims due actions from the ledger and executes them against Order
//! Management, at most `concurrency` at once.
//!
//! Why money moves once: the idempotency key is fixed when the row is created, and before
//! the first capture is sent the row records `capture_requested_at` and the amount. From
//! then on every attempt re-sends that same request with that same key instead of
//! deciding afresh, so a capture whose answer was lost (the order now reads CAPTURED) is
//! replayed by Kustom and ends `succeeded` with its capture id, not `skipped`, and never
//! becomes a second capture.
//!
//! Why a crashed worker holds nothing back, and two workers never work one action at once:
//! a claim is a short lease renewed while the attempt runs, and an attempt stops as soon as
//! its worker can no longer prove the claim is still its own (`lease.rs`). Should a frozen
//! worker wake up after all, its writes are refused by the claim token, and anything it
//! had already sent carries the same idempotency key.

mod lease;
mod operations;
pub mod rate;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

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
    om::{self, OmClients},
    retry::RetryPolicy,
};
use lease::{Hold, Leases};
use rate::RateLimits;

pub struct Worker {
    pub pool: PgPool,
    /// Order Management, with the API key of each account.
    pub om: OmClients,
    pub policy: RetryPolicy,
    pub dlq: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    /// Order Management requests per account (`rate.rs`); `None`: no limit.
    pub rate_limits: Option<RateLimits>,
    pub concurrency: usize,
    /// How long a claim lasts unless renewed (see `lease.rs`).
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    /// Woken whenever an action settles: the publisher appends its observation.
    pub settled: Arc<Notify>,
}

/// How one execution of an action ended.
enum Attempt {
    Done(Status, Outcome),
    /// Worth trying again later.
    Retry(OmError),
    /// The ledger could not be written; the action is due again when its lease runs out.
    Ledger(sqlx::Error),
    /// This worker no longer owns the claim: stop, another worker takes the action up.
    Lost,
}

/// Why one Order Management call (with its in-place retries) ended without an answer.
enum CallError {
    Om(OmError),
    /// The claim could not be proven any more: nothing more may be sent.
    Lost,
}

/// The metric label of the rate limit shared by actions without a `merchant_id`.
const NO_ACCOUNT: &str = "(none)";

/// An action a task is working on, for the shutdown.
struct Claimed {
    order_id: Uuid,
    action: String,
    token: Uuid,
}

impl Worker {
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, Claimed> = HashMap::new();
        let leases = Leases::new(self.pool.clone(), self.lease);
        let stop_renewing = CancellationToken::new();
        let renewing = tokio::spawn(leases.clone().run(stop_renewing.clone()));
        info!(
            concurrency = self.concurrency,
            lease = ?leases.lease(),
            renew_every = ?leases.renew_every(),
            "worker started"
        );
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
            // Before the statement: the database's `now()` of the claim can only be later.
            let sent = Instant::now();
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
                let hold = leases.hold(action.claim_token, sent);
                let claimed = Claimed {
                    order_id: action.order_id,
                    action: action.action.clone(),
                    token: action.claim_token,
                };
                let span = tracing::info_span!(
                    "action",
                    order_id = %action.order_id,
                    session_id = ?action.session_id,
                    command_id = ?action.command_id,
                    action = %action.action,
                    attempt = action.attempts,
                );
                let worker = self.clone();
                let handle = tasks.spawn(
                    async move {
                        worker.metrics.in_flight.inc();
                        worker.execute(action, hold).await;
                        worker.metrics.in_flight.dec();
                        drop(permit);
                    }
                    .instrument(span),
                );
                in_flight.insert(handle.id(), claimed);
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
            // Make them due again right away for the next run instead of after the lease;
            // the token keeps this from touching one that another worker took meanwhile.
            for claimed in in_flight.values() {
                let _ = ledger::reschedule(
                    &self.pool,
                    claimed.order_id,
                    &claimed.action,
                    claimed.token,
                    Duration::ZERO,
                    None,
                    "interrupted by shutdown",
                )
                .await;
            }
        }
        stop_renewing.cancel();
        let _ = renewing.await;
        info!("worker stopped");
    }

    /// Works on a claimed action for as long as the claim is provably this worker's.
    /// Every step checks the claim before it acts (`Hold::check`); this also cuts short a
    /// wait (a slow call, a retry delay) once the claim is lost. The attempt is polled
    /// first: one that just wrote its outcome, which ends the claim, is not "lost".
    async fn execute(&self, action: Action, hold: Hold) {
        tokio::select! {
            biased;
            () = self.execute_held(&action, &hold) => {}
            () = hold.lost() => {
                self.metrics.claims_lost.inc();
                warn!(
                    "claim lost (its lease could not be renewed in time): attempt abandoned, \
                     another worker takes the action up"
                );
            }
        }
    }

    async fn execute_held(&self, action: &Action, hold: &Hold) {
        let attempt = self.attempt(action, hold).await;
        match attempt {
            Attempt::Done(status, outcome) => {
                let kind = (status == Status::Failed).then_some("permanent");
                self.finish(action, hold, status, outcome, kind).await;
            }
            Attempt::Ledger(e) => {
                error!(error = %e, "ledger write failed; the action is due again when its lease runs out");
            }
            Attempt::Lost => {
                self.metrics.claims_lost.inc();
                warn!("claim lost: attempt abandoned, another worker takes the action up");
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
                        action,
                        hold,
                        Status::Failed,
                        failure(&e, reason),
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
                match ledger::reschedule(
                    &self.pool,
                    action.order_id,
                    &action.action,
                    hold.token(),
                    delay,
                    outcome.last_status_code,
                    &e.to_string(),
                )
                .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        self.metrics.claims_lost.inc();
                        warn!("claim lost: not rescheduled, another worker owns the action");
                    }
                    Err(db) => error!(
                        error = %db,
                        "rescheduling failed; the action is due again when its lease runs out"
                    ),
                }
            }
        }
    }

    /// One Order Management call with its in-place retries, each sent only while the
    /// claim is provably this worker's, and each taking a token of the action's account.
    /// The wait for a token comes before the claim is checked: the claim is renewed
    /// meanwhile, and one lost while waiting ends the attempt (`execute`).
    async fn call<T, F, Fut>(
        &self,
        action: &Action,
        hold: &Hold,
        endpoint: &'static str,
        call: F,
    ) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OmError>>,
    {
        let once = || async {
            if let Some(limits) = &self.rate_limits {
                let account = action.merchant_id.as_deref();
                let waited = limits.acquire(account).await;
                if !waited.is_zero() {
                    self.metrics
                        .rate_limit_wait_seconds
                        .with_label_values(&[account.unwrap_or(NO_ACCOUNT)])
                        .inc_by(waited.as_secs_f64());
                }
            }
            hold.check().map_err(|_| CallError::Lost)?;
            let started = Instant::now();
            let result = call().await;
            self.metrics
                .call_seconds
                .with_label_values(&[endpoint])
                .observe(started.elapsed().as_secs_f64());
            let status = match &result {
                Ok(_) => om::success_status(endpoint).to_owned(),
                Err(e) => e.label(),
            };
            self.metrics
                .calls
                .with_label_values(&[endpoint, &status])
                .inc();
            result.map_err(CallError::Om)
        };
        once.retry(self.policy.in_place())
            .when(|e| matches!(e, CallError::Om(e) if e.is_retryable()))
            .adjust(|e, delay| match e {
                CallError::Om(e) => self.policy.adjust(e, delay),
                CallError::Lost => None,
            })
            .notify(|e, delay| {
                if let CallError::Om(e) = e {
                    self.metrics
                        .retries
                        .with_label_values(&[endpoint, &e.label()])
                        .inc();
                    debug!(error = %e, retry_in = ?delay, "retrying call");
                }
            })
            .await
    }

    /// Ends the action; `failure` is the metric label of a failure (`permanent`,
    /// `exhausted`).
    async fn finish(
        &self,
        action: &Action,
        hold: &Hold,
        status: Status,
        outcome: Outcome,
        failure: Option<&str>,
    ) {
        if hold.check().is_err() {
            self.metrics.claims_lost.inc();
            warn!("claim lost: outcome not written, another worker owns the action");
            return;
        }
        if status == Status::Failed && action.kind == ledger::OBSERVE {
            // A read that failed is not a failed payment: it stays `failed` in the ledger
            // (`ipp-actions retry` reads again) and its outcome is published for the
            // orders model, but it is no dead letter for the money operators.
            self.metrics.reads_failed.inc();
            warn!(reason = ?outcome.reason, "order read failed");
        } else if status == Status::Failed {
            let reason = outcome.reason.clone().unwrap_or_default();
            // DLQ first: a duplicate DLQ record is better than a failure nobody hears of.
            if let Err(e) = self.dlq.failed_action(action, &reason, &outcome).await {
                error!(error = %e, "dlq write failed; the action stays pending");
                let _ = ledger::reschedule(
                    &self.pool,
                    action.order_id,
                    &action.action,
                    hold.token(),
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
        }
        match ledger::finish(
            &self.pool,
            action.order_id,
            &action.action,
            hold.token(),
            status,
            &outcome,
        )
        .await
        {
            Ok(true) => {
                info!(status = status.as_str(), "action finished");
                self.metrics
                    .finished
                    .with_label_values(&[status.as_str()])
                    .inc();
                self.settled.notify_one();
            }
            Ok(false) => {
                self.metrics.claims_lost.inc();
                warn!("claim lost: outcome not written, another worker owns the action");
            }
            Err(e) => error!(
                error = %e,
                "ledger write failed; the action is due again when its lease runs out"
            ),
        }
    }
}

fn permanent_or_retry(e: OmError) -> Attempt {
    // 401 says our API key is wrong, not that the order is: failing every order would
    // bury the ledger in DLQ records, so wait in the ledger for the fix (the attempt
    // limits still apply), without in-place retries. So does a missing key.
    let no_key = matches!(e, OmError::NoApiKey { .. });
    if e.is_retryable() || e.status_code() == Some(401) || no_key {
        return Attempt::Retry(e);
    }
    Attempt::Done(Status::Failed, failure(&e, e.reason()))
}

/// The outcome of an action that ends `failed` because of `e`.
fn failure(e: &OmError, reason: String) -> Outcome {
    Outcome {
        reason: Some(reason),
        error_code: e.error_code().map(str::to_owned),
        last_status_code: e.status_code().map(i32::from),
        last_error: Some(e.to_string()),
        ..Outcome::default()
    }
}

fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, Claimed>,
) {
    match done {
        Ok((id, ())) => {
            in_flight.remove(&id);
        }
        Err(e) => {
            in_flight.remove(&e.id());
            if e.is_panic() {
                error!(error = %e, "action task panicked; the action is due again when its lease runs out");
            }
        }
    }
}
