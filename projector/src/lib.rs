//! ipp-projector: consumes `ipp.events` and keeps exact PostgreSQL read models
//! (`ipp_events`, `ipp_sessions`) whatever the order, duplicates or crashes.
//! See `consumer.rs` for the offset strategy and `session.rs` for the status rule.

pub mod cli_ops;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod error;
pub mod http;
pub mod metrics;
pub mod session;
pub mod store;

use std::{sync::Arc, time::Duration};

use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;

use crate::{consumer::Projector, http::Health, metrics::Metrics};

/// Connects to PostgreSQL with bounded waits. A database that is still starting (the
/// usual case when everything starts together) gets up to 30 seconds.
pub async fn connect(config: &Config) -> Result<PgPool, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(config.db_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect(config.database_url.expose())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e @ sqlx::Error::Io(_)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "postgresql not reachable yet, retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `ipp-projector migrate`.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    let pool = connect(config).await?;
    store::migrate(&pool).await?;
    info!("migrations applied");
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
    store::migrate(&pool).await?;
    let health = Arc::new(Health::new(Metrics::new()));

    let http_shutdown = CancellationToken::new();
    let server = axum::serve(listener, http::router(health.clone()))
        .with_graceful_shutdown(http_shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });

    let projector = Projector::new(config, pool.clone(), health).await?;
    let result = projector.run(shutdown).await;

    http_shutdown.cancel();
    let served = server
        .await
        .map_err(|e| Error::Http(std::io::Error::other(e)))?;
    pool.close().await;
    result?;
    served.map_err(Error::Http)
}
