use ipp_ingest::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = ipp_service::secret_files::parse();
    ipp_service::telemetry::init_tracing(config.log.format);
    // Exports spans while it lives; dropped last, it sends what is buffered.
    let _spans = ipp_service::traces::TraceExport::from_env("ipp-ingest")?;
    let listeners = ipp_service::Listeners::bind(&config.listen, &config.admin_listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(
        shutdown.clone(),
        "finishing in-flight requests",
    ));
    ipp_ingest::run(config, listeners, shutdown).await?;
    Ok(())
}
