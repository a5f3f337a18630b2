//! `ipp-projector replay`: the events of a time range, exported as JSON Lines or CSV,
//! or projected into a schema of the analyst's choosing (`--into-schema`).
//!
//! Where each partition starts comes from the broker's offsets-for-times lookup (the
//! first record whose timestamp is at or after `--from`), not from a scan of the whole
//! log. Each partition stops at the high watermark captured at the start, or at its
//! first record whose timestamp is at or after `--to`. Records before `--from` that come
//! after the start are skipped as well: record timestamps are the producer's
//! (`CreateTime`), so they need not grow with the offset. The consumer is only assigned
//! partitions and never commits offsets.
//!
//! Poison records (what the live projector parks) are exported like any record; with
//! `--into-schema` they are not projected, and each is named on stderr with its
//! position and reason. A replay parks nothing: it writes to an analyst's sink, and the
//! live projector (or a rebuild) parks what it cannot project in the dead-letter topic.

use std::{collections::BTreeMap, io::Write, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use uuid::Uuid;

use self::{
    select::{record_time, Fields},
    sink::Sink,
};
use crate::{
    commands::progress::Progress,
    config::Config,
    engine::{Engine, EngineMode, Poison, Retry, Totals},
    kafka::{consumed::ConsumedRecord, reader},
    schema,
    store::statistics::AutoAnalyze,
    Error,
};

mod select;
mod sink;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ReplayArgs {
    /// Start of the range (RFC 3339, inclusive), compared with the records' timestamps.
    #[arg(long)]
    pub from: DateTime<Utc>,
    /// End of the range (RFC 3339, exclusive).
    #[arg(long)]
    pub to: DateTime<Utc>,
    /// Only events of this merchant (`merchant_id`).
    #[arg(long)]
    pub merchant: Option<String>,
    /// Only events of this IPP session (`data.session_id`).
    #[arg(long)]
    pub session: Option<Uuid>,
    /// Only events of this type (repeatable).
    #[arg(long = "event-type")]
    pub event_types: Vec<String>,
    /// Export format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Write the export to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Project the selected events into this schema (created and migrated if needed;
    /// the same tables as the live read model) instead of exporting them (add
    /// `--output` to export as well).
    #[arg(long)]
    pub into_schema: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per event.
    Jsonl,
    /// Flat columns with a header line.
    Csv,
}

/// `ipp-projector replay`.
pub async fn run(config: &Config, args: &ReplayArgs) -> Result<(), Error> {
    if args.to <= args.from {
        return Err(Error::Config("--to must be after --from".into()));
    }
    if let Some(name) = &args.into_schema {
        schema::validate(name)?;
        if *name == config.schema {
            return Err(Error::Config(format!(
                "--into-schema {name} is the live schema: choose another one"
            )));
        }
    }
    let (from_ms, to_ms) = (args.from.timestamp_millis(), args.to.timestamp_millis());
    let topic = config.ipp_topic.as_str();
    let consumer = reader::consumer(config, "replay")?;
    let partitions = reader::partitions(&consumer, topic)?;
    let marks = reader::watermarks(&consumer, topic, &partitions)?;
    let found = reader::offsets_for_time(&consumer, topic, &partitions, from_ms)?;
    // Start per partition, and the high watermark it stops at.
    let mut starts = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for (&partition, &(low, high)) in &marks {
        let Some(Some(start)) = found.get(&partition) else {
            continue; // no record at or after --from
        };
        let start = (*start).max(low);
        if start < high {
            starts.insert(partition, start);
            ends.insert(partition, high);
        }
    }
    let total: i64 = starts.iter().map(|(p, s)| ends[p] - s).sum();
    tracing::info!(?starts, ?ends, "replay range located");

    let pool = match &args.into_schema {
        Some(name) => {
            let pool = schema::connect(&config.database, name).await?;
            schema::prepare(&pool, name).await?;
            Some(pool)
        }
        None => None,
    };
    let statistics = Arc::new(AutoAnalyze::default());
    let mut sink = Sink::open(args)?;
    let mut progress = Progress::new(false, "replay");

    let mut read = 0u64;
    let mut selected = 0u64;
    let mut totals = Totals::default();
    let mut poison: Vec<Poison> = Vec::new();
    let mut batch: Vec<ConsumedRecord> = Vec::new();
    if !starts.is_empty() {
        reader::assign(&consumer, topic, &starts)?;
    }
    let mut open = ends.clone();
    while !open.is_empty() {
        let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(message)) => ConsumedRecord::copy_of(&message),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(Error::Operation(format!(
                    "no record from the broker for 30s with partitions {:?} unfinished",
                    open.keys().collect::<Vec<_>>()
                )))
            }
        };
        let partition = message.partition();
        let Some(&end) = open.get(&partition) else {
            continue; // already finished
        };
        if message.offset() >= end {
            open.remove(&partition);
            continue;
        }
        read += 1;
        progress.update("replaying", read, total - read as i64)?;
        let time = record_time(&message);
        if time.is_some_and(|t| t >= to_ms) {
            open.remove(&partition);
            continue;
        }
        if message.offset() + 1 >= end {
            open.remove(&partition);
        }
        if time.is_none_or(|t| t < from_ms) {
            continue;
        }
        let fields = Fields::of(message.payload().unwrap_or_default());
        if !args.selects(&fields) {
            continue;
        }
        selected += 1;
        sink.write(&message, &fields)?;
        if pool.is_some() {
            batch.push(message);
            if batch.len() >= config.batch_size as usize {
                totals += project(config, pool.as_ref(), &statistics, &batch, &mut poison).await?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        totals += project(config, pool.as_ref(), &statistics, &batch, &mut poison).await?;
    }
    sink.finish()?;
    progress.finish();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "replay: {selected} events selected out of {read} records read from {} partitions of {topic}",
        starts.len()
    );
    if let (Some(pool), Some(name)) = (pool, &args.into_schema) {
        let _ = writeln!(
            err,
            "replay: projected into schema {name}: {} events stored, {} duplicates, {} poison records skipped",
            totals.applied, totals.duplicates, totals.poison
        );
        report_poison(&mut err, &poison);
        pool.close().await;
    }
    Ok(())
}

/// At most this many poison records are named one by one.
const POISON_NAMED: usize = 100;

/// One line per poison record: where it is and why it was not projected.
fn report_poison(out: &mut impl Write, poison: &[Poison]) {
    for Poison { message, reason } in poison.iter().take(POISON_NAMED) {
        let _ = writeln!(
            out,
            "replay: poison record {}[{}]@{} not projected: {reason}",
            message.topic(),
            message.partition(),
            message.offset()
        );
    }
    if poison.len() > POISON_NAMED {
        let _ = writeln!(
            out,
            "replay: and {} more poison records not projected",
            poison.len() - POISON_NAMED
        );
    }
}

async fn project(
    config: &Config,
    pool: Option<&sqlx::PgPool>,
    statistics: &Arc<AutoAnalyze>,
    batch: &[ConsumedRecord],
    poison: &mut Vec<Poison>,
) -> Result<Totals, Error> {
    let Some(pool) = pool else {
        return Ok(Totals::default());
    };
    let engine = Engine::new(
        pool,
        &config.ipp_topic,
        EngineMode::Analyst,
        config.max_payload_bytes,
        statistics.clone(),
    );
    let mut totals = Totals::default();
    engine
        .apply_isolating(batch, Retry::Never, |outcome| {
            totals += &outcome;
            poison.extend(outcome.unparked);
        })
        .await?;
    Ok(totals)
}

#[cfg(test)]
pub(super) mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    /// `ReplayArgs` of one hour, plus `extra` flags.
    pub(in crate::commands::replay) fn args(extra: &[&str]) -> ReplayArgs {
        let mut argv = vec![
            "replay",
            "--from",
            "2026-06-05T18:00:00Z",
            "--to",
            "2026-06-05T19:00:00.5+02:00",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn parses_rfc3339_ranges_in_any_offset() {
        let a = args(&[]);
        assert_eq!(a.to.to_rfc3339(), "2026-06-05T17:00:00.500+00:00");
        assert_eq!(a.format, Format::Jsonl);
    }
}
