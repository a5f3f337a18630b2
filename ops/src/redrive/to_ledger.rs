//! Redriving a failed action: its ledger row re-queued by the service that owns it
//! ([`ActionLedger`]), in the transaction that records the redrive. Nothing is produced.

use ipp_schemas::FailedActionRecord;

use super::{decide::refused, ActionLedger, Decision, Redrive, RedriveOutcome};
use crate::{dlq::DlqRecord, redrives, Error};

/// Re-queues `action` (same idempotency key) unless the loop guard refuses.
pub(super) async fn redrive<L: ActionLedger>(
    run: &Redrive<'_, L>,
    ledger: &L,
    record: &DlqRecord,
    action: &FailedActionRecord,
) -> Result<RedriveOutcome, Error> {
    let target = format!("ledger:{}:{}", action.action, action.order_id);
    let earlier = if run.ops_tables {
        redrives::count_for_action(run.pool, action).await?
    } else {
        0
    };
    // Its count: the most of the record's header and the action's earlier redrives.
    let count = record
        .redrive_count()
        .max(u32::try_from(earlier).unwrap_or(u32::MAX));
    let outcome = |decision, redrive_count, detail: String| RedriveOutcome {
        position: record.position(),
        decision,
        target: target.clone(),
        redrive_count,
        detail,
    };
    let mut conn = run.pool.acquire().await?;
    let status = ledger.status(&mut conn, action).await?;
    drop(conn);
    if status.as_deref() != Some("failed") {
        let detail = match status {
            Some(s) => format!("the action is {s} in the ledger"),
            None => "no such action in the ledger".into(),
        };
        return Ok(outcome(Decision::NothingToDo, count, detail));
    }
    if let Some(why) = refused(count, run.args) {
        return Ok(outcome(Decision::Refused, count, why));
    }
    if run.args.dry_run {
        let detail = "would re-queue the failed action (same idempotency key)".to_owned();
        return Ok(outcome(Decision::WouldRedrive, count + 1, detail));
    }
    let mut tx = run.pool.begin().await?;
    let claim = run.claim(record, count + 1);
    if !redrives::claim_for_ledger(&mut tx, &claim, action).await? {
        let detail = "redriven meanwhile by someone else".to_owned();
        return Ok(outcome(Decision::AlreadyRedriven, count + 1, detail));
    }
    let via = format!("dlq redrive {} {}", run.dlq_topic, record.position());
    if !ledger.requeue(&mut tx, action, &via).await? {
        // Retried by someone else meanwhile: record nothing.
        tx.rollback().await?;
        let detail = "the action is no longer failed".to_owned();
        return Ok(outcome(Decision::NothingToDo, count + 1, detail));
    }
    tx.commit().await?;
    let detail = "failed action re-queued (same idempotency key)".to_owned();
    Ok(outcome(Decision::Redriven, count + 1, detail))
}
