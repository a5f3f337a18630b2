//! What a redrive does with one selected record, decided from what is known before
//! anything is written: pure, so every rule of the loop guard is unit-tested.

use std::collections::HashMap;

use ipp_schemas::FailedActionRecord;

use super::{Decision, RedriveOutcome};
use crate::{
    args::{RecordRef, RedriveArgs},
    dlq::DlqRecord,
    output,
    redrives::Previous,
};

/// Where a redrivable record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// Re-produced to its `dlq-source-topic`.
    Topic(String),
    /// A failed action, re-queued in the service's ledger.
    Ledger(Box<FailedActionRecord>),
}

/// The first decision: redrivable, and to where, or already settled.
pub(super) fn target(
    record: &DlqRecord,
    previous: &HashMap<RecordRef, Previous>,
    has_ledger: bool,
) -> Result<Target, RedriveOutcome> {
    let settled = |decision, target: String, detail: String| RedriveOutcome {
        position: record.position(),
        decision,
        target,
        redrive_count: record.redrive_count(),
        detail,
    };
    if let Some(before) = previous.get(&record.position()) {
        return Err(settled(
            Decision::AlreadyRedriven,
            before.target.clone(),
            format!("redriven at {}", output::time(Some(before.redriven_at))),
        ));
    }
    match (record.failed_action(), record.source_topic()) {
        (Some(action), _) if has_ledger => Ok(Target::Ledger(Box::new(action))),
        (Some(_), _) => Err(settled(
            Decision::NotRedrivable,
            String::new(),
            "a failed action: redrive it with `ipp-actions dlq redrive`".into(),
        )),
        (None, Some(topic)) => Ok(Target::Topic(topic)),
        (None, None) => Err(settled(
            Decision::NotRedrivable,
            String::new(),
            "no dlq-source-topic header".into(),
        )),
    }
}

/// The loop guard's count check; `Some` with why when refused.
pub(super) fn refused(count: u32, args: &RedriveArgs) -> Option<String> {
    (count >= args.max_redrives && !args.force).then(|| {
        format!(
            "redriven {count} time(s) already, --max-redrives {}: fix the cause, then use --force",
            args.max_redrives
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn args(max_redrives: u32, force: bool) -> RedriveArgs {
        RedriveArgs {
            records: Vec::new(),
            all: true,
            filters: crate::args::Filters::default(),
            dry_run: false,
            max_redrives,
            force,
            json: false,
        }
    }

    fn parked(headers: &[(&str, &str)], value: &str) -> DlqRecord {
        DlqRecord::parked_for_test(value, headers)
    }

    #[test]
    fn the_guard_refuses_at_the_maximum_unless_forced() {
        assert!(refused(2, &args(3, false)).is_none());
        assert!(refused(3, &args(3, false)).is_some());
        assert!(refused(3, &args(3, true)).is_none());
        assert!(refused(0, &args(0, false)).is_some(), "0 disables redrives");
    }

    #[test]
    fn a_parked_record_goes_back_to_its_source_topic_once() {
        let record = parked(&[("dlq-source-topic", "ipp.events")], "{}");
        let none = HashMap::new();
        assert_eq!(
            target(&record, &none, false),
            Ok(Target::Topic("ipp.events".into()))
        );
        let before = HashMap::from([(
            record.position(),
            Previous {
                redriven_at: Utc::now(),
                target: "ipp.events[0]@9".into(),
            },
        )]);
        let settled = target(&record, &before, false).unwrap_err();
        assert_eq!(settled.decision, Decision::AlreadyRedriven);
        assert_eq!(settled.target, "ipp.events[0]@9");
    }

    #[test]
    fn without_a_source_or_a_ledger_nothing_is_redriven() {
        let none = HashMap::new();
        let orphan = parked(&[], "{}");
        assert_eq!(
            target(&orphan, &none, true).unwrap_err().decision,
            Decision::NotRedrivable
        );
        let action = FailedActionRecord {
            order_id: uuid::Uuid::new_v4(),
            action: "capture".into(),
            session_id: Some(uuid::Uuid::new_v4()),
            command_id: None,
            kind: None,
            error_code: None,
            merchant_id: None,
            event_id: "kevt_1".into(),
            status: ipp_schemas::dlq::FailedStatus::Failed,
            reason: "cancelled".into(),
            attempts: 1,
            idempotency_key: uuid::Uuid::new_v4(),
            requested_amount: None,
            last_status_code: None,
            last_error: None,
            created_at: Utc::now(),
            failed_at: Utc::now(),
        };
        let failed = parked(
            &[("dlq-service", "ipp-actions")],
            &serde_json::to_string(&action).unwrap(),
        );
        assert_eq!(
            target(&failed, &none, true),
            Ok(Target::Ledger(Box::new(action)))
        );
        let elsewhere = target(&failed, &none, false).unwrap_err();
        assert_eq!(elsewhere.decision, Decision::NotRedrivable);
        assert!(elsewhere.detail.contains("ipp-actions dlq redrive"));
    }
}
