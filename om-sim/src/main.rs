use ipp_om_sim::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = ipp_service::secret_files::parse();
    ipp_service::telemetry::init_tracing(config.log.format);

    let listener = config.listen.bind().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ipp_service::cancel_on_signal(shutdown.clone(), "stopping"));
    ipp_om_sim::run(config, listener, shutdown).await?;
    Ok(())
}
