//! `dlq redrive`: puts parked records back, each at most once, with a loop guard.
//!
//! - A parked `ipp.events` record (either service) is re-produced to its
//!   `dlq-source-topic` with its original key, value and headers, minus the `dlq-*`
//!   headers, plus `dlq-redrive-count` = previous + 1 (idempotent producer, acks=all,
//!   delivery awaited). Both services keep the headers of a record they park, so a
//!   redriven record that fails again comes back with its count.
//! - A failed action parked by ipp-actions is redriven by re-queuing its ledger row
//!   (`pending`, same idempotency key): nothing is produced. Its count is the number of
//!   earlier redrives of that action in `ipp_dlq_redrives`.
//! - Loop guard: a record whose count reached `--max-redrives` is refused unless
//!   `--force`; a DLQ record already redriven (a row in `ipp_dlq_redrives`, keyed by its
//!   DLQ topic, partition and offset) is never redriven again, so `redrive --all` twice
//!   produces nothing the second time.
//!
//! The `ipp_dlq_redrives` row is inserted in a transaction that commits only after the
//! broker acknowledged the copy (or with the ledger update). Two operators redriving at
//! once serialize on the row's primary key. A crash between the acknowledgement and the
//! commit leaves the copy produced but unrecorded: a later redrive produces it again,
//! which both consumers absorb (the projector keys events by id, ipp-actions by order).

mod decide;
mod to_ledger;
mod to_topic;

use std::{collections::HashMap, future::Future};

use ipp_schemas::FailedActionRecord;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use self::decide::Target;
pub use self::to_topic::redriven_headers;
use crate::{
    args::{RecordRef, RedriveArgs},
    dlq::{self, DlqRecord, DlqSource},
    output::{self, Table},
    redrives::{self, Previous},
    Error,
};

/// The ledger a failed action's dead letter points at, implemented by ipp-actions: a
/// failed action is redriven by re-queuing its row, inside the transaction that records
/// the redrive in `ipp_dlq_redrives`.
pub trait ActionLedger: Sync {
    /// The action's status in the ledger (`None`: no such row).
    fn status(
        &self,
        conn: &mut PgConnection,
        action: &FailedActionRecord,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send;

    /// Puts the failed action back to `pending` with its idempotency key, recording
    /// `via`; `false` when it is no longer `failed`.
    fn requeue(
        &self,
        conn: &mut PgConnection,
        action: &FailedActionRecord,
        via: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}

/// For a dead-letter topic without failed actions (the projector's).
pub enum NoLedger {}

impl ActionLedger for NoLedger {
    async fn status(
        &self,
        _: &mut PgConnection,
        _: &FailedActionRecord,
    ) -> Result<Option<String>, sqlx::Error> {
        match *self {}
    }

    async fn requeue(
        &self,
        _: &mut PgConnection,
        _: &FailedActionRecord,
        _: &str,
    ) -> Result<bool, sqlx::Error> {
        match *self {}
    }
}

/// What happened to one selected record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Re-produced, or its action re-queued.
    Redriven,
    /// `--dry-run`: would be redriven.
    WouldRedrive,
    /// Its redrive count reached `--max-redrives`.
    Refused,
    /// Redriven before (in `ipp_dlq_redrives`).
    AlreadyRedriven,
    /// A failed action whose ledger row is no longer `failed` (retried and succeeded).
    NothingToDo,
    /// No `dlq-source-topic` header and not a failed action.
    NotRedrivable,
    /// Producing or the database failed.
    Failed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redriven => "redriven",
            Self::WouldRedrive => "would-redrive",
            Self::Refused => "refused",
            Self::AlreadyRedriven => "already-redriven",
            Self::NothingToDo => "nothing-to-do",
            Self::NotRedrivable => "not-redrivable",
            Self::Failed => "failed",
        }
    }
}

/// What a redrive did with one record: a line of its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOutcome {
    pub position: RecordRef,
    pub decision: Decision,
    /// `topic[partition]@offset`, `topic`, or `ledger:capture:<order>`.
    pub target: String,
    /// The count the redriven copy carries (previous + 1), or the count that was refused.
    pub redrive_count: u32,
    pub detail: String,
}

impl RedriveOutcome {
    pub fn to_json(&self, dlq_topic: &str) -> Value {
        json!({
            "dlq_topic": dlq_topic,
            "position": self.position.to_string(),
            "partition": self.position.partition,
            "offset": self.position.offset,
            "outcome": self.decision.as_str(),
            "target": self.target,
            "redrive_count": self.redrive_count,
            "detail": self.detail,
        })
    }
}

/// `dlq redrive`: prints one line per selected record and a summary. Errors when a
/// record could not be redriven (after trying the others).
pub async fn run<L: ActionLedger>(
    source: &DlqSource,
    database: &crate::Database,
    args: &RedriveArgs,
    ledger: Option<&L>,
) -> Result<(), Error> {
    if args.records.is_empty() && !args.all && args.filters.is_empty() {
        return Err(Error::Usage(
            "say which records: PARTITION:OFFSET..., --all, or a filter (--since, --event-type, --session, --order)".into(),
        ));
    }
    let parked = dlq::read(source).await?;
    let selected: Vec<&DlqRecord> = if args.records.is_empty() {
        parked.iter().filter(|r| r.matches(&args.filters)).collect()
    } else {
        let by_position: HashMap<RecordRef, &DlqRecord> =
            parked.iter().map(|r| (r.position(), r)).collect();
        let mut chosen = Vec::new();
        for position in &args.records {
            let record = by_position.get(position).ok_or(Error::NoSuchRecord {
                topic: source.topic.clone(),
                partition: position.partition,
                offset: position.offset,
            })?;
            if record.matches(&args.filters) {
                chosen.push(*record);
            }
        }
        chosen
    };

    let pool = crate::connect(database).await?;
    if !args.dry_run {
        crate::migrate(&pool).await?;
    }
    let ops_tables = crate::table_exists(&pool, "ipp_dlq_redrives").await?;
    let previous = if ops_tables {
        redrives::previous(&pool, &source.topic).await?
    } else {
        HashMap::new()
    };
    let producer: Option<FutureProducer> = if args.dry_run {
        None
    } else {
        Some(
            source
                .kafka
                .client()
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "30000")
                .create()?,
        )
    };

    let run = Redrive {
        args,
        ledger,
        pool: &pool,
        ops_tables,
        producer: producer.as_ref(),
        dlq_topic: &source.topic,
    };
    let mut outcomes = Vec::with_capacity(selected.len());
    for record in selected {
        let outcome = run.one(record, &previous).await;
        if args.json {
            output::json_lines([outcome.to_json(&source.topic)])?;
        }
        outcomes.push(outcome);
    }
    pool.close().await;
    report(&source.topic, args, &outcomes)
}

/// What one `dlq redrive` works with.
struct Redrive<'a, L> {
    args: &'a RedriveArgs,
    ledger: Option<&'a L>,
    pool: &'a PgPool,
    /// Whether `ipp_dlq_redrives` exists (not in a dry run on a fresh database).
    ops_tables: bool,
    /// `None` in a dry run: nothing is produced.
    producer: Option<&'a FutureProducer>,
    dlq_topic: &'a str,
}

impl<L> Redrive<'_, L> {
    /// The claim of `record`'s redrive with `redrive_count`: forced when only `--force`
    /// lets it past the loop guard.
    fn claim<'r>(&'r self, record: &DlqRecord, redrive_count: u32) -> redrives::Claim<'r> {
        redrives::Claim {
            dlq_topic: self.dlq_topic,
            position: record.position(),
            redrive_count,
            forced: self.args.force && redrive_count > self.args.max_redrives,
        }
    }
}

impl<L: ActionLedger> Redrive<'_, L> {
    /// Decides, then applies; a failure is reported on the record's line.
    async fn one(
        &self,
        record: &DlqRecord,
        previous: &HashMap<RecordRef, Previous>,
    ) -> RedriveOutcome {
        let target = match decide::target(record, previous, self.ledger.is_some()) {
            Ok(target) => target,
            Err(settled) => return settled,
        };
        let (described, applied) = match &target {
            Target::Topic(topic) => (topic.clone(), to_topic::redrive(self, record, topic).await),
            Target::Ledger(action) => {
                let ledger = self.ledger.expect("a ledger target comes with a ledger");
                (
                    format!("ledger:{}:{}", action.action, action.order_id),
                    to_ledger::redrive(self, ledger, record, action).await,
                )
            }
        };
        applied.unwrap_or_else(|e| RedriveOutcome {
            position: record.position(),
            decision: Decision::Failed,
            target: described,
            // The count the redrive would have carried.
            redrive_count: record.redrive_count() + 1,
            detail: e.chain(),
        })
    }
}

/// The table (or JSON lines, already printed) and the summary line; an error when a
/// record could not be redriven.
fn report(dlq_topic: &str, args: &RedriveArgs, outcomes: &[RedriveOutcome]) -> Result<(), Error> {
    if !args.json {
        let mut table = Table::new(["DLQ", "OUTCOME", "TARGET", "REDRIVES", "DETAIL"]);
        for o in outcomes {
            table.row([
                o.position.to_string(),
                o.decision.as_str().to_owned(),
                o.target.clone(),
                o.redrive_count.to_string(),
                output::truncate(&o.detail, 100),
            ]);
        }
        table.print()?;
        let count = |d: Decision| outcomes.iter().filter(|o| o.decision == d).count();
        output::line(&format!(
            "{}: {} redriven, {} would be redriven, {} refused (loop guard), {} already redriven, {} nothing to do, {} not redrivable, {} failed",
            dlq_topic,
            count(Decision::Redriven),
            count(Decision::WouldRedrive),
            count(Decision::Refused),
            count(Decision::AlreadyRedriven),
            count(Decision::NothingToDo),
            count(Decision::NotRedrivable),
            count(Decision::Failed),
        ))?;
    }
    match outcomes
        .iter()
        .filter(|o| o.decision == Decision::Failed)
        .count()
    {
        0 => Ok(()),
        n => Err(Error::Incomplete(n)),
    }
}
