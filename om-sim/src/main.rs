use clap::Parser;
use ipp_om_sim::{config::LogFormat, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    config.faults.validate().map_err(anyhow::Error::msg)?;

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(shutdown.clone(), "stopping"));
    ipp_om_sim::run(config, listener, shutdown).await?;
    Ok(())
}
