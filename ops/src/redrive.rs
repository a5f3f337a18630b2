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

use std::{collections::HashMap, future::Future, time::Duration};

use chrono::{DateTime, Utc};
use ipp_schemas::dlq::{header as dlq_header, FailedActionRecord};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use crate::{
    args::{RecordRef, RedriveArgs},
    dlq::{self, DlqRecord, DlqSource},
    output::{self, Table},
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

#[derive(Debug, Clone)]
pub struct Outcome {
    pub position: RecordRef,
    pub decision: Decision,
    /// `topic[partition]@offset`, `topic`, or `ledger:capture:<order>`.
    pub target: String,
    /// The count the redriven copy carries (previous + 1), or the count that was refused.
    pub redrive_count: u32,
    pub detail: String,
}

impl Outcome {
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

enum Target {
    Topic(String),
    Ledger(FailedActionRecord),
}

/// An earlier redrive of a DLQ record (a row of `ipp_dlq_redrives`).
#[derive(Debug, Clone)]
pub struct Previous {
    pub redriven_at: DateTime<Utc>,
    pub target: String,
}

/// The earlier redrives of `dlq_topic`'s records, for `dlq list`; `None` when unknown
/// (the database is unreachable: a warning is logged, the list goes on without them).
pub async fn redriven(
    database: &crate::Database,
    dlq_topic: &str,
) -> Option<HashMap<RecordRef, Previous>> {
    let lookup = async {
        let pool = crate::connect(database).await?;
        let found = if crate::table_exists(&pool, "ipp_dlq_redrives").await? {
            previous_redrives(&pool, dlq_topic).await?
        } else {
            HashMap::new()
        };
        pool.close().await;
        Ok::<_, Error>(found)
    };
    match lookup.await {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "cannot read ipp_dlq_redrives; listing without it");
            None
        }
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
        previous_redrives(&pool, &source.topic).await?
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

    let mut outcomes = Vec::with_capacity(selected.len());
    for record in selected {
        let outcome = decide_and_apply(
            record,
            args,
            ledger,
            &pool,
            ops_tables,
            &previous,
            producer.as_ref(),
            &source.topic,
        )
        .await;
        if args.json {
            output::json_lines([outcome.to_json(&source.topic)])?;
        }
        outcomes.push(outcome);
    }
    pool.close().await;

    if !args.json {
        let mut table = Table::new(["DLQ", "OUTCOME", "TARGET", "REDRIVES", "DETAIL"]);
        for o in &outcomes {
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
            source.topic,
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

async fn previous_redrives(
    pool: &PgPool,
    dlq_topic: &str,
) -> Result<HashMap<RecordRef, Previous>, Error> {
    let rows = sqlx::query!(
        "SELECT dlq_partition, dlq_offset, redriven_at, target_kind, target_topic, \
             target_partition, target_offset, order_id, action \
         FROM ipp_dlq_redrives WHERE dlq_topic = $1",
        dlq_topic,
    )
    .fetch_all(pool)
    .await?;
    let mut previous = HashMap::new();
    for row in rows {
        let position = RecordRef {
            partition: row.dlq_partition,
            offset: row.dlq_offset,
        };
        let target = if row.target_kind == "ledger" {
            format!(
                "ledger:{}:{}",
                row.action.unwrap_or_default(),
                output::opt(row.order_id)
            )
        } else {
            format!(
                "{}[{}]@{}",
                row.target_topic.unwrap_or_default(),
                output::opt(row.target_partition),
                output::opt(row.target_offset),
            )
        };
        previous.insert(
            position,
            Previous {
                redriven_at: row.redriven_at,
                target,
            },
        );
    }
    Ok(previous)
}

#[allow(clippy::too_many_arguments)]
async fn decide_and_apply<L: ActionLedger>(
    record: &DlqRecord,
    args: &RedriveArgs,
    ledger: Option<&L>,
    pool: &PgPool,
    ops_tables: bool,
    previous: &HashMap<RecordRef, Previous>,
    producer: Option<&FutureProducer>,
    dlq_topic: &str,
) -> Outcome {
    let mut outcome = Outcome {
        position: record.position(),
        decision: Decision::Failed,
        target: String::new(),
        redrive_count: record.redrive_count(),
        detail: String::new(),
    };
    if let Some(before) = previous.get(&record.position()) {
        outcome.decision = Decision::AlreadyRedriven;
        outcome.target = before.target.clone();
        outcome.detail = format!("redriven at {}", output::time(Some(before.redriven_at)));
        return outcome;
    }
    let target = match (record.failed_action(), record.source_topic()) {
        (Some(action), _) if ledger.is_some() => Target::Ledger(action),
        (Some(_), _) => {
            outcome.decision = Decision::NotRedrivable;
            outcome.detail = "a failed action: redrive it with `ipp-actions dlq redrive`".into();
            return outcome;
        }
        (None, Some(topic)) => Target::Topic(topic),
        (None, None) => {
            outcome.decision = Decision::NotRedrivable;
            outcome.detail = "no dlq-source-topic header".into();
            return outcome;
        }
    };
    let result = match &target {
        Target::Topic(topic) => {
            outcome.target = topic.clone();
            redrive_to_topic(record, topic, args, pool, producer, dlq_topic, &mut outcome).await
        }
        Target::Ledger(action) => {
            outcome.target = format!("ledger:{}:{}", action.action, action.order_id);
            let ledger = ledger.expect("a ledger target needs a ledger");
            redrive_action(
                record,
                action,
                ledger,
                args,
                pool,
                ops_tables,
                dlq_topic,
                &mut outcome,
            )
            .await
        }
    };
    if let Err(e) = result {
        outcome.decision = Decision::Failed;
        outcome.detail = e.chain();
    }
    outcome
}

/// The loop guard's count check; `Some` when refused.
fn refused(count: u32, args: &RedriveArgs) -> Option<String> {
    (count >= args.max_redrives && !args.force).then(|| {
        format!(
            "redriven {count} time(s) already, --max-redrives {}: fix the cause, then use --force",
            args.max_redrives
        )
    })
}

async fn redrive_to_topic(
    record: &DlqRecord,
    topic: &str,
    args: &RedriveArgs,
    pool: &PgPool,
    producer: Option<&FutureProducer>,
    dlq_topic: &str,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let count = record.redrive_count();
    if let Some(why) = refused(count, args) {
        outcome.decision = Decision::Refused;
        outcome.detail = why;
        return Ok(());
    }
    outcome.redrive_count = count + 1;
    let Some(producer) = producer else {
        outcome.decision = Decision::WouldRedrive;
        outcome.detail = format!(
            "would re-produce {} to {topic} with dlq-redrive-count {}",
            record.event_id().unwrap_or_else(|| "the record".into()),
            count + 1
        );
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query!(
        "INSERT INTO ipp_dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_kind, \
             target_topic, redrive_count, forced) \
         VALUES ($1, $2, $3, 'topic', $4, $5, $6) ON CONFLICT DO NOTHING",
        dlq_topic,
        record.partition,
        record.offset,
        topic,
        i32::try_from(count + 1).unwrap_or(i32::MAX),
        args.force && count >= args.max_redrives,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        outcome.decision = Decision::AlreadyRedriven;
        outcome.detail = "redriven meanwhile by someone else".into();
        return Ok(());
    }
    let copy_headers = redriven_headers(&record.headers, count + 1);
    let mut headers = OwnedHeaders::new_with_capacity(copy_headers.len());
    for (key, value) in &copy_headers {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: value.as_deref(),
        });
    }
    let mut copy: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = &record.key {
        copy = copy.key(key);
    }
    if let Some(value) = &record.value {
        copy = copy.payload(value);
    }
    let delivered = producer
        .send(copy, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| Error::Kafka(e))?;
    sqlx::query!(
        "UPDATE ipp_dlq_redrives SET target_partition = $4, target_offset = $5 \
         WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3",
        dlq_topic,
        record.partition,
        record.offset,
        delivered.partition,
        delivered.offset,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    outcome.decision = Decision::Redriven;
    outcome.target = format!("{topic}[{}]@{}", delivered.partition, delivered.offset);
    outcome.detail = format!(
        "{} re-produced",
        record.event_id().unwrap_or_else(|| "record".into())
    );
    Ok(())
}

/// The headers of a redriven copy: the original ones in order, without any `dlq-*`
/// header (provenance and error belong to the parked record, not to the event), then
/// `dlq-redrive-count`.
pub fn redriven_headers(
    parked: &[(String, Option<Vec<u8>>)],
    count: u32,
) -> Vec<(String, Option<Vec<u8>>)> {
    parked
        .iter()
        .filter(|(key, _)| !key.starts_with("dlq-"))
        .cloned()
        .chain(std::iter::once((
            dlq_header::REDRIVE_COUNT.to_owned(),
            Some(count.to_string().into_bytes()),
        )))
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn redrive_action(
    record: &DlqRecord,
    action: &FailedActionRecord,
    ledger: &impl ActionLedger,
    args: &RedriveArgs,
    pool: &PgPool,
    ops_tables: bool,
    dlq_topic: &str,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let earlier: i64 = if ops_tables {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM ipp_dlq_redrives WHERE order_id = $1 AND action = $2"#,
            action.order_id,
            action.action,
        )
        .fetch_one(pool)
        .await?
    } else {
        0
    };
    let count = record
        .redrive_count()
        .max(u32::try_from(earlier).unwrap_or(u32::MAX));
    outcome.redrive_count = count;
    let mut conn = pool.acquire().await?;
    let status = ledger.status(&mut conn, action).await?;
    drop(conn);
    if status.as_deref() != Some("failed") {
        outcome.decision = Decision::NothingToDo;
        outcome.detail = match status {
            Some(s) => format!("the action is {s} in the ledger"),
            None => "no such action in the ledger".into(),
        };
        return Ok(());
    }
    if let Some(why) = refused(count, args) {
        outcome.decision = Decision::Refused;
        outcome.detail = why;
        return Ok(());
    }
    outcome.redrive_count = count + 1;
    if args.dry_run {
        outcome.decision = Decision::WouldRedrive;
        outcome.detail = "would re-queue the failed action (same idempotency key)".into();
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query!(
        "INSERT INTO ipp_dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_kind, \
             order_id, action, redrive_count, forced) \
         VALUES ($1, $2, $3, 'ledger', $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        dlq_topic,
        record.partition,
        record.offset,
        action.order_id,
        action.action,
        i32::try_from(count + 1).unwrap_or(i32::MAX),
        args.force && count >= args.max_redrives,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        outcome.decision = Decision::AlreadyRedriven;
        outcome.detail = "redriven meanwhile by someone else".into();
        return Ok(());
    }
    let via = format!("dlq redrive {dlq_topic} {}", record.position());
    if !ledger.requeue(&mut tx, action, &via).await? {
        // Retried by someone else meanwhile: record nothing.
        tx.rollback().await?;
        outcome.decision = Decision::NothingToDo;
        outcome.detail = "the action is no longer failed".into();
        return Ok(());
    }
    tx.commit().await?;
    outcome.decision = Decision::Redriven;
    outcome.detail = "failed action re-queued (same idempotency key)".into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
        (key.to_owned(), Some(value.as_bytes().to_vec()))
    }

    #[test]
    fn copies_keep_the_ingest_headers_and_carry_the_count() {
        let parked = vec![
            h("kustom-event-id", "kevt_1"),
            h("ipp-received-at", "2026-11-26T10:00:00Z"),
            h("dlq-redrive-count", "1"),
            ("empty".to_owned(), None),
            h("dlq-source-topic", "ipp.events"),
            h("dlq-error", "boom"),
        ];
        assert_eq!(
            redriven_headers(&parked, 2),
            vec![
                h("kustom-event-id", "kevt_1"),
                h("ipp-received-at", "2026-11-26T10:00:00Z"),
                ("empty".to_owned(), None),
                h("dlq-redrive-count", "2"),
            ]
        );
    }

    #[test]
    fn the_guard_refuses_at_the_maximum_unless_forced() {
        let args = |max_redrives, force| RedriveArgs {
            records: Vec::new(),
            all: true,
            filters: crate::args::Filters::default(),
            dry_run: false,
            max_redrives,
            force,
            json: false,
        };
        assert!(refused(2, &args(3, false)).is_none());
        assert!(refused(3, &args(3, false)).is_some());
        assert!(refused(3, &args(3, true)).is_none());
        assert!(refused(0, &args(0, false)).is_some(), "0 disables redrives");
    }
}
