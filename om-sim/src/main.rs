use clap::Parser;
use ipp_om_sim::{config::LogFormat, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        // With stdout or stderr gone (a dead log pipe) a failed write would be reported
        // with eprintln!, which panics the task that logged: drop the line instead.
        .log_internal_errors(false)
        .with_env_filter(filter);
    match config.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    config.faults.validate().map_err(anyhow::Error::msg)?;

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(shutdown.clone(), "stopping"));
    ipp_om_sim::run(config, listener, shutdown).await?;
    Ok(())
}
