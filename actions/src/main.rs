use anyhow::Context;
use clap::Parser;
use ipp_actions::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse();
    ipp_actions::init_tracing(config.log_format);
    match command.unwrap_or(Command::Run) {
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
