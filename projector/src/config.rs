use std::{fmt, net::SocketAddr, str::FromStr};

use clap::{Parser, Subcommand};
use ipp_service::LogFormat;

/// Projects Kustom In-Person Payments events from Kafka into PostgreSQL read models
/// (`ipp_events`, `ipp_sessions`), exactly once whatever the order, duplicates or crashes.
#[derive(Debug, Parser)]
#[command(name = "ipp-projector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Consume and project (the default): migrates first, then runs until SIGTERM/SIGINT.
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Inspect and redrive the dead letters of IPP_DLQ_TOPIC (list, show, redrive).
    #[command(subcommand)]
    Dlq(ipp_ops::DlqCommand),
    /// Lag and checkpoint per partition, age of the newest applied event, DLQ size.
    Status(ipp_ops::StatusArgs),
    /// Rebuild the read models from the start of the log into a shadow schema, then swap
    /// it in atomically while the live projector keeps running (`--dry-run`: compare only;
    /// `--rollback`: swap the previous version back).
    Rebuild(crate::rebuild::RebuildArgs),
    /// Export the events of a time range as JSON Lines or CSV, or project them into a
    /// schema of your choosing (`--into-schema`). Never commits consumer offsets.
    Replay(crate::replay::ReplayArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub kafka_brokers: String,

    /// Topic of IPP events to project.
    #[arg(long, env = "IPP_TOPIC", default_value = ipp_schemas::topics::IPP_EVENTS, global = true)]
    pub ipp_topic: String,

    /// Dead-letter topic for records that cannot be projected.
    #[arg(long, env = "IPP_DLQ_TOPIC", default_value = ipp_schemas::topics::IPP_EVENTS_DLQ, global = true)]
    pub dlq_topic: String,

    /// PostgreSQL URL of the read models (the same database as ipp-actions' ledger is
    /// fine). `--help` never shows the value from the environment: it may hold a password.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ipp",
        hide_env_values = true,
        global = true
    )]
    pub database_url: DatabaseUrl,

    /// PostgreSQL schema of the live read models (`rebuild` swaps tables in and out of it).
    #[arg(
        long,
        env = "PROJECTOR_SCHEMA",
        default_value = "public",
        global = true
    )]
    pub schema: String,

    /// Consumer group; also the key of the offsets stored in PostgreSQL.
    #[arg(
        long,
        env = "PROJECTOR_GROUP",
        default_value = "ipp-projector",
        global = true
    )]
    pub group: String,

    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PROJECTOR_HTTP",
        default_value = "0.0.0.0:9101",
        global = true
    )]
    pub http: SocketAddr,

    /// Most records applied in one database transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 2000, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Longest wait, in milliseconds, for a batch to fill once its first record arrived.
    /// With 0 a batch is what has already arrived: the freshest read models, and under
    /// load batches still grow by themselves while the previous one commits.
    #[arg(
        long,
        env = "PROJECTOR_BATCH_WAIT_MS",
        default_value_t = 0,
        global = true
    )]
    pub batch_wait_ms: u64,

    /// Largest record value, in bytes, that is projected; a larger one is parked in the
    /// dead-letter topic, to be redriven once the limit is raised (0: no limit). Ingest
    /// already refuses bodies over INGEST_MAX_BODY_BYTES (256 KiB by default).
    #[arg(
        long,
        env = "PROJECTOR_MAX_PAYLOAD_BYTES",
        default_value_t = 1024 * 1024,
        global = true
    )]
    pub max_payload_bytes: usize,

    /// Largest number of PostgreSQL connections.
    #[arg(
        long,
        env = "PROJECTOR_DB_CONNECTIONS",
        default_value_t = 4,
        global = true
    )]
    pub db_connections: u32,

    /// Extra librdkafka property `key=value` for the consumer and the dead-letter
    /// producer (repeatable; the environment variable takes a comma-separated list).
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    kafka_property: Vec<KafkaProperty>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
}

/// A database URL whose `Debug` output hides the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host/db -> scheme://user:***@host/db
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.0[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') { ":***" } else { "" };
                write!(
                    f,
                    "{}{user}{masked}{}",
                    &self.0[..scheme + 3],
                    &self.0[at..]
                )
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl Config {
    /// The `key=value` librdkafka settings given, in order.
    pub fn kafka_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kafka_property
            .iter()
            .filter_map(|p| p.0.as_ref())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One `key=value` librdkafka setting; an empty item (`KAFKA_PROPERTIES=` or a
/// trailing comma) is allowed and means nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty(Option<(String, String)>);

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("(none)"),
            // sasl.password, ssl.key.password, ...: never in logs.
            Some((key, _)) if key.contains("password") || key.contains("secret") => {
                write!(f, "{key}=***")
            }
            Some((key, value)) => write!(f, "{key}={value}"),
        }
    }
}

impl FromStr for KafkaProperty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self(None));
        }
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok(Self(Some((key.trim().to_owned(), value.trim().to_owned()))))
            }
            _ => Err(format!("expected key=value, got `{s}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/ipp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/ipp");
    }

    #[test]
    fn parses_flags_and_subcommand() {
        let cli = Cli::try_parse_from([
            "ipp-projector",
            "migrate",
            "--kafka-property",
            "security.protocol=ssl",
            "--batch-size",
            "10",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.config.batch_size, 10);
        let properties: Vec<_> = cli.config.kafka_properties().collect();
        assert_eq!(properties, vec![("security.protocol", "ssl")]);
    }

    #[test]
    fn debug_hides_kafka_passwords() {
        let property: KafkaProperty = "sasl.password=hunter2".parse().unwrap();
        assert_eq!(format!("{property:?}"), "sasl.password=***");
    }

    #[test]
    fn empty_kafka_properties_mean_none() {
        let cli = Cli::try_parse_from(["ipp-projector", "--kafka-property", ""]).unwrap();
        assert_eq!(cli.config.kafka_properties().count(), 0);
        assert!(Cli::try_parse_from(["ipp-projector", "--kafka-property", "novalue"]).is_err());
    }
}
