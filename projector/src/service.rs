//! The service: migrate, serve the probes, project until shut down.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use ipp_service::probe::Readiness;

use crate::{
    config::Config,
    http::{self, ProbeState},
    kafka::consumer::Projector,
    metrics::Metrics,
    schema, Error,
};

/// Connects to PostgreSQL with bounded waits, every connection's `search_path` set
/// to `PROJECTOR_SCHEMA`. A database that is still starting (the usual case when
/// everything starts together) gets up to 30 seconds.
pub async fn connect(config: &Config) -> Result<PgPool, Error> {
    schema::connect(&config.database, &config.schema).await
}

/// `ipp-projector migrate`.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    let pool = connect(config).await?;
    schema::prepare(&pool, &config.schema).await?;
    info!(schema = %config.schema, "migrations applied");
    pool.close().await;
    Ok(())
}

/// Migrates, serves HTTP on `listener`, and projects until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pool = connect(&config).await?;
    schema::prepare(&pool, &config.schema).await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Readiness::default();
    let probes = ProbeState {
        pool: pool.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
    };

    // The bound address, which differs from the setting's with port 0.
    info!(listen = %listener.local_addr().map_err(Error::Http)?, "ipp-projector listening");
    let http_shutdown = CancellationToken::new();
    let server = axum::serve(listener, http::router(probes))
        .with_graceful_shutdown(http_shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });

    let projector = Projector::new(config, pool.clone(), metrics, ready).await?;
    let result = projector.run(shutdown).await;

    http_shutdown.cancel();
    let served = server
        .await
        .map_err(|e| Error::Http(std::io::Error::other(e)))?;
    pool.close().await;
    result?;
    served.map_err(Error::Http)
}
