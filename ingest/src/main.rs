use anyhow::Context;
use clap::Parser;
use ipp_ingest::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ipp_service::telemetry::init_tracing(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(
        shutdown.clone(),
        "finishing in-flight requests",
    ));
    ipp_ingest::run(config, listener, shutdown).await?;
    Ok(())
}
