//! `dlq list`: a table (or JSON lines) of the parked records, with where each was
//! redriven to, if it was.

use serde_json::{json, Value};

use super::{read, DlqRecord, DlqSource};
use crate::{
    args::ListArgs,
    output::{self, Table},
    Error,
};

/// `dlq list`. With the database, each record also says whether (and where to) it was
/// redriven already.
pub async fn list(
    source: &DlqSource,
    database: &crate::Database,
    args: &ListArgs,
) -> Result<(), Error> {
    let records: Vec<DlqRecord> = read(source)
        .await?
        .into_iter()
        .filter(|r| r.matches(&args.filters))
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    let redriven = crate::redrives::redriven(database, &source.topic).await;
    let redriven_of = |record: &DlqRecord| {
        redriven
            .as_ref()
            .and_then(|found| found.get(&record.position()))
    };
    if args.json {
        return output::json_lines(records.iter().map(|record| {
            let mut line = record.summary();
            line["redriven"] = match (&redriven, redriven_of(record)) {
                (None, _) => Value::Null,
                (Some(_), None) => json!(false),
                (Some(_), Some(_)) => json!(true),
            };
            if let Some(previous) = redriven_of(record) {
                line["redriven_at"] = json!(previous.redriven_at);
                line["redriven_to"] = json!(previous.target);
            }
            line
        }));
    }
    let mut table = Table::new([
        "DLQ",
        "PARKED AT",
        "SOURCE",
        "EVENT ID",
        "TYPE",
        "REDRIVES",
        "REDRIVEN TO",
        "ERROR",
    ]);
    for record in &records {
        table.row([
            record.position().to_string(),
            output::time(record.parked_at()),
            format!(
                "{}[{}]@{}",
                record.source_topic().unwrap_or_else(|| "?".into()),
                output::opt(record.source_partition()),
                output::opt(record.source_offset()),
            ),
            record.event_id().unwrap_or_else(|| "-".into()),
            record.event_type().unwrap_or_else(|| "-".into()),
            record.redrive_count().to_string(),
            match (&redriven, redriven_of(record)) {
                (None, _) => "?".into(),
                (Some(_), None) => "-".into(),
                (Some(_), Some(previous)) => previous.target.clone(),
            },
            output::truncate(&record.error().unwrap_or_default(), 80),
        ]);
    }
    table.print()?;
    let outstanding = redriven
        .as_ref()
        .map(|_| records.iter().filter(|r| redriven_of(r).is_none()).count());
    output::line(&format!(
        "{} record(s) in {}{}",
        records.len(),
        source.topic,
        outstanding
            .map(|n| format!(", {n} not redriven yet"))
            .unwrap_or_default()
    ))
}
