use anyhow::Context;
use clap::Parser;
use ipp_actions::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse();
    let command = command.unwrap_or(Command::Run);
    if matches!(command, Command::Run | Command::Migrate) {
        ipp_actions::init_tracing(config.log_format);
    } else {
        // Operator commands: stdout is their output, logs go to stderr.
        ipp_ops::init_cli_tracing();
    }
    match command {
        Command::Dlq(dlq) => ops_exit(ipp_actions::cli_ops::dlq(&config, &dlq).await),
        Command::Retry(args) => ops_exit(ipp_actions::cli_ops::retry(&config, &args).await),
        Command::Status(args) => ops_exit(ipp_actions::cli_ops::status(&config, &args).await),
        Command::Migrate => ipp_actions::migrate(&config).await?,
        Command::Run => {
            let listener = tokio::net::TcpListener::bind(config.http)
                .await
                .with_context(|| format!("binding {}", config.http))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            ipp_actions::run(config, listener, shutdown).await?;
        }
    }
    Ok(())
}

fn ops_exit(result: Result<(), ipp_ops::Error>) -> ! {
    ipp_ops::exit("ipp-actions", result)
}

/// Turns SIGTERM or Ctrl-C into a cancellation.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested: finishing in-flight actions");
    shutdown.cancel();
}
