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

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ipp_schemas::record::header;
use rdkafka::{
    message::{Headers, Message, OwnedMessage},
    Timestamp,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    config::Config,
    engine::{Engine, Totals},
    log_reader, schema,
    statistics::AutoAnalyze,
    Error,
};

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

/// What the body says, for filters and CSV columns.
#[derive(Debug, Default)]
struct Fields {
    event: Option<Value>,
    event_id: Option<String>,
    event_type: Option<String>,
    merchant_id: Option<String>,
    session_id: Option<String>,
    order_id: Option<String>,
}

impl Fields {
    fn of(body: &[u8]) -> Self {
        let Ok(event) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Self {
            event_id: text(&event["id"]),
            event_type: text(&event["type"]),
            merchant_id: text(&event["merchant_id"]),
            session_id: text(&event["data"]["session_id"]),
            order_id: text(&event["data"]["order_id"]),
            event: Some(event),
        }
    }
}

impl ReplayArgs {
    fn selects(&self, fields: &Fields) -> bool {
        if let Some(merchant) = &self.merchant {
            if fields.merchant_id.as_deref() != Some(merchant.as_str()) {
                return false;
            }
        }
        if let Some(session) = self.session {
            let matches = fields
                .session_id
                .as_deref()
                .and_then(|s| s.parse::<Uuid>().ok())
                == Some(session);
            if !matches {
                return false;
            }
        }
        self.event_types.is_empty()
            || fields
                .event_type
                .as_deref()
                .is_some_and(|t| self.event_types.iter().any(|e| e == t))
    }
}

fn record_time(message: &OwnedMessage) -> Option<i64> {
    match message.timestamp() {
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
        Timestamp::NotAvailable => None,
    }
}

fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn header_value(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

enum Sink {
    None,
    Jsonl(Box<dyn Write>),
    Csv(Box<csv::Writer<Box<dyn Write>>>),
}

impl Sink {
    fn open(args: &ReplayArgs) -> Result<Self, Error> {
        if args.into_schema.is_some() && args.output.is_none() {
            return Ok(Self::None);
        }
        let out: Box<dyn Write> = match &args.output {
            Some(path) => Box::new(BufWriter::new(File::create(path).map_err(Error::Output)?)),
            None => Box::new(BufWriter::new(std::io::stdout())),
        };
        Ok(match args.format {
            Format::Jsonl => Self::Jsonl(out),
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer
                    .write_record([
                        "topic",
                        "partition",
                        "offset",
                        "record_timestamp",
                        "received_at",
                        "event_id",
                        "event_type",
                        "merchant_id",
                        "session_id",
                        "order_id",
                        "raw",
                    ])
                    .map_err(csv_error)?;
                Self::Csv(Box::new(writer))
            }
        })
    }

    fn write(&mut self, message: &OwnedMessage, fields: &Fields) -> Result<(), Error> {
        let raw = String::from_utf8_lossy(message.payload().unwrap_or_default());
        let timestamp = record_time(message).map(rfc3339_ms);
        let received_at = header_value(message, header::RECEIVED_AT);
        match self {
            Self::None => Ok(()),
            Self::Jsonl(out) => {
                let line = json!({
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "timestamp": timestamp,
                    "received_at": received_at,
                    "event": &fields.event,
                    "raw": raw,
                });
                writeln!(out, "{line}").map_err(Error::Output)
            }
            Self::Csv(writer) => writer
                .write_record([
                    message.topic(),
                    &message.partition().to_string(),
                    &message.offset().to_string(),
                    timestamp.as_deref().unwrap_or_default(),
                    received_at.as_deref().unwrap_or_default(),
                    fields.event_id.as_deref().unwrap_or_default(),
                    fields.event_type.as_deref().unwrap_or_default(),
                    fields.merchant_id.as_deref().unwrap_or_default(),
                    fields.session_id.as_deref().unwrap_or_default(),
                    fields.order_id.as_deref().unwrap_or_default(),
                    &raw,
                ])
                .map_err(csv_error),
        }
    }

    fn finish(self) -> Result<(), Error> {
        match self {
            Self::None => Ok(()),
            Self::Jsonl(mut out) => out.flush().map_err(Error::Output),
            Self::Csv(mut writer) => writer.flush().map_err(Error::Output),
        }
    }
}

fn csv_error(e: csv::Error) -> Error {
    Error::Output(std::io::Error::other(e))
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
    let consumer = log_reader::consumer(config, "replay")?;
    let partitions = log_reader::partitions(&consumer, topic)?;
    let marks = log_reader::watermarks(&consumer, topic, &partitions)?;
    let found = log_reader::offsets_for_time(&consumer, topic, &partitions, from_ms)?;
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
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar =
            ProgressBar::with_draw_target(Some(total.max(0) as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "replay [{bar:30}] {pos}/{len} records, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });

    let mut read = 0u64;
    let mut selected = 0u64;
    let mut totals = Totals::default();
    let mut batch: Vec<OwnedMessage> = Vec::new();
    if !starts.is_empty() {
        log_reader::assign(&consumer, topic, &starts)?;
    }
    let mut open = ends.clone();
    while !open.is_empty() {
        let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(message)) => message.detach(),
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
        if let Some(bar) = &bar {
            bar.inc(1);
        }
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
                totals = add(
                    totals,
                    project(config, pool.as_ref(), &statistics, &batch).await?,
                );
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        totals = add(
            totals,
            project(config, pool.as_ref(), &statistics, &batch).await?,
        );
    }
    sink.finish()?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
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
        pool.close().await;
    }
    Ok(())
}

fn add(mut a: Totals, b: Totals) -> Totals {
    a.records += b.records;
    a.applied += b.applied;
    a.duplicates += b.duplicates;
    a.stale += b.stale;
    a.poison += b.poison;
    a
}

async fn project(
    config: &Config,
    pool: Option<&sqlx::PgPool>,
    statistics: &Arc<AutoAnalyze>,
    batch: &[OwnedMessage],
) -> Result<Totals, Error> {
    let Some(pool) = pool else {
        return Ok(Totals::default());
    };
    Engine {
        pool,
        topic: &config.ipp_topic,
        group: None,
        max_payload_bytes: config.max_payload_bytes,
        dead_letters: None,
        statistics: statistics.clone(),
    }
    .apply_isolating(batch)
    .await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    fn args(extra: &[&str]) -> ReplayArgs {
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

    const BODY: &str = r#"{"id":"kevt_1","merchant_id":"M1","timestamp":"2026-06-05T18:37:41.232733416Z","type":"ipp.session.activated","data":{"session_id":"c749c48d-df11-4ae3-8e5f-2c8491b16214","order_id":null,"failure_reason":null}}"#;

    #[test]
    fn parses_rfc3339_ranges_in_any_offset() {
        let a = args(&[]);
        assert_eq!(a.to.to_rfc3339(), "2026-06-05T17:00:00.500+00:00");
        assert_eq!(a.format, Format::Jsonl);
    }

    #[test]
    fn filters_by_merchant_session_and_type() {
        let fields = Fields::of(BODY.as_bytes());
        assert!(args(&[]).selects(&fields));
        assert!(args(&["--merchant", "M1"]).selects(&fields));
        assert!(!args(&["--merchant", "M2"]).selects(&fields));
        assert!(args(&["--session", "c749c48d-df11-4ae3-8e5f-2c8491b16214"]).selects(&fields));
        assert!(!args(&["--session", "00000000-0000-0000-0000-000000000000"]).selects(&fields));
        assert!(args(&[
            "--event-type",
            "ipp.session.created",
            "--event-type",
            "ipp.session.activated"
        ])
        .selects(&fields));
        assert!(!args(&["--event-type", "ipp.session.created"]).selects(&fields));
        // A body that is not JSON matches no filter, but is exported without one.
        let garbage = Fields::of(b"{not json");
        assert!(args(&[]).selects(&garbage));
        assert!(!args(&["--merchant", "M1"]).selects(&garbage));
    }
}
