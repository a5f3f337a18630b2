//! The `ipp-projector` command line: the service (the default) and its operator
//! commands, which all take the service's own settings.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    commands::{self, rebuild::RebuildArgs, reconcile::ReconcileArgs, replay::ReplayArgs},
    config::{Config, RENAMED_ENV},
};

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
    /// The orders that are not in sync with Kustom (mismatches, operations awaiting
    /// Kustom's confirmation), with why, and the number of orders per state.
    Reconcile(ReconcileArgs),
}

/// `ipp-projector`: the service, or one of its operator commands (which exit).
pub async fn main() -> anyhow::Result<()> {
    let renamed = ipp_service::args::accept_renamed_env(RENAMED_ENV);
    let cli: Cli = ipp_service::secret_files::parse();
    let config = cli.config;
    // Operator commands: stdout is their output, logs go to stderr.
    match &cli.command {
        Some(Command::Dlq(dlq)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit("ipp-projector", commands::dlq::run(&config, dlq).await);
        }
        Some(Command::Status(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit("ipp-projector", commands::status::run(&config, args).await);
        }
        Some(Command::Rebuild(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit("ipp-projector", commands::rebuild::run(&config, args).await);
        }
        Some(Command::Reconcile(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit(
                "ipp-projector",
                commands::reconcile::run(&config, args).await,
            );
        }
        Some(Command::Replay(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit("ipp-projector", commands::replay::run(&config, args).await);
        }
        _ => {}
    }
    ipp_service::telemetry::init_tracing(config.log.format);
    ipp_service::args::warn_renamed_env(&renamed, RENAMED_ENV);
    tracing::info!(?config, "starting ipp-projector");

    if cli.command == Some(Command::Migrate) {
        return crate::migrate(&config)
            .await
            .context("ipp-projector migrate");
    }

    // Exports spans while it lives; dropped last, it sends what is buffered.
    let _spans = ipp_service::traces::TraceExport::from_env("ipp-projector")?;
    let listener = config.listen.bind().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(
        shutdown.clone(),
        "finishing the current batch",
    ));
    crate::run(config, listener, shutdown)
        .await
        .context("ipp-projector")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which settings may come from a file (`X_FILE`), and that `--help` says so.
    #[test]
    fn secret_settings_may_come_from_files() {
        let command = <Cli as clap::CommandFactory>::command();
        assert_eq!(
            ipp_service::secret_files::file_variables(&command),
            ["DATABASE_URL"]
        );
        assert!(ipp_service::secret_files::undocumented(&command).is_empty());
    }

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
