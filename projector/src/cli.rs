//! The `ipp-projector` command line: the service (the default) and its operator
//! commands, which all take the service's own settings.

use clap::{Parser, Subcommand};

use crate::{config::Config, rebuild::RebuildArgs, replay::ReplayArgs};

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
    Rebuild(RebuildArgs),
    /// Export the events of a time range as JSON Lines or CSV, or project them into a
    /// schema of your choosing (`--into-schema`). Never commits consumer offsets.
    Replay(ReplayArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_after_the_subcommand() {
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
        let properties: Vec<_> = cli.config.kafka.properties().collect();
        assert_eq!(properties, vec![("security.protocol", "ssl")]);
    }
}
