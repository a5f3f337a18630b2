//! The flags of the operator subcommands, shared by both binaries.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

/// `dlq list|show|redrive`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DlqCommand {
    /// List the parked records, oldest first: one line each with its provenance and error.
    List(ListArgs),
    /// Print one parked record in full: every header and the value (pretty JSON if it is JSON).
    Show(ShowArgs),
    /// Put parked records back where they came from, once each, with a loop guard.
    Redrive(RedriveArgs),
}

/// Which parked records (all of them when no filter is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Filters {
    /// Only records parked at or after this time (RFC 3339, e.g. 2026-11-26T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only records of this event type (e.g. ipp.session.finalized).
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only records of this IPP session id.
    #[arg(long)]
    pub session: Option<String>,
    /// Only records of this Order Management order id.
    #[arg(long)]
    pub order: Option<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Print JSON Lines (one object per record) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print at most this many records (the oldest ones).
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ShowArgs {
    /// The record, as PARTITION:OFFSET in the dead-letter topic (as `dlq list` prints it).
    pub record: RecordRef,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RedriveArgs {
    /// Records to redrive, as PARTITION:OFFSET in the dead-letter topic.
    pub records: Vec<RecordRef>,
    /// Redrive every parked record (that the filters select).
    #[arg(long, conflicts_with = "records")]
    pub all: bool,
    #[command(flatten)]
    pub filters: Filters,
    /// Print what would be redriven or refused, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse records already redriven this many times (their `dlq-redrive-count`).
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
    /// Redrive records even when they reached --max-redrives. A record already redriven
    /// (in `ipp_dlq_redrives`) is still never redriven twice.
    #[arg(long)]
    pub force: bool,
    /// Print JSON Lines (one object per record) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A record of a topic: `PARTITION:OFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordRef {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for RecordRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (partition, offset) = s
            .split_once(':')
            .ok_or_else(|| format!("expected PARTITION:OFFSET, got `{s}`"))?;
        Ok(Self {
            partition: partition
                .trim()
                .parse()
                .map_err(|_| format!("bad partition in `{s}`"))?,
            offset: offset
                .trim()
                .parse()
                .map_err(|_| format!("bad offset in `{s}`"))?,
        })
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        dlq: DlqCommand,
    }

    #[test]
    fn parses_redrive() {
        let cli = Cli::try_parse_from(["x", "redrive", "0:5", "1:7", "--dry-run"]).unwrap();
        let DlqCommand::Redrive(args) = cli.dlq else {
            panic!("not redrive")
        };
        assert_eq!(
            args.records,
            vec![
                RecordRef {
                    partition: 0,
                    offset: 5
                },
                RecordRef {
                    partition: 1,
                    offset: 7
                }
            ]
        );
        assert!(args.dry_run);
        assert_eq!(args.max_redrives, 3);
        assert!(Cli::try_parse_from(["x", "redrive", "0:5", "--all"]).is_err());
        assert!(Cli::try_parse_from(["x", "show", "5"]).is_err());
    }

    #[test]
    fn parses_filters() {
        let cli = Cli::try_parse_from([
            "x",
            "list",
            "--since",
            "2026-11-26T10:00:00Z",
            "--event-type",
            "ipp.session.finalized",
            "--limit",
            "2",
        ])
        .unwrap();
        let DlqCommand::List(args) = cli.dlq else {
            panic!("not list")
        };
        assert_eq!(args.limit, Some(2));
        assert!(args.filters.since.is_some());
        assert!(!args.filters.is_empty());
    }
}
