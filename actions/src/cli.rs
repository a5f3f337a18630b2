//! The `ipp-actions` command line: the service (the default) and its operator commands,
//! which all take the service's own settings.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    operator::{self, retry::RetryArgs},
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ipp-actions",
    version,
    about = "Captures finalized Kustom IPP sessions through the Order Management API, exactly once.",
    long_about = "Consumes ipp.events with its own consumer group. Every ipp.session.finalized \
(or ipp.payment.finalized) event becomes one row of the ipp_actions ledger in PostgreSQL; a \
worker pool then reads the order and captures what remains authorized, with a deterministic \
Klarna-Idempotency-Key, retrying 5xx, 429 (honouring Retry-After), timeouts and connection \
errors. Actions that fail permanently or exhaust their retries end `failed` and are written to \
the dead-letter topic.\n\n\
Subcommands: (none) or `run` runs the service; `migrate` applies the ledger migrations and exits; \
`dlq list|show|redrive`, `retry`, `status` and `command issue|show|list` are operator tools that \
run once (see the book, Operations).\n\
Money commands (capture, refund, cancel, release remaining authorization) come from the commands \
topic, which the commands API (ACTIONS_API_TOKENS) and `command issue` append to.\n\
HTTP: the commands API under /v1/, GET /healthz (alive), GET /readyz (database reachable, consumer \
running), GET /metrics."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Run,
    /// Apply the ledger migrations to DATABASE_URL and exit.
    Migrate,
    /// Inspect and redrive the dead letters of ACTIONS_DLQ_TOPIC (list, show, redrive).
    #[command(subcommand)]
    Dlq(ipp_ops::DlqCommand),
    /// Re-queue failed actions (all, by order or by merchant) after fixing their cause.
    Retry(RetryArgs),
    /// Lag and committed offsets per partition, pending and failed actions, DLQ size.
    Status(ipp_ops::StatusArgs),
    /// Money commands: issue one (capture, refund, cancel, release), show one, list an
    /// order's.
    #[command(subcommand)]
    Command(operator::command::CommandCommand),
}

/// `ipp-actions`: the service, or one of its operator commands (which exit).
pub async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = ipp_service::secret_files::parse();
    let command = command.unwrap_or(Command::Run);
    if matches!(command, Command::Run | Command::Migrate) {
        ipp_service::telemetry::init_tracing(config.log.format);
    } else {
        // Operator commands: stdout is their output, logs go to stderr.
        ipp_service::telemetry::init_cli_tracing();
    }
    let exit = |result| ipp_ops::exit("ipp-actions", result);
    match command {
        Command::Dlq(dlq) => exit(operator::dlq::run(&config, &dlq).await),
        Command::Retry(args) => exit(operator::retry::run(&config, &args).await),
        Command::Status(args) => exit(operator::status::run(&config, &args).await),
        Command::Command(command) => exit(operator::command::run(&config, &command).await),
        Command::Migrate => crate::migrate(&config).await?,
        Command::Run => {
            // Exports spans while it lives; dropped last, it sends what is buffered.
            let _spans = ipp_service::traces::TraceExport::from_env("ipp-actions")?;
            let listeners =
                ipp_service::Listeners::bind(&config.listen, &config.admin_listen).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ipp_service::cancel_on_signal(
                shutdown.clone(),
                "finishing in-flight actions",
            ));
            crate::run(config, listeners, shutdown).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ipp_service::LogFormat;

    use super::*;

    /// Which settings may come from a file (`X_FILE`), and that `--help` says so.
    #[test]
    fn secret_settings_may_come_from_files() {
        let command = <Cli as clap::CommandFactory>::command();
        assert_eq!(
            ipp_service::secret_files::file_variables(&command),
            ["ACTIONS_API_TOKENS", "DATABASE_URL", "KUSTOM_API_KEY"]
        );
        assert!(ipp_service::secret_files::undocumented(&command).is_empty());
    }

    #[test]
    fn secret_is_not_printed() {
        let cli = Cli::parse_from(["ipp-actions", "--kustom-api-key", "kco_test_abc"]);
        assert_eq!(cli.config.kustom_api_key.expose(), "kco_test_abc");
        assert!(!format!("{cli:?}").contains("kco_test_abc"));
    }

    #[test]
    fn log_format_takes_pretty_like_the_other_services_and_text_as_before() {
        for (given, expected) in [
            ("pretty", LogFormat::Pretty),
            ("text", LogFormat::Pretty),
            ("json", LogFormat::Json),
        ] {
            let cli = Cli::parse_from(["ipp-actions", "--log-format", given]);
            assert_eq!(cli.config.log.format, expected, "{given}");
        }
    }

    #[test]
    fn migrate_subcommand_takes_global_flags() {
        let cli = Cli::parse_from(["ipp-actions", "migrate", "--database-url", "postgres://x/y"]);
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.config.database.url.expose(), "postgres://x/y");
    }

    #[test]
    fn om_rate_limit_defaults_to_100_per_account_and_takes_the_deprecated_name() {
        let rate = |args: &[&str]| {
            let cli = Cli::parse_from([&["ipp-actions"], args].concat());
            cli.config.check().map(|()| cli.config.om_rate_limit())
        };
        assert_eq!(rate(&[]), Ok(100.0));
        assert_eq!(rate(&["--om-rate-limit", "0"]), Ok(0.0));
        assert_eq!(rate(&["--max-calls-per-sec", "20"]), Ok(20.0));
        assert_eq!(
            rate(&["--max-calls-per-sec", "20", "--om-rate-limit", "20"]),
            Ok(20.0)
        );
        let contradiction = rate(&["--max-calls-per-sec", "20", "--om-rate-limit", "50"]);
        assert!(
            contradiction.is_err_and(|e| e.contains("ACTIONS_MAX_CALLS_PER_SEC")),
            "a contradiction is refused"
        );
        for bad in ["-1", "inf", "NaN", "fast"] {
            assert!(
                Cli::try_parse_from(["ipp-actions", "--om-rate-limit", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["ipp-actions", "--om-rate-burst", "0"]).is_err());
    }
}
