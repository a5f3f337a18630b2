use anyhow::Context;
use clap::Parser;
use ipp_projector::{
    cli::{Cli, Command},
    config::RENAMED_ENV,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let renamed = ipp_service::args::accept_renamed_env(RENAMED_ENV);
    let cli = Cli::parse();
    let config = cli.config;
    // Operator commands: stdout is their output, logs go to stderr.
    match &cli.command {
        Some(Command::Dlq(dlq)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit(
                "ipp-projector",
                ipp_projector::cli_ops::dlq(&config, dlq).await,
            );
        }
        Some(Command::Status(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            ipp_ops::exit(
                "ipp-projector",
                ipp_projector::cli_ops::status(&config, args).await,
            );
        }
        Some(Command::Rebuild(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            exit(ipp_projector::rebuild::run(&config, args).await);
        }
        Some(Command::Replay(args)) => {
            ipp_service::telemetry::init_cli_tracing();
            exit(ipp_projector::replay::run(&config, args).await);
        }
        _ => {}
    }
    ipp_service::telemetry::init_tracing(config.log.format);
    ipp_service::args::warn_renamed_env(&renamed, RENAMED_ENV);
    tracing::info!(?config, "starting ipp-projector");

    if cli.command == Some(Command::Migrate) {
        return ipp_projector::migrate(&config)
            .await
            .context("ipp-projector migrate");
    }

    let listener = config.listen.bind().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(
        shutdown.clone(),
        "finishing the current batch",
    ));
    ipp_projector::run(config, listener, shutdown)
        .await
        .context("ipp-projector")
}

/// Ends `rebuild` and `replay`: exit 0, or one line with the error and its causes on
/// stderr and exit 1 (2 for a configuration error).
fn exit(result: Result<(), ipp_projector::Error>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        // `… | head`: the reader is gone, which is not an error of the command.
        Err(ipp_projector::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("ipp-projector: error: {}", e.chain());
            std::process::exit(if matches!(e, ipp_projector::Error::Config(_)) {
                2
            } else {
                1
            })
        }
    }
}
