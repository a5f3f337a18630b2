//! What one attempt of an action does, by kind: the automatic capture and a capture
//! command decide the amount (or take the command's), a refund sends the command's
//! amount, a cancel or a release just asks. Every request carries the action's own
//! idempotency key, so whatever was sent before is replayed by Kustom, not repeated. An
//! `observe` row reads the order and keeps the answer.

use ipp_schemas::CommandKind;
use tracing::info;

use super::{permanent_or_retry, Attempt, CallError, Worker};
use crate::{
    ledger::{self, Action, ActionKind, Outcome, Status},
    om::{self, OmClient},
};

impl Worker {
    /// One execution of a claimed action.
    pub(super) async fn attempt(&self, action: &Action, hold: &super::Hold) -> Attempt {
        let Some(kind) = ActionKind::parse(&action.kind) else {
            // The table's CHECK constraint rules this out; fail loudly rather than guess.
            return Attempt::Done(
                Status::Failed,
                Outcome {
                    reason: Some(format!("unknown action kind {:?}", action.kind)),
                    ..Outcome::default()
                },
            );
        };
        let kind = match kind {
            ActionKind::Observe => return self.observe(action, hold).await,
            ActionKind::Money(kind) => kind,
        };
        // The key of the order's account, never another's: without one the action waits.
        let client = match self.om.account(action.merchant_id.as_deref()) {
            Ok(client) => client.in_trace(action.traceparent.as_deref()),
            Err(e) => return permanent_or_retry(e),
        };
        match kind {
            CommandKind::Capture => self.capture(client, action, hold).await,
            CommandKind::Refund => self.refund(client, action, hold).await,
            CommandKind::Cancel => {
                let result = self
                    .call(action, hold, om::CANCEL, || {
                        client.cancel(action.order_id, action.idempotency_key)
                    })
                    .await;
                self.acknowledged(result, 204, "cancelled")
            }
            CommandKind::ReleaseRemainingAuthorization => {
                let result = self
                    .call(action, hold, om::RELEASE, || {
                        client.release_remaining_authorization(
                            action.order_id,
                            action.idempotency_key,
                        )
                    })
                    .await;
                self.acknowledged(result, 204, "remaining authorization released")
            }
        }
    }

    /// Read the order, decide, capture. A capture command that names its amount, and an
    /// automatic capture whose request was already made durable, send the recorded amount
    /// again instead of deciding afresh.
    async fn capture(&self, client: OmClient<'_>, action: &Action, hold: &super::Hold) -> Attempt {
        let amount = match action.requested_amount {
            Some(amount) => amount,
            None => match self.decide_capture(client, action, hold).await {
                Ok(amount) => amount,
                Err(attempt) => return attempt,
            },
        };
        // An automatic capture is referenced by its session, a command by what the
        // merchant gave, else its id: both show in Kustom's settlement files.
        let reference = match (&action.reference, action.session_id, action.command_id) {
            (Some(reference), _, _) => reference.clone(),
            (None, Some(session_id), _) => session_id.to_string(),
            (None, None, Some(command_id)) => command_id.to_string(),
            (None, None, None) => action.action.clone(),
        };
        let result = self
            .call(action, hold, om::CAPTURE, || {
                client.capture(
                    action.order_id,
                    amount,
                    &reference,
                    action.description.as_deref(),
                    action.idempotency_key,
                )
            })
            .await;
        match result {
            Ok(capture) => {
                info!(capture_id = %capture.capture_id, amount, "captured");
                Attempt::Done(
                    Status::Succeeded,
                    Outcome {
                        capture_id: Some(capture.capture_id),
                        captured_amount: Some(amount),
                        last_status_code: Some(201),
                        ..Outcome::default()
                    },
                )
            }
            Err(CallError::Lost) => Attempt::Lost,
            Err(CallError::Om(e)) => permanent_or_retry(e),
        }
    }

    /// What remains authorized is what to capture; it is recorded before the capture is
    /// sent. `Err` ends the attempt: nothing to capture, or the order could not be read.
    async fn decide_capture(
        &self,
        client: OmClient<'_>,
        action: &Action,
        hold: &super::Hold,
    ) -> Result<i64, Attempt> {
        let order = match self
            .call(action, hold, om::GET_ORDER, || {
                client.get_order(action.order_id)
            })
            .await
        {
            Ok(order) => order,
            Err(CallError::Lost) => return Err(Attempt::Lost),
            Err(CallError::Om(e)) => return Err(permanent_or_retry(e)),
        };
        let read = |reason: String| Outcome {
            reason: Some(reason),
            last_status_code: Some(200),
            ..Outcome::default()
        };
        if order.is_closed() {
            let reason = format!("order is {}", order.status);
            return Err(Attempt::Done(Status::Failed, read(reason)));
        }
        if order.remaining_authorized_amount <= 0 {
            let captured = order
                .captured_amount
                .map_or("unknown".to_owned(), |a| a.to_string());
            let reason = format!(
                "already captured (status {}, captured_amount {captured})",
                order.status
            );
            // The automatic capture's job is done; a merchant's capture command that
            // finds nothing to capture did not do what it asked for.
            let status = if action.command_id.is_some() {
                Status::Failed
            } else {
                Status::Skipped
            };
            return Err(Attempt::Done(status, read(reason)));
        }
        // Durable before the call: a crash after this point resumes by re-sending.
        match ledger::capture_requested(
            &self.pool,
            action.order_id,
            &action.action,
            hold.token(),
            order.remaining_authorized_amount,
        )
        .await
        {
            Ok(Some(amount)) => Ok(amount),
            Ok(None) => Err(Attempt::Lost),
            Err(e) => Err(Attempt::Ledger(e)),
        }
    }

    async fn refund(&self, client: OmClient<'_>, action: &Action, hold: &super::Hold) -> Attempt {
        let Some(amount) = action.requested_amount else {
            let outcome = Outcome {
                reason: Some("a refund without an amount".into()),
                ..Outcome::default()
            };
            return Attempt::Done(Status::Failed, outcome);
        };
        let result = self
            .call(action, hold, om::REFUND, || {
                client.refund(
                    action.order_id,
                    amount,
                    action.reference.as_deref(),
                    action.description.as_deref(),
                    action.idempotency_key,
                )
            })
            .await;
        match result {
            Ok(refund) => {
                info!(refund_id = %refund.refund_id, amount, "refunded");
                Attempt::Done(
                    Status::Succeeded,
                    Outcome {
                        refund_id: Some(refund.refund_id),
                        refunded_amount: Some(amount),
                        last_status_code: Some(201),
                        ..Outcome::default()
                    },
                )
            }
            Err(CallError::Lost) => Attempt::Lost,
            Err(CallError::Om(e)) => permanent_or_retry(e),
        }
    }

    /// Reads the order for the Kustom event that prompted it and keeps the answer as it
    /// came, for the publisher to append (decision 0019).
    async fn observe(&self, action: &Action, hold: &super::Hold) -> Attempt {
        // Read with the key of the order's account, like any other call.
        let client = match self.om.account(action.merchant_id.as_deref()) {
            Ok(client) => client.in_trace(action.traceparent.as_deref()),
            Err(e) => return permanent_or_retry(e),
        };
        let result = self
            .call(action, hold, om::GET_ORDER, || {
                client.get_order_json(action.order_id)
            })
            .await;
        match result {
            Ok(order) => {
                info!("order read");
                Attempt::Done(
                    Status::Succeeded,
                    Outcome {
                        last_status_code: Some(200),
                        observation: Some(order),
                        ..Outcome::default()
                    },
                )
            }
            Err(CallError::Lost) => Attempt::Lost,
            Err(CallError::Om(e)) => permanent_or_retry(e),
        }
    }

    /// The end of a request whose success carries nothing but its status.
    fn acknowledged(&self, result: Result<(), CallError>, status: i32, done: &str) -> Attempt {
        match result {
            Ok(()) => {
                info!("{done}");
                Attempt::Done(
                    Status::Succeeded,
                    Outcome {
                        last_status_code: Some(status),
                        ..Outcome::default()
                    },
                )
            }
            Err(CallError::Lost) => Attempt::Lost,
            Err(CallError::Om(e)) => permanent_or_retry(e),
        }
    }
}
