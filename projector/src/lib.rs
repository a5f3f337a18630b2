//! ipp-projector: consumes `ipp.events` and keeps exact PostgreSQL read models
//! (`ipp_events`, `ipp_sessions`) whatever the order, duplicates or crashes.
//! See `consumer.rs` for the offset strategy and `session.rs` for the status rule.

pub mod cli;
pub mod cli_ops;
pub mod config;
pub mod consumer;
mod copy_binary;
pub mod dlq;
pub mod engine;
pub mod error;
pub mod http;
pub mod log_reader;
pub mod metrics;
pub mod rebuild;
pub mod replay;
pub mod schema;
pub mod session;
pub mod statistics;
pub mod store;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;

use crate::{consumer::Projector, http::Health, metrics::Metrics};

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
