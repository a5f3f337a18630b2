use anyhow::Context;
use clap::Parser;
use ipp_projector::config::{Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    // Operator commands: stdout is their output, logs go to stderr.
    match &cli.command {
        Some(Command::Dlq(dlq)) => {
            ipp_ops::init_cli_tracing();
            ipp_ops::exit(
                "ipp-projector",
                ipp_projector::cli_ops::dlq(&config, dlq).await,
            );
        }
        Some(Command::Status(args)) => {
            ipp_ops::init_cli_tracing();
            ipp_ops::exit(
                "ipp-projector",
                ipp_projector::cli_ops::status(&config, args).await,
            );
        }
        _ => {}
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    tracing::info!(?config, "starting ipp-projector");

    if cli.command == Some(Command::Migrate) {
        return ipp_projector::migrate(&config)
            .await
            .context("ipp-projector migrate");
    }

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind {}", config.http))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_to_cancel(shutdown.clone()));
    ipp_projector::run(config, listener, shutdown)
        .await
        .context("ipp-projector")
}

/// Turns the first SIGTERM or SIGINT into a cancellation.
async fn signal_to_cancel(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, finishing the current batch"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, finishing the current batch"),
    }
    shutdown.cancel();
}
